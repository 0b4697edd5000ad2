"""controller.random_actions: a real-world search perturbs its candidates' episodes with random actions, drawn
from each episode's seed, in every backend; collection and evaluation never do."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from helpers import DISCRETE, TINY, cli_stage, one_error_line

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.play.backends import real_evaluator
from worldmodels.play.evaluators import open_world
from worldmodels.play.loops import play
from worldmodels.runs.checkpoints import Run, load_controller
from worldmodels.worlds.loop import RandomActions
from worldmodels.worlds.real import make_world


def test_random_actions_replace_c_s_with_draws_of_the_episode_seed():
    """The draws are default_rng([seed, 7])'s: a uniform, then a uniform action where it fell below p."""
    space, p, steps = gym.spaces.Discrete(3), 0.3, 3000
    perturb = RandomActions(p, space)
    perturb.start(0, 41)
    perturbed = [perturb.apply([0], [2])[0] for _ in range(steps)]
    rng, by_hand, hits = np.random.default_rng([41, 7]), [], 0
    for _ in range(steps):
        hit = rng.random() < p
        hits += hit
        by_hand.append(int(rng.integers(3)) if hit else 2)
    assert perturbed == by_hand
    assert hits / steps == pytest.approx(p, abs=0.03)
    assert {0, 1} <= set(perturbed)  # the other actions appear, in about p * 2/3 of the steps
    assert sum(a != 2 for a in perturbed) / steps == pytest.approx(p * 2 / 3, abs=0.03)
    box = RandomActions(1.0, gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
    box.start(0, 5)
    sample = box.apply([0, -1], [np.zeros(2, np.float32), "idle"])
    assert sample[1] == "idle" and sample[0].dtype == np.float32 and np.abs(sample[0]).max() <= 1
    assert RandomActions(0.0, space).apply([0], [2]) == [2]  # off: nothing drawn, nothing changed


@pytest.mark.parametrize("backend", ["pool", "vector"])
def test_the_search_world_perturbs_its_episodes_and_evaluation_does_not(tiny_run, backend):
    seeds = [3, 11, 12]
    cfg = config_lib.load(TINY, [f'controller.backend="{backend}"', "controller.random_actions=0.5"])
    run = Run(tiny_run["checkpoints"], cfg)
    model = WorldModel.load(run.vision, run.memory)
    flat = load_controller(run.controller, model)["params"].numpy()
    with open_world(cfg, run).open() as searched:
        perturbed = searched.returns(flat[None], seeds)[0]
    with real_evaluator(cfg, run.vision, run.memory, 2) as judged:
        quiet = judged.returns(flat[None], seeds)[0]
    worlds = [make_world(cfg.env, cfg.controller.max_steps) for _ in seeds]
    controller = Controller.from_flat(np.repeat(flat[None], len(seeds), 0), model.controller_input, DISCRETE)
    np.testing.assert_array_equal(perturbed, [r for r, _ in play(worlds, model, controller, seeds, random_actions=0.5)])
    np.testing.assert_array_equal(quiet, [r for r, _ in play(worlds, model, controller, seeds)])
    assert list(perturbed) != list(quiet)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["controller.random_actions=1.0"], "must be in \\[0, 1\\)"),
        (["controller.random_actions=-0.1"], "must not be negative"),
        (['controller.world="dream"', "controller.random_actions=0.1"], "real world only"),
    ],
)
def test_bad_random_actions_are_one_line(overrides, words):
    with pytest.raises(WorldModelsError, match=words):
        config_lib.load(TINY, overrides)


def test_a_saved_search_resumes_only_under_its_own_random_actions(copy_run, capsys):
    """The tiny run's search began before the setting existed (0): another rate is another objective."""
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    more = ["--set", "controller.generations=3"]
    assert cli_stage("train-controller", ck, ro, "--set", "controller.random_actions=0.1", *more) != 0
    assert "controller.random_actions=0.0" in one_error_line(capsys, "train-controller")
    assert cli_stage("train-controller", ck, ro, "--set", "controller.random_actions=0", *more) == 0
