"""The codebook NAS task end to end: V on architecture encodings, C searching the codebook world, the report.

The architecture the controller's search finds (`controller_search` in the report) is the best, by the
surrogate's objective, of every architecture its CMA-ES search queried; random search gets as many
surrogate queries as the search made of distinct architectures (a repeated query is a memo lookup, not a
surrogate evaluation). Both winners are then trained for real on digits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from worldmodels.config import Config
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.nas import space
from worldmodels.nas.autoencoder import ArchitectureVQVAE, ArchitectureVQVAEConfig, encodings
from worldmodels.nas.space import Architecture
from worldmodels.nas.surrogate import Surrogate, from_rows, held_out_spearman
from worldmodels.nas.table import DEFAULT_TABLE, Row, load_table, sample_distinct
from worldmodels.play.evaluators import SearchWorld, returns_report
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import evolution
from worldmodels.training import Fit, fit
from worldmodels.worlds.codebook import CodebookEnv, flat_world
from worldmodels.worlds.loop import PolicyActor, WorldList, run_episodes

LARGEST = space.num_params(Architecture(((space.WIDTHS[-1], "relu"),) * space.MAX_LAYERS))


def size(arch: Architecture) -> float:
    """A network's parameters as a fraction of the largest in the search space: the size the penalty weighs."""
    return space.num_params(arch) / LARGEST


def table_path(cfg: Config) -> Path:
    return Path(cfg.nas.table) if cfg.nas.table else DEFAULT_TABLE


def vision_config(cfg: Config) -> dict:
    """V's model config from the recipe, as stored in its checkpoint."""
    q = cfg.vision.vqvae
    config = ArchitectureVQVAEConfig(
        cfg.nas.slots,
        cfg.nas.hidden,
        q.embed_dim,
        q.num_embeddings,
        q.commitment,
        q.ema_decay,
        q.dead_after,
        q.codebook_init,
    )
    return {"model": "architecture_vqvae", **vars(config)}


def build_architecture_vision(model_config: dict, path: Path | None = None) -> ArchitectureVQVAE:
    """V from a stored model config; a frame model's config (from the checkpoint at `path`) is refused."""
    config = dict(model_config)
    if config.pop("model", None) != "architecture_vqvae":
        raise WorldModelsError(f"'{path}' is not a VQ-VAE of architectures; use another --run")
    return ArchitectureVQVAE(ArchitectureVQVAEConfig(**config))


def load_architecture_vision(path: Path) -> ArchitectureVQVAE:
    """V from its checkpoint, in eval mode."""
    saved = checkpoints.load(path, "vision")
    model = build_architecture_vision(saved["config"], path)
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def train_vision(cfg: Config, run: Run) -> dict:
    """Train V on `nas.samples` random architectures; exact reconstructions of the table's architectures
    go to TensorBoard."""
    v = cfg.vision
    torch.manual_seed(v.seed)
    model_config = vision_config(cfg)
    model = build_architecture_vision(model_config)
    data = encodings(cfg.nas.samples, v.seed)
    held_out = torch.from_numpy(np.stack([space.encode(row.arch) for row in load_table(table_path(cfg))]))
    generator = torch.Generator()
    writer = SummaryWriter(run.tensorboard)

    def batches(epoch: int):  # slices of one tensor: a DataLoader would collate 20,000 rows one by one
        generator.manual_seed(v.seed * 10_007 + epoch)
        return data[torch.randperm(len(data), generator=generator)].split(v.batch_size)

    def on_epoch_end(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            exact = model.loss(held_out)["exact"].item()
        model.train()
        writer.add_scalar("vision/table_exact", exact, epoch)
        tqdm.write(f"vision: {exact:.1%} of the table's architectures decode exactly")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an MLP this small runs fastest on one thread, and far slower when threads contend
    try:
        return fit(
            Fit(
                "vision",
                model,
                model_config,
                batches,
                model.loss,
                v.epochs,
                v.lr,
                v.seed,
                run.vision,
                writer,
                on_epoch_end,
            )
        )
    finally:
        torch.set_num_threads(threads)
        writer.close()


class Decoder:
    """V's decoder as the codebook world's `decoder`, memoised: the world only ever holds codebook rows."""

    def __init__(self, model: ArchitectureVQVAE):
        self.model, self.memo = model, dict[bytes, Architecture]()

    def __call__(self, latent: np.ndarray) -> Architecture:
        key = latent.astype(np.float32).tobytes()
        if key not in self.memo:
            self.memo[key] = self.model.architecture(latent)
        return self.memo[key]


def make_codebook_world(cfg: Config, model: ArchitectureVQVAE, surrogate: Surrogate) -> CodebookEnv:
    """The codebook world on V's codebook and decoder, scored by the surrogate."""
    b = cfg.codebook
    return CodebookEnv(
        model.cfg.embed_dim,
        model.cfg.num_embeddings,
        surrogate,
        Decoder(model),
        b.max_allowed_actions,
        model.codebook.numpy(),
        b.num_previous_actions,
        b.size_penalty,
        size,
        num_slots=model.cfg.slots,
    )


def table(cfg: Config) -> list[Row]:
    """The recipe's table of measured architectures (at least 10: a held-out rank correlation needs some)."""
    path = table_path(cfg)
    rows = load_table(path)
    if len(rows) < 10:
        raise WorldModelsError(
            f"NAS table '{path}' has fewer than 10 architectures; measure more with `python -m worldmodels.nas.table`"
        )
    return rows


def fit_surrogate(cfg: Config) -> Surrogate:
    """The surrogate fitted on every row of the recipe's table."""
    return from_rows(table(cfg))


class CodebookEvaluator:
    """Scores controllers by their episodes' returns in the codebook world (in-process: a step is a memoised lookup)."""

    def __init__(self, cfg: Config, run: Run):
        self.table = table(cfg)
        self.surrogate = from_rows(self.table)
        self.env = make_codebook_world(
            cfg, load_architecture_vision(run.require(run.vision, "train-vision")), self.surrogate
        )
        self.world = flat_world(self.env)
        self.space = self.env.action_space
        shape = self.world.observation_space.shape
        assert shape is not None
        self.input_dim = shape[0]
        self.steps = 0
        self.rules = {**dataclasses.asdict(cfg.codebook), "table": str(table_path(cfg))}  # what a return means

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """(P, N) candidates x seeds -> (P, len(seeds)) returns: f(final) - f(start) of each episode."""
        controller = Controller.from_flat(candidates, self.input_dim, self.space)
        out = np.zeros((len(candidates), len(seeds)))
        no_memory = torch.zeros(1, 0)  # C sees the world's observation alone: no M here
        for p in range(len(candidates)):

            def act(obs: np.ndarray, p: int = p) -> np.ndarray:
                return controller.act(torch.from_numpy(obs)[None], no_memory, rows=[p])[0]

            played = run_episodes(WorldList([self.world]), PolicyActor(act), seeds)  # one world, episode after episode
            out[p] = [episode.ret for episode in played]
            self.steps += sum(episode.frames for episode in played)
        return out

    def archive(self) -> dict[str, float]:
        """Every architecture queried so far and its surrogate score."""
        return {str(arch): score for arch, score in self.surrogate.memo.items()}

    def state(self) -> dict:
        """The archive of architectures queried and the surrogate's query count, saved with the search."""
        return {"archive": self.archive(), "queries": self.surrogate.queries}

    def restore(self, state: dict) -> None:
        """Continue counting from an interrupted search."""
        self.surrogate.memo.update({Architecture.parse(a): s for a, s in state["archive"].items()})
        self.surrogate.queries = state["queries"]

    def log(self, writer: SummaryWriter, generation: int) -> None:
        writer.add_scalar("codebook/architectures_queried", len(self.surrogate.memo), generation)
        writer.add_scalar("codebook/surrogate_queries", self.surrogate.queries, generation)

    def close(self, graceful: bool = True) -> None:
        self.world.close()

    def __enter__(self) -> "CodebookEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def codebook_world(cfg: Config, run: Run) -> SearchWorld:
    """Seed 000's codebook world, registered under `controller.world = "codebook"` by this package's entry point."""
    evaluator = CodebookEvaluator(cfg, run)
    return SearchWorld(evaluator.input_dim, evaluator.space, lambda: evaluator, evaluator.rules)


def objective(cfg: Config, score: float, arch: Architecture) -> float:
    return score - cfg.codebook.size_penalty * size(arch)


def best_of(cfg: Config, scored: dict[Architecture, float]) -> Architecture:
    """The architecture with the best objective (surrogate score minus size penalty)."""
    return max(scored, key=lambda arch: objective(cfg, scored[arch], arch))


def random_search(cfg: Config, surrogate: Surrogate, queries: int, seed: int) -> dict[Architecture, float]:
    """`queries` different random architectures of the search space, scored by the surrogate in one batch."""
    archs = sample_distinct(queries, np.random.default_rng(seed))
    return dict(zip(archs, surrogate.predict(archs).tolist()))


def train_for_real(cfg: Config, arch: Architecture, score: float) -> dict:
    """Train arch on digits with `nas.final_seeds` seeds: measured val/test accuracy next to the surrogate's guess."""
    runs = [space.train(arch, seed=s) for s in range(cfg.nas.final_seeds)]
    val, test = np.array([r["val_acc"] for r in runs]), np.array([r["test_acc"] for r in runs])
    return {
        "arch": str(arch),
        "params": space.num_params(arch),
        "surrogate": round(score, 4),
        "objective": round(objective(cfg, score, arch), 4),
        "val_acc": round(float(val.mean()), 4),
        "val_acc_std": round(float(val.std()), 4),
        "test_acc": round(float(test.mean()), 4),
        "test_acc_std": round(float(test.std()), 4),
    }


def settings(cfg: Config) -> dict:
    """Everything a codebook report depends on besides the controller: a report made under others is stale."""
    return {
        "evaluate": dataclasses.asdict(cfg.evaluate),
        "nas": dataclasses.asdict(cfg.nas),
        "codebook": dataclasses.asdict(cfg.codebook),
        "table": str(table_path(cfg)),
    }


def evaluate(cfg: Config, run: Run) -> dict:
    """The kept controller's return in the codebook world, and the search's winner vs random search's,
    trained for real."""
    e = cfg.evaluate
    saved = checkpoints.load(run.require(run.controller, "train-controller"), "controller")
    progress = search_state.load_progress(run.cmaes)
    with CodebookEvaluator(cfg, run) as evaluator:
        if saved["config"]["input_dim"] != evaluator.input_dim:
            raise WorldModelsError(
                f"'{run.controller}' was trained on observations of size {saved['config']['input_dim']}, "
                f"but this codebook world gives {evaluator.input_dim}; retrain the controller"
            )
        seeds = [e.seed + i for i in range(e.episodes)]
        returns = evaluator.returns(saved["params"].numpy()[None], seeds)[0]
        surrogate, rows = evaluator.surrogate, evaluator.table
    found = {Architecture.parse(a): s for a, s in progress.archive.items()}
    searched = random_search(cfg, surrogate, len(found), cfg.nas.seed)
    winners = {"controller_search": best_of(cfg, found), "random_search": best_of(cfg, searched)}
    tqdm.write(f"evaluate: training the winners for real ({cfg.nas.final_seeds} seeds each)")
    report = {
        "world": "codebook",
        **returns_report(returns, seeds, saved["generation"]),
        "surrogate_queries": len(found),  # distinct architectures: what random search gets
        "queries_with_repeats": progress.queries,
        "surrogate_spearman": round(held_out_spearman(rows), 4),
        "size_penalty": cfg.codebook.size_penalty,
        "settings": settings(cfg),
        **{
            name: train_for_real(cfg, arch, (found if name == "controller_search" else searched)[arch])
            for name, arch in winners.items()
        },
    }
    checkpoints.save_json(run.report, report)
    writer = SummaryWriter(run.tensorboard)
    for name in winners:
        writer.add_scalar(f"evaluate/{name}_val_acc", report[name]["val_acc"], saved["generation"])
    writer.close()
    return report


def pipeline(cfg: Config, run: Run) -> dict:
    """train-vision, train-controller, evaluate; each skipping itself when complete."""
    train_vision(cfg, run)
    evolution.train_controller(cfg, run)
    report = checkpoints.read_json(run.report)
    if report is not None:
        generation = checkpoints.load(run.controller, "controller")["generation"]
        if report.get("controller_generation") == generation and report.get("settings") == settings(cfg):
            tqdm.write(f"evaluate: {run.report} is up to date, skipping")
            return report
    return evaluate(cfg, run)
