"""Where a controller is scored: the contract every world's evaluator keeps, and the registry of worlds.

CMA-ES only asks a world for returns; the real world, the dream and the codebook world each answer in their own
way. A task of one's own adds a world by registering a factory under a name (`register_world`, or an entry point
in the `worldmodels.worlds` group of its package), the way the NAS task adds `codebook`. A world whose V is not a
model of frames brings its own stages too (`TaskStages`, an entry point in `worldmodels.tasks`), so the core
never imports the task that defines it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from worldmodels.core.errors import WorldModelsError

if TYPE_CHECKING:  # annotations only: the CLI imports this registry before any stage, and it stays light
    import gymnasium as gym
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from worldmodels.config import Config
    from worldmodels.runs.checkpoints import Run

ENTRY_POINTS = "worldmodels.worlds"
TASK_ENTRY_POINTS = "worldmodels.tasks"
BUILT_IN = ("real", "dream")  # registered by evolution.py, which the recipe parser does not import


@runtime_checkable
class Evaluator(Protocol):
    """Scores flat controller parameters; `steps` counts what the scoring cost (env or dream steps) until reset."""

    steps: int

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """(P, N) candidates -> (P, len(seeds)) returns, every candidate on the same seeds; `progress` names a bar."""
        ...

    def close(self, graceful: bool = True) -> None:
        """Release workers and environments; `graceful=False` after an error does not wait for them."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, *exc: Any) -> None: ...


@runtime_checkable
class StatefulEvaluator(Evaluator, Protocol):
    """An evaluator whose world keeps state across generations (the codebook world's archive of queries).

    The search saves `state()` with its own and hands it back through `restore` when it resumes.
    """

    def state(self) -> dict:
        """The world's state, as plain data."""
        ...

    def restore(self, state: dict) -> None:
        """Continue from a saved `state()`."""
        ...

    def log(self, writer: SummaryWriter, generation: int) -> None:
        """The world's own TensorBoard scalars after a generation."""
        ...


@dataclass
class SearchWorld:
    """What a controller search needs of its world: C's input size and action space, and an evaluator on demand."""

    input_dim: int
    space: gym.Space
    open: Callable[[], Evaluator]  # opened only when the search runs: a finished search starts no workers
    rules: dict | None = None  # what a score means (objective, episode length); a search under other rules is refused
    inputs: Callable[[], np.ndarray] | None = None  # C's inputs over the run's data, (steps, D): controller.normalize


WorldFactory = Callable[["Config", "Run"], SearchWorld]
_WORLDS: dict[str, WorldFactory] = {}


def register_world(name: str, factory: WorldFactory) -> None:
    """Make `controller.world = name` score controllers in the world `factory(cfg, run)` builds."""
    _WORLDS[name] = factory


def known_worlds() -> list[str]:
    """Every world a recipe may name: the built-in ones, those registered in this process, installed entry points."""
    return sorted({*BUILT_IN, *_WORLDS, *(p.name for p in entry_points(group=ENTRY_POINTS))})


def check_world_name(cfg: Config) -> None:
    """Refuse a recipe whose `controller.world` is no known world, in one line, before any stage starts."""
    if cfg.controller.world not in known_worlds():
        raise WorldModelsError(
            f"controller.world must be one of {', '.join(known_worlds())} (or a world registered with "
            f"worldmodels.evaluators.register_world), got '{cfg.controller.world}'"
        )


def open_world(cfg: Config, run: Run) -> SearchWorld:
    """The recipe's `controller.world`: registered in-process, else found among installed packages' entry points."""
    name = cfg.controller.world
    if name not in _WORLDS:
        for point in entry_points(group=ENTRY_POINTS, name=name):
            register_world(name, point.load())
            break
    if name not in _WORLDS:
        raise WorldModelsError(f"controller.world '{name}' is not a known world ({', '.join(known_worlds())})")
    return _WORLDS[name](cfg, run)


class TaskStages(Protocol):
    """The stages a world brings in place of the core's (the NAS task's codebook world: V of architectures, no M)."""

    def vision_config(self, cfg: Config) -> dict:
        """V's model config as its checkpoint stores it, to refuse a run folder of another V."""
        ...

    def train_vision(self, cfg: Config, run: Run) -> dict:
        """Train the task's V; the result has `losses`."""
        ...

    def evaluate(self, cfg: Config, run: Run) -> dict:
        """Score the kept controller the task's way."""
        ...

    def pipeline(self, cfg: Config, run: Run) -> dict:
        """Every stage of the task in order, each resuming."""
        ...


_TASKS: dict[str, TaskStages] = {}


def register_task(world: str, stages: TaskStages) -> None:
    """Run `stages` instead of the core's for recipes whose `controller.world` is `world`."""
    _TASKS[world] = stages


def task_stages(cfg: Config) -> TaskStages | None:
    """The stages the recipe's world brings (registered, or an installed entry point), or None: the core's."""
    name = cfg.controller.world
    if name not in _TASKS and name not in BUILT_IN:
        for point in entry_points(group=TASK_ENTRY_POINTS, name=name):
            register_task(name, point.load())
            break
    return _TASKS.get(name)


def returns_report(returns: np.ndarray, seeds: list[int], generation: int | None) -> dict:
    """The part of a report every world shares: the returns of the evaluation episodes and their seeds."""
    return {
        "episodes": len(seeds),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "returns": [float(r) for r in returns],
        "seeds": seeds,
        "controller_generation": generation,
    }
