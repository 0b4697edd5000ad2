"""One training loop for V and M: epochs, TensorBoard, a checkpoint per epoch, resume; data-parallel under torchrun."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, cast

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from worldmodels.core import distributed
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import bar, say
from worldmodels.runs import checkpoints


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless the recipe names one; CUDA with its index
    (this process's GPU under torchrun)."""
    if name == "auto":
        mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WorldModelsError(f"device '{name}' is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WorldModelsError(
            f"device '{name}' asked for, but this machine's PyTorch sees no CUDA GPU; use auto or cpu"
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise WorldModelsError(f"device '{name}' asked for, but this machine has no MPS; use auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def fit_options(cfg, device: torch.device) -> dict:
    """The recipe's precision and compile settings and its world as `Fit` fields; bf16 autocast by default only on
    CUDA."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return {"device": device, "bf16": bf16, "compile": cfg.compile, "world": checkpoints.fingerprint(cfg)}


class SilentWriter:
    """What processes other than rank 0 log to: nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class LazyWriter:
    """A TensorBoard writer whose event file appears with its first record:
    a stage with nothing to do writes nothing."""

    writer: SummaryWriter | None

    def __init__(self, logdir: Path):
        self.logdir, self.writer = logdir, None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if self.writer is None:
            self.writer = SummaryWriter(self.logdir)
        return getattr(self.writer, name)


def main_writer(logdir: Path) -> LazyWriter | SilentWriter:
    """A TensorBoard writer on rank 0, a silent one elsewhere."""
    return LazyWriter(logdir) if distributed.is_main() else SilentWriter()


class Objective(nn.Module):
    """A model and its loss as one module, so that DistributedDataParallel sees the loss computed in its forward."""

    def __init__(self, model: nn.Module, loss: Callable[[object], dict[str, torch.Tensor]]):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: object) -> dict[str, torch.Tensor]:
        return self.loss(batch)


@dataclass
class Fit:
    """What a training stage hands to `fit`."""

    name: str  # "vision" or "memory": TensorBoard prefix and checkpoint kind
    model: nn.Module
    model_config: dict  # stored in the checkpoint so the model loads without the recipe
    batches: Callable[[int], Iterable]  # epoch -> iterable of batches
    loss: Callable[[Any], dict[str, torch.Tensor]]  # batch -> named losses with 'loss'
    epochs: int
    lr: float
    seed: int
    path: Path
    writer: SummaryWriter | LazyWriter | SilentWriter
    on_epoch_end: Callable[[int], None] | None = None
    grad_clip: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False  # autocast the forward pass to bfloat16 (CUDA); the weights and the optimizer stay float32
    compile: bool = False  # torch.compile the model and its loss
    batches_per_epoch: int | None = None  # for the progress bar's total and ETA where `batches` has no length
    world: dict = field(default_factory=dict)  # the recipe's world the model is made for (checkpoints.fingerprint)
    label: str = ""  # the logs' and TensorBoard's name for it when not `name` (an ensemble's other M's)

    @property
    def title(self) -> str:
        """Its name in the logs and TensorBoard."""
        return self.label or self.name


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


def resume_state(job: Fit) -> dict | None:
    """The checkpoint to resume from, checked against the job's model, or None to start afresh."""
    if not job.path.exists():
        return None
    saved = checkpoints.load(job.path, job.name)
    checkpoints.check_same_config(job.path, saved["config"], job.model_config, job.name)
    return saved


def trainable(job: Fit) -> nn.Module:
    """The model and its loss as the module to call: wrapped in DDP across processes, compiled if asked."""
    net: nn.Module = Objective(job.model, job.loss)
    if distributed.rank_and_size()[1] > 1:
        if job.device.type == "cuda":  # batch statistics over the global batch; SyncBatchNorm needs CUDA
            nn.SyncBatchNorm.convert_sync_batchnorm(job.model)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[job.device.index] if job.device.type == "cuda" else None
        )
    return cast(nn.Module, torch.compile(net)) if job.compile else net


def global_means(totals: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Epoch means of the logged terms over every process's batches."""
    if distributed.rank_and_size()[1] == 1 or not totals:
        return {k: v / max(count, 1) for k, v in totals.items()}
    sums = torch.tensor([*totals.values(), count], dtype=torch.float64, device=device)  # NCCL reduces GPU tensors only
    torch.distributed.all_reduce(sums)
    return {k: v / max(sums[-1].item(), 1) for k, v in zip(totals, sums[:-1].tolist())}


def train_epoch(
    job: Fit, net: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int
) -> tuple[dict[str, float], int, int, int]:
    """One pass over the epoch's batches, logging each step: the loss totals, steps taken, steps skipped, last step."""
    totals: dict[str, float] = {}
    count = skipped = 0
    for batch in bar(
        job.batches(epoch),
        desc=f"{job.title} epoch {epoch + 1}/{job.epochs}",
        leave=False,
        total=job.batches_per_epoch,
    ):
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=job.bf16):
            losses = net(batch)
        if not apply_gradients(job.model, optimizer, losses["loss"], job.grad_clip):
            skipped += 1
            job.writer.add_scalar(f"{job.title}/skipped_steps", skipped, step)
            continue
        step += 1
        count += 1
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + value.item()
            job.writer.add_scalar(f"{job.title}/{key}", value.item(), step)
    return totals, count, skipped, step


def fit(job: Fit) -> dict:
    """Train `job.model`, resuming from `job.path` if an earlier run stopped part-way.

    Under torchrun every process runs this on its share of each global batch; rank 0 reads the checkpoint
    for all of them and alone writes checkpoints and logs.
    """
    optimizer = torch.optim.Adam(job.model.parameters(), lr=job.lr)
    start, step, label = 0, 0, job.title
    saved = distributed.from_main(lambda: resume_state(job))
    if saved is not None:
        job.model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        start, step = saved["epoch"], saved["step"]
        if start >= job.epochs:
            say(f"{label}: already trained for {start} epochs, skipping")
            return saved
        say(f"{label}: resuming after epoch {start}")
    net = trainable(job)
    job.model.train()
    for epoch in range(start, job.epochs):
        torch.manual_seed(job.seed * 10_007 + epoch)  # the same noise whether or not the run was resumed
        totals, count, skipped, step = train_epoch(job, net, optimizer, epoch, step)
        means = global_means(totals, count, job.device)
        say(
            f"{label} epoch {epoch + 1}/{job.epochs}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
            + (f" ({skipped} steps skipped: non-finite gradient)" if skipped else "")
        )
        for key, value in means.items():
            job.writer.add_scalar(f"{label}/epoch_{key}", value, epoch + 1)
        payload = {
            "kind": job.name,
            "config": job.model_config,
            "world": job.world,
            "state_dict": job.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "losses": means,
            # what derived data (latents) was made from, even if a retrain repeats the step count
            "id": uuid.uuid4().hex,
        }
        if distributed.is_main():
            checkpoints.save(job.path, payload)
            if job.on_epoch_end:
                job.on_epoch_end(epoch + 1)
        job.writer.flush()
    distributed.barrier()  # the last checkpoint is on disk before any process moves on
    return payload
