"""Frozen feature extractors for the pretrained V (seed 003): a local Hugging Face vision tower, another run's V,
a `module:function` of the user's that returns an nn.Module, or a `torch.export` file.

An encoder is described by a plain dict (what the vision checkpoint stores beside the weights). Towers and V's
are rebuilt from that data alone. The last two are code (an import; a file `torch.export.load` unpickles), so
they are rebuilt only when the recipe in hand names them too (`trust`): a run folder alone never runs code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.config import encoder_source_problem
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints
from worldmodels.vision.frames import build_frame_model

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


class CodeEncoder(FrozenEncoder):
    """A module of the user's (`module:` or `export:`): frames in [0, 1] in, one feature vector per frame out."""

    def __init__(self, module: nn.Module, frame_size: int, exported: bool):
        super().__init__()
        self.module, self.exported = module, exported
        try:
            with torch.no_grad():
                self.feature_dim = int(self.forward(torch.zeros(2, 3, frame_size, frame_size)).shape[1])
        except Exception as error:  # whatever the user's module raises: say what it was given
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise WorldModelsError(
                f"the encoder does not take frames (B, 3, {frame_size}, {frame_size}): {first}"
            ) from None
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Self:
        if self.exported:  # an exported program keeps the mode it was exported in (its train() raises)
            self.training = False
            return self
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).flatten(1)


CODE_KINDS = ("module", "export")
TRUST_VARIABLE = "WORLDMODELS_TRUSTED_ENCODERS"  # inherited by worker processes and torchrun's ranks


def trust(source: str) -> None:
    """Let this process (and its workers) run the code encoder `source`: a recipe in hand names it."""
    trusted = set(filter(None, os.environ.get(TRUST_VARIABLE, "").split("\n")))
    os.environ[TRUST_VARIABLE] = "\n".join(sorted(trusted | {source}))


def _check_trusted(source: str) -> None:
    if source not in os.environ.get(TRUST_VARIABLE, "").split("\n"):
        raise WorldModelsError(
            f"this V's encoder is code ('{source}'), which runs only when the recipe's vision.pretrained.encoder "
            "names it: a run folder alone never runs code"
        )


def _split(source: str) -> tuple[str, str]:
    problem = encoder_source_problem(source)
    if problem:
        raise WorldModelsError(problem)
    kind, _, where = source.partition(":")
    return kind, where


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise WorldModelsError(f"vision.pretrained.encoder: '{path}' does not exist (a torch.export file)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _code_module(kind: str, where: str) -> nn.Module:
    """Run the user's code: import and call `module:function`, or load an exported program."""
    if kind == "export":
        return torch.export.load(Path(where).expanduser()).module()
    module_name, _, function = where.rpartition(":")
    try:
        made = getattr(importlib.import_module(module_name), function)()
    except (ImportError, AttributeError, ValueError) as error:
        raise WorldModelsError(f"vision.pretrained.encoder 'module:{where}': {error}") from None
    if not isinstance(made, nn.Module):
        raise WorldModelsError(
            f"vision.pretrained.encoder 'module:{where}' returned {type(made).__name__}, not an nn.Module"
        )
    return made


def _run_vision(path: Path) -> dict:
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
    kind, where = _split(source)
    if kind in CODE_KINDS:
        trust(source)
        described = {"kind": kind, "source": source}
        return described | ({"sha256": _sha256(Path(where).expanduser())} if kind == "export" else {})
    path = Path(where).expanduser()
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
    kind, where = _split(source)
    if kind in CODE_KINDS:
        return {f"module.{k}": v for k, v in _code_module(kind, where).state_dict().items()}
    path = Path(where).expanduser()
    if kind == "run":
        return {f"vision.{k}": v for k, v in _run_vision(path)["state_dict"].items()}
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # a tower loads once: its bars and load report are noise
    transformers.utils.logging.set_verbosity_error()
    model_cls = transformers.AutoModel._model_mapping[type(_hf_vision_config(path))]
    # safetensors, or a weights-only load: no code from the folder runs
    tower, info = model_cls.from_pretrained(path, output_loading_info=True)
    if info["missing_keys"]:  # a VLM (LLaVA): its tower's weights sit under a prefix inside the whole model's
        tower.load_state_dict(_nested_tower_weights(path, sorted(info["missing_keys"])), strict=False)
    return {f"tower.{k}": v for k, v in tower.state_dict().items()}


def _nested_tower_weights(path: Path, missing: list[str]) -> dict[str, torch.Tensor]:
    """The tower's tensors a VLM's safetensors hold under one prefix (`vision_tower.`, `model.vision_tower.`), read
    alone: the language model is never loaded."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            where |= dict.fromkeys(f.keys(), file)
    prefixes = {key[: -len(missing[0])] for key in where if key.endswith(missing[0])}
    prefix = next((p for p in sorted(prefixes, key=len) if all(p + k in where for k in missing)), None)
    if prefix is None:
        raise WorldModelsError(f"'{path}' holds no weights for its vision tower ({len(missing)} tensors missing)")
    found: dict[str, torch.Tensor] = {}
    for file in sorted({where[prefix + key] for key in missing}):  # each shard opened once
        with safe_open(file, "pt") as f:
            found |= {key: f.get_tensor(prefix + key) for key in missing if where[prefix + key] == file}
    return found


def build_encoder(description: dict, frame_size: int) -> FrozenEncoder:
    """The encoder a description names, with untrained weights (a checkpoint's state dict fills them)."""
    if description["kind"] in CODE_KINDS:
        source = description["source"]
        _check_trusted(source)
        kind, where = _split(source)
        if kind == "export" and _sha256(Path(where).expanduser()) != description["sha256"]:
            raise WorldModelsError(f"'{where}' changed since this V was trained on it (another sha256)")
        return CodeEncoder(_code_module(kind, where), frame_size, exported=kind == "export")
    if description["kind"] == "run":
        return VisionEncoder(build_frame_model(description["config"]))
    transformers = _transformers()
    config = dict(description["config"])
    tower_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    tower = transformers.AutoModel.from_config(tower_config)
    return TowerEncoder(tower, description["layer"], description["image_size"], description["mean"], description["std"])
