"""V for architectures: a VQ-VAE of architecture encodings, whose decoder turns a latent of codebook vectors
into a network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.nas import space
from worldmodels.nas.space import Architecture
from worldmodels.vision.quantize import VectorQuantizer


@dataclass
class ArchitectureVQVAEConfig:
    """Sizes of the architecture VQ-VAE; stored in its checkpoint."""

    slots: int = 4
    hidden: int = 128
    embed_dim: int = 4
    num_embeddings: int = 32
    commitment: float = 0.25
    ema_decay: float = 0.99
    dead_after: int = 20
    codebook_init: str = "kmeans"


class ArchitectureVQVAE(nn.Module):
    """MLP encoder: one-hot encoding -> `slots` vectors, each snapped to a code; MLP decoder:
    the slots -> a choice per layer."""

    def __init__(self, cfg: ArchitectureVQVAEConfig):
        super().__init__()
        self.cfg = cfg
        latent = cfg.slots * cfg.embed_dim
        self.encoder = nn.Sequential(
            nn.Linear(space.ENCODING_DIM, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, latent)
        )
        self.quantizer = VectorQuantizer(
            cfg.num_embeddings, cfg.embed_dim, cfg.commitment, cfg.ema_decay, cfg.dead_after, cfg.codebook_init
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, space.ENCODING_DIM)
        )

    @property
    def codebook(self) -> torch.Tensor:
        """(num_embeddings, embed_dim)."""
        return self.quantizer.embedding

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Encodings (B, ENCODING_DIM) -> latents (B, slots, embed_dim), codes (B, slots), and the quantiser's terms."""
        vectors = self.encoder(x).reshape(len(x), self.cfg.slots, self.cfg.embed_dim)
        quantised, codes, stats = self.quantizer(vectors)
        return quantised.reshape(len(x), self.cfg.slots, -1), codes.reshape(len(x), self.cfg.slots), stats

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents (B, slots, embed_dim) -> logits (B, MAX_LAYERS, choices per layer)."""
        return self.decoder(latent.flatten(1)).reshape(len(latent), space.MAX_LAYERS, len(space.CHOICES))

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of each layer's choice + commitment; also the fraction decoded exactly, and codebook usage."""
        latent, _, stats = self.encode(x)
        logits = self.decode(latent)
        target = x.reshape(len(x), space.MAX_LAYERS, -1).argmax(-1)
        recon = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        exact = (logits.argmax(-1) == target).all(-1).float().mean()
        return {"loss": recon + stats["commitment"], "recon": recon, "exact": exact, **stats}

    @torch.no_grad()
    def architecture(self, latent: np.ndarray) -> Architecture:
        """The network a latent (slots, embed_dim) decodes to: what the codebook world's `decoder` is."""
        logits = self.decode(torch.as_tensor(latent, dtype=torch.float32)[None])[0]
        return space.decode_slots(logits.argmax(-1).tolist())


def encodings(n: int, seed: int) -> torch.Tensor:
    """n random architectures' encodings, (n, ENCODING_DIM): what V trains on."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([space.encode(space.sample(rng)) for _ in range(n)]))
