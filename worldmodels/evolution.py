"""CMA-ES over the controller's flat parameters, candidates scored in real-world rollouts or in M's dream."""

from __future__ import annotations

import contextlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints, search_state
from .agent import WorldModel
from .backends import real_evaluator
from .config import Config, ControllerConfig, DreamConfig
from .controller import Controller
from .errors import WorldModelsError
from .progress import bar
from .rollouts import load_latents, start_latents
from .search_state import Progress
from .training import pick_device
from .worlds.dream import Dream, dream_rollout, filmstrip, play_dream
from .worlds.real import action_space

# ---------------------------------------------------------------- the dream's evaluator


class DreamEvaluator:
    """Scores controllers in M's dream: every candidate x rollout in one batch, one M step for all per time step."""

    def __init__(self, model: WorldModel, cfg: DreamConfig, starts: torch.Tensor, space: gym.Space):
        self.dream = Dream(model.memory, cfg, starts, model.vision)
        self.input_dim, self.space, self.batch = model.controller_input, space, cfg.batch
        self.steps = 0  # dream steps spent, for the logs

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """(P, N) candidates x seeds -> (P, len(seeds)) dream returns; every candidate dreams the same seeds
        (in seconds: no bar)."""
        p, r = len(candidates), len(seeds)
        population = Controller.from_flat(candidates, self.input_dim, self.space)
        returns, steps = play_dream(
            self.dream, population.select(torch.arange(p).repeat_interleave(r)), seeds * p, self.batch
        )
        self.steps += int(steps.sum())
        return returns.reshape(p, r)

    def close(self, graceful: bool = True) -> None:
        pass

    def __enter__(self) -> "DreamEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        pass


# ---------------------------------------------------------------- the CMA-ES loop


def generation_seeds(seed: int, generation: int, count: int) -> list[int]:
    """The rollout seeds every candidate of one generation shares."""
    rng = np.random.default_rng([seed, generation])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


def save_controller(path: Path, flat: np.ndarray, input_dim: int, score: float, generation: int) -> None:
    checkpoints.save(
        path,
        {
            "kind": "controller",
            "config": {"input_dim": input_dim},
            "params": torch.as_tensor(flat, dtype=torch.float32),
            "score": float(score),
            "generation": generation,
        },
    )


def load_controller(path: Path, model: WorldModel) -> dict:
    """C's checkpoint, checked against the world model it will sit on."""
    saved = checkpoints.load(path, "controller")
    if saved["config"]["input_dim"] != model.controller_input:
        raise WorldModelsError(
            f"'{path}' was trained on inputs of size {saved['config']['input_dim']} but V and M give "
            f"{model.controller_input}; retrain the controller"
        )
    return saved


def log_dream_rollout(writer: SummaryWriter, evaluator: DreamEvaluator, flat: np.ndarray, seed: int, step: int) -> None:
    """A filmstrip of one dream episode of `flat` (every k-th frame, at most 16) to TensorBoard."""
    controller = Controller.from_flat(flat, evaluator.input_dim, evaluator.space)
    frames, _ = dream_rollout(evaluator.dream, controller, seed)
    writer.add_image("dream/rollout", filmstrip(frames), step, dataformats="HWC")


def select_kept(evaluator, progress: Progress, c: ControllerConfig) -> np.ndarray:
    """Re-score the kept controller and this round's `c.select_top` best re-evaluated ones on `c.select_rollouts` fresh
    episodes they share; keep the best of those, with that score. Returns the scores, the kept one's first."""
    history = sorted(
        (h for h in progress.history or [] if h["generation"] > progress.round_start), key=lambda h: -h["score"]
    )
    contenders, seen = [], set()
    for flat in [progress.best] + [h["params"] for h in history]:
        if flat.tobytes() not in seen and len(contenders) < max(c.select_top, 1):
            contenders.append(flat)
            seen.add(flat.tobytes())
    seeds = generation_seeds(c.seed + 4, progress.generation, c.select_rollouts)
    scores = evaluator.returns(np.stack(contenders), seeds).mean(1)
    progress.best, progress.best_score = contenders[int(scores.argmax())], float(scores.max())
    progress.selected = progress.generation
    return scores


def train_controller(cfg: Config, run: checkpoints.Run, round: int = 0) -> dict:
    """Search controller parameters with CMA-ES in the recipe's world; resumable from the saved CMA-ES state.

    Round r > 0 of iterative training goes on searching for `dream.round_generations` generations in the
    dream of the retrained M, after re-scoring the kept controller there.
    """
    c = cfg.controller
    dreaming, codebook = c.world == "dream", c.world == "codebook"
    if codebook:  # C reads the codebook world's observation; there is no M
        from .nas.search import CodebookEvaluator  # imported here: it imports this module

        world = CodebookEvaluator(cfg, run)
        input_dim, space, rules = world.input_dim, world.space, world.rules
    else:
        device = pick_device(cfg.device) if dreaming else "cpu"
        model = WorldModel.load(
            run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"), device
        )
        input_dim, space, rules = model.controller_input, action_space(cfg.env), None
    dim = Controller(input_dim, space).num_params
    search = {"dim": dim, "population": c.population, "sigma0": c.sigma0, "seed": c.seed}
    search_state.refuse_pickle(run.dir)
    if run.cmaes.exists():
        es, progress, np_state = search_state.load(run.cmaes, search)
        np.random.set_state(np_state)  # pycma samples from numpy's global generator
        if progress.world != c.world:  # scores from the two worlds do not compare
            raise WorldModelsError(
                f"'{run.cmaes}' holds a search in the {progress.world} world, not the {c.world} one; "
                "delete it and controller.pt, or use another --run"
            )
        if progress.rules != rules:  # another objective or episode length: the scores so far mean something else
            raise WorldModelsError(
                f"'{run.cmaes}' holds a search under other codebook-world settings ({progress.rules}); "
                "delete it and controller.pt, or use another --run"
            )
    else:
        es = search_state.fresh_search(search)
        progress = Progress(world=c.world, rules=rules)
    new_round = progress.round < round

    def until() -> int:
        """The generation the current round stops at."""
        return c.generations if progress.round == 0 else progress.round_start + cfg.dream.round_generations

    def finished() -> bool:
        return progress.generation >= until() or progress.best_score >= c.target

    def selected() -> bool:
        return not c.select_top or progress.best is None or progress.selected == progress.generation

    result = {
        "world": c.world,
        "generation": progress.generation,
        "best_score": progress.best_score,
        "steps": progress.env_steps,
    }
    if finished() and not new_round and selected():
        tqdm.write(f"controller: already searched {progress.generation} generations, skipping")
        return result
    if progress.generation:
        tqdm.write(f"controller: resuming after generation {progress.generation}")
    writer = SummaryWriter(run.tensorboard)
    tqdm.write(
        f"controller: {dim} parameters, population {c.population} x {c.rollouts} rollouts in the {c.world} world"
    )
    with contextlib.ExitStack() as stack:
        if codebook:
            evaluator = stack.enter_context(world)
            if progress.archive:
                evaluator.restore(progress.archive, progress.queries)
        elif dreaming:
            evaluator = stack.enter_context(DreamEvaluator(model, cfg.dream, start_latents(load_latents(run)), space))
        else:
            evaluator = stack.enter_context(real_evaluator(cfg, run.vision, run.memory, c.workers, c.max_steps))
        watcher = None  # real episodes that only watch a dream-trained controller
        if dreaming and c.real_rollouts:
            watcher = stack.enter_context(real_evaluator(cfg, run.vision, run.memory, c.workers, c.max_steps))
        if new_round:  # M changed: the kept controller's score is re-measured in the new dream
            progress.round, progress.round_start = round, progress.generation
            if progress.best is not None:
                seeds = generation_seeds(c.seed + 2, round, c.eval_rollouts)
                progress.best_score = float(evaluator.returns(progress.best[None], seeds).mean())
                save_controller(run.controller, progress.best, input_dim, progress.best_score, progress.generation)
                tqdm.write(f"round {round}: the kept controller scores {progress.best_score:.1f} in the new dream")
            search_state.save(run.cmaes, es, search, progress)
        generations = bar(range(progress.generation, until()), desc=f"cma-es ({c.world})", unit="gen")
        for generation in generations:
            if finished():
                break
            candidates = np.asarray(es.ask())
            # a real-world generation takes minutes: its episodes get a bar of their own (the dream's takes seconds)
            within = None if dreaming or codebook else f"generation {generation + 1}"
            fitness = evaluator.returns(candidates, generation_seeds(c.seed, generation, c.rollouts), within).mean(1)
            es.tell(list(candidates), list(-fitness))  # cma minimises
            progress.generation = generation + 1
            writer.add_scalar("controller/fitness_best", fitness.max(), progress.generation)
            writer.add_scalar("controller/fitness_mean", fitness.mean(), progress.generation)
            writer.add_scalar("controller/fitness_worst", fitness.min(), progress.generation)
            writer.add_scalar("controller/sigma", es.sigma, progress.generation)
            generations.set_postfix(
                best=f"{fitness.max():.1f}", mean=f"{fitness.mean():.1f}", kept=f"{progress.best_score:.1f}"
            )
            if progress.generation % c.eval_every == 0 or progress.generation == until():
                # re-score the generation's best and the distribution mean on fresh seeds; keep the better
                seeds = generation_seeds(c.seed + 1, generation, c.eval_rollouts)
                contenders = np.stack([candidates[fitness.argmax()], es.mean])
                scores = evaluator.returns(contenders, seeds).mean(1)
                writer.add_scalar("controller/eval_best", scores[0], progress.generation)
                writer.add_scalar("controller/eval_mean", scores[1], progress.generation)
                progress.history = (progress.history or []) + [
                    {"generation": progress.generation, "kind": kind, "params": flat, "score": float(score)}
                    for kind, flat, score in zip(("best", "mean"), contenders, scores)
                ]
                line = f"generation {progress.generation}: re-evaluated best {scores[0]:.4g}, mean {scores[1]:.4g}"
                if scores.max() > progress.best_score:
                    progress.best_score, progress.best = float(scores.max()), contenders[scores.argmax()]
                    save_controller(run.controller, progress.best, input_dim, progress.best_score, progress.generation)
                    if dreaming:
                        log_dream_rollout(writer, evaluator, progress.best, seeds[0], progress.generation)
                if watcher:
                    real = watcher.returns(
                        progress.best[None], generation_seeds(c.seed + 3, generation, c.real_rollouts)
                    ).mean()
                    progress.real_steps += watcher.steps
                    watcher.steps = 0
                    writer.add_scalars(
                        "controller/dream_vs_real", {"dream": progress.best_score, "real": real}, progress.generation
                    )
                    line += f"; kept controller: dream {progress.best_score:.1f}, real {real:.1f}"
                tqdm.write(line)
            progress.env_steps += evaluator.steps
            evaluator.steps = 0
            if codebook:
                progress.archive, progress.queries = evaluator.archive(), evaluator.surrogate.queries
                writer.add_scalar("codebook/architectures_queried", len(progress.archive), progress.generation)
                writer.add_scalar("codebook/surrogate_queries", progress.queries, progress.generation)
            writer.add_scalar(f"controller/{c.world}_steps", progress.env_steps, progress.generation)
            search_state.save(run.cmaes, es, search, progress)
            if progress.best_score >= c.target:
                tqdm.write(f"controller: target {c.target} reached, stopping")
        generations.close()
        if finished() and not selected():
            scores = select_kept(evaluator, progress, c)
            save_controller(run.controller, progress.best, input_dim, progress.best_score, progress.generation)
            progress.env_steps += evaluator.steps
            evaluator.steps = 0
            writer.add_scalar("controller/selected_score", progress.best_score, progress.generation)
            tqdm.write(
                f"controller: the kept controller and the top {len(scores) - 1} others re-scored "
                f"on {c.select_rollouts} "
                f"episodes: {', '.join(f'{x:.4g}' for x in scores)}; kept {progress.best_score:.4g}"
            )
            search_state.save(run.cmaes, es, search, progress)
    writer.close()
    result.update(generation=progress.generation, best_score=progress.best_score, steps=progress.env_steps)
    if progress.real_steps:
        result["real_steps_watching"] = progress.real_steps
    return result


def returns_report(returns: np.ndarray, seeds: list[int], generation: int) -> dict:
    """The part of a report every world shares: the returns of the evaluation episodes and their seeds."""
    return {
        "episodes": len(seeds),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "returns": [float(r) for r in returns],
        "seeds": seeds,
        "controller_generation": generation,
    }


def evaluate(cfg: Config, run: checkpoints.Run, world: str = "real") -> dict:
    """Play `cfg.evaluate.episodes` episodes with fixed seeds in the real world or the dream; write the report."""
    e = cfg.evaluate
    device = pick_device(cfg.device) if world == "dream" else "cpu"
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"), device)
    saved = load_controller(run.require(run.controller, "train-controller"), model)
    seeds = [e.seed + i for i in range(e.episodes)]
    flat = saved["params"].numpy()
    if world == "dream":
        evaluator = DreamEvaluator(model, cfg.dream, start_latents(load_latents(run)), action_space(cfg.env))
    else:
        evaluator = real_evaluator(cfg, run.vision, run.memory, e.workers)
    with evaluator:
        returns = evaluator.returns(flat[None], seeds, progress="evaluate")[0]
    report = {"world": world, "env": cfg.env.id, **returns_report(returns, seeds, saved["generation"])}
    if world == "dream":
        report["tau"] = cfg.dream.tau
    elif evaluator.success is not None:  # goal-reaching envs: did each episode's last step reach the goal
        report["success_rate"] = float(evaluator.success[0].mean())
        report["successes"] = [bool(s) for s in evaluator.success[0]]
    checkpoints.save_json(run.report if world == "real" else run.dream_report, report)
    writer = SummaryWriter(run.tensorboard)
    writer.add_scalar(f"evaluate/{world}_mean_return", report["mean"], saved["generation"])
    if "success_rate" in report:
        writer.add_scalar("evaluate/real_success_rate", report["success_rate"], saved["generation"])
    writer.close()
    return report
