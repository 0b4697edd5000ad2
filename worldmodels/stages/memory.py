"""train-memory: M trained on the encoded episodes, with a held-out split."""

from __future__ import annotations

import dataclasses
from typing import Callable, cast

import torch
from torch.utils.data import DataLoader, DistributedSampler

from worldmodels.agent import load_vision, memory_from_checkpoint
from worldmodels.config import Config, MemoryConfig
from worldmodels.core import distributed
from worldmodels.core.actions import action_dim
from worldmodels.data.latents import LatentEpisode, SequenceDataset, load_latents
from worldmodels.memory import MDNRNN, memory_loss, stored_config
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import fidelity
from worldmodels.training import Fit, fit, fit_options, main_writer, pick_device
from worldmodels.vision import VQVAE, VisionModel
from worldmodels.worlds.real import action_space


def memory_sizes(cfg: Config, vision: VisionModel) -> dict:
    """What M takes from V and the world rather than the recipe: z's width, the action's, a discrete V's codes."""
    discrete = vision.latent_kind == "discrete"  # a categorical head over V's codes (the discrete V is a VQ-VAE)
    return {
        "latent_dim": vision.latent_dim,
        "action_dim": action_dim(action_space(cfg.env)),
        "positions": cast(VQVAE, vision).positions if discrete else 0,
        "num_codes": cast(VQVAE, vision).num_embeddings if discrete else 0,
    }


def memory_config(cfg: Config, vision: VisionModel) -> dict:
    """The config the recipe's M on top of V is stored with."""
    return stored_config(cfg.memory, **memory_sizes(cfg, vision))


def holdout_split(
    everything: list[LatentEpisode], holdout: float
) -> tuple[list[LatentEpisode], list[LatentEpisode], str]:
    """M's training episodes, the episodes its fidelity is reported on, and which split those are."""
    is_held = [fidelity.held_out(e.name, holdout) for e in everything]
    held = [e for e, h in zip(everything, is_held) if h]
    episodes = [e for e, h in zip(everything, is_held) if not h]
    split = "held-out"
    if not held or not episodes:  # no holdout, or a store too small to split: M trains and reports on everything
        episodes, held, split = everything, everything, "train"
    return episodes, held, split


def memory_objective(model: MDNRNN, m: MemoryConfig, device: torch.device) -> Callable[[dict], dict]:
    """M's loss on a batch of sequences, z drawn from the cached mean and std when the model samples latents."""

    def loss(batch: dict) -> dict:
        b = {k: t.to(device) for k, t in batch.items()}
        z, next_z = b["mu"], b["next_mu"]
        if model.cfg.sample_latents:
            z = z + b["logstd"].exp() * distributed.randn_like(z)
            next_z = next_z + b["next_logstd"].exp() * distributed.randn_like(next_z)
        prediction, _ = model(z, b["action"], next_z=next_z)
        return memory_loss(
            prediction,
            next_z,
            b["reward"],
            b["done"],
            b["mask"],
            m.done_weight,
            m.reward_weight,
            m.done_loss_weight,
            b.get("next_codes"),
        )

    return loss


def train_memory(cfg: Config, run: Run, epochs: int | None = None) -> dict:
    """Train M on latent sequences (z drawn from the cached mean and std, or the mean), and the other M's of
    memory.ensemble; `epochs` in all (default: the recipe's). M's figures and fidelity report."""
    episodes, held, split = holdout_split(load_latents(run), cfg.memory.holdout)
    vision = load_vision(run.require(run.vision, "train-vision"))
    epochs = epochs or cfg.memory.epochs
    result, *_ = [  # the same data from other seeds: where the M's disagree, the data did not say
        train_member(cfg, dataclasses.replace(cfg.memory, seed=cfg.memory.seed + k), run, k, vision, episodes, epochs)
        for k in range(cfg.memory.ensemble)
    ]
    if distributed.is_main():
        trained = memory_from_checkpoint(checkpoints.load(run.memory, "memory"), pick_device(cfg.device))
        result["fidelity"] = fidelity.write_memory_report(run, trained, held, split, epochs)
    return result


def train_member(
    cfg: Config, m: MemoryConfig, run: Run, k: int, vision: VisionModel, episodes: list[LatentEpisode], epochs: int
) -> dict:
    """M number `k` of memory.ensemble (0: M itself), trained from `m.seed` into `run.member(k)`."""
    device = pick_device(cfg.device)
    torch.manual_seed(m.seed)
    model = MDNRNN(m, **memory_sizes(cfg, vision)).to(device)
    if model.categorical:  # V is a VQ-VAE
        model.codebook.copy_(cast(VQVAE, vision).codebook)
    dataset = SequenceDataset(episodes, m.seq_len, m.random_starts, m.seed)
    rank, processes = distributed.rank_and_size()
    # one process draws the same permutation as W would; process r takes its rows r, r + W, ... of each global batch
    sampler: DistributedSampler[int] = DistributedSampler(dataset, processes, rank, shuffle=True, seed=m.seed)
    batch_size = distributed.local_batch(m.batch_size, "memory.batch_size")
    writer = main_writer(run.tensorboard)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, pin_memory=device.type == "cuda")

    loss = memory_objective(model, m, device)
    result = fit(
        Fit(
            "memory",
            model,
            model.stored_config(),
            batches,
            loss,
            epochs,
            m.lr,
            m.seed,
            run.member(k),
            writer,
            **fit_options(cfg, device),
            label=f"memory_{k}" if k else "",
        )
    )
    writer.close()
    return result
