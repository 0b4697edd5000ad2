"""Seed 003's V: a frozen pretrained encoder, its features compressed into z by a small trained compressor.

The encoder (a Hugging Face vision tower or another run's V) never trains. The compressor (an autoencoder,
or seed 003's idea 3, a linear projection) learns to squeeze the features of `context` consecutive frames
into z; only its encoder half is used once trained. With `concat`, z is [the frozen V's own z, the code]
(seed 003's idea 2). An optional small conv decoder learns to draw frames from z, for the stages that show
pictures; without it those stages say so.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.config import VisionConfig
from worldmodels.core.errors import WorldModelsError
from worldmodels.vision.base import Latent, VisionModel, up_convs
from worldmodels.vision.encoders import build_encoder


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class PretrainedV(VisionModel):
    """V = frozen encoder + trained compressor (+ an optional pixel decoder)."""

    latent_kind = "continuous"
    has_prior = False

    SHAPING = ("latent_dim", "encoder", "compressor", "hidden", "context", "concat", "decoder", "channels")

    def __init__(self, cfg: VisionConfig, frame_size: int = 64, encoder: dict | None = None):
        """V as the recipe's [vision] says, on the frozen encoder `encoder` describes (`encoders.describe_encoder`)."""
        super().__init__()
        p, encoder = cfg.pretrained, encoder or {}
        if p.concat and encoder.get("kind") != "run":
            raise WorldModelsError("vision.pretrained.concat needs a 'run:' encoder: it is that V's z beside the code")
        self.cfg, self.frame_size, self.options, self.described = cfg, frame_size, p, encoder
        self.encoder = build_encoder(encoder, frame_size)
        self.feature_dim = self.encoder.feature_dim
        wide = self.feature_dim * p.context
        shape = [wide, p.hidden, cfg.latent_dim] if p.compressor == "autoencoder" else [wide, cfg.latent_dim]
        self.compress, self.expand = _mlp(shape), _mlp(shape[::-1])
        self.latent_dim = cfg.latent_dim + (self.feature_dim if p.concat else 0)
        self.pixels: nn.Module | None = None
        self.draws = p.decoder
        if p.decoder:
            c = cfg.channels
            side = frame_size // 16
            self.pixels = nn.Sequential(
                nn.Linear(self.latent_dim, c[3] * side * side), nn.Unflatten(1, (c[3], side, side)), *up_convs(c)
            )

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, H, W) in [0, 1] -> the frozen encoder's features (B, F)."""
        return self.encoder(x).float()

    def code(self, stacked: torch.Tensor) -> torch.Tensor:
        """Stacked features (B, context x F), oldest first -> z (B, latent_dim)."""
        return self._beside(stacked, self.compress(stacked))

    def _beside(self, stacked: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """z from the code: the code alone, or with `concat` the frozen V's z of the newest frame beside it."""
        return torch.cat([stacked[:, -self.feature_dim :], code], dim=-1) if self.options.concat else code

    def encode(self, x: torch.Tensor) -> Latent:
        """Frames, each the first of its episode (it stands in for the frames before it) -> z."""
        return self.observe(x, None)[0]

    def observe(self, x: torch.Tensor, history: torch.Tensor | None) -> tuple[Latent, torch.Tensor | None]:
        """One step of B episodes; `history` (B, context - 1, F) the features of their previous frames, a row of
        NaN (or None for all) where an episode starts."""
        stacked, history = stack_context(self.features(x), history, self.options.context)
        return Latent(self.code(stacked)), history

    def encode_episode(self, chunks: Iterable[torch.Tensor]) -> Latent:
        features = torch.cat([self.features(chunk) for chunk in chunks])
        return Latent(self.code(episode_stacks(features, self.options.context)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.pixels is None:
            raise WorldModelsError(
                "this pretrained V draws no frames: set vision.pretrained.decoder = true and retrain vision"
            )
        return torch.sigmoid(self.pixels(z))

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss on frames, each taken as the first of its episode (train-vision trains on cached features)."""
        return self.compressor_loss(
            {"features": stack_context(self.features(x), None, self.options.context)[0], "frames": x}
        )

    def compressor_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch`: stacked features (B, context x F) and, with a decoder, the frames (B, 3, H, W)."""
        stacked = batch["features"]
        code = self.compress(stacked)
        features = F.mse_loss(self.expand(code), stacked)
        terms = {"features": features}
        if self.pixels is not None:  # drawn from z without steering it: the code is the compressor's alone
            frames = batch["frames"]
            z = self._beside(stacked, code).detach()
            terms["pixels"] = F.mse_loss(self.decode(z), frames, reduction="sum") / len(frames)
        return {"loss": sum(terms.values()), **terms}  # type: ignore[dict-item]


def stack_context(
    features: torch.Tensor, history: torch.Tensor | None, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(stacked (B, context x F), the next history (B, context - 1, F)) for one step of B episodes.

    A missing history (an episode's first frame) is that frame repeated, so a stack never reaches into
    another episode.
    """
    frames = features[:, None]
    repeated = frames.expand(-1, context - 1, -1)
    if history is None:
        history = repeated
    else:  # rows that start an episode here
        history = torch.where(history.isnan().any(-1, keepdim=True), repeated, history)
    window = torch.cat([history, frames], dim=1)  # (B, context, F), oldest first
    return window.flatten(1), window[:, 1:]


def episode_stacks(features: torch.Tensor, context: int) -> torch.Tensor:
    """An episode's per-frame features (T, F) -> each frame's stack (T, context x F), its first frame padding the
    frames before the episode."""
    T = len(features)
    index = (torch.arange(T)[:, None] + torch.arange(1 - context, 1)[None]).clamp(min=0)  # (T, context)
    return features[index].flatten(1)
