"""M's dropout, kept on while dreaming ("Dropout's Dream Land"): masks from the episode's seed and step only."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldmodels import config as config_lib
from worldmodels.config import DreamConfig, MemoryConfig
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.memory import MDNRNN
from worldmodels.worlds.dream import Dream, play_dream

Z, H, K = 3, 6, 2
SPACE = gym.spaces.Box(-1, 1, (2,), np.float32)
STARTS = torch.tensor([[[0.0, 1.0, -1.0], [-1.0, -1.0, -1.0]], [[2.0, 0.0, 0.0], [-2.0, -2.0, -2.0]]])


def memory(dropout: float) -> MDNRNN:
    torch.manual_seed(3)
    return MDNRNN(MemoryConfig(hidden_size=H, num_gaussians=K, dropout=dropout), Z, 2).eval()


def returns(m: MDNRNN, dropout: bool, seeds: list[int], batch: int = 0) -> np.ndarray:
    dream = Dream(m, DreamConfig(max_steps=15, done="never", dropout=dropout), STARTS)
    flat = np.random.default_rng(1).standard_normal((len(seeds), Controller(Z + H, SPACE).num_params))
    return play_dream(dream, Controller.from_flat(flat, Z + H, SPACE), seeds, batch)[0]


SEEDS = [5, 9, 2**31 - 3, 0, 41]


def test_dropout_changes_the_dream_only_where_enabled():
    plain = returns(memory(0.0), False, SEEDS)
    # an M trained with dropout dreams exactly as without it unless the dream keeps dropout on
    np.testing.assert_array_equal(returns(memory(0.3), False, SEEDS), plain)
    np.testing.assert_array_equal(returns(memory(0.0), True, SEEDS), plain)  # nothing to keep on
    kept = returns(memory(0.3), True, SEEDS)
    assert not np.allclose(kept, plain)


def test_dream_dropout_masks_depend_only_on_seed_and_step():
    m = memory(0.3)
    together = returns(m, True, SEEDS)
    np.testing.assert_allclose(returns(m, True, SEEDS, batch=1), together, atol=1e-5)
    np.testing.assert_allclose(returns(m, True, SEEDS, batch=2), together, atol=1e-5)


def test_dream_dropout_drops_its_fraction_and_rescales():
    m = memory(0.25)
    dream = Dream(m, DreamConfig(done="never", dropout=True), STARTS)
    seen = []
    original = m._predict
    m._predict = lambda out, keep=None: seen.append(keep) or original(out, keep)
    dream.reset(torch.arange(2000))
    dream.step(torch.zeros(2000, 2))
    keep = seen[0]
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.75, abs=0.01)
    out = torch.ones(1, H)
    # kept units are scaled by 1 / (1 - p), so the head sees the expected activation of training
    torch.testing.assert_close(original(out, torch.ones(1, H)).reward, m.head(out / 0.75)[..., -2])


def test_training_dropout_is_random_and_eval_is_not():
    m = memory(0.5)
    z, a = torch.randn(4, 7, Z), torch.randn(4, 7, 2)
    m.train()
    assert not torch.equal(m(z, a)[0].reward, m(z, a)[0].reward)
    m.eval()
    assert torch.equal(m(z, a)[0].reward, m(z, a)[0].reward)


def test_bad_dropout_is_one_line():
    with pytest.raises(WorldModelsError, match="memory.dropout"):
        config_lib.from_dict({"memory": {"dropout": 1.0}})
