"""How far the dream can be trusted: M's reward and done predictions on held-out episodes, and whether the
dream ranks controllers as the real world does.

A dream-trained controller that fails in the real world leaves two suspects, M's reward (and done) heads
and the dream's rollouts; these numbers say which, before anyone reads a loss curve.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from worldmodels.agent import WorldModel
from worldmodels.config import Config
from worldmodels.controller import search_state
from worldmodels.data.latents import LatentEpisode
from worldmodels.memory import MDNRNN
from worldmodels.play.backends import real_evaluator
from worldmodels.runs import checkpoints
from worldmodels.stages import evolution
from worldmodels.training import pick_device


def held_out(name: str, fraction: float) -> bool:
    """Whether an episode file is held out of M's training: a hash of its name, so the split stays put
    as rounds add episodes."""
    return zlib.crc32(name.encode()) % 10_000 < fraction * 10_000


def r_squared(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """1 - SSE / SST; None when the actual values do not vary."""
    sst = float(((actual - actual.mean()) ** 2).sum())
    return None if sst == 0 else 1.0 - float(((predicted - actual) ** 2).sum()) / sst


@torch.inference_mode()
def predicted_rewards(memory: MDNRNN, episode: LatentEpisode) -> tuple[np.ndarray, np.ndarray]:
    """M's reward and done probability at every step of a real episode, M fed the real z (V's mean) and actions."""
    device = next(memory.parameters()).device
    z = torch.from_numpy(episode.mu[:-1]).to(device)[None]
    action = torch.from_numpy(episode.action).to(device, torch.float32)[None]
    next_z = torch.from_numpy(episode.mu[1:]).to(device)[None]
    prediction, _ = memory(z, action, next_z=next_z)
    return prediction.reward[0].double().cpu().numpy(), memory.done_probability(prediction)[0].double().cpu().numpy()


def memory_report(memory: MDNRNN, episodes: list[LatentEpisode], split: str) -> dict:
    """R^2 of M's per-step reward and of the episode returns it implies, and the AUC of its done head."""
    rewards, dones, returns = [], [], []
    for episode in episodes:
        reward, p_done = predicted_rewards(memory, episode)
        rewards.append(np.stack([reward, episode.reward]))
        dones.append(np.stack([p_done, episode.done]))
        returns.append((reward.sum(), episode.reward.sum()))
    steps, done, per_episode = np.concatenate(rewards, 1), np.concatenate(dones, 1), np.asarray(returns).T
    positives = int(done[1].sum())
    auc = float(roc_auc_score(done[1], done[0])) if 0 < positives < done.shape[1] else None
    return {
        "split": split,
        "episodes": len(episodes),
        "steps": int(steps.shape[1]),
        "reward_r2": r_squared(steps[0], steps[1]),
        "return_r2": r_squared(per_episode[0], per_episode[1]),
        "return_mean_real": float(per_episode[1].mean()),
        "return_mean_predicted": float(per_episode[0].mean()),
        "done_auc": auc,
        "done_positives": positives,
    }


def write_memory_report(
    run: checkpoints.Run, memory: MDNRNN, episodes: list[LatentEpisode], split: str, epoch: int
) -> dict:
    """The memory report, printed, written to memory_fidelity.json and to TensorBoard."""
    report = memory_report(memory, episodes, split) | {"epoch": epoch}
    if checkpoints.save_json(run.dir / "memory_fidelity.json", report):  # a finished stage, run again, writes nothing
        writer = SummaryWriter(run.tensorboard)
        for key in ("reward_r2", "return_r2", "done_auc"):
            if report[key] is not None:
                writer.add_scalar(f"fidelity/{key}", report[key], epoch)
        writer.close()

    def show(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    tqdm.write(
        f"memory fidelity ({split}, {report['episodes']} episodes): reward R^2 {show(report['reward_r2'])}, "
        f"return R^2 {show(report['return_r2'])}, done AUC {show(report['done_auc'])} "
        f"({report['done_positives']} dones)"
    )
    return report


def rank_correlation(dream: np.ndarray, real: np.ndarray) -> float | None:
    """Spearman's rank correlation of dream and real returns; None when either does not vary."""
    if len(dream) < 2 or np.ptp(dream) == 0 or np.ptp(real) == 0:
        return None
    return float(spearmanr(dream, real).statistic)


def spread(history: list, most: int) -> list:
    """At most `most` entries of the search's history, evenly spaced, always with the first and the last."""
    if len(history) <= most:
        return list(history)
    picks = np.unique(np.linspace(0, len(history) - 1, most).round().astype(int))
    return [history[i] for i in picks]


def dream_and_real_returns(
    cfg: Config, run: checkpoints.Run, memory: dict, flat: np.ndarray, real_seeds: list[int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each controller's dream returns under the current M and its real returns, with the real episodes' steps."""
    c = cfg.controller
    model = WorldModel.from_checkpoints(
        checkpoints.load(run.vision, "vision"), memory, pick_device(cfg.device), names=(run.vision, run.memory)
    )
    with evolution.dream_evaluator(cfg, run, model) as dream:
        dreamt = dream.returns(flat, evolution.stream_seeds(c, evolution.Stream.FIDELITY, 0, c.eval_rollouts))
    with real_evaluator(cfg, run.vision, run.memory, c.workers) as world:
        real = world.returns(flat, real_seeds)
        real_steps = world.steps
    return dreamt, real, real_steps


def log_controller_report(run: checkpoints.Run, report: dict[str, Any], generation: int, count: int) -> None:
    """The controller report to TensorBoard and printed: each controller's dream and real return, and Spearman's rho."""
    rho = report["spearman"]
    writer = SummaryWriter(run.tensorboard)
    for entry in report["controllers"]:
        writer.add_scalars(
            "fidelity/controller_returns", {"dream": entry["dream"], "real": entry["real"]}, entry["generation"]
        )
    if rho is not None:
        writer.add_scalar("fidelity/dream_real_spearman", rho, generation)
    writer.close()
    tqdm.write(
        "controller fidelity (dream vs real return): "
        + ", ".join(
            f"gen {e['generation']} {e['kind']}: {e['dream']:.0f} vs {e['real']:.0f}" for e in report["controllers"]
        )
    )
    tqdm.write(
        f"controller fidelity: Spearman rank correlation {'n/a' if rho is None else f'{rho:.2f}'} "
        f"over {count} controllers"
    )


def controller_report(cfg: Config, run: checkpoints.Run) -> dict | None:
    """Dream and real returns of controllers spread over a dream search's history, and their rank correlation.

    The dream returns are re-measured under the current M (iterative rounds retrain it); the real episodes
    use seeds apart from the evaluation's and only watch: nothing here feeds the search. Written to
    controller_fidelity.json (skipped when that already covers this history) and TensorBoard.
    """
    c = cfg.controller
    if c.world != "dream" or not c.fidelity_controllers or not run.cmaes.is_file():
        return None
    progress = search_state.load_progress(run.cmaes)
    history = spread(progress.history or [], c.fidelity_controllers)
    if not history:
        return None
    path = run.dir / "controller_fidelity.json"
    picked = [[h["generation"], h["kind"]] for h in history]
    real_seeds = [cfg.evaluate.seed + 500_000 + i for i in range(c.fidelity_episodes)]
    memory = checkpoints.load(run.memory, "memory")
    memory_id = str(memory.get("id"))
    old = checkpoints.read_json(path)
    if old is not None:
        if old.get("picked") == picked and old.get("real_seeds") == real_seeds and old.get("memory_id") == memory_id:
            tqdm.write(f"controller fidelity: {path} is up to date, skipping")
            return old
    flat = np.stack([h["params"] for h in history])
    dreamt, real, real_steps = dream_and_real_returns(cfg, run, memory, flat, real_seeds)
    rho = rank_correlation(dreamt.mean(1), real.mean(1))
    report: dict[str, Any] = {
        "picked": picked,
        "real_seeds": real_seeds,
        "memory_id": memory_id,
        "controllers": [
            {
                "generation": h["generation"],
                "kind": h["kind"],
                "dream_when_searched": h["score"],
                "dream": float(d.mean()),
                "real": float(r.mean()),
                "real_std": float(r.std()),
            }
            for h, d, r in zip(history, dreamt, real)
        ],
        "spearman": rho,
        "dream_rollouts": c.eval_rollouts,
        "real_episodes": c.fidelity_episodes,
        "real_steps": int(real_steps),
    }
    checkpoints.save_json(path, report)
    log_controller_report(run, report, progress.generation, len(history))
    return report
