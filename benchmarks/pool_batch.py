"""The pool evaluator's speed by lock-step batch: one generation's load (32 controllers near a run's kept one x 2
episodes) played by 2 workers whose jobs hold at most B episodes each. One JSON line per B.

    python benchmarks/pool_batch.py checkpoints/cartpole [--batches 8 16 32 8]

A batch is V, M and C's step for B episodes at once; the returns do not depend on it, only the time does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels import config
from worldmodels.play.backends import real_evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with vision.pt, memory.pt, controller.pt, recipe.toml")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 8])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = config.load(args.run / "recipe.toml")
    kept = torch.load(args.run / "controller.pt", weights_only=True)["params"].numpy().astype(np.float64)
    rng = np.random.default_rng(0)  # a population around the kept controller: long episodes, as late in a search
    candidates = kept + 0.02 * np.abs(kept).mean() * rng.standard_normal((32, kept.size))
    for batch in args.batches:
        with real_evaluator(cfg, args.run / "vision.pt", args.run / "memory.pt", args.workers) as evaluator:
            evaluator.batch = batch
            evaluator.returns(candidates[:4], [1, 2])  # workers start and load V and M
            evaluator.steps = 0
            start = time.perf_counter()
            returns = evaluator.returns(candidates, [11, 12])
            seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "batch": batch,
                    "workers": args.workers,
                    "seconds": round(seconds, 2),
                    "env_steps": evaluator.steps,
                    "steps_per_s": round(evaluator.steps / seconds),
                    "mean_return": float(returns.mean()),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
