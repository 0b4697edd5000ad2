"""Counter-based random numbers: a draw is a hash of (episode seed, step, stream, index).

A dream episode's randomness then depends on its own seed and step only, never on which other
episodes share its batch, so 1024 episodes dreamt as one batch follow exactly the trajectories
they follow one at a time. torch.Generator cannot do this: its draws depend on the batch layout.
"""

from __future__ import annotations

import math

import torch

_MASK = 0xFFFFFFFF

# streams: independent draws within one step
START, COMPONENT, GAUSS_A, GAUSS_B, DONE, DROPOUT = range(6)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for x < 2**32, in int64 without overflow (c split into 16-bit halves)."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK


def _mix(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash on 32-bit values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, step: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B,) seeds and (B,) steps -> (B, n) floats in (0, 1), one independent draw per index."""
    key = _mix((seeds.long() & _MASK) ^ 0x9E3779B9)
    key = _mix(key ^ (step.long() & _MASK))
    key = _mix(key ^ stream)
    index = torch.arange(n, device=seeds.device)
    bits = _mix(key[:, None] ^ _mix(index + 0x632BE5AB)[None, :])
    # 23 bits: (k + 0.5) / 2**23 is exact in float32, so never 0 or 1 (24 bits would round the top one up to 1)
    return ((bits >> 9).to(torch.float32) + 0.5) / float(1 << 23)


def normal(seeds: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) standard normal draws (Box-Muller on two uniform streams)."""
    u1 = uniform(seeds, step, GAUSS_A, n)
    u2 = uniform(seeds, step, GAUSS_B, n)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
