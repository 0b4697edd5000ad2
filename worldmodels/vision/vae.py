"""The conv VAE of Ha & Schmidhuber (2018): 4 stride-2 convs, a Gaussian latent, 4 deconvs."""

from __future__ import annotations

import torch
from torch import nn

from worldmodels.config import VisionConfig
from worldmodels.core import distributed
from worldmodels.vision.base import Latent, VisionModel, down_convs, up_convs


class ConvVAE(VisionModel):
    """Ha's layout (32-64-128-256 convs, ReLU, sigmoid output), padded so any frame size divisible by 16 works."""

    latent_kind = "continuous"
    SHAPING = ("latent_dim", "channels", "free_bits", "kl_weight")

    def __init__(self, cfg: VisionConfig, frame_size: int = 64):
        super().__init__()
        self.cfg, self.frame_size = cfg, frame_size
        self.latent_dim = cfg.latent_dim
        c = cfg.channels
        self.bottom = frame_size // 16  # spatial size after 4 stride-2 convs
        flat = c[3] * self.bottom**2
        self.encoder = nn.Sequential(*down_convs(c), nn.Flatten())
        self.to_mean = nn.Linear(flat, cfg.latent_dim)
        self.to_logstd = nn.Linear(flat, cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        self.decoder = nn.Sequential(*up_convs(c), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> Latent:
        h = self.encoder(x)  # (B, C*s*s)
        return Latent(self.to_mean(h), self.to_logstd(h).clamp(-10.0, 4.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.cfg.channels[3], self.bottom, self.bottom)
        return self.decoder(h)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed squared error per frame + KL to N(0, I), the KL floored at free_bits per dimension."""
        latent = self.encode(x)
        recon = self.decode(latent.sample())
        mse = (recon - x).pow(2).flatten(1).sum(1).mean()
        mean, logstd = latent.mean, latent.logstd
        assert logstd is not None
        kl = 0.5 * (mean.pow(2) + (2 * logstd).exp() - 1 - 2 * logstd).sum(1).mean()
        # Ha's kl_tolerance: no pressure on the KL below the floor, so the latent keeps some information; under
        # torchrun the floor applies to the global batch's KL, as in one process
        floor = self.cfg.free_bits * self.latent_dim
        kl_floored = torch.where(distributed.process_mean(kl) > floor, kl, kl.new_full((), floor))
        return {"loss": mse + self.cfg.kl_weight * kl_floored, "recon": mse, "kl": kl}
