"""The interface every vision model V offers to the rest of the framework."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from worldmodels.config import VisionConfig
from worldmodels.core import distributed
from worldmodels.core.errors import WorldModelsError

SUB_TABLES = ("vqvae", "nvae", "pretrained")  # the models whose own settings sit in [vision.MODEL]


@dataclass
class Latent:
    """What V makes of a batch of frames: a mean and, for a VAE, a log standard deviation; for a VQ-VAE, codes."""

    mean: torch.Tensor  # (B, Z)
    logstd: torch.Tensor | None = None  # (B, Z)
    codes: torch.Tensor | None = None  # (B, positions) integers, discrete V only

    def sample(self) -> torch.Tensor:
        """Draw z with the reparameterisation trick (the mean when there is no spread)."""
        if self.logstd is None:
            return self.mean
        return self.mean + self.logstd.exp() * distributed.randn_like(self.mean)


class VisionModel(nn.Module):
    """V: encode frames to latents, decode latents to frames, and the training loss."""

    latent_dim: int
    latent_kind: str  # "continuous" | "discrete"
    # the fields of the recipe's [vision] and of the model's own [vision.MODEL] that shape it, stored with it (flat)
    SHAPING: ClassVar[tuple[str, ...]] = ()
    progress: float = 1.0  # fraction of training done, set by trainers that warm up NVAE's KL; 1: warmed up
    draws: bool = True  # decode() makes frames (a pretrained V only with its optional pixel decoder)
    has_prior: bool = True  # z ~ N(0, I) is a frame V could see (not so for an autoencoder's code)

    def encode(self, x: torch.Tensor) -> Latent:
        """(B, 3, H, W) in [0, 1] -> Latent."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, Z) -> (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def encode_episode(self, chunks: Iterable[torch.Tensor]) -> Latent:
        """One episode's frames, in order and in chunks -> its latents; a V that reads past frames overrides it."""
        parts = [self.encode(chunk) for chunk in chunks]

        def joined(values: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if values[0] is None else torch.cat(cast(list[torch.Tensor], values))

        return Latent(
            torch.cat([p.mean for p in parts]), joined([p.logstd for p in parts]), joined([p.codes for p in parts])
        )

    def observe(self, x: torch.Tensor, history: torch.Tensor | None) -> tuple[Latent, torch.Tensor | None]:
        """One step of B episodes: (their latents, what V keeps of them for their next frame: None for a V that
        reads one frame)."""
        return self.encode(x), None

    def through_z(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x).mean): frames as M, C and the dream see them."""
        return self.decode(self.encode(x).mean)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """V's own best reconstruction of frames; for a V whose z is all its latent, the same as through_z."""
        return self.through_z(x)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch; 'loss' is the one to minimise."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n frames decoded from the prior, its spread scaled by `temperature`."""
        device = next(self.parameters()).device
        return self.decode(temperature * torch.randn(n, self.latent_dim, device=device))


def down_convs(c: list[int]) -> list[nn.Module]:
    """Four stride-2 4x4 convs with ReLUs, 3 -> c[0] -> ... -> c[3] channels: the conv V's encoder stack."""
    layers: list[nn.Module] = []
    for cin, cout in zip([3, *c[:3]], c[:4]):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU()]
    return layers


def up_convs(c: list[int]) -> list[nn.Module]:
    """The mirror of `down_convs`: four stride-2 transposed convs, c[3] -> ... -> c[0] -> 3, ReLUs between, none
    after the last."""
    layers: list[nn.Module] = []
    for cin, cout in zip(c[3:0:-1], c[2::-1]):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.ReLU()]
    return layers + [nn.ConvTranspose2d(c[0], 3, 4, 2, 1)]


def stored_config(section: VisionConfig, frame_size: int, shaping: tuple[str, ...], **given: Any) -> dict:
    """What the checkpoint of V built from the recipe's [vision] stores to rebuild it without the recipe: the model,
    the frame size and its `shaping` fields, flat (`given`: what it was handed besides, e.g. an encoder)."""
    flat = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    if section.model in SUB_TABLES:
        flat |= dataclasses.asdict(getattr(section, section.model))
    flat |= given
    return {"model": section.model, "frame_size": frame_size, **{k: flat[k] for k in shaping}}


def section_from_stored(stored: dict, given: tuple[str, ...] = ()) -> tuple[VisionConfig, int, dict]:
    """The [vision] section, frame size and given arguments a stored config was made from (`stored_config`'s
    inverse; a field the checkpoint predates takes the recipe's default)."""
    flat = dict(stored)
    name, frame_size = flat.pop("model"), flat.pop("frame_size", 64)
    handed = {k: flat.pop(k) for k in given if k in flat}
    nested = {}
    if name in SUB_TABLES:
        options = type(getattr(VisionConfig(), name))
        own = {f.name for f in dataclasses.fields(options)}
        nested[name] = options(**{k: flat.pop(k) for k in list(flat) if k in own})
    try:
        return VisionConfig(model=name, **flat, **nested), frame_size, handed
    except TypeError:
        raise WorldModelsError(
            f"a stored {name} V has fields no [vision] has ({sorted(flat)}); retrain vision"
        ) from None
