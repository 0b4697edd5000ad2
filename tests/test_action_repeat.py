"""The world's action repeat (summed rewards, step counts, undrawn frames), its action bounds and its picture size."""

from __future__ import annotations

import contextlib

import gymnasium as gym
import numpy as np
import pytest

from worldmodels import config as config_lib
from worldmodels.config import CollectConfig, EnvConfig
from worldmodels.core.errors import WorldModelsError
from worldmodels.play.collect import collect_episode
from worldmodels.worlds import real
from worldmodels.worlds.real import ActionBounds, ActionRepeat, RenderSize, make_world

CARRACING = dict(id="CarRacing-v3", crop=[0.0, 0.875, 0.0, 1.0])


def test_repeat_sums_rewards_and_counts_frames_against_the_bare_world():
    bare, repeated = gym.make("CartPole-v1"), ActionRepeat(gym.make("CartPole-v1"), 3)
    bare.reset(seed=4)
    repeated.reset(seed=4)
    actions = [0, 1, 1, 0, 1, 0, 0, 1]
    for action in actions:
        expected, frames, done = 0.0, 0, False
        for _ in range(3):
            obs, reward, terminated, truncated, _ = bare.step(action)
            expected, frames = expected + reward, frames + 1
            if terminated or truncated:
                done = True
                break
        got, got_reward, got_terminated, got_truncated, info = repeated.step(action)
        assert got_reward == expected and info["frames"] == frames
        np.testing.assert_array_equal(got, obs)
        assert (got_terminated or got_truncated) == done
        if done:
            break


def test_repeat_stops_at_the_time_limit_inside_it():
    # a 10-frame limit under a repeat of 4: steps of 4, 4, then 2 frames
    world = make_world(EnvConfig(id="Pendulum-v1", frame_size=16, max_steps=10, action_repeat=4))
    world.reset(seed=0)
    frames, truncated = [], False
    while not truncated:
        _, reward, _, truncated, info = world.step(np.zeros(1, dtype=np.float32))
        frames.append(info["frames"])
    assert frames == [4, 4, 2]


def test_collected_episodes_record_the_frames_behind_their_steps():
    world = make_world(EnvConfig(id="Pendulum-v1", frame_size=16, max_steps=30, action_repeat=4))
    episode = collect_episode(world, CollectConfig(policy="brownian"), seed=1)
    assert len(episode["action"]) == 8 and int(episode["frames"]) == 30  # 7 x 4 + 2


def test_carracing_frames_nobody_sees_are_not_drawn_and_nothing_changes():
    """Skipping the road drawing of in-between frames gives the very observations and rewards of drawing them."""
    cfg = EnvConfig(**CARRACING, action_repeat=4, max_steps=120)
    rng = np.random.default_rng(0)
    actions = [np.array([rng.uniform(-1, 1), rng.uniform(0, 1), 0.0], dtype=np.float32) for _ in range(30)]

    def play() -> tuple[list, list]:
        world = make_world(cfg)
        obs, _ = world.reset(seed=3)
        seen, rewards = [obs], []
        for action in actions:
            obs, reward, terminated, truncated, _ = world.step(action)
            seen.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                break
        world.close()
        return seen, rewards

    skipped = play()
    drawn_calls = []
    original = real._unseen
    try:  # the same episode with every frame drawn
        real._unseen = lambda env, skip: drawn_calls.append(skip) or contextlib.nullcontext(False)
        drawn = play()
    finally:
        real._unseen = original
    assert any(drawn_calls)  # the patched path was taken
    assert len(skipped[0]) == len(drawn[0]) == 31  # 120 frames / 4 = 30 steps, the last one truncated
    for a, b in zip(skipped[0], drawn[0]):
        np.testing.assert_array_equal(a, b)
    assert skipped[1] == drawn[1]


def test_bounds_span_the_box_and_clip_into_the_world():
    world = ActionBounds(gym.make("CarRacing-v3"), [-1.0, 0.0, -1.0], [1.0, 1.0, 1.0])
    assert world.action_space.low.tolist() == [-1.0, 0.0, -1.0]
    np.testing.assert_array_equal(
        world.action(np.array([0.5, 0.3, -0.6], dtype=np.float32)), np.float32([0.5, 0.3, 0.0])
    )
    np.testing.assert_array_equal(
        world.action(np.array([-1.0, 1.0, 0.25], dtype=np.float32)), np.float32([-1.0, 1.0, 0.25])
    )


def test_bounds_refuse_a_wrong_length_or_a_discrete_world():
    with pytest.raises(WorldModelsError, match="one value per"):
        ActionBounds(gym.make("CarRacing-v3"), [-1.0, 0.0], [1.0, 1.0])
    with pytest.raises(WorldModelsError, match="Box"):
        ActionBounds(gym.make("CartPole-v1"), [0.0], [1.0])


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.action_repeat=0", "action_repeat"),
        ("env.action_low=[0.0, 0.0]", "action_low"),  # two values against one high
        ("env.action_low=[1.0]", "action_low"),
    ],
)
def test_bad_repeat_or_bounds_in_a_recipe(override, message):
    data = config_lib.apply_overrides({"env": {"action_high": [0.5]}} if "low" in override else {}, [override])
    with pytest.raises(WorldModelsError, match=message):
        config_lib.from_dict(data)


def test_render_size_draws_the_picture_at_that_size_and_leaves_the_dynamics_alone():
    world = make_world(EnvConfig(id="CartPole-v1", frame_size=32, render_size=[300, 200]))
    bare = gym.make("CartPole-v1")
    frame, info = world.reset(seed=3)
    state, _ = bare.reset(seed=3)
    assert world.unwrapped.render().shape == (200, 300, 3) and frame.shape == (32, 32, 3)
    for action in [0, 1, 1, 0, 0, 1]:
        frame, reward, *_, info = world.step(action)
        state, bare_reward, *_ = bare.step(action)
        np.testing.assert_array_equal(info["state"], state)
        assert reward == bare_reward
    # the spec rebuilds it at the same size
    rebuilt = gym.make(world.spec)
    rebuilt.reset(seed=3)
    assert rebuilt.unwrapped.render().shape == (200, 300, 3)


def test_render_size_on_a_world_without_a_screen_size_is_one_line():
    with pytest.raises(WorldModelsError, match="env.render_size: CarRacing-v3 has no screen_width"):
        RenderSize(gym.make("CarRacing-v3"), 48, 48)
