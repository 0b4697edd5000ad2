"""One training loop for V and M: epochs, TensorBoard, a checkpoint per epoch, resume."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints
from .progress import bar


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless the recipe names one."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Fit:
    """What a training stage hands to `fit`."""

    name: str  # "vision" or "memory": TensorBoard prefix and checkpoint kind
    model: nn.Module
    model_config: dict  # stored in the checkpoint so the model loads without the recipe
    batches: Callable[[int], Iterable]  # epoch -> iterable of batches
    loss: Callable[[object], dict[str, torch.Tensor]]  # batch -> named losses with 'loss'
    epochs: int
    lr: float
    seed: int
    path: Path
    writer: SummaryWriter
    on_epoch_end: Callable[[int], None] | None = None
    grad_clip: float = 1.0


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> bool:
    """Backpropagate, clip, and step unless the gradient is not finite (as NVAE does); True if it stepped.

    A skipped step cannot undo what the forward pass changed (batch-norm statistics, a VQ codebook's averages).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not torch.isfinite(nn.utils.clip_grad_norm_(model.parameters(), clip)):
        return False
    optimizer.step()
    return True


def fit(job: Fit) -> dict:
    """Train `job.model`, resuming from `job.path` if an earlier run stopped part-way."""
    optimizer = torch.optim.Adam(job.model.parameters(), lr=job.lr)
    start, step = 0, 0
    if job.path.exists():
        saved = checkpoints.load(job.path, job.name)
        checkpoints.check_same_config(job.path, saved["config"], job.model_config, job.name)
        job.model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        start, step = saved["epoch"], saved["step"]
        if start >= job.epochs:
            tqdm.write(f"{job.name}: already trained for {start} epochs, skipping")
            return saved
        tqdm.write(f"{job.name}: resuming after epoch {start}")
    job.model.train()
    for epoch in range(start, job.epochs):
        torch.manual_seed(job.seed * 10_007 + epoch)  # the same noise whether or not the run was resumed
        totals: dict[str, float] = {}
        count = skipped = 0
        for batch in bar(job.batches(epoch), desc=f"{job.name} epoch {epoch + 1}/{job.epochs}", leave=False):
            losses = job.loss(batch)
            if not apply_gradients(job.model, optimizer, losses["loss"], job.grad_clip):
                skipped += 1
                job.writer.add_scalar(f"{job.name}/skipped_steps", skipped, step)
                continue
            step += 1
            count += 1
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item()
                job.writer.add_scalar(f"{job.name}/{key}", value.item(), step)
        means = {k: v / max(count, 1) for k, v in totals.items()}
        tqdm.write(f"{job.name} epoch {epoch + 1}/{job.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                   + (f" ({skipped} steps skipped: non-finite gradient)" if skipped else ""))
        for key, value in means.items():
            job.writer.add_scalar(f"{job.name}/epoch_{key}", value, epoch + 1)
        payload = {
            "kind": job.name,
            "config": job.model_config,
            "state_dict": job.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "losses": means,
            "id": uuid.uuid4().hex,  # what derived data (latents) was made from, even if a retrain repeats the step count
        }
        checkpoints.save(job.path, payload)
        if job.on_epoch_end:
            job.on_epoch_end(epoch + 1)
        job.writer.flush()
    return payload
