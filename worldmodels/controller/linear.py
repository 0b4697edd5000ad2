"""C: a linear controller a = tanh(W [z, h] + b) (the argmax of W [z, h] + b for choices),
seen by CMA-ES as one flat vector."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import gymnasium as gym
import numpy as np
import torch

from worldmodels.core.actions import action_dim


class Controller:
    """P linear controllers at once (P = 1 for acting); parameters W (P, A, D) and b (P, A)."""

    def __init__(self, input_dim: int, space: gym.Space, population: int = 1):
        self.input_dim, self.space = input_dim, space
        self.out = action_dim(space)  # one logit per choice for Discrete, one output per dimension for Box
        self.weight = torch.zeros(population, self.out, input_dim)
        self.bias = torch.zeros(population, self.out)

    @property
    def num_params(self) -> int:
        return self.out * (self.input_dim + 1)

    @classmethod
    def from_flat(cls, flat: np.ndarray, input_dim: int, space: gym.Space) -> "Controller":
        """Build from CMA-ES vectors: (N,) for one controller or (P, N) for a population."""
        params = torch.as_tensor(np.atleast_2d(flat), dtype=torch.float32)
        c = cls(input_dim, space, population=params.shape[0])
        c.weight = params[:, : c.out * input_dim].reshape(-1, c.out, input_dim).contiguous()
        c.bias = params[:, c.out * input_dim :].contiguous()
        return c

    def to_flat(self) -> np.ndarray:
        """(P, N) parameters, W row-major then b."""
        return torch.cat([self.weight.flatten(1), self.bias], dim=1).numpy()

    def select(self, rows: torch.Tensor | list[int]) -> "Controller":
        """The controllers at `rows` (repeats allowed), as a new population."""
        c = Controller(self.input_dim, self.space, population=0)
        c.weight, c.bias = self.weight[rows], self.bias[rows]
        return c

    def to(self, device: torch.device | str) -> "Controller":
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        return self

    def logits(self, z: torch.Tensor, h: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """W [z, h] + b, controller p applied to row p: z (P, Z), h (P, H) -> (P, A); `rows` picks controllers."""
        weight, bias = (self.weight, self.bias) if rows is None else (self.weight[rows], self.bias[rows])
        x = torch.cat([z, h], dim=-1)  # (P, D)
        return torch.baddbmm(bias.unsqueeze(-1), weight, x.unsqueeze(-1)).squeeze(-1)

    def outputs(
        self, z: torch.Tensor, h: torch.Tensor, rows: list[int] | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What `to_action` maps: tanh of the logits for Box actions; the logits themselves for choices, whose
        argmax tanh keeps, except that it rounds logits above ~9 to the same 1.0 and ties them.

        `noise` (B, A) is added to tanh of the logits, for choices too: C as a noisy policy, or exploration.
        """
        logits = self.logits(z, h, rows)
        if noise is not None:
            return torch.tanh(logits) + noise
        return logits if isinstance(self.space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)) else torch.tanh(logits)

    def act(
        self, z: torch.Tensor, h: torch.Tensor, rows: list[int] | None = None, noise: np.ndarray | None = None
    ) -> list:
        """Actions in the environment's action space, one per controller (or per entry of `rows`); `noise` (B, A)
        as in `outputs`: exploration while collecting."""
        y = self.outputs(z.float(), h.float(), rows, None if noise is None else torch.as_tensor(noise))
        return [to_action(row, self.space) for row in y.numpy()]


@dataclass(frozen=True)
class InputScale:
    """C's inputs' mean and spread over the data (controller.normalize): CMA-ES then searches W' and b' of
    tanh(W' (x - mean) / std + b'), which is the controller W = W' / std, b = b' - W mean.

    One step size moves every input's weight by the same share of that input's spread; otherwise inputs
    that vary 10x less (V's quiet latent dimensions) are as good as ignored until CMA-ES learns their scale.
    """

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,), floored so that a constant input does not blow its weight up

    @classmethod
    def of(cls, inputs: np.ndarray, floor: float = 1e-2) -> "InputScale":
        """The scale of (N, D) rows of C's inputs."""
        return cls(inputs.mean(0), np.maximum(inputs.std(0), floor))

    def _split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, N) flat parameters -> W (P, A, D), b (P, A), laid out as `Controller.to_flat`."""
        flat, d = np.atleast_2d(flat), len(self.mean)
        out = flat.shape[1] // (d + 1)
        return flat[:, : out * d].reshape(len(flat), out, d), flat[:, out * d :]

    def to_controller(self, flat: np.ndarray) -> np.ndarray:
        """(P, N) parameters in the search's units -> the controllers' own (W, b)."""
        weight, bias = self._split(flat)
        weight = weight / self.std
        return np.concatenate([weight.reshape(len(weight), -1), bias - weight @ self.mean], axis=1)

    def to_search(self, flat: np.ndarray) -> np.ndarray:
        """The inverse of `to_controller`."""
        weight, bias = self._split(flat)
        return np.concatenate([(weight * self.std).reshape(len(weight), -1), bias + weight @ self.mean], axis=1)


def memory_actions(y: torch.Tensor, space: gym.Space) -> torch.Tensor:
    """Controller outputs (B, A) as M's action input, without leaving the device: encode_actions(to_action(y))."""
    if isinstance(space, gym.spaces.Discrete):
        return torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    if isinstance(space, gym.spaces.MultiDiscrete):
        groups = torch.split(y, space.nvec.tolist(), dim=-1)  # one group of logits per component
        return torch.cat([torch.nn.functional.one_hot(g.argmax(-1), g.shape[-1]).to(y.dtype) for g in groups], dim=-1)
    box = cast(gym.spaces.Box, space)  # neither kind of choice: a Box
    bounds = tuple(box.low.ravel().tolist()), tuple(box.high.ravel().tolist())
    low, span, bounded = _box_scale(*bounds, y.dtype, y.device)
    return torch.where(bounded, low + (y + 1) / 2 * span, y)


@functools.lru_cache(maxsize=64)
def _box_scale(
    low: tuple[float, ...], high: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Box's finite low, its span and which dimensions are bounded, as tensors: built once, not every dream step."""
    lo, hi = torch.tensor(low, dtype=dtype, device=device), torch.tensor(high, dtype=dtype, device=device)
    return torch.nan_to_num(lo), torch.nan_to_num(hi - lo), torch.isfinite(lo) & torch.isfinite(hi)


def to_action(y: np.ndarray, space: gym.Space):
    """Map one controller output in [-1, 1]^A onto the action space: argmax (per group) for (Multi)Discrete,
    bounds for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + np.argmax(y))
    if isinstance(space, gym.spaces.MultiDiscrete):
        groups = np.split(np.asarray(y), np.cumsum(space.nvec)[:-1])  # one group of logits per component
        return (np.array([g.argmax() for g in groups]) + space.start).astype(space.dtype).reshape(space.shape)
    box = cast(gym.spaces.Box, space)  # neither kind of choice: a Box
    low, high = box.low.ravel(), box.high.ravel()
    bounded = np.isfinite(low) & np.isfinite(high)  # unbounded dimensions take the raw output
    scaled = np.where(bounded, np.nan_to_num(low) + (y + 1) / 2 * np.nan_to_num(high - low), y)
    # noise on tanh's output (exploration, controller.noise) can leave [-1, 1]: the world gets, and the episode
    # store records, an action of its space
    return np.clip(scaled, low, high).reshape(space.shape).astype(space.dtype)
