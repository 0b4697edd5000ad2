"""Scaling out, measured: real-world evaluation env steps/s per backend, and V training frames/s in one
process and in 2 data-parallel processes. One JSON line per measurement.

    python benchmarks/scale.py [--recipe envs/carracing_small.toml] [--max-steps 100] [--epochs 3]

Evaluation: untrained V and M and random controllers (throughput does not depend on training), episodes
capped at --max-steps; the process pool with 1 and 2 workers playing episodes one at a time, the pool with
each worker batching 8 episodes in lock-step, one process stepping a gymnasium vector env of 2 and 8
copies with V, M and C batched across them, and Ray actors when Ray is installed. V training: the real
`worldmodels train-vision` on collected episodes, in 1 process and under `torchrun --nproc_per_node 2`
(gloo on CPU; the recipe's global batch either way); with CUDA also bf16 against fp32 on one GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels import config
from worldmodels.controller.linear import Controller
from worldmodels.memory import MDNRNN
from worldmodels.play import collect as collection
from worldmodels.play.backends import Evaluator, InProcess, LocalPool, RayPool, VectorEvaluator
from worldmodels.stages.memory import memory_sizes
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.real import action_space


def emit(**fields) -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, {gpu}", **fields}), flush=True)


def evaluator(kind: str, workers: int, init_args: tuple) -> Evaluator:
    cfg, vision, memory, max_steps = init_args
    worker_args = (cfg.env, vision, memory, max_steps)  # a worker is sent only what it reads
    if kind == "vector":
        return VectorEvaluator(cfg, vision, memory, workers, max_steps)
    if kind == "ray":
        return Evaluator(RayPool(workers, worker_args), workers, batch=8)
    runner = LocalPool(workers, worker_args) if workers > 1 else InProcess(worker_args)
    return Evaluator(runner, workers, batch=1 if kind == "pool, one at a time" else 8)


def env_steps_per_s(
    kind: str, workers: int, init_args: tuple, candidates: np.ndarray, seeds: list[int]
) -> tuple[float, float]:
    """(env steps/s, mean episode length) for every candidate played on every seed."""
    with evaluator(kind, workers, init_args) as ev:
        ev.returns(candidates[:workers], seeds[:1])  # workers start, load V and M, make their worlds
        ev.steps = 0
        start = time.perf_counter()
        ev.returns(candidates, seeds)
        seconds = time.perf_counter() - start
        return ev.steps / seconds, ev.steps / (len(candidates) * len(seeds))


def train_vision(recipe: str, root: Path, label: str, processes: int, epochs: int, extra: list[str]) -> float:
    """Seconds `worldmodels train-vision` reports for `epochs` epochs, in 1 process or `processes` under torchrun."""
    launcher = (
        [sys.executable, "-m", "worldmodels"]
        if processes == 1
        else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m", "worldmodels"]
    )
    command = [
        *launcher,
        "train-vision",
        recipe,
        "--rollouts",
        str(root / "rollouts"),
        "--checkpoints",
        str(root / label),
        "--set",
        f"vision.epochs={epochs}",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"train-vision failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="envs/carracing_small.toml")
    parser.add_argument("--max-steps", type=int, default=100, help="episode cap for the evaluation measurements")
    parser.add_argument("--candidates", type=int, default=16, help="random controllers evaluated")
    parser.add_argument("--seeds", type=int, default=2, help="episodes per controller")
    parser.add_argument("--epochs", type=int, default=3, help="V training epochs per measurement")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["evaluation", "vision"], help="measurements to leave out"
    )
    args = parser.parse_args()
    cfg = config.load(args.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "evaluation" not in args.skip:
            torch.manual_seed(0)  # untrained V and M, as the workers receive them
            vision_cfg = vision_config(cfg)
            vision = build_vision(vision_cfg)
            memory = MDNRNN(cfg.memory, **memory_sizes(cfg, vision))
            saved = (
                {"kind": "vision", "config": vision_cfg, "state_dict": vision.state_dict()},
                {"kind": "memory", "config": memory.stored_config(), "state_dict": memory.state_dict()},
            )
            init_args = (cfg, *saved, args.max_steps)
            dim = Controller(cfg.vision.latent_dim + cfg.memory.hidden_size, action_space(cfg.env)).num_params
            candidates = np.random.default_rng(0).normal(0, 0.1, (args.candidates, dim))
            seeds = list(range(args.seeds))
            setups = [
                ("pool, one at a time", 1),
                ("pool, one at a time", 2),
                ("pool, batches of 8", 1),
                ("pool, batches of 8", 2),
                ("vector", 2),
                ("vector", 8),
            ]
            if importlib.util.find_spec("ray"):
                setups.append(("ray", 2))
            for kind, workers in setups:
                steps_per_s, length = env_steps_per_s(kind, workers, init_args, candidates, seeds)
                emit(
                    benchmark="real_evaluation",
                    env=cfg.env.id,
                    backend=kind,
                    workers=workers,
                    episodes=len(candidates) * len(seeds),
                    mean_episode_steps=round(length, 1),
                    env_steps_per_s=round(steps_per_s, 1),
                )
        if "vision" not in args.skip:
            cfg.collect.workers = min(2, os.cpu_count() or 1)
            manifest = collection.collect(cfg, tmp / "rollouts" / cfg.name / "episodes")
            frames = manifest["frames"] * args.epochs
            runs = [("1 process", 1, ["--device", "cpu"]), ("2 DDP processes (gloo)", 2, ["--device", "cpu"])]
            if torch.cuda.is_available():
                runs += [
                    (f"1 GPU, {p}", 1, ["--device", "cuda", "--set", f'precision="{p}"']) for p in ("fp32", "bf16")
                ]
            for label, processes, extra in runs:
                seconds = train_vision(
                    args.recipe,
                    tmp,
                    label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""),
                    processes,
                    args.epochs,
                    extra,
                )
                emit(
                    benchmark="vision_training",
                    env=cfg.env.id,
                    model=cfg.vision.model,
                    setup=label,
                    processes=processes,
                    global_batch=cfg.vision.batch_size,
                    frames=frames,
                    seconds=seconds,
                    frames_per_s=round(frames / seconds, 1),
                )


if __name__ == "__main__":
    main()
