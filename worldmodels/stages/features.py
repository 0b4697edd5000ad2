"""train-vision for the pretrained V: the frozen encoder's features computed once, then its compressor trained.

The encoder never changes, so every frame goes through it once (not once an epoch); the compressor then
trains on the cached features. One episode in ten (the last, and every tenth before it) is kept out, for
the held-out feature reconstruction error the stage reports.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from worldmodels.config import Config
from worldmodels.core import distributed
from worldmodels.core.progress import bar
from worldmodels.data.episodes import EpisodeStore
from worldmodels.data.frames import frames_to_float
from worldmodels.runs.checkpoints import Run
from worldmodels.training import Fit, fit, fit_options, main_writer
from worldmodels.vision import PretrainedV
from worldmodels.vision.pretrained import episode_stacks

HOLDOUT_EVERY = 10  # every 10th episode is held out of the compressor's training


@dataclass
class FeatureCache:
    """Every frame's features (N, F), each frame's context window as rows of `features` (N, context), the frames
    themselves where a pixel decoder trains, and which rows are held out."""

    features: torch.Tensor
    windows: torch.Tensor
    frames: torch.Tensor | None
    heldout: torch.Tensor  # (N,) bool
    frames_per_second: float

    def batch(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        out = {"features": self.features[self.windows[rows]].flatten(1).to(device)}
        if self.frames is not None:
            out["frames"] = frames_to_float(self.frames[rows], device)
        return out


@torch.no_grad()
def cache_features(model: PretrainedV, store: EpisodeStore, device: torch.device, keep_frames: bool) -> FeatureCache:
    """Run every listed episode's frames through the frozen encoder once."""
    features, windows, frames, heldout, seen, seconds = [], [], [], [], 0, 0.0
    paths = store.listed()
    for i, (_, episode) in enumerate(bar(store.iter_episodes(paths), total=len(paths), desc="features", unit="ep")):
        obs = torch.from_numpy(episode["obs"])
        start = time.perf_counter()
        f = torch.cat([model.features(frames_to_float(chunk, device)).cpu() for chunk in obs.split(256)])
        seconds += time.perf_counter() - start
        index = torch.arange(len(f))
        rows = episode_stacks(index[:, None], model.options.context).long()  # never another episode's
        windows.append(seen + rows)
        features.append(f)
        heldout.append(torch.full((len(f),), (len(paths) - 1 - i) % HOLDOUT_EVERY == 0))  # the last, and back
        if keep_frames:
            frames.append(obs)
        seen += len(f)
    return FeatureCache(
        torch.cat(features),
        torch.cat(windows),
        torch.cat(frames) if keep_frames else None,
        torch.cat(heldout),
        seen / max(seconds, 1e-9),
    )


@torch.no_grad()
def heldout_error(model: PretrainedV, cache: FeatureCache, device: torch.device) -> dict[str, float]:
    """The compressor's feature reconstruction on held-out episodes: MSE, and MSE over the features' variance."""
    rows = cache.heldout.nonzero().flatten()
    if not len(rows):
        return {}
    stacked = cache.batch(rows, device)["features"]
    mse = float(((model.expand(model.compress(stacked)) - stacked) ** 2).mean())
    return {"heldout_feature_mse": mse, "heldout_feature_relative": mse / max(float(stacked.var(0).mean()), 1e-12)}


def train_pretrained_vision(
    cfg: Config, run: Run, store: EpisodeStore, model: PretrainedV, model_config: dict, device: torch.device
) -> dict:
    """Cache the features, then train the compressor (and the pixel decoder) on the episodes not held out."""
    v = cfg.vision
    rank, size = distributed.rank_and_size()
    batch_size = distributed.local_batch(v.batch_size, "vision.batch_size")

    @functools.cache
    def cached() -> tuple[FeatureCache, torch.Tensor]:  # only once training starts: a trained V skips the encoder
        cache = cache_features(model, store, device, keep_frames=v.pretrained.decoder)
        return cache, (~cache.heldout).nonzero().flatten()

    def batches(epoch: int):
        cache, train_rows = cached()
        shuffle = torch.Generator().manual_seed(v.seed * 1000 + epoch)
        mine = train_rows[torch.randperm(len(train_rows), generator=shuffle)][rank::size]  # this process's share
        end = len(mine) if size == 1 else len(mine) // batch_size * batch_size  # equal batch counts under DDP
        for i in range(0, end, batch_size):
            yield cache.batch(mine[i : i + batch_size], device)

    writer = main_writer(run.tensorboard)
    job = Fit(
        "vision",
        model,
        model_config,
        batches,
        model.compressor_loss,
        v.epochs,
        v.lr,
        v.seed,
        run.vision,
        writer,
        **fit_options(cfg, device),
        batches_per_epoch=-(-store.manifest().get("frames", 1) * 9 // 10 // v.batch_size),  # about: 1 in 10 held out
    )
    result = fit(job)
    writer.close()
    if cached.cache_info().currsize == 0:  # trained before: nothing new to report
        return result
    cache, _ = cached()
    model.eval()
    speed = {"encoder_frames_per_second": round(cache.frames_per_second, 1), "feature_size": int(model.feature_dim)}
    return {**result, "compressor": {**heldout_error(model, cache, device), **speed, "frames": len(cache.features)}}
