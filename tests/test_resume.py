"""Interrupted training resumes to exactly the uninterrupted result; saves are atomic."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RUN_NAME, cli_stage

from worldmodels.controller import search_state
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import atomic_write


def state_dict(path: Path) -> dict:
    return checkpoints.load(path, path.stem)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key


def assert_different_weights(a: dict, b: dict) -> None:
    assert any(not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def fresh_process_seed() -> None:
    """Each CLI call is normally its own process, whose torch generator starts from the same default seed.

    The library builds V and M before seeding anything (see test_same_recipe_same_weights_in_one_process),
    so to compare runs made in this one process, reset the global generator as a new process would have it.
    """
    torch.manual_seed(0)


def test_vision_resume_matches_uninterrupted(tmp_path, tiny_rollouts):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    fresh_process_seed()
    assert cli_stage("train-vision", resumed, tiny_rollouts, "--set", "vision.epochs=1") == 0
    after_one = state_dict(resumed / RUN_NAME / "vision.pt")
    assert cli_stage("train-vision", resumed, tiny_rollouts, "--set", "vision.epochs=2") == 0
    fresh_process_seed()
    assert cli_stage("train-vision", straight, tiny_rollouts, "--set", "vision.epochs=2") == 0

    a, b = (checkpoints.load(d / RUN_NAME / "vision.pt", "vision") for d in (resumed, straight))
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] > 0
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert_different_weights(a["state_dict"], after_one)  # the second epoch did train
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(group_a["exp_avg_sq"], group_b["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_memory_resume_matches_uninterrupted(tmp_path, tiny_run):
    runs = {}
    for name in ("resumed", "straight"):
        ck = tmp_path / name
        shutil.copytree(tiny_run["checkpoints"], ck)
        (ck / RUN_NAME / "memory.pt").unlink()
        runs[name] = ck
    ro = tiny_run["rollouts"]
    fresh_process_seed()
    assert cli_stage("train-memory", runs["resumed"], ro, "--set", "memory.epochs=1") == 0
    after_one = state_dict(runs["resumed"] / RUN_NAME / "memory.pt")
    assert cli_stage("train-memory", runs["resumed"], ro, "--set", "memory.epochs=2") == 0
    fresh_process_seed()
    assert cli_stage("train-memory", runs["straight"], ro, "--set", "memory.epochs=2") == 0

    a, b = (checkpoints.load(ck / RUN_NAME / "memory.pt", "memory") for ck in runs.values())
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] > 0
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert_different_weights(a["state_dict"], after_one)
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)


def test_cmaes_resume_matches_uninterrupted(tmp_path, tiny_run):
    runs = {}
    for name in ("resumed", "straight"):
        ck = tmp_path / name
        shutil.copytree(tiny_run["checkpoints"], ck)
        for f in ("cmaes.pt", "controller.pt", "report.json"):
            (ck / RUN_NAME / f).unlink()
        runs[name] = ck
    ro = tiny_run["rollouts"]
    # scramble numpy's global generator between calls: the saved state must be what resumes
    np.random.seed(12345)
    assert cli_stage("train-controller", runs["resumed"], ro, "--set", "controller.generations=1") == 0
    es_one, progress_one, _ = search_state.load(runs["resumed"] / RUN_NAME / "cmaes.pt")
    mean_one = es_one.mean.copy()
    np.random.seed(999)
    assert cli_stage("train-controller", runs["resumed"], ro, "--set", "controller.generations=2") == 0
    np.random.seed(4242)
    assert cli_stage("train-controller", runs["straight"], ro, "--set", "controller.generations=2") == 0

    (es_a, progress_a, state_a), (es_b, progress_b, state_b) = (
        search_state.load(ck / RUN_NAME / "cmaes.pt") for ck in runs.values()
    )
    assert progress_one.generation == 1 and progress_a.generation == progress_b.generation == 2
    assert es_a.countiter == es_b.countiter == 2
    np.testing.assert_allclose(es_a.mean, es_b.mean, rtol=1e-12, atol=1e-15)
    assert not np.allclose(es_a.mean, mean_one)  # generation 2 moved the search
    assert es_a.sigma == pytest.approx(es_b.sigma, rel=1e-12)
    assert progress_a.best_score == progress_b.best_score and progress_a.env_steps == progress_b.env_steps
    np.testing.assert_array_equal(state_a[1], state_b[1])  # numpy's generator state, for the next resume


def test_finished_stages_skip_without_writing(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    watched = [run / n for n in ("vision.pt", "memory.pt", "cmaes.pt", "controller.pt")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    for stage in ("train-vision", "train-memory", "train-controller"):
        assert cli_stage(stage, ck, ro) == 0
    out = capsys.readouterr().out
    assert "already trained for 1 epochs" in out and "already searched 2 generations" in out
    assert {p: p.stat().st_mtime_ns for p in watched} == before


def test_encode_redoes_latents_after_vision_trains_further(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    latents = sorted((run / "latents").glob("ep_*.npz"))
    before = {p.name: np.load(p)["mu"] for p in latents}
    assert cli_stage("encode", ck, ro) == 0  # V unchanged: nothing to redo
    assert all(np.array_equal(np.load(run / "latents" / n)["mu"], mu) for n, mu in before.items())
    assert cli_stage("train-vision", ck, ro, "--set", "vision.epochs=2") == 0
    assert cli_stage("encode", ck, ro, "--set", "vision.epochs=2") == 0
    after = {n: np.load(run / "latents" / n)["mu"] for n in before}
    assert all(not np.array_equal(after[n], before[n]) for n in before)


def test_same_recipe_same_weights_in_one_process(tmp_path, tiny_rollouts):
    """vision.seed / memory.seed must make training reproducible, whatever ran before in the process."""
    torch.manual_seed(1)
    assert cli_stage("train-vision", tmp_path / "a", tiny_rollouts) == 0
    torch.manual_seed(2)
    assert cli_stage("train-vision", tmp_path / "b", tiny_rollouts) == 0
    assert_same_weights(
        state_dict(tmp_path / "a" / RUN_NAME / "vision.pt"), state_dict(tmp_path / "b" / RUN_NAME / "vision.pt")
    )


# ---------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


def failing_write(f):
    f.write(b"half of a checkpoint")
    raise Boom()


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "sub" / "vision.pt"
    with pytest.raises(Boom):
        atomic_write(path, failing_write)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no temp file either


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "memory.pt"
    checkpoints.save(path, {"kind": "memory", "value": torch.arange(3)})
    with pytest.raises(Boom):
        atomic_write(path, failing_write)
    assert [p.name for p in tmp_path.iterdir()] == ["memory.pt"]
    assert torch.equal(checkpoints.load(path, "memory")["value"], torch.arange(3))


def test_interrupt_during_save_leaves_no_partial_file(tmp_path, monkeypatch):
    """Ctrl-C in the middle of torch.save: neither a half checkpoint nor a temp file remains."""
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    path = tmp_path / "vision.pt"
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(path, {"kind": "vision"})
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == []


def test_successful_atomic_write_modes(tmp_path):
    atomic_write(tmp_path / "a.txt", lambda f: f.write("text"), mode="w")
    checkpoints.save_json(tmp_path / "b.json", {"x": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "text"
    assert (tmp_path / "b.json").read_text().replace(" ", "").replace("\n", "") == '{"x":[1,2]}'
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json"]
