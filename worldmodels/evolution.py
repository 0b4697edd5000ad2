"""CMA-ES over the controller's flat parameters, candidates scored in parallel real-world rollouts."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import checkpoints
from .agent import WorldModel, play
from .config import Config
from .controller import Controller
from .errors import WorldModelsError
from .pool import worker_pool
from .progress import bar
from .worlds.real import action_space, make_world

with warnings.catch_warnings():  # pycma warns at import when matplotlib (only for its plots) is absent
    warnings.simplefilter("ignore", UserWarning)
    import cma

# ---------------------------------------------------------------- evaluators

_worlds: list = []
_model: WorldModel | None = None
_env_cfg = None
_max_steps = 0


def _init_worker(cfg: Config, vision_path: str, memory_path: str, max_steps: int) -> None:
    """Load V and M once per worker process."""
    global _model, _env_cfg, _max_steps
    _model = WorldModel.load(Path(vision_path), Path(memory_path))
    _env_cfg, _max_steps = cfg.env, max_steps
    _worlds.clear()


def _play_chunk(job: tuple[np.ndarray, list[int]]) -> list[tuple[float, int]]:
    """Play one episode per (candidate row, seed), batched."""
    flats, seeds = job
    while len(_worlds) < len(seeds):
        _worlds.append(make_world(_env_cfg, _max_steps))
    controller = Controller.from_flat(flats, _model.controller_input, _worlds[0].action_space)
    return play(_worlds[: len(seeds)], _model, controller, seeds)


class Evaluator:
    """Scores controllers in the real world with a pool of worker processes that hold V and M."""

    def __init__(self, cfg: Config, vision_path: Path, memory_path: Path, workers: int, max_steps: int = 0, batch: int = 8):
        args = (cfg, str(vision_path), str(memory_path), max_steps)
        self.workers, self.batch = workers, batch
        if workers > 1:
            self.pool = worker_pool(workers, _init_worker, args)
        else:
            self.pool = None
            _init_worker(*args)
        self.steps = 0  # real env steps spent, for the logs

    def returns(self, candidates: np.ndarray, seeds: list[int]) -> np.ndarray:
        """(P, N) candidates x seeds -> (P, len(seeds)) returns; every candidate sees the same seeds."""
        pairs = [(x, s) for x in candidates for s in seeds]
        # chunks small enough that every worker gets several: episodes differ in length
        size = max(1, min(self.batch, -(-len(pairs) // (2 * self.workers))))
        jobs = [(np.stack([x for x, _ in pairs[i : i + size]]), [s for _, s in pairs[i : i + size]]) for i in range(0, len(pairs), size)]
        chunks = self.pool.map(_play_chunk, jobs, chunksize=1) if self.pool else [_play_chunk(j) for j in jobs]
        results = [r for chunk in chunks for r in chunk]
        self.steps += sum(steps for _, steps in results)
        return np.array([r for r, _ in results], dtype=np.float64).reshape(len(candidates), len(seeds))

    def close(self, graceful: bool = True) -> None:
        if self.pool:
            self.pool.close() if graceful else self.pool.terminate()
            self.pool.join()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)


# ---------------------------------------------------------------- the CMA-ES loop


@dataclass
class Progress:
    """What survives an interruption besides the CMA-ES object."""

    generation: int = 0
    best_score: float = -np.inf
    best: np.ndarray | None = None
    env_steps: int = 0


def generation_seeds(seed: int, generation: int, count: int) -> list[int]:
    """The rollout seeds every candidate of one generation shares."""
    rng = np.random.default_rng([seed, generation])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


def save_controller(path: Path, flat: np.ndarray, input_dim: int, score: float, generation: int) -> None:
    checkpoints.save(path, {
        "kind": "controller",
        "config": {"input_dim": input_dim},
        "params": torch.as_tensor(flat, dtype=torch.float32),
        "score": float(score),
        "generation": generation,
    })


def load_controller(path: Path, model: WorldModel) -> dict:
    """C's checkpoint, checked against the world model it will sit on."""
    saved = checkpoints.load(path, "controller")
    if saved["config"]["input_dim"] != model.controller_input:
        raise WorldModelsError(
            f"'{path}' was trained on inputs of size {saved['config']['input_dim']} but V and M give "
            f"{model.controller_input}; retrain the controller"
        )
    return saved


def train_controller(cfg: Config, run: checkpoints.Run) -> dict:
    """Search controller parameters with CMA-ES; resumable from the saved CMA-ES state."""
    c = cfg.controller
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"))
    space = action_space(cfg.env)
    dim = Controller(model.controller_input, space).num_params
    if run.cmaes.exists():
        es, progress, np_state = checkpoints.load_pickle(run.cmaes)
        np.random.set_state(np_state)  # pycma samples from numpy's global generator
        if es.N != dim:
            raise WorldModelsError(f"'{run.cmaes}' searches {es.N} parameters but this controller has {dim}; delete it")
        if progress.generation >= c.generations or progress.best_score >= c.target:
            tqdm.write(f"controller: already searched {progress.generation} generations, skipping")
            return {"generation": progress.generation, "best_score": progress.best_score}
        tqdm.write(f"controller: resuming after generation {progress.generation}")
    else:
        es = cma.CMAEvolutionStrategy(np.zeros(dim), c.sigma0, {"popsize": c.population, "seed": c.seed + 1, "verbose": -9})
        progress = Progress()
    writer = SummaryWriter(run.tensorboard)
    tqdm.write(f"controller: {dim} parameters, population {c.population} x {c.rollouts} rollouts, {c.workers} workers")
    with Evaluator(cfg, run.vision, run.memory, c.workers, c.max_steps) as evaluator:
        generations = bar(range(progress.generation, c.generations), desc="cma-es", unit="gen")
        for generation in generations:
            candidates = np.asarray(es.ask())
            fitness = evaluator.returns(candidates, generation_seeds(c.seed, generation, c.rollouts)).mean(1)
            es.tell(list(candidates), list(-fitness))  # cma minimises
            progress.generation = generation + 1
            writer.add_scalar("controller/fitness_best", fitness.max(), progress.generation)
            writer.add_scalar("controller/fitness_mean", fitness.mean(), progress.generation)
            writer.add_scalar("controller/fitness_worst", fitness.min(), progress.generation)
            writer.add_scalar("controller/sigma", es.sigma, progress.generation)
            generations.set_postfix(best=f"{fitness.max():.1f}", mean=f"{fitness.mean():.1f}", kept=f"{progress.best_score:.1f}")
            if progress.generation % c.eval_every == 0 or progress.generation == c.generations:
                # re-score the generation's best and the distribution mean on fresh seeds; keep the better
                seeds = generation_seeds(c.seed + 1, generation, c.eval_rollouts)
                contenders = np.stack([candidates[fitness.argmax()], es.mean])
                scores = evaluator.returns(contenders, seeds).mean(1)
                writer.add_scalar("controller/eval_best", scores[0], progress.generation)
                writer.add_scalar("controller/eval_mean", scores[1], progress.generation)
                tqdm.write(f"generation {progress.generation}: re-evaluated best {scores[0]:.1f}, mean {scores[1]:.1f}")
                if scores.max() > progress.best_score:
                    progress.best_score, progress.best = float(scores.max()), contenders[scores.argmax()]
                    save_controller(run.controller, progress.best, model.controller_input, progress.best_score, progress.generation)
            progress.env_steps += evaluator.steps
            evaluator.steps = 0
            writer.add_scalar("controller/env_steps", progress.env_steps, progress.generation)
            checkpoints.save_pickle(run.cmaes, (es, progress, np.random.get_state()))
            if progress.best_score >= c.target:
                tqdm.write(f"controller: target {c.target} reached, stopping")
                break
        generations.close()
    writer.close()
    return {"generation": progress.generation, "best_score": progress.best_score, "env_steps": progress.env_steps}


def evaluate(cfg: Config, run: checkpoints.Run) -> dict:
    """Play `cfg.evaluate.episodes` real episodes with fixed seeds and write the report."""
    e = cfg.evaluate
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"))
    saved = load_controller(run.require(run.controller, "train-controller"), model)
    seeds = [e.seed + i for i in range(e.episodes)]
    flat = saved["params"].numpy()
    with Evaluator(cfg, run.vision, run.memory, e.workers) as evaluator:
        returns = evaluator.returns(flat[None], seeds)[0]
    report = {
        "world": "real",
        "env": cfg.env.id,
        "episodes": e.episodes,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "returns": [float(r) for r in returns],
        "seeds": seeds,
        "controller_generation": saved["generation"],
    }
    checkpoints.save_json(run.report, report)
    writer = SummaryWriter(run.tensorboard)
    writer.add_scalar("evaluate/mean_return", report["mean"], 0)
    writer.close()
    return report
