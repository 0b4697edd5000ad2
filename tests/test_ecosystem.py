"""The framework among RL libraries: any policy in any of its worlds, recipes that ship,
a terminal that answers at once."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers import TINY, cli_stage, run_cli

import worldmodels  # noqa: F401 - registers worldmodels/Dream-v0 and worldmodels/Latent-v0
from worldmodels import cli
from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.play.loops import play
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import load_controller
from worldmodels.worlds.real import make_world


def test_latent_observation_sees_what_play_sees(tiny_run):
    """C acting on LatentObservation's [z, h] earns exactly what `play` gives it in the same episode."""
    run = tiny_run["dir"]
    cfg = config_lib.load(TINY)
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    saved = load_controller(run / "controller.pt", model)
    env = gym.make("worldmodels/Latent-v0", run=str(run))
    controller = Controller.from_flat(saved["params"].numpy()[None], model.controller_input, env.action_space)
    for seed in (3, 11):
        [(expected, _)] = play([make_world(cfg.env)], model, controller, [seed])
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            z, h = (
                torch.from_numpy(obs[None, : model.vision.latent_dim]),
                torch.from_numpy(obs[None, model.vision.latent_dim :]),
            )
            obs, reward, terminated, truncated, _ = env.step(controller.act(z, h, rows=[0])[0])
            total, done = total + reward, terminated or truncated
        assert total == expected


def test_the_dream_from_a_run_folder_passes_gymnasiums_checker(tiny_run):
    env = gym.make("worldmodels/Dream-v0", run=str(tiny_run["dir"]))
    check_env(env.unwrapped, skip_render_check=True)
    real = make_world(config_lib.load(TINY).env)
    assert env.action_space == real.action_space  # the recipe's own action space
    model = WorldModel.load(tiny_run["dir"] / "vision.pt", tiny_run["dir"] / "memory.pt")
    assert env.observation_space.shape == (model.controller_input,)
    check_env(real, skip_render_check=False)  # the pixel world's spec rebuilds it
    latent = gym.make("worldmodels/Latent-v0", run=str(tiny_run["dir"]))
    check_env(latent, skip_render_check=True)
    assert latent.observation_space == env.observation_space  # a dream policy's inputs, in the real world


def test_a_run_folder_recipe_that_imports_a_module_is_refused(copy_run):
    recipe = copy_run["dir"] / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('id = "CartPole-v1"', 'id = "os:CartPole-v1"'))
    with pytest.raises(worldmodels.core.errors.WorldModelsError, match="imports a module"):
        gym.make("worldmodels/Dream-v0", run=str(copy_run["dir"]))


def test_sb3_ppo_trains_in_the_dream_and_plays_in_the_real_world(copy_run, tmp_path):
    sb3 = pytest.importorskip("stable_baselines3", reason="stable-baselines3 is in the dev extra")
    from worldmodels.worlds.sb3 import dream_vec_env

    run = copy_run["dir"]
    agent = sb3.PPO(
        "MlpPolicy",
        gym.make("worldmodels/Dream-v0", run=str(run)),
        n_steps=256,
        batch_size=64,
        n_epochs=2,
        seed=0,
        device="cpu",
    )
    agent.learn(total_timesteps=2048)
    batched = sb3.PPO(
        "MlpPolicy", dream_vec_env(run, num_envs=8, seed=0), n_steps=64, batch_size=128, seed=0, device="cpu"
    )
    assert batched.learn(total_timesteps=1024).num_timesteps >= 1024  # and on the batched dream, 8 episodes a step
    agent.save(tmp_path / "ppo.zip")
    assert (
        run_cli(
            "evaluate",
            TINY,
            "--checkpoints",
            copy_run["checkpoints"],
            "--rollouts",
            copy_run["rollouts"],
            "--policy",
            tmp_path / "ppo.zip",
            "--algo",
            "ppo",
        )
        == 0
    )
    report = json.loads((run / "report_policy.json").read_text())
    assert report["episodes"] == 3 and len(report["returns"]) == 3 and report["policy"].endswith("ppo.zip")
    assert all(1 <= r <= 50 for r in report["returns"])  # CartPole's +1 a step, capped at the tiny recipe's 50 steps


def test_a_module_callable_policy(copy_run):
    assert (
        cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"], "--policy", "test_ecosystem:push_left")
        == 0
    )
    report = json.loads((copy_run["dir"] / "report_policy.json").read_text())
    assert report["policy"] == "test_ecosystem:push_left" and report["mean"] < 15  # always left: CartPole falls fast


def push_left(obs: np.ndarray) -> int:
    return 0


def test_dream_vec_env_batches_like_single_dreams_and_resets_in_the_same_step(tiny_run):
    pytest.importorskip("stable_baselines3", reason="stable-baselines3 is in the dev extra")
    from worldmodels.worlds.sb3 import dream_vec_env

    envs = dream_vec_env(tiny_run["dir"], num_envs=4)
    envs.seed(100)
    obs = envs.reset()
    single = gym.make("worldmodels/Dream-v0", run=str(tiny_run["dir"])).unwrapped
    for i in range(4):  # copy i dreams episode 100 + i, as DreamEnv(seed=100 + i) does
        np.testing.assert_allclose(single.reset(seed=100 + i)[0], obs[i], rtol=0, atol=1e-6)
    actions = np.zeros(4, dtype=np.int64)
    ended = False
    for _ in range(200):
        obs, reward, done, infos = envs.step(actions)
        for i in np.flatnonzero(done):  # restarted in this very step: the last observation is in the info
            ended = True
            assert "terminal_observation" in infos[i] and not np.allclose(infos[i]["terminal_observation"], obs[i])
            assert np.all(obs[i][-envs.dream.memory.cfg.hidden_size :] == 0)  # a fresh episode: M's state is zero
    assert ended


def test_dream_vector_env_honours_reset_mask(tiny_run):
    from worldmodels.worlds.dream import DreamVectorEnv

    single = gym.make("worldmodels/Dream-v0", run=str(tiny_run["dir"])).unwrapped
    envs = DreamVectorEnv(single.dream, single.action_space, 3)
    envs.reset(seed=5)
    before, *_ = envs.step(np.ones(3, dtype=np.int64))
    mask = np.array([False, True, False])
    after, _ = envs.reset(seed=50, options={"reset_mask": mask})
    np.testing.assert_array_equal(after[~mask], before[~mask])  # the other rows go on where they were
    np.testing.assert_allclose(after[1], single.reset(seed=51)[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- recipes and the terminal


def test_shipped_recipes_are_listed_shown_and_found_by_name(capsys):
    assert run_cli("recipes") == 0
    listed = capsys.readouterr().out
    assert {"cartpole", "carracing_dream", "codebook_nas"} <= {line.split()[0] for line in listed.splitlines()}
    assert run_cli("recipe", "show", "cartpole") == 0
    shown = capsys.readouterr().out
    assert "population = 32  # CMA-ES candidates per generation" in shown
    import tomllib

    assert config_lib.from_dict(tomllib.loads(shown)) == config_lib.load("envs/cartpole.toml")  # every field, as it is
    assert config_lib.load("cartpole") == config_lib.load("envs/cartpole.toml")
    assert run_cli("recipe", "show", "no_such_recipe") == 2
    # every field of every section carries its meaning (a comment on the field's own line, where `recipe show` reads it)
    meanings = config_lib.field_meanings()
    for section in dataclasses.fields(config_lib.Config):
        kind = getattr(config_lib, str(section.type), None)
        if dataclasses.is_dataclass(kind):
            missing = [f.name for f in dataclasses.fields(kind) if f"{section.name}.{f.name}" not in meanings]
            assert not missing, (section.name, missing)
    assert "shipped recipes are" in capsys.readouterr().err


def test_help_loads_no_torch():
    """`worldmodels --help` imports only the standard library and the recipe parser (torch alone takes seconds)."""
    code = "import sys, worldmodels.cli as c; c.parser(); print(sorted({'torch', 'cma', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    helped = subprocess.run([sys.executable, "-m", "worldmodels", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and all(stage in helped.stdout for stage in cli.STAGES), helped.stderr
    version = subprocess.run([sys.executable, "-m", "worldmodels", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"worldmodels {worldmodels.__version__}"


def test_files_honour_the_umask(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    checkpoints.save_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_run_name_has_a_torchrun_proof_spelling(tmp_path):
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser().parse_args(["-m", "worldmodels", "train-vision", TINY, "--run-name", "ddp"])
    assert torchrun.training_script_args == ["train-vision", TINY, "--run-name", "ddp"]  # passed through, not taken
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--run-name", "other") == 0
    assert (tmp_path / "ro" / "other" / "episodes" / "manifest.json").is_file()


def test_a_terminal_sees_bars_for_a_real_generation_and_evaluate(copy_run):
    """On a terminal, each real-world generation counts its episodes and evaluate shows its own bar
    with a rate and ETA."""
    import pty

    ck, ro, run_dir = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("controller.pt", "cmaes.pt", "report.json"):
        (run_dir / name).unlink()
    import fcntl
    import struct
    import termios
    import threading

    primary, secondary = pty.openpty()
    # a new pty is 0 x 0: tqdm draws nothing
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:  # read while the stages write: a full pty would block them
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other side is closed: everything was read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    for stage in ("train-controller", "evaluate"):
        done = subprocess.run(
            [sys.executable, "-m", "worldmodels", stage, TINY, "--checkpoints", str(ck), "--rollouts", str(ro)],
            stderr=secondary,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ),
            timeout=300,
        )
        assert done.returncode == 0
    os.close(secondary)
    reader.join(timeout=30)
    out = b"".join(chunks)
    text = out.decode(errors="replace")
    bars = [line.strip() for line in text.replace("\r", "\n").splitlines() if "%|" in line]
    assert any(b.startswith("generation 1:") for b in bars) and any(b.startswith("generation 2:") for b in bars), bars
    # a total, the time left, a rate
    assert any(b.startswith("evaluate:") and "/3 [" in b and "ep/s" in b for b in bars), bars
