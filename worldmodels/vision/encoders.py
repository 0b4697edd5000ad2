"""Frozen feature extractors for the pretrained V (seed 003): a local Hugging Face vision tower, or another run's V.

An encoder is described by a plain dict (what the vision checkpoint stores beside the weights), so a run
folder rebuilds its encoder from data alone: no file in it names code to import or unpickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WorldModelsError
from .frames import FRAME_MODELS

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class FrozenEncoder(nn.Module):
    """Frames (B, 3, H, W) in [0, 1] -> features (B, F), never trained: no gradient, always in eval mode."""

    feature_dim: int

    def freeze(self) -> FrozenEncoder:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # dropout and batch norm stay as they were pretrained, whatever trains around it


class TowerEncoder(FrozenEncoder):
    """A Hugging Face image backbone: frames resized and normalised as it was trained, then the pooled output or
    a hidden layer's tokens averaged."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, tower: nn.Module, layer: int, image_size: int, mean: list[float], std: list[float]):
        super().__init__()
        self.tower, self.layer, self.image_size = tower, layer, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        config = tower.config  # type: ignore[union-attr]
        self.feature_dim = int(getattr(config, "hidden_size", 0) or getattr(config, "hidden_sizes", [0])[-1])
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        out = self.tower(pixel_values=(x - self.mean) / self.std, output_hidden_states=self.layer >= 0)
        if self.layer < 0:
            return out.pooler_output.flatten(1)
        hidden = out.hidden_states[self.layer]
        return hidden.mean(1) if hidden.ndim == 3 else hidden.flatten(2).mean(-1)  # tokens, or a conv map's pixels


class VisionEncoder(FrozenEncoder):
    """Another run's trained V: its posterior mean is the feature."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision
        self.feature_dim = int(vision.latent_dim)  # type: ignore[arg-type]
        self.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vision.encode(x).mean  # type: ignore[operator]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise WorldModelsError(
            "a Hugging Face encoder needs transformers: pip install 'worldmodels[pretrained]'"
        ) from None
    return transformers


def _hf_vision_config(path: Path):
    """The vision tower's config inside a local Hugging Face folder (CLIP's, SigLIP's, or the model's own)."""
    transformers = _transformers()
    if not (path / "config.json").is_file():
        raise WorldModelsError(f"encoder folder '{path}' does not exist or has no config.json (a Hugging Face model)")
    config = transformers.AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", None) or config  # CLIP, SigLIP: the tower inside the pair
    if type(vision_config) not in transformers.AutoModel._model_mapping or not hasattr(vision_config, "num_channels"):
        raise WorldModelsError(f"'{path}' ({config.model_type}) has no vision tower: it is not an image model")
    return vision_config


def _split(source: str) -> tuple[str, Path]:
    kind, _, where = source.partition(":")
    if kind not in ("hf", "run") or not where:
        raise WorldModelsError(
            "vision.pretrained.encoder must be 'hf:FOLDER' (a local Hugging Face model) or 'run:FOLDER' (another "
            f"run's V), got '{source}'"
        )
    return kind, Path(where).expanduser()


def _run_vision(path: Path) -> dict:
    from .. import checkpoints

    file = path / "vision.pt" if path.is_dir() else path
    if not file.is_file():
        raise WorldModelsError(f"vision.pretrained.encoder: '{file}' does not exist (train that run's V first)")
    saved = checkpoints.load(file, "vision")
    if saved["config"].get("model") == "pretrained":
        raise WorldModelsError(f"'{file}' is itself a pretrained V; point the encoder at a V trained on frames")
    return saved


def describe_encoder(source: str, layer: int = -1) -> dict:
    """What V's checkpoint stores of the encoder a recipe names (`hf:FOLDER`, or `run:FOLDER` with a run folder or
    a vision.pt): enough to rebuild it without the source."""
    kind, path = _split(source)
    if kind == "run":
        return {"kind": "run", "config": _run_vision(path)["config"]}
    vision_config = _hf_vision_config(path)
    layers = int(getattr(vision_config, "num_hidden_layers", 0))
    if not -1 <= layer <= layers:
        raise WorldModelsError(
            f"vision.pretrained.layer {layer} is out of range: '{path}' has hidden states 0-{layers} "
            "(-1: the pooled output)"
        )
    mean, std = CLIP_MEAN, CLIP_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():  # the normalisation the tower was trained with
        spec = json.loads(processor.read_text())
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    config = vision_config.to_dict()
    for key in ("transformers_version", "_name_or_path"):  # the same tower whichever release wrote it, wherever
        config.pop(key, None)
    image_size = int(getattr(vision_config, "image_size", 224))
    return {"kind": "hf", "config": config, "layer": layer, "image_size": image_size, "mean": mean, "std": std}


def encoder_weights(source: str) -> dict[str, torch.Tensor]:
    """The pretrained weights of the encoder a recipe names, keyed as in `build_encoder`'s module."""
    kind, path = _split(source)
    if kind == "run":
        return {f"vision.{k}": v for k, v in _run_vision(path)["state_dict"].items()}
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # a tower loads once: its bars and load report are noise
    transformers.utils.logging.set_verbosity_error()
    model_cls = transformers.AutoModel._model_mapping[type(_hf_vision_config(path))]
    tower = model_cls.from_pretrained(path)  # safetensors, or a weights-only load: no code from the folder runs
    return {f"tower.{k}": v for k, v in tower.state_dict().items()}


def build_encoder(description: dict) -> FrozenEncoder:
    """The encoder a description names, with untrained weights (a checkpoint's state dict fills them)."""
    if description["kind"] == "run":
        config = dict(description["config"])
        model_cls, config_cls = FRAME_MODELS[config.pop("model")]
        return VisionEncoder(model_cls(config_cls(**config)))
    transformers = _transformers()
    config = dict(description["config"])
    tower_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    tower = transformers.AutoModel.from_config(tower_config)
    return TowerEncoder(tower, description["layer"], description["image_size"], description["mean"], description["std"])
