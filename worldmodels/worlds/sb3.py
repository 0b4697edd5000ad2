"""The batched dream behind Stable-Baselines3's VecEnv: one M step for every copy, SB3's same-step autoreset.

SB3 refuses gymnasium's `VectorEnv` and would fall back to one `DreamEnv` per process; this adapter keeps
the whole batch in one LSTM step. Needs `stable-baselines3` (in the dev extra).
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from worldmodels.core.actions import encode_actions
from worldmodels.worlds.dream import Dream, observation_space
from worldmodels.worlds.latent import dream_env


class DreamVecEnv(VecEnv):
    """`num_envs` dream episodes stepped together; a finished one restarts in the same step (its last
    observation in info['terminal_observation']), as SB3's own vector envs do."""

    actions: np.ndarray | None  # set by step_async

    def __init__(self, dream: Dream, action_space, num_envs: int, seed: int | None = None):
        super().__init__(num_envs, observation_space(dream.latent_dim, dream.memory), action_space)
        self.dream, self.rng, self.actions = dream, np.random.default_rng(seed), None

    def _fresh(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.integers(0, 2**31 - 1, size=n))

    def reset(self) -> np.ndarray:
        """Every copy restarts; after `seed(s)` copy i dreams episode s + i (as DreamEnv(seed=s + i) does)."""
        given = [s for s in self._seeds if s is not None]
        seeds = torch.tensor(self._seeds) if len(given) == self.num_envs else self._fresh(self.num_envs)
        if len(given) == self.num_envs:  # a seeded run restarts its later episodes the same way every time
            self.rng = np.random.default_rng(given[0])
        self._reset_seeds()
        return self.dream.reset(seeds).cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = actions

    def step_wait(self):
        encoded = torch.from_numpy(encode_actions(np.asarray(self.actions), self.action_space))
        reward, terminated, truncated = (t.cpu().numpy() for t in self.dream.step(encoded))
        obs, done = self.dream.observation().cpu().numpy(), terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            for i in np.flatnonzero(done):
                infos[i] = {
                    "terminal_observation": obs[i].copy(),
                    "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                }
            self.dream.reset_rows(torch.from_numpy(done), self._fresh(int(done.sum())))
            obs = self.dream.observation().cpu().numpy()
        return obs, reward.astype(np.float32), done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(cast(Sized, self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs)] * len(
            cast(Sized, self._get_indices(indices))
        )

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(cast(Sized, self._get_indices(indices)))


def dream_vec_env(
    run: str | Path, num_envs: int, recipe: str | Path | None = None, seed: int | None = None, device: str = "cpu"
) -> DreamVecEnv:
    """The run's dream (as `worldmodels/Dream-v0` builds it) as one SB3 VecEnv of `num_envs` batched copies."""
    single = dream_env(run, recipe, device)
    return DreamVecEnv(single.dream, single.action_space, num_envs, seed)
