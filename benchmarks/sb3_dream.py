"""Stable-Baselines3 in the dream: PPO's env steps/s on the shipped batched adapter vs SB3's own vector of DreamEnvs,
and a single DreamEnv step against M's step alone; PPO on a vector env whose step costs nothing is the ceiling any
adapter of that many envs can reach, and with M's batched step added, the bound of a batched dream.

    python benchmarks/sb3_dream.py [--recipe envs/carracing.toml] [--envs 64] [--baseline-envs 8] [--steps 16384]

M has the recipe's sizes (carracing: z 32, LSTM 256, 5 Gaussians) and is untrained: speed does not depend on
training. Both PPO runs collect `--steps` env steps (rollouts of 128 steps per env, one epoch of updates on a
batch as large as the rollout), so the figure is PPO's whole loop, its updates included. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from worldmodels import config
from worldmodels.core import noise
from worldmodels.memory import MDNRNN
from worldmodels.stages.memory import memory_sizes
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.dream import Dream, DreamEnv
from worldmodels.worlds.real import action_space
from worldmodels.worlds.sb3 import DreamVecEnv


def ppo_steps_per_s(envs, steps: int) -> float:
    agent = PPO("MlpPolicy", envs, n_steps=128, batch_size=128 * envs.num_envs, n_epochs=1, seed=0, device="cpu")
    start = time.perf_counter()
    agent.learn(total_timesteps=steps)
    return agent.num_timesteps / (time.perf_counter() - start)


class FreeVecEnv(VecEnv):
    """The dream's spaces with steps that cost nothing: what PPO's own loop costs at that many envs."""

    def __init__(self, observation_space, action_space, num_envs: int):
        super().__init__(num_envs, observation_space, action_space)
        self.obs = np.zeros((num_envs, *observation_space.shape), dtype=np.float32)
        self.zeros = np.zeros(num_envs, dtype=np.float32)
        self.infos: list[dict] = [{} for _ in range(num_envs)]

    def reset(self) -> np.ndarray:
        return self.obs

    def step_async(self, actions: np.ndarray) -> None:
        pass

    def step_wait(self):
        return self.obs, self.zeros, self.zeros.astype(bool), self.infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [None] * self.num_envs

    def set_attr(self, attr_name, value, indices=None) -> None:
        pass

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return [None] * self.num_envs

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * self.num_envs


def per_step_us(step, repeat: int = 2000) -> float:
    for _ in range(50):
        step()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/carracing.toml")
    p.add_argument("--envs", type=int, default=64)
    p.add_argument("--baseline-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=16384)
    args = p.parse_args()
    cfg = config.load(args.recipe, ['dream.done="never"', "dream.max_steps=1000"])
    torch.manual_seed(0)
    memory = MDNRNN(cfg.memory, **memory_sizes(cfg, build_vision(vision_config(cfg)))).eval()
    starts = torch.randn(100, 2, cfg.vision.latent_dim)
    space = action_space(cfg.env)

    def dream() -> Dream:
        return Dream(memory, cfg.dream, starts)

    adapter = DreamVecEnv(dream(), space, args.envs, seed=0)
    batched = ppo_steps_per_s(adapter, args.steps)
    ceiling = ppo_steps_per_s(FreeVecEnv(adapter.observation_space, space, args.envs), args.steps)
    baseline = ppo_steps_per_s(
        make_vec_env(lambda: DreamEnv(dream(), space), n_envs=args.baseline_envs, seed=0), args.steps
    )

    single = DreamEnv(dream(), space)
    single.reset(seed=0)
    action = space.sample()
    env_step = per_step_us(lambda: single.step(action))
    z, a, state = torch.zeros(1, cfg.vision.latent_dim), torch.zeros(1, memory.action_dim), memory.initial_state(1)
    with torch.inference_mode():
        m_step = per_step_us(lambda: memory.step(z, a, state))
        # M's step alone at the adapter's batch: no adapter can step its envs faster than this
        zb, ab, sb = (
            torch.zeros(args.envs, z.shape[1]),
            torch.zeros(args.envs, a.shape[1]),
            memory.initial_state(args.envs),
        )
        m_batched = per_step_us(lambda: memory.step(zb, ab, sb), repeat=500)
    # PPO's own loop (the free env) plus M's batched step, nothing else: the most any adapter of these envs reaches
    bound = args.envs / (args.envs / ceiling + m_batched * 1e-6)
    seeds, t = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    streams = (noise.COMPONENT, noise.GAUSS_A, noise.GAUSS_B, noise.DONE)
    hash_step = per_step_us(lambda: noise.uniforms(seeds, t, streams, cfg.vision.latent_dim))
    print(
        json.dumps(
            {
                "benchmark": "sb3_dream",
                "recipe": args.recipe,
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "ppo_steps_per_s_batched": round(batched, 1),
                "batched_envs": args.envs,
                "ppo_steps_per_s_dummy_vec_env": round(baseline, 1),
                "dummy_envs": args.baseline_envs,
                "ratio_batched_vs_dummy": round(batched / baseline, 2),
                "ppo_steps_per_s_free_env": round(ceiling, 1),
                "ratio_free_env_vs_dummy": round(ceiling / baseline, 2),
                "memory_step_batched_us": round(m_batched, 1),
                "ppo_steps_per_s_bound": round(bound, 1),
                "ratio_bound_vs_dummy": round(bound / baseline, 2),
                "dream_env_step_us": round(env_step, 1),
                "memory_step_us": round(m_step, 1),
                "noise_hash_step_us": round(hash_step, 1),
                "ratio_env_step_vs_memory_step": round(env_step / m_step, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
