"""Fréchet distance against closed forms, and the whole path through an exported feature network."""

import numpy as np
import pytest
import torch
from torch import nn

from worldmodels.core.errors import WorldModelsError
from worldmodels.vision.fid import fid, frechet_distance, load_feature_net


def random_covariance(rng: np.random.Generator, n: int) -> np.ndarray:
    a = rng.normal(size=(n, n))
    return a @ a.T + 0.1 * np.eye(n)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_identical_statistics_are_zero_apart():
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=5), random_covariance(rng, 5)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)


def test_full_covariances_match_an_eigendecomposition():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = random_covariance(rng, 4), random_covariance(rng, 4)
    # Tr((s1 s2)^(1/2)) = Tr((s1^(1/2) s2 s1^(1/2))^(1/2)), a symmetric PSD matrix's: sum of sqrt eigenvalues
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))  # fewer samples than features: rank 2
    d = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(d) and d > 0


@pytest.fixture(scope="module")
def feature_net_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 4, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    ).eval()
    program = torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path_factory.mktemp("fid") / "features.pt2"
    torch.export.save(program, path)
    return str(path)


def test_fid_through_an_exported_feature_net(feature_net_path):
    net = load_feature_net(feature_net_path)
    frames = torch.rand(200, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # dead ReLU features make the covariance singular: the eps * I shift then leaves -2 eps F, not exactly 0
    assert fid(net, frames, frames, batch_size=64) == pytest.approx(0, abs=1e-3)
    noisy = (frames + 0.1 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    shifted = (frames + 0.3).clamp(0, 1)
    small, large = fid(net, frames, noisy), fid(net, frames, shifted)
    assert 0 < small < large


def test_feature_net_of_the_wrong_frame_size_is_a_clear_error(feature_net_path):
    with pytest.raises(WorldModelsError, match="rejects frames"):
        fid(load_feature_net(feature_net_path), torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(WorldModelsError, match="not found"):
        load_feature_net(tmp_path / "missing.pt2")
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive" * 10)
    with pytest.raises(WorldModelsError, match="not a torch.export program"):
        load_feature_net(corrupt)
