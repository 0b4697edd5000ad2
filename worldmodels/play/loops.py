"""The agent playing real episodes: V, M and C batched across episodes in lock-step, on a list of worlds or one
vector env."""

from __future__ import annotations

from typing import SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError


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
            "policy": np.asarray("controller"),  # played by a controller: a driver's, or a round's
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
