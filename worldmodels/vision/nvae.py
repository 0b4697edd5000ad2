"""NVAE (Vahdat & Kautz 2020): a deep hierarchical VAE, the V of seed 004.

Latent groups sit at several scales (`scales`, top first, e.g. 4x4 then 8x8). A bottom-up encoder tower
extracts features; a top-down decoder tower walks the groups from the top, each group's prior conditioned
on the groups above it and its posterior given relative to that prior (a residual normal). For M, z is the
flat posterior of the top `top_groups` groups; `decode(z)` fills the groups below from their prior.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.config import VisionConfig, nvae_latent_dim
from worldmodels.core import distributed
from worldmodels.vision.base import Latent, VisionModel

BN_MOMENTUM = 0.05  # NVAE's batch-norm momentum (PyTorch's convention: running statistics move 5% a step)


def soft_clamp(x: torch.Tensor, bound: float = 5.0) -> torch.Tensor:
    """Smoothly bound means and log-scales to (-bound, bound), as NVAE does for stability."""
    return bound * torch.tanh(x / bound)


def residual_normal(
    prior_mean: torch.Tensor, prior_logstd: torch.Tensor, delta_mean: torch.Tensor, delta_logstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior N(mu_p + dmu, sigma_p * dsigma) given relative to its prior, and its KL to the prior per element.

    KL = 0.5 * (dmu^2 / sigma_p^2 + dsigma^2 - 1) - log dsigma (NVAE eq. 2): it depends on the prior only through
    sigma_p, so a posterior that tracks the prior costs nothing however the prior moves.
    """
    mean = prior_mean + delta_mean
    logstd = prior_logstd + delta_logstd
    kl = 0.5 * ((delta_mean * torch.exp(-prior_logstd)).pow(2) + torch.exp(2 * delta_logstd) - 1) - delta_logstd
    return mean, logstd, kl


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class EncoderCell(nn.Module):
    """BN-Swish-Conv3x3-BN-Swish-Conv3x3-SE on a residual branch; stride 2 halves the grid and doubles channels."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            batch_norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, stride, 1),
            batch_norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1),
            SqueezeExcite(c_out),
        )
        # a 2x2 average and a 1x1 conv where NVAE uses a factorised reduction: the skip only has to match shapes
        # (a strided 1x1 conv would do too, but its channels-last backward crashes oneDNN on CPU for <= 8 channels)
        pool = [nn.AvgPool2d(stride)] if stride > 1 else []
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(*pool, nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + 0.1 * self.branch(x)  # NVAE scales the branch by 0.1: a deep tower starts near identity


class DecoderCell(nn.Module):
    """BN-Conv1x1-BN-Swish-dw5x5-BN-Swish-Conv1x1-BN-SE on a residual branch;
    upsample doubles the grid and halves channels."""

    def __init__(self, c_in: int, c_out: int, upsample: bool = False, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        # NVAE upsamples before the branch; nearest upsampling commutes with BN-Conv1x1-BN-Swish (BN sees every
        # value four times, so the same statistics), so upsampling after them is the same function at 1/4 the cost
        up = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
        self.branch = nn.Sequential(
            batch_norm(c_in),
            nn.Conv2d(c_in, hidden, 1),
            batch_norm(hidden),
            nn.SiLU(),
            *up,
            nn.Conv2d(hidden, hidden, 5, 1, 2, groups=hidden),
            batch_norm(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, c_out, 1),
            batch_norm(c_out),
            SqueezeExcite(c_out),
        )
        self.skip = nn.Sequential(*up, nn.Conv2d(c_in, c_out, 1)) if upsample or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + 0.1 * self.branch(x)


class SpectralNorms(nn.Module):
    """Largest singular values of conv weights (as out x in*k*k matrices),
    by power iteration with persistent vectors."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = convs  # a plain list: the convs belong to the model, this only reads them
        for i, conv in enumerate(convs):
            out_channels, fan_in = conv.weight.shape[0], conv.weight[0].numel()
            self.register_buffer(f"u{i}", F.normalize(torch.randn(out_channels), dim=0))
            self.register_buffer(f"v{i}", F.normalize(torch.randn(fan_in), dim=0))
        self.forward(iterations=50)  # start from converged vectors (NVAE: 40 at the start); one a step then keeps up

    def forward(self, iterations: int = 1) -> torch.Tensor:
        """Sum of the estimates; gradients flow to the weights through u^T W v, the vectors stay fixed."""
        with torch.autocast(self.convs[0].weight.device.type, enabled=False):  # float32, also under bf16 autocast
            return self._estimate(iterations)

    def _estimate(self, iterations: int) -> torch.Tensor:
        total = self.convs[0].weight.new_zeros(())
        for i, conv in enumerate(self.convs):
            weight = conv.weight.flatten(1)
            u, v = getattr(self, f"u{i}"), getattr(self, f"v{i}")
            with torch.no_grad():
                for _ in range(iterations):
                    v.copy_(F.normalize(weight.t() @ u, dim=0))
                    u.copy_(F.normalize(weight @ v, dim=0))
            # clones: a later call's in-place update cannot clash with backward
            total = total + u.clone() @ weight @ v.clone()
        return total


class NVAE(VisionModel):
    """Hierarchical V: residual cells, residual-normal posteriors, KL warm-up and balancing, spectral regularisation."""

    latent_kind = "continuous"
    kl_alpha: torch.Tensor  # buffer: the KL-balancing weights, registered in __init__

    SHAPING = (
        "latent_dim",
        "base_channels",
        "scales",
        "groups_per_scale",
        "latent_channels",
        "top_groups",
        "cells_per_group",
        "kl_weight",
        "kl_warmup",
        "spectral_lambda",
        "lower_temperature",
    )

    def __init__(self, cfg: VisionConfig, frame_size: int = 64):
        super().__init__()
        self.cfg, self.frame_size, self.options = cfg, frame_size, cfg.nvae
        n = cfg.nvae
        scales, groups, size = list(n.scales), n.groups_per_scale, frame_size
        flat = nvae_latent_dim(size, scales, groups, n.top_groups, n.latent_channels, cfg.latent_dim)
        self.latent_dim = flat
        self.top = scales[0]
        self.group_sizes = [s for s in scales for _ in range(groups)]  # top-down order

        def channels(side: int) -> int:
            return n.base_channels * (size // side)  # doubles as the grid halves

        latent = n.latent_channels
        cells = n.cells_per_group

        # bottom-up: a stem, strided cells down to the finest scale, then the groups' cells from the bottom up
        self.stem = nn.Conv2d(3, channels(size), 3, 1, 1)
        self.preprocess = nn.Sequential(
            *[EncoderCell(channels(s), channels(s // 2), stride=2) for s in _halvings(size, scales[-1])]
        )
        self.encoder_groups = nn.ModuleList(
            nn.Sequential(*[EncoderCell(channels(s), channels(s)) for _ in range(cells)])
            for s in reversed(self.group_sizes)
        )
        self.encoder_down = nn.ModuleList(
            EncoderCell(channels(s), channels(s // 2), stride=2) for s in reversed(scales[1:])
        )
        self.encoder_top = nn.Sequential(nn.ELU(), nn.Conv2d(channels(self.top), channels(self.top), 1), nn.ELU())

        # top-down: per group a posterior head, a prior head (the top group's prior is N(0, I)), and combiners
        self.top_state = nn.Parameter(torch.rand(channels(self.top), self.top, self.top))
        self.posterior_heads = nn.ModuleList(nn.Conv2d(channels(s), 2 * latent, 3, 1, 1) for s in self.group_sizes)
        self.prior_heads = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv2d(channels(s), 2 * latent, 1)) for s in self.group_sizes[1:]
        )
        self.encoder_combiners = nn.ModuleList(nn.Conv2d(channels(s), channels(s), 1) for s in self.group_sizes[1:])
        self.decoder_combiners = nn.ModuleList(
            nn.Conv2d(channels(s) + latent, channels(s), 1) for s in self.group_sizes
        )
        # NVAE's order: a group after the first runs its cells, then reads its prior off the state, then takes its z
        self.decoder_groups = nn.ModuleList(
            nn.Sequential(*[DecoderCell(channels(s), channels(s)) for _ in range(cells)]) for s in self.group_sizes[1:]
        )
        self.decoder_up = nn.ModuleList(DecoderCell(channels(s), channels(2 * s), upsample=True) for s in scales[:-1])
        self.postprocess = nn.Sequential(
            *[
                DecoderCell(channels(s // 2), channels(s), upsample=True, expand=3)  # NVAE's e3
                for s in reversed(_halvings(size, scales[-1]))
            ]
        )
        self.to_pixels = nn.Sequential(nn.ELU(), nn.Conv2d(channels(size), 3, 3, 1, 1))
        # linear output starting mid-grey, clamped only when decoding
        nn.init.constant_(cast(torch.Tensor, self.to_pixels[-1].bias), 0.5)

        self.batch_norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        self.spectral = SpectralNorms([m for m in self.modules() if isinstance(m, nn.Conv2d)])
        self.register_buffer("kl_alpha", self._balance_weights(), persistent=False)  # derived from the sizes
        # channels-last convolutions: the depthwise 5x5 and batch norms run ~1.7x faster this way on CPU
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to's stubs lack memory_format

    def _balance_weights(self) -> torch.Tensor:
        """NVAE's 'square' KL-balancing weights: a group's share grows with its grid's area,
        split among its scale's groups."""
        alpha = torch.tensor([s**2 / self.options.groups_per_scale for s in self.group_sizes], dtype=torch.float32)
        return alpha / alpha.min()

    # ------------------------------------------------------------ the two towers

    def _bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features for each group, in top-down order (the first feeds the top group)."""
        h = self.preprocess(self.stem(x.contiguous(memory_format=torch.channels_last)))
        features, per_scale = [], self.options.groups_per_scale
        for i, cells in enumerate(self.encoder_groups):
            h = cells(h)
            features.append(h)
            if (i + 1) % per_scale == 0 and i // per_scale < len(self.encoder_down):
                h = self.encoder_down[i // per_scale](h)
        features.reverse()
        features[0] = self.encoder_top(features[0])
        return features

    def _top_down(
        self,
        batch: int,
        features: list[torch.Tensor] | None = None,
        top: torch.Tensor | None = None,
        temperature: float = 1.0,
        sample_posterior: bool = True,
        groups: int | None = None,
    ):
        """Walk the groups from the top; returns the decoder state and, per group, (posterior mean, logstd, KL).

        A group's z is, in order of precedence: given (`top`, for the first top_groups groups), drawn from its
        posterior (when encoder `features` are given), or drawn from its prior at `temperature`.
        """
        state = self.top_state.expand(batch, -1, -1, -1)
        posteriors = []
        for k in range(groups or len(self.group_sizes)):
            side, scale = self.group_sizes[k], k // self.options.groups_per_scale
            if k > 0 and k % self.options.groups_per_scale == 0:  # the first group of a finer scale
                state = self.decoder_up[scale - 1](state)
            if k == 0:  # the top group's prior is N(0, I)
                prior_mean = prior_logstd = state.new_zeros(batch, self.options.latent_channels, side, side)
            else:
                state = self.decoder_groups[k - 1](state)
                prior_mean, prior_logstd = soft_clamp(self.prior_heads[k - 1](state)).chunk(2, dim=1)
            if top is not None and k < self.options.top_groups:
                z = top[:, k]
            elif features is not None:
                h = features[k] if k == 0 else features[k] + self.encoder_combiners[k - 1](state)
                delta_mean, delta_logstd = soft_clamp(self.posterior_heads[k](h)).chunk(2, dim=1)
                mean, logstd, kl = residual_normal(prior_mean, prior_logstd, delta_mean, delta_logstd)
                posteriors.append((mean, logstd, kl.flatten(1).sum(1)))
                z = mean + logstd.exp() * distributed.randn_like(mean) if sample_posterior else mean
            else:
                z = prior_mean + temperature * prior_logstd.exp() * torch.randn_like(prior_mean)
            state = self.decoder_combiners[k](torch.cat([state, z], dim=1))
        return state, posteriors

    def _pixels(self, state: torch.Tensor) -> torch.Tensor:
        """The raw, unclamped output, trained against the frame so no gradient is cut."""
        return self.to_pixels(self.postprocess(state))

    # ------------------------------------------------------------ the VisionModel interface

    def encode(self, x: torch.Tensor) -> Latent:
        """z = the top groups' posterior, flattened; groups after the first see the means of those above."""
        _, posteriors = self._top_down(
            len(x), self._bottom_up(x), sample_posterior=False, groups=self.options.top_groups
        )
        mean = torch.cat([m.flatten(1) for m, _, _ in posteriors], dim=1)
        logstd = torch.cat([s.flatten(1) for _, s, _ in posteriors], dim=1)
        return Latent(mean, logstd)

    def decode(self, z: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Frames from z; the lower groups come from their prior at `temperature` (default: the recipe's)."""
        t = self.options.lower_temperature if temperature is None else temperature
        top = z.reshape(len(z), self.options.top_groups, self.options.latent_channels, self.top, self.top)
        state, _ = self._top_down(len(z), top=top, temperature=t)
        return self._pixels(state).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Frames from every group's posterior mean: what the whole hierarchy keeps of x."""
        state, _ = self._top_down(len(x), self._bottom_up(x), sample_posterior=False)
        return self._pixels(state).clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n frames with every group drawn from its prior, the spreads scaled by `temperature`."""
        state, _ = self._top_down(n, temperature=temperature)
        return self._pixels(state).clamp(0, 1)

    def kl_coefficient(self) -> float:
        """KL warm-up: the KL's weight rises linearly with the fraction of training done, from 1e-4 to 1."""
        if self.options.kl_warmup <= 0:
            return 1.0
        return min(max(self.progress / self.options.kl_warmup, 1e-4), 1.0)

    def balanced_kl(self, kl: torch.Tensor, coefficient: float) -> torch.Tensor:
        """(B, groups) -> (B,): during warm-up each group's KL is weighted by its share of the total over its alpha.

        Groups that carry little information are pressed less, so none collapses to its prior before the
        weight reaches 1 (NVAE's KL balancing); after warm-up it is the plain sum.
        """
        if coefficient >= 1.0:
            return kl.sum(1)
        weights = distributed.process_mean(kl.detach().abs().mean(0)) + 0.01  # the global batch's, under torchrun
        weights = weights / self.kl_alpha * weights.sum()
        weights = weights / weights.mean()
        return (kl * weights.detach()).sum(1)

    def regularisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectral norms of every conv (one power iteration) and the largest batch-norm scale of every BN."""
        spectral = self.spectral(iterations=1)
        batch_norm = torch.stack([bn.weight.abs().max() for bn in self.batch_norms]).sum()
        return spectral, batch_norm

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summed squared error per frame (as the conv VAE) + beta x warmed-up, balanced KL
        + lambda x (spectral + BN)."""
        state, posteriors = self._top_down(len(x), self._bottom_up(x))
        mse = (self._pixels(state) - x).pow(2).flatten(1).sum(1).mean()
        kl = torch.stack([group_kl for _, _, group_kl in posteriors], dim=1)  # (B, groups)
        coefficient = self.kl_coefficient()
        spectral, batch_norm = (
            self.regularisation() if self.options.spectral_lambda > 0 else (mse.new_zeros(()), mse.new_zeros(()))
        )
        kl_term = self.cfg.kl_weight * coefficient * self.balanced_kl(kl, coefficient).mean()
        loss = mse + kl_term + self.options.spectral_lambda * (spectral + batch_norm)
        terms = {
            "loss": loss,
            "recon": mse,
            "kl": kl.sum(1).mean(),
            "kl_coefficient": torch.tensor(coefficient),
            "spectral": spectral.detach(),
            "batch_norm": batch_norm.detach(),
        }
        terms.update({f"kl_group{k}": group.mean().detach() for k, group in enumerate(kl.unbind(1))})
        return terms


def _halvings(size: int, until: int) -> list[int]:
    """The sides a grid passes through while halving from `size` down to `until` (exclusive)."""
    sides = []
    while size > until:
        sides.append(size)
        size //= 2
    return sides
