"""Vision models V: build one from a recipe or a checkpoint."""

from __future__ import annotations

from worldmodels.config import Config
from worldmodels.core.errors import WorldModelsError
from worldmodels.vision.base import Latent, VisionModel, section_from_stored, stored_config
from worldmodels.vision.encoders import describe_encoder
from worldmodels.vision.frames import FRAME_MODELS
from worldmodels.vision.nvae import NVAE
from worldmodels.vision.pretrained import PretrainedV
from worldmodels.vision.vae import ConvVAE
from worldmodels.vision.vqvae import VQVAE

MODELS: dict[str, type[VisionModel]] = {**FRAME_MODELS, "pretrained": PretrainedV}


def vision_config(cfg: Config) -> dict:
    """The config the recipe's V is built from and stored with: its [vision] section's shaping fields, flat."""
    v = cfg.vision
    given = {}
    if v.model == "pretrained":  # the encoder as the checkpoint stores it: enough to rebuild it without its source
        given["encoder"] = describe_encoder(v.pretrained.encoder, v.pretrained.layer)
    return stored_config(v, cfg.env.frame_size, MODELS[v.model].SHAPING, **given)


def build_vision(stored: dict) -> VisionModel:
    """Build V from the config its checkpoint stores (`vision_config`)."""
    if stored.get("model") not in MODELS:
        raise WorldModelsError(
            f"vision model '{stored.get('model')}' is not a model of frames ({', '.join(MODELS)}); use another --run"
        )
    section, frame_size, given = section_from_stored(stored, given=("encoder",))
    return MODELS[section.model](section, frame_size, **given)


__all__ = [
    "Latent",
    "VisionModel",
    "ConvVAE",
    "VQVAE",
    "NVAE",
    "PretrainedV",
    "MODELS",
    "build_vision",
    "vision_config",
]
