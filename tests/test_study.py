"""`worldmodels study`: the pipeline per seed, its statistics, sharing, resuming, and what it refuses."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import TINY, run_cli
from scipy import stats as scipy_stats

from worldmodels import config as config_lib
from worldmodels.stages.study import seed_config, statistics

SCORES = [400.0, 480.0, 490.0, 500.0, 470.0]


def test_statistics_against_hand_computed_values():
    out = statistics(SCORES, reps=20_000)
    assert out["iqm"] == pytest.approx((470 + 480 + 490) / 3)  # 5 scores: the lowest and highest quarter (1 each) cut
    assert out["mean"] == pytest.approx(468.0) and out["median"] == pytest.approx(480.0)
    # the interval against a brute-force percentile bootstrap of the seeds
    rng = np.random.default_rng(1)
    draws = np.asarray(SCORES)[rng.integers(0, 5, size=(20_000, 5))]
    for name, aggregate in (("iqm", lambda x: scipy_stats.trim_mean(x, 0.25, axis=1)), ("mean", lambda x: x.mean(1))):
        low, high = np.percentile(aggregate(draws), [2.5, 97.5])
        assert out[f"{name}_ci"] == pytest.approx([low, high], abs=4.0)
        assert out[f"{name}_ci"][0] < out[name] < out[f"{name}_ci"][1]
    assert statistics(SCORES, reps=2_000) == statistics(SCORES, reps=2_000)  # fixed bootstrap seed
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    statistics(SCORES, reps=100)
    assert np.random.rand() == expected  # numpy's global generator is left as it was


def test_seed_config_offsets_every_reseeded_stage():
    cfg = config_lib.load(TINY, ["memory.seed=10"])
    seeded = seed_config(cfg, 3, ("collect", "vision", "memory", "controller"), "seed_3")
    assert (seeded.collect.seed, seeded.vision.seed, seeded.memory.seed, seeded.controller.seed) == (3, 3, 13, 3)
    assert seeded.name == "seed_3" and cfg.memory.seed == 10  # the recipe itself is untouched
    only_c = seed_config(cfg, 3, ("controller",), "seed_3")
    assert (only_c.collect.seed, only_c.vision.seed, only_c.memory.seed, only_c.controller.seed) == (0, 0, 10, 3)


def study(tmp, *extra):
    return run_cli("study", TINY, "--checkpoints", tmp / "ck", "--rollouts", tmp / "ro", *extra)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A study of seeds 0 and 1 of the tiny recipe, every stage reseeded."""
    tmp = tmp_path_factory.mktemp("study")
    assert study(tmp, "--seeds", "0", "1") == 0
    return tmp


def test_study_writes_json_picture_and_tensorboard(two_seeds):
    root = two_seeds / "ck" / "tiny_study"
    out = json.loads((root / "study.json").read_text())
    assert [r["seed"] for r in out["seeds"]] == [0, 1] and out["from"] == "collect"
    assert out["reseeded"] == ["collect", "vision", "memory", "controller"]
    for row in out["seeds"]:
        report = json.loads((root / f"seed_{row['seed']}" / "report.json").read_text())
        assert row["mean"] == report["mean"] and len(row["returns"]) == 3 and row["wall_s"] > 0
    assert out["iqm"] == pytest.approx(np.mean([r["mean"] for r in out["seeds"]]))  # 2 seeds: nothing to trim
    assert (root / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (root / "tb").iterdir())
    assert (two_seeds / "ro" / "tiny_study" / "seed_1" / "episodes" / "manifest.json").is_file()


def test_two_seeds_differ_and_the_same_seed_repeats(two_seeds, tmp_path):
    root = two_seeds / "ck" / "tiny_study"
    v0, v1 = ((root / f"seed_{s}" / "vision.pt").read_bytes() for s in (0, 1))
    e0, e1 = (
        (two_seeds / "ro" / "tiny_study" / f"seed_{s}" / "episodes" / "ep_000000.npz").read_bytes() for s in (0, 1)
    )
    assert v0 != v1 and e0 != e1  # other episodes, another V
    assert study(tmp_path, "--seeds", "1") == 0
    again = json.loads((tmp_path / "ck" / "tiny_study" / "study.json").read_text())["seeds"][0]
    first = json.loads((root / "study.json").read_text())["seeds"][1]
    assert again["returns"] == first["returns"]


def test_a_resumed_study_equals_an_uninterrupted_one(two_seeds, tmp_path):
    tmp = tmp_path / "resumed"
    shutil.copytree(two_seeds, tmp)
    root = tmp / "ck" / "tiny_study"
    before = json.loads((root / "study.json").read_text())
    for name in ("controller.pt", "cmaes.pt", "report.json"):  # seed 1 stopped after train-memory
        (root / "seed_1" / name).unlink()
    assert study(tmp, "--seeds", "0", "1") == 0
    after = json.loads((root / "study.json").read_text())
    assert [r["returns"] for r in after["seeds"]] == [r["returns"] for r in before["seeds"]]
    assert after["iqm"] == before["iqm"] and after["iqm_ci"] == before["iqm_ci"]
    assert after["seeds"][0]["wall_s"] == before["seeds"][0]["wall_s"]  # a finished seed's time stands


def test_from_controller_shares_v_and_m_and_reseeds_c(tmp_path, capsys):
    assert study(tmp_path, "--seeds", "0", "1", "--from", "controller") == 0
    assert "shared by every seed" in capsys.readouterr().out
    root = tmp_path / "ck" / "tiny_study"
    for name in ("vision.pt", "memory.pt"):
        inodes = {os.stat(root / folder / name).st_ino for folder in ("shared", "seed_0", "seed_1")}
        assert len(inodes) == 1  # one file, linked
    c0, c1 = ((root / f"seed_{s}" / "controller.pt").read_bytes() for s in (0, 1))
    assert c0 != c1
    out = json.loads((root / "study.json").read_text())
    assert out["shared"] == ["collect", "train-vision", "encode", "train-memory"] and out["reseeded"] == ["controller"]
    # the same folder reseeded from another stage would mix two kinds of runs
    assert study(tmp_path, "--seeds", "0", "1") == 2
    assert "reseeded from controller, not collect" in capsys.readouterr().err


def test_bad_seeds_exit_2(tmp_path, capsys):
    assert study(tmp_path, "--seeds", "1", "1") == 2
    assert "--seeds must be distinct" in capsys.readouterr().err


def test_final_selection_keeps_the_best_of_the_top_rescored(copy_run, capsys):
    """controller.select_top: the kept controller is the best of the top contenders over the
    selection's own episodes."""
    import torch
    from helpers import cli_stage

    from worldmodels.controller import search_state
    from worldmodels.play.backends import real_evaluator
    from worldmodels.runs.checkpoints import Run
    from worldmodels.stages.evolution import Stream, stream_seeds

    ck, ro, run_dir = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("controller.pt", "cmaes.pt"):
        (run_dir / name).unlink()
    sets = [
        "--set",
        "controller.select_top=3",
        "--set",
        "controller.select_rollouts=4",
        "--set",
        "controller.generations=3",
    ]
    assert cli_stage("train-controller", ck, ro, *sets) == 0
    assert "re-scored on 4 episodes" in capsys.readouterr().out
    progress = search_state.load_progress(run_dir / "cmaes.pt")
    assert progress.selected == progress.generation == 3
    history = sorted(progress.history, key=lambda h: -h["score"])
    contenders = []
    for h in history:
        if not any(np.array_equal(h["params"], k) for k in contenders) and len(contenders) < 3:
            contenders.append(h["params"])
    cfg = config_lib.load(TINY, [s for s in sets if s != "--set"])
    run = Run(ck, cfg)
    with real_evaluator(cfg, run.vision, run.memory, 1) as evaluator:  # the same episodes, scored by hand
        scores = evaluator.returns(np.stack(contenders), stream_seeds(cfg.controller, Stream.SELECT, 3, 4)).mean(1)
    saved = torch.load(run_dir / "controller.pt", weights_only=True)
    assert saved["score"] == pytest.approx(scores.max())
    np.testing.assert_array_equal(saved["params"].numpy(), contenders[int(scores.argmax())].astype(np.float32))
    before = (run_dir / "controller.pt").read_bytes()
    assert cli_stage("train-controller", ck, ro, *sets) == 0  # finished and selected: nothing more
    assert "already searched" in capsys.readouterr().out and (run_dir / "controller.pt").read_bytes() == before


def test_confirmed_contenders_stand_on_their_mean_over_all_episodes(copy_run, capsys):
    """controller.confirm_rollouts: a contender that beats the kept score is re-scored on that many more episodes, and
    its score (kept, and checked against the target) is its mean over the re-evaluation's and those."""
    import torch
    from helpers import cli_stage

    from worldmodels.controller import search_state
    from worldmodels.play.backends import real_evaluator
    from worldmodels.runs.checkpoints import Run
    from worldmodels.stages.evolution import Stream, stream_seeds

    ck, ro, run_dir = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("controller.pt", "cmaes.pt"):
        (run_dir / name).unlink()
    sets = ["controller.confirm_rollouts=3", "controller.eval_rollouts=2", "controller.eval_every=1"]
    sets += ["controller.generations=1"]
    assert cli_stage("train-controller", ck, ro, *[x for s in sets for x in ("--set", s)]) == 0
    assert "over 5 episodes: best" in capsys.readouterr().out  # nothing kept yet: both contenders are confirmed
    history = search_state.load_progress(run_dir / "cmaes.pt").history
    contenders = np.stack([h["params"] for h in history])
    cfg = config_lib.load(TINY, sets)
    run = Run(ck, cfg)
    with real_evaluator(cfg, run.vision, run.memory, 1) as evaluator:  # the same episodes, scored by hand
        first = evaluator.returns(contenders, stream_seeds(cfg.controller, Stream.REEVALUATE, 0, 2))
        more = evaluator.returns(contenders, stream_seeds(cfg.controller, Stream.CONFIRM, 0, 3))
    scores = np.concatenate([first, more], 1).mean(1)
    assert [h["score"] for h in history] == pytest.approx(scores)
    saved = torch.load(run_dir / "controller.pt", weights_only=True)
    assert saved["score"] == pytest.approx(scores.max())
    np.testing.assert_array_equal(saved["params"].numpy(), contenders[int(scores.argmax())].astype(np.float32))
