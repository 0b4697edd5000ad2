"""The V's that are trained on frames (the pretrained V freezes one of them as its encoder)."""

from __future__ import annotations

from .nvae import NVAE, NVAEConfig
from .vae import ConvVAE, VAEConfig
from .vqvae import VQVAE, VQVAEConfig

FRAME_MODELS = {"vae": (ConvVAE, VAEConfig), "vqvae": (VQVAE, VQVAEConfig), "nvae": (NVAE, NVAEConfig)}
