"""evaluate, and the check every stage runs on a run folder before reading it."""

from __future__ import annotations

import dataclasses

from torch.utils.tensorboard import SummaryWriter

from worldmodels.agent import WorldModel
from worldmodels.config import Config
from worldmodels.memory import read_stored, stored_config
from worldmodels.play import evaluators
from worldmodels.play.backends import real_evaluator
from worldmodels.play.evaluators import Evaluator, returns_report
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.evolution import dream_evaluator
from worldmodels.stages.memory import memory_config
from worldmodels.training import pick_device
from worldmodels.vision import build_vision, vision_config


def check_run(cfg: Config, run: Run) -> None:
    """Refuse a recipe whose world or model sizes differ from the files already in the run folder."""
    run.check_world()
    if run.vision.is_file():
        saved = checkpoints.load(run.vision, "vision")["config"]
        task = evaluators.task_stages(cfg)
        if task is not None:  # the task's own V (the codebook world's: of architectures, not frames); no M
            checkpoints.check_same_config(run.vision, saved, task.vision_config(cfg), "vision")
            return
        checkpoints.check_same_config(run.vision, saved, vision_config(cfg), "vision")
        if run.memory.is_file():
            wanted = memory_config(cfg, build_vision(saved))
            # as it loads: a field the checkpoint predates takes its default (an old M reads its reward from h)
            section, sizes = read_stored(checkpoints.load(run.memory, "memory")["config"], run.memory)
            saved_memory = stored_config(section, **sizes)  # read, not built: no weights drawn from torch's RNG
            checkpoints.check_same_config(run.memory, saved_memory, wanted, "memory")


def memory_id(run: checkpoints.Run) -> str:
    """The identity of the run's M, changed by every retraining."""
    return str(checkpoints.load(run.memory, "memory").get("id"))


def evaluate(cfg: Config, run: checkpoints.Run, world: str = "real") -> dict:
    """Play `cfg.evaluate.episodes` episodes with fixed seeds in the real world or the dream; write the report."""
    e = cfg.evaluate
    device = pick_device(cfg.device) if world == "dream" else "cpu"
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"), device)
    saved = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)
    seeds = [e.seed + i for i in range(e.episodes)]
    flat = saved["params"].numpy()
    evaluator: Evaluator
    if world == "dream":
        evaluator = dream_evaluator(cfg, run, model)
    else:  # scored on the renderer users know (gymnasium's), whichever one C was trained with
        played = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, renderer=e.renderer))
        evaluator = real_evaluator(played, run.vision, run.memory, e.workers)
    with evaluator:
        returns = evaluator.returns(flat[None], seeds, progress="evaluate")[0]
    report = {"world": world, "env": cfg.env.id, **returns_report(returns, seeds, saved["generation"])}
    if world == "real":
        report["renderer"] = e.renderer
    report["memory_id"] = memory_id(run)  # C reads M's h: a retrained M makes another agent of the same C
    success = getattr(evaluator, "success", None)  # goal-reaching envs: did each episode's last step reach the goal
    if world == "dream":
        report["tau"] = cfg.dream.tau
    elif success is not None:
        report["success_rate"] = float(success[0].mean())
        report["successes"] = [bool(s) for s in success[0]]
    checkpoints.save_json(run.report if world == "real" else run.dream_report, report)
    writer = SummaryWriter(run.tensorboard)
    writer.add_scalar(f"evaluate/{world}_mean_return", report["mean"], saved["generation"])
    if "success_rate" in report:
        writer.add_scalar("evaluate/real_success_rate", report["success_rate"], saved["generation"])
    writer.close()
    return report
