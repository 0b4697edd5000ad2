"""Where real-world episodes run: a local process pool (default), Ray actors on a cluster, or one process
stepping a gymnasium vector env with V, M and C batched across its copies."""

from __future__ import annotations

import functools
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldmodels.agent import WorldModel
from worldmodels.config import Config, EnvConfig
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.pool import worker_pool
from worldmodels.core.progress import bar, say
from worldmodels.data.episodes import save_episode
from worldmodels.play.loops import lockstep
from worldmodels.runs import checkpoints
from worldmodels.training import pick_device
from worldmodels.worlds.loop import Played, VectorCopies, WorldList
from worldmodels.worlds.real import make_world

# ---------------------------------------------------------------- what every worker holds


class Worker:
    """What one worker holds: V and M, built once from their checkpoints' contents (no shared filesystem needed),
    and its real worlds, made once and reused. Sent only what it reads: the env's settings, not the recipe."""

    def __init__(self, env: EnvConfig, vision: dict, memory: dict, max_steps: int):
        self.model = WorldModel.from_checkpoints(vision, memory)
        self.env, self.max_steps = env, max_steps
        self.worlds: list[gym.Env] = []

    def _worlds(self, n: int) -> list:
        while len(self.worlds) < n:
            self.worlds.append(make_world(self.env, self.max_steps))
        return self.worlds[:n]

    def play(self, job: tuple[np.ndarray, list[int], float, float]) -> list[Played]:
        """Play one episode per (candidate row, seed) with C's own noise and the search's random actions, batched:
        [(return, steps, the last step's is_success or None)]."""
        flats, seeds, noise, random_actions = job
        worlds = self._worlds(len(seeds))
        controller = Controller.from_flat(flats, self.model.controller_input, worlds[0].action_space)
        return lockstep(WorldList(worlds), self.model, controller, seeds, noise, None, random_actions)

    def collect(self, job: tuple[np.ndarray, list[int], float]) -> list[tuple[float, int, dict]]:
        """Play one episode per (controller row, seed) plus exploration noise: [(return, steps, episode)]."""
        flats, seeds, exploration = job
        worlds = self._worlds(len(seeds))
        controller = Controller.from_flat(flats, self.model.controller_input, worlds[0].action_space)
        episodes: list[dict] = []
        played = lockstep(WorldList(worlds), self.model, controller, seeds, exploration, record=episodes)
        return [(p.ret, p.frames, episode) for p, episode in zip(played, episodes)]


Task = Callable[[Worker, tuple], list]  # Worker.play or Worker.collect: what a job asks of a worker

_process_worker: Worker | None = None  # a pool process's own Worker, made by the pool's initializer (never the parent)


def _start_process_worker(*init_args) -> None:
    global _process_worker
    _process_worker = Worker(*init_args)


def _on_process_worker(task: Task, job: tuple) -> list:
    assert _process_worker is not None  # made by _start_process_worker when the pool started
    return task(_process_worker, job)


# ---------------------------------------------------------------- runners: map jobs over workers, in order


class InProcess:
    """One worker: this process, which owns it."""

    def __init__(self, init_args: tuple):
        self.worker = Worker(*init_args)

    def imap(self, task: Task, jobs: Iterable) -> Iterator:
        return (task(self.worker, job) for job in jobs)

    def close(self, graceful: bool = True) -> None:
        pass


class LocalPool:
    """Spawned worker processes on this machine, each holding V and M."""

    def __init__(self, workers: int, init_args: tuple):
        self.pool = worker_pool(workers, _start_process_worker, init_args)

    def imap(self, task: Task, jobs: Iterable) -> Iterator:
        return self.pool.imap(functools.partial(_on_process_worker, task), jobs)

    def close(self, graceful: bool = True) -> None:
        self.pool.close() if graceful else self.pool.terminate()
        self.pool.join()


class _RayWorker:
    """A Ray actor: holds one Worker, then plays the jobs it is sent."""

    def __init__(self, init_args: tuple):
        import torch

        torch.set_num_threads(1)  # one core per actor: the actors are the parallelism
        self.worker = Worker(*init_args)

    def run(self, task: Task, job: tuple) -> list:
        return task(self.worker, job)


def check_reachable(address: str) -> None:
    """Fail in one line, within seconds, when a Ray head's HOST:PORT (or ray://HOST:PORT) takes no connection."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WorldModelsError(f"controller.address must be 'auto' or HOST:PORT of a Ray head node, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise WorldModelsError(f"cannot reach a Ray cluster at '{address}': {exc}") from None


class RayPool:
    """Ray actors on a local or remote Ray cluster; a job whose actor dies goes to a fresh actor.

    Ray's own actor restarts would re-run a task only on an actor that can be restarted; replacing the
    actor here also covers one killed for good (its node gone), and says so.
    """

    MAX_DEATHS = 3  # actors lost on one job before the run gives up

    def __init__(self, workers: int, init_args: tuple, address: str = ""):
        try:
            import ray
        except ImportError:
            raise WorldModelsError("the Ray backend needs Ray: pip install -e '.[ray]'") from None
        self.ray, self.started = ray, not ray.is_initialized()
        if self.started:
            if address not in ("", "auto"):
                check_reachable(address)  # Ray itself retries an unreachable head for minutes
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise WorldModelsError(f"cannot reach a Ray cluster at '{address}': {exc}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if workers > cpus:  # an actor that never gets a CPU would hold its jobs forever
            say(f"ray: the cluster has {cpus} CPUs; using {cpus} workers, not {workers}")
            workers = cpus
        self.worker = ray.remote(num_cpus=1)(_RayWorker)
        self.init_args = ray.put(init_args)  # V and M go to the object store once, not once per actor
        self.actors = [self.worker.remote(self.init_args) for _ in range(workers)]
        self.replaced = 0

    def imap(self, task: Task, jobs: Iterable) -> Iterator:
        ray = self.ray
        queue, idle = deque(enumerate(jobs)), list(self.actors)
        pending: dict = {}  # future -> (job index, job, actor)
        results: dict[int, list] = {}
        deaths: dict[int, int] = {}  # job index -> actors lost while playing it
        next_out = 0
        while queue or pending:
            while queue and idle:
                index, job = queue.popleft()
                actor = idle.pop()
                # ray's stubs type a handle as ActorHandle | the actor's class, whose `run` has no `.remote`
                pending[actor.run.remote(task, job)] = (index, job, actor)  # type: ignore[attr-defined]
            [ready], _ = ray.wait(list(pending), num_returns=1)
            index, job, actor = pending.pop(ready)
            try:
                results[index] = ray.get(ready)
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:  # the actor (or its node) died: never drop its episodes
                deaths[index] = deaths.get(index, 0) + 1
                # not bad luck: the workers cannot run (e.g. a node lacks worldmodels)
                if deaths[index] > self.MAX_DEATHS:
                    raise WorldModelsError(
                        f"ray: {deaths[index]} workers died on the same episodes; the last: {exc}"
                    ) from None
                ray.kill(actor, no_restart=True)
                self.actors.remove(actor)
                fresh = self.worker.remote(self.init_args)
                self.actors.append(fresh)
                idle.append(fresh)
                queue.appendleft((index, job))
                self.replaced += 1
                say("ray: a worker died; replaced it, and its episodes are played again")
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1

    def close(self, graceful: bool = True) -> None:
        for actor in self.actors:
            self.ray.kill(actor)  # type: ignore[arg-type]  # an ActorHandle, typed ActorHandle | class by ray
        if self.started:
            self.ray.shutdown()


# ---------------------------------------------------------------- evaluators


class Evaluator:
    """Scores controllers in the real world: chunks of episodes sent to workers that hold V and M.

    Each worker plays its chunk in lock-step, V, M and C batched over the chunk's episodes: up to 16, where V's conv
    layers at batch 4-8 cost CartPole's search 16% more time (BENCHMARKS.md).
    """

    def __init__(self, runner, workers: int, batch: int = 16, noise: float = 0.0, random_actions: float = 0.0):
        self.runner, self.workers, self.batch = runner, workers, batch
        self.noise = noise  # controller.noise: the std of C's own noise on its outputs, in every episode it plays
        self.random_actions = random_actions  # controller.random_actions: only where C is searched
        self.steps = 0  # real env steps spent, for the logs
        self.success: np.ndarray | None = (
            None  # the last returns()' (P, N) is_success flags; None if the env reports none
        )

    def _chunk(self, episodes: int) -> int:
        """Episodes per job: full batches first (CarRacing's generation of 32 episodes on 2 workers: 2,527 frames/s in
        jobs of 8, 3,479 with 64 episodes in jobs of 16; benchmarks/real_world.py), else an equal share per worker."""
        return max(1, min(self.batch, -(-episodes // self.workers)))

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """(P, N) candidates x seeds -> (P, len(seeds)) returns; every candidate sees the same seeds.

        With `progress`, a bar of that name counts the episodes as their chunks come back (evaluation is long).
        """
        pairs = [(x, s) for x in candidates for s in seeds]
        size = self._chunk(len(pairs))
        jobs = [
            (
                np.stack([x for x, _ in pairs[i : i + size]]),
                [s for _, s in pairs[i : i + size]],
                self.noise,
                self.random_actions,
            )
            for i in range(0, len(pairs), size)
        ]
        counter = bar(
            total=len(pairs), desc=progress, unit="ep", disable=True if progress is None else None, leave=False
        )
        results = []
        for chunk in self.runner.imap(Worker.play, jobs):
            results += chunk
            counter.update(len(chunk))
        counter.close()
        return self._tally(results, len(candidates), len(seeds))

    def _tally(self, results: list[Played], candidates: int, seeds: int) -> np.ndarray:
        self.steps += sum(steps for _, steps, _ in results)
        flags = [success for _, _, success in results]
        self.success = None if None in flags else np.array(flags, dtype=bool).reshape(candidates, seeds)
        return np.array([r for r, _, _ in results], dtype=np.float64).reshape(candidates, seeds)

    def collect(
        self, flats: np.ndarray, seeds: list[int], exploration: float, paths: list[Path]
    ) -> list[tuple[float, int]]:
        """Play and save one episode per seed, episode k with controller flats[k] and noise on its outputs:
        [(return, steps)]."""
        size = self._chunk(len(seeds))
        jobs = [(flats[i : i + size], seeds[i : i + size], exploration) for i in range(0, len(seeds), size)]
        chunks = self.runner.imap(Worker.collect, jobs)
        played = [r for chunk in bar(chunks, total=len(jobs), desc="collect (controller)", unit="chunk") for r in chunk]
        return self._save(played, paths)

    def _save(self, played: list[tuple[float, int, dict]], paths: list[Path]) -> list[tuple[float, int]]:
        """Save collected episodes here, where the episode store is: [(return, steps)]."""
        for (_, _, episode), path in zip(played, paths):
            save_episode(Path(path), episode)
        self.steps += sum(steps for _, steps, _ in played)
        return [(ret, steps) for ret, steps, _ in played]

    def close(self, graceful: bool = True) -> None:
        self.runner.close(graceful)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)


class VectorEvaluator(Evaluator):
    """Scores controllers in one process: a gymnasium AsyncVectorEnv of `copies` worlds (a subprocess each)
    steps every episode, and V, M and C run once per step, batched across the copies."""

    def __init__(
        self, cfg: Config, vision: dict, memory: dict, copies: int, max_steps: int = 0, random_actions: float = 0.0
    ):
        super().__init__(None, copies, noise=cfg.controller.noise, random_actions=random_actions)
        self.model = WorldModel.from_checkpoints(vision, memory, pick_device(cfg.device))  # a GPU serves every copy
        make = functools.partial(make_world, cfg.env, max_steps)
        # spawned, not forked: this process has started torch's thread pools; autoreset off: lockstep resets
        self.envs = gym.vector.AsyncVectorEnv(
            [make] * copies, context="spawn", autoreset_mode=gym.vector.AutoresetMode.DISABLED
        )

    def _play(
        self,
        controller: Controller,
        seeds: list[int],
        exploration: float = 0.0,
        record: list | None = None,
        random_actions: float = 0.0,
    ) -> list[Played]:
        """[(return, frames, the last step's is_success or None)], as the pool's workers report them."""
        return lockstep(VectorCopies(self.envs), self.model, controller, seeds, exploration, record, random_actions)

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """As Evaluator.returns; every episode is one lock-step loop here, so there is no bar to show."""
        population = Controller.from_flat(candidates, self.model.controller_input, self.envs.single_action_space)
        every = population.select(torch.arange(len(candidates)).repeat_interleave(len(seeds)))
        return self._tally(
            self._play(every, seeds * len(candidates), self.noise, random_actions=self.random_actions),
            len(candidates),
            len(seeds),
        )

    def collect(
        self, flats: np.ndarray, seeds: list[int], exploration: float, paths: list[Path]
    ) -> list[tuple[float, int]]:
        controller = Controller.from_flat(flats, self.model.controller_input, self.envs.single_action_space)
        episodes: list[dict] = []
        results = self._play(controller, seeds, exploration, episodes)
        return self._save([(ret, steps, episode) for (ret, steps, _), episode in zip(results, episodes)], paths)

    def close(self, graceful: bool = True) -> None:
        self.envs.close(terminate=not graceful)


def weights(saved: dict) -> dict:
    """What a worker needs of a checkpoint to build its model: not the optimizer's state."""
    return {key: saved[key] for key in ("kind", "config", "state_dict")}


def real_evaluator(
    cfg: Config, vision_path: Path, memory_path: Path, workers: int, max_steps: int = 0, random_actions: float = 0.0
) -> Evaluator:
    """The recipe's backend (controller.backend) scoring controllers in the real world with `workers` workers;
    `random_actions` perturbs their episodes (the search's controller.random_actions; 0 where C is judged)."""
    vision, memory = (
        weights(checkpoints.load(path, kind)) for path, kind in ((vision_path, "vision"), (memory_path, "memory"))
    )
    WorldModel.from_checkpoints(vision, memory, names=(vision_path, memory_path))  # mismatches fail here, in one line
    backend = cfg.controller.backend
    if backend == "vector":
        return VectorEvaluator(cfg, vision, memory, workers, max_steps, random_actions)
    init_args = (cfg.env, vision, memory, max_steps)
    runner: RayPool | LocalPool | InProcess
    if backend == "ray":
        runner = RayPool(workers, init_args, cfg.controller.address)
    else:
        runner = LocalPool(workers, init_args) if workers > 1 else InProcess(init_args)
    return Evaluator(runner, workers, noise=cfg.controller.noise, random_actions=random_actions)
