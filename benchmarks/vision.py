"""Vision models compared on the same episodes for the same wall-clock budget: held-out reconstruction
error (and FID with a feature network of your own), size and training speed. One JSON line per model.

    python benchmarks/vision.py [--recipe envs/carracing_small.toml] [--models vae vqvae nvae]
                                [--seconds 300 | --batches N] [--episodes N] [--heldout 0.2]
                                [--set section.key=value ...] [--fid-features net.pt2]

The recipe's episodes are collected once into `--rollouts` (reused on later runs); the last `--heldout` of
them are held out. Every model is the recipe's V with only `vision.model` changed (so the conv VAE and NVAE
share `latent_dim`), starts from the same seed, sees the training frames in the same shuffled order, and
trains with Adam at the recipe's lr and batch size, clipped as `train-vision` clips, until `--seconds` run
out (or, with `--batches`, for the same number of batches: the same data, whatever each model costs).
Frames are held in memory as uint8: meant for CPU-sized recipes, not thousands of CarRacing episodes.

`mse`/`psnr` measure `reconstruct` (the model's best: all of NVAE's latent groups); `mse_z`/`psnr_z` measure
decode(encode(x).mean), the flat z that M sees. `steps` counts optimiser steps taken, `skipped_steps` the
batches whose loss or gradient was not finite; `epochs` counts every batch drawn. `fid`/`fid_z` (with
`--fid-features`, see worldmodels/fid.py) compare held-out frames with their reconstructions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels import config, stages
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.episodes import EpisodeStore
from worldmodels.data.frames import frames_to_float
from worldmodels.training import apply_gradients, pick_device
from worldmodels.vision import MODELS, VisionModel, build_vision, vision_config
from worldmodels.vision.fid import feature_statistics, frechet_distance, load_feature_net


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # stdout carries only the JSON lines


def episodes(cfg: config.Config, rollouts: Path) -> tuple[list[np.ndarray], float]:
    """The recipe's episodes' frames (uint8 (T+1, H, W, 3) each), collected unless already there,
    and the seconds it took."""
    # the folder is keyed by what shapes the frames, so `--set env.frame_size=...` never reuses other frames
    shape = {"env": config.to_dict(cfg.env), "collect": config.to_dict(cfg.collect) | {"episodes": 0, "workers": 0}}
    key = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{key}")
    start = time.perf_counter()
    stages.collect(cfg, rollouts)
    seconds = time.perf_counter() - start
    store = EpisodeStore(stages.episodes_dir(rollouts, cfg))
    paths = sorted(store.listed())[: cfg.collect.episodes]  # the folder may hold more from a larger earlier run
    return [episode["obs"] for _, episode in store.iter_episodes(paths)], seconds


def build(cfg: config.Config, name: str, seed: int) -> VisionModel:
    """The recipe's V with `vision.model = name`, initialised from `seed`."""
    # e.g. NVAE's sizes
    cfg = config.validate(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, model=name)))
    torch.manual_seed(seed)
    return build_vision(vision_config(cfg))


def train(
    model: VisionModel,
    frames: torch.Tensor,
    cfg: config.Config,
    seconds: float,
    seed: int,
    device: torch.device,
    max_batches: int = 0,
) -> dict:
    """Adam on shuffled frames until `seconds` of wall clock (or `max_batches` batches, if given) are spent.

    Steps with a non-finite loss or gradient are skipped and counted.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vision.lr)
    order_rng = torch.Generator().manual_seed(seed)  # every model sees the frames in the same order
    torch.manual_seed(seed)
    batch_size, n = cfg.vision.batch_size, len(frames)
    seen = batches = steps = skipped = 0
    model.train()
    start = time.perf_counter()

    def done() -> float:
        """The fraction of the budget spent: NVAE's KL warm-up reads it."""
        return batches / max_batches if max_batches else (time.perf_counter() - start) / seconds

    while done() < 1:
        order = torch.randperm(n, generator=order_rng)
        for i in range(0, n, batch_size):
            if done() >= 1:
                break
            x = frames_to_float(frames[order[i : i + batch_size]], device)
            model.progress = done()
            seen += len(x)
            batches += 1
            if not apply_gradients(model, optimizer, model.loss(x)["loss"], 1.0):  # clipped as train-vision clips
                skipped += 1
                continue
            steps += 1
    elapsed = time.perf_counter() - start
    return {
        "frames_per_s": round(seen / elapsed, 1),
        "epochs": round(seen / n, 3),
        "steps": steps,
        "skipped_steps": skipped,
        "seconds": round(elapsed, 1),
    }


@torch.no_grad()
def evaluate(
    model: VisionModel, frames: torch.Tensor, batch_size: int, device: torch.device, keep: bool
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Held-out mse and psnr of `reconstruct` and of `through_z`; the reconstructions too if `keep`."""
    model.eval()
    ways = {"": model.reconstruct, "_z": model.through_z}
    squared = dict.fromkeys(ways, 0.0)
    kept: dict[str, list[torch.Tensor]] = {suffix: [] for suffix in ways}
    for start in range(0, len(frames), batch_size):
        x = frames_to_float(frames[start : start + batch_size], device)
        for suffix, way in ways.items():
            x_hat = way(x)
            squared[suffix] += float((x_hat - x).double().pow(2).sum())
            if keep:
                kept[suffix].append(x_hat.float().cpu())
    metrics = {}
    for suffix, total in squared.items():
        mse = total / frames.numel()  # per pixel and channel, frames in [0, 1]
        metrics |= {
            f"mse{suffix}": round(mse, 7),
            f"psnr{suffix}": round(10 * math.log10(1 / mse), 3) if mse > 0 else float("inf"),
        }
    return metrics, {suffix: torch.cat(parts) for suffix, parts in kept.items() if parts}


def main() -> None:
    present = list(MODELS)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/carracing_small.toml")
    p.add_argument(
        "--models", nargs="+", default=present, help=f"vision models to compare (default: {' '.join(present)})"
    )
    p.add_argument("--seconds", type=float, default=300.0, help="training wall clock per model")
    p.add_argument(
        "--batches", type=int, default=0, help="train each model on this many batches instead of a wall clock"
    )
    p.add_argument("--episodes", type=int, help="episodes to collect (default: the recipe's collect.episodes)")
    p.add_argument("--heldout", type=float, default=0.2, help="fraction of the episodes held out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--fid-features", help="a feature network saved with torch.export.save (see worldmodels/fid.py)")
    p.add_argument("--rollouts", default="/tmp/worldmodels_bench_vision", help="scratch folder for the episodes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown vision model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if not 0 < args.heldout < 1:
        p.error("--heldout must be a fraction between 0 and 1")
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"collect.episodes={args.episodes}"] if args.episodes else [])
    cfg = config.load(args.recipe, overrides)
    device = pick_device(cfg.device)
    net = load_feature_net(args.fid_features) if args.fid_features else None  # fail before collecting, not after

    obs, collect_seconds = episodes(cfg, Path(args.rollouts))
    n_held = max(1, round(args.heldout * len(obs)))
    if len(obs) - n_held < 1:
        raise WorldModelsError(f"{len(obs)} episodes leave none to train on with --heldout {args.heldout}")
    train_frames = torch.from_numpy(np.concatenate(obs[:-n_held]))  # uint8 (N, H, W, 3)
    held_frames = torch.from_numpy(np.concatenate(obs[-n_held:]))
    log(
        f"vision benchmark: {len(obs)} episodes ready in {collect_seconds:.1f} s; training on {len(train_frames)} "
        f"frames, {n_held} episodes ({len(held_frames)} frames) held out"
    )
    real_stats = None
    if net is not None:
        real_stats = feature_statistics(net, frames_to_float(held_frames, "cpu"), cfg.vision.batch_size)

    for name in args.models:
        model = build(cfg, name, args.seed).to(device)
        log(f"{name}: training for " + (f"{args.batches} batches" if args.batches else f"{args.seconds:.0f} s"))
        fitted = train(model, train_frames, cfg, args.seconds, args.seed, device, args.batches)
        metrics, recon = evaluate(model, held_frames, cfg.vision.batch_size, device, keep=net is not None)
        scores = {}
        if net is not None:
            scores = {
                f"fid{suffix}": float(
                    f"{frechet_distance(*real_stats, *feature_statistics(net, x, cfg.vision.batch_size)):.6g}"
                )
                for suffix, x in recon.items()
            }
        print(
            json.dumps(
                {
                    "model": name,
                    "mse": metrics["mse"],
                    "psnr": metrics["psnr"],
                    "params": sum(p.numel() for p in model.parameters()),
                    "frames_per_s": fitted["frames_per_s"],
                    "mse_z": metrics["mse_z"],
                    "psnr_z": metrics["psnr_z"],
                    **{k: v for k, v in fitted.items() if k != "frames_per_s"},
                    **scores,
                    "latent_dim": model.latent_dim,
                    "train_frames": len(train_frames),
                    "heldout_frames": len(held_frames),
                    "recipe": args.recipe,
                    "overrides": overrides,
                    "seed": args.seed,
                    "threads": args.threads,
                    "device": str(device),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    try:
        main()
    except WorldModelsError as exc:
        raise SystemExit(f"error: {exc}") from None
