"""controller.normalize: CMA-ES searches C's weights in units of each input's spread over the run's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DISCRETE, SPACES, TINY, cli_stage, one_error_line

from worldmodels import config
from worldmodels.agent import WorldModel
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller, InputScale
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.latents import load_latents
from worldmodels.play.evaluators import SearchWorld
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.evolution import Search


@SPACES
def test_scaled_controller_reads_standardised_inputs(space):
    rng = np.random.default_rng(0)
    inputs = rng.normal(3.0, [0.05, 0.5, 2.0, 1.0, 0.2], size=(500, 5))
    scale = InputScale.of(inputs)
    out = Controller(5, space).out
    points = rng.normal(size=(4, out * 6))
    controllers = Controller.from_flat(scale.to_controller(points), 5, space)
    # the point's own weights applied to the standardised inputs, by hand
    w, b = points[:, : out * 5].reshape(4, out, 5), points[:, out * 5 :]
    x = inputs[:4]
    expected = np.einsum("pad,pd->pa", w, (x - inputs.mean(0)) / inputs.std(0)) + b
    z, h = torch.tensor(x[:, :2], dtype=torch.float32), torch.tensor(x[:, 2:], dtype=torch.float32)
    np.testing.assert_allclose(controllers.logits(z, h).numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scale.to_search(scale.to_controller(points)), points, atol=1e-10)


def test_a_constant_input_keeps_a_finite_weight():
    inputs = np.ones((10, 3))
    scale = InputScale.of(inputs)
    assert np.all(scale.std == 1e-2)
    assert np.all(np.isfinite(scale.to_controller(np.ones((1, 4)))))


def test_inputs_are_what_the_controller_saw_step_by_step(tiny_run):
    run = Run(tiny_run["checkpoints"], config.load(TINY))
    model = WorldModel.load(run.vision, run.memory)
    episodes = load_latents(run)
    rows = model.controller_inputs(episodes)
    assert rows.shape == (sum(len(e.action) for e in episodes), model.controller_input)
    # the acting loop's own path: M stepped once per real step, h read before each action
    first = episodes[0]
    state = model.memory.initial_state(1)
    with torch.no_grad():
        for t in range(len(first.action)):
            z = torch.from_numpy(first.mu[t : t + 1]).float()
            np.testing.assert_allclose(rows[t, : z.shape[1]], z[0].numpy())
            np.testing.assert_allclose(rows[t, z.shape[1] :], model.memory.hidden(state)[0].numpy(), atol=1e-5)
            state = model.memory.step(z, torch.from_numpy(first.action[t : t + 1]).float(), state)[1]


def test_a_normalised_search_keeps_its_scale_and_controllers_in_their_own_units(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], Run(copy_run["checkpoints"], config.load(TINY))
    for f in ("cmaes.pt", "controller.pt", "report.json"):
        (run.dir / f).unlink()
    assert cli_stage("train-controller", ck, ro, "--set", "controller.normalize=true") == 0
    es, progress, _ = search_state.load(run.cmaes)
    inputs = WorldModel.load(run.vision, run.memory).controller_inputs(load_latents(run))
    np.testing.assert_allclose(progress.input_scale["mean"], inputs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(progress.input_scale["std"], np.maximum(inputs.std(0), 1e-2), rtol=1e-6)
    # the history and controller.pt hold controllers, not CMA-ES's points: the last mean maps to the kept one
    scale = InputScale(progress.input_scale["mean"], progress.input_scale["std"])
    last_mean = [h for h in progress.history if h["kind"] == "mean"][-1]["params"]
    np.testing.assert_allclose(last_mean, scale.to_controller(es.mean)[0])
    assert not np.allclose(last_mean, es.mean)


def test_switching_normalize_on_a_saved_search_is_refused(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    code = cli_stage(
        "train-controller", ck, ro, "--set", "controller.normalize=true", "--set", "controller.generations=3"
    )
    assert code != 0
    assert "controller.normalize=False" in one_error_line(capsys, "train-controller")


def test_normalize_in_the_dream_through_rounds(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], Run(copy_run["checkpoints"], config.load(TINY))
    for f in ("cmaes.pt", "controller.pt", "report.json"):
        (run.dir / f).unlink()
    extra = ["--set", "controller.normalize=true", "--set", 'controller.world="dream"', "--set", "rounds.count=1"]
    extra += ["--set", "rounds.episodes=2", "--set", "rounds.generations=1", "--set", "rounds.sigma=0.05"]
    assert cli_stage("pipeline", ck, ro, *extra) == 0
    _, progress, _ = search_state.load(run.cmaes)
    assert progress.round == 1 and progress.input_scale is not None
    assert len(progress.input_scale["mean"]) == WorldModel.load(run.vision, run.memory).controller_input


def test_a_world_that_cannot_say_what_c_sees_refuses_normalize(tmp_path):
    cfg = config.load(TINY, [("controller.normalize", True)])
    world = SearchWorld(4 + 8, DISCRETE, open=lambda: None)  # no `inputs`: a world registered by someone else
    with pytest.raises(WorldModelsError, match="controller.normalize needs a world"):
        Search(cfg, Run(tmp_path, cfg), world, round=0)
