"""collect: the recipe's episodes, from its collection policy or a driver run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from worldmodels.agent import WorldModel
from worldmodels.config import Config
from worldmodels.core.actions import action_dim
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import say
from worldmodels.data.episodes import EpisodeStore
from worldmodels.play import collect as collection
from worldmodels.play.backends import real_evaluator
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.worlds.real import action_space


def episodes_dir(rollouts_root: Path, cfg: Config) -> Path:
    return Path(rollouts_root) / cfg.name / "episodes"


def episode_store(rollouts_root: Path, cfg: Config) -> EpisodeStore:
    """The recipe's episodes: refused when collected for another world, each checked against its frames and actions
    when read."""
    store = EpisodeStore(episodes_dir(rollouts_root, cfg), collection.episode_layout(cfg.env))
    store.check_world(cfg)
    return store


def collect(cfg: Config, rollouts_root: Path) -> dict:
    """Gather episodes with the collection policy; already collected episodes are kept."""
    root = episodes_dir(rollouts_root, cfg)
    store = episode_store(rollouts_root, cfg)
    if store.complete(cfg.collect.episodes):
        say(f"collect: {root} already holds {cfg.collect.episodes} episodes, skipping")
        return store.manifest()
    manifest = collection.collect(cfg, root, driver(cfg) if cfg.collect.driver else None)
    say(f"collect: {len(manifest['episodes'])} episodes, {manifest['frames']} frames in {root}")
    return manifest


def driver(cfg: Config) -> collection.Drive:
    """collect.driver: another run folder's V, M and C, checked to fit this recipe's world, playing episodes with
    noise on C's outputs."""
    folder = Path(cfg.collect.driver)
    if not folder.is_dir():
        raise WorldModelsError(f"collect.driver '{folder}' is not a run folder")
    run = Run(folder.parent, dataclasses.replace(cfg, name=folder.name))
    run.check_world()  # its files were made for this recipe's world (env, frames, actions), or one line says which
    memory = checkpoints.load(run.require(run.memory, "train-memory"), "memory")["config"]
    frames = checkpoints.load(run.require(run.vision, "train-vision"), "vision")["config"]
    checkpoints.check_same_config(run.vision, frames, {"frame_size": cfg.env.frame_size}, "env")
    checkpoints.check_same_config(run.memory, memory, {"action_dim": action_dim(action_space(cfg.env))}, "memory")
    model = WorldModel.load(run.vision, run.memory)
    flat = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)["params"].numpy()

    def drive(seeds: list[int], paths: list[Path]) -> None:
        with real_evaluator(cfg, run.vision, run.memory, cfg.collect.workers) as player:
            player.collect(np.repeat(flat[None], len(seeds), axis=0), seeds, cfg.collect.driver_noise, paths)

    return drive
