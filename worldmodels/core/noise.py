"""Counter-based random numbers: a draw is a hash of (episode seed, step, stream, index).

A dream episode's randomness then depends on its own seed and step only, never on which other
episodes share its batch, so 1024 episodes dreamt as one batch follow exactly the trajectories
they follow one at a time. torch.Generator cannot do this: its draws depend on the batch layout.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

_MASK = 0xFFFFFFFF

# streams: independent draws within one step
START, COMPONENT, GAUSS_A, GAUSS_B, DONE, DROPOUT, ACTION_A, ACTION_B = range(8)


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


@functools.lru_cache(maxsize=256)
def _constants(values: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=256)
def _index_keys(n: int, device: str) -> torch.Tensor:
    """The hashed indices 0..n-1: the same every step, so computed once."""
    return _mix(torch.arange(n, device=device) + 0x632BE5AB)


def _mix_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint32 arrays: their products wrap mod 2**32, so each multiply is one operation on 4 bytes."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


@functools.lru_cache(maxsize=256)
def _index_keys_np(n: int) -> np.ndarray:
    return _mix_np(np.arange(n, dtype=np.uint32) + np.uint32(0x632BE5AB))


def _uniforms_np(seeds: torch.Tensor, step: torch.Tensor, streams: tuple[int, ...], n: int) -> torch.Tensor:
    """`uniforms` on the CPU in numpy: the same bits with a third of the operations, each a fraction of torch's cost."""
    key = _mix_np(seeds.numpy().astype(np.uint32) ^ np.uint32(0x9E3779B9))  # int64 -> uint32 keeps the low 32 bits
    key = _mix_np(key ^ step.numpy().astype(np.uint32))
    keys = _mix_np(key[:, None] ^ np.asarray(streams, dtype=np.uint32)[None, :])
    bits = _mix_np(keys[:, :, None] ^ _index_keys_np(n)[None, None, :])
    return torch.from_numpy(((bits >> np.uint32(9)).astype(np.float32) + np.float32(0.5)) / np.float32(1 << 23))


def uniforms(seeds: torch.Tensor, step: torch.Tensor, streams: tuple[int, ...], n: int) -> torch.Tensor:
    """(B,) seeds and (B,) steps -> (B, len(streams), n) floats in (0, 1): several streams of one step in one pass.

    A step's key is hashed once for all its streams, so a dream step costs a few wide operations, not hundreds
    of tiny ones; the draws are those `uniform` gives stream by stream. On the CPU the hash runs in numpy.
    """
    if seeds.device.type == "cpu":
        return _uniforms_np(seeds, step, streams, n)
    return _uniforms_torch(seeds, step, streams, n)


def _uniforms_torch(seeds: torch.Tensor, step: torch.Tensor, streams: tuple[int, ...], n: int) -> torch.Tensor:
    """`uniforms` on the tensors' own device (a GPU's dream draws where it runs)."""
    device = str(seeds.device)
    key = _mix((seeds.long() & _MASK) ^ 0x9E3779B9)
    key = _mix(key ^ (step.long() & _MASK))
    keys = _mix(key[:, None] ^ _constants(streams, device)[None, :])  # (B, S)
    bits = _mix(keys[:, :, None] ^ _index_keys(n, device)[None, None, :])
    # 23 bits: (k + 0.5) / 2**23 is exact in float32, so never 0 or 1 (24 bits would round the top one up to 1)
    return ((bits >> 9).to(torch.float32) + 0.5) / float(1 << 23)


def uniform(seeds: torch.Tensor, step: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(B,) seeds and (B,) steps -> (B, n) floats in (0, 1), one independent draw per index."""
    return uniforms(seeds, step, (stream,), n)[:, 0]


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from two uniform ones."""
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def normal(seeds: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) standard normal draws (Box-Muller on two uniform streams)."""
    u = uniforms(seeds, step, (GAUSS_A, GAUSS_B), n)
    return box_muller(u[:, 0], u[:, 1])
