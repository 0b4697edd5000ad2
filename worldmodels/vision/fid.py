"""Fréchet distance between the features of two sets of frames (FID, when the features are Inception's).

No feature network ships with worldmodels (nothing is downloaded): bring your own, saved with
`torch.export.save` as a `.pt2` ExportedProgram that maps float frames (B, 3, H, W) in [0, 1] to
features (B, F). With Inception weights at hand, export pytorch-fid's InceptionV3 pool3 block, e.g.

    from pytorch_fid.inception import InceptionV3

    class Pool3(torch.nn.Module):  # resizes to 299 and normalises itself; the 2048 pool3 features
        def __init__(self):
            super().__init__()
            self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])

        def forward(self, x):
            return self.net(x)[0].flatten(1)

    frames = torch.rand(2, 3, 64, 64)  # the frame size you will feed it; any batch size
    program = torch.export.export(Pool3().eval(), (frames,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, "inception.pt2")

Export in eval mode (the mode is baked into the program) and with the frame size you will feed it.
Only FIDs computed with the same feature network and frame size are comparable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from worldmodels.core.errors import WorldModelsError

FeatureNet = Callable[[torch.Tensor], torch.Tensor]


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics disagree in shape: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    # fewer samples than features make the product singular: scipy then warns (older versions return inf/nan);
    # either way, shift both covariances by eps * I, as pytorch-fid does
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(sigma1 @ sigma2)
            singular = not np.isfinite(covmean).all()
        except linalg.LinAlgWarning:
            singular = True
    if singular:
        offset = np.eye(len(sigma1)) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # the square root of a product of PSD matrices is real; rounding leaves tiny imaginary parts
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag)):.3g} in the covariances' square root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@torch.no_grad()
def feature_statistics(net: FeatureNet, frames: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of the features of frames (N, 3, H, W) in [0, 1]."""
    if len(frames) < 2:
        raise WorldModelsError(f"feature statistics need at least 2 frames, got {len(frames)}")
    if isinstance(net, torch.nn.Module):
        try:
            net.eval()
        except NotImplementedError:
            pass  # an exported program's module: its mode was fixed when it was exported
    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    device = params[0].device if params else frames.device
    features = []
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size].to(device, torch.float32)
        try:
            out = net(batch)
        except (RuntimeError, AssertionError) as exc:  # an exported program's shape guards fail with AssertionError
            raise WorldModelsError(f"the feature network rejects frames of shape {tuple(batch.shape)}: {exc}") from None
        if isinstance(out, (list, tuple)):
            out = out[0]  # pytorch-fid's InceptionV3 returns a list of blocks
        features.append(out.flatten(1).double().cpu())  # pool3 is (B, 2048, 1, 1)
    f = torch.cat(features).numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def load_feature_net(path: str | Path) -> torch.nn.Module:
    """A feature network saved with torch.export.save (frames (B, 3, H, W) in [0, 1] -> features (B, F))."""
    path = Path(path)
    if not path.is_file():
        raise WorldModelsError(f"feature network '{path}' not found")
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # noqa: BLE001 - a bad archive fails in many ways (zip, pickle, version), all one to the user
        raise WorldModelsError(
            f"feature network '{path}' is not a torch.export program: {type(exc).__name__}: {exc}"
        ) from None


def fid(net: FeatureNet, real_frames: torch.Tensor, fake_frames: torch.Tensor, batch_size: int = 64) -> float:
    """Fréchet distance between the features of two sets of frames (N, 3, H, W) in [0, 1]."""
    return frechet_distance(
        *feature_statistics(net, real_frames, batch_size), *feature_statistics(net, fake_frames, batch_size)
    )
