"""The V's that are trained on frames (the pretrained V freezes one of them as its encoder)."""

from __future__ import annotations

from worldmodels.vision.base import VisionModel, section_from_stored
from worldmodels.vision.nvae import NVAE
from worldmodels.vision.vae import ConvVAE
from worldmodels.vision.vqvae import VQVAE

FRAME_MODELS: dict[str, type[VisionModel]] = {"vae": ConvVAE, "vqvae": VQVAE, "nvae": NVAE}


def build_frame_model(stored: dict) -> VisionModel:
    """A V of frames rebuilt from the config its checkpoint stores."""
    section, frame_size, _ = section_from_stored(stored)
    return FRAME_MODELS[section.model](section, frame_size)
