"""Iterative training (Ha & Schmidhuber 2018, section 5): collect with C, retrain M on old + new episodes,
retrain C in the dream.

A controller trained in a dream learns to exploit M where M is wrong; episodes collected with that controller
show M the states it reaches, so the next dream is harder to cheat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints, evolution, stages
from .agent import WorldModel
from .backends import real_evaluator
from .checkpoints import Run
from .config import Config
from .rollouts import EpisodeStore, episode_entry


def round_episode_name(r: int, index: int) -> str:
    """Round episodes have their own names, so a recipe may change `rounds.episodes` between rounds."""
    return f"round{r:02d}_{index:06d}.npz"


def collect_round(cfg: Config, run: Run, rollouts_root: Path, r: int) -> dict:
    """Real episodes of the kept controller, its parameters perturbed once per episode (`exploration_params`) and
    noise on its outputs at every step, added to the episode store; resumable."""
    d, store = cfg.rounds, EpisodeStore(stages.episodes_dir(rollouts_root, cfg))
    rng = np.random.default_rng([cfg.collect.seed, 7919, r])
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=d.episodes)]
    paths = [store.root / round_episode_name(r, i) for i in range(d.episodes)]
    todo = [k for k, path in enumerate(paths) if not path.is_file()]
    if todo:
        model = WorldModel.load(run.vision, run.memory)
        flat = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)["params"].numpy()
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
        history = [h for h in history if h["round"] != r] + [record]
        checkpoints.save_json(history_path, history)
        writer = SummaryWriter(run.tensorboard)
        writer.add_scalar("rounds/real_return_explore", record["real_return_explore"], r)
        writer.add_scalar("rounds/dream_score", record["dream_score"], r)
        writer.add_scalar("rounds/real_steps", record["real_steps"], r)
        writer.close()
    return history
