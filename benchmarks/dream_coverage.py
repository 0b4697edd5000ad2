"""Would this M's dream score a controller as the real world does? One JSON line.

    python benchmarks/dream_coverage.py checkpoints/A --dynamics checkpoints/A checkpoints/B [--tau 1.0] [--set ...]

Dreams run A's controller with each listed run's M as the world: that M draws the next latent and pays the
reward, while C reads the h of A's own M (the one it was searched on) fed the same dreamed latents and actions.
So an M trained on other data can be asked about a controller it has never seen, e.g. a controller searched in
the real world, or an M whose data includes that controller's own episodes. A dream that scores a good driver
low, where the real world and M's teacher-forced reward score it high, has not seen that driving. C plays
noise-free (the recipe's `controller.noise` is not applied). The dream's settings are A's recipe's, changed by --set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from worldmodels import config
from worldmodels.agent import load_memory
from worldmodels.controller.linear import Controller, memory_actions
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.latents import dream_starts
from worldmodels.runs import checkpoints
from worldmodels.worlds.dream import Dream
from worldmodels.worlds.real import action_space


@torch.inference_mode()
def dream_returns(run: Path, dynamics: Path, cfg: config.Config, episodes: int, seed: int) -> np.ndarray:
    """Returns of `run`'s controller over `episodes` dreams whose world is `dynamics`' M."""
    own, world = load_memory(run / "memory.pt"), load_memory(dynamics / "memory.pt")
    saved = checkpoints.load(run / "controller.pt", "controller")
    flat = saved["params"].numpy()[None].repeat(episodes, 0)
    controller = Controller.from_flat(flat, saved["config"]["input_dim"], action_space(cfg.env))
    dream = Dream(world, cfg.dream, dream_starts(checkpoints.Run(run.parent, cfg), cfg.dream.start))
    dream.reset(torch.arange(episodes) + seed)
    state, total = own.initial_state(episodes), torch.zeros(episodes, dtype=torch.float64)
    alive = torch.ones(episodes, dtype=torch.bool)
    for _ in range(cfg.dream.max_steps):
        z = dream.z
        action = memory_actions(controller.outputs(z, own.readout(state)), controller.space)
        _, state = own.step(z, action, state)  # C's h: its own M, fed what the other M dreams
        reward, terminated, _ = dream.step(action)
        total += torch.where(alive, reward.double(), 0.0)  # an ended episode's later steps do not count
        alive &= ~terminated
    return total.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with a controller, its M, its recipe and latents")
    parser.add_argument("--dynamics", type=Path, nargs="+", required=True, help="run folders whose M dreams")
    parser.add_argument("--tau", type=float, help="the dream's temperature (default: the run's recipe)")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="dream.max_steps=250"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides: list[config.Override] = [("name", args.run.name), *args.overrides] + (
        [("dream.tau", args.tau)] if args.tau is not None else []
    )
    cfg = config.load(args.run / "recipe.toml", overrides)
    rows = []
    for dynamics in args.dynamics:
        returns = dream_returns(args.run, dynamics, cfg, args.episodes, args.seed)
        rows.append({"dynamics": str(dynamics), "mean": float(returns.mean()), "std": float(returns.std())})
    print(
        json.dumps(
            {
                "benchmark": "dream_coverage",
                "run": str(args.run),
                "tau": cfg.dream.tau,
                "start": cfg.dream.start,
                "max_steps": cfg.dream.max_steps,
                "episodes": args.episodes,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "dreams": rows,
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except WorldModelsError as exc:  # a missing or foreign run folder is one line, as in the stages
        raise SystemExit(f"error: {exc}") from None
