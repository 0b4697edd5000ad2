"""Seed 003's V on an encoder that is the user's code: `module:PACKAGE.MODULE:FUNCTION` or a `torch.export` file.

Both run code when built, so they are built only when the recipe in hand names them: a run folder alone never
makes this process import a module or unpickle a file.
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import RUN_NAME, cli_stage
from torch import nn

from worldmodels.agent import load_vision
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints
from worldmodels.vision.encoders import TRUST_VARIABLE

ENCODER_MODULE = """
import torch
from torch import nn

CALLS = []


def make():
    CALLS.append(1)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))


def make_a_number():
    return 3
"""


def settings(encoder: str, latent: int = 3) -> list[str]:
    """--set arguments that make the tiny recipe's V a pretrained one on `encoder`."""
    options = {"vision.model": '"pretrained"', "vision.pretrained.encoder": f'"{encoder}"', "vision.latent_dim": latent}
    return [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's on the path, freshly imported, and a process that trusts no code encoder yet."""
    (tmp_path / "user_encoder.py").write_text(ENCODER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_encoder", raising=False)
    monkeypatch.setenv(TRUST_VARIABLE, "")
    yield
    sys.modules.pop("user_encoder", None)


def frozen_weights_match(ck, reference: nn.Module) -> None:
    """V's encoder weights in the checkpoint are the reference module's, untouched by training."""
    saved = checkpoints.load(ck / RUN_NAME / "vision.pt", "vision")["state_dict"]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(saved[f"encoder.module.{key}"], value, rtol=0, atol=0)


def test_a_module_function_encoder_stays_frozen_and_a_run_folder_alone_never_calls_it(
    tmp_path, tiny_rollouts, user_module, monkeypatch
):
    ck, extra = tmp_path / "ck", settings("module:user_encoder:make")
    for stage in ("train-vision", "encode", "train-memory"):
        assert cli_stage(stage, ck, tiny_rollouts, *extra) == 0, stage
    import user_encoder

    frozen_weights_match(ck, user_encoder.make())
    model = load_vision(ck / RUN_NAME / "vision.pt")  # this process loaded a recipe naming it: trusted
    assert model.feature_dim == 5 and model.encode(torch.rand(4, 3, 16, 16)).mean.shape == (4, 3)
    assert not any(p.requires_grad for p in model.encoder.parameters())

    monkeypatch.setenv(TRUST_VARIABLE, "")  # a new process that only opens the run folder
    calls = len(user_encoder.CALLS)
    with pytest.raises(WorldModelsError, match="runs only when the recipe's vision.pretrained.encoder names it"):
        load_vision(ck / RUN_NAME / "vision.pt")
    assert len(user_encoder.CALLS) == calls  # the function named in the checkpoint never ran


def test_an_exported_encoder_is_loaded_frozen_and_refused_once_its_file_changed(
    tmp_path, tiny_rollouts, monkeypatch, capsys
):
    monkeypatch.setenv(TRUST_VARIABLE, "")
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 7)).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    file = tmp_path / "encoder.pt2"
    torch.export.save(program, file)
    ck, extra = tmp_path / "ck", settings(f"export:{file}")
    assert cli_stage("train-vision", ck, tiny_rollouts, *extra) == 0
    frozen_weights_match(ck, net)
    model = load_vision(ck / RUN_NAME / "vision.pt")
    assert model.feature_dim == 7 and model.encode(torch.rand(1, 3, 16, 16)).mean.shape == (1, 3)

    with torch.no_grad():
        net[-1].bias.add_(1.0)
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)), file)
    capsys.readouterr()
    with pytest.raises(WorldModelsError, match="changed since this V was trained on it"):
        load_vision(ck / RUN_NAME / "vision.pt")
    assert cli_stage("encode", ck, tiny_rollouts, *extra) == 2
    err = capsys.readouterr().err
    assert "vision" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "encoder, message",
    [
        ("module:no_such_module:make", "No module named 'no_such_module'"),
        ("module:user_encoder:no_such_function", "has no attribute 'no_such_function'"),
        ("module:user_encoder:make_a_number", "returned int, not an nn.Module"),
        ("export:{tmp}/nowhere.pt2", "does not exist"),
        ("export:{tmp}/wide.pt2", "does not take frames (B, 3, 16, 16)"),
    ],
)
def test_bad_code_encoders_get_one_line(tmp_path, tiny_rollouts, user_module, capsys, encoder, message):
    wide = nn.Sequential(nn.Conv2d(3, 2, 4, stride=4), nn.Flatten(), nn.Linear(2 * 64, 3))  # 32 x 32 frames only
    torch.export.save(torch.export.export(wide, (torch.zeros(2, 3, 32, 32),)), tmp_path / "wide.pt2")
    extra = settings(encoder.format(tmp=tmp_path))
    assert cli_stage("train-vision", tmp_path / "ck", tiny_rollouts, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
