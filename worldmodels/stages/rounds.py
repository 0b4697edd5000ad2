"""Iterative training (Ha & Schmidhuber 2018, section 5): collect with C, retrain M on old + new episodes,
retrain C in the dream.

A controller trained in a dream learns to exploit M where M is wrong; episodes collected with that controller
show M the states it reaches, so the next dream is harder to cheat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from worldmodels import stages
from worldmodels.agent import WorldModel
from worldmodels.config import Config
from worldmodels.data.episodes import episode_entry
from worldmodels.play.backends import real_evaluator
from worldmodels.play.evaluators import open_world
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import evolution


def round_episode_name(r: int, index: int) -> str:
    """Round episodes have their own names, so a recipe may change `rounds.episodes` between rounds."""
    return f"round{r:02d}_{index:06d}.npz"


def collect_round(cfg: Config, run: Run, rollouts_root: Path, r: int) -> dict:
    """Real episodes of the kept controller, its parameters perturbed once per episode (`exploration_params`) and
    noise on its outputs at every step, added to the episode store; resumable."""
    d, store = cfg.rounds, stages.episode_store(rollouts_root, cfg)
    rng = np.random.default_rng([cfg.collect.seed, 7919, r])
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=d.episodes)]
    paths = [store.root / round_episode_name(r, i) for i in range(d.episodes)]
    todo = [k for k, path in enumerate(paths) if not path.is_file()]
    if todo:
        model = WorldModel.load(run.vision, run.memory)
        saved = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)
        flat = saved["params"].numpy()
        record_collector(run, r, flat, saved["generation"])  # before any episode exists, so a resumed round has it
        # drawn for every episode after the seeds, so a resumed round gives its episodes the same controllers
        flats = flat + d.exploration_params * rng.standard_normal((d.episodes, len(flat)))
        with real_evaluator(cfg, run.vision, run.memory, cfg.collect.workers) as collector:
            noise = float(np.hypot(cfg.controller.noise, d.exploration))  # C's own noise, then exploration's
            collector.collect(flats[todo], [seeds[k] for k in todo], noise, [paths[k] for k in todo])
    entries, returns = [], []
    for path, episode in store.iter_episodes(paths):
        entries.append(episode_entry(path, episode, round=r))
        returns.append(float(episode["reward"].sum()))
    store.add(entries)
    return {
        "round": r,
        "episodes": len(entries),
        "real_steps": sum(e["frames"] for e in entries),
        "real_return_explore": float(np.mean(returns)) if returns else float("nan"),
    }


def collectors_path(run: Run) -> Path:
    return run.dir / "collectors.pt"


def record_collector(run: Run, r: int, flat: np.ndarray, generation: int) -> None:
    """Remember the controller that collects round r, and the generation it was kept at."""
    path = collectors_path(run)
    saved: dict = checkpoints.load(path, "collectors") if path.is_file() else {"kind": "collectors", "rounds": {}}
    saved["rounds"][r] = {"params": torch.as_tensor(flat, dtype=torch.float32), "generation": generation}
    checkpoints.save(path, saved)


def confirm(cfg: Config, run: Run, rollouts_root: Path, r: int) -> dict:
    """rounds.confirm: round r collects with the last search's controller and retrains M, with no search after it;
    M has now seen both that controller and the one it replaced (round r - 1's collector) drive, so the new dream's
    scores of both rest on their own episodes, and the better of the two on `controller.select_rollouts` shared
    dreams is kept. The last search climbed where M was wrong; this shows M where, before C is kept."""
    record = collect_round(cfg, run, rollouts_root, r)
    stages.encode(cfg, run, rollouts_root)
    stages.train_memory(cfg, run, cfg.memory.epochs + r * cfg.rounds.memory_epochs)
    collected = checkpoints.load(collectors_path(run), "collectors")["rounds"]
    candidates = [k for k in (r - 1, r) if k in collected]
    flats = np.stack([collected[k]["params"].numpy() for k in candidates])
    search = evolution.Search(cfg, run, open_world(cfg, run), r - 1)
    c, p = cfg.controller, search.progress
    with search.world.open() as evaluator:
        seeds = evolution.stream_seeds(c, evolution.Stream.ROUND_CONFIRM, r, c.select_rollouts)
        scores = evaluator.returns(flats, seeds).mean(1)
        best = int(scores.argmax())
        p.best, p.best_score = flats[best], float(scores[best])
        generation = collected[candidates[best]]["generation"]
        world, dim = checkpoints.fingerprint(cfg), search.world.input_dim
        checkpoints.save_controller(run.controller, flats[best], dim, p.best_score, generation, world)
        search.save(evaluator)
    tqdm.write(
        f"round {r} (confirmation): real return with exploration {record['real_return_explore']:.1f}; in the "
        f"retrained dream the controllers that collected rounds {candidates} score "
        f"{', '.join(f'{x:.4g}' for x in scores)}; kept round {candidates[best]}'s (generation {generation})"
    )
    record.update(confirm=True, candidates=candidates, scores=[float(x) for x in scores], kept=candidates[best])
    return record


def iterate(cfg: Config, run: Run, rollouts_root: Path) -> list[dict]:
    """Rounds 1..`rounds.count` after the first dream-trained controller; each stage inside resumes by itself."""
    d, history_path = cfg.rounds, run.dir / "rounds.json"
    history = [h for h in checkpoints.read_json(history_path, list) or [] if isinstance(h, dict) and "round" in h]
    done = {h["round"] for h in history}
    for r in range(1, d.count + 1):
        if r in done:  # a finished round's figures stay as measured; re-running its stages would score today's C
            continue
        tqdm.write(
            f"round {r}/{d.count}: collect {d.episodes} episodes with the controller, retrain M, retrain C in the dream"
        )
        record = collect_round(cfg, run, rollouts_root, r)
        stages.encode(cfg, run, rollouts_root)
        stages.train_memory(cfg, run, cfg.memory.epochs + r * d.memory_epochs)
        record["dream_score"] = evolution.train_controller(cfg, run, round=r)["best_score"]
        tqdm.write(
            f"round {r}: real return with exploration {record['real_return_explore']:.1f}, "
            f"dream score after retraining {record['dream_score']:.1f}, {record['real_steps']} real steps"
        )
        history = save_record(history_path, history, record)
        writer = SummaryWriter(run.tensorboard)
        writer.add_scalar("rounds/real_return_explore", record["real_return_explore"], r)
        writer.add_scalar("rounds/dream_score", record["dream_score"], r)
        writer.add_scalar("rounds/real_steps", record["real_steps"], r)
        writer.close()
    r = d.count + 1
    if d.confirm and d.count and r not in done:
        history = save_record(history_path, history, confirm(cfg, run, rollouts_root, r))
    return history


def save_record(path: Path, history: list[dict], record: dict) -> list[dict]:
    """rounds.json with `record` in place of any earlier record of its round."""
    history = [h for h in history if h["round"] != record["round"]] + [record]
    checkpoints.save_json(path, history)
    return history
