"""controller.noise: C as a stochastic policy, with the same noise on its outputs in the dream it is searched in,
in the real episodes it collects and in those it is evaluated on."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import BOX, DISCRETE, SPACES, TINY, fixed_start, population, small_memory

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.config import DreamConfig
from worldmodels.controller.linear import Controller, memory_actions
from worldmodels.core import noise
from worldmodels.core.actions import action_dim
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.episodes import load_episode
from worldmodels.play.backends import real_evaluator
from worldmodels.play.loops import play
from worldmodels.runs.checkpoints import Run, load_controller
from worldmodels.stages import rounds
from worldmodels.worlds.dream import Dream, play_dream
from worldmodels.worlds.real import make_world

STEPS = 6


def dream_for(space: gym.Space, seed: int = 1) -> Dream:
    memory = small_memory(seed=seed, action_dim=action_dim(space))
    return Dream(memory, DreamConfig(max_steps=STEPS, done="never"), fixed_start(torch.tensor([0.5, -1.0, 2.0])))


def noisy_return_by_hand(space: gym.Space, controller: Controller, seed: int, std: float) -> float:
    """One dream episode stepped here: M's action input is memory_actions(tanh(W [z, h] + b) + std * N), N the
    Box-Muller normals of the episode's ACTION_A and ACTION_B streams at each step."""
    dream = dream_for(space)
    dream.reset(torch.tensor([seed]))
    total = 0.0
    for t in range(STEPS):
        u = noise.uniforms(torch.tensor([seed]), torch.tensor([t]), (noise.ACTION_A, noise.ACTION_B), controller.out)
        eps = noise.box_muller(u[:, 0], u[:, 1])
        y = torch.tanh(controller.logits(dream.z, dream.state[0][0])) + std * eps
        reward, _, _ = dream.step(memory_actions(y, space))
        total += float(reward[0])
    return total


@SPACES
def test_dream_noise_is_tanh_plus_the_episode_hash_and_does_not_depend_on_the_batch(space):
    controller, _ = population(space, 5, seed=3)
    seeds = [7, 0, 2**31 - 5, 42, 7]
    quiet, _ = play_dream(dream_for(space), controller, seeds)
    noisy, steps = play_dream(dream_for(space), controller, seeds, action_noise=0.8)
    assert (steps == STEPS).all()
    assert not np.allclose(noisy, quiet)  # the noise reached M's actions
    np.testing.assert_allclose(play_dream(dream_for(space), controller, seeds, action_noise=0.8)[0], noisy)
    np.testing.assert_allclose(
        play_dream(dream_for(space), controller, seeds, batch=2, action_noise=0.8)[0], noisy, atol=1e-5
    )
    for k, seed in enumerate(seeds):
        by_hand = noisy_return_by_hand(space, controller.select([k]), seed, 0.8)
        assert noisy[k] == pytest.approx(by_hand, abs=1e-4)


def test_rows_with_the_same_seed_share_their_noise():
    """Common random numbers: every candidate of a generation meets the same noise on the same seed."""
    controller, _ = population(BOX, 1, seed=3)
    twice = controller.select([0, 0])
    returns, _ = play_dream(dream_for(BOX), twice, [5, 5], action_noise=0.5)
    # equal up to the batched matmul's rounding, which some CPUs' kernels give each row differently
    assert returns[0] == pytest.approx(returns[1], abs=1e-5)
    other, _ = play_dream(dream_for(BOX), twice, [5, 6], action_noise=0.5)
    assert abs(other[0] - other[1]) > 1e-3  # another seed is other noise


# ---------------------------------------------------------------- the real world


@pytest.mark.parametrize("backend, workers", [("pool", 2), ("vector", 2)])
def test_real_evaluator_plays_with_the_recipe_noise(tiny_run, backend, workers):
    """Every backend's episodes are `play` with exploration = controller.noise, seeded by the episode's seed."""
    seeds = [3, 11, 12]
    cfg = config_lib.load(TINY, [f'controller.backend="{backend}"', "controller.noise=2.0"])
    run = Run(tiny_run["checkpoints"], cfg)
    model = WorldModel.load(run.vision, run.memory)
    flat = load_controller(run.controller, model)["params"].numpy()
    with real_evaluator(cfg, run.vision, run.memory, workers) as evaluator:
        returns = evaluator.returns(flat[None], seeds)[0]
    worlds = [make_world(cfg.env, cfg.controller.max_steps) for _ in seeds]
    controller = Controller.from_flat(np.repeat(flat[None], len(seeds), 0), model.controller_input, DISCRETE)
    by_hand = [ret for ret, _ in play(worlds, model, controller, seeds, exploration=2.0)]
    quiet = [ret for ret, _ in play(worlds, model, controller, seeds)]
    np.testing.assert_array_equal(returns, by_hand)
    assert by_hand != quiet  # the noise changed some episodes


def test_rounds_collect_with_the_policy_noise_and_the_exploration_on_top(copy_run, copy_rollouts, monkeypatch):
    """Independent Gaussians add up: noise 0.9 and exploration 1.2 collect as one noise of std 1.5."""
    cfg = config_lib.load(
        TINY, ["controller.noise=0.9", "rounds.exploration=1.2", "rounds.episodes=3", 'controller.world="dream"']
    )
    run = Run(copy_run["checkpoints"], cfg)
    asked: list[float] = []
    opened = rounds.real_evaluator

    def listened(*args, **kwargs):  # the real evaluator, its collect's noise noted on the way in
        evaluator = opened(*args, **kwargs)
        collect = evaluator.collect
        evaluator.collect = lambda flat, seeds, std, paths: asked.append(std) or collect(flat, seeds, std, paths)
        return evaluator

    monkeypatch.setattr(rounds, "real_evaluator", listened)
    assert rounds.collect_round(cfg, run, copy_rollouts, 1)["episodes"] == 3
    assert asked == [pytest.approx(1.5)]
    model = WorldModel.load(run.vision, run.memory)
    flat = load_controller(run.controller, model)["params"].numpy()
    store = copy_rollouts / cfg.name / "episodes"
    collected = [load_episode(store / rounds.round_episode_name(1, k)) for k in range(3)]
    seeds = [int(e["seed"]) for e in collected]

    record: list[dict] = []
    controller = Controller.from_flat(np.repeat(flat[None], 3, 0), model.controller_input, DISCRETE)
    play([make_world(cfg.env) for _ in seeds], model, controller, seeds, exploration=1.5, record=record)
    for episode, by_hand in zip(collected, record):
        np.testing.assert_array_equal(episode["action"], by_hand["action"])


def test_rounds_collect_each_episode_with_its_own_perturbed_controller(copy_run, copy_rollouts):
    """rounds.exploration_params: episode k drives the kept controller plus std x N(0, I) drawn after the round's
    seeds, the same controller when a lost episode is collected again."""
    cfg = config_lib.load(
        TINY,
        ["rounds.exploration_params=0.5", "rounds.exploration=0", "rounds.episodes=3", 'controller.world="dream"'],
    )
    run = Run(copy_run["checkpoints"], cfg)
    assert rounds.collect_round(cfg, run, copy_rollouts, 1)["episodes"] == 3
    model = WorldModel.load(run.vision, run.memory)
    flat = load_controller(run.controller, model)["params"].numpy()
    rng = np.random.default_rng([cfg.collect.seed, 7919, 1])
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=3)]
    flats = flat + 0.5 * rng.standard_normal((3, len(flat)))
    store = copy_rollouts / cfg.name / "episodes"
    collected = [load_episode(store / rounds.round_episode_name(1, k)) for k in range(3)]
    assert [int(e["seed"]) for e in collected] == seeds

    def by_hand(params: np.ndarray) -> list[dict]:
        record: list[dict] = []
        controller = Controller.from_flat(params, model.controller_input, DISCRETE)
        play([make_world(cfg.env) for _ in seeds], model, controller, seeds, record=record)
        return record

    for episode, expected in zip(collected, by_hand(flats)):
        np.testing.assert_array_equal(episode["action"], expected["action"])
    kept = by_hand(np.repeat(flat[None], 3, 0))
    assert any(not np.array_equal(e["action"], k["action"]) for e, k in zip(collected, kept))

    (store / rounds.round_episode_name(1, 1)).unlink()  # lost: the resumed round plays it again, the same way
    rounds.collect_round(cfg, run, copy_rollouts, 1)
    again = load_episode(store / rounds.round_episode_name(1, 1))
    np.testing.assert_array_equal(again["action"], collected[1]["action"])


@pytest.mark.parametrize(
    "override, words",
    [("controller.noise=-0.1", "controller.noise must not be negative"), ("controller.noise=nan", "controller.noise")],
)
def test_bad_noise_is_one_line(override, words):
    with pytest.raises(WorldModelsError, match=words):
        config_lib.load(TINY, [override])


def test_the_codebook_world_takes_no_noise():
    with pytest.raises(WorldModelsError, match="codebook world takes none"):
        config_lib.load(TINY, ['controller.world="codebook"', 'vision.model="vqvae"', "controller.noise=0.1"])
