"""Dream throughput: a whole CMA-ES population x rollouts dreamt as one batch vs the same episodes one at a time.

    python benchmarks/dream.py [--recipe envs/carracing.toml] [--population 64] [--rollouts 16] [--steps 100]

M has the recipe's sizes (carracing: z 32, LSTM 256, 5 Gaussians, 3 actions: the original World Models) and is
untrained: speed does not depend on training. Episodes never end early (`done = "never"`) so both paths dream
exactly `--steps` steps per episode. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from worldmodels import config
from worldmodels.controller import Controller
from worldmodels.memory import MDNRNN, MemoryModelConfig
from worldmodels.stages import memory_config
from worldmodels.training import pick_device
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.dream import Dream, play_dream
from worldmodels.worlds.real import action_space


def steps_per_s(dream: Dream, controller: Controller, seeds: list[int], batch: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    returns, steps = play_dream(dream, controller, seeds, batch)
    if dream.device.type == "cuda":
        torch.cuda.synchronize()
    return steps.sum() / (time.perf_counter() - start), returns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/carracing.toml")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="dream steps per episode")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    cfg = config.load(args.recipe, [f"dream.max_steps={args.steps}", 'dream.done="never"'])
    device = pick_device(args.device)
    torch.manual_seed(0)
    memory = MDNRNN(MemoryModelConfig(**memory_config(cfg, build_vision(vision_config(cfg))))).to(device).eval()
    dream = Dream(memory, cfg.dream, starts=torch.randn(100, 2, cfg.vision.latent_dim))
    space = action_space(cfg.env)
    n = args.population * args.rollouts
    rng = np.random.default_rng(0)
    num_params = Controller(cfg.vision.latent_dim + cfg.memory.hidden_size, space).num_params
    population = Controller.from_flat(
        rng.normal(0, 0.1, (args.population, num_params)), cfg.vision.latent_dim + cfg.memory.hidden_size, space
    )
    controllers = population.select(torch.arange(args.population).repeat_interleave(args.rollouts))
    seeds = list(range(args.rollouts)) * args.population
    play_dream(dream, controllers.select(torch.arange(8)), seeds[:8], 0)  # warm-up
    batched, batched_returns = steps_per_s(dream, controllers, seeds, batch=0)
    single, single_returns = steps_per_s(dream, controllers, seeds, batch=1)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {device}",
                "recipe": args.recipe,
                "latent_dim": cfg.vision.latent_dim,
                "hidden_size": cfg.memory.hidden_size,
                "num_gaussians": cfg.memory.num_gaussians,
                "episodes": n,
                "steps_per_episode": args.steps,
                "batched_steps_per_s": round(float(batched), 1),
                "single_steps_per_s": round(float(single), 1),
                "speedup": round(float(batched / single), 1),
                "same_returns": bool(np.allclose(batched_returns, single_returns, atol=1e-3)),
            }
        )
    )


if __name__ == "__main__":
    main()
