"""Any policy in any world: the real pixel world seen as the dream shows it, and both built from a run folder.

`LatentObservation` turns a pixel world's frames into [z, h] through a run's V and M (M's state advanced
with each action taken), so a policy trained in `DreamEnv` runs unchanged in the real world. `dream_env`
and `latent_env` build the two from a run folder; `gym.make("worldmodels/Dream-v0", run=...)` and
`gym.make("worldmodels/Latent-v0", run=...)` call them.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel, load_ensemble
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.latents import dream_starts
from worldmodels.runs.checkpoints import Run
from worldmodels.worlds.dream import Dream, DreamEnv, observation_space
from worldmodels.worlds.real import action_space, make_world


class LatentObservation(gym.Wrapper):
    """A pixel world whose observations are [z, h]: V's mean of the frame and M's hidden state
    after the past actions."""

    def __init__(self, env: gym.Env, model):
        super().__init__(env)
        self.model = model
        self.observation_space = observation_space(model.vision.latent_dim, model.memory)
        self.history: torch.Tensor | None = None  # V's memory of this episode's past frames, for a V that reads several

    @torch.inference_mode()
    def _see(self, frame: np.ndarray) -> np.ndarray:
        self.z, self.history = self.model.see(frame[None], self.history)
        return torch.cat([self.z, self.model.memory.readout(self.state)], dim=-1)[0].cpu().numpy()

    def reset(self, **kwargs):
        frame, info = self.env.reset(**kwargs)
        self.state, self.history = self.model.memory.initial_state(1, self.model.device), None
        return self._see(frame), info

    @torch.inference_mode()
    def step(self, action):
        self.state = self.model.remember(self.z, [action], self.env.action_space, self.state)
        frame, reward, terminated, truncated, info = self.env.step(action)
        return self._see(frame), reward, terminated, truncated, info


def open_run(run: str | Path, recipe: str | Path | None = None):
    """(recipe, Run) of a run folder: the given recipe, else the one the folder recorded.

    A recorded recipe is read as data; an env id that would import a module ("module:EnvId") is taken only
    from a recipe the caller names, so opening someone else's run folder imports nothing.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise WorldModelsError(f"run folder '{folder}' does not exist")
    cfg = config_lib.load(recipe if recipe is not None else folder / "recipe.toml", [("name", folder.name)])
    if recipe is None and ":" in cfg.env.id:
        raise WorldModelsError(
            f"'{folder / 'recipe.toml'}' names env id '{cfg.env.id}', which imports a module; pass recipe=... to use it"
        )
    run_folder = Run(folder.parent, cfg)
    run_folder.check_world()  # a checkpoint made for another world than the recipe's is refused in one line
    return cfg, run_folder


def dream_env(
    run: str | Path, recipe: str | Path | None = None, device: str = "cpu", render_mode: str | None = None
) -> DreamEnv:
    """The dream the run's controller trained in: its M, V, dream settings, starts and action space."""
    cfg, folder = open_run(run, recipe)
    model = WorldModel.load(
        folder.require(folder.vision, "train-vision"), folder.require(folder.memory, "train-memory"), device
    )
    starts = dream_starts(folder, cfg.dream.start)
    return DreamEnv(
        Dream(model.memory, cfg.dream, starts, model.vision, load_ensemble(folder, device)),
        action_space(cfg.env),
        render_mode=render_mode,
    )


def latent_env(run: str | Path, recipe: str | Path | None = None, render_mode: str | None = None) -> LatentObservation:
    """The run's real world (its recipe's env, action repeat and bounds) seen through its V and M as [z, h]."""
    cfg, folder = open_run(run, recipe)
    model = WorldModel.load(
        folder.require(folder.vision, "train-vision"), folder.require(folder.memory, "train-memory")
    )
    if render_mode is not None:
        cfg.env.kwargs = {**cfg.env.kwargs, "render_mode": render_mode}
    return LatentObservation(make_world(cfg.env), model)
