"""NVAE: the residual-normal KL, spectral norms, sizes from the recipe, the training step, and a run through the CLI."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import cast

import pytest
import torch
from helpers import TESTS, TINY, cli_stage, run_cli
from torch import nn

from worldmodels import config as config_lib
from worldmodels.agent import load_memory, load_vision
from worldmodels.config import VisionConfig
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints
from worldmodels.vision import NVAE, build_vision, vision_config
from worldmodels.vision.base import stored_config
from worldmodels.vision.nvae import SpectralNorms, residual_normal, soft_clamp


def nvae_config(**fields) -> SimpleNamespace:
    """An NVAE's config as its checkpoint stores it (flat), the recipe's defaults where not given."""
    return SimpleNamespace(**(stored_config(VisionConfig(model="nvae"), 64, NVAE.SHAPING) | fields))


def built(stored: SimpleNamespace) -> NVAE:
    """The NVAE a stored config describes, built from the [vision] section it was made from."""
    return cast(NVAE, build_vision(vars(stored)))


# Two recipe sizes: the default layout (two scales, two groups each) and a deeper, narrower one.
SMALL = nvae_config(
    frame_size=16, latent_dim=8, base_channels=4, scales=[2, 4], groups_per_scale=2, latent_channels=2, top_groups=1
)
DEEP = nvae_config(
    frame_size=32,
    latent_dim=8,
    base_channels=2,
    scales=[2, 4, 8],
    groups_per_scale=2,
    latent_channels=1,
    top_groups=2,
    cells_per_group=2,
)


def test_residual_normal_kl_matches_the_closed_form_of_two_gaussians():
    torch.manual_seed(0)
    prior_mean, prior_logstd, delta_mean, delta_logstd = torch.randn(4, 2, 3, 5).unbind(0)
    mean, logstd, kl = residual_normal(prior_mean, prior_logstd, delta_mean, delta_logstd)
    torch.testing.assert_close(mean, prior_mean + delta_mean)
    torch.testing.assert_close(logstd.exp(), prior_logstd.exp() * delta_logstd.exp())  # sigma_q = sigma_p * dsigma
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, logstd.exp()), torch.distributions.Normal(prior_mean, prior_logstd.exp())
    )
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    # by hand for one element: KL(N(1, 2^2) || N(0, 1)) = 0.5 (1 + 4 - 1) - log 2
    _, _, one = residual_normal(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.tensor([math.log(2.0)]))
    assert one.item() == pytest.approx(2 - math.log(2), abs=1e-6)


def test_residual_normal_kl_is_zero_when_the_posterior_is_the_prior_wherever_the_prior_is():
    prior_mean, prior_logstd = torch.randn(10) * 3, torch.randn(10)
    _, _, kl = residual_normal(prior_mean, prior_logstd, torch.zeros(10), torch.zeros(10))
    assert kl.abs().max().item() < 1e-6


def test_soft_clamp_bounds_log_scales_and_is_near_identity_close_to_zero():
    x = torch.tensor([-1e4, -0.1, 0.0, 0.1, 1e4])
    y = soft_clamp(x)
    assert y.abs().max().item() <= 5.0 and y[2].item() == 0.0
    assert y[3].item() == pytest.approx(0.1, abs=1e-3)


def test_spectral_norm_estimate_matches_the_largest_singular_value_of_a_small_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3)
    norms = SpectralNorms([conv])  # converged at construction
    true = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)  # the (out, in*k*k) matrix, as NVAE
    assert norms(iterations=0).item() == pytest.approx(true.item(), rel=1e-4)
    # after a weight update, a single power iteration per step keeps the estimate close
    with torch.no_grad():
        conv.weight.add_(0.01 * torch.randn_like(conv.weight))
    true = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert norms(iterations=1).item() == pytest.approx(true.item(), rel=1e-3)
    # its gradient is that of the largest singular value: u v^T
    conv.weight.grad = None
    norms(iterations=200).backward()
    u, _, vh = torch.linalg.svd(conv.weight.detach().flatten(1))
    expected = torch.outer(u[:, 0], vh[0])  # u1 v1^T: unchanged when both singular vectors flip sign
    torch.testing.assert_close(conv.weight.grad.flatten(1), expected, rtol=1e-3, atol=1e-3)


def carracing_nvae() -> SimpleNamespace:
    """The NVAE of envs/carracing_small.toml with vision.model = "nvae", as the CLI resolves it."""
    cfg = config_lib.load(str(TESTS.parent / "envs" / "carracing_small.toml"), ['vision.model="nvae"'])
    config = vision_config(cfg)
    assert config["model"] == "nvae"
    return nvae_config(**config)


@pytest.mark.parametrize("cfg", [SMALL, DEEP, carracing_nvae()], ids=["small", "deep", "carracing_small"])
def test_encode_decode_sample_shapes_at_two_recipe_sizes(cfg):
    torch.manual_seed(0)
    model = built(cfg).eval()
    x = torch.rand(3, 3, cfg.frame_size, cfg.frame_size)
    latent = model.encode(x)
    assert model.latent_dim == cfg.latent_dim
    assert latent.mean.shape == latent.logstd.shape == (3, cfg.latent_dim)
    for frames in (model.decode(latent.mean), model.reconstruct(x), model.sample(2, 0.7)):
        assert frames.shape[1:] == (3, cfg.frame_size, cfg.frame_size)
        assert frames.min().item() >= 0.0 and frames.max().item() <= 1.0
    assert model.sample(5).shape[0] == 5
    assert len(model.group_sizes) == len(cfg.scales) * cfg.groups_per_scale


def test_z_is_the_top_groups_posterior_and_decode_fills_the_rest_from_the_prior():
    torch.manual_seed(0)
    model = built(DEEP).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = model.encode(x).mean
        features = model._bottom_up(x)
        _, posteriors = model._top_down(2, features, sample_posterior=False)
        top = torch.cat([m.flatten(1) for m, _, _ in posteriors[: DEEP.top_groups]], dim=1)
        torch.testing.assert_close(z, top)  # the first top_groups groups, each after the mean of those above
        # decode at temperature 0 is deterministic; at a temperature the lower groups vary, the top ones stay
        torch.testing.assert_close(model.decode(z), model.decode(z))
        torch.manual_seed(1)
        warm_a = model.decode(z, temperature=1.0)
        torch.manual_seed(2)
        warm_b = model.decode(z, temperature=1.0)
        assert (warm_a - warm_b).abs().max().item() > 1e-4


def test_one_training_step_leaves_every_parameter_and_buffer_finite_and_lowers_the_loss_on_repeat():
    torch.manual_seed(0)
    model = built(SMALL)
    x = nn.functional.interpolate(torch.rand(8, 3, 4, 4), scale_factor=4)  # blocky frames: structure to learn
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.progress = 0.0  # the start of training: KL warm-up
    losses = []
    for _ in range(30):
        terms = model.loss(x)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["recon"].item())
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert all(torch.isfinite(b).all() for b in model.buffers())
    assert losses[-1] < 0.7 * losses[0]
    assert {"loss", "recon", "kl", "kl_coefficient", "spectral", "batch_norm", "kl_group0", "kl_group3"} <= set(terms)


def test_loss_is_recon_plus_beta_kl_plus_lambda_times_regularisation_once_warmed_up():
    torch.manual_seed(0)
    model = built(nvae_config(**{**vars(SMALL), "kl_weight": 0.3, "spectral_lambda": 0.2}))
    x = torch.rand(4, 3, 16, 16)
    terms = model.loss(x)  # progress defaults to 1: warmed up, so the KL is the plain sum
    expected = terms["recon"] + 0.3 * terms["kl"] + 0.2 * (terms["spectral"] + terms["batch_norm"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(sum(terms[f"kl_group{k}"].item() for k in range(4)), rel=1e-5)
    # the regularisers against their definitions: spectral norms of every conv, the largest |gamma| of every BN
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    true = sum(torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2).item() for c in convs)
    assert terms["spectral"].item() == pytest.approx(true, rel=1e-2)  # power iteration: close, not exact
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert terms["batch_norm"].item() == pytest.approx(sum(b.weight.abs().max().item() for b in bns), rel=1e-6)


def test_kl_warm_up_rises_linearly_over_the_first_fraction_of_training():
    model = built(SMALL)  # kl_warmup = 0.3
    for progress, coefficient in [(0.0, 1e-4), (0.15, 0.5), (0.3, 1.0), (0.9, 1.0)]:
        model.progress = progress
        assert model.kl_coefficient() == pytest.approx(coefficient)
    model.progress = 0.15
    x = torch.rand(4, 3, 16, 16)
    terms = model.loss(x)
    assert terms["kl_coefficient"].item() == pytest.approx(0.5)


def test_kl_balancing_weights_by_share_over_alpha_and_is_the_plain_sum_after_warm_up():
    model = built(SMALL)
    kl = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    torch.testing.assert_close(model.balanced_kl(kl, 1.0), kl.sum(1))
    # brute force NVAE's kl_balancer: coefficient_i ∝ (mean |KL_i| + 0.01) / alpha_i, normalised to mean 1
    alpha = torch.tensor([4 / 2, 4 / 2, 16 / 2, 16 / 2])
    alpha = alpha / alpha.min()
    torch.testing.assert_close(model.kl_alpha, alpha)
    share = kl.abs().mean(0) + 0.01
    weights = share / alpha * share.sum()
    weights = weights / weights.mean()
    torch.testing.assert_close(model.balanced_kl(kl, 0.5), (kl * weights).sum(1))


def test_sizes_that_do_not_fit_are_one_clear_error():
    with pytest.raises(WorldModelsError, match="latent_dim is 32 but"):
        built(nvae_config(latent_dim=32, latent_channels=4))
    with pytest.raises(WorldModelsError, match="must start at 2 or more and double"):
        built(nvae_config(scales=[4, 16]))
    for scales in ([0], [1, 2], [-4, -8], []):
        with pytest.raises(WorldModelsError, match="vision.nvae.scales"):
            built(nvae_config(scales=scales))
    with pytest.raises(WorldModelsError, match="top_groups"):
        built(nvae_config(top_groups=3, latent_dim=96))
    with pytest.raises(WorldModelsError, match="frame_size 48"):
        built(nvae_config(frame_size=48))
    with pytest.raises(WorldModelsError, match="latent_dim is 4 but"):  # the recipe is checked when it loads
        config_lib.load(TINY, ['vision.model="nvae"'])


def test_a_non_finite_gradient_skips_the_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from worldmodels.training import Fit, fit

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [torch.tensor([[float("nan"), 1.0]]), torch.tensor([[1.0, 1.0]])]
    seen = []

    def loss(batch):
        seen.append([p.detach().clone() for p in model.parameters()])
        return {"loss": model(batch).pow(2).sum()}

    writer = SummaryWriter(tmp_path / "tb")
    result = fit(
        Fit("vision", model, {"model": "linear"}, lambda epoch: batches, loss, 1, 0.1, 0, tmp_path / "v.pt", writer)
    )
    writer.close()
    for a, b in zip(before, seen[1]):  # the NaN batch changed nothing
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert result["step"] == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    assert any((a - p).abs().max() > 0 for a, p in zip(before, model.parameters()))  # the good batch did step


NV = (
    "--run",
    "tinynvae",
    "--set",
    'vision.model="nvae"',
    "--set",
    "vision.nvae.scales=[2, 4]",
    "--set",
    "vision.nvae.base_channels=2",
    "--set",
    "vision.nvae.latent_channels=1",
    "--set",
    "vision.nvae.groups_per_scale=1",
)  # z = the 2 x 2 top group's 1 channel


def test_an_nvae_run_goes_through_every_stage_of_the_cli(tmp_path, capsys):
    checkpoints_root, rollouts_root = tmp_path / "ck", tmp_path / "ro"
    torch.manual_seed(0)
    for stage in ("collect", "train-vision", "sample", "encode", "train-memory", "train-controller", "evaluate"):
        assert cli_stage(stage, checkpoints_root, rollouts_root, *NV) == 0, stage
    assert cli_stage("evaluate", checkpoints_root, rollouts_root, *NV, "--world", "dream") == 0
    run = checkpoints_root / "tinynvae"
    vision, memory = load_vision(run / "vision.pt"), load_memory(run / "memory.pt")
    assert isinstance(vision, NVAE) and vision.latent_dim == 4 and memory.latent_dim == 4
    assert (run / "samples" / "prior.png").is_file() and (run / "report.json").is_file()
    # the stored config rebuilds the same model
    rebuilt = build_vision(checkpoints.load(run / "vision.pt", "vision")["config"])
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in vision.parameters())
    # a recipe whose NVAE sizes changed is refused against the trained V, in one line
    capsys.readouterr()
    assert (
        run_cli(
            "encode",
            TINY,
            "--checkpoints",
            checkpoints_root,
            "--rollouts",
            rollouts_root,
            *NV,
            "--set",
            "vision.nvae.base_channels=3",
        )
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert "base_channels" in error and len(error.splitlines()) == 1
