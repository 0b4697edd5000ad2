"""User mistakes and damaged files reach the user as one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import pytest
import torch
from helpers import RUN_NAME, cli_stage, one_error_line, run_cli

from worldmodels import config as config_lib


@pytest.mark.parametrize("stage", ["collect", "pipeline"])
def test_unknown_env_id(tmp_path, capsys, stage):
    rc = cli_stage(stage, tmp_path / "ck", tmp_path / "ro", "--set", 'env.id="NoSuchEnv-v0"')
    assert rc == 2
    line = one_error_line(capsys, stage)
    assert "NoSuchEnv-v0" in line and "unknown env id" in line
    assert not list((tmp_path / "ro").rglob("*.npz"))


def test_unknown_top_level_recipe_key(tmp_path, capsys):
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", "colour=1") == 2
    assert "unknown recipe key 'colour'" in one_error_line(capsys, "collect")
    assert not (tmp_path / "ck").exists()  # nothing was started


def test_unknown_section_recipe_key(tmp_path, capsys):
    assert cli_stage("train-vision", tmp_path / "ck", tmp_path / "ro", "--set", "vision.foo=1") == 2
    assert "unknown recipe key 'vision.foo'" in one_error_line(capsys, "train-vision")


def test_missing_recipe_and_bad_value(tmp_path, capsys):
    assert run_cli("collect", tmp_path / "nope.toml") == 2
    assert "not found" in one_error_line(capsys, "collect")
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", "env.frame_size=20") == 2
    assert "env.frame_size" in one_error_line(capsys, "collect")
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", "vision.latent_dim") == 2
    assert "section.key=value" in one_error_line(capsys, "collect")


def test_missing_run_folder(tmp_path, capsys):
    assert cli_stage("evaluate", tmp_path / "ck", tmp_path / "ro", "--run", "nonexistent") == 2
    line = one_error_line(capsys, "evaluate")
    assert "does not exist" in line and "nonexistent" in line


def test_missing_earlier_stage(copy_run, capsys):
    (copy_run["dir"] / "memory.pt").unlink()
    assert cli_stage("train-controller", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    assert "run `worldmodels train-memory` first" in one_error_line(capsys, "train-controller")


def test_nothing_collected(tmp_path, capsys):
    assert cli_stage("train-vision", tmp_path / "ck", tmp_path / "ro") == 2
    assert "run `worldmodels collect` first" in one_error_line(capsys, "train-vision")


def test_truncated_episode_is_skipped_and_training_succeeds(tmp_path, copy_rollouts, capsys):
    bad = copy_rollouts / RUN_NAME / "episodes" / "ep_000002.npz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    assert cli_stage("train-vision", tmp_path / "ck", copy_rollouts) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    skip_lines = [line for line in captured.out.splitlines() if "skipping corrupt episode" in line]
    assert len(skip_lines) == 1 and "ep_000002.npz" in skip_lines[0] and "1 skipped" in skip_lines[0]
    assert "skipped 1 corrupt episode(s)" in captured.out
    assert (tmp_path / "ck" / RUN_NAME / "vision.pt").is_file()


def test_damaged_episode_is_skipped_and_training_succeeds(tmp_path, copy_rollouts, capsys):
    """Damage inside the compressed data (not a clean truncation) must be skipped the same way."""
    bad = copy_rollouts / RUN_NAME / "episodes" / "ep_000002.npz"
    data = bytearray(bad.read_bytes())
    data[120:200] = bytes(80)  # inside the first (obs) member's deflate stream
    bad.write_bytes(bytes(data))
    assert cli_stage("train-vision", tmp_path / "ck", copy_rollouts) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "ep_000002.npz" in captured.out and "skipped 1 corrupt episode(s)" in captured.out


def test_vision_checkpoint_of_another_size_refused_by_training(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    assert cli_stage("train-vision", ck, ro, "--set", "vision.latent_dim=8") == 2
    line = one_error_line(capsys, "train-vision")
    assert "vision.latent_dim=4" in line and "8" in line


def test_refused_checkpoint_keeps_the_recorded_recipe(copy_run, capsys):
    """recipe.toml records what the run was made with; a refused command must not overwrite it."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    assert cli_stage("train-vision", ck, ro, "--set", "vision.latent_dim=8") == 2
    assert config_lib.load(run / "recipe.toml").vision.latent_dim == 4


def test_vision_checkpoint_of_another_size_refused_by_encode(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    assert cli_stage("encode", ck, ro, "--set", "vision.latent_dim=8") == 2
    assert "latent_dim" in one_error_line(capsys, "encode")


def test_memory_checkpoint_of_another_size_refused(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    assert cli_stage("train-memory", ck, ro, "--set", "memory.hidden_size=16") == 2
    line = one_error_line(capsys, "train-memory")
    assert "memory.hidden_size=8" in line


@pytest.mark.parametrize(
    "name, stage", [("vision.pt", "train-vision"), ("memory.pt", "evaluate"), ("controller.pt", "evaluate")]
)
def test_truncated_checkpoint(copy_run, capsys, name, stage):
    path = copy_run["dir"] / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"]) == 2
    line = one_error_line(capsys, stage)
    assert "unreadable" in line and name in line


def test_truncated_cmaes_state(copy_run, capsys):
    path = copy_run["dir"] / "cmaes.pt"
    path.write_bytes(path.read_bytes()[:50])
    assert (
        cli_stage(
            "train-controller", copy_run["checkpoints"], copy_run["rollouts"], "--set", "controller.generations=3"
        )
        == 2
    )
    line = one_error_line(capsys, "train-controller")
    assert "unreadable" in line and "cmaes.pt" in line


def test_checkpoint_of_the_wrong_kind(copy_run, capsys):
    run = copy_run["dir"]
    (run / "memory.pt").write_bytes((run / "vision.pt").read_bytes())
    assert cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    assert "not a memory checkpoint" in one_error_line(capsys, "evaluate")


def test_an_m_saved_before_reward_from_is_refused_under_next(copy_run, capsys):
    """An M checkpoint whose config predates memory.reward_from reads its reward from h: a recipe asking for "next"
    gets one line, not a failure deep in load_state_dict."""
    path = copy_run["dir"] / "memory.pt"
    saved = torch.load(path, weights_only=True)
    del saved["config"]["reward_from"]
    torch.save(saved, path)
    args = ("--set", 'memory.reward_from="next"')
    assert cli_stage("train-memory", copy_run["checkpoints"], copy_run["rollouts"], *args) == 2
    assert "memory.reward_from='hidden'" in one_error_line(capsys, "train-memory")
