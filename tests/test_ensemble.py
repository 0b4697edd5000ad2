"""memory.ensemble and dream.disagreement: M's trained alike from other seeds, and a dream that charges for where they
disagree about the next z."""

from __future__ import annotations

import copy

import numpy as np
import torch
from helpers import BOX, cli_stage, one_error_line, population, small_memory

from worldmodels.agent import WorldModel
from worldmodels.config import DreamConfig
from worldmodels.memory import MDNRNN, mixture_mean
from worldmodels.runs import checkpoints
from worldmodels.worlds.dream import Dream, play_dream

STEPS = 6


def members() -> tuple[MDNRNN, list[MDNRNN]]:
    """A small M over BOX's 3 actions and two others drawn from other seeds."""
    return small_memory(5, action_dim=3), [small_memory(6, action_dim=3), small_memory(7, action_dim=3)]


def dreamt(dream: Dream, actions: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The z each step started from and the reward it paid, over `actions` (T, B, A)."""
    dream.reset(torch.tensor([1, 2, 3, 4]))
    zs, rewards = [], []
    for action in actions:
        zs.append(dream.z.clone())
        rewards.append(dream.step(action)[0])
    return zs, rewards


def test_the_dream_pays_its_reward_minus_the_spread_of_the_ensembles_expected_next_z():
    memory, others = members()
    actions = torch.rand(STEPS, 4, 3) * 2 - 1
    plain = Dream(memory, DreamConfig(max_steps=STEPS, done="never"))
    charged = Dream(memory, DreamConfig(max_steps=STEPS, done="never", disagreement=0.5), others=others)
    zs, rewards = dreamt(plain, actions)
    charged_zs, charged_rewards = dreamt(charged, actions)
    for z, other in zip(zs, charged_zs):
        torch.testing.assert_close(other, z, rtol=0, atol=0)  # the charge changes the reward, never the dream
    # by hand: every M fed the same dreamt z's and actions, the std over the three of their mixtures' means
    states = [m.initial_state(4) for m in (memory, *others)]
    with torch.no_grad():
        for t, action in enumerate(actions):
            means = []
            for k, m in enumerate((memory, *others)):
                prediction, states[k] = m.step(zs[t], action, states[k])
                means.append(mixture_mean(prediction))
            spread = torch.stack(means).std(0).mean(-1)
            assert (spread > 0).all()
            torch.testing.assert_close(charged_rewards[t], rewards[t] - 0.5 * spread)
    # members that agree charge nothing
    twins = Dream(memory, DreamConfig(max_steps=STEPS, done="never", disagreement=0.5), others=[copy.deepcopy(memory)])
    for reward, twin in zip(rewards, dreamt(twins, actions)[1]):
        torch.testing.assert_close(twin, reward, rtol=0, atol=0)


def test_the_other_ms_follow_their_episodes_as_rows_end_and_restart():
    """Episodes of many lengths dreamt all at once or a few at a time: the same charged returns."""
    memory, others = members()
    with torch.no_grad():
        memory.head.bias[-1] = 0.0  # P(done) around 0.1 a step
    controller, _ = population(BOX, 7, seed=2)
    seeds = [11, 3, 2**31 - 2, 0, 77, 5, 1234]
    dream = Dream(memory, DreamConfig(max_steps=12, disagreement=2.0), others=others)
    returns, steps = play_dream(dream, controller, seeds)
    assert len(set(steps.tolist())) > 2
    for batch in (1, 3):
        again, again_steps = play_dream(dream, controller, seeds, batch=batch)
        np.testing.assert_array_equal(again_steps, steps)
        np.testing.assert_allclose(again, returns, atol=1e-4)
    uncharged, _ = play_dream(Dream(memory, DreamConfig(max_steps=12)), controller, seeds)
    assert (returns < uncharged).all()


def test_train_memory_trains_the_ensemble_and_the_dream_searches_with_it(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    single = checkpoints.load(run / "memory.pt", "memory")["state_dict"]  # the copied run's M: no ensemble
    for name in ("memory.pt", "cmaes.pt", "controller.pt"):
        (run / name).unlink()
    ensemble = ["--set", "memory.ensemble=3"]
    assert cli_stage("train-memory", ck, ro, *ensemble) == 0
    saved = [checkpoints.load(run / name, "memory") for name in ("memory.pt", "memory_1.pt", "memory_2.pt")]
    assert all(s["config"] == saved[0]["config"] and s["epoch"] == 1 for s in saved)
    weights = [s["state_dict"]["head.weight"] for s in saved]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    for key, value in single.items():  # M itself is the M of a recipe without an ensemble: the others only add files
        torch.testing.assert_close(saved[0]["state_dict"][key], value, rtol=0, atol=0)
    capsys.readouterr()
    dream = [*ensemble, "--world", "dream", "--set", "dream.max_steps=20", "--set", "dream.disagreement=1.0"]
    assert cli_stage("train-controller", ck, ro, *dream) == 0
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    assert checkpoints.load_controller(run / "controller.pt", model)["generation"] == 2
    (run / "memory_2.pt").unlink()
    assert cli_stage("evaluate", ck, ro, *dream) == 2
    assert "memory_2.pt' not found; run `worldmodels train-memory` first" in one_error_line(capsys, "evaluate")


def test_a_disagreement_needs_an_ensemble(tmp_path, capsys):
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", "dream.disagreement=1.0") == 2
    line = one_error_line(capsys, "collect")
    assert "dream.disagreement needs memory.ensemble of 2 or more" in line and "memory.ensemble = 1" in line
