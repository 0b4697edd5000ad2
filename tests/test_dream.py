"""The dream world: counter-based noise, temperature, M's heads in the dream, batching, gymnasium faces,
CLI and rounds."""

from __future__ import annotations

import itertools
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from helpers import BOX, DISCRETE, SPACES, TINY, H, K, Z, cli_stage, fixed_start, population, small_memory
from PIL import Image

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.config import DreamConfig, MemoryConfig
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller, to_action
from worldmodels.core import noise
from worldmodels.core.actions import action_dim
from worldmodels.data.episodes import load_episode
from worldmodels.data.latents import LatentEpisode, load_latents, start_latents
from worldmodels.memory import MDNRNN, Prediction, draw
from worldmodels.runs import checkpoints
from worldmodels.stages import evolution
from worldmodels.stages.evolution import DreamEvaluator, Stream, stream_seeds
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.dream import Dream, DreamEnv, DreamVectorEnv, play_dream
from worldmodels.worlds.real import action_space


def constant_heads(memory: MDNRNN, reward: float, done_logit: float) -> MDNRNN:
    """Zero M's head weights: every step predicts the same mixture, `reward` and `done_logit` (the last two outputs)."""
    with torch.no_grad():
        memory.head.weight.zero_()
        memory.head.bias[-2] = reward
        memory.head.bias[-1] = done_logit
    return memory


# ---------------------------------------------------------------- counter-based noise


def test_uniform_in_open_interval_and_deterministic():
    seeds, steps = torch.arange(2000), torch.arange(2000) % 17
    u = noise.uniform(seeds, steps, noise.COMPONENT, 50)
    assert u.shape == (2000, 50) and u.dtype == torch.float32
    assert (u > 0).all() and (u < 1).all()
    torch.testing.assert_close(noise.uniform(seeds, steps, noise.COMPONENT, 50), u, rtol=0, atol=0)


def test_the_cpu_hash_in_numpy_gives_the_bits_of_the_torch_hash():
    """Both implementations of one step's streams (numpy on the CPU, torch where the dream runs on a GPU) agree."""
    seeds = torch.cat([torch.tensor([0, 5, 2**31 - 1, 2**40 + 7, -5]), torch.randint(0, 2**31 - 1, (300,))])
    steps = torch.cat([torch.tensor([0, 3, 999, -1, 2**33]), torch.randint(-1, 100_000, (300,))])
    streams = (noise.COMPONENT, noise.GAUSS_A, noise.GAUSS_B, noise.DONE, noise.START, noise.DROPOUT)
    for n in (1, 32, 256):
        u = noise._uniforms_np(seeds, steps, streams, n)
        assert u.dtype == torch.float32 and torch.equal(u, noise._uniforms_torch(seeds, steps, streams, n))


def test_uniform_never_reaches_one():
    """Seed 3792943, step 0, stream 0, index 0 hashes to the largest 24-bit value 0xFFFFFF."""
    u = noise.uniform(torch.tensor([3792943]), torch.tensor([0]), noise.START, 1)
    assert u.item() < 1.0


def test_uniform_row_does_not_depend_on_the_batch():
    seeds = torch.tensor([5, -3, 2**40 + 7, 123456789, 0])
    steps = torch.tensor([0, 4, -1, 999, 3])
    whole = noise.uniform(seeds, steps, noise.DONE, 6)
    for i in range(len(seeds)):
        alone = noise.uniform(seeds[[i]], steps[[i]], noise.DONE, 6)
        torch.testing.assert_close(alone[0], whole[i], rtol=0, atol=0)
    # fewer indices are a prefix of more
    torch.testing.assert_close(noise.uniform(seeds, steps, noise.DONE, 2), whole[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(
        noise.normal(seeds[[2]], steps[[2]], 4)[0], noise.normal(seeds, steps, 4)[2], rtol=0, atol=0
    )


def test_uniform_differs_across_seeds_steps_streams_and_indices():
    base = noise.uniform(torch.tensor([1]), torch.tensor([1]), noise.COMPONENT, 8)[0]
    others = [
        noise.uniform(torch.tensor([2]), torch.tensor([1]), noise.COMPONENT, 8)[0],
        noise.uniform(torch.tensor([1]), torch.tensor([2]), noise.COMPONENT, 8)[0],
        noise.uniform(torch.tensor([1]), torch.tensor([1]), noise.DONE, 8)[0],
    ]
    for other in others:
        assert (other != base).all()
    assert len(set(base.tolist())) == 8  # indices within one draw differ too
    # neighbouring (seed, step, stream) counters give unrelated draws: only chance collisions among 2000 values
    seeds, steps = torch.arange(20).repeat_interleave(20), torch.arange(20).repeat(20)
    cells = torch.cat([noise.uniform(seeds, steps, s, 1) for s in range(5)])
    assert len(set(cells[:, 0].tolist())) >= 1990


def test_uniform_and_normal_moments():
    seeds, steps = torch.arange(1000), torch.zeros(1000, dtype=torch.long)
    u = noise.uniform(seeds, steps, noise.GAUSS_A, 100).double()
    assert u.mean().item() == pytest.approx(0.5, abs=0.005)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.002)
    assert np.histogram(u.numpy(), bins=10, range=(0, 1))[0].min() > 9500  # each tenth holds ~10,000
    g = noise.normal(seeds, steps, 100).double()
    assert torch.isfinite(g).all()
    assert g.mean().item() == pytest.approx(0.0, abs=0.01)
    assert g.std().item() == pytest.approx(1.0, abs=0.01)
    assert (g.abs() < 1).double().mean().item() == pytest.approx(0.6827, abs=0.01)
    # the two Box-Muller streams are independent: no correlation between draws of neighbouring indices
    assert torch.corrcoef(torch.stack([g[:, 0], g[:, 1]]))[0, 1].abs().item() < 0.1


# ---------------------------------------------------------------- temperature


def brute_draw(pred: Prediction, tau: float, uniform: torch.Tensor, normal: torch.Tensor) -> np.ndarray:
    """Inverse-CDF component choice with explicit loops: the first k with u <= sum_{j<=k} pi_j."""
    logit, mu, sigma = pred.logit_pi.numpy(), pred.mu.numpy(), pred.sigma.numpy()
    out = np.zeros(uniform.shape)
    for idx in np.ndindex(*uniform.shape):
        weights = [math.exp(value / tau) for value in logit[idx]]
        total, cumulative, pick = sum(weights), 0.0, len(weights) - 1
        for k, w in enumerate(weights):
            cumulative += w / total
            if uniform[idx] <= cumulative:
                pick = k
                break
        out[idx] = mu[idx + (pick,)] + sigma[idx + (pick,)] * math.sqrt(tau) * float(normal[idx])
    return out


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_draw_picks_components_by_inverse_cdf(tau):
    g = torch.Generator().manual_seed(7)
    shape = (40, 2, 4)  # (B, Z, K)
    pred = Prediction(
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64) * 5,
        torch.rand(shape, generator=g, dtype=torch.float64) + 0.1,
        torch.zeros(40),
        torch.zeros(40),
    )
    uniform = torch.rand(40, 2, generator=g, dtype=torch.float64)
    normal = torch.randn(40, 2, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(
        draw(pred, tau, uniform, normal).numpy(), brute_draw(pred, tau, uniform, normal), rtol=1e-12, atol=1e-12
    )
    # with no spread the draw is one of the components' means, and every component gets picked somewhere
    zero = draw(pred, tau, uniform, torch.zeros_like(normal))
    picked = (zero.unsqueeze(-1) == pred.mu).double()
    assert (picked.sum(-1) == 1).all()
    assert (picked.sum((0, 1)) > 0).all()


def test_draw_at_tau_zero_is_the_most_likely_mean():
    pred = Prediction(
        torch.tensor([[[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]]]),
        torch.tensor([[[10.0, 20.0, 30.0], [-1.0, -2.0, -3.0]]]),
        torch.ones(1, 2, 3),
        torch.zeros(1),
        torch.zeros(1),
    )
    got = draw(pred, 0.0, torch.full((1, 2), 0.999), torch.full((1, 2), 5.0))
    torch.testing.assert_close(got, torch.tensor([[20.0, -1.0]]))


def first_latents(memory: MDNRNN, start: torch.Tensor, tau: float, n: int, action: torch.Tensor) -> torch.Tensor:
    """z_1 of n dream episodes that all start at `start` and take `action`."""
    dream = Dream(memory, DreamConfig(tau=tau, done="never"), fixed_start(start))
    z0 = dream.reset(torch.arange(n))[:, :Z]
    torch.testing.assert_close(z0, start.expand(n, Z), rtol=0, atol=0)
    dream.step(action.expand(n, -1))
    return dream.z.clone()


def test_dream_temperature_zero_gives_the_most_likely_mean_and_spread_grows_with_tau():
    memory = small_memory(seed=3)
    start = torch.tensor([0.5, -1.0, 2.0])
    action = torch.tensor([[0.0, 1.0]])
    with torch.no_grad():
        pred, _ = memory.step(start[None], action, memory.initial_state(1))
    best = pred.logit_pi[0].argmax(-1)
    expected = pred.mu[0, torch.arange(Z), best]
    cold = first_latents(memory, start, 0.0, 50, action)
    assert (cold == cold[0]).all()
    torch.testing.assert_close(cold[0], expected, rtol=0, atol=1e-6)
    spreads = [first_latents(memory, start, tau, 2000, action).std(0) for tau in (0.5, 1.0, 2.0)]
    for colder, hotter in itertools.pairwise(spreads):
        assert (hotter > colder).all(), spreads
    # at tau = 1 the draws follow M's mixture: its mean and variance per dimension
    z = first_latents(memory, start, 1.0, 4000, action).double()
    pi, mu, sigma = pred.logit_pi[0].softmax(-1).double(), pred.mu[0].double(), pred.sigma[0].double()
    mean = (pi * mu).sum(-1)
    var = (pi * (sigma**2 + mu**2)).sum(-1) - mean**2
    assert ((z.mean(0) - mean).abs() < 4 * (var / 4000).sqrt()).all()
    np.testing.assert_allclose(z.var(0).numpy(), var.numpy(), rtol=0.1)


def test_episodes_start_from_the_data_or_the_prior():
    """start="data": one of the real first frames' latents, picked uniformly; start="prior": V's N(0, I)."""
    memory, seeds = small_memory(), torch.arange(4000)
    means = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])
    starts = torch.stack([means, torch.full_like(means, -30.0)], dim=1)
    z = Dream(memory, DreamConfig(start="data"), starts).reset(seeds)[:, :Z]
    first = (z == means[0]).all(1)
    assert (first | (z == means[1]).all(1)).all()
    assert first.double().mean().item() == pytest.approx(0.5, abs=0.03)
    z = Dream(memory, DreamConfig(start="prior"), starts).reset(seeds)[:, :Z]
    torch.testing.assert_close(z, noise.normal(seeds, torch.full_like(seeds, -1), Z), rtol=0, atol=0)
    # a wide start entry: mean + std * the same normal draw
    wide = torch.tensor([[[0.5, 0.0, -0.5], [math.log(2.0)] * 3]])
    z = Dream(memory, DreamConfig(), wide).reset(seeds)[:, :Z]
    torch.testing.assert_close(z, wide[0, 0] + 2.0 * noise.normal(seeds, torch.full_like(seeds, -1), Z))


def test_along_starts_are_every_frame_of_every_episode():
    """start="along": the dream starts from any real frame, each frame as likely (so a longer episode more often)."""
    lengths = (2, 5)  # steps: 3 and 6 frames
    episodes = [
        LatentEpisode(
            np.full((n + 1, Z), i, np.float32) + np.arange(n + 1, dtype=np.float32)[:, None] / 10,
            np.full((n + 1, Z), -30.0, np.float32),
            np.zeros((n, 2), np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, bool),
        )
        for i, n in enumerate(lengths)
    ]
    first = start_latents(episodes)
    assert first.shape == (2, 2, Z) and first[:, 0, 0].tolist() == [0.0, 1.0]
    along = start_latents(episodes, "along")
    assert along.shape == (9, 2, Z)
    np.testing.assert_allclose(along[:, 0, 0].numpy(), [0, 0.1, 0.2, 1, 1.1, 1.2, 1.3, 1.4, 1.5], atol=1e-6)
    assert (along[:, 1] == -30).all()
    z = Dream(small_memory(), DreamConfig(start="along"), along).reset(torch.arange(9000))[:, 0]
    frames = torch.tensor([0, 0.1, 0.2, 1, 1.1, 1.2, 1.3, 1.4, 1.5])
    hit = (z[:, None] - frames).abs() < 1e-4
    assert (hit.sum(1) == 1).all()  # every start is one of the frames, its std e^-30 adding nothing
    np.testing.assert_allclose(hit.double().mean(0).numpy(), np.full(9, 1 / 9), atol=0.015)


# ---------------------------------------------------------------- M's reward and done heads in the dream


def head_dream(done_logit: float, max_steps: int = 7, done_weight: float = 4.0, **cfg) -> Dream:
    """A dream whose M predicts reward 3 and the given done logit at every step."""
    memory = constant_heads(small_memory(seed=1, done_weight=done_weight), 3.0, done_logit)
    return Dream(memory, DreamConfig(max_steps=max_steps, **cfg), fixed_start(torch.zeros(Z)))


def play_zeros(dream: Dream, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """play_dream with all-zero controllers (M's heads ignore the actions here anyway)."""
    return play_dream(dream, Controller(Z + H, DISCRETE, population=len(seeds)), seeds)


def test_unlikely_done_truncates_every_episode_at_max_steps():
    dream = head_dream(-30.0, max_steps=7)
    dream.reset(torch.arange(64))
    for t in range(1, 8):
        reward, terminated, truncated = dream.step(torch.zeros(64, 2))
        torch.testing.assert_close(reward, torch.full((64,), 3.0))
        assert not terminated.any()
        assert truncated.all() if t == 7 else not truncated.any(), t
    returns, steps = play_zeros(head_dream(-30.0, max_steps=7), list(range(64)))
    assert (steps == 7).all()
    np.testing.assert_allclose(returns, 3.0 * 7)


def test_certain_done_terminates_every_episode_after_one_step():
    dream = head_dream(30.0, max_steps=1)
    dream.reset(torch.arange(64))
    _, terminated, truncated = dream.step(torch.zeros(64, 2))
    assert terminated.all() and not truncated.any()  # an episode that terminates at the cap is not also truncated
    returns, steps = play_zeros(head_dream(30.0, max_steps=7), list(range(64)))
    assert (steps == 1).all()
    np.testing.assert_allclose(returns, 3.0)


def test_sampled_done_uses_the_calibrated_probability():
    """done_logit = log(done_weight) is P(done) = 1/2 once the training weight is undone: geometric lengths."""
    n = 4000
    returns, steps = play_zeros(head_dream(math.log(4.0), max_steps=50, done_weight=4.0), list(range(n)))
    assert (steps == 1).mean() == pytest.approx(0.5, abs=0.04)
    assert (steps == 2).mean() == pytest.approx(0.25, abs=0.04)
    assert steps.mean() == pytest.approx(2.0, abs=0.1)
    np.testing.assert_allclose(returns, 3.0 * steps)
    # the same logit under the default weight 10 means P(done) = 4/14
    _, steps = play_zeros(head_dream(math.log(4.0), max_steps=50, done_weight=10.0), list(range(n)))
    assert (steps == 1).mean() == pytest.approx(4 / 14, abs=0.04)


@pytest.mark.parametrize("threshold, ends", [(0.4, True), (0.6, False)])
def test_threshold_done(threshold, ends):
    returns, steps = play_zeros(head_dream(math.log(4.0), done="threshold", done_threshold=threshold), list(range(32)))
    assert (steps == (1 if ends else 7)).all()
    np.testing.assert_allclose(returns, 3.0 * steps)


def test_never_done():
    returns, steps = play_zeros(head_dream(30.0, done="never"), list(range(32)))
    assert (steps == 7).all()
    np.testing.assert_allclose(returns, 21.0)


def test_a_dream_reads_its_reward_from_the_latent_it_drew():
    """reward_from = "next": each step's reward and done are M's outcome head on [h_{t+1}, the z_{t+1} just drawn]."""
    torch.manual_seed(2)
    memory = MDNRNN(MemoryConfig(hidden_size=H, num_gaussians=K, reward_from="next"), Z, 2).eval()
    dream = Dream(memory, DreamConfig(max_steps=5, done="threshold", done_threshold=0.5), fixed_start(torch.zeros(Z)))
    dream.reset(torch.arange(16))
    for _ in range(5):
        reward, terminated, _ = dream.step(torch.randn(16, 2))
        with torch.no_grad():
            outcome = memory.outcome(torch.cat([MDNRNN.hidden(dream.state), dream.z], -1))
        torch.testing.assert_close(reward, outcome[:, 0])
        p_done = memory.done_probability(Prediction(None, None, None, reward, outcome[:, 1]))
        assert torch.equal(terminated, p_done > 0.5)
    assert reward.std() > 0  # the rows drew different latents, so their rewards differ


# ---------------------------------------------------------------- batched, unbatched and by hand


def random_dream(space: gym.Space, max_steps: int = 12, done: str = "sample") -> Dream:
    """A random M whose episodes end at various steps; starts drawn from two start latents."""
    memory = small_memory(seed=5, action_dim=action_dim(space))
    with torch.no_grad():
        memory.head.bias[-1] = 0.0  # P(done) around 0.1 a step
    starts = torch.tensor([[[0.0, 1.0, -1.0], [-1.0, -1.0, -1.0]], [[2.0, 0.0, 0.0], [-2.0, -2.0, -2.0]]])
    return Dream(memory, DreamConfig(max_steps=max_steps, done=done), starts)


def by_hand(env: DreamEnv, controller: Controller, row: int, seed: int) -> tuple[float, int]:
    """One episode through DreamEnv, acting with controller `row` through `to_action`."""
    obs, _ = env.reset(seed=seed)
    total, steps = 0.0, 0
    while True:
        z, h = torch.from_numpy(obs[:Z])[None], torch.from_numpy(obs[Z:])[None]
        action = to_action(controller.outputs(z, h, rows=[row])[0].numpy(), env.action_space)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            return total, steps


@SPACES
def test_batched_unbatched_and_by_hand_agree(space):
    controller, _ = population(space, 7, seed=2)
    seeds = [11, 3, 2**31 - 2, 0, 77, 5, 1234]
    dream = random_dream(space)
    returns, steps = play_dream(dream, controller, seeds)
    assert len(set(steps.tolist())) > 2 and (steps < 12).any() and (steps == 12).any()  # episodes of many lengths
    for batch in (1, 3):
        other_returns, other_steps = play_dream(dream, controller, seeds, batch=batch)
        np.testing.assert_array_equal(other_steps, steps)
        np.testing.assert_allclose(other_returns, returns, atol=1e-4)
    env = DreamEnv(random_dream(space), space)
    manual = [by_hand(env, controller, k, s) for k, s in enumerate(seeds)]
    np.testing.assert_array_equal([s for _, s in manual], steps)
    np.testing.assert_allclose([r for r, _ in manual], returns, atol=1e-4)
    # the same seed dreamt by another controller row goes elsewhere
    shuffled = controller.select(torch.tensor([1, 2, 3, 4, 5, 6, 0]))
    assert not np.allclose(play_dream(dream, shuffled, seeds)[0], returns)


@SPACES
def test_vector_env_row_i_is_the_single_env_with_seed_plus_i(space):
    """DreamVectorEnv.reset(seed=s) row i dreams what DreamEnv.reset(seed=s + i) dreams, action for action."""
    n, seed, horizon = 4, 100, 30
    vector = DreamVectorEnv(random_dream(space), space, n)
    single = DreamEnv(random_dream(space), space)
    vector.action_space.seed(0)
    actions = [vector.action_space.sample() for _ in range(horizon)]
    obs, _ = vector.reset(seed=seed)
    assert obs.shape == (n, Z + H) and obs.dtype == np.float32
    for i in range(n):
        np.testing.assert_array_equal(obs[i], single.reset(seed=seed + i)[0])
    vector_steps = [vector.step(a) for a in actions]
    compared = 0
    for i in range(n):  # row i until its episode ends (the next step restarts it with a fresh seed)
        single.reset(seed=seed + i)
        for t, a in enumerate(actions):
            obs, reward, terminated, truncated, _ = single.step(a[i])
            v_obs, v_reward, v_terminated, v_truncated, _ = vector_steps[t]
            np.testing.assert_allclose(v_obs[i], obs, atol=1e-5)
            assert v_reward[i] == pytest.approx(reward, abs=1e-5)
            assert (v_terminated[i], v_truncated[i]) == (terminated, truncated)
            compared += 1
            if terminated or truncated:
                break
    assert compared > n  # rows ran several steps each


# ---------------------------------------------------------------- gymnasium


def tiny_vision():
    """An untrained V of the tiny recipe's sizes, with the small M's latent size: enough to draw dreams."""
    torch.manual_seed(0)
    return build_vision({**vision_config(config_lib.load(TINY)), "latent_dim": Z}).eval()


@SPACES
def test_dream_env_passes_gymnasium_env_checker(space):
    dream = random_dream(space)
    dream.vision = tiny_vision()
    env = DreamEnv(dream, space, render_mode="rgb_array")
    check_env(env, skip_render_check=False)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8


def test_vector_env_episode_statistics_and_next_step_autoreset():
    n, max_steps = 3, 4
    start = torch.tensor([1.0, -2.0, 0.5])
    memory = constant_heads(small_memory(seed=1), 3.0, 30.0)  # done="never" ignores the certain done
    env = RecordEpisodeStatistics(
        DreamVectorEnv(Dream(memory, DreamConfig(max_steps=max_steps, done="never"), fixed_start(start)), DISCRETE, n)
    )
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs[:, :Z], start.expand(n, Z).numpy())
    assert not obs[:, Z:].any()
    ends = []
    for t in range(1, 3 * (max_steps + 1) + 1):
        obs, reward, terminated, truncated, info = env.step(np.ones(n, dtype=np.int64))
        assert not terminated.any()
        if t % (max_steps + 1) == 0:  # the step after an episode's end only restarts it
            np.testing.assert_array_equal(reward, 0.0)
            assert not truncated.any()
            np.testing.assert_array_equal(obs[:, :Z], start.expand(n, Z).numpy())
            assert not obs[:, Z:].any()  # M's LSTM state was reset with the episode
        else:
            np.testing.assert_array_equal(reward, 3.0)
            assert obs[:, Z:].any()
            assert truncated.all() == (t % (max_steps + 1) == max_steps) and truncated.all() == truncated.any()
        if truncated.any():
            ends.append(t)
            np.testing.assert_array_equal(info["episode"]["l"], max_steps)
            np.testing.assert_allclose(info["episode"]["r"], 3.0 * max_steps)
    assert ends == [4, 9, 14]
    assert list(env.length_queue) == [max_steps] * (3 * n)


def test_vector_env_restarts_finished_rows_only():
    """Rows that end at different steps restart independently; the others keep going."""
    n = 64
    memory = constant_heads(small_memory(seed=1, done_weight=4.0), 3.0, math.log(4.0))  # P(done) = 1/2
    env = DreamVectorEnv(Dream(memory, DreamConfig(max_steps=100), fixed_start(torch.zeros(Z))), DISCRETE, n)
    env.reset(seed=5)
    actions = np.zeros(n, dtype=np.int64)
    _, _, terminated, truncated, _ = env.step(actions)
    assert 0 < terminated.sum() < n and not truncated.any()
    obs, reward, terminated2, _, _ = env.step(actions)
    np.testing.assert_array_equal(reward, np.where(terminated, 0.0, 3.0))
    assert not (terminated2 & terminated).any()  # a restarted row cannot end on its restart step
    assert not obs[terminated, Z:].any() and (obs[~terminated, Z:] != 0).any(1).all()


@pytest.mark.parametrize("n", [1, 7])
def test_noise_hashed_in_blocks_gives_the_same_dream(n):
    """A small batch reads its noise from blocks of steps hashed at once: the same trajectories,
    restarts and drops included."""
    memory = small_memory(seed=2, action_dim=3, done_weight=4.0)
    with torch.no_grad():
        memory.head.bias[-1] = -1.0  # episodes end at different steps, so rows restart and leave at random

    def trajectory(block_steps: int) -> list[np.ndarray]:
        dream = Dream(memory, DreamConfig(max_steps=40, tau=1.3), fixed_start(torch.zeros(Z)))
        dream.block_steps = block_steps
        env = DreamVectorEnv(dream, BOX, n)
        out = [env.reset(seed=3)[0]]
        actions = np.random.default_rng(0)
        for _ in range(120):
            obs, reward, terminated, truncated, _ = env.step(actions.uniform(-1, 1, (n, 3)).astype(np.float32))
            out += [obs, reward, terminated, truncated]
        controller, _ = population(BOX, 5)
        out += list(play_dream(dream, controller, [11, 12, 13, 14, 15]))  # rows leave the batch as they finish
        return out

    blocks, steps = trajectory(4), trajectory(0)
    assert len(blocks) == len(steps)
    for a, b in zip(blocks, steps):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- scoring controllers in the dream


def test_dream_evaluator_common_random_numbers_and_step_count():
    memory = small_memory(seed=5)
    with torch.no_grad():
        memory.head.bias[-1] = 0.0
    model = WorldModel(tiny_vision(), memory)
    starts = torch.tensor([[[0.0, 1.0, -1.0], [-1.0, -1.0, -1.0]], [[2.0, 0.0, 0.0], [-2.0, -2.0, -2.0]]])
    evaluator = DreamEvaluator(model, DreamConfig(max_steps=12), starts, DISCRETE)
    _, flat = population(DISCRETE, 3, seed=4)
    candidates = np.stack([flat[0], flat[1], flat[0], flat[2]])
    seeds = [3, 1, 4, 1_000_000, 9]
    returns = evaluator.returns(candidates, seeds)
    assert returns.shape == (4, 5)
    np.testing.assert_array_equal(returns[0], returns[2])  # identical candidates dream identical episodes
    assert not np.allclose(returns[0], returns[1])
    assert returns[0, 1] != returns[0, 2]  # different seeds, different episodes
    # what play_dream gives candidate by candidate, and the steps it took
    total = 0
    for p, x in enumerate(candidates):
        single = Controller.from_flat(np.repeat(x[None], len(seeds), 0), Z + H, DISCRETE)
        alone, steps = play_dream(Dream(memory, DreamConfig(max_steps=12), starts), single, seeds)
        np.testing.assert_allclose(returns[p], alone, atol=1e-4)
        total += int(steps.sum())
    assert evaluator.steps == total and 4 * 5 < total < 4 * 5 * 12
    evaluator.returns(candidates[:1], seeds[:2])
    assert evaluator.steps > total  # steps accumulate until the caller resets them
    batched = DreamEvaluator(model, DreamConfig(max_steps=12, batch=2), starts, DISCRETE)
    np.testing.assert_allclose(batched.returns(candidates, seeds), returns, atol=1e-4)


# ---------------------------------------------------------------- the command line on the tiny run


def cmaes_state(run) -> tuple:
    """(CMA-ES object, Progress, numpy state) saved in a run folder."""
    return search_state.load(run / "cmaes.pt")


def run_dream(ck, cfg) -> DreamEvaluator:
    """The dream of a run's V and M, from its encoded first frames, built by hand."""
    run = checkpoints.Run(ck, cfg)
    model = WorldModel.load(run.vision, run.memory)
    return DreamEvaluator(model, cfg.dream, start_latents(load_latents(run)), action_space(cfg.env))


def last_result(capsys) -> object:
    """The `result` of the JSON line a stage prints last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]


def test_train_controller_in_the_dream(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt"):  # the copied run's controller was trained in the real world
        (run / name).unlink()
    capsys.readouterr()
    assert cli_stage("train-controller", ck, ro, "--world", "dream", "--set", "dream.max_steps=30") == 0
    result = last_result(capsys)
    saved = checkpoints.load(run / "controller.pt", "controller")
    _, progress, _ = cmaes_state(run)
    assert result["world"] == "dream" and result["generation"] == progress.generation == 2
    # 2 generations of 4 candidates x 1 rollout, plus 2 contenders x 2 re-evaluation rollouts:
    # 16 episodes of 1..30 steps
    assert result["steps"] == progress.env_steps and 16 <= progress.env_steps <= 16 * 30
    assert saved["score"] == result["best_score"] == progress.best_score
    # the kept score is reproducible: the same controller on the same re-evaluation seeds in the same dream
    cfg = config_lib.load(TINY, ['controller.world="dream"', "dream.max_steps=30"])
    evaluator = run_dream(ck, cfg)
    seeds = stream_seeds(cfg.controller, Stream.REEVALUATE, saved["generation"] - 1, cfg.controller.eval_rollouts)
    rescored = evaluator.returns(saved["params"].numpy()[None], seeds).mean()
    assert rescored == pytest.approx(saved["score"], abs=1e-4)
    recipe = config_lib.load(run / "recipe.toml")
    assert recipe.controller.world == "dream" and recipe.dream.max_steps == 30


def test_the_dream_world_starts_where_the_recipe_says(copy_run):
    """dream.start reaches the search's world: first frames ("data"), every frame ("along"), or none ("prior")."""
    ck = copy_run["checkpoints"]
    latents = load_latents(checkpoints.Run(ck, config_lib.load(TINY)))
    expected = {"data": len(latents), "along": sum(len(e.mu) for e in latents)}
    for start in ("data", "along", "prior"):
        cfg = config_lib.load(TINY, [f'dream.start="{start}"'])
        with evolution.dream_world(cfg, checkpoints.Run(ck, cfg)).open() as evaluator:
            starts = evaluator.dream.starts
            assert (starts is None) if start == "prior" else len(starts) == expected[start]
    assert expected["along"] > expected["data"]


def test_real_episodes_watch_a_dream_search_without_feeding_it(copy_run, capsys):
    """controller.real_rollouts: real episodes of the kept controller beside its dream score, counted apart."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt"):
        (run / name).unlink()
    capsys.readouterr()
    sets = ["--world", "dream", "--set", "dream.max_steps=30", "--set", "controller.real_rollouts=2"]
    assert cli_stage("train-controller", ck, ro, *sets) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["result"]
    assert out.count("kept controller: dream") == 2  # one line per re-evaluation (every generation here)
    _, progress, _ = cmaes_state(run)
    assert (
        2 * 2 <= result["real_steps_watching"] == progress.real_steps <= 2 * 2 * 50
    )  # 2 episodes x 2, at most 50 steps
    assert result["steps"] == progress.env_steps  # the dream's own steps, the real ones apart


def test_evaluate_in_the_dream_writes_its_own_report(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    real_report = (run / "report.json").read_bytes()
    capsys.readouterr()
    assert (
        cli_stage("evaluate", ck, ro, "--world", "dream", "--set", "dream.max_steps=30", "--set", "dream.tau=0.7") == 0
    )
    result = last_result(capsys)
    report = json.loads((run / "report_dream.json").read_text())
    assert report["world"] == result["world"] == "dream" and report["tau"] == 0.7
    assert report["episodes"] == 3 and report["seeds"] == [10_000, 10_001, 10_002] and len(report["returns"]) == 3
    assert report["mean"] == pytest.approx(np.mean(report["returns"])) == result["mean"]
    assert (run / "report.json").read_bytes() == real_report
    # the same numbers from the dream built by hand
    cfg = config_lib.load(TINY, ["dream.max_steps=30", "dream.tau=0.7"])
    saved = checkpoints.load(run / "controller.pt", "controller")
    returns = run_dream(ck, cfg).returns(saved["params"].numpy()[None], report["seeds"])[0]
    np.testing.assert_allclose(report["returns"], returns, atol=1e-4)


def gif_frames(path) -> tuple[int, tuple[int, int], int]:
    """(frames, (width, height), total duration in ms) of a GIF."""
    with Image.open(path) as image:
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            durations.append(image.info["duration"])
        return image.n_frames, image.size, sum(durations)


def test_dream_stage_writes_gifs(copy_run, capsys):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    capsys.readouterr()
    assert cli_stage("dream", ck, ro, "--set", "dream.max_steps=30", "--seed", "3") == 0
    result = last_result(capsys)
    assert set(result["gifs"]) == {"dream", "dream_vs_real"}
    assert result["gifs"]["dream"].endswith("dream/dream_seed3.gif")
    assert 1 <= result["dream_steps"] <= 30 and 1 <= result["real_steps"] <= 50
    assert result["real_return"] == result["real_steps"]  # CartPole pays 1 a step
    # 25 frames a second; Pillow would merge identical neighbouring frames, but these all differ
    frames, size, duration = gif_frames(result["gifs"]["dream"])
    assert size == (2 * 16, 2 * 16)
    assert frames == result["dream_steps"] + 1 and duration == 40 * frames
    frames, size, duration = gif_frames(result["gifs"]["dream_vs_real"])
    assert size == (2 * (16 + 2 + 16), 2 * 16)  # dream | 2-pixel white gap | real, enlarged twice
    assert frames == max(result["dream_steps"], result["real_steps"]) + 1 and duration == 40 * frames


def test_tau_sweep(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    controller = (run / "controller.pt").read_bytes()
    capsys.readouterr()
    assert cli_stage("tau-sweep", ck, ro, "--tau", "0.5", "1.5", "--episodes", "2", "--set", "dream.max_steps=30") == 0
    rows = json.loads((run / "tau_sweep.json").read_text())
    assert rows == last_result(capsys)
    assert [r["tau"] for r in rows] == [0.5, 1.5] and [r["episodes"] for r in rows] == [2, 2]
    for row in rows:
        folder = run / "tau_sweep" / f"tau_{row['tau']:g}"
        assert checkpoints.load(folder / "controller.pt", "controller")["generation"] == 2
        dream, real = (json.loads((folder / name).read_text()) for name in ("report_dream.json", "report.json"))
        assert dream["world"] == "dream" and dream["tau"] == row["tau"] and real["world"] == "real"
        assert (row["dream_mean"], row["real_mean"]) == (dream["mean"], real["mean"])
        assert 1 <= real["mean"] <= 50
        assert not (folder / "vision.pt").exists()  # V and M are the parent run's
    assert (run / "controller.pt").read_bytes() == controller


def test_tau_sweep_refuses_a_negative_tau(copy_run):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    assert cli_stage("tau-sweep", ck, ro, "--tau", "-1", "--episodes", "1", "--set", "dream.max_steps=10") == 2
    assert not (run / "tau_sweep.json").exists()


@pytest.mark.parametrize(
    "override", ['dream.done="bogus"', "dream.tau=-1", 'dream.start="nowhere"', "dream.max_steps=0"]
)
def test_bad_dream_settings_exit_2(copy_run, capsys, override):
    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    assert cli_stage("evaluate", ck, ro, "--world", "dream", "--set", override) == 2
    assert "dream." in capsys.readouterr().err
    assert not (copy_run["dir"] / "report_dream.json").exists()


# ---------------------------------------------------------------- iterative training rounds


def test_pipeline_round_adds_episodes_retrains_and_reports_real_steps(copy_run, copy_rollouts):
    ck, ro, run = copy_run["checkpoints"], copy_rollouts, copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt", "report.json"):  # the copied run searched in the real world
        (run / name).unlink()
    store = ro / "tiny" / "episodes"
    before = json.loads((store / "manifest.json").read_text())["episodes"]
    args = (
        "--set",
        'controller.world="dream"',
        "--set",
        "rounds.count=1",
        "--set",
        "rounds.episodes=2",
        "--set",
        "rounds.generations=1",
        "--set",
        "dream.max_steps=30",
    )
    assert cli_stage("pipeline", ck, ro, *args) == 0
    episodes = json.loads((store / "manifest.json").read_text())["episodes"]
    assert episodes[: len(before)] == before and len(episodes) == len(before) + 2
    new = episodes[len(before) :]
    assert all(e["round"] == 1 for e in new) and len({e["file"] for e in episodes}) == len(episodes)
    for entry in new:  # the manifest's steps and seeds are the files'
        episode = load_episode(store / entry["file"])
        assert entry["steps"] == len(episode["action"]) and entry["seed"] == int(episode["seed"])
    new_steps = sum(e["steps"] for e in new)
    [record] = json.loads((run / "rounds.json").read_text())
    assert record["round"] == 1 and record["episodes"] == 2 and record["real_steps"] == new_steps
    # M trained on: its epochs so far plus the round's; the latents cover the new episodes
    assert checkpoints.load(run / "memory.pt", "memory")["epoch"] == 1 + 5
    assert json.loads((run / "latents" / "manifest.json").read_text())["episodes"] == [e["file"] for e in episodes]
    # C searched one more generation in the new dream
    _, progress, _ = cmaes_state(run)
    assert (progress.round, progress.round_start, progress.generation) == (1, 2, 3)
    assert record["dream_score"] == progress.best_score
    report = json.loads((run / "report.json").read_text())
    assert report["controller_generation"] == checkpoints.load(run / "controller.pt", "controller")["generation"]
    steps = report["real_steps"]
    assert report["controller_world"] == "dream" and set(steps) == {"collect", "round_1", "fidelity", "total"}
    assert steps["round_1"] == new_steps and steps["collect"] == sum(e["steps"] for e in before)
    fidelity = json.loads((run / "controller_fidelity.json").read_text())  # controllers of the history, watched
    assert steps["fidelity"] == fidelity["real_steps"] > 0
    assert steps["collect"] + steps["round_1"] + steps["fidelity"] == steps["total"]
    # the same command again finds everything done
    watched = [
        store / "manifest.json",
        run / "report.json",
        run / "rounds.json",
        run / "memory.pt",
        run / "controller.pt",
        run / "cmaes.pt",
        run / "controller_fidelity.json",
    ]
    contents = {p: p.read_bytes() for p in watched}
    files = sorted(p.name for p in store.glob("ep_*.npz"))
    assert cli_stage("pipeline", ck, ro, *args) == 0
    assert sorted(p.name for p in store.glob("ep_*.npz")) == files
    for p, content in contents.items():
        assert p.read_bytes() == content, p.name


def test_confirm_collects_with_the_last_search_retrains_m_and_keeps_the_better_collector(copy_run, copy_rollouts):
    """rounds.confirm: after the last round, one more round collects with the last search's controller and retrains
    M, with no search after it; of that controller and the one it replaced (round 1's collector), the one the new
    dream scores higher on shared seeds is kept, and evaluated; a rerun changes nothing."""
    ck, ro, run = copy_run["checkpoints"], copy_rollouts, copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt", "report.json"):  # the copied run searched in the real world
        (run / name).unlink()
    settings = ['controller.world="dream"', "rounds.count=1", "rounds.episodes=2", "rounds.generations=2"]
    settings += ["dream.max_steps=30", "controller.eval_every=1", "controller.select_rollouts=4", "rounds.confirm=true"]
    args = [word for setting in settings for word in ("--set", setting)]
    assert cli_stage("pipeline", ck, ro, *args) == 0
    first, confirmation = json.loads((run / "rounds.json").read_text())
    assert first["round"] == 1 and "confirm" not in first
    assert confirmation["round"] == 2 and confirmation["confirm"] and confirmation["candidates"] == [1, 2]
    episodes = json.loads((ro / "tiny" / "episodes" / "manifest.json").read_text())["episodes"]
    assert sum(e.get("round") == 2 for e in episodes) == 2  # the confirmation round's own episodes
    memory = checkpoints.load(run / "memory.pt", "memory")
    assert memory["epoch"] == 1 + 2 * 5  # retrained after the confirmation round, not searched after
    collected = checkpoints.load(run / "collectors.pt", "collectors")["rounds"]
    assert sorted(collected) == [1, 2]
    _, progress, _ = cmaes_state(run)
    assert progress.generation == 4  # 2 generations, then round 1's 2: none after the confirmation
    flats = np.stack([collected[r]["params"].numpy() for r in (1, 2)])
    cfg = config_lib.load(TINY, settings)
    dream = evolution.dream_evaluator(
        cfg, checkpoints.Run(ck, cfg), WorldModel.load(run / "vision.pt", run / "memory.pt")
    )
    scores = dream.returns(flats, stream_seeds(cfg.controller, Stream.ROUND_CONFIRM, 2, 4)).mean(1)
    np.testing.assert_allclose(confirmation["scores"], scores, rtol=1e-5)
    kept = checkpoints.load(run / "controller.pt", "controller")
    np.testing.assert_array_equal(kept["params"].numpy(), flats[scores.argmax()])
    assert (
        kept["generation"] == collected[scores.argmax() + 1]["generation"]
        and confirmation["kept"] == scores.argmax() + 1
    )
    np.testing.assert_array_equal(progress.best, flats[scores.argmax()])
    report = json.loads((run / "report.json").read_text())  # evaluated with the kept controller and the final M
    assert report["controller_generation"] == kept["generation"] and report["memory_id"] == memory["id"]
    before = {name: (run / name).read_bytes() for name in ("controller.pt", "cmaes.pt", "collectors.pt", "report.json")}
    assert cli_stage("pipeline", ck, ro, *args) == 0
    assert {name: (run / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("round_sigma", [0.0, 0.05])
def test_a_round_restarts_the_search_at_the_kept_controller_with_round_sigma(copy_run, round_sigma):
    """rounds.sigma: the round's CMA-ES starts at the kept controller with that step size (and resumes so);
    0 carries the last search on."""
    ck, run = copy_run["checkpoints"], copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt"):  # the copied run searched in the real world
        (run / name).unlink()
    settings = ['controller.world="dream"', "controller.generations=2", "controller.eval_every=1", "dream.max_steps=20"]
    cfg = config_lib.load(TINY, settings + [f"rounds.sigma={round_sigma}", "rounds.generations=1"])
    folder = checkpoints.Run(ck, cfg)
    evolution.train_controller(cfg, folder)
    before, kept, _ = cmaes_state(run)
    assert not np.array_equal(before.mean, kept.best)  # the search's mean moved on from the kept controller
    search = evolution.Search(cfg, folder, evolution.open_world(cfg, folder), 1)
    with search.world.open() as evaluator:
        search.start_round(evaluator)
    es, progress, _ = cmaes_state(run)
    assert progress.round == 1 and np.array_equal(progress.best, kept.best)
    if round_sigma:
        np.testing.assert_array_equal(es.mean, kept.best)
        assert es.sigma == round_sigma and es.countiter == 0
    else:
        np.testing.assert_array_equal(es.mean, before.mean)
        assert es.sigma == before.sigma and es.countiter == before.countiter == 2
    evolution.train_controller(cfg, folder, round=1)  # the round's generation, from the saved state
    after, progress, _ = cmaes_state(run)
    assert progress.generation == 3 and after.countiter == es.countiter + 1


def test_switching_worlds_on_a_search_is_refused(copy_run):
    """A real-world CMA-ES state cannot silently continue in the dream: one line, exit 2, nothing changed."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    before = (run / "cmaes.pt").read_bytes()
    assert cli_stage("train-controller", ck, ro, "--world", "dream", "--set", "controller.generations=5") == 2
    assert (run / "cmaes.pt").read_bytes() == before
