"""Training precision and compilation from the recipe: bf16 autocast on CUDA by default,
forced or refused by the recipe."""

from __future__ import annotations

import torch
from helpers import RUN_NAME, TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.training import fit_options


def test_precision_auto_is_bf16_on_cuda_only():
    cfg = config_lib.load(TINY)
    assert fit_options(cfg, torch.device("cpu"))["bf16"] is False
    assert fit_options(cfg, torch.device("cuda", 0))["bf16"] is True
    assert fit_options(config_lib.load(TINY, ['precision="fp32"']), torch.device("cuda", 0))["bf16"] is False
    assert fit_options(config_lib.load(TINY, ['precision="bf16"']), torch.device("cpu"))["bf16"] is True
    assert fit_options(config_lib.load(TINY, ["compile=true"]), torch.device("cpu"))["compile"] is True


def test_bf16_autocast_trains_v_as_fp32_does(tmp_path, tiny_rollouts):
    """bf16 autocast (on CPU here) changes the arithmetic, not what V learns: same losses to bf16's precision."""
    losses = {}
    for precision in ("fp32", "bf16"):
        checkpoints = tmp_path / precision
        assert (
            cli_stage(
                "train-vision",
                checkpoints,
                tiny_rollouts,
                "--set",
                f'precision="{precision}"',
                "--set",
                "vision.epochs=2",
            )
            == 0
        )
        saved = torch.load(checkpoints / RUN_NAME / "vision.pt")
        assert all(v.dtype != torch.bfloat16 for v in saved["state_dict"].values())  # the weights stay float32
        losses[precision] = saved["losses"]["recon"]
    assert losses["bf16"] != losses["fp32"]  # autocast did change the arithmetic
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]


def test_unknown_precision_is_one_line(tmp_path, capsys):
    assert cli_stage("train-vision", tmp_path, tmp_path, "--set", 'precision="fp8"') == 2
    assert (
        capsys.readouterr().err.strip()
        == "worldmodels train-vision: error: precision must be 'auto', 'bf16' or 'fp32', got 'fp8'"
    )
