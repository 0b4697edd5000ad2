"""C: the linear controller, its flat CMA-ES form and the mapping onto action spaces."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from worldmodels.controller.linear import Controller, to_action
from worldmodels.core.actions import action_dim

BOX = gym.spaces.Box(low=np.array([-2.0, 0.0], dtype=np.float32), high=np.array([2.0, 1.0], dtype=np.float32))


@pytest.mark.parametrize("y, expected", [(-1.0, [-2.0, 0.0]), (0.0, [0.0, 0.5]), (1.0, [2.0, 1.0]), (0.5, [1.0, 0.75])])
def test_box_mapping_hits_low_mid_high(y, expected):
    action = to_action(np.array([y, y], dtype=np.float32), BOX)
    assert action.dtype == np.float32
    assert action.shape == (2,)
    np.testing.assert_allclose(action, expected, atol=1e-6)


def test_box_mapping_mixed_outputs_and_shape():
    space = gym.spaces.Box(low=-3.0, high=1.0, shape=(2, 2), dtype=np.float32)
    action = to_action(np.array([-1.0, 0.0, 1.0, -0.5]), space)
    assert action.shape == (2, 2)
    np.testing.assert_allclose(action, [[-3.0, -1.0], [1.0, -2.0]], atol=1e-6)


def test_unbounded_box_dimensions_take_raw_output():
    space = gym.spaces.Box(low=np.array([-np.inf, 0.0]), high=np.array([np.inf, 4.0]), dtype=np.float64)
    with np.errstate(all="ignore"):
        action = to_action(np.array([0.3, 0.0]), space)
    np.testing.assert_allclose(action, [0.3, 2.0])


def test_discrete_mapping_is_start_plus_argmax():
    space = gym.spaces.Discrete(3, start=1)
    assert action_dim(space) == 3
    assert to_action(np.array([0.9, -0.2, 0.1]), space) == 1
    assert to_action(np.array([-0.9, 0.5, 0.1]), space) == 2
    assert to_action(np.array([-0.9, -0.5, 0.7]), space) == 3
    assert isinstance(to_action(np.array([0.0, 1.0, 0.0]), space), int)


@pytest.mark.parametrize("space, out", [(gym.spaces.Discrete(3), 3), (BOX, 2), (gym.spaces.Box(-1, 1, (3,)), 3)])
def test_num_params(space, out):
    c = Controller(7, space)
    assert c.out == out
    assert c.num_params == out * (7 + 1)
    assert c.to_flat().shape == (1, c.num_params)
    assert not c.to_flat().any()


def test_flat_round_trip_single():
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(2 * (5 + 1))
    c = Controller.from_flat(flat, 5, BOX)
    assert c.weight.shape == (1, 2, 5) and c.bias.shape == (1, 2)
    # W row-major, then b
    np.testing.assert_allclose(c.weight[0].numpy(), flat[:10].reshape(2, 5), rtol=1e-6)
    np.testing.assert_allclose(c.bias[0].numpy(), flat[10:], rtol=1e-6)
    np.testing.assert_allclose(c.to_flat(), flat[None].astype(np.float32))


def test_flat_round_trip_population():
    rng = np.random.default_rng(1)
    flats = rng.standard_normal((4, 3 * (6 + 1))).astype(np.float32)
    c = Controller.from_flat(flats, 6, gym.spaces.Discrete(3))
    assert c.weight.shape == (4, 3, 6)
    np.testing.assert_array_equal(c.to_flat(), flats)
    np.testing.assert_array_equal(Controller.from_flat(c.to_flat(), 6, gym.spaces.Discrete(3)).to_flat(), flats)


def test_outputs_are_tanh_of_affine_map():
    rng = np.random.default_rng(2)
    z_dim, h_dim = 3, 4
    flat = rng.standard_normal(2 * (z_dim + h_dim + 1))
    c = Controller.from_flat(flat, z_dim + h_dim, BOX)
    z, h = rng.standard_normal((1, z_dim)), rng.standard_normal((1, h_dim))
    W, b = flat[: 2 * 7].reshape(2, 7), flat[2 * 7 :]
    expected = np.tanh(W @ np.concatenate([z[0], h[0]]) + b)
    got = c.outputs(torch.tensor(z, dtype=torch.float32), torch.tensor(h, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-5, atol=1e-6)
    action = c.act(torch.tensor(z), torch.tensor(h))[0]
    np.testing.assert_allclose(action, [-2 + (expected[0] + 1) * 2, (expected[1] + 1) / 2], rtol=1e-5, atol=1e-6)


def test_population_outputs_equal_separate_controllers():
    rng = np.random.default_rng(3)
    P, z_dim, h_dim = 5, 4, 6
    space = gym.spaces.Discrete(3)
    flats = rng.standard_normal((P, 3 * (z_dim + h_dim + 1)))
    z = torch.tensor(rng.standard_normal((P, z_dim)), dtype=torch.float32)
    h = torch.tensor(rng.standard_normal((P, h_dim)), dtype=torch.float32)
    population = Controller.from_flat(flats, z_dim + h_dim, space)
    together = population.outputs(z, h)
    separate = torch.cat(
        [Controller.from_flat(flats[p], z_dim + h_dim, space).outputs(z[p : p + 1], h[p : p + 1]) for p in range(P)]
    )
    torch.testing.assert_close(together, separate, rtol=1e-5, atol=1e-6)
    # rows pick controllers for the rows of z and h, in order
    rows = [4, 1, 2]
    picked = population.outputs(z[rows], h[rows], rows=rows)
    torch.testing.assert_close(picked, separate[rows], rtol=1e-5, atol=1e-6)
    assert population.act(z[rows], h[rows], rows=rows) == [int(np.argmax(y)) for y in separate[rows].numpy()]
    # the controllers really differ, or the comparison above would prove little
    assert len({tuple(np.round(y, 4)) for y in together.numpy()}) == P
