"""Learning from pixels end to end: slow tests (about two minutes each on 2 cores), run with `pytest -m slow`."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from helpers import run_cli

# CartPole at 32x32, small enough to learn in about a minute of CPU: 300 random episodes, V 12 epochs, M 8, and
# 10 generations of CMA-ES in the real world
SMALL_CARTPOLE = """
name = "small"
device = "cpu"
[env]
id = "CartPole-v1"
frame_size = 32
crop = [0.35, 0.8, 0.2, 0.8]
max_steps = 200
[collect]
episodes = 300
workers = 1
[vision]
latent_dim = 16
channels = [16, 32, 32, 64]
epochs = 12
batch_size = 64
[memory]
hidden_size = 32
num_gaussians = 3
epochs = 8
seq_len = 32
batch_size = 16
[controller]
population = 12
rollouts = 2
generations = 10
eval_every = 2
eval_rollouts = 4
workers = 1
max_steps = 200
[evaluate]
episodes = 20
workers = 1
"""


def random_policy_mean(episodes: int, first_seed: int = 10000, max_steps: int = 200) -> float:
    """CartPole's mean return under uniformly random actions, on the evaluation's seeds."""
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    env.action_space.seed(0)
    total = 0.0
    for i in range(episodes):
        env.reset(seed=first_seed + i)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
    return total / episodes


@pytest.mark.slow
def test_a_small_cartpole_agent_learns_from_pixels(tmp_path):
    recipe = tmp_path / "small.toml"
    recipe.write_text(SMALL_CARTPOLE)
    checkpoints, rollouts = tmp_path / "checkpoints", tmp_path / "rollouts"
    assert run_cli("pipeline", recipe, "--checkpoints", checkpoints, "--rollouts", rollouts) == 0
    report = json.loads((checkpoints / "small" / "report.json").read_text())
    baseline = random_policy_mean(report["episodes"])
    assert 15 < baseline < 30  # CartPole's random policy, for scale
    assert report["mean"] > 2 * baseline  # measured: 70.1 against about 22
    assert np.isfinite(report["std"])
