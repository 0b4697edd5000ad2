"""V, the conv VAE: shapes, the KL term, the free-bits floor, learning."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY

from worldmodels import config as config_lib
from worldmodels.config import VisionConfig
from worldmodels.vision import ConvVAE, Latent, build_vision, vision_config


def make_vae(frame_size: int = 16, latent_dim: int = 4, seed: int = 0, **kwargs) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(VisionConfig(latent_dim=latent_dim, channels=[4, 8, 8, 8], **kwargs), frame_size)


@pytest.mark.parametrize("size", [16, 64])
def test_encode_decode_shapes(size):
    vae = make_vae(size, latent_dim=5)
    x = torch.rand(3, 3, size, size)
    latent = vae.encode(x)
    assert latent.mean.shape == latent.logstd.shape == (3, 5)
    assert latent.sample().shape == (3, 5)
    recon = vae.decode(latent.mean)
    assert recon.shape == (3, 3, size, size)
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output
    assert vae.sample(2).shape == (2, 3, size, size)
    out = vae.loss(x)
    assert set(out) >= {"loss", "recon", "kl"} and all(v.dim() == 0 for v in out.values())


def test_default_channels_at_64():
    torch.manual_seed(0)
    vae = ConvVAE(VisionConfig())
    assert vae.decode(vae.encode(torch.rand(1, 3, 64, 64)).mean).shape == (1, 3, 64, 64)


def test_latent_sample_uses_logstd():
    latent = Latent(torch.full((20000, 1), 2.0), torch.full((20000, 1), -1.0))
    draws = latent.sample()
    assert draws.mean().item() == pytest.approx(2.0, abs=0.01)
    assert draws.std().item() == pytest.approx(torch.exp(torch.tensor(-1.0)).item(), rel=0.03)
    assert torch.equal(Latent(torch.ones(2, 3)).sample(), torch.ones(2, 3))


def fixed_latent(vae: ConvVAE, mean: torch.Tensor, logstd: torch.Tensor) -> None:
    """Make `vae.encode` return the given latent (the decoder stays real)."""
    vae.encode = lambda x: Latent(mean, logstd)


def test_kl_equals_closed_form():
    vae = make_vae(free_bits=0.0)
    g = torch.Generator().manual_seed(1)
    mean, logstd = torch.randn(6, 4, generator=g), 0.5 * torch.randn(6, 4, generator=g)
    fixed_latent(vae, mean, logstd)
    torch.manual_seed(2)
    out = vae.loss(torch.rand(6, 3, 16, 16))
    expected = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, logstd.exp()), torch.distributions.Normal(0.0, 1.0)
        )
        .sum(1)
        .mean()
    )
    assert out["kl"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + expected.item(), rel=1e-5)


def test_recon_is_summed_squared_error_per_frame_averaged_over_batch():
    vae = make_vae()
    x = torch.rand(5, 3, 16, 16)
    fixed_latent(vae, torch.zeros(5, 4), torch.full((5, 4), -30.0))  # no sampling noise to speak of
    out = vae.loss(x)
    expected = (vae.decode(torch.zeros(5, 4)) - x).pow(2).sum((1, 2, 3)).mean()
    assert out["recon"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_weight_scales_the_kl_term():
    mean, logstd = torch.full((2, 4), 1.5), torch.full((2, 4), 0.3)
    losses = []
    for weight in (1.0, 3.0):
        vae = make_vae(free_bits=0.0, kl_weight=weight)
        fixed_latent(vae, mean, logstd)
        torch.manual_seed(0)
        out = vae.loss(torch.rand(2, 3, 16, 16))
        losses.append((out["loss"] - out["recon"]).item() / out["kl"].item())
    assert losses == pytest.approx([1.0, 3.0], rel=1e-5)


def kl_term_gradient(vae: ConvVAE, mean: torch.Tensor, logstd: torch.Tensor):
    mean, logstd = mean.clone().requires_grad_(), logstd.clone().requires_grad_()
    fixed_latent(vae, mean, logstd)
    out = vae.loss(torch.rand(4, 3, 16, 16))
    kl_part = out["loss"] - out["recon"]
    kl_part.backward()
    return out, kl_part.item(), mean.grad, logstd.grad


def test_free_bits_floor_below():
    free_bits, Z = 0.5, 4
    vae = make_vae(latent_dim=Z, free_bits=free_bits)
    out, kl_part, grad_mean, grad_logstd = kl_term_gradient(vae, torch.full((4, Z), 0.1), torch.full((4, Z), -0.05))
    assert out["kl"].item() < free_bits * Z  # below the floor...
    assert kl_part == pytest.approx(free_bits * Z, rel=1e-6)  # ...the loss is recon + floor
    assert torch.count_nonzero(grad_mean) == 0 and torch.count_nonzero(grad_logstd) == 0


def test_free_bits_floor_above():
    free_bits, Z, B = 0.5, 4, 4
    vae = make_vae(latent_dim=Z, free_bits=free_bits)
    mean, logstd = torch.full((B, Z), 1.0), torch.full((B, Z), 0.5)
    out, kl_part, grad_mean, grad_logstd = kl_term_gradient(vae, mean, logstd)
    assert out["kl"].item() > free_bits * Z
    assert kl_part == pytest.approx(out["kl"].item(), rel=1e-6)
    # d/dmu 0.5 mean_b sum_z mu^2 = mu / B ; d/dlogstd = (exp(2 logstd) - 1) / B
    torch.testing.assert_close(grad_mean, mean / B)
    torch.testing.assert_close(grad_logstd, (torch.exp(2 * logstd) - 1) / B)


def test_training_lowers_reconstruction():
    torch.manual_seed(0)
    # a fixed batch of simple pictures: a bright square on a coloured background, at different places
    x = torch.zeros(16, 3, 16, 16)
    for i in range(16):
        x[i, i % 3] = 0.3
        r, c = (i * 5) % 12, (i * 7) % 12
        x[i, :, r : r + 4, c : c + 4] = 1.0
    vae = make_vae(seed=1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)

    def recon() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(vae.loss(x)["recon"].item() for _ in range(3)) / 3

    before = recon()
    for _ in range(60):
        out = vae.loss(x)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    after = recon()
    assert after < 0.6 * before, (before, after)


def test_vision_config_from_recipe_builds_the_model():
    cfg = config_lib.load(TINY, ["vision.free_bits=0.25"])
    model_config = vision_config(cfg)
    assert model_config == {
        "model": "vae",
        "frame_size": 16,
        "latent_dim": 4,
        "channels": [4, 8, 8, 8],
        "free_bits": 0.25,
        "kl_weight": 1.0,
    }
    model = build_vision(model_config)
    assert isinstance(model, ConvVAE) and model.latent_dim == 4 and model.cfg.free_bits == 0.25
    assert model.encode(torch.rand(2, 3, 16, 16)).mean.shape == (2, 4)
