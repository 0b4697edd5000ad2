"""controller.pin_logits: for choices, one logit per group is held at 0 and CMA-ES searches the others."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import BOX, TINY, cli_stage, one_error_line

from worldmodels import config, search_state
from worldmodels.agent import WorldModel
from worldmodels.checkpoints import Run
from worldmodels.controller import Controller, PinnedLogits
from worldmodels.errors import WorldModelsError
from worldmodels.evaluators import SearchWorld
from worldmodels.evolution import Search

CHOICES = pytest.mark.parametrize(
    "space, free",
    [(gym.spaces.Discrete(2), [1]), (gym.spaces.Discrete(4), [1, 2, 3]), (gym.spaces.MultiDiscrete([3, 2]), [1, 2, 4])],
    ids=["discrete2", "discrete4", "multidiscrete"],
)


@CHOICES
def test_a_searched_point_is_a_controller_with_its_pinned_rows_zero(space, free):
    pin, d = PinnedLogits.of(space), 5
    assert pin.free.tolist() == free
    points = np.random.default_rng(0).normal(size=(3, len(free) * (d + 1)))
    c = Controller.from_flat(pin.to_controller(points), d, space)
    pinned = [a for a in range(c.out) if a not in free]
    assert torch.all(c.weight[:, pinned] == 0) and torch.all(c.bias[:, pinned] == 0)
    # the free rows are the point's, in order: W row-major, then b
    np.testing.assert_allclose(c.weight[:, free].numpy(), points[:, : len(free) * d].reshape(3, len(free), d), 1e-6)
    np.testing.assert_allclose(c.bias[:, free].numpy(), points[:, len(free) * d :], 1e-6)
    np.testing.assert_allclose(pin.to_search(pin.to_controller(points)), points, atol=1e-12)


@CHOICES
def test_any_controller_has_a_pinned_twin_that_acts_the_same(space, free):
    rng, d = np.random.default_rng(1), 5
    flat = rng.normal(size=(4, Controller(d, space).num_params))
    pin = PinnedLogits.of(space)
    twin = pin.to_controller(pin.to_search(flat))
    assert not np.allclose(twin, flat)
    z, h = torch.randn(4, 2), torch.randn(4, 3)
    for a, b in zip(Controller.from_flat(flat, d, space).act(z, h), Controller.from_flat(twin, d, space).act(z, h)):
        np.testing.assert_array_equal(a, b)


def test_a_pinned_search_in_the_tiny_run(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], Run(copy_run["checkpoints"], config.load(TINY))
    for f in ("cmaes.pt", "controller.pt", "report.json"):
        (run.dir / f).unlink()
    assert cli_stage("train-controller", ck, ro, "--set", "controller.pin_logits=true") == 0
    es, progress, _ = search_state.load(run.cmaes)
    inputs = WorldModel.load(run.vision, run.memory).controller_input
    assert len(es.mean) == inputs + 1  # CartPole's two logits: one row searched, not two
    last_mean = [h for h in progress.history if h["kind"] == "mean"][-1]["params"]
    np.testing.assert_allclose(last_mean, PinnedLogits.of(gym.spaces.Discrete(2)).to_controller(es.mean)[0])
    kept = Controller.from_flat(progress.best, inputs, gym.spaces.Discrete(2))
    assert torch.all(kept.weight[:, 0] == 0) and torch.all(kept.bias[:, 0] == 0)


def test_a_saved_search_of_every_logit_is_not_resumed_pinned(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    more = ["--set", "controller.generations=3"]
    assert cli_stage("train-controller", ck, ro, "--set", "controller.pin_logits=true", *more) != 0
    assert "parameters but this controller has" in one_error_line(capsys, "train-controller")


def test_pinning_is_refused_for_a_box_and_under_noise(tmp_path):
    cfg = config.load(TINY, [("controller.pin_logits", True)])
    world = SearchWorld(12, BOX, open=lambda: None, inputs=lambda: np.zeros((2, 12)))
    with pytest.raises(WorldModelsError, match="pin_logits is for choices"):
        Search(cfg, Run(tmp_path, cfg), world, round=0)
    with pytest.raises(WorldModelsError, match="pin_logits needs controller.noise = 0"):
        config.load(TINY, [("controller.pin_logits", True), ("controller.noise", 0.1)])
