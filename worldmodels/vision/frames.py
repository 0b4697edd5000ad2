"""The V's that are trained on frames (the pretrained V freezes one of them as its encoder)."""

from __future__ import annotations

from worldmodels.vision.nvae import NVAE, NVAEConfig
from worldmodels.vision.vae import ConvVAE, VAEConfig
from worldmodels.vision.vqvae import VQVAE, VQVAEConfig

FRAME_MODELS = {"vae": (ConvVAE, VAEConfig), "vqvae": (VQVAE, VQVAEConfig), "nvae": (NVAE, NVAEConfig)}
