"""Seed 003's V: a frozen pretrained encoder (a Hugging Face vision tower or another run's V) and a compressor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import RUN_NAME, TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.agent import load_vision
from worldmodels.config import PretrainedConfig, VisionConfig
from worldmodels.data.latents import load_latents
from worldmodels.runs import checkpoints
from worldmodels.vision import PretrainedV
from worldmodels.vision.encoders import describe_encoder, encoder_weights
from worldmodels.vision.pretrained import episode_stacks, stack_context

transformers = pytest.importorskip("transformers", reason="the Hugging Face encoder needs transformers (dev extra)")


def settings(encoder: str, **extra) -> list[str]:
    """--set arguments that make the tiny recipe's V a pretrained one."""
    options = {"vision.model": '"pretrained"', "vision.pretrained.encoder": f'"{encoder}"', **extra}
    return [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny CLIP (random weights, built from a config: nothing downloaded), saved as a local model folder."""
    folder = tmp_path_factory.mktemp("clip")
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(vision_config=vision.to_dict(), text_config=text)).save_pretrained(
        folder
    )
    return folder


def test_a_clip_tower_stays_frozen_while_its_compressor_learns(tmp_path, tiny_rollouts, clip_folder):
    ck = tmp_path / "ck"
    extra = settings(f"hf:{clip_folder}", **{"vision.epochs": 4, "vision.latent_dim": 6, "vision.pretrained.layer": 1})
    assert cli_stage("train-vision", ck, tiny_rollouts, *extra) == 0
    saved = checkpoints.load(ck / RUN_NAME / "vision.pt", "vision")
    pretrained = encoder_weights(f"hf:{clip_folder}")
    for key, value in pretrained.items():  # every weight of the tower as it came, after 4 epochs
        torch.testing.assert_close(saved["state_dict"][f"encoder.{key}"], value, rtol=0, atol=0)
    model = load_vision(ck / RUN_NAME / "vision.pt")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.compress.parameters())
    frames = torch.rand(5, 3, 16, 16)
    assert model.encode(frames).mean.shape == (5, 6) and model.latent_dim == 6
    # the compressor's loss went down: the TensorBoard scalars of its 4 epochs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ck / RUN_NAME / "tb")).Reload()
    losses = [e.value for e in events.Scalars("vision/epoch_loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    # encode caches z of the recipe's size for M
    assert cli_stage("encode", ck, tiny_rollouts, *extra) == 0
    latents = load_latents(checkpoints.Run(ck, config_lib.load(TINY)))
    assert latents[0].mu.shape[1] == 6


def test_another_runs_v_as_the_frozen_encoder_runs_every_stage(tmp_path, tiny_run, capsys):
    """run:FOLDER: the tiny run's conv VAE, frozen, compressed by a linear layer, z = [its z, the code]."""
    ck, ro = tmp_path / "ck", tiny_run["rollouts"]
    source = tiny_run["dir"]
    extra = settings(
        str(f"run:{source}"),
        **{"vision.latent_dim": 3, "vision.pretrained.compressor": '"linear"', "vision.pretrained.concat": "true"},
    )
    for stage in ("train-vision", "sample", "encode", "train-memory", "train-controller", "evaluate"):
        assert cli_stage(stage, ck, ro, *extra) == 0, stage
    model = load_vision(ck / RUN_NAME / "vision.pt")
    frozen = load_vision(source / "vision.pt")
    assert model.latent_dim == 3 + frozen.latent_dim  # concat: the conv V's 4 beside the code's 3
    assert [m.weight.shape for m in model.compress if hasattr(m, "weight")] == [(3, frozen.latent_dim)]  # linear
    frames = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(model.encode(frames).mean[:, : frozen.latent_dim], frozen.encode(frames).mean)
    report = json.loads((ck / RUN_NAME / "report.json").read_text())
    assert len(report["returns"]) == 3
    assert "draws no frames" in capsys.readouterr().out  # sample says why it shows nothing


def test_context_stacks_consecutive_frames_of_one_episode():
    features = torch.arange(5.0)[:, None] * torch.ones(1, 2)  # frame t's features are (t, t)
    stacks = episode_stacks(features, 3)  # (5, 3 x 2), oldest first, the first frame standing in before it
    assert stacks[:, ::2].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    # stepping frame by frame gives the same stacks; a NaN row starts that row's episode anew
    history = None
    for t in range(5):
        stacked, history = stack_context(features[t : t + 1].repeat(2, 1), history, 3)
        assert stacked[0].tolist() == stacks[t].tolist()
        if t == 2:
            history[1] = float("nan")  # row 1's episode ends: its next frame is a first frame
    assert stacked[1, ::2].tolist() == [3, 3, 4]  # row 1: frames 3 and 4 of its new episode, never frame 2


def test_the_run_encoder_gives_the_sizes_it_should(tiny_run):
    description = describe_encoder(f"run:{tiny_run['dir']}")
    for compressor, concat, latent in (("autoencoder", False, 5), ("linear", False, 5), ("linear", True, 5 + 4)):
        section = VisionConfig(
            latent_dim=5, pretrained=PretrainedConfig(compressor=compressor, hidden=7, context=2, concat=concat)
        )
        model = PretrainedV(section, 16, description)
        x = torch.rand(3, 3, 16, 16)
        assert model.encode(x).mean.shape == (3, latent) and model.latent_dim == latent
        assert model.compress[0].in_features == 2 * 4  # context 2 x the conv V's z of 4
        layers = [m for m in model.compress if isinstance(m, torch.nn.Linear)]
        assert len(layers) == (2 if compressor == "autoencoder" else 1)
    sequence = model.encode_episode([x[:2], x[2:]])
    history = None
    for t in range(3):  # the episode stepped frame by frame, as the real world shows it
        latent, history = model.observe(x[t : t + 1], history)
        torch.testing.assert_close(latent.mean[0], sequence.mean[t])


def test_a_llava_vision_tower_is_taken_from_inside_the_vlm(tmp_path, tiny_rollouts):
    """hf:FOLDER of a LLaVA-style VLM: its CLIP tower is the encoder, with the weights the VLM holds for it (a tower
    loaded on its own would find none under its own names and start from random ones)."""
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    torch.manual_seed(0)
    vlm = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=63)
    )
    vlm.save_pretrained(tmp_path / "llava")
    tower = vlm.get_submodule("model.vision_tower")
    ck = tmp_path / "ck"
    assert cli_stage("train-vision", ck, tiny_rollouts, *settings(f"hf:{tmp_path / 'llava'}")) == 0
    saved = checkpoints.load(ck / RUN_NAME / "vision.pt", "vision")["state_dict"]
    weights = tower.state_dict()
    assert len(weights) > 10
    for key, value in weights.items():
        torch.testing.assert_close(saved[f"encoder.tower.{key}"], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, clip: f"hf:{tmp / 'nowhere'}", "does not exist or has no config.json"),
        (lambda tmp, clip: f"hf:{bert(tmp)}", "has no vision tower"),
        (lambda tmp, clip: f"run:{tmp / 'nowhere'}", "does not exist"),
    ],
)
def test_bad_encoders_get_one_line(tmp_path, tiny_rollouts, clip_folder, capsys, make, message):
    assert cli_stage("train-vision", tmp_path / "ck", tiny_rollouts, *settings(make(tmp_path, clip_folder))) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def bert(tmp_path):
    """A text model's folder: no vision tower in it."""
    folder = tmp_path / "bert"
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_a_feature_layer_out_of_range_and_an_encoder_that_changed_get_one_line(
    tmp_path, tiny_rollouts, tiny_run, clip_folder, capsys
):
    ck = tmp_path / "ck"
    assert (
        cli_stage("train-vision", ck, tiny_rollouts, *settings(f"hf:{clip_folder}", **{"vision.pretrained.layer": 3}))
        == 2
    )
    assert "vision.pretrained.layer 3 is out of range" in capsys.readouterr().err
    # V trained on the conv VAE's features (4 wide); the recipe then names the CLIP tower (16 wide)
    assert cli_stage("train-vision", ck, tiny_rollouts, *settings(f"run:{tiny_run['dir']}")) == 0
    capsys.readouterr()
    assert cli_stage("encode", ck, tiny_rollouts, *settings(f"hf:{clip_folder}")) == 2
    err = capsys.readouterr().err
    assert "vision" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_held_out_reconstruction_error_and_the_encoder_speed_are_reported(tmp_path, tiny_rollouts, tiny_run, capsys):
    ck = tmp_path / "ck"
    assert cli_stage("train-vision", ck, tiny_rollouts, *settings(f"run:{tiny_run['dir']}")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]
    assert result["heldout_feature_mse"] > 0 and np.isfinite(result["heldout_feature_relative"])
    assert result["encoder_frames_per_second"] > 0 and result["feature_size"] == 4
