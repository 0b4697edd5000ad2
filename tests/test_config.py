"""Recipes: loading, type checks, overrides, validation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from helpers import TINY

from worldmodels import config as config_lib
from worldmodels.config import Config, StateBound
from worldmodels.core.errors import WorldModelsError
from worldmodels.vision import vision_config

ENVS = Path(__file__).resolve().parent.parent / "envs"


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", sorted(ENVS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    cfg = config_lib.load(recipe)
    assert isinstance(cfg, Config)
    assert cfg.name == recipe.stem  # the file name names the run unless the recipe does
    assert cfg.env.frame_size % 16 == 0


def test_there_are_shipped_recipes():
    assert len(list(ENVS.glob("*.toml"))) >= 1


def test_cartpole_recipe_values():
    cfg = config_lib.load(ENVS / "cartpole.toml")
    assert cfg.env.id == "CartPole-v1"
    assert cfg.env.crop == [0.15, 0.6, 0.2, 0.8] and cfg.env.render_size == [300, 200]
    assert cfg.memory.hidden_size == 64
    assert cfg.controller.target == 500.0
    assert cfg.vision.channels == [32, 64, 128, 256]  # a default, not in the file


def test_carracing_recipe_is_the_original_scale():
    cfg = config_lib.load(ENVS / "carracing_paper.toml")
    assert (cfg.env.id, cfg.env.frame_size, cfg.vision.latent_dim) == ("CarRacing-v3", 64, 32)
    assert (cfg.memory.hidden_size, cfg.memory.num_gaussians) == (256, 5)
    assert (cfg.controller.population, cfg.controller.rollouts) == (64, 16)


def test_tiny_recipe_loads():
    cfg = config_lib.load(TINY)
    assert (cfg.name, cfg.env.frame_size, cfg.vision.latent_dim, cfg.collect.episodes) == ("tiny", 16, 4, 6)
    assert cfg.vision.channels == [4, 8, 8, 8]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(WorldModelsError, match="not found"):
        config_lib.load(tmp_path / "nope.toml")
    with pytest.raises(WorldModelsError, match="not valid TOML"):
        config_lib.load(write(tmp_path, "[env\nid = 3"))


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(WorldModelsError, match=r"unknown recipe key 'colour'"):
        config_lib.load(write(tmp_path, 'colour = "red"\n'))


def test_unknown_section_key_is_named_with_its_section(tmp_path):
    with pytest.raises(WorldModelsError) as info:
        config_lib.load(write(tmp_path, "[vision]\nfoo = 1\n"))
    assert "'vision.foo'" in str(info.value)


def test_unknown_key_in_a_list_of_tables_is_named(tmp_path):
    with pytest.raises(WorldModelsError) as info:
        config_lib.from_dict({"collect": {"keep": [{"index": 2}, {"idx": 1}]}})
    assert "'collect.keep[1].idx'" in str(info.value)


def test_wrong_type_is_named_with_its_section(tmp_path):
    with pytest.raises(WorldModelsError) as info:
        config_lib.load(write(tmp_path, '[vision]\nlatent_dim = "big"\n'))
    message = str(info.value)
    assert "'vision.latent_dim'" in message and "int" in message and "'big'" in message


@pytest.mark.parametrize(
    "data, key",
    [
        ({"vision": {"epochs": 1.5}}, "epochs"),
        ({"vision": {"epochs": True}}, "epochs"),  # a bool is not an int here
        ({"env": {"id": 3}}, "id"),
        ({"env": {"crop": 0.5}}, "crop"),
        ({"env": {"crop": [0, 1, "a", 1]}}, "crop[2]"),
        ({"vision": 3}, "vision"),
        ({"name": ["a"]}, "name"),
    ],
)
def test_wrong_types_raise_naming_the_key(data, key):
    # (the full dotted name of keys inside sections is checked in the tests above)
    with pytest.raises(WorldModelsError, match=re.escape(key) + "' must be"):
        config_lib.from_dict(data)


def test_int_accepted_for_float(tmp_path):
    cfg = config_lib.load(write(tmp_path, "[vision]\nlr = 1\nfree_bits = 0\n[controller]\ntarget = 200\n"))
    assert cfg.vision.lr == 1.0 and type(cfg.vision.lr) is float
    assert type(cfg.vision.free_bits) is float and type(cfg.controller.target) is float


def test_overrides_nested_and_lists():
    cfg = config_lib.load(
        TINY,
        [
            "vision.latent_dim=8",
            "vision.channels=[8, 16, 16, 16]",
            "env.id=MountainCar-v0",  # a bare word is a string
            "env.crop=[0.1, 0.9, 0, 1]",
            "collect.keep=[{index = 2, low = -0.1, high = 0.1}]",
            "controller.target=inf",
            'name="other"',
            "env.kwargs={sutton_barto_reward = true}",
        ],
    )
    assert cfg.vision.latent_dim == 8
    assert cfg.vision.channels == [8, 16, 16, 16]
    assert cfg.env.id == "MountainCar-v0"
    assert cfg.env.crop == [0.1, 0.9, 0.0, 1.0]
    assert cfg.collect.keep == [StateBound(index=2, low=-0.1, high=0.1)]
    assert math.isinf(cfg.controller.target)
    assert cfg.name == "other"
    assert cfg.env.kwargs == {"sutton_barto_reward": True}
    # values the overrides do not touch stay as in the file
    assert cfg.memory.hidden_size == 8 and cfg.env.frame_size == 16


def test_override_creates_missing_section(tmp_path):
    cfg = config_lib.load(write(tmp_path, ""), ["memory.num_gaussians=2"])
    assert cfg.memory.num_gaussians == 2


def test_override_wins_over_the_file(tmp_path):
    path = write(tmp_path, "[vision]\nlatent_dim = 4\n")
    assert config_lib.load(path, ["vision.latent_dim=12"]).vision.latent_dim == 12


@pytest.mark.parametrize(
    "old, new",
    [
        ("dream.rounds=3", "rounds.count"),
        ("dream.round_sigma=0.1", "rounds.sigma"),
        ("vision.num_embeddings=32", "vision.vqvae.num_embeddings"),
        ("vision.base_channels=4", "vision.nvae.base_channels"),
    ],
)
def test_a_key_that_moved_gets_a_one_line_hint(old, new):
    with pytest.raises(WorldModelsError, match=f"is '{new}' now"):
        config_lib.load(TINY, [old])


def test_a_models_own_settings_reach_its_config_and_no_other():
    vq = vision_config(config_lib.load(TINY, [("vision.model", "vqvae"), ("vision.vqvae.num_embeddings", 32)]))
    assert vq["num_embeddings"] == 32 and "base_channels" not in vq
    nvae = [("vision.model", "nvae"), ("vision.latent_dim", 32), ("vision.nvae.base_channels", 4)]
    nv = vision_config(config_lib.load(TINY, nvae))
    assert nv["base_channels"] == 4 and "num_embeddings" not in nv


def test_a_flag_passes_its_value_as_is_where_text_would_need_quoting(tmp_path):
    """The CLI's flags reach the recipe as (key, value) pairs: a quote inside a string is just a character."""
    address = 'ray://head:10001?label="a b"'
    cfg = config_lib.load(TINY, [("controller.address", address), ("evaluate.episodes", 7)])
    assert cfg.controller.address == address and cfg.evaluate.episodes == 7
    quoted = config_lib.load(TINY, [f'controller.address="{address}"'])  # as the CLI once wrote it: mangled
    assert quoted.controller.address != address
    with pytest.raises(WorldModelsError, match="evaluate.episodes"):  # pairs are checked like the file's values
        config_lib.load(TINY, [("evaluate.episodes", "seven")])


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ("vision.latent_dim", "section.key=value"),
        ("name.sub=1", "'name' is not a section"),
    ],
)
def test_bad_override_format(bad, pattern):
    with pytest.raises(WorldModelsError, match=pattern):
        config_lib.load(TINY, [bad])


def test_override_type_is_checked():
    with pytest.raises(WorldModelsError, match="latent_dim"):
        config_lib.load(TINY, ["vision.latent_dim=eight"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("env.frame_size=24", "env.frame_size"),
        ("env.frame_size=0", "env.frame_size"),
        ('collect.policy="greedy"', "collect.policy"),
        ('vision.model="gan"', "vision.model"),
        ("env.crop=[0.5, 0.2, 0, 1]", "env.crop"),
        ("env.render_size=[300]", "env.render_size"),
        ("env.render_size=[300, 8]", "env.render_size"),
        ("vision.channels=[8, 8, 8]", "vision.channels"),
        ("collect.episodes=0", "collect.episodes"),
        ("controller.population=1", "controller.population"),
        ("controller.rollouts=0", "controller.rollouts"),
        ("evaluate.episodes=0", "evaluate.episodes"),
        ("vision.epochs=0", "vision.epochs"),
        ("memory.epochs=0", "memory.epochs"),
        ("controller.eval_every=0", "controller.eval_every"),
        ('memory.reward_from="frame"', "memory.reward_from"),
    ],
)
def test_validate_rejects_bad_values(override, key):
    with pytest.raises(WorldModelsError, match=key.replace(".", r"\.")):
        config_lib.load(TINY, [override])


@pytest.mark.parametrize("size", [16, 32, 64, 96])
def test_validate_accepts_multiples_of_16(size):
    assert config_lib.load(TINY, [f"env.frame_size={size}"]).env.frame_size == size


def test_dumped_recipe_loads_back_equal(tmp_path):
    cfg = config_lib.load(TINY, ["collect.keep=[{index = 2, low = -0.1}]", "env.kwargs={a = 1}"])
    again = config_lib.load(write(tmp_path, config_lib.dumps(cfg), "dumped.toml"))
    assert again == cfg
    assert math.isinf(again.collect.keep[0].high) and math.isinf(again.controller.target)
