"""Codebook usage of a VQ-VAE trained on CartPole frames, with and without restarts of dead codes.
One JSON line per run: the fraction of codes in use and the perplexity of the code histogram on held-out
frames, and the held-out reconstruction error.

    python benchmarks/codebook_usage.py [--recipe envs/cartpole.toml] [--episodes 200] [--epochs 3]

Both runs are the recipe's V with `vision.model = "vqvae"`, the same seed and data; they differ only in
`vision.vqvae.dead_after` (the recipe's value vs 0). `--init random|kmeans` picks the codebook's start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from worldmodels import config, stages
from worldmodels.agent import load_vision
from worldmodels.data.episodes import EpisodeStore
from worldmodels.data.frames import frames_to_float
from worldmodels.runs.checkpoints import Run
from worldmodels.vision.quantize import code_statistics


@torch.no_grad()
def held_out(run: Run, store: EpisodeStore) -> dict:
    """Codes in use, perplexity and summed squared error per frame over every frame of the store."""
    model = load_vision(run.vision)
    codes, errors = [], []
    for _, episode in store.iter_episodes():
        frames = frames_to_float(torch.from_numpy(episode["obs"]), "cpu")
        latent = model.encode(frames)
        codes.append(latent.codes.flatten())
        errors.append((model.decode(latent.mean) - frames).pow(2).flatten(1).sum(1))
    perplexity, usage = code_statistics(torch.cat(codes), model.num_embeddings)
    return {
        "usage": round(float(usage), 4),
        "perplexity": round(float(perplexity), 2),
        "mse_per_frame": round(float(torch.cat(errors).mean()), 2),
        "frames": sum(len(e) for e in errors),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/cartpole.toml")
    p.add_argument("--episodes", type=int, default=200, help="training episodes (40 more are held out)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--codes", type=int, default=128, help="vision.vqvae.num_embeddings")
    p.add_argument("--dead-after", type=int, default=20)
    p.add_argument("--init", default="kmeans", choices=["random", "kmeans"])
    p.add_argument("--out", help="folder for episodes and runs (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = Path(args.out or tempfile.mkdtemp(prefix="codebook_usage_"))
    overrides = [
        'vision.model="vqvae"',
        f"vision.epochs={args.epochs}",
        f"vision.vqvae.num_embeddings={args.codes}",
        f'vision.vqvae.codebook_init="{args.init}"',
        f"collect.episodes={args.episodes}",
        'device="cpu"',
    ]
    base = config.load(args.recipe, overrides)
    train_cfg = dataclasses.replace(base, name="train")
    held_cfg = dataclasses.replace(
        base, name="held_out", collect=dataclasses.replace(base.collect, episodes=40, seed=1)
    )
    stages.collect(train_cfg, root / "rollouts")
    stages.collect(held_cfg, root / "rollouts")
    held_store = EpisodeStore(stages.episodes_dir(root / "rollouts", held_cfg))
    for dead_after in (args.dead_after, 0):
        cfg = dataclasses.replace(train_cfg, vision=dataclasses.replace(train_cfg.vision, dead_after=dead_after))
        run = Run(root / "checkpoints" / f"{args.init}_dead_after_{dead_after}", cfg)
        run.dir.mkdir(parents=True, exist_ok=True)
        stages.train_vision(cfg, run, root / "rollouts")
        print(
            json.dumps(
                {
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "recipe": args.recipe,
                    "restarts": dead_after > 0,
                    "dead_after": dead_after,
                    "codes": args.codes,
                    "init": args.init,
                    "episodes": args.episodes,
                    "epochs": args.epochs,
                    **held_out(run, held_store),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
