"""M, the MDN-RNN: mixture likelihood, loss masking, temperature sampling, forward/step, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldmodels.config import MemoryConfig
from worldmodels.memory import MDNRNN, SIGMA_MIN, Prediction, memory_loss, mixture_log_prob, sample


def random_prediction(shape: tuple[int, ...], z: int, k: int, seed: int = 0) -> Prediction:
    g = torch.Generator().manual_seed(seed)
    return Prediction(
        logit_pi=torch.randn(*shape, z, k, generator=g, dtype=torch.float64),
        mu=torch.randn(*shape, z, k, generator=g, dtype=torch.float64),
        sigma=torch.rand(*shape, z, k, generator=g, dtype=torch.float64) * 1.5 + 0.2,
        reward=torch.randn(*shape, generator=g, dtype=torch.float64),
        done_logit=torch.randn(*shape, generator=g, dtype=torch.float64),
    )


def brute_log_prob(pred: Prediction, target: torch.Tensor) -> np.ndarray:
    """log prod_z sum_k pi_k N(x_z; mu_zk, sigma_zk), with explicit loops and `math`."""
    logit, mu, sigma, x = (t.numpy() for t in (pred.logit_pi, pred.mu, pred.sigma, target))
    out = np.zeros(x.shape[:-1])
    for idx in np.ndindex(*x.shape[:-1]):
        total = 0.0
        for d in range(x.shape[-1]):
            logits = logit[idx + (d,)]
            norm = sum(math.exp(value) for value in logits)
            density = 0.0
            for c in range(len(logits)):
                pi = math.exp(logits[c]) / norm
                s, m = sigma[idx + (d, c)], mu[idx + (d, c)]
                density += pi * math.exp(-0.5 * ((x[idx + (d,)] - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            total += math.log(density)
        out[idx] = total
    return out


def test_mixture_log_prob_matches_brute_force():
    pred = random_prediction((3, 4), z=5, k=3, seed=1)
    target = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = mixture_log_prob(pred, target)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), brute_log_prob(pred, target), rtol=1e-10, atol=1e-10)


def test_mixture_log_prob_single_component_is_gaussian():
    pred = random_prediction((7,), z=2, k=1, seed=3)
    target = torch.randn(7, 2, dtype=torch.float64)
    normal = torch.distributions.Normal(pred.mu[..., 0], pred.sigma[..., 0])
    torch.testing.assert_close(mixture_log_prob(pred, target), normal.log_prob(target).sum(-1))


def test_memory_loss_nll_is_masked_mean_per_dimension():
    B, T, Z, K = 3, 5, 4, 2
    pred = random_prediction((B, T), Z, K, seed=4)
    g = torch.Generator().manual_seed(5)
    next_z = torch.randn(B, T, Z, generator=g, dtype=torch.float64)
    reward = torch.randn(B, T, generator=g, dtype=torch.float64)
    done = (torch.rand(B, T, generator=g) < 0.3).double()
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, 3:] = 0
    mask[2, 1:] = 0

    out = memory_loss(pred, next_z, reward, done, mask, done_weight=10.0, reward_weight=0.5, done_loss_weight=2.0)

    logp = brute_log_prob(pred, next_z)  # (B, T), summed over Z
    m = mask.numpy().astype(bool)
    assert out["nll"].item() == pytest.approx(-logp[m].sum() / (m.sum() * Z), rel=1e-10)
    r = reward.numpy()
    assert out["reward"].item() == pytest.approx(((pred.reward.numpy() - r) ** 2)[m].mean(), rel=1e-10)
    p = 1 / (1 + np.exp(-pred.done_logit.numpy()))
    d = done.numpy()
    bce = -(10.0 * d * np.log(p) + (1 - d) * np.log(1 - p))
    assert out["done"].item() == pytest.approx(bce[m].mean(), rel=1e-10)
    total = out["nll"] + 0.5 * out["reward"] + 2.0 * out["done"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-12)


def test_memory_loss_ignores_masked_steps():
    B, T, Z, K = 2, 6, 3, 2
    pred = random_prediction((B, T), Z, K, seed=6)
    next_z = torch.randn(B, T, Z, dtype=torch.float64)
    reward, done = torch.randn(B, T, dtype=torch.float64), torch.zeros(B, T, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[1, 2:] = 0
    before = memory_loss(pred, next_z, reward, done, mask)

    changed = random_prediction((B, T), Z, K, seed=99)
    pred2 = pred.map(torch.clone)
    for name in ("logit_pi", "mu", "sigma", "reward", "done_logit"):
        getattr(pred2, name)[1, 2:] = getattr(changed, name)[1, 2:]
    next_z2, reward2, done2 = next_z.clone(), reward.clone(), done.clone()
    next_z2[1, 2:] += 7.0
    reward2[1, 2:] -= 3.0
    done2[1, 2:] = 1.0
    after = memory_loss(pred2, next_z2, reward2, done2, mask)
    for key in ("loss", "nll", "reward", "done"):
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-12), key

    # ...while a change at an unmasked step does move it
    next_z2[0, 0] += 1.0
    assert memory_loss(pred2, next_z2, reward2, done2, mask)["nll"].item() != pytest.approx(before["nll"].item())


# ---------------------------------------------------------------- temperature sampling

N = 40_000


def single_component(mu: float, sigma: float, n: int = N) -> Prediction:
    shape = (n, 1, 1)
    return Prediction(
        torch.zeros(shape), torch.full(shape, mu), torch.full(shape, sigma), torch.zeros(n), torch.zeros(n)
    )


def two_components(n: int = N) -> Prediction:
    """pi = [0.8, 0.2], means -10 and +10, tiny spread: the component of a draw is its sign."""
    logits = torch.log(torch.tensor([0.8, 0.2])).expand(n, 1, 2).clone()
    mu = torch.tensor([-10.0, 10.0]).expand(n, 1, 2).clone()
    sigma = torch.full((n, 1, 2), 0.1)
    return Prediction(logits, mu, sigma, torch.zeros(n), torch.zeros(n))


def test_tau_zero_returns_mean_of_most_likely_component():
    pred = two_components(10)
    pred.mu[..., 0] = torch.arange(10.0)[:, None]
    np.testing.assert_array_equal(sample(pred, 0.0).squeeze(-1).numpy(), np.arange(10.0))
    one = single_component(1.5, 0.7, 100)
    assert torch.equal(sample(one, 0.0), torch.full((100, 1), 1.5))


@pytest.mark.parametrize("tau, factor", [(1.0, 1.0), (0.25, 0.5), (2.0, math.sqrt(2.0))])
def test_sample_spread_scales_with_sqrt_tau(tau, factor):
    g = torch.Generator().manual_seed(7)
    draws = sample(single_component(1.5, 0.7), tau, generator=g).numpy()
    assert draws.shape == (N, 1)
    assert draws.mean() == pytest.approx(1.5, abs=0.02)
    assert draws.std() == pytest.approx(0.7 * factor, rel=0.03)


def test_larger_tau_gives_larger_spread():
    pred = random_prediction((5000,), z=2, k=3, seed=8)
    pred = pred.map(lambda t: t.float())
    stds = [sample(pred, tau, generator=torch.Generator().manual_seed(9)).std().item() for tau in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(stds, stds[1:])), stds


@pytest.mark.parametrize(
    "tau, expected", [(1.0, 0.8), (2.0, math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2))), (0.1, 1.0)]
)
def test_mixture_weights_sharpen_with_low_tau(tau, expected):
    draws = sample(two_components(), tau, generator=torch.Generator().manual_seed(10))
    fraction_first = (draws < 0).float().mean().item()
    assert fraction_first == pytest.approx(expected, abs=0.01)


def test_sample_is_reproducible_with_a_generator():
    pred = random_prediction((50,), z=3, k=4, seed=11)
    a = sample(pred, 1.0, generator=torch.Generator().manual_seed(12))
    b = sample(pred, 1.0, generator=torch.Generator().manual_seed(12))
    c = sample(pred, 1.0, generator=torch.Generator().manual_seed(13))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- the model


def make_model(seed: int = 0, z: int = 4, a: int = 2, h: int = 16, k: int = 3) -> MDNRNN:
    torch.manual_seed(seed)
    return MDNRNN(MemoryConfig(hidden_size=h, num_gaussians=k), latent_dim=z, action_dim=a)


def test_forward_shapes():
    model = make_model()
    B, T = 3, 7
    pred, (h, c) = model(torch.randn(B, T, 4), torch.randn(B, T, 2))
    assert pred.logit_pi.shape == pred.mu.shape == pred.sigma.shape == (B, T, 4, 3)
    assert pred.reward.shape == pred.done_logit.shape == (B, T)
    assert h.shape == c.shape == (1, B, 16)
    assert (pred.sigma >= SIGMA_MIN).all()
    assert MDNRNN.hidden((h, c)).shape == (B, 16)


def test_step_equals_forward():
    model = make_model(seed=1)
    B, T = 2, 6
    z, a = torch.randn(B, T, 4), torch.randn(B, T, 2)
    with torch.no_grad():
        full, final = model(z, a)
        state = model.initial_state(B)
        for t in range(T):
            pred, state = model.step(z[:, t], a[:, t], state)
            assert pred.mu.shape == (B, 4, 3)
            assert pred.reward.shape == (B,)
            for name in ("logit_pi", "mu", "sigma", "reward", "done_logit"):
                torch.testing.assert_close(getattr(pred, name), getattr(full, name)[:, t], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[0], final[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[1], final[1], rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss():
    """100 Adam steps on a synthetic, predictable sequence: z_{t+1} = 0.9 z_t + a_t[0] (+ small noise)."""
    g = torch.Generator().manual_seed(0)
    B, T, Z = 16, 20, 4
    z = torch.zeros(B, T + 1, Z)
    z[:, 0] = torch.randn(B, Z, generator=g)
    a = torch.randn(B, T, 2, generator=g)
    for t in range(T):
        z[:, t + 1] = 0.9 * z[:, t] + a[:, t, :1] + 0.05 * torch.randn(B, Z, generator=g)
    reward = z[:, 1:, 0]
    done = torch.zeros(B, T)
    done[:, -1] = 1
    mask = torch.ones(B, T)

    model = make_model(seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> dict:
        pred, _ = model(z[:, :-1], a)
        return memory_loss(pred, z[:, 1:], reward, done, mask)

    first = {k: v.item() for k, v in loss().items()}
    for _ in range(100):
        out = loss()
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    last = {k: v.item() for k, v in loss().items()}
    assert last["loss"] < first["loss"] - 1.0, (first, last)
    assert last["nll"] < first["nll"] - 0.5, (first, last)
    assert last["reward"] < 0.5 * first["reward"], (first, last)


def test_reward_from_next_reads_the_next_latent_given():
    """reward_from = "next": reward and done are the outcome MLP on [h_{t+1}, z_{t+1}]; the mixture ignores z_{t+1}."""
    torch.manual_seed(3)
    model = MDNRNN(MemoryConfig(hidden_size=16, num_gaussians=3, reward_from="next"), latent_dim=4, action_dim=2)
    z, a, nxt = torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.randn(2, 5, 4)
    with torch.no_grad():
        bare, _ = model(z, a)
        assert bare.reward.isnan().all() and bare.done_logit.isnan().all()  # nothing to read it from yet
        pred, _ = model(z, a, next_z=nxt)
        other, _ = model(z, a, next_z=nxt + 1.0)
        out, _ = model.lstm(torch.cat([z, a], -1))
        by_hand = model.outcome[2](F.elu(model.outcome[0](torch.cat([out, nxt], -1))))
    torch.testing.assert_close(pred.reward, by_hand[..., 0])
    torch.testing.assert_close(pred.done_logit, by_hand[..., 1])
    torch.testing.assert_close(pred.mu, other.mu)
    assert not torch.allclose(pred.reward, other.reward)


@pytest.mark.parametrize("reward_from, at_least, at_most", [("next", 0.8, 1.0), ("hidden", -math.inf, 0.2)])
def test_a_reward_of_the_next_frame_is_learnt_only_from_it(reward_from, at_least, at_most):
    """z_{t+1} is fresh noise and the reward is |z_{t+1}[0]|: h cannot know it (held-out R^2 near 0), [h, z_{t+1}]
    can."""
    g = torch.Generator().manual_seed(0)
    B, T, Z = 32, 12, 2
    z, a = torch.randn(B, T + 1, Z, generator=g), torch.zeros(B, T, 2)
    reward, done, mask = z[:, 1:, 0].abs(), torch.zeros(B, T), torch.ones(B, T)
    held = torch.randn(B, T + 1, Z, generator=g)
    torch.manual_seed(0)
    model = MDNRNN(MemoryConfig(hidden_size=16, num_gaussians=2, reward_from=reward_from), latent_dim=Z, action_dim=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        pred, _ = model(z[:, :-1], a, next_z=z[:, 1:])
        loss = memory_loss(pred, z[:, 1:], reward, done, mask, reward_weight=10.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred, _ = model(held[:, :-1], a, next_z=held[:, 1:])
    actual = held[:, 1:, 0].abs()
    r2 = 1 - float(((pred.reward - actual) ** 2).sum() / ((actual - actual.mean()) ** 2).sum())
    assert at_least <= r2 <= at_most, r2
