"""The codebook NAS task: V on architecture encodings, the search's pieces, the CLI pipeline, resuming.

A table of 80 measured architectures (a slice of the committed one) keeps the surrogate quick; the CLI runs use
a budget of seconds: 500 sampled architectures for V, 2 CMA-ES generations of 4, one training seed per winner.
"""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import TESTS, TINY, run_cli

from worldmodels import config as config_lib
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller
from worldmodels.nas import search
from worldmodels.nas import space as nas_space
from worldmodels.nas import table as nas_table
from worldmodels.nas.autoencoder import ArchitectureVQVAE, ArchitectureVQVAEConfig, encodings
from worldmodels.nas.space import CHOICES, MAX_LAYERS, Architecture, decode_slots, num_params
from worldmodels.nas.table import DEFAULT_TABLE, load_table
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.evolution import train_controller

RECIPE = TESTS.parent / "envs" / "codebook_nas.toml"
NAME = "codebook_nas"  # the recipe's name
BUDGET = [
    "vision.epochs=1",
    "nas.samples=500",
    "controller.generations=2",
    "controller.population=4",
    "controller.rollouts=1",
    "controller.eval_every=1",
    "controller.eval_rollouts=2",
    "nas.final_seeds=1",
    "evaluate.episodes=2",
    "codebook.size_penalty=0.5",  # small winners: quick to train for real
]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    """The budget above plus a small table: 80 rows of the committed table (or, without it, 24 freshly measured)."""
    path = tmp_path_factory.mktemp("nas_table") / "table.csv"
    if DEFAULT_TABLE.is_file():
        nas_table.write_table(path, load_table(DEFAULT_TABLE)[:80])
    else:
        nas_table.main(["--archs", "24", "--seeds", "1", "--out", str(path)])
    return [f'nas.table="{path}"', *BUDGET]


def cli_args(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def nas_stage(stage: str, root, overrides: list[str], *extra: str) -> int:
    """One stage of the codebook recipe into checkpoints root `root`."""
    return run_cli(stage, RECIPE, "--checkpoints", root, "--rollouts", root / "ro", *cli_args(overrides), *extra)


def recipe(overrides: list[str], *more: str) -> config_lib.Config:
    return config_lib.load(RECIPE, [*overrides, *more])


def one_error_line(capsys, stage: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"worldmodels {stage}: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def nas_run(tmp_path_factory, overrides) -> dict:
    """The codebook pipeline through the CLI (read-only for the tests: copy it to change it)."""
    root = tmp_path_factory.mktemp("nas_ck")
    assert nas_stage("pipeline", root, overrides) == 0
    return {"root": root, "dir": root / NAME}


def copy_with_vision_only(nas_run, tmp_path, name: str):
    """A copy of the run with only V trained: C's search starts from nothing."""
    root = tmp_path / name
    shutil.copytree(nas_run["root"], root)
    for stale in ("cmaes.pt", "controller.pt", "report.json"):
        (root / NAME / stale).unlink()
    return root


# ---------------------------------------------------------------- V of architectures


def test_architecture_vqvae_learns_and_decodes():
    torch.manual_seed(0)
    model = ArchitectureVQVAE(ArchitectureVQVAEConfig(slots=4, hidden=64, embed_dim=4, num_embeddings=32)).train()
    x = encodings(1024, seed=0)
    assert x.shape == (1024, MAX_LAYERS * len(CHOICES))
    first = model.loss(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        losses = model.loss(x[torch.randint(len(x), (128,), generator=g)])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    model.eval()
    last = model.loss(x)
    assert last["loss"].item() < 0.6 * first["loss"].item()
    assert first["exact"].item() < 0.02 and last["exact"].item() > 0.15  # whole architectures come back

    with torch.no_grad():
        latent, codes, _ = model.encode(x[:50])
    assert latent.shape == (50, 4, 4) and codes.shape == (50, 4)
    torch.testing.assert_close(latent, model.codebook[codes], rtol=0, atol=1e-6)  # codebook rows (straight-through)
    # `exact` is the fraction whose every slot decodes to its choice, by hand
    with torch.no_grad():
        choices = model.decode(latent).argmax(-1)
    target = x[:50].reshape(50, MAX_LAYERS, -1).argmax(-1)
    assert model.loss(x[:50])["exact"].item() == pytest.approx((choices == target).all(-1).float().mean().item())
    for row in range(5):  # architecture(latent) decodes the argmax choice of each slot
        arch = model.architecture(latent[row].numpy())
        assert isinstance(arch, Architecture) and arch == decode_slots(choices[row].tolist())
        assert Architecture.parse(str(arch)) == arch


def test_decoder_memoises():
    torch.manual_seed(1)
    model = ArchitectureVQVAE(ArchitectureVQVAEConfig(slots=2, hidden=16, embed_dim=3, num_embeddings=5)).eval()
    calls = []
    original = model.architecture
    model.architecture = lambda latent: calls.append(latent.copy()) or original(latent)
    decoder = search.Decoder(model)
    codebook = model.codebook.numpy()
    latent = codebook[[1, 3]]
    first = decoder(latent)
    assert first == original(latent) and len(calls) == 1
    assert decoder(latent.copy()) is first and decoder(latent.astype(np.float64)) is first  # same values: no new call
    assert len(calls) == 1
    other = codebook[[3, 1]]
    assert decoder(other) == original(other) and len(calls) == 2
    decoder(other)
    assert len(calls) == 2 and len(decoder.memo) == 2


def test_size_is_the_fraction_of_the_largest_network():
    largest = Architecture(((256, "relu"),) * MAX_LAYERS)
    assert search.size(largest) == 1.0
    assert search.size(Architecture(((256, "tanh"),) * MAX_LAYERS)) == 1.0  # activations have no parameters
    rng = np.random.default_rng(0)
    archs = [nas_space.sample(rng) for _ in range(50)] + [Architecture(())]
    for arch in archs:
        assert search.size(arch) == pytest.approx(num_params(arch) / num_params(largest), rel=1e-12)
        assert 0 < search.size(arch) <= 1.0
    assert search.size(Architecture(())) == pytest.approx(650 / num_params(largest))  # 64 * 10 + 10


# ---------------------------------------------------------------- random search and the evaluator


@pytest.fixture(scope="module")
def surrogate(overrides):
    return search.fit_surrogate(recipe(overrides))


def test_random_search_is_seeded_and_scored_by_the_surrogate(overrides, surrogate):
    cfg = recipe(overrides)
    queries_before = surrogate.queries
    first = search.random_search(cfg, surrogate, 30, seed=3)
    assert first == search.random_search(cfg, surrogate, 30, seed=3)
    assert first != search.random_search(cfg, surrogate, 30, seed=4)
    rng = np.random.default_rng(3)  # the architectures are the sampler's, in order
    assert list(first) == list(dict.fromkeys(nas_space.sample(rng) for _ in range(30)))
    archs = list(first)
    np.testing.assert_allclose(list(first.values()), surrogate.predict(archs), rtol=0, atol=0)
    assert [surrogate(a) for a in archs] == pytest.approx(list(first.values()))
    assert surrogate.queries == queries_before + len(archs)
    best = search.best_of(cfg, first)  # the best objective, by hand
    assert best == max(archs, key=lambda a: first[a] - 0.5 * num_params(a) / search.LARGEST)


def test_random_search_gets_as_many_distinct_architectures_as_asked(overrides, surrogate):
    assert len(search.random_search(recipe(overrides), surrogate, 200, seed=0)) == 200


def play_by_hand(env, flat: np.ndarray, seed: int) -> tuple[float, float, int]:
    """One episode of a linear controller, with numpy: (return, f(final) - f(start), steps).

    The action is the argmax of each group of W x + b (tanh does not change an argmax).
    """
    k, slots = env.num_embeddings, env.num_slots
    obs, info = env.reset(seed=seed)
    start, total, steps = info["objective"], 0.0, 0
    while True:
        x = np.concatenate([obs["latent"].ravel(), obs["history"].ravel()]).astype(np.float64)
        out = k + 1 + slots
        y = flat[: out * len(x)].reshape(out, len(x)) @ x + flat[out * len(x) :]
        obs, reward, terminated, truncated, info = env.step(np.array([y[: k + 1].argmax(), y[k + 1 :].argmax()]))
        total, steps = total + reward, steps + 1
        if terminated or truncated:
            return total, info["objective"] - start, steps


def test_codebook_evaluator_returns_match_playing_by_hand(nas_run, overrides):
    cfg = recipe(overrides)
    run = Run(nas_run["root"], cfg)
    with search.CodebookEvaluator(cfg, run) as evaluator:
        model = search.load_architecture_vision(run.vision)
        b = cfg.codebook
        assert evaluator.input_dim == model.cfg.slots * model.cfg.embed_dim + 2 * b.num_previous_actions
        dim = Controller(evaluator.input_dim, evaluator.space).num_params
        # small weights: codes in the history are integers up to 32, and tanh of large logits ties at 1.0 (see below)
        candidates = np.random.default_rng(0).standard_normal((3, dim)) * 0.03
        returns = evaluator.returns(candidates, [5, 6])
        archive, steps = evaluator.archive(), evaluator.steps
    env = search.make_codebook_world(cfg, model, search.fit_surrogate(cfg))
    assert env.max_allowed_actions == b.max_allowed_actions and env.size_penalty == b.size_penalty
    np.testing.assert_array_equal(env.codebook, model.codebook.numpy())
    expected, total_steps, lengths = np.zeros((3, 2)), 0, set()
    for p in range(3):
        for j, seed in enumerate([5, 6]):
            ret, telescoped, n = play_by_hand(env, candidates[p], seed)
            assert ret == pytest.approx(telescoped, abs=1e-12)  # returns telescope to f(final) - f(start)
            expected[p, j], total_steps = ret, total_steps + n
            lengths.add(n)
    np.testing.assert_allclose(returns, expected, rtol=0, atol=1e-12)
    assert steps == total_steps and 1 < max(lengths) <= b.max_allowed_actions
    assert np.abs(expected).max() > 0  # some edits changed the objective
    # the archive is every architecture the episodes visited, with the surrogate's score
    assert archive and all(
        score == pytest.approx(float(env.surrogate.predict([Architecture.parse(a)])[0])) for a, score in archive.items()
    )
    assert set(archive) == {str(a) for a in env.surrogate.memo}


def test_controller_picks_the_largest_logit_even_when_tanh_saturates():
    # the codebook world's action space for 32 codes and 4 slots; its observations hold code integers up to 32,
    # so logits this large are common (at the recipe's sigma0 = 0.5, about two steps in three tie)
    space = gym.spaces.MultiDiscrete([33, 4])
    dim, out = 22, 33 + 4
    bias = np.zeros(out)
    bias[[3, 7]] = [10.0, 14.0]  # code 7 has the larger logit; both are past tanh's float32 saturation
    bias[33 + np.array([0, 2])] = [11.0, 12.0]  # slot 2 likewise
    c = Controller.from_flat(np.concatenate([np.zeros(out * dim), bias]), dim, space)
    assert c.act(torch.zeros(1, dim), torch.zeros(1, 0))[0].tolist() == [7, 2]


# ---------------------------------------------------------------- the CLI pipeline


def test_codebook_pipeline_report(nas_run, overrides):
    run_dir = nas_run["dir"]
    assert {p.name for p in run_dir.iterdir()} >= {
        "vision.pt",
        "cmaes.pt",
        "controller.pt",
        "report.json",
        "recipe.toml",
    }
    assert checkpoints.load(run_dir / "vision.pt", "vision")["config"]["model"] == "architecture_vqvae"
    report = json.loads((run_dir / "report.json").read_text())
    _, progress, _ = search_state.load(run_dir / "cmaes.pt")
    assert report["world"] == "codebook" and progress.world == "codebook" and progress.generation == 2
    assert report["episodes"] == 2 and report["seeds"] == [10_000, 10_001] and len(report["returns"]) == 2
    assert report["mean"] == pytest.approx(np.mean(report["returns"]))
    assert report["surrogate_queries"] > 0 and report["surrogate_queries"] == len(progress.archive)
    assert progress.queries >= len(progress.archive)

    cfg = recipe(overrides)
    found = {Architecture.parse(a): s for a, s in progress.archive.items()}
    searched = search.random_search(cfg, search.fit_surrogate(cfg), report["surrogate_queries"], cfg.nas.seed)
    for name, scored in (("controller_search", found), ("random_search", searched)):
        entry = report[name]
        arch = Architecture.parse(entry["arch"])
        assert arch == search.best_of(cfg, scored)  # the best objective of what each search saw
        assert entry["params"] == num_params(arch)
        assert entry["surrogate"] == pytest.approx(scored[arch], abs=1e-4)
        assert entry["objective"] == pytest.approx(scored[arch] - 0.5 * search.size(arch), abs=1e-4)
        assert 0 < entry["val_acc"] <= 1 and 0 < entry["test_acc"] <= 1 and entry["val_acc_std"] == 0.0  # one seed

    # the kept controller's returns replay exactly
    saved = checkpoints.load(run_dir / "controller.pt", "controller")
    assert report["controller_generation"] == saved["generation"]
    with search.CodebookEvaluator(cfg, Run(nas_run["root"], cfg)) as evaluator:
        replay = evaluator.returns(saved["params"].numpy()[None], report["seeds"])[0]
    np.testing.assert_allclose(replay, report["returns"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("stage", ["pipeline", "train-vision", "train-controller"])
def test_codebook_stages_rerun_on_a_finished_run_skip(nas_run, overrides, tmp_path, capsys, stage):
    root = tmp_path / "ck"
    shutil.copytree(nas_run["root"], root)
    before = {
        name: (root / NAME / name).read_bytes() for name in ("vision.pt", "cmaes.pt", "controller.pt", "report.json")
    }
    assert nas_stage(stage, root, overrides) == 0, capsys.readouterr().err
    for name, data in before.items():
        assert (root / NAME / name).read_bytes() == data, name  # nothing was redone


def test_codebook_train_controller_after_train_vision(nas_run, overrides, tmp_path, capsys):
    root = copy_with_vision_only(nas_run, tmp_path, "ck")
    assert nas_stage("train-controller", root, overrides) == 0, capsys.readouterr().err
    assert (root / NAME / "controller.pt").is_file()


def test_interrupted_search_resumes_with_its_archive(nas_run, overrides, tmp_path):
    # through the library, to stop the search after exactly one generation
    straight_root = copy_with_vision_only(nas_run, tmp_path, "straight")
    resumed_root = copy_with_vision_only(nas_run, tmp_path, "resumed")
    cfg2 = recipe(overrides, "controller.generations=2")
    train_controller(cfg2, Run(straight_root, cfg2))
    cfg1 = recipe(overrides, "controller.generations=1")
    train_controller(cfg1, Run(resumed_root, cfg1))  # stopped after one generation
    _, first, _ = search_state.load(resumed_root / NAME / "cmaes.pt")
    assert first.generation == 1 and first.archive and first.queries >= len(first.archive)
    train_controller(cfg2, Run(resumed_root, cfg2))
    es, resumed, _ = search_state.load(resumed_root / NAME / "cmaes.pt")
    assert resumed.generation == 2 and resumed.queries > first.queries
    assert first.archive.items() <= resumed.archive.items()  # the archive survived, scores unchanged
    es_straight, straight, _ = search_state.load(straight_root / NAME / "cmaes.pt")
    assert resumed.archive == straight.archive and resumed.queries == straight.queries  # as if never interrupted
    np.testing.assert_array_equal(es.mean, es_straight.mean)
    assert resumed.best_score == straight.best_score


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("stage", ["collect", "encode", "sample", "train-memory", "tau-sweep"])
def test_frame_stages_refused_on_a_codebook_recipe(tmp_path, overrides, capsys, stage):
    assert nas_stage(stage, tmp_path, overrides) == 2
    line = one_error_line(capsys, stage)
    assert f"a codebook-world recipe has no '{stage}' stage" in line
    assert not (tmp_path / NAME).exists()


def test_codebook_stages_out_of_order(tmp_path, overrides, capsys):
    assert nas_stage("train-controller", tmp_path, overrides) == 2
    assert "run `worldmodels train-vision` first" in one_error_line(capsys, "train-controller")
    assert not (tmp_path / NAME / "cmaes.pt").exists()
    assert nas_stage("evaluate", tmp_path, overrides) == 2
    assert "run `worldmodels train-controller` first" in one_error_line(capsys, "evaluate")


def test_pipeline_remakes_a_report_made_under_other_settings(nas_run, overrides, tmp_path, capsys):
    root = tmp_path / "ck"
    shutil.copytree(nas_run["root"], root)
    before = json.loads((root / NAME / "report.json").read_text())
    assert nas_stage("pipeline", root, [*overrides, "nas.seed=7", "evaluate.seed=99"]) == 0, capsys.readouterr().err
    after = json.loads((root / NAME / "report.json").read_text())
    assert after["seeds"][0] == 99 and before["seeds"][0] != 99
    assert after["settings"]["nas"]["seed"] == 7


@pytest.mark.parametrize("change", ["codebook.size_penalty=5.0", "codebook.max_allowed_actions=2"])
def test_search_under_other_codebook_rules_is_refused(nas_run, overrides, tmp_path, capsys, change):
    root = tmp_path / "ck"
    shutil.copytree(nas_run["root"], root)
    assert nas_stage("train-controller", root, [*overrides, change, "controller.generations=5"]) == 2
    assert "other codebook-world settings" in one_error_line(capsys, "train-controller")


def test_codebook_recipe_is_not_evaluated_in_another_world(nas_run, overrides, tmp_path, capsys):
    assert nas_stage("evaluate", nas_run["root"], overrides, "--world", "dream") == 2
    assert "codebook world" in one_error_line(capsys, "evaluate")


@pytest.mark.parametrize(
    "override, message",
    [
        ("nas.samples=0", "nas.samples must be positive, got 0"),
        ("nas.final_seeds=0", "nas.final_seeds must be positive, got 0"),
        ("vision.vqvae.ema_decay=1.0", "vision.vqvae.ema_decay must be in [0, 1)"),
    ],
)
def test_bad_nas_values_exit_2(tmp_path, overrides, capsys, override, message):
    assert nas_stage("train-vision", tmp_path, [*overrides, override]) == 2
    assert message in one_error_line(capsys, "train-vision")


def test_a_table_too_small_for_a_surrogate_is_refused(tmp_path, capsys):
    small = tmp_path / "small.csv"
    nas_table.write_table(small, load_table(DEFAULT_TABLE)[:5])
    assert nas_stage("pipeline", tmp_path, [f'nas.table="{small}"', *BUDGET]) == 2
    assert "fewer than 10 architectures" in one_error_line(capsys, "pipeline")


def test_the_codebook_env_id_is_not_a_pixel_world(tmp_path, capsys):
    assert (
        run_cli(
            "collect",
            TINY,
            "--checkpoints",
            tmp_path,
            "--rollouts",
            tmp_path,
            "--set",
            'env.id="worldmodels/Codebook-v0"',
        )
        == 2
    )
    assert "is not a pixel world" in one_error_line(capsys, "collect")
