"""Shared fixtures: the tiny recipe, its collected episodes and a run trained stage by stage.

Everything is written under pytest's tmp folders; nothing touches ./checkpoints or ./rollouts.
Session fixtures are read-only for the tests: a test that changes a run copies it first (`copy_run`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # pygame (CartPole's renderer) complains without it
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pytest
import torch
from helpers import RUN_NAME, cli_stage, copy_tree

# The models here are tiny: one thread is much faster than several fighting over 2 cores
# (the library's worker processes use one thread each for the same reason).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="session")
def tiny_rollouts(tmp_path_factory) -> Path:
    """The tiny recipe's 6 collected CartPole episodes: a rollouts root (read-only for tests)."""
    root = tmp_path_factory.mktemp("tiny_rollouts")
    checkpoints = tmp_path_factory.mktemp("tiny_collect_ck")
    assert cli_stage("collect", checkpoints, root) == 0
    episodes = sorted((root / RUN_NAME / "episodes").glob("ep_*.npz"))
    assert len(episodes) == 6
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_rollouts) -> dict:
    """A run trained stage by stage (collect, train-vision, encode, train-memory, train-controller, evaluate).

    Built without `sample`/`pipeline` so that it does not depend on them. Returns the folders.
    """
    checkpoints = tmp_path_factory.mktemp("tiny_run_ck")
    torch.manual_seed(0)  # model initialisation draws from the global generator (see test_resume)
    for stage in ("train-vision", "encode", "train-memory", "train-controller", "evaluate"):
        assert cli_stage(stage, checkpoints, tiny_rollouts) == 0, stage
    return {"checkpoints": checkpoints, "rollouts": tiny_rollouts, "dir": checkpoints / RUN_NAME}


@pytest.fixture
def copy_run(tmp_path, tiny_run):
    """A private copy of the trained tiny run (checkpoints root), with the shared episodes."""
    checkpoints = copy_tree(tiny_run["checkpoints"], tmp_path / "ck")
    return {"checkpoints": checkpoints, "rollouts": tiny_run["rollouts"], "dir": checkpoints / RUN_NAME}


@pytest.fixture
def copy_rollouts(tmp_path, tiny_rollouts):
    """A private copy of the collected episodes (rollouts root)."""
    return copy_tree(tiny_rollouts, tmp_path / "ro")
