"""Vision models V: build one from a recipe or a checkpoint."""

from __future__ import annotations

import dataclasses

from worldmodels.config import Config
from worldmodels.core.errors import WorldModelsError
from worldmodels.vision.base import Latent, VisionModel
from worldmodels.vision.encoders import describe_encoder
from worldmodels.vision.frames import FRAME_MODELS
from worldmodels.vision.nvae import NVAE, NVAEConfig
from worldmodels.vision.pretrained import PretrainedV, PretrainedVConfig
from worldmodels.vision.vae import ConvVAE, VAEConfig
from worldmodels.vision.vqvae import VQVAE, VQVAEConfig

MODELS = {**FRAME_MODELS, "pretrained": (PretrainedV, PretrainedVConfig)}


def vision_config(cfg: Config) -> dict:
    """The model config of the recipe's V, as stored in its checkpoint."""
    _, config_cls = MODELS[cfg.vision.model]
    wanted = {"frame_size": cfg.env.frame_size, **dataclasses.asdict(cfg.vision)}
    if cfg.vision.model in ("vqvae", "nvae"):  # the model's own sub-table
        wanted |= dataclasses.asdict(getattr(cfg.vision, cfg.vision.model))
    if cfg.vision.model == "pretrained":  # its own sub-table, and the encoder as the checkpoint stores it
        p = cfg.vision.pretrained
        wanted |= dataclasses.asdict(p) | {"encoder": describe_encoder(p.encoder, p.layer)}
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {"model": cfg.vision.model, **{k: v for k, v in wanted.items() if k in names}}


def build_vision(model_config: dict) -> VisionModel:
    """Build V from a stored model config (`model` plus the model's own fields)."""
    config = dict(model_config)
    name = config.pop("model")
    if name not in MODELS:
        raise WorldModelsError(
            f"vision model '{name}' is not a model of frames ({', '.join(MODELS)}); use another --run"
        )
    model_cls, config_cls = MODELS[name]
    return model_cls(config_cls(**config))


__all__ = [
    "Latent",
    "VisionModel",
    "ConvVAE",
    "VAEConfig",
    "VQVAE",
    "VQVAEConfig",
    "NVAE",
    "NVAEConfig",
    "PretrainedV",
    "PretrainedVConfig",
    "MODELS",
    "build_vision",
    "vision_config",
]
