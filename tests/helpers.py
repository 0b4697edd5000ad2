"""Helpers the tests share: the tiny recipe and its CLI, and the small M, spaces and controllers of the dream's
tests. Fixtures live in conftest.py; this is a plain module the tests import."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldmodels import cli
from worldmodels.config import MemoryConfig
from worldmodels.controller.linear import Controller
from worldmodels.memory import MDNRNN

TESTS = Path(__file__).resolve().parent
TINY = str(TESTS / "tiny.toml")
RUN_NAME = "tiny"  # the `name` in tiny.toml


def run_cli(*argv: str) -> int:
    """cli.main with the given arguments (strings)."""
    return cli.main([str(a) for a in argv])


def cli_stage(stage: str, checkpoints: Path, rollouts: Path, *extra: str) -> int:
    """One stage of the tiny recipe into the given folders."""
    return run_cli(stage, TINY, "--checkpoints", checkpoints, "--rollouts", rollouts, *extra)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_error_line(capsys, stage: str) -> str:
    """The one line a refused command printed, checked to be one line of the stage's own, with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"worldmodels {stage}: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------- the dream's small M, its spaces and controllers

Z, H, K = 3, 8, 3  # latent size, LSTM size, mixture components of the small M
DISCRETE = gym.spaces.Discrete(2)
BOX = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
SPACES = pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])


def small_memory(seed: int = 0, action_dim: int = 2, done_weight: float = 10.0) -> MDNRNN:
    """A randomly initialised M of the small sizes above."""
    torch.manual_seed(seed)
    return MDNRNN(MemoryConfig(hidden_size=H, num_gaussians=K, done_weight=done_weight), Z, action_dim).eval()


def fixed_start(mean: torch.Tensor) -> torch.Tensor:
    """`starts` with one entry of negligible spread: every episode starts at `mean`."""
    return torch.stack([mean, torch.full_like(mean, -30.0)])[None]


def population(space: gym.Space, p: int, seed: int = 0) -> tuple[Controller, np.ndarray]:
    """P random controllers reading [z, h] of the small M, and their flat parameters."""
    n = Controller(Z + H, space).num_params
    flat = np.random.default_rng(seed).standard_normal((p, n))
    return Controller.from_flat(flat, Z + H, space), flat
