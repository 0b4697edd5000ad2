"""A run folder has one writer, bad values and names are refused at load time, OS faults are one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import TINY, cli_stage, copy_tree, one_error_line, run_cli

from worldmodels.controller import search_state
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints


def start_stage(*argv: str) -> subprocess.Popen:
    """A real `worldmodels` process, as a second terminal would start it."""
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-m", "worldmodels", *map(str, argv)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_taken_over(copy_run, capsys):
    ck, ro, run = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"]
    for name in ("cmaes.pt", "controller.pt"):
        (run / name).unlink()
    first = start_stage(
        "train-controller", TINY, "--checkpoints", ck, "--rollouts", ro, "--set", "controller.generations=100000"
    )
    try:
        deadline = time.time() + 120
        while not (run / "cmaes.pt").exists():  # it holds the lock and has finished a generation
            assert first.poll() is None and time.time() < deadline, (
                first.stderr.read() if first.poll() is not None else "slow"
            )
            time.sleep(0.2)
        assert cli_stage("train-controller", ck, ro) == 2
        line = one_error_line(capsys, "train-controller")
        assert "in use by another worldmodels process" in line and f"PID {first.pid}" in line
        assert cli_stage("pipeline", ck, ro) == 2  # every stage that writes asks for the same lock
        one_error_line(capsys, "pipeline")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (run / ".controller.pt.1234.tmp").write_bytes(b"half")  # as a writer killed mid-write leaves it
    (run / "latents" / ".ep_000000.npz.99.tmp").write_bytes(b"half")
    done = search_state.load(run / "cmaes.pt")[1].generation
    # the dead process's lock is free again: the search resumes where kill -9 left it
    assert cli_stage("train-controller", ck, ro, "--set", f"controller.generations={done + 1}") == 0
    assert search_state.load(run / "cmaes.pt")[1].generation == done + 1
    assert not list(run.glob("**/.*.tmp"))  # what a killed writer leaves half-written is removed by the next holder


@pytest.mark.parametrize(
    "setting, key",
    [
        ("vision.lr=nan", "vision.lr"),
        ("vision.lr=-0.1", "vision.lr"),
        ("vision.lr=inf", "vision.lr"),
        ("vision.batch_size=0", "vision.batch_size"),
        ("memory.hidden_size=0", "memory.hidden_size"),
        ("controller.sigma0=nan", "controller.sigma0"),
        ("controller.workers=0", "controller.workers"),
        ("env.frame_size=160000", "env.frame_size"),
        ("vision.latent_dim=0", "vision.latent_dim"),
        ("vision.free_bits=nan", "vision.free_bits"),
        ("controller.generations=-1", "controller.generations"),
        ("controller.eval_rollouts=0", "controller.eval_rollouts"),
        ("dream.tau=inf", "dream.tau"),
        ("controller.population=1000000000", "controller.population"),
        ("collect.episodes=1000000000000", "collect.episodes"),
        ("env.action_low=[nan]", "env.action_low"),
        ("collect.seed=-3", "collect.seed"),
        ("env.max_steps=1000000000000000", "env.max_steps"),
        ("controller.sigma0=1e308", "controller.sigma0"),
        ("memory.epochs=1000000000000", "memory.epochs"),
    ],
)
def test_bad_recipe_values_are_refused_at_load_time(tmp_path, capsys, setting, key):
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--set", setting) == 2
    assert key in one_error_line(capsys, "collect")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "ro").exists()  # refused before anything started


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", 'a"b', "a/b", "..", ".hidden", ""])
def test_run_names_are_names(tmp_path, capsys, name):
    assert cli_stage("collect", tmp_path / "ck", tmp_path / "ro", "--run", name) == 2
    assert "run name" in one_error_line(capsys, "collect")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, option",
    [
        (("evaluate", "--episodes", "0"), "evaluate.episodes"),
        (("sample", "--temperature", "nan"), "--temperature"),
        (("sample", "-n", "0"), "-n"),
        (("tau-sweep", "--tau", "1.0", "inf"), "--tau"),
        (("dream", "--scale", "0"), "--scale"),
    ],
)
def test_bad_command_line_values(copy_run, capsys, argv, option):
    stage, *rest = argv
    assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"], *rest) == 2
    assert option in one_error_line(capsys, stage)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("stage", ["train-memory", "evaluate", "sample"])
def test_cuda_asked_for_without_cuda(copy_run, capsys, stage):
    if stage == "train-memory":
        (copy_run["dir"] / "memory.pt").unlink()
    assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"], "--device", "cuda") == 2
    assert "no CUDA" in one_error_line(capsys, stage)


def test_a_recipe_that_is_not_utf8(tmp_path, capsys):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    assert run_cli("collect", recipe, "--checkpoints", tmp_path / "ck", "--rollouts", tmp_path / "ro") == 2
    assert "not UTF-8" in one_error_line(capsys, "collect")


def test_a_folder_where_a_file_belongs(copy_run, capsys):
    report = copy_run["dir"] / "report.json"
    report.unlink()
    report.mkdir()
    assert cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    line = one_error_line(capsys, "evaluate")
    assert "report.json" in line
    assert not [p for p in os.listdir(copy_run["dir"]) if p.endswith(".tmp")]


def test_a_finished_stage_writes_nothing(copy_run):
    """Not even the recipe: a finished run on read-only media still answers."""
    run = copy_run["dir"]

    def files() -> dict:
        return {
            p: (p.stat().st_mtime_ns, p.read_bytes())
            for p in run.rglob("*")
            if p.is_file() and ".worldmodels." not in p.name
        }

    before = files()
    for stage in ("train-vision", "train-memory", "train-controller"):
        assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"]) == 0
    assert files() == before


def test_a_damaged_latent_file_is_named_and_encoded_again(copy_run, capsys):
    ck, ro, latents = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"] / "latents"
    victim = sorted(latents.glob("*.npz"))[1]
    intact = victim.read_bytes()
    victim.write_bytes(intact[: len(intact) // 2])
    assert cli_stage("train-memory", ck, ro, "--set", "memory.epochs=2") == 2
    line = one_error_line(capsys, "train-memory")
    assert victim.name in line and "worldmodels encode" in line
    assert cli_stage("encode", ck, ro) == 0
    assert victim.read_bytes() == intact  # the same V encodes the same episode to the same bytes
    assert cli_stage("train-memory", ck, ro, "--set", "memory.epochs=2") == 0


def test_an_episode_of_the_wrong_shape_or_dtype_is_named(copy_rollouts, tmp_path, capsys):
    import numpy as np

    from worldmodels.data.episodes import CorruptEpisode, load_episode, save_episode

    path = copy_rollouts / "tiny" / "episodes" / "ep_000002.npz"
    episode = load_episode(path)
    for _name, broken in (
        ("float obs", {"obs": episode["obs"].astype(np.float64)}),
        ("flat obs", {"obs": episode["obs"].reshape(len(episode["obs"]), -1)}),
        ("2-d reward", {"reward": episode["reward"][:, None]}),
    ):
        save_episode(path, episode | broken)
        with pytest.raises(CorruptEpisode, match="ep_000002"):
            load_episode(path)
    # collect names it and collects it again; the rest of the folder is kept
    assert cli_stage("collect", tmp_path / "ck", copy_rollouts) == 0
    out = capsys.readouterr().out
    assert (
        "skipping corrupt episode ep_000002.npz" in out
        and "collecting 1 corrupt episode(s) again: ep_000002.npz" in out
    )
    assert load_episode(path)["obs"].dtype == np.uint8


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs), where this machine lets the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_disk, tiny_rollouts, capsys):
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # leave a few KiB: enough for the folder, not for V's checkpoint
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    filler.write_bytes(filler.read_bytes()[: -8 * 4096])
    assert cli_stage("train-vision", small_disk / "ck", tiny_rollouts) == 2
    line = one_error_line(capsys, "train-vision")
    assert "No space left on device" in line
    assert not list((small_disk / "ck").rglob("*.tmp")) and not (small_disk / "ck" / "tiny" / "vision.pt").exists()


def test_a_finished_run_on_read_only_media_still_answers(small_disk, copy_run, capsys):
    import shutil

    # finishes the run: samples, report
    assert cli_stage("pipeline", copy_run["checkpoints"], copy_run["rollouts"]) == 0
    shutil.copytree(copy_run["checkpoints"], small_disk / "ck")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert cli_stage("pipeline", small_disk / "ck", copy_run["rollouts"]) == 0  # every stage finished: nothing to write
    capsys.readouterr()
    assert (
        cli_stage("train-controller", small_disk / "ck", copy_run["rollouts"], "--set", "controller.generations=3") == 2
    )
    assert "Read-only file system" in one_error_line(capsys, "train-controller")


def test_a_damaged_report_is_made_again(copy_run):
    import json

    report = copy_run["dir"] / "report.json"
    before = json.loads(report.read_text())
    report.write_text('{"mean": ')
    assert cli_stage("pipeline", copy_run["checkpoints"], copy_run["rollouts"]) == 0
    again = json.loads(report.read_text())
    assert again["returns"] == before["returns"] and again["seeds"] == before["seeds"]


def test_a_planted_pid_link_is_refused_and_its_target_untouched(copy_run, tmp_path, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_text("not a PID")
    pid = copy_run["dir"] / ".worldmodels.pid"
    pid.unlink(missing_ok=True)
    pid.symlink_to(outside)
    assert cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    line = one_error_line(capsys, "evaluate")
    assert ".worldmodels.pid" in line and "outside" in line and "remove the link" in line
    assert outside.read_text() == "not a PID"


def test_a_planted_folder_link_is_refused_and_outside_temp_files_stay(copy_run, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stray = outside / ".someone.else.tmp"  # what the clean-up of a killed writer's temp files would delete
    stray.write_text("theirs")
    (copy_run["dir"] / "tb").rename(tmp_path / "tb_moved")
    (copy_run["dir"] / "tb").symlink_to(outside)
    assert cli_stage("train-memory", copy_run["checkpoints"], copy_run["rollouts"]) == 2
    line = one_error_line(capsys, "train-memory")
    assert "'tb'" not in line and "/tb' is a link to" in line
    assert stray.read_text() == "theirs"


def test_a_link_that_stays_inside_the_run_folder_is_allowed(copy_run):
    (copy_run["dir"] / "report_link.json").symlink_to(copy_run["dir"] / "report.json")
    assert cli_stage("evaluate", copy_run["checkpoints"], copy_run["rollouts"]) == 0


def fill(disk, leave: int = 0) -> None:
    """Leave `leave` pages of 4 KiB free on the small disk."""
    with open(disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 4096)
    os.truncate(disk / "filler", os.path.getsize(disk / "filler") - leave * 4096)


@pytest.mark.parametrize("stage, names", [("train-controller", "cmaes.pt"), ("train-memory", "")])
def test_a_full_disk_while_saving_the_search_or_logging_is_one_line(small_disk, copy_run, capsys, stage, names):
    import shutil

    run = shutil.copytree(copy_run["checkpoints"], small_disk / "ck") / "tiny"
    if stage == "train-memory":
        (run / "memory.pt").unlink()
    before = (run / "cmaes.pt").read_bytes()
    fill(small_disk, leave=4 if stage == "train-controller" else 0)  # the recipe and the logs fit, the search not
    extra = ("--set", "controller.generations=4") if stage == "train-controller" else ()
    assert cli_stage(stage, small_disk / "ck", copy_run["rollouts"], *extra) == 2
    line = one_error_line(capsys, stage)  # no traceback from torch's writer or TensorBoard's thread after it
    assert "No space left on device" in line and names in line
    assert (run / "cmaes.pt").read_bytes() == before and not list(run.rglob("*.tmp"))


def test_a_checkpoint_that_does_not_fit_is_an_os_error_naming_it(small_disk):
    from worldmodels.runs import checkpoints

    old = small_disk / "memory.pt"
    checkpoints.save(old, {"kind": "memory", "w": torch.zeros(10)})
    before = old.read_bytes()
    fill(small_disk, leave=4)
    # torch's own zip writer reports this as "RuntimeError: [enforce fail at inline_container.cc]"
    with pytest.raises(OSError, match="No space left on device") as caught:
        checkpoints.save(old, {"kind": "memory", "w": torch.zeros(100_000)})
    assert caught.value.filename == str(old) and old.read_bytes() == before
    assert not list(small_disk.glob(".*.tmp"))


@pytest.mark.parametrize("stage", ["evaluate", "sample"])
@pytest.mark.parametrize(
    "setting, named", [("vision.latent_dim=5", "vision.latent_dim"), ("memory.hidden_size=12", "memory.hidden_size")]
)
def test_a_reader_refuses_checkpoints_made_for_another_recipe(copy_run, capsys, stage, setting, named):
    report = copy_run["dir"] / "report.json"
    before = report.read_bytes()
    assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"], "--set", setting) == 2
    line = one_error_line(capsys, stage)
    assert named in line and "the recipe says" in line and "another --run" in line
    assert report.read_bytes() == before


# ---------------------------------------------------------------- every file says what world it was made for


def test_a_file_made_for_another_world_is_refused_by_every_reader(copy_run, tmp_path, capsys):
    """CartPole-v0 has CartPole-v1's frames and actions: only the fingerprint tells the two runs apart."""
    import gymnasium as gym

    report = copy_run["dir"] / "report.json"
    before = report.read_bytes()
    for stage in ("evaluate", "sample", "train-memory", "train-controller"):
        assert cli_stage(stage, copy_run["checkpoints"], copy_run["rollouts"], "--set", "env.id=CartPole-v0") == 2
        line = one_error_line(capsys, stage)
        assert "env.id='CartPole-v1' but the recipe says 'CartPole-v0'" in line and "another --run" in line
        assert str(copy_run["dir"]) in line
    assert report.read_bytes() == before
    other = tmp_path / "other.toml"
    other.write_text(open(TINY).read().replace('id = "CartPole-v1"', 'id = "CartPole-v0"'))
    with pytest.raises(WorldModelsError, match="env.id='CartPole-v1' but the recipe says 'CartPole-v0'"):
        gym.make("worldmodels/Dream-v0", run=str(copy_run["dir"]), recipe=str(other))
    # episodes too: collecting into another world's folder is refused before anything is written
    manifest = copy_run["rollouts"] / "tiny" / "episodes" / "manifest.json"
    assert cli_stage("collect", copy_run["checkpoints"], copy_run["rollouts"], "--set", "env.id=CartPole-v0") == 2
    assert f"'{manifest}' was made with env.id='CartPole-v1'" in one_error_line(capsys, "collect")


BROKEN_EPISODES = {
    "action width": (lambda e: {"action": np.stack([e["action"], e["action"]], axis=1)}, "actions of shape (2,)"),
    "32x32 frames": (lambda e: {"obs": e["obs"].repeat(2, axis=1).repeat(2, axis=2)}, "frames of 32x32"),
    "out-of-range action": (lambda e: {"action": e["action"] + 5}, "actions outside the world's action space"),
    "NaN reward": (lambda e: {"reward": e["reward"] * np.nan}, "rewards that are not finite numbers"),
    "string rewards": (lambda e: {"reward": e["reward"].astype(str)}, "reward must be numbers, got <U"),
}


@pytest.mark.parametrize("case", list(BROKEN_EPISODES))
def test_an_episode_that_is_not_of_the_recipes_world_is_named_and_left_out(copy_run, tmp_path, capsys, case):
    from worldmodels import config
    from worldmodels.data.episodes import CorruptEpisode, load_episode, save_episode
    from worldmodels.play.collect import episode_layout

    ck, ro = copy_run["checkpoints"], copy_tree(copy_run["rollouts"], tmp_path / "ro")
    path = ro / "tiny" / "episodes" / "ep_000003.npz"
    intact = load_episode(path)
    change, reason = BROKEN_EPISODES[case]
    save_episode(path, intact | change(intact))
    with pytest.raises(CorruptEpisode, match=f"ep_000003.npz: .*{re.escape(reason)}"):
        load_episode(path, episode_layout(config.load(TINY).env))
    (copy_run["dir"] / "latents" / path.name).unlink()  # encode reads it again
    assert cli_stage("encode", ck, ro) == 0
    assert f"skipping corrupt episode ep_000003.npz: {reason}" in capsys.readouterr().out
    assert path.name not in checkpoints.read_json(copy_run["dir"] / "latents" / "manifest.json")["episodes"]
    path.unlink()  # collect plays it again: the same seed, the same episode
    assert cli_stage("collect", ck, ro) == 0
    again = load_episode(path)
    assert all(np.array_equal(again[k], intact[k]) for k in intact)


@pytest.mark.parametrize(
    "case, change, reason",
    [
        ("wrong width", lambda d: d | {"mu": d["mu"][:, :2]}, "latents 2 wide, but V's are 4"),
        ("NaN latents", lambda d: d | {"mu": d["mu"] * np.float16("nan")}, "latents, actions or rewards that are not"),
        ("another V's", lambda d: d | {"vision_id": np.asarray("0" * 32)}, "encoded by another V"),
    ],
)
def test_a_latent_file_that_does_not_fit_is_named_and_encoded_again(copy_run, capsys, case, change, reason):
    from worldmodels.data.episodes import save_episode

    ck, ro = copy_run["checkpoints"], copy_run["rollouts"]
    victim = sorted((copy_run["dir"] / "latents").glob("*.npz"))[2]
    intact = victim.read_bytes()
    with np.load(victim) as d:
        save_episode(victim, change({k: d[k] for k in d.files}))
    assert cli_stage("train-memory", ck, ro, "--set", "memory.epochs=2") == 2
    line = one_error_line(capsys, "train-memory")
    assert f"latent file {victim.name}: {reason}" in line and "worldmodels encode" in line
    assert cli_stage("encode", ck, ro) == 0
    assert victim.read_bytes() == intact


def test_latents_of_an_earlier_v_are_refused(copy_run, capsys):
    ck, ro, vision = copy_run["checkpoints"], copy_run["rollouts"], copy_run["dir"] / "vision.pt"
    retrained = checkpoints.load(vision, "vision") | {"id": "f" * 32}  # what training V again leaves
    checkpoints.save(vision, retrained)
    assert cli_stage("train-memory", ck, ro, "--set", "memory.epochs=2") == 2
    assert "encoded by an earlier V; run `worldmodels encode`" in one_error_line(capsys, "train-memory")
    assert cli_stage("encode", ck, ro) == 0
    assert cli_stage("train-memory", ck, ro, "--set", "memory.epochs=2") == 0
