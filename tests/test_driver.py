"""collect.driver: another run's V, M and C play a share of the collected episodes (a real-world driver's data for
a dream recipe), recorded in the manifest, and a driver made for another world is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import cli_stage, one_error_line

from worldmodels.data.episodes import load_episode


@pytest.fixture
def driven(tmp_path, copy_run):
    """The tiny recipe's episodes, half of them played by the tiny run's controller without noise."""
    driver = copy_run["dir"]
    rollouts = tmp_path / "driven_ro"
    settings = [f'collect.driver="{driver}"', "collect.driver_fraction=0.5", "collect.driver_noise=0"]
    args = [x for s in settings for x in ("--set", s)]
    assert cli_stage("collect", tmp_path / "driven_ck", rollouts, *args) == 0
    return {"driver": copy_run, "episodes": rollouts / "tiny" / "episodes", "args": args, "tmp": tmp_path}


def test_the_drivers_episodes_are_its_controllers_and_the_manifest_says_so(driven):
    manifest = json.loads((driven["episodes"] / "manifest.json").read_text())
    assert manifest["driver"] == str(driven["driver"]["dir"])
    played_by = [e["policy"] for e in manifest["episodes"]]
    assert played_by == ["controller"] * 3 + ["random"] * 3  # 6 episodes, the first half the driver's
    # the same controller, evaluated on the same seeds without noise, scores exactly these episodes' returns
    seeds = [e["seed"] for e in manifest["episodes"][:3]]
    assert seeds == [0, 1, 2]
    ck, ro = driven["driver"]["checkpoints"], driven["driver"]["rollouts"]
    assert cli_stage("evaluate", ck, ro, "--set", "evaluate.seed=0", "--episodes", "3") == 0
    report = json.loads((driven["driver"]["dir"] / "report.json").read_text())
    returns = [float(load_episode(driven["episodes"] / e["file"])["reward"].sum()) for e in manifest["episodes"][:3]]
    assert np.allclose(returns, report["returns"])
    # a driver's episodes are data like any other: collecting again keeps them
    before = {p.name: p.read_bytes() for p in driven["episodes"].glob("ep_*.npz")}
    assert cli_stage("collect", driven["tmp"] / "driven_ck", driven["episodes"].parents[1], *driven["args"]) == 0
    assert {p.name: p.read_bytes() for p in driven["episodes"].glob("ep_*.npz")} == before


def test_a_driver_made_for_another_world_is_refused(tmp_path, copy_run, capsys):
    settings = [f'collect.driver="{copy_run["dir"]}"', "collect.driver_fraction=0.5", "env.frame_size=32"]
    args = [x for s in settings for x in ("--set", s)]
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", *args) == 2
    line = one_error_line(capsys, "collect")
    assert "env.frame_size=16 but the recipe says 32" in line and str(copy_run["dir"]) in line
    assert not list((tmp_path / "ro").rglob("*.npz"))  # refused before any episode is played


def test_a_driver_needs_a_run_folder_and_a_fraction(tmp_path, capsys):
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", "collect.driver_fraction=0.5") == 2
    assert "collect.driver_fraction must be in (0, 1]" in one_error_line(capsys, "collect")
    missing = [
        "--set",
        f'collect.driver="{tmp_path / "nowhere"}"',
        "--set",
        "collect.driver_fraction=0.5",
    ]
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", *missing) == 2
    assert "is not a run folder" in one_error_line(capsys, "collect")


def test_a_driver_named_by_its_run_is_found_under_the_same_checkpoints(tmp_path, copy_run):
    """`collect.driver = "NAME"` (no folder) is the run NAME beside the collecting run, wherever --checkpoints is."""
    settings = ['collect.driver="tiny"', "collect.driver_fraction=0.5", "collect.driver_noise=0"]
    args = [x for s in settings for x in ("--set", s)] + ["--run", "driven"]
    assert cli_stage("collect", copy_run["checkpoints"], tmp_path / "ro", *args) == 0
    manifest = json.loads((tmp_path / "ro" / "driven" / "episodes" / "manifest.json").read_text())
    assert manifest["driver"] == str(copy_run["dir"])
    assert [e["policy"] for e in manifest["episodes"]] == ["controller"] * 3 + ["random"] * 3
