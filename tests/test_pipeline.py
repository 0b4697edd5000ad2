"""The whole pipeline on the tiny recipe, through the command line."""

from __future__ import annotations

import faulthandler
import json
import time

import numpy as np
import pytest
import torch
from helpers import RUN_NAME, TINY, cli_stage
from PIL import Image

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller
from worldmodels.play.loops import play
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import load_controller
from worldmodels.worlds.real import make_world

RUN_FILES = ("recipe.toml", "vision.pt", "memory.pt", "controller.pt", "cmaes.pt", "report.json")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """`worldmodels pipeline tests/tiny.toml` into fresh folders, exactly as the recipe says."""
    root = tmp_path_factory.mktemp("pipeline")
    ck, ro = root / "ck", root / "ro"
    start = time.perf_counter()
    rc = cli_stage("pipeline", ck, ro)
    return {"rc": rc, "seconds": time.perf_counter() - start, "checkpoints": ck, "rollouts": ro, "dir": ck / RUN_NAME}


def test_pipeline_exits_zero_and_reports(pipeline):
    assert pipeline["rc"] == 0
    report = json.loads((pipeline["dir"] / "report.json").read_text())
    assert report["world"] == "real" and report["env"] == "CartPole-v1"
    assert report["episodes"] == 3
    assert report["seeds"] == [10_000, 10_001, 10_002]
    returns = report["returns"]
    assert len(returns) == 3
    assert all(1 <= r <= 50 for r in returns)  # env.max_steps = 50, CartPole pays 1 a step
    assert report["mean"] == pytest.approx(np.mean(returns))
    assert report["std"] == pytest.approx(np.std(returns))


def test_pipeline_run_folder(pipeline):
    assert pipeline["rc"] == 0
    run = pipeline["dir"]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert config_lib.load(run / "recipe.toml") == config_lib.load(TINY)
    pngs = sorted((run / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["prior.png", "reconstructions.png"]
    for png in pngs:
        with Image.open(png) as image:
            assert image.mode == "RGB" and image.width % 16 == 0 and image.height % 16 == 0
    assert list((run / "tb").glob("events.out.tfevents.*"))
    es, progress, _ = search_state.load(run / "cmaes.pt")
    assert progress.generation == 2 and es.countiter == 2
    episodes = sorted((pipeline["rollouts"] / RUN_NAME / "episodes").glob("ep_*.npz"))
    assert len(episodes) == 6
    assert sorted(p.name for p in (run / "latents").glob("ep_*.npz")) == [p.name for p in episodes]
    for name, kind in (("vision.pt", "vision"), ("memory.pt", "memory"), ("controller.pt", "controller")):
        assert checkpoints.load(run / name, kind)["kind"] == kind
    assert not list(run.rglob("*.tmp"))  # no leftovers of atomic writes


def test_pipeline_rerun_is_fast_and_changes_nothing(pipeline, capsys):
    assert pipeline["rc"] == 0
    run = pipeline["dir"]
    watched = [run / n for n in RUN_FILES] + sorted((run / "latents").glob("ep_*.npz"))
    watched += sorted((pipeline["rollouts"] / RUN_NAME / "episodes").glob("*"))
    pictures = {p: p.read_bytes() for p in (run / "samples").glob("*.png")}
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}
    capsys.readouterr()
    start = time.perf_counter()
    assert cli_stage("pipeline", pipeline["checkpoints"], pipeline["rollouts"]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert seconds < max(5.0, 0.5 * pipeline["seconds"]), (seconds, pipeline["seconds"])
    for p, (mtime, content) in before.items():
        assert p.read_bytes() == content, p.name
        if p.name != "recipe.toml":  # the resolved recipe is rewritten (identically) on every call
            assert p.stat().st_mtime_ns == mtime, f"{p.name} was rewritten"
    assert {p: p.read_bytes() for p in (run / "samples").glob("*.png")} == pictures  # redrawn, identically
    for stage in ("collect", "vision", "memory", "controller", "evaluate"):
        assert any(line.startswith(stage) and "skipping" in line for line in out.splitlines()), stage
    result = json.loads(out.strip().splitlines()[-1])["result"]
    assert result["mean"] == json.loads((run / "report.json").read_text())["mean"]


# ---------------------------------------------------------------- pieces of the pipeline on the stage-built run


def test_report_matches_replaying_the_controller(tiny_run):
    """The evaluator plays episodes batched and in lock-step; playing each seed alone must give the same returns."""
    run = tiny_run["dir"]
    report = json.loads((run / "report.json").read_text())
    cfg = config_lib.load(TINY)
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    saved = load_controller(run / "controller.pt", model)
    assert report["controller_generation"] == saved["generation"]
    returns = []
    for seed in report["seeds"]:
        world = make_world(cfg.env)
        controller = Controller.from_flat(saved["params"].numpy(), model.controller_input, world.action_space)
        ((total, steps),) = play([world], model, controller, [seed])
        world.close()
        assert total == steps  # CartPole pays 1 per step
        returns.append(total)
    assert returns == report["returns"]


def test_sample_writes_grids(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    assert cli_stage("sample", ck, ro, "-n", "4") == 0
    sizes = {}
    for name in ("reconstructions.png", "prior.png"):
        with Image.open(run / "samples" / name) as image:
            sizes[name] = (image.height, image.width)
            pixels = np.asarray(image)
        assert pixels.std() > 0
    # 4 frames: rows original/recon/original/recon of 2 frames each; the prior in 2 rows of 2
    assert sizes == {"reconstructions.png": (4 * 16, 2 * 16), "prior.png": (2 * 16, 2 * 16)}


def test_sample_with_more_frames_than_episodes(copy_run):
    """The tiny run has 6 episodes; `sample` asks for 16 frames by default (one per episode)."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    assert cli_stage("sample", ck, ro) == 0
    assert (run / "samples" / "reconstructions.png").is_file()
    with Image.open(run / "samples" / "reconstructions.png") as image:
        assert image.height == 4 * 16  # 6 frames: 3 originals + 3 reconstructions, twice


def test_process_pools_give_the_same_results(copy_run):
    """controller.workers=2 and evaluate.workers=2 (spawned pools) reproduce the single-process run."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    es_single, progress_single, _ = search_state.load(run / "cmaes.pt")
    report_single = json.loads((run / "report.json").read_text())
    for name in ("cmaes.pt", "controller.pt", "report.json"):
        (run / name).unlink()
    # a deadlocked pool would stall the whole suite: dump the stacks and stop instead (normally ~10 s)
    faulthandler.dump_traceback_later(240, exit=True)
    try:
        assert cli_stage("train-controller", ck, ro, "--set", "controller.workers=2") == 0
        assert cli_stage("evaluate", ck, ro, "--set", "evaluate.workers=2") == 0
    finally:
        faulthandler.cancel_dump_traceback_later()
    es_pool, progress_pool, _ = search_state.load(run / "cmaes.pt")
    np.testing.assert_array_equal(es_pool.mean, es_single.mean)
    assert progress_pool.best_score == progress_single.best_score
    report_pool = json.loads((run / "report.json").read_text())
    assert report_pool["returns"] == report_single["returns"]


def test_image_grid_pads_a_short_row_with_black():
    from worldmodels.stages.vision import image_grid, two_rows

    frames = torch.rand(5, 3, 4, 4) * 0.5 + 0.5  # never black
    picture = image_grid(two_rows(frames))  # rows of 3 and 2 frames
    assert picture.shape == (8, 12, 3)
    assert (picture[4:, 8:] == 0).all() and (picture[:4, 8:] > 0).all()
