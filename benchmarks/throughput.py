"""Speed of the spine: V training (frames/s, 1 vs 2 threads) and real-world controller evaluation
(env steps/s, 1 vs 2 worker processes, and batch-1 vs batched episodes). One JSON line per measurement.

    python benchmarks/throughput.py [--recipe envs/cartpole.toml] [--episodes 40]

Throughput does not depend on how well V and M are trained, so untrained models and random controllers are
used; their episodes are short, so per-episode costs (reset, dispatch) weigh more than in a late CMA-ES
generation. `--recipe envs/pendulum.toml` gives fixed 200-step episodes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels import checkpoints, config, rollouts
from worldmodels.controller import Controller
from worldmodels.evolution import Evaluator
from worldmodels.memory import MDNRNN, MemoryModelConfig
from worldmodels.rollouts import EpisodeStore, FrameStream, frames_to_float
from worldmodels.stages import memory_config
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.real import action_space


def emit(**fields) -> None:
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", **fields}), flush=True)


def vision_frames_per_s(cfg: config.Config, store: EpisodeStore, threads: int, seconds: float = 20.0) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_vision(vision_config(cfg))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vision.lr)
    loader = torch.utils.data.DataLoader(FrameStream(store, 64), batch_size=cfg.vision.batch_size)
    frames, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        for batch in loader:
            loss = model.loss(frames_to_float(batch, "cpu"))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if start is None:  # the first step warms up allocators; do not time it
                start = time.perf_counter()
                continue
            frames += len(batch)
            if time.perf_counter() - start >= seconds:
                break
    return frames / (time.perf_counter() - start)


def eval_steps_per_s(cfg: config.Config, run: Path, workers: int, batch: int, candidates: np.ndarray, seeds: list[int]) -> tuple[float, float]:
    """(env steps/s, mean episode length) for every candidate played on every seed."""
    with Evaluator(cfg, run / "vision.pt", run / "memory.pt", workers, batch=batch) as evaluator:
        evaluator.returns(candidates[:workers], seeds[:1])  # workers start and load V and M
        evaluator.steps = 0
        start = time.perf_counter()
        evaluator.returns(candidates, seeds)
        seconds = time.perf_counter() - start
        return evaluator.steps / seconds, evaluator.steps / (len(candidates) * len(seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="envs/cartpole.toml")
    parser.add_argument("--episodes", type=int, default=40, help="episodes collected for the V benchmark")
    parser.add_argument("--seconds", type=float, default=20.0, help="V training time per measurement")
    parser.add_argument("--candidates", type=int, default=32, help="random controllers evaluated")
    parser.add_argument("--seeds", type=int, default=4, help="episodes per controller")
    args = parser.parse_args()
    cfg = config.load(args.recipe, ["collect.workers=1"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg.collect.episodes = args.episodes
        rollouts.collect(cfg, tmp / "episodes")
        store = EpisodeStore(tmp / "episodes")
        for threads in (1, 2):
            emit(benchmark="vision_training", env=cfg.env.id, threads=threads,
                 frames_per_s=round(vision_frames_per_s(cfg, store, threads, args.seconds), 1))

        # untrained V and M in a run folder, as the evaluator workers load them
        torch.manual_seed(0)
        vision_cfg = vision_config(cfg)
        vision = build_vision(vision_cfg)
        checkpoints.save(tmp / "vision.pt", {"kind": "vision", "config": vision_cfg, "state_dict": vision.state_dict()})
        memory_cfg = memory_config(cfg, vision)
        checkpoints.save(tmp / "memory.pt", {"kind": "memory", "config": memory_cfg, "state_dict": MDNRNN(MemoryModelConfig(**memory_cfg)).state_dict()})
        space = action_space(cfg.env)
        dim = Controller(cfg.vision.latent_dim + cfg.memory.hidden_size, space).num_params
        candidates = np.random.default_rng(0).normal(0, 0.1, (args.candidates, dim))
        seeds = list(range(args.seeds))
        for workers, batch in ((1, 1), (2, 1), (1, 8), (2, 8)):
            steps_per_s, length = eval_steps_per_s(cfg, tmp, workers, batch, candidates, seeds)
            emit(benchmark="controller_evaluation", env=cfg.env.id, workers=workers, episodes_per_batch=batch,
                 episodes=len(candidates) * len(seeds), mean_episode_steps=round(length, 1), env_steps_per_s=round(steps_per_s, 1))


if __name__ == "__main__":
    main()
