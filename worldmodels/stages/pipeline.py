"""Every stage in order, each skipping itself when complete; dream recipes add iterative training rounds."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from worldmodels import stages
from worldmodels.config import Config
from worldmodels.controller import search_state
from worldmodels.data.episodes import EpisodeStore
from worldmodels.play import evaluators
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import evolution, fidelity, rounds


def real_steps(cfg: Config, rollouts_root: Path) -> dict:
    """Real env steps (frames of the world) behind the run's data, from the episode store:
    random collection and each round."""
    episodes = EpisodeStore(stages.episodes_dir(rollouts_root, cfg)).manifest()["episodes"]

    def frames(entries) -> int:
        return sum(e.get("frames", e["steps"]) for e in entries)  # manifests from before action repeats lack frames

    steps = {"collect": frames(e for e in episodes if not e.get("round"))}
    for r in sorted({e["round"] for e in episodes if e.get("round")}):
        steps[f"round_{r}"] = frames(e for e in episodes if e.get("round") == r)
    steps["total"] = sum(steps.values())
    return steps


def pipeline(cfg: Config, run: Run, rollouts_root: Path) -> dict:
    """collect, train-vision, sample, encode, train-memory, train-controller (+ rounds), evaluate in the real world.

    A world that brings its own stages (the codebook world's NAS task) runs its own, shorter pipeline.
    """
    task = evaluators.task_stages(cfg)
    if task is not None:
        return task.pipeline(cfg, run)
    stages.collect(cfg, rollouts_root)
    stages.train_vision(cfg, run, rollouts_root)
    stages.sample(cfg, run, rollouts_root)
    stages.encode(cfg, run, rollouts_root)
    stages.train_memory(cfg, run)
    evolution.train_controller(cfg, run)
    if cfg.controller.world == "dream":
        rounds.iterate(cfg, run, rollouts_root)
    controller_fidelity = fidelity.controller_report(cfg, run)
    report = checkpoints.read_json(run.report)  # a damaged report is made again
    if report is not None:
        controller_generation = checkpoints.load(run.controller, "controller")["generation"]
        seeds = [cfg.evaluate.seed + i for i in range(cfg.evaluate.episodes)]
        fresh = report.get("memory_id") == stages.memory_id(run) and report.get("seeds") == seeds
        if report.get("controller_generation") != controller_generation or not fresh:
            report = None
        else:
            tqdm.write(f"evaluate: {run.report} is up to date, skipping")
    if report is None:
        report = stages.evaluate(cfg, run)
    # what the score cost in real experience: C's own steps when it trained in the real world
    steps = real_steps(cfg, rollouts_root)
    progress = search_state.load_progress(run.cmaes)
    if cfg.controller.world == "real":
        steps["controller"] = progress.env_steps
    elif progress.real_steps:  # real episodes that watched the dream-trained controller (controller.real_rollouts)
        steps["watching"] = progress.real_steps
    if controller_fidelity:  # real episodes of controllers from the search's history, for the fidelity report
        steps["fidelity"] = controller_fidelity["real_steps"]
    steps["total"] = sum(v for k, v in steps.items() if k != "total")
    if report.get("real_steps") != steps or report.get("controller_world") != cfg.controller.world:
        report.update(controller_world=cfg.controller.world, real_steps=steps)
        checkpoints.save_json(run.report, report)
    return report
