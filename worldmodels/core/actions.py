"""The action codec: actions of a gymnasium space as the float vectors M reads."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from worldmodels.core.errors import WorldModelsError


def action_dim(space: gym.Space) -> int:
    """Width of an action as M sees it: one-hot for Discrete, one-hots side by side for MultiDiscrete,
    the vector for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return int(space.nvec.sum())  # one logit per choice of each component
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise WorldModelsError(
        f"unsupported action space {space}; only Discrete, MultiDiscrete (1-D) and Box are supported"
    )


def encode_actions(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """Actions as float vectors for M: one-hot for Discrete, concatenated one-hots for MultiDiscrete, floats for Box."""
    if isinstance(space, gym.spaces.Discrete):
        return np.eye(int(space.n), dtype=np.float32)[np.asarray(actions, dtype=np.int64) - int(space.start)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        choices = np.asarray(actions, dtype=np.int64).reshape(-1, len(space.nvec)) - space.start
        return np.concatenate([np.eye(n, dtype=np.float32)[choices[:, i]] for i, n in enumerate(space.nvec)], axis=1)
    return np.asarray(actions, dtype=np.float32).reshape(len(actions), action_dim(space))
