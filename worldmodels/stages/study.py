"""A multi-seed study: the pipeline once per seed, each in its own run folder, summarised with interval estimates.

One seed is not a result: the same recipe swings by tens of points with the seed, and one seed does not even
reproduce across machines. A study states a recipe's score as the interquartile mean over seeds with a 95%
stratified bootstrap interval (Agarwal et al. 2021, computed by their library, rliable).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldmodels import config as config_lib
from worldmodels import stages
from worldmodels.config import Config
from worldmodels.core.errors import WorldModelsError
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.pipeline import pipeline

SHARED = {  # --from STAGE: the stages every seed shares, and the seed fields each seed still sets
    "collect": ((), ("collect", "vision", "memory", "controller", "nas")),
    "memory": (("collect", "train-vision", "encode"), ("memory", "controller")),
    "controller": (("collect", "train-vision", "encode", "train-memory"), ("controller",)),
}
CONFIDENCE = 0.95


def seed_config(cfg: Config, seed: int, reseeded: tuple[str, ...], name: str) -> Config:
    """The recipe for one seed: every reseeded stage's seed offset by `seed`, so seed 0 is the recipe as written."""
    seeded = copy.deepcopy(cfg)
    seeded.name = name
    for section in reseeded:
        part = getattr(seeded, section)
        part.seed = part.seed + seed
    return config_lib.validate(seeded)


def link(path: Path, dest: Path) -> None:
    """Hard-link `path` to `dest` (a copy across file systems), unless `dest` exists.

    Safe to share: every writer here replaces a file by renaming a new one over it, never writing into it.
    """
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)


def link_tree(source: Path, target: Path) -> None:
    """`link` every file of `source` into `target`, except hidden ones (locks, PID and temp files are a
    process's own)."""
    for path in sorted(source.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(source).parts):
            link(path, target / path.relative_to(source))


def prepare(run: Run) -> None:
    """What the CLI does for a writing stage: refuse other model sizes, make the folder, record the recipe."""
    stages.check_run(run.cfg, run)
    run.dir.mkdir(parents=True, exist_ok=True)
    run.write_recipe()


def run_shared(cfg: Config, run: Run, rollouts_root: Path, shared: tuple[str, ...]) -> None:
    """The stages every seed shares, once, in the study's `shared` folder."""
    prepare(run)
    stages.collect(cfg, rollouts_root)
    if "train-vision" in shared:
        stages.train_vision(cfg, run, rollouts_root)
        stages.encode(cfg, run, rollouts_root)
    if "train-memory" in shared:
        stages.train_memory(cfg, run)


def share_into(
    shared_run: Run, shared_rollouts: Path, seed_run: Run, seed_rollouts: Path, shared: tuple[str, ...]
) -> None:
    """Give a seed's folders the shared stages' outputs, so its pipeline finds them done and skips them."""
    link_tree(shared_rollouts, seed_rollouts)
    if "train-vision" in shared:
        link(shared_run.vision, seed_run.vision)
        link_tree(shared_run.latents, seed_run.latents)
    if "train-memory" in shared:
        for k in range(shared_run.cfg.memory.ensemble):
            link(shared_run.member(k), seed_run.member(k))


def statistics(scores: list[float], reps: int = 50_000, seed: int = 0) -> dict:
    """Mean, median and interquartile mean of per-seed scores, each with a 95% stratified bootstrap
    interval (rliable)."""
    from rliable import library, metrics  # arch and pandas load only for a study

    if not scores:
        return {}
    matrix = {"recipe": np.asarray(scores, dtype=float)[:, None]}  # runs x tasks: one task, one score per seed

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), float(np.mean(x)), float(np.median(x))])

    # rliable draws its resamples from numpy's global generator: seed it, then put it back
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch deprecates the RandomState that rliable hands it
            warnings.simplefilter("ignore", FutureWarning)
            point, interval = library.get_interval_estimates(
                matrix,
                aggregates,
                reps=reps,
                confidence_interval_size=CONFIDENCE,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(state)
    point, interval = point["recipe"], interval["recipe"]
    return (
        {name: float(point[i]) for i, name in enumerate(("iqm", "mean", "median"))}
        | {
            f"{name}_ci": [float(interval[0, i]), float(interval[1, i])]
            for i, name in enumerate(("iqm", "mean", "median"))
        }
        | {"confidence": CONFIDENCE, "bootstrap_reps": reps, "method": "rliable stratified bootstrap (percentile)"}
    )


def picture(path: Path, rows: list[dict], stats: dict, title: str):
    """Each seed's episode returns as a box and its points, the IQM and its interval across them; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2.5, 4))
    data = [r["returns"] for r in rows]
    ax.boxplot(data, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0)
    for i, returns in enumerate(data, start=1):
        ax.scatter(i + jitter.uniform(-0.18, 0.18, len(returns)), returns, s=6, alpha=0.4)
        ax.plot(i, np.mean(returns), marker="D", color="black", markersize=5)
    if stats:
        low, high = stats["iqm_ci"]
        ax.axhspan(
            low, high, color="tab:green", alpha=0.15, label=f"IQM {stats['iqm']:.1f}, 95% CI [{low:.1f}, {high:.1f}]"
        )
        ax.axhline(stats["iqm"], color="tab:green")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(1, len(rows) + 1), [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel("return per evaluation episode")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    checkpoints.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return fig


def log_study(root: Path, rows: list[dict], stats: dict, fig) -> None:
    """Per-seed scores and times, the aggregates with their intervals and the picture, to the study's TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(root / "tb")
    for r in rows:
        writer.add_scalar("study/seed_mean_return", r["mean"], r["seed"])
        writer.add_scalar("study/seed_wall_minutes", r["wall_s"] / 60, r["seed"])
    for name in ("iqm", "mean", "median"):
        low, high = stats[f"{name}_ci"]
        writer.add_scalars(f"study/{name}", {"point": stats[name], "ci_low": low, "ci_high": high}, len(rows))
    writer.add_figure("study/distributions", fig, len(rows))
    writer.close()


def run_seed(seed: int, seed_run: Run, rollouts_root: Path, old: dict | None) -> dict:
    """One seed's pipeline, resumed where it stopped: its study row (a finished seed keeps its measured time)."""
    prepare(seed_run)
    started = time.perf_counter()
    report = pipeline(seed_run.cfg, seed_run, rollouts_root)
    wall = time.perf_counter() - started
    if old is not None and old.get("returns") == report["returns"]:
        wall = old["wall_s"]  # finished before: the measured time stands, not this call's skipping
    tqdm.write(f"study: seed {seed}: {report['mean']:.1f} +- {report['std']:.1f} in {wall / 60:.1f} min")
    return {
        "seed": seed,
        "mean": report["mean"],
        "std": report["std"],
        "wall_s": round(wall, 1),
        "run": str(seed_run.dir),
        "returns": report["returns"],
    }


def study(cfg: Config, root: Path, rollouts_root: Path, seeds: list[int], start: str = "collect") -> dict:
    """Run the pipeline for each seed in `root/seed_S/` (episodes in `rollouts_root/seed_S/`) and summarise the scores.

    Resumable: every seed's pipeline resumes by itself, and a finished seed's wall time stays as measured.
    """
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise WorldModelsError(f"--seeds must be distinct numbers, 0 or more, got {seeds}")
    shared, reseeded = SHARED[start]
    if cfg.controller.world == "codebook" and shared:
        raise WorldModelsError("a codebook-world recipe's study reseeds every stage; drop --from")
    if cfg.controller.world != "codebook":
        reseeded = tuple(s for s in reseeded if s != "nas")
    root, rollouts_root = Path(root), Path(rollouts_root)
    out = root / "study.json"
    saved = checkpoints.read_json(out) or {}
    if saved.get("from", start) != start:  # the seeds' folders hold runs reseeded from another stage
        raise WorldModelsError(f"'{root}' holds a study reseeded from {saved['from']}, not {start}; use another --run")
    previous = {r["seed"]: r for r in saved.get("seeds", []) if isinstance(r, dict) and "seed" in r}
    result = {
        "recipe": cfg.name,
        "env": cfg.env.id,
        "from": start,
        "shared": list(shared),
        "reseeded": list(reseeded),
        "evaluation_episodes": cfg.evaluate.episodes,
        "seeds": list(previous.values()),
    }
    checkpoints.save_json(out, result)  # records `from` before any seed runs
    shared_cfg = copy.deepcopy(cfg)
    shared_cfg.name = "shared"
    shared_run = Run(root, shared_cfg)
    if shared:
        tqdm.write(
            f"study: {', '.join(shared)} shared by every seed (in {shared_run.dir}); "
            f"{' and '.join(reseeded)} reseeded per seed"
        )
        started = time.perf_counter()
        run_shared(shared_cfg, shared_run, rollouts_root, shared)
        result["shared_wall_s"] = saved.get("shared_wall_s") or round(time.perf_counter() - started, 1)
    else:
        tqdm.write(f"study: every stage reseeded per seed ({', '.join(reseeded)})")
    rows = []
    for seed in seeds:
        seed_run = Run(root, seed_config(cfg, seed, reseeded, f"seed_{seed}"))
        tqdm.write(f"study: seed {seed} in {seed_run.dir}")
        if shared:
            share_into(shared_run, rollouts_root / "shared", seed_run, rollouts_root / f"seed_{seed}", shared)
        rows.append(run_seed(seed, seed_run, rollouts_root, previous.get(seed)))
        previous[seed] = rows[-1]
        checkpoints.save_json(out, result | {"seeds": list(previous.values())})  # an interruption keeps finished seeds
    stats = statistics([r["mean"] for r in rows])
    result = result | stats | {"seeds": rows}
    checkpoints.save_json(out, result)
    title = f"{cfg.name}: {len(rows)} seeds x {cfg.evaluate.episodes} episodes\n(diamonds: the seeds' means)"
    log_study(root, rows, stats, picture(root / "study.png", rows, stats, title))
    tqdm.write(
        f"study: IQM {stats['iqm']:.1f}, 95% CI [{stats['iqm_ci'][0]:.1f}, {stats['iqm_ci'][1]:.1f}] "
        f"over {len(rows)} seeds; {out}, {root / 'study.png'}"
    )
    return result
