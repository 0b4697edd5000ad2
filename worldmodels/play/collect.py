"""Collection: episodes played by a collection policy (or a driver) in parallel and saved to the episode store."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from worldmodels.config import CollectConfig, Config, EnvConfig
from worldmodels.controller.linear import to_action
from worldmodels.core.actions import action_dim
from worldmodels.core.pool import worker_pool
from worldmodels.core.progress import bar, say
from worldmodels.data.episodes import EpisodeLayout, EpisodeStore, episode_entry, episode_name, save_episode
from worldmodels.runs.checkpoints import fingerprint, save_json
from worldmodels.worlds.loop import Outcome, PolicyActor, WorldList, run_episodes
from worldmodels.worlds.real import action_space, make_world


class RandomPolicy:
    """Uniform random actions from the action space."""

    def __init__(self, space: gym.Space, seed: int):
        self.space = space
        self.space.seed(seed)

    def __call__(self):
        return self.space.sample()


class BrownianPolicy:
    """Smoothly varying actions: a random walk in [-1, 1]^d, mapped onto the space (argmax for Discrete)."""

    def __init__(self, space: gym.Space, seed: int, sigma: float):
        self.space, self.sigma = space, sigma
        self.rng = np.random.default_rng(seed)
        self.dim = action_dim(space)
        self.x = self.rng.uniform(-1, 1, self.dim)

    def __call__(self):
        self.x = np.clip(self.x + self.sigma * self.rng.standard_normal(self.dim), -1, 1)
        return to_action(self.x, self.space)  # mapped like a controller's output


def make_policy(cfg: CollectConfig, space: gym.Space, seed: int):
    """The collection policy named by the recipe."""
    if cfg.policy == "brownian":
        return BrownianPolicy(space, seed, cfg.brownian_sigma)
    return RandomPolicy(space, seed)


def episode_layout(env: EnvConfig) -> EpisodeLayout:
    """What the recipe's episodes hold: frames of its size, actions of its world's space."""
    return EpisodeLayout(env.frame_size, action_space(env))


def episode_seed(cfg: CollectConfig, index: int) -> int:
    """The seed of collected episode `index`, whoever plays it."""
    return cfg.seed * 1_000_003 + index


Drive = Callable[[list[int], list[Path]], None]  # the driver playing episodes: (their seeds, their files)


def driven(cfg: CollectConfig) -> int:
    """How many of the collected episodes (the first ones) the driver plays."""
    return round(cfg.driver_fraction * cfg.episodes)


def _inside(state: np.ndarray | None, cfg: CollectConfig) -> bool:
    if state is None:
        return True
    return all(b.low <= float(state[b.index]) <= b.high for b in cfg.keep)


class Filtered(WorldList):
    """One world whose episode ends where the recipe's collection cuts it: at `cfg.max_steps` steps, or at the step
    whose state leaves `cfg.keep` (`cut`: that step is then not kept)."""

    def __init__(self, world: gym.Env, cfg: CollectConfig):
        super().__init__([world])
        self.cfg, self.steps, self.cut = cfg, 0, False

    def step(self, actions: list) -> Outcome:
        obs, reward, terminated, truncated, info = self.worlds[0].step(actions[0])
        self.steps += 1
        self.cut = not terminated and not _inside(info.get("state"), self.cfg)
        capped = bool(self.cfg.max_steps) and self.steps >= self.cfg.max_steps
        return Outcome(
            obs[None],
            np.asarray([reward]),
            np.asarray([terminated]),
            np.asarray([truncated or capped or self.cut]),
            np.asarray([info.get("frames", 1)]),
            None,
        )


def collect_episode(env: gym.Env, cfg: CollectConfig, seed: int) -> dict:
    """Play one episode with the collection policy; stop early when the state leaves `cfg.keep`."""
    world = Filtered(env, cfg)
    record: list[dict] = []
    policy = make_policy(cfg, env.action_space, seed)
    run_episodes(world, PolicyActor(lambda _: policy()), [seed], record=record)  # it reads nothing of the world
    episode = record[0]
    if world.cut:  # the frame fails the filter: the episode ends before it, so every frame after the reset passes
        for key in ("obs", "action", "reward", "terminated", "truncated"):
            episode[key] = episode[key][:-1]
        if len(episode["action"]):
            episode["truncated"][-1] = True
    episode["policy"] = np.asarray(cfg.policy)  # who played it, for the manifest (a driver's episodes: "controller")
    return episode


class EpisodeCollector:
    """What one collecting worker holds: its world, made once, and the collection's settings (not the recipe)."""

    def __init__(self, env: EnvConfig, collect: CollectConfig):
        self.world, self.collect = make_world(env), collect

    def one(self, job: tuple[int, str]) -> tuple[str, int]:
        """Collect and save episode `index` into `root`: (its file name, its steps)."""
        index, root = job
        episode = collect_episode(self.world, self.collect, episode_seed(self.collect, index))
        save_episode(Path(root) / episode_name(index), episode)
        return episode_name(index), len(episode["action"])


_process_collector: EpisodeCollector | None = None  # a pool process's own, made by the pool's initializer


def _start_process_collector(env: EnvConfig, collect: CollectConfig) -> None:
    global _process_collector
    _process_collector = EpisodeCollector(env, collect)


def _collect_in_process(job: tuple[int, str]) -> tuple[str, int]:
    assert _process_collector is not None  # made by _start_process_collector when the pool started
    return _process_collector.one(job)


def collect(cfg: Config, root: Path, drive: Drive | None = None) -> dict:
    """Collect `cfg.collect.episodes` episodes into `root`, skipping those already there (resume); with `drive`,
    the first `collect.driver_fraction` of them are the driver's."""
    store = EpisodeStore(root, episode_layout(cfg.env))  # a bad env id fails here, fast, in this process
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):  # a corrupt episode is named, deleted and collected again, once
        _collect_missing(cfg, store, root, drive)
        entries = [
            episode_entry(path, episode)
            for path, episode in store.iter_episodes()
            if int(path.stem.split("_")[1]) < cfg.collect.episodes
        ]
        corrupt = sorted(n for n in store.skipped if int(Path(n).stem.split("_")[1]) < cfg.collect.episodes)
        if not corrupt or attempt:
            break
        say(
            f"collect: collecting {len(corrupt)} corrupt episode(s) again: "
            f"{', '.join(corrupt[:5])}{' ...' if len(corrupt) > 5 else ''}"
        )
        for name in corrupt:
            (root / name).unlink()
        store.skipped.clear()
    # episodes collected by a controller in iterative training rounds stay listed: rebuilt from their files, so a
    # damaged manifest loses nothing
    rounds = []
    for path, episode in store.iter_episodes(sorted(root.glob("round*_*.npz"))):
        rounds.append(episode_entry(path, episode, round=int(path.name[5:7])))
    episodes = entries + rounds  # named roundRR_*, never among the ep_* files above
    manifest = {
        "world": fingerprint(cfg),
        **({"driver": cfg.collect.driver} if drive is not None else {}),
        "episodes": episodes,
        "frames": sum(e["steps"] + 1 for e in episodes),
        "skipped_corrupt": sorted(store.skipped),
    }
    save_json(store.manifest_path, manifest)
    return manifest


def _collect_missing(cfg: Config, store: EpisodeStore, root: Path, drive: Drive | None = None) -> None:
    """Collect the recipe's episodes that have no file yet: the driver's first, then the collection policy's."""
    have = {p.name for p in store.paths()}
    todo = [i for i in range(cfg.collect.episodes) if episode_name(i) not in have]
    if drive is not None:
        mine = [i for i in todo if i < driven(cfg.collect)]
        if mine:
            drive([episode_seed(cfg.collect, i) for i in mine], [root / episode_name(i) for i in mine])
        todo = [i for i in todo if i >= driven(cfg.collect)]
    if todo:
        jobs = [(i, str(root)) for i in todo]
        progress = bar(total=len(todo), desc="collect", unit="ep")
        if cfg.collect.workers > 1:
            with worker_pool(cfg.collect.workers, _start_process_collector, (cfg.env, cfg.collect)) as pool:
                for _ in pool.imap_unordered(_collect_in_process, jobs):
                    progress.update()
                pool.close()
                pool.join()
        else:
            collector = EpisodeCollector(cfg.env, cfg.collect)
            for job in jobs:
                collector.one(job)
                progress.update()
        progress.close()
