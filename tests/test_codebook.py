"""The codebook world of seed 000, one test per rule, and multi-discrete actions for C and M."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from worldmodels.controller.linear import Controller, memory_actions, to_action
from worldmodels.core.actions import action_dim, encode_actions
from worldmodels.worlds.codebook import ENV_ID, CodebookEnv, flat_world

# 4 codes of width 2; with 2 slots the latent is 2 of these rows
CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
TERMINATE = 4


def total(architecture) -> float:
    """Toy surrogate: the sum of the decoded latent."""
    return float(np.sum(architecture))


def nonzeros(architecture) -> float:
    """Toy size: how many entries of the decoded latent are non-zero."""
    return float(np.count_nonzero(architecture))


def make(**overrides) -> CodebookEnv:
    kwargs = dict(
        embed_dim=2,
        num_embeddings=4,
        surrogate=total,
        decoder=lambda latent: latent,
        max_allowed_actions=10,
        codebook=CODEBOOK,
        num_previous_actions=3,
        num_slots=2,
    )
    return CodebookEnv(**(kwargs | overrides))


def test_terminate_code_ends_with_zero_reward_and_same_latent():
    env = make()
    obs, _ = env.reset(options={"codes": [3, 1]})
    after, reward, terminated, truncated, info = env.step(np.array([TERMINATE, 1]))
    assert (reward, terminated, truncated) == (0.0, True, False)
    np.testing.assert_array_equal(after["latent"], obs["latent"])
    np.testing.assert_array_equal(after["history"], obs["history"])  # terminate is not a write
    assert info["score"] == 7.0  # 3 + 3 + 1 + 0: the score of the unchanged state


def test_write_puts_exactly_the_codebook_row_into_the_slot():
    env = make()
    env.reset(options={"codes": [3, 1]})
    obs, *_ = env.step(np.array([2, 0]))
    np.testing.assert_array_equal(obs["latent"], [[0.0, 2.0], [1.0, 0.0]])  # slot 0 <- row 2, slot 1 untouched
    np.testing.assert_array_equal(env.codes, [2, 1])
    np.testing.assert_array_equal(env.codebook, CODEBOOK)  # writing into the latent never edits the codebook


def test_history_keeps_last_actions_most_recent_last():
    env = make(num_previous_actions=3)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["history"], -np.ones((3, 2)))
    obs, *_ = env.step([1, 0])
    np.testing.assert_array_equal(obs["history"], [[-1, -1], [-1, -1], [1, 0]])
    for action in ([2, 1], [3, 0], [0, 1], [2, 0]):
        obs, *_ = env.step(action)
    np.testing.assert_array_equal(obs["history"], [[3, 0], [0, 1], [2, 0]])
    assert obs["history"].dtype == np.int64


def test_no_history():
    env = make(num_previous_actions=0)
    obs, _ = env.reset(seed=0)
    assert obs["history"].shape == (0, 2)
    obs, *_ = env.step([1, 0])
    assert obs["history"].shape == (0, 2) and env.observation_space.contains(obs)


def test_truncated_exactly_on_the_nth_write():
    env = make(max_allowed_actions=3)
    env.reset(seed=0)
    flags = [env.step([1, 0])[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]  # (terminated, truncated)
    env.reset(seed=0)  # the budget starts again
    assert env.step([1, 0])[3] is False


def test_reward_is_score_delta_minus_size_penalty_delta():
    env = make(size=nonzeros, size_penalty=0.5)
    _, info = env.reset(options={"codes": [0, 0]})
    assert (info["score"], info["size"], info["objective"]) == (0.0, 0.0, 0.0)
    # [[0,0],[3,3]]: score 6, size 2 -> f = 6 - 0.5 * 2 = 5
    _, reward, _, _, info = env.step([3, 1])
    assert (reward, info["score"], info["size"], info["objective"]) == (5.0, 6.0, 2.0, 5.0)
    # [[0,2],[3,3]]: score 8, size 3 -> f = 6.5, reward 1.5 = (8 - 6) - 0.5 * (3 - 2)
    _, reward, _, _, info = env.step([2, 0])
    assert (reward, info["objective"]) == (1.5, 6.5)
    np.testing.assert_array_equal(info["architecture"], [[0.0, 2.0], [3.0, 3.0]])


def test_return_telescopes_to_final_minus_initial_objective():
    env = make(size=nonzeros, size_penalty=0.25)
    _, info = env.reset(seed=3)
    initial = info["objective"]
    rewards = [env.step(action)[1] for action in ([3, 1], [2, 0], [1, 1], [0, 0], [3, 0])]
    *_, info = env.step([TERMINATE, 0])
    assert sum(rewards) == pytest.approx(info["objective"] - initial)


def test_reset_draws_codebook_rows_and_clears_history():
    env = make(embed_dim=2, num_slots=3, num_previous_actions=2)
    latents = {}
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs["latent"], CODEBOOK[env.codes])  # every slot is a codebook row
        latents[seed] = obs["latent"]
        env.step([1, 0])
    obs, _ = env.reset(seed=4)
    np.testing.assert_array_equal(obs["history"], -np.ones((2, 2)))
    np.testing.assert_array_equal(obs["latent"], latents[4])  # same seed, same latent
    assert len({lat.tobytes() for lat in latents.values()}) > 1  # different seeds, different latents


def test_reset_from_given_codes():
    env = make()
    obs, _ = env.reset(options={"codes": [3, 2]})
    np.testing.assert_array_equal(obs["latent"], [[3.0, 3.0], [0.0, 2.0]])
    np.testing.assert_array_equal(env.codes, [3, 2])
    with pytest.raises(ValueError, match="out of range 0..3"):
        env.reset(options={"codes": [4, 0]})
    with pytest.raises(ValueError, match="2 integers"):
        env.reset(options={"codes": [1]})


@pytest.mark.parametrize("num_previous_actions", [0, 3])
def test_env_checker_passes(num_previous_actions):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(
            make(num_previous_actions=num_previous_actions, size=nonzeros, size_penalty=0.1), skip_render_check=True
        )
    # the only complaint allowed: the latent's Box is unbounded (-inf, inf), as the spec asks
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_gym_make():
    env = gym.make(
        ENV_ID,
        embed_dim=2,
        num_embeddings=4,
        surrogate=total,
        decoder=lambda latent: latent,
        max_allowed_actions=2,
        codebook=CODEBOOK,
        num_previous_actions=1,
        num_slots=2,
    )
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs["latent"].shape == (2, 2)


@pytest.mark.parametrize(
    "action, message",
    [
        ([5, 0], "code 5 out of range 0..4"),
        ([-1, 0], "code -1 out of range"),
        ([0, 2], "slot 2 out of range 0..1"),
        ([0, -1], "slot -1 out of range"),
        ([0], "two integers"),
        ([[0, 1]], "two integers"),
        ([0.5, 1.0], "two integers"),
    ],
)
def test_invalid_actions_raise(action, message):
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(codebook=np.zeros((4, 3))), r"shape \(4, 3\), expected .* \(4, 2\)"),
        (dict(num_embeddings=5), r"shape \(4, 2\), expected .* \(5, 2\)"),
        (dict(codebook=np.full((4, 2), np.nan)), "non-finite"),
        (dict(num_slots=0), "num_slots must be an integer >= 1"),
        (dict(num_previous_actions=-1), "num_previous_actions must be an integer >= 0"),
        (dict(size_penalty=0.5), "needs a `size` function"),
    ],
)
def test_bad_construction_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_queries_count_surrogate_calls():
    env = make()
    env.reset(seed=0)
    assert env.queries == 1  # f of the start state
    env.step([1, 0])
    env.step([2, 1])
    assert env.queries == 3  # one per write: the "before" is cached
    env.step([TERMINATE, 0])
    assert env.queries == 3  # terminating asks nothing
    env.reset(seed=1)
    assert env.queries == 4  # over the env's life, not per episode


def test_flat_world_is_latent_then_history_float32():
    env = make()
    flat = flat_world(env)
    obs, _ = flat.reset(options={"codes": [3, 1]})
    obs, *_ = flat.step([2, 1])
    assert obs.dtype == np.float32 and flat.observation_space.contains(obs)
    np.testing.assert_array_equal(obs, [3, 3, 0, 2, -1, -1, -1, -1, 2, 1])


SPACE = gym.spaces.MultiDiscrete([3, 2], start=[1, -1])


def test_multidiscrete_action_dim_and_one_hot():
    assert action_dim(SPACE) == 5
    assert action_dim(make().action_space) == 4 + 1 + 2
    np.testing.assert_array_equal(
        encode_actions(np.array([[3, -1], [1, 0]]), SPACE), [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]
    )


def test_multidiscrete_to_action_is_argmax_per_group():
    action = to_action(np.array([0.1, 0.9, -0.3, 0.2, -0.5]), SPACE)
    np.testing.assert_array_equal(action, [2, -1])
    assert action.dtype == SPACE.dtype and action.shape == (2,)
    np.testing.assert_array_equal(to_action(np.array([0.0, -1.0, 0.5, -0.2, 0.7]), SPACE), [3, 0])


def test_memory_actions_match_encoded_to_action():
    y = torch.tanh(torch.randn(32, 5, generator=torch.Generator().manual_seed(0)))
    expected = encode_actions(np.stack([to_action(row, SPACE) for row in y.numpy()]), SPACE)
    np.testing.assert_array_equal(memory_actions(y, SPACE).numpy(), expected)


def test_controller_acts_in_the_codebook_world():
    env = make()
    c = Controller.from_flat(np.random.default_rng(0).standard_normal((4, 7 * (3 + 1))), 3, env.action_space)
    actions = c.act(torch.randn(4, 2), torch.randn(4, 1))
    assert all(env.action_space.contains(a) for a in actions)


def test_step_before_reset_is_a_clear_error():
    env = make()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 0]))
