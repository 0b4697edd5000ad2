"""A temperature sweep: train C in the dream at several tau, score each in the dream and the real world.

Ha & Schmidhuber's DoomTakeCover table: a colder dream is easier to cheat, a hotter one too hard to learn in.
"""

from __future__ import annotations

import copy

from tqdm import tqdm

from worldmodels import config as config_lib
from worldmodels import stages
from worldmodels.config import Config
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import evolution


class TauRun(Run):
    """A run folder for one temperature, inside the parent run's, sharing its V, M and latents."""

    def __init__(self, parent: Run, cfg: Config):
        super().__init__(parent.dir / "tau_sweep", cfg)
        self.dir = parent.dir / "tau_sweep" / f"tau_{cfg.dream.tau:g}"
        self.parent = parent

    @property
    def vision(self):
        return self.parent.vision

    @property
    def memory(self):
        return self.parent.memory

    @property
    def latents(self):
        return self.parent.latents


def tau_sweep(cfg: Config, run: Run, taus: list[float]) -> list[dict]:
    """For each tau: C trained in the dream (the recipe's controller section), then evaluated in both worlds."""
    rows = []
    for tau in taus:
        tau_cfg = copy.deepcopy(cfg)
        tau_cfg.dream.tau = tau
        tau_cfg.controller.world = "dream"
        config_lib.validate(tau_cfg)
        tau_run = TauRun(run, tau_cfg)
        tau_run.dir.mkdir(parents=True, exist_ok=True)
        tqdm.write(f"tau sweep: tau = {tau:g} in {tau_run.dir}")
        evolution.train_controller(tau_cfg, tau_run)
        dream = stages.evaluate(tau_cfg, tau_run, "dream")
        real = stages.evaluate(tau_cfg, tau_run, "real")
        rows.append(
            {
                "tau": tau,
                "dream_mean": dream["mean"],
                "dream_std": dream["std"],
                "real_mean": real["mean"],
                "real_std": real["std"],
                "episodes": real["episodes"],
            }
        )
        tqdm.write(
            f"tau {tau:g}: dream {dream['mean']:.1f} +- {dream['std']:.1f}, "
            f"real {real['mean']:.1f} +- {real['std']:.1f}"
        )
    checkpoints.save_json(run.dir / "tau_sweep.json", rows)
    return rows
