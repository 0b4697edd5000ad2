"""The real world: any gymnasium environment seen through its pixels."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import cast

# Renderers built on pygame start SDL: without a screen it needs the dummy video driver, and by default it
# swallows SIGTERM/SIGINT, which would leave worker pools unable to stop their processes.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

import gymnasium as gym
import numpy as np
from gymnasium.envs.box2d.car_racing import CarRacing

from worldmodels.config import EnvConfig
from worldmodels.core.errors import WorldModelsError
from worldmodels.worlds.carracing import FastFrames
from worldmodels.worlds.pictures import view


def is_image_space(space: gym.Space) -> bool:
    """True for (H, W, 3) uint8 observation spaces such as CarRacing's."""
    return (
        isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] == 3
    )


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replace observations by a cropped, resized uint8 RGB frame; the underlying state goes to info['state'].

    Written by hand rather than with gymnasium's ResizeObservation, which needs OpenCV. `success` is the
    latest info's `is_success` (goal-reaching envs such as panda-gym's), None for envs that do not report it.
    """

    def __init__(self, env: gym.Env, frame_size: int, crop: list[float]):
        # so the spec rebuilds it
        gym.utils.RecordConstructorArgs.__init__(self, frame_size=frame_size, crop=list(crop))
        super().__init__(env)
        self.frame_size = frame_size
        self.crop = crop
        self.from_render = not is_image_space(env.observation_space)
        if self.from_render:  # its frames are the world's rgb_array pictures: the one render mode it can be made in
            self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        self.observation_space = gym.spaces.Box(0, 255, (frame_size, frame_size, 3), np.uint8)
        self.success: bool | None = None

    def frame(self, image: np.ndarray) -> np.ndarray:
        """Crop and resize one RGB image to (frame_size, frame_size, 3) uint8."""
        h, w = image.shape[:2]
        if (h, w) == (self.frame_size, self.frame_size) and list(self.crop) == [0.0, 1.0, 0.0, 1.0]:
            return image  # drawn at its size already (env.renderer = "fast")
        return view(image, self.frame_size, self.crop)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.frame(cast(np.ndarray, self.env.render()) if self.from_render else observation)  # rgb_array mode

    def _read(self, obs, info: dict) -> None:
        """Keep the step's success flag; put a rendered world's state observation into info['state']."""
        self.success = bool(info["is_success"]) if "is_success" in info else None
        if self.from_render:
            info["state"] = np.asarray(obs)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._read(obs, info)
        return self.observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._read(obs, info)
        return self.observation(obs), reward, terminated, truncated, info


class RenderSize(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A classic-control world drawn at width x height instead of its own 600 x 400: CartPole's picture costs 3.5x
    less to draw and copy at 300 x 200. Its cart and pole keep their sizes in pixels while the track scales, so a
    recipe's crop is chosen for one size."""

    def __init__(self, env: gym.Env, width: int, height: int):
        gym.utils.RecordConstructorArgs.__init__(self, width=width, height=height)
        super().__init__(env)
        world = env.unwrapped
        if not (hasattr(world, "screen_width") and hasattr(world, "screen_height")):
            name = env.spec.id if env.spec is not None else type(world).__name__
            raise WorldModelsError(f"env.render_size: {name} has no screen_width and screen_height to set; use []")
        world.screen_width, world.screen_height = width, height  # read by its render() when it makes its surface


class ActionBounds(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Actions span the box [low, high] and reach the world clipped to its own action space.

    With CarRacing's brake in [-1, 1] instead of [0, 1], a controller's tanh output brakes only when
    positive, as in Ha & Schmidhuber's code, rather than braking at half strength when its output is 0.
    """

    def __init__(self, env: gym.Env, low: list[float], high: list[float]):
        gym.utils.RecordConstructorArgs.__init__(self, low=list(low), high=list(high))
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, gym.spaces.Box) or len(low) != inner.shape[0] or len(high) != inner.shape[0]:
            assert env.spec is not None
            raise WorldModelsError(
                f"env.action_low and env.action_high need a 1-D Box action space and one value per "
                f"dimension; '{env.spec.id}' acts in {inner}"
            )
        self.action_space = gym.spaces.Box(
            np.asarray(low, inner.dtype), np.asarray(high, inner.dtype), dtype=inner.dtype
        )

    def action(self, action):
        return np.clip(action, self.env.action_space.low, self.env.action_space.high)


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Play each action for `repeat` frames (stopping early at an episode's end): rewards summed, the last frame seen.

    The number of frames actually played goes to info['frames'], so real steps are counted exactly. Frames
    nobody sees are not drawn where the world allows it (CarRacing draws its road on every step, 80% of its
    cost; drawing changes nothing in its physics).
    """

    def __init__(self, env: gym.Env, repeat: int):
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total, world = 0.0, self.env.unwrapped
        for frame in range(1, self.repeat + 1):
            with _unseen(world, frame < self.repeat) as skipped:
                obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        if skipped:  # the episode ended on an undrawn frame: draw the one that is seen
            obs = world.state = world._render("state_pixels")
        info["frames"] = frame
        return obs, total, terminated, truncated, info


@contextlib.contextmanager
def _unseen(env: gym.Env, skip: bool):
    """While active, a CarRacing world does not draw its observation: its step returns the last one drawn."""
    skip = skip and isinstance(env, CarRacing) and env.render_mode is None
    drawer = env.__dict__.get("_render")  # the fast renderer's, where env.renderer = "fast" set one
    if skip:
        # an instance attribute shadows the method; CarRacing's private renderer and state are not on gym.Env
        env._render = lambda mode: env.state.copy()  # type: ignore[attr-defined]
    try:
        yield skip
    finally:
        if skip and drawer is None:
            del env._render  # type: ignore[attr-defined]  # the CarRacing instance attribute set above
        elif skip:
            env._render = drawer  # type: ignore[attr-defined]


def find_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The spec of an env id; a "module:EnvId" id (e.g. "panda_gym:PandaReach-v3") imports the module that registers it.

    gymnasium.make accepts such ids but gymnasium.spec does not, so the import is done here.
    """
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise WorldModelsError(
                f"env id '{env_id}' needs the module '{module}', which cannot be imported ({exc})"
            ) from None
    try:
        return gym.spec(name)
    except gym.error.Error as exc:
        raise WorldModelsError(f"unknown env id '{env_id}': {exc}") from None


def make_world(cfg: EnvConfig, max_steps: int = 0) -> gym.Env:
    """Make the pixel world of a recipe; an unknown env id is a clear error."""
    spec = find_spec(cfg.id)
    steps = max_steps or cfg.max_steps or None
    kwargs = dict(cfg.kwargs)
    try:
        probe = gym.make(spec, **kwargs)
    except TypeError as exc:  # an env that needs arguments a recipe cannot give, e.g. the codebook world
        raise WorldModelsError(
            f"env id '{cfg.id}' cannot be made from env.kwargs ({exc}); it is not a pixel world"
        ) from None
    needs_render = not is_image_space(probe.observation_space)
    probe.close()
    if needs_render:
        kwargs["render_mode"] = "rgb_array"
    env = gym.make(spec, max_episode_steps=steps, **kwargs)  # the step cap counts frames, inside the repeat
    crop = cfg.crop
    if cfg.renderer == "fast":
        env, crop = FastFrames(env, cfg.frame_size, cfg.crop), [0.0, 1.0, 0.0, 1.0]  # drawn cropped, at size
    if cfg.render_size:
        env = RenderSize(env, *cfg.render_size)
    if cfg.action_low or cfg.action_high:
        env = ActionBounds(env, cfg.action_low, cfg.action_high)
    if cfg.action_repeat > 1:
        env = ActionRepeat(env, cfg.action_repeat)
    return PixelObservation(env, cfg.frame_size, crop)


def action_space(cfg: EnvConfig) -> gym.Space:
    """The action space of a recipe's world (the world is made, read and closed)."""
    world = make_world(cfg)
    space = world.action_space
    world.close()
    return space
