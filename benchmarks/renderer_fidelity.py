"""Does an agent trained on the fast renderer see and drive gymnasium's own CarRacing-v3 the same? Two JSON lines.

    python benchmarks/renderer_fidelity.py RECIPE --checkpoints ROOT [--run NAME] [--v-episodes 4] [--episodes 100]

V: Brownian episodes on seeds apart from the data's, each played once on both renderers with the same actions (the
dynamics are identical, so the frames are of the same states), every frame through V (its posterior mean decoded):
the mean squared error on each renderer and their ratio. C: the run's kept controller on the evaluation's seeds,
played on each renderer through the evaluator `worldmodels evaluate` uses: both means and the paired difference
with its standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import warnings

import numpy as np
import torch

from worldmodels import config
from worldmodels.agent import load_vision
from worldmodels.data.frames import frames_to_float
from worldmodels.play.backends import real_evaluator
from worldmodels.runs import checkpoints
from worldmodels.worlds.real import make_world


def emit(**fields) -> None:
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", **fields}), flush=True)


def paired_frames(env: config.EnvConfig, seed: int, steps: int) -> dict[str, np.ndarray]:
    """One Brownian episode played on both renderers with the same actions: {renderer: (T, H, W, 3) frames}."""
    worlds = {r: make_world(dataclasses.replace(env, renderer=r)) for r in ("gymnasium", "fast")}
    frames = {r: [w.reset(seed=seed)[0]] for r, w in worlds.items()}
    rng, action = np.random.default_rng(seed), np.zeros(3)
    low, high = worlds["fast"].action_space.low, worlds["fast"].action_space.high
    for _ in range(steps):
        action = np.clip(action + rng.normal(0.0, 0.1, 3) * (high - low), low, high)
        out = {r: w.step(action) for r, w in worlds.items()}
        for r, (obs, *_rest) in out.items():
            frames[r].append(obs)
        if out["fast"][2] or out["fast"][3]:
            break
    return {r: np.stack(f) for r, f in frames.items()}


@torch.inference_mode()
def reconstruction_errors(vision, frames: np.ndarray) -> float:
    """Mean squared error of V's reconstructions (the posterior mean decoded) of uint8 frames, in [0, 1] units."""
    x = frames_to_float(torch.from_numpy(frames), "cpu")
    return float(((vision.through_z(x) - x) ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--run", help="the run's name (default: the recipe's)")
    parser.add_argument("--v-episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=250, help="decisions per V episode")
    parser.add_argument("--episodes", type=int, default=100, help="controller episodes per renderer (0: V only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cfg = config.load(args.recipe, [f'name="{args.run}"'] if args.run else [])
    run = checkpoints.Run(args.checkpoints, cfg)
    vision = load_vision(run.vision)
    seeds = [900_000 + k for k in range(args.v_episodes)]  # apart from collection's and evaluation's seeds
    errors: dict[str, list[float]] = {"gymnasium": [], "fast": []}
    for seed in seeds:
        for renderer, frames in paired_frames(cfg.env, seed, args.steps).items():
            errors[renderer].append(reconstruction_errors(vision, frames))
    gymnasium, fast = float(np.mean(errors["gymnasium"])), float(np.mean(errors["fast"]))
    emit(
        benchmark="vision_across_renderers",
        run=str(run.dir),
        seeds=seeds,
        mse_fast_frames=round(fast, 6),
        mse_gymnasium_frames=round(gymnasium, 6),
        gymnasium_over_fast=round(gymnasium / fast, 4),
    )
    if not args.episodes:  # V alone: a run with no controller yet
        return
    saved = checkpoints.load(run.controller, "controller")
    flat = saved["params"].numpy()[None]
    eval_seeds = [cfg.evaluate.seed + k for k in range(args.episodes)]
    returns = {}
    for renderer in ("gymnasium", "fast"):
        played = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, renderer=renderer))
        with real_evaluator(played, run.vision, run.memory, cfg.evaluate.workers) as evaluator:
            returns[renderer] = evaluator.returns(flat, eval_seeds)[0]
    difference = returns["fast"] - returns["gymnasium"]
    emit(
        benchmark="controller_across_renderers",
        run=str(run.dir),
        episodes=args.episodes,
        mean_gymnasium=round(float(returns["gymnasium"].mean()), 2),
        mean_fast=round(float(returns["fast"].mean()), 2),
        paired_difference=round(float(difference.mean()), 2),
        paired_standard_error=round(float(difference.std(ddof=1) / np.sqrt(len(difference))), 2),
    )


if __name__ == "__main__":
    main()
