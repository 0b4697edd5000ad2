"""Episodes: the on-disk store, collection in the real pixel world, and the datasets built on it."""

from __future__ import annotations

import json
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import TINY

from worldmodels import config as config_lib
from worldmodels.config import CollectConfig, EnvConfig, StateBound
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.episodes import CorruptEpisode, EpisodeStore, episode_name, load_episode, save_episode
from worldmodels.data.frames import FrameStream
from worldmodels.data.latents import LatentEpisode, SequenceDataset
from worldmodels.play.collect import BrownianPolicy, collect, collect_episode
from worldmodels.worlds.real import make_world


def fake_episode(steps: int = 6, seed: int = 0, size: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    terminated = np.zeros(steps, dtype=bool)
    terminated[-1] = True
    return {
        "obs": rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8),
        "action": rng.integers(0, 2, steps),
        "reward": np.ones(steps, dtype=np.float32),
        "terminated": terminated,
        "truncated": np.zeros(steps, dtype=bool),
        "seed": np.asarray(seed),
    }


# ---------------------------------------------------------------- the store


def test_save_load_round_trip(tmp_path):
    episode = fake_episode(steps=9, seed=3)
    path = tmp_path / episode_name(3)
    save_episode(path, episode)
    assert path.name == "ep_000003.npz"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_episode(path)
    assert set(loaded) == set(episode)
    for key, value in episode.items():
        assert loaded[key].dtype == value.dtype, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_truncated_file_is_corrupt(tmp_path):
    path = tmp_path / "ep_000000.npz"
    save_episode(path, fake_episode())
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptEpisode, match="ep_000000.npz"):
            load_episode(path)


def test_inconsistent_lengths_are_corrupt(tmp_path):
    episode = fake_episode(steps=5)
    bad_reward = dict(episode, reward=episode["reward"][:-1])
    bad_obs = dict(episode, obs=episode["obs"][:-1])  # T frames for T actions
    for i, bad in enumerate([bad_reward, bad_obs]):
        path = tmp_path / episode_name(i)
        save_episode(path, bad)
        with pytest.raises(CorruptEpisode, match="lengths disagree"):
            load_episode(path)
    path = tmp_path / episode_name(9)
    save_episode(path, {k: v for k, v in episode.items() if k != "truncated"})
    with pytest.raises(CorruptEpisode, match="missing truncated"):
        load_episode(path)


def test_damaged_bytes_are_corrupt(tmp_path):
    """Bytes zeroed inside the compressed data (a bad disk, a partial copy) must read as CorruptEpisode too."""
    path = tmp_path / "ep_000000.npz"
    episode = fake_episode(steps=20)
    episode["obs"] = episode["obs"] // 64 * 64  # few colours, like real frames: deflate really compresses
    save_episode(path, episode)
    data = path.read_bytes()
    for offset in range(100, len(data) // 2, 97):
        damaged = bytearray(data)
        damaged[offset : offset + 32] = bytes(32)
        path.write_bytes(bytes(damaged))
        try:
            load_episode(path)
        except CorruptEpisode:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(
                f"damage at byte {offset} raised {type(exc).__module__}.{type(exc).__name__}: {exc}, not CorruptEpisode"
            )
        pytest.fail(f"damage at byte {offset} went unnoticed")


def test_store_skips_and_counts_corrupt_episodes(tmp_path):
    for i in range(4):
        save_episode(tmp_path / episode_name(i), fake_episode(steps=3 + i, seed=i))
    bad = tmp_path / episode_name(2)
    bad.write_bytes(bad.read_bytes()[:100])
    store = EpisodeStore(tmp_path)
    assert [p.name for p in store.paths()] == [episode_name(i) for i in range(4)]
    got = [(p.name, len(ep["action"])) for p, ep in store.iter_episodes()]
    assert got == [("ep_000000.npz", 3), ("ep_000001.npz", 4), ("ep_000003.npz", 6)]
    assert store.skipped == {"ep_000002.npz"}
    assert len(list(store.iter_episodes())) == 3
    assert store.skipped == {"ep_000002.npz"}  # counted once however often it is met


# ---------------------------------------------------------------- collection in the real world


@pytest.fixture(scope="module")
def cartpole():
    env = make_world(EnvConfig(frame_size=16))
    yield env
    env.close()


def test_collect_episode_cartpole_pixels(cartpole):
    ep = collect_episode(cartpole, CollectConfig(), seed=1)
    T = len(ep["action"])
    assert T >= 5
    assert ep["obs"].dtype == np.uint8 and ep["obs"].shape == (T + 1, 16, 16, 3)
    assert ep["reward"].shape == ep["terminated"].shape == ep["truncated"].shape == (T,)
    assert set(np.unique(ep["action"])) <= {0, 1}
    np.testing.assert_array_equal(ep["reward"], np.ones(T, dtype=np.float32))
    # only the last step ends the episode
    ends = ep["terminated"] | ep["truncated"]
    assert ends[-1] and not ends[:-1].any()
    assert int(ep["seed"]) == 1
    # real pictures: not blank, and the pole moves
    assert ep["obs"].std() > 5
    assert np.abs(ep["obs"][0].astype(int) - ep["obs"][-1].astype(int)).sum() > 0
    # the same seed plays the same episode
    again = collect_episode(cartpole, CollectConfig(), seed=1)
    for key in ep:
        np.testing.assert_array_equal(again[key], ep[key], err_msg=key)


def replay_states(actions: np.ndarray, seed: int) -> np.ndarray:
    """The CartPole states reached by replaying `actions` from `reset(seed)`."""
    env = make_world(EnvConfig(frame_size=16))
    env.reset(seed=seed)
    states = [env.step(int(a))[4]["state"] for a in actions]
    env.close()
    return np.array(states)


def test_keep_bounds_end_episode_before_the_state_leaves(cartpole):
    bound = StateBound(index=2, low=-0.05, high=0.05)  # pole angle within +-0.05 rad
    shorter = 0
    for seed in range(4):
        free = collect_episode(cartpole, CollectConfig(), seed)
        kept = collect_episode(cartpole, CollectConfig(keep=[bound]), seed)
        T = len(kept["action"])
        assert len(kept["obs"]) == T + 1
        # the policy is the same, so the filtered episode is a prefix of the free one
        np.testing.assert_array_equal(kept["action"], free["action"][:T])
        np.testing.assert_array_equal(kept["obs"], free["obs"][: T + 1])
        shorter += T < len(free["action"])
        # every kept step's state is inside the bounds; the next step of the free episode is not
        angles = replay_states(free["action"], seed)[:, 2]
        assert np.all((angles[:T] >= bound.low) & (angles[:T] <= bound.high)), angles[:T]
        if T < len(free["action"]):
            assert not bound.low <= angles[T] <= bound.high
            # ended by the filter: a truncation, never a termination
            assert T == 0 or (kept["truncated"][-1] and not kept["terminated"].any())
    assert shorter == 4


def test_collect_max_steps_caps_length(cartpole):
    for seed in range(3):
        free = collect_episode(cartpole, CollectConfig(), seed)
        capped = collect_episode(cartpole, CollectConfig(max_steps=5), seed)
        assert len(free["action"]) > 5
        assert len(capped["action"]) == 5 and len(capped["obs"]) == 6
        assert capped["truncated"][-1] and not capped["truncated"][:-1].any() and not capped["terminated"].any()
        np.testing.assert_array_equal(capped["action"], free["action"][:5])


def test_brownian_actions_are_smooth_and_in_bounds():
    env = make_world(EnvConfig(id="Pendulum-v1", frame_size=16))
    low, high = env.action_space.low, env.action_space.high
    try:
        brown = collect_episode(env, CollectConfig(policy="brownian", brownian_sigma=0.05, max_steps=150), seed=0)[
            "action"
        ]
        rand = collect_episode(env, CollectConfig(policy="random", max_steps=150), seed=0)["action"]
    finally:
        env.close()
    assert brown.shape == rand.shape == (150, 1)
    for actions in (brown, rand):
        assert np.all(actions >= low) and np.all(actions <= high)
    brown_step = np.abs(np.diff(brown[:, 0])).mean()
    rand_step = np.abs(np.diff(rand[:, 0])).mean()
    assert rand_step == pytest.approx(4 / 3, rel=0.25)  # E|U - U'| for U uniform on [-2, 2]
    assert brown_step < 0.2 * rand_step
    assert brown[:, 0].std() > 0.05  # it does move


def test_brownian_policy_discrete_switches_rarely():
    space = gym.spaces.Discrete(3, start=1)
    policy = BrownianPolicy(space, seed=0, sigma=0.05)
    actions = np.array([policy() for _ in range(500)])
    assert set(np.unique(actions)) <= {1, 2, 3}
    assert (np.diff(actions) != 0).mean() < 0.2  # random choice would switch 2/3 of the time


# ---------------------------------------------------------------- collect() into a folder


def test_collect_writes_store_and_manifest_and_resumes(tmp_path):
    cfg = config_lib.load(TINY, ["collect.episodes=3", "collect.workers=1"])
    root = tmp_path / "episodes"
    manifest = collect(cfg, root)
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == manifest
    assert [e["file"] for e in manifest["episodes"]] == [episode_name(i) for i in range(3)]
    for e in manifest["episodes"]:
        ep = load_episode(root / e["file"])
        assert e["steps"] == len(ep["action"]) and e["seed"] == int(ep["seed"])
        assert len(ep["action"]) <= cfg.env.max_steps
    assert manifest["frames"] == sum(e["steps"] + 1 for e in manifest["episodes"])
    assert len({e["seed"] for e in manifest["episodes"]}) == 3
    world = manifest["world"]
    assert world["env.id"] == "CartPole-v1" and world["env.frame_size"] == 16 and manifest["skipped_corrupt"] == []

    # resuming keeps what is there and only adds what is missing; a corrupt file is collected again, the same
    seed_of_1 = manifest["episodes"][1]["seed"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in root.glob("ep_*.npz")}
    (root / episode_name(1)).write_bytes(b"garbage")
    cfg4 = config_lib.load(TINY, ["collect.episodes=4", "collect.workers=1"])
    manifest = collect(cfg4, root)
    assert (root / episode_name(0)).stat().st_mtime_ns == mtimes[episode_name(0)]
    assert (root / episode_name(2)).stat().st_mtime_ns == mtimes[episode_name(2)]
    assert [e["file"] for e in manifest["episodes"]] == [episode_name(i) for i in range(4)]
    assert manifest["skipped_corrupt"] == [] and manifest["episodes"][1]["seed"] == seed_of_1
    assert int(load_episode(root / episode_name(1))["seed"]) == seed_of_1

    # a damaged manifest is rebuilt from the files present, episodes of iterative rounds included
    save_episode(root / "round01_000000.npz", load_episode(root / episode_name(0)))
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(WorldModelsError, match="collect. rebuilds it"):
        EpisodeStore(root).listed()
    manifest = collect(cfg4, root)
    assert [e["file"] for e in manifest["episodes"]] == [episode_name(i) for i in range(4)] + ["round01_000000.npz"]
    assert manifest["episodes"][-1]["round"] == 1


# ---------------------------------------------------------------- datasets


def test_frame_stream_yields_every_frame_once_per_epoch(tmp_path):
    episodes = [fake_episode(steps=4 + i, seed=i, size=4) for i in range(3)]
    for i, ep in enumerate(episodes):
        save_episode(tmp_path / episode_name(i), ep)
    listed = [{"file": episode_name(i), "steps": 4 + i, "seed": i} for i in range(3)]
    (tmp_path / "manifest.json").write_text(json.dumps({"episodes": listed}))
    save_episode(tmp_path / episode_name(7), fake_episode(steps=5, seed=7, size=4))  # not in the manifest: unused
    all_frames = Counter(f.tobytes() for ep in episodes for f in ep["obs"])
    stream = FrameStream(EpisodeStore(tmp_path), buffer_episodes=2, seed=0)

    def epoch(e: int) -> list[bytes]:
        stream.set_epoch(e)
        frames = list(stream)
        assert all(isinstance(f, torch.Tensor) and f.dtype == torch.uint8 and f.shape == (4, 4, 3) for f in frames)
        return [f.numpy().tobytes() for f in frames]

    def concatenated(e: int) -> list[bytes]:  # the order of concatenating each chunk's episodes, then permuting
        rng = np.random.default_rng([0, e])
        order = [episodes[i] for i in rng.permutation(3)]
        out = []
        for chunk in (order[:2], order[2:]):
            frames = np.concatenate([ep["obs"] for ep in chunk])
            out += [frames[i].tobytes() for i in rng.permutation(len(frames))]
        return out

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert first == concatenated(0) and second == concatenated(1)  # frames held once, in the same order as before
    assert Counter(first) == all_frames and Counter(second) == all_frames
    assert first == again  # an epoch's order is reproducible
    assert first != second  # and differs between epochs


def test_sequence_dataset_windows_and_mask():
    T, Z, L = 5, 2, 4
    mu = np.arange((T + 1) * Z, dtype=np.float32).reshape(T + 1, Z)
    ep = LatentEpisode(
        mu=mu,
        logstd=-mu,
        action=np.arange(T * 3, dtype=np.float32).reshape(T, 3),
        reward=np.arange(T, dtype=np.float32),
        done=np.array([0, 0, 0, 0, 1], dtype=bool),
    )
    empty = LatentEpisode(mu[:1], mu[:1], np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, bool))
    ds = SequenceDataset([ep, empty], seq_len=L)
    assert len(ds) == 2  # windows at 0 and 4; the empty episode gives none
    a, b = ds[0], ds[1]
    np.testing.assert_array_equal(a["mask"], [1, 1, 1, 1])
    np.testing.assert_array_equal(b["mask"], [1, 0, 0, 0])
    np.testing.assert_array_equal(a["mu"], mu[0:4])
    np.testing.assert_array_equal(a["next_mu"], mu[1:5])
    np.testing.assert_array_equal(a["next_logstd"], -mu[1:5])
    np.testing.assert_array_equal(b["mu"][0], mu[4])
    np.testing.assert_array_equal(b["next_mu"][0], mu[5])
    np.testing.assert_array_equal(b["mu"][1:], 0)  # padding
    np.testing.assert_array_equal(b["reward"], [4, 0, 0, 0])
    np.testing.assert_array_equal(b["done"], [1, 0, 0, 0])
    np.testing.assert_array_equal(a["action"], ep.action[:4])
    assert all(t.dtype == torch.float32 for t in a.values())


def test_encode_actions_of_an_empty_episode_keeps_the_action_width():
    from worldmodels.core.actions import encode_actions

    box = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    assert encode_actions(np.zeros((0, 1), np.float32), box).shape == (0, 1)
    assert encode_actions(np.zeros(0, np.int64), gym.spaces.Discrete(3)).shape == (0, 3)
