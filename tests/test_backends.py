"""Real-world evaluation backends: the process pool, Ray actors and one batched vector env score alike."""

from __future__ import annotations

import json
import os

import cma
import numpy as np
import pytest
from helpers import RUN_NAME, TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.episodes import load_episode
from worldmodels.play.backends import RayPool, check_reachable, real_evaluator, weights
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.evolution import generation_seeds
from worldmodels.worlds.real import action_space


def one_generation(run: Run, population: int = 6) -> tuple[np.ndarray, list[int]]:
    """The first CMA-ES generation's candidates and seeds, as train-controller asks them."""
    model = WorldModel.load(run.vision, run.memory)
    dim = Controller(model.controller_input, action_space(config_lib.load(TINY).env)).num_params
    es = cma.CMAEvolutionStrategy(np.zeros(dim), 0.5, {"popsize": population, "seed": 1, "verbose": -9})
    return np.asarray(es.ask()), generation_seeds(0, 0, 2)


def scores(run: Run, backend: str, workers: int, candidates: np.ndarray, seeds: list[int]) -> tuple[np.ndarray, int]:
    cfg = config_lib.load(TINY, [f'controller.backend="{backend}"'])
    with real_evaluator(cfg, run.vision, run.memory, workers) as evaluator:
        returns = evaluator.returns(candidates, seeds)
        return returns, evaluator.steps


@pytest.fixture(scope="module")
def generation(tiny_run):
    run = Run(tiny_run["checkpoints"], config_lib.load(TINY))
    candidates, seeds = one_generation(run)
    returns, steps = scores(run, "pool", 2, candidates, seeds)
    assert len(set(returns.ravel())) > 2  # the candidates differ, so a shuffled result would show
    return run, candidates, seeds, returns, steps


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("backend, workers", [("ray", 2), ("vector", 3)])
def test_one_generation_scores_as_the_process_pool(generation, request, backend, workers):
    """Ray actors, and one vector env whose 3 copies are reset with the next episode's seed as they finish."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    run, candidates, seeds, expected, steps = generation
    returns, backend_steps = scores(run, backend, workers, candidates, seeds)
    np.testing.assert_array_equal(returns, expected)
    assert backend_steps == steps


def test_ray_replaces_a_dead_worker_and_reruns_its_episodes(generation, local_ray):
    run, candidates, seeds, expected, _ = generation
    cfg = config_lib.load(TINY, ['controller.backend="ray"'])
    with real_evaluator(cfg, run.vision, run.memory, 2) as evaluator:
        local_ray.kill(evaluator.runner.actors[-1], no_restart=True)  # gone for good, as with a lost node
        returns = evaluator.returns(candidates, seeds)
        assert evaluator.runner.replaced == 1 and len(evaluator.runner.actors) == 2
        np.testing.assert_array_equal(returns, expected)
        np.testing.assert_array_equal(evaluator.returns(candidates, seeds), expected)  # the new actor keeps working


@pytest.mark.parametrize("backend", ["vector", "ray"])
def test_collected_episodes_do_not_depend_on_the_backend(generation, tmp_path, request, backend):
    """Exploration noise, a controller per episode and the recorded episodes; a Ray actor's episodes are saved
    here, by the driver."""
    if backend == "ray":
        request.getfixturevalue("local_ray")
    run, candidates, _, _, _ = generation
    seeds = [3, 4, 5]
    episodes = {}
    for kind in ("pool", backend):
        cfg = config_lib.load(TINY, [f'controller.backend="{kind}"'])
        paths = [tmp_path / kind / f"ep_{i}.npz" for i in range(len(seeds))]
        with real_evaluator(cfg, run.vision, run.memory, 2) as evaluator:
            results = evaluator.collect(candidates[: len(seeds)], seeds, 0.5, paths)  # a controller per episode
        episodes[kind] = [load_episode(p) for p in paths]
        assert [steps for _, steps in results] == [len(e["action"]) for e in episodes[kind]]
    for pool, other in zip(episodes["pool"], episodes[backend]):
        for key in pool:
            np.testing.assert_array_equal(pool[key], other[key], err_msg=key)


def test_evaluate_with_the_vector_backend_reports_as_the_pool(copy_run):
    report = json.loads((copy_run["dir"] / "report.json").read_text())
    assert cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"], "--backend", "vector") == 0
    again = json.loads((copy_run["dir"] / "report.json").read_text())
    assert again["returns"] == report["returns"] and again["seeds"] == report["seeds"]


def test_unknown_backend_is_one_line(tmp_path, capsys):
    assert cli_stage("evaluate", tmp_path, tmp_path, "--set", 'controller.backend="slurm"') == 2
    assert capsys.readouterr().err.strip() == (
        "worldmodels evaluate: error: controller.backend must be 'pool', 'vector' or 'ray', got 'slurm'"
    )
    assert RUN_NAME not in {p.name for p in tmp_path.iterdir()}


def test_ray_gives_up_when_every_worker_dies_on_a_job(generation, local_ray):
    """Workers that cannot run (each dies on the job) end the run with one message, not an endless retry."""
    run = generation[0]
    cfg = config_lib.load(TINY)
    saved = (weights(checkpoints.load(run.vision, "vision")), weights(checkpoints.load(run.memory, "memory")))
    pool = RayPool(1, (cfg.env, *saved, 0))
    try:
        with pytest.raises(WorldModelsError, match=r"ray: 4 workers died on the same episodes"):
            list(pool.imap(lambda worker, job: os._exit(job), [1]))  # the job kills its worker, every time
        assert pool.replaced == RayPool.MAX_DEATHS
    finally:
        pool.close()


def test_an_unreachable_ray_head_is_one_line_within_seconds():
    """Ray itself retries an unreachable head for minutes; the address is checked first."""
    with pytest.raises(WorldModelsError, match=r"^cannot reach a Ray cluster at '127.0.0.1:1': .*refused"):
        check_reachable("127.0.0.1:1")
    with pytest.raises(
        WorldModelsError, match=r"^controller.address must be 'auto' or HOST:PORT of a Ray head node, got 'head'$"
    ):
        check_reachable("head")
