"""The real world: any gymnasium environment seen through its pixels."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import TYPE_CHECKING, SupportsFloat, cast

# Renderers built on pygame start SDL: without a screen it needs the dummy video driver, and by default it
# swallows SIGTERM/SIGINT, which would leave worker pools unable to stop their processes.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.box2d.car_racing import CarRacing
from PIL import Image

from ..config import EnvConfig
from ..errors import WorldModelsError
from .carracing import FastFrames

if TYPE_CHECKING:  # annotations only: the agent and C import this module
    from ..agent import WorldModel
    from ..controller import Controller


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
        top, bottom, left, right = self.crop
        box = (left * w, top * h, right * w, bottom * h)
        size = (self.frame_size, self.frame_size)
        # reducing_gap lets PIL shrink by an integer factor first: 3x faster, visually the same
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0))

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


def action_dim(space: gym.Space) -> int:
    """Width of an action as M sees it: one-hot for Discrete, one-hots side by side for MultiDiscrete,
    the vector for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return int(space.nvec.sum())  # one logit per choice of each component
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise WorldModelsError(
        f"unsupported action space {space}; only Discrete, MultiDiscrete (1-D) and Box are supported"
    )


def encode_actions(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """Actions as float vectors for M: one-hot for Discrete, concatenated one-hots for MultiDiscrete, floats for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[np.asarray(actions, dtype=np.int64) - int(space.start)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        choices = np.asarray(actions, dtype=np.int64).reshape(-1, len(space.nvec)) - space.start
        return np.concatenate([np.eye(n, dtype=np.float32)[choices[:, i]] for i, n in enumerate(space.nvec)], axis=1)
    return np.asarray(actions, dtype=np.float32).reshape(len(actions), action_dim(space))


# ---------------------------------------------------------------- the agent playing real episodes


class EpisodeRecord:
    """One episode being played, kept in the episode store's format."""

    def __init__(self, obs: np.ndarray, seed: int):
        self.seed, self.frames = seed, 0
        self.steps: dict[str, list] = {"obs": [obs], "action": [], "reward": [], "terminated": [], "truncated": []}

    def add(
        self, obs: np.ndarray, action, reward: SupportsFloat, terminated: bool, truncated: bool, frames: int = 1
    ) -> None:
        for key, value in zip(
            ("obs", "action", "reward", "terminated", "truncated"), (obs, action, reward, terminated, truncated)
        ):
            self.steps[key].append(value)
        self.frames += frames

    def arrays(self) -> dict:
        s = self.steps
        return {
            "obs": np.stack(s["obs"]).astype(np.uint8),
            "action": np.asarray(s["action"]),
            "reward": np.asarray(s["reward"], dtype=np.float32),
            "terminated": np.asarray(s["terminated"], dtype=bool),
            "truncated": np.asarray(s["truncated"], dtype=bool),
            "seed": np.asarray(self.seed),
            "frames": np.asarray(self.frames),
        }


class RandomActions:
    """controller.random_actions: at each step of episode k, with this probability a random action replaces C's.

    Drawn from the episode's own seed (a stream apart from the exploration noise), so a perturbed episode is the
    same in every backend and every candidate meets the same perturbations on the same seed."""

    def __init__(self, probability: float, space: gym.Space):
        self.probability, self.space = probability, space
        self.rngs: dict[int, np.random.Generator] = {}

    def start(self, episode: int, seed: int) -> None:
        if self.probability:
            self.rngs[episode] = np.random.default_rng([seed, 7])

    def apply(self, episodes: list[int], actions: list) -> list:
        """`actions[row]` is episode `episodes[row]`'s (-1: an idle copy, left alone); perturbed in place."""
        if self.probability:
            for row, k in enumerate(episodes):
                if k >= 0 and self.rngs[k].random() < self.probability:
                    actions[row] = random_action(self.space, self.rngs[k])
        return actions


def random_action(space: gym.Space, rng: np.random.Generator):
    """A uniform action of a Discrete, MultiDiscrete or bounded Box space, in the form C's actions take."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (space.start + rng.integers(space.nvec)).astype(space.dtype)
    if isinstance(space, gym.spaces.Box) and space.is_bounded():
        return rng.uniform(space.low, space.high).astype(space.dtype)
    raise WorldModelsError("controller.random_actions needs a Discrete, MultiDiscrete or bounded Box action space")


@torch.inference_mode()
def play(
    worlds: list[gym.Env],
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
    random_actions: float = 0.0,
) -> list[tuple[float, int]]:
    """Real episodes in lock-step, episode k in worlds[k] with controller k and seeds[k]: [(return, frames)].

    Frames are the world's steps: more than C's decisions under an action repeat.
    V, M and C run batched over the episodes still going, which is what makes a worker fast on a CPU.
    `exploration` adds Gaussian noise of that std to C's outputs (seeded by the episode's seed); with a
    `record` list, each episode is appended to it in the episode store's format; `random_actions` as in
    `RandomActions`.
    """
    n = len(seeds)
    obs = [world.reset(seed=seed)[0] for world, seed in zip(worlds, seeds)]
    rngs = [np.random.default_rng(seed) for seed in seeds]
    episodes = [EpisodeRecord(o, seed) for o, seed in zip(obs, seeds)] if record is not None else None
    state = model.memory.initial_state(n, model.device)
    totals, steps = [0.0] * n, [0] * n
    alive = list(range(n))
    space = worlds[0].action_space
    perturb = RandomActions(random_actions, space)
    for k, seed in enumerate(seeds):
        perturb.start(k, seed)
    history = None
    while alive:
        z, history = model.see(np.stack([obs[k] for k in alive]), history)  # (B, Z)
        noise = (
            exploration * np.stack([rngs[k].standard_normal(controller.out) for k in alive]) if exploration else None
        )
        actions = perturb.apply(alive, controller.act(z.cpu(), model.memory.readout(state).cpu(), alive, noise))
        still = []
        for row, (k, action) in enumerate(zip(alive, actions)):
            obs[k], reward, terminated, truncated, info = worlds[k].step(action)
            totals[k] += float(reward)
            steps[k] += info.get("frames", 1)
            if episodes:
                episodes[k].add(obs[k], action, reward, terminated, truncated, info.get("frames", 1))
            if not (terminated or truncated):  # step caps are the worlds' own TimeLimit
                still.append(row)
        state = model.remember(z, actions, space, state)
        keep = torch.tensor(still, dtype=torch.long, device=model.device)
        state = (state[0][:, keep], state[1][:, keep])
        history = None if history is None else history[keep]
        alive = [alive[row] for row in still]
    if record is not None:
        assert episodes is not None
        record.extend(episode.arrays() for episode in episodes)
    return list(zip(totals, steps))


def _exploration_noise(
    playing: list[int], rngs: dict[int, np.random.Generator], exploration: float, size: int
) -> np.ndarray | None:
    """Each copy's exploration noise from its episode's generator (zeros for an idle copy); None without exploration."""
    if not exploration:
        return None
    return np.stack([exploration * rngs[k].standard_normal(size) if k >= 0 else np.zeros(size) for k in playing])


def _tally_step(
    playing: list[int],
    obs: np.ndarray,
    actions: list,
    outcome: tuple[np.ndarray, np.ndarray, np.ndarray, dict],
    totals: list[float],
    steps: list[int],
    success: list[bool | None],
    episodes: dict[int, EpisodeRecord],
) -> None:
    """Add one vector step to the returns, frame counts, successes (and records, for the episodes recorded) of the
    episodes being played."""
    reward, terminated, truncated, info = outcome
    for i, k in enumerate(playing):
        if k < 0:
            continue
        frames = int(info["frames"][i]) if "frames" in info else 1
        totals[k] += float(reward[i])
        steps[k] += frames
        if k in episodes:
            episodes[k].add(obs[i].copy(), actions[i], reward[i], terminated[i], truncated[i], frames)
        if "is_success" in info and info["_is_success"][i]:
            success[k] = bool(info["is_success"][i])


@torch.inference_mode()
def play_vector(
    envs: gym.vector.VectorEnv,
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
    successes: list[bool | None] | None = None,
    random_actions: float = 0.0,
) -> list[tuple[float, int]]:
    """Real episodes on a vector env's copies (autoreset off), episode k with controller k and seeds[k]; V, M and C
    batched across the copies, a finished copy reset with the next episode's seed. [(return, frames)]; `exploration`,
    `record`, `random_actions` as in `play`; `successes` gets each episode's last is_success (None if not reported)."""
    copies, space = envs.num_envs, envs.single_action_space
    perturb = RandomActions(random_actions, space)
    queue = list(range(len(seeds)))[::-1]  # episodes not started yet, next last
    playing = [-1] * copies  # the episode each copy plays; -1: idle, stepped only because a vector env steps all
    obs = np.zeros((copies, *(envs.single_observation_space.shape or ())), dtype=np.uint8)
    state = model.memory.initial_state(copies, model.device)
    rngs: dict[int, np.random.Generator] = {}
    episodes: dict[int, EpisodeRecord] = {}
    totals, steps = [0.0] * len(seeds), [0] * len(seeds)
    success: list[bool | None] = [None] * len(seeds)
    history: torch.Tensor | None = None  # V's memory of past frames, for a V that reads several

    def start(mask: np.ndarray) -> None:
        """Reset the copies in `mask`, each with the next episode's seed (idle once none is left)."""
        if history is not None:
            history[torch.from_numpy(mask).to(history.device)] = float("nan")  # these copies' next frame starts anew
        for i in np.flatnonzero(mask):
            playing[i] = queue.pop() if queue else -1
        seed = [seeds[playing[i]] if mask[i] and playing[i] >= 0 else None for i in range(copies)]
        # gymnasium's vector envs take one seed per copy; VectorEnv.reset's annotation says a single int
        fresh, _ = envs.reset(seed=seed, options={"reset_mask": mask})  # type: ignore[arg-type]
        obs[mask] = fresh[mask]
        for i in np.flatnonzero(mask):
            state[0][:, i] = state[1][:, i] = 0  # M starts each episode from its initial (zero) state
            if (k := playing[i]) >= 0:
                rngs[k] = np.random.default_rng(seeds[k])
                perturb.start(k, seeds[k])
                if record is not None:
                    episodes[k] = EpisodeRecord(obs[i].copy(), seeds[k])

    start(np.ones(copies, dtype=bool))
    while any(k >= 0 for k in playing):
        z, history = model.see(obs, history)
        rows = [max(k, 0) for k in playing]  # idle copies act with any controller; their steps are dropped
        noise = _exploration_noise(playing, rngs, exploration, controller.out)
        actions = perturb.apply(playing, controller.act(z.cpu(), model.memory.readout(state).cpu(), rows, noise))
        obs[:], reward, terminated, truncated, info = envs.step(np.asarray(actions))
        state = model.remember(z, actions, space, state)
        _tally_step(playing, obs, actions, (reward, terminated, truncated, info), totals, steps, success, episodes)
        done = terminated | truncated
        if done.any():
            start(done)
    if record is not None:
        record.extend(episodes[k].arrays() for k in range(len(seeds)))
    if successes is not None:
        successes.extend(success)
    return list(zip(totals, steps))
