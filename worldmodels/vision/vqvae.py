"""A conv VQ-VAE: Ha's conv encoder down to a grid of codes, one codebook vector per grid position."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from worldmodels.config import VisionConfig
from worldmodels.vision.base import Latent, VisionModel, down_convs, up_convs
from worldmodels.vision.quantize import VectorQuantizer


class VQVAE(VisionModel):
    """Four stride-2 convs to a (frame/16)^2 grid of embed_dim vectors, each snapped to a code; four deconvs back.

    z, as M and C see it, is the grid's codebook vectors flattened position by position: latent_dim =
    positions x embed_dim. `codes` are the integers behind it, what a categorical M predicts.
    """

    latent_kind = "discrete"

    SHAPING = ("channels", "embed_dim", "num_embeddings", "commitment", "ema_decay", "dead_after", "codebook_init")

    def __init__(self, cfg: VisionConfig, frame_size: int = 64):
        super().__init__()
        self.cfg, self.frame_size = cfg, frame_size
        c, q = cfg.channels, cfg.vqvae
        self.embed_dim = q.embed_dim
        self.grid = frame_size // 16
        self.positions = self.grid**2
        self.num_embeddings = q.num_embeddings
        self.latent_dim = self.positions * q.embed_dim
        self.encoder = nn.Sequential(*down_convs(c), nn.Conv2d(c[3], q.embed_dim, 1))
        self.quantizer = VectorQuantizer(
            q.num_embeddings, q.embed_dim, q.commitment, q.ema_decay, q.dead_after, q.codebook_init
        )
        # the last layer is linear, as van den Oord et al.: a sigmoid there saturated early on
        self.decoder = nn.Sequential(nn.Conv2d(q.embed_dim, c[3], 1), *up_convs(c))
        nn.init.constant_(cast(torch.Tensor, self.decoder[-1].bias), 0.5)  # start mid-grey, where a sigmoid would

    @property
    def codebook(self) -> torch.Tensor:
        """(num_embeddings, embed_dim)."""
        return self.quantizer.embedding

    def _quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        h = self.encoder(x)  # (B, D, g, g)
        vectors = h.permute(0, 2, 3, 1).reshape(len(x), -1, self.embed_dim)  # a frame's grid positions
        quantised, codes, stats = self.quantizer(vectors)
        return quantised.reshape(len(x), self.latent_dim), codes.reshape(len(x), self.positions), stats

    def encode(self, x: torch.Tensor) -> Latent:
        z, codes, _ = self._quantise(x)
        return Latent(z, codes=codes)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, positions) -> z (B, latent_dim)."""
        return self.quantizer.lookup(codes).flatten(-2)

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output: trained against the frame unclamped, so no gradient is ever cut."""
        return self.decoder(z.reshape(-1, self.grid, self.grid, self.embed_dim).permute(0, 3, 1, 2))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._pixels(z).clamp(0, 1)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed squared error per frame (as the conv VAE) + commitment summed over the grid;
        codebook perplexity and usage."""
        z, _, stats = self._quantise(x)
        mse = (self._pixels(z) - x).pow(2).flatten(1).sum(1).mean()
        stats["commitment"] = stats["commitment"] * self.positions  # per frame, summed over the grid, as the error is
        return {"loss": mse + stats["commitment"], "recon": mse, **stats}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Codes drawn independently per position from the codebook's usage (EMA counts, sharpened by 1/temperature)."""
        log_usage = self.quantizer.cluster_size.clamp(min=1e-8).log()
        probs = torch.softmax(log_usage / max(temperature, 1e-3), dim=0)  # usage^(1/T), normalised without overflow
        codes = torch.multinomial(probs, n * self.positions, replacement=True)
        return self.decode(self.embed(codes.reshape(n, self.positions)))
