"""memory.cell_to_controller: C reads [z, h, c], M's cell state besides h (the reference code's MODE_ZCH)."""

from __future__ import annotations

import numpy as np
import torch
from helpers import TINY, H, Z, cli_stage, copy_tree, one_error_line

from worldmodels import config
from worldmodels.agent import WorldModel
from worldmodels.config import MemoryConfig
from worldmodels.controller import search_state
from worldmodels.data.latents import load_latents
from worldmodels.memory import MDNRNN
from worldmodels.runs.checkpoints import Run, load_controller
from worldmodels.worlds.dream import Dream, observation_space


def cell_memory(seed: int = 0) -> MDNRNN:
    torch.manual_seed(seed)
    return MDNRNN(MemoryConfig(hidden_size=H, num_gaussians=3, cell_to_controller=True), Z, 2).eval()


def test_c_reads_h_then_c_and_the_spaces_say_so():
    memory = cell_memory()
    state = (torch.randn(1, 3, H), torch.randn(1, 3, H))
    torch.testing.assert_close(memory.readout(state), torch.cat([state[0][0], state[1][0]], dim=-1))
    assert memory.readout_size == 2 * H
    space = observation_space(Z, memory)
    assert space.shape == (Z + 2 * H,)
    assert np.all(space.high[Z : Z + H] == 1) and np.all(np.isinf(space.high[Z + H :]))  # h is squashed, c is not
    dream = Dream(memory, config.DreamConfig(max_steps=5), torch.zeros(1, 2, Z))
    dream.reset(torch.arange(2))
    assert dream.observation().shape == (2, Z + 2 * H) == (2, dream.observation_dim)


def test_inputs_over_episodes_are_what_c_read_step_by_step(tiny_run):
    model = WorldModel.load(tiny_run["dir"] / "vision.pt", tiny_run["dir"] / "memory.pt")
    model.memory.cfg.cell_to_controller = True
    episodes = load_latents(Run(tiny_run["checkpoints"], config.load(TINY)))[:2]
    rows = model.controller_inputs(episodes)
    hidden = model.memory.cfg.hidden_size
    assert rows.shape[1] == model.controller_input == model.vision.latent_dim + 2 * hidden
    first = episodes[0]
    state = model.memory.initial_state(1)
    with torch.no_grad():
        for t in range(len(first.action)):
            z = torch.from_numpy(first.mu[t : t + 1]).float()
            h, c = state[0][0, 0].numpy(), state[1][0, 0].numpy()
            np.testing.assert_allclose(rows[t], np.concatenate([z[0].numpy(), h, c]), atol=1e-5)
            state = model.memory.step(z, torch.from_numpy(first.action[t : t + 1]).float(), state)[1]
    assert np.abs(rows[1:, -hidden:]).max() > 0  # c moves


def test_a_tiny_run_with_c_reading_the_cell(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    cell = ["--set", "memory.cell_to_controller=true"]
    # an M trained without it says so, in one line, rather than feeding C half of what the recipe asks for
    assert cli_stage("train-controller", ck, ro, *cell) != 0
    assert "memory.cell_to_controller=False" in one_error_line(capsys, "train-controller")
    for f in ("memory.pt", "cmaes.pt", "controller.pt", "report.json"):
        (run / f).unlink()
    for stage in ("train-memory", "train-controller", "evaluate"):
        assert cli_stage(stage, ck, ro, *cell, "--set", "controller.normalize=true") == 0, stage
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    hidden = model.memory.cfg.hidden_size
    assert model.controller_input == model.vision.latent_dim + 2 * hidden
    _, progress, _ = search_state.load(run / "cmaes.pt")
    assert len(progress.input_scale["mean"]) == model.controller_input
    saved = load_controller(run / "controller.pt", model)
    assert saved["config"]["input_dim"] == model.controller_input
    assert saved["params"].numel() == 2 * (model.controller_input + 1)
    # the dream world reads it too
    dream_ck = copy_tree(ck, ck.parent / "dream_ck")
    (dream_ck / run.name / "cmaes.pt").unlink()
    extra = ["--set", 'controller.world="dream"', "--set", "controller.generations=1"]
    assert cli_stage("train-controller", dream_ck, ro, *cell, *extra) == 0
