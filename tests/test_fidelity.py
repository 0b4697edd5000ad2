"""Fidelity diagnostics: M's reward and done predictions on held-out episodes, dream vs real ranking of controllers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.config import MemoryConfig
from worldmodels.controller import search_state
from worldmodels.data.latents import LatentEpisode, load_latents, start_latents
from worldmodels.memory import MDNRNN
from worldmodels.play.backends import real_evaluator
from worldmodels.runs import checkpoints
from worldmodels.stages import evolution, fidelity
from worldmodels.worlds.real import action_space


def test_r_squared_against_hand_values():
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    assert fidelity.r_squared(actual, actual) == 1.0
    assert fidelity.r_squared(np.full(4, 2.5), actual) == 0.0  # the mean predicts nothing
    # SSE = 0.25 * 4 = 1, SST = 5
    assert fidelity.r_squared(actual + 0.5, actual) == pytest.approx(1 - 1 / 5)
    assert fidelity.r_squared(actual, np.ones(4)) is None


def test_rank_correlation_against_a_hand_computed_spearman():
    dream, real = np.array([10.0, 30.0, 20.0, 40.0, 50.0]), np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    # ranks 1 3 2 4 5 vs 1 2 3 5 4: d^2 = 0 1 1 1 1 = 4; rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert fidelity.rank_correlation(dream, real) == pytest.approx(0.8)
    assert fidelity.rank_correlation(dream, -real) == pytest.approx(-0.8)
    assert fidelity.rank_correlation(np.ones(5), real) is None


def test_spread_keeps_first_and_last_evenly():
    history = list(range(10))
    assert fidelity.spread(history, 4) == [0, 3, 6, 9]
    assert fidelity.spread(history, 20) == history
    assert fidelity.spread(history[:1], 6) == [0]


def test_holdout_is_stable_as_episodes_are_added_and_near_its_fraction():
    names = [f"ep_{i:06d}.npz" for i in range(2000)]
    held = {n for n in names if fidelity.held_out(n, 0.1)}
    assert 150 < len(held) < 250
    more = names + [f"round01_{i:06d}.npz" for i in range(500)]
    assert {n for n in more if fidelity.held_out(n, 0.1)} & set(names) == held
    assert not any(fidelity.held_out(n, 0.0) for n in names)


def _episode(rewards: np.ndarray, done_at: int | None, z_dim: int = 3) -> LatentEpisode:
    steps = len(rewards)
    done = np.zeros(steps, dtype=bool)
    if done_at is not None:
        done[done_at] = True
    mu = np.random.default_rng(steps).standard_normal((steps + 1, z_dim)).astype(np.float32)
    return LatentEpisode(mu, np.zeros_like(mu), np.zeros((steps, 2), np.float32), rewards.astype(np.float32), done)


def test_memory_report_against_brute_force():
    torch.manual_seed(0)
    memory = MDNRNN(MemoryConfig(hidden_size=5, num_gaussians=2), latent_dim=3, action_dim=2).eval()
    episodes = [_episode(np.arange(6.0), 2), _episode(np.ones(4), None), _episode(np.linspace(-1, 1, 5), 4)]
    report = fidelity.memory_report(memory, episodes, "held-out")
    predicted, p_done = zip(*(fidelity.predicted_rewards(memory, e) for e in episodes))
    steps = np.concatenate(predicted)
    actual = np.concatenate([e.reward for e in episodes])
    sse, sst = ((steps - actual) ** 2).sum(), ((actual - actual.mean()) ** 2).sum()
    assert report["reward_r2"] == pytest.approx(1 - sse / sst)
    returns, real_returns = np.array([p.sum() for p in predicted]), np.array([e.reward.sum() for e in episodes])
    expected = 1 - ((returns - real_returns) ** 2).sum() / ((real_returns - real_returns.mean()) ** 2).sum()
    assert report["return_r2"] == pytest.approx(expected)
    # AUC by its definition: P(score of a positive > score of a negative)
    scores, labels = np.concatenate(p_done), np.concatenate([e.done for e in episodes])
    pos, neg = scores[labels], scores[~labels]
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert report["done_auc"] == pytest.approx(auc) and report["done_positives"] == 2
    assert report["steps"] == 15 and report["episodes"] == 3
    # the reward M predicts at step t is the one of its step with (z_t, a_t): the teacher-forced sequence
    z = torch.from_numpy(episodes[0].mu[:-1])
    state = memory.initial_state(1)
    for t in range(3):
        prediction, state = memory.step(z[t : t + 1], torch.zeros(1, 2), state)
        assert float(prediction.reward[0]) == pytest.approx(predicted[0][t], abs=1e-6)


def test_memory_report_without_dones_has_no_auc():
    memory = MDNRNN(MemoryConfig(hidden_size=4, num_gaussians=1), latent_dim=3, action_dim=2).eval()
    report = fidelity.memory_report(memory, [_episode(np.arange(4.0), None)], "train")
    assert report["done_auc"] is None and report["done_positives"] == 0


def test_train_memory_holds_out_episodes_and_reports_on_them(copy_run, capsys):
    (copy_run["dir"] / "memory.pt").unlink()
    assert cli_stage("train-memory", copy_run["checkpoints"], copy_run["rollouts"], "--set", "memory.holdout=0.5") == 0
    report = json.loads((copy_run["dir"] / "memory_fidelity.json").read_text())
    names = json.loads((copy_run["dir"] / "latents" / "manifest.json").read_text())["episodes"]
    held = [n for n in names if fidelity.held_out(n, 0.5)]
    assert 0 < len(held) < len(names)  # the tiny store's 6 episodes split at this fraction
    assert report["split"] == "held-out" and report["episodes"] == len(held)
    assert "memory fidelity (held-out" in capsys.readouterr().out


def test_controller_fidelity_after_a_dream_search(copy_run, capsys):
    """Dream and real returns of the search's contenders, each against a re-measurement, and their Spearman."""
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt"):  # the copied run's controller was trained in the real world
        (run / name).unlink()
    args = (
        "--world",
        "dream",
        "--set",
        "dream.max_steps=30",
        "--set",
        "controller.fidelity_controllers=3",
        "--set",
        "controller.fidelity_episodes=2",
    )
    assert cli_stage("train-controller", ck, ro, *args) == 0
    report = json.loads((run / "controller_fidelity.json").read_text())
    _, progress, _ = search_state.load(run / "cmaes.pt")
    # 2 generations re-evaluated every generation: 4 contenders, of which 3 are spread over the history
    assert len(progress.history) == 4 and [c["generation"] for c in report["controllers"]] == [1, 2, 2]
    picked = fidelity.spread(progress.history, 3)
    flat = np.stack([h["params"] for h in picked])
    cfg = config_lib.load(TINY, ['controller.world="dream"', "dream.max_steps=30"])
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    with evolution.DreamEvaluator(
        model, cfg.dream, start_latents(load_latents(checkpoints.Run(ck, cfg))), action_space(cfg.env)
    ) as dream:
        dreamt = dream.returns(
            flat, evolution.stream_seeds(cfg.controller, evolution.Stream.FIDELITY, 0, cfg.controller.eval_rollouts)
        )
    with real_evaluator(cfg, run / "vision.pt", run / "memory.pt", 1) as world:
        real = world.returns(flat, report["real_seeds"])
    np.testing.assert_allclose([c["dream"] for c in report["controllers"]], dreamt.mean(1), atol=1e-4)
    np.testing.assert_allclose([c["real"] for c in report["controllers"]], real.mean(1))
    assert report["spearman"] == fidelity.rank_correlation(dreamt.mean(1), real.mean(1))
    assert report["real_steps"] == real.sum()  # CartPole pays 1 a step
    assert "Spearman" in capsys.readouterr().out
    # again: up to date, nothing replayed
    before = (run / "controller_fidelity.json").read_bytes()
    assert cli_stage("train-controller", ck, ro, *args) == 0
    assert (run / "controller_fidelity.json").read_bytes() == before
