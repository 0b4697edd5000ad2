"""CMA-ES over the controller's flat parameters, candidates scored in real-world rollouts or in M's dream."""

from __future__ import annotations

import contextlib
import enum

import cma
import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from worldmodels.agent import WorldModel, load_ensemble
from worldmodels.config import Config, ControllerConfig, DreamConfig
from worldmodels.controller import search_state
from worldmodels.controller.linear import Controller, InputScale
from worldmodels.controller.search_state import Progress
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import bar
from worldmodels.data.latents import dream_starts, load_latents
from worldmodels.memory import MDNRNN
from worldmodels.play.backends import real_evaluator
from worldmodels.play.evaluators import Evaluator, SearchWorld, StatefulEvaluator, open_world, register_world
from worldmodels.runs import checkpoints
from worldmodels.training import pick_device
from worldmodels.worlds.dream import Dream, dream_rollout, filmstrip, play_dream
from worldmodels.worlds.real import action_space

# ---------------------------------------------------------------- the dream's evaluator


class DreamEvaluator:
    """Scores controllers in M's dream: every candidate x rollout in one batch, one M step for all per time step."""

    def __init__(
        self,
        model: WorldModel,
        cfg: DreamConfig,
        starts: torch.Tensor | None,
        space: gym.Space,
        noise: float = 0.0,
        others: list[MDNRNN] | None = None,
    ):
        self.dream = Dream(model.memory, cfg, starts, model.vision, others)
        self.input_dim, self.space, self.batch = model.controller_input, space, cfg.batch
        self.noise = noise  # controller.noise: C's outputs are noisy in the dream as everywhere it acts
        self.steps = 0  # dream steps spent, for the logs

    def returns(self, candidates: np.ndarray, seeds: list[int], progress: str | None = None) -> np.ndarray:
        """(P, N) candidates x seeds -> (P, len(seeds)) dream returns; every candidate dreams the same seeds
        (in seconds: no bar)."""
        p, r = len(candidates), len(seeds)
        population = Controller.from_flat(candidates, self.input_dim, self.space)
        returns, steps = play_dream(
            self.dream, population.select(torch.arange(p).repeat_interleave(r)), seeds * p, self.batch, self.noise
        )
        self.steps += int(steps.sum())
        return returns.reshape(p, r)

    def close(self, graceful: bool = True) -> None:
        pass

    def __enter__(self) -> "DreamEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        pass


def dream_evaluator(cfg: Config, run: checkpoints.Run, model: WorldModel) -> DreamEvaluator:
    """The recipe's dream on `model`: started where dream.start says, C's outputs with controller.noise."""
    starts = dream_starts(run, cfg.dream.start)
    others = load_ensemble(run, model.device)
    return DreamEvaluator(model, cfg.dream, starts, action_space(cfg.env), cfg.controller.noise, others)


# ---------------------------------------------------------------- the CMA-ES loop


class Stream(enum.IntEnum):
    """C's streams of episode seeds, one per use, each offset from controller.seed: no two uses share episodes."""

    CANDIDATES = 0  # the episodes every candidate of a generation shares
    REEVALUATE = 1  # the best and the mean re-evaluated every eval_every generations
    ROUND_START = 2  # the kept controller re-measured in a round's new dream
    REAL_WATCH = 3  # controller.real_rollouts: real episodes that only watch a dream search
    SELECT = 4  # controller.select_top: the final re-scoring of the best re-evaluated controllers
    ROUND_CONFIRM = 5  # rounds.confirm: the last rounds' collectors scored in the retrained dream
    CONFIRM = 6  # controller.confirm_rollouts: a contender re-scored before it replaces the kept controller
    FIDELITY = 7  # the fidelity report's dream episodes of the search's history


def generation_seeds(seed: int, generation: int, count: int) -> list[int]:
    """The rollout seeds every candidate of one generation shares."""
    rng = np.random.default_rng([seed, generation])
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


def stream_seeds(c: ControllerConfig, stream: Stream, index: int, count: int) -> list[int]:
    """`count` episode seeds of C's `stream` at `index` (a generation, a round)."""
    return generation_seeds(c.seed + stream, index, count)


def log_dream_rollout(writer: SummaryWriter, evaluator: DreamEvaluator, flat: np.ndarray, seed: int, step: int) -> None:
    """A filmstrip of one dream episode of `flat` (every k-th frame, at most 16) to TensorBoard."""
    controller = Controller.from_flat(flat, evaluator.input_dim, evaluator.space)
    frames, _ = dream_rollout(evaluator.dream, controller, seed, action_noise=evaluator.noise)
    writer.add_image("dream/rollout", filmstrip(frames), step, dataformats="HWC")


# ---------------------------------------------------------------- the worlds C is searched in


def real_world(cfg: Config, run: checkpoints.Run) -> SearchWorld:
    """The real world seen through V and M, its episodes played by the recipe's backend."""
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"), "cpu")
    c = cfg.controller
    return SearchWorld(
        model.controller_input,
        action_space(cfg.env),
        lambda: real_evaluator(cfg, run.vision, run.memory, c.workers, c.max_steps, c.random_actions),
        inputs=lambda: model.controller_inputs(load_latents(run)),
    )


def dream_world(cfg: Config, run: checkpoints.Run) -> SearchWorld:
    """M's dream, started from real frames V encoded (dream.start)."""
    vision, memory = run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory")
    model = WorldModel.load(vision, memory, pick_device(cfg.device))
    return SearchWorld(
        model.controller_input,
        action_space(cfg.env),
        lambda: dream_evaluator(cfg, run, model),
        inputs=lambda: model.controller_inputs(load_latents(run)),
    )


register_world("real", real_world)
register_world("dream", dream_world)


# ---------------------------------------------------------------- the CMA-ES loop


class Search:
    """One controller search: the CMA-ES object and its progress, resumed from and saved to the run's `cmaes.pt`."""

    def __init__(self, cfg: Config, run: checkpoints.Run, world: SearchWorld, round: int):
        self.cfg, self.c, self.run, self.world = cfg, cfg.controller, run, world
        dim = Controller(world.input_dim, world.space).num_params
        c = self.c
        self.search = {
            "dim": dim,
            "population": c.population,
            "sigma0": c.sigma0,
            "seed": c.seed,
            "normalize": c.normalize,
            "random_actions": c.random_actions,  # another perturbation is another objective
        }
        self.es, self.progress = self.resume()
        self.scale = self.input_scale()
        self.new_round = self.progress.round < round
        self.round = round

    def resume(self) -> tuple[cma.CMAEvolutionStrategy, Progress]:
        """The saved search, checked to be one of this world under these rules, or a fresh one."""
        run, c = self.run, self.c
        search_state.refuse_pickle(run.dir)
        if not run.cmaes.exists():
            return search_state.fresh_search(self.search), Progress(world=c.world, rules=self.world.rules)
        es, progress, np_state = search_state.load(run.cmaes, self.search)
        np.random.set_state(np_state)  # pycma samples from numpy's global generator
        if progress.world != c.world:  # scores from the two worlds do not compare
            raise WorldModelsError(
                f"'{run.cmaes}' holds a search in the {progress.world} world, not the {c.world} one; "
                "delete it and controller.pt, or use another --run"
            )
        if progress.rules != self.world.rules:  # another objective or episode length: the scores mean something else
            raise WorldModelsError(
                f"'{run.cmaes}' holds a search under other codebook-world settings ({progress.rules}); "
                "delete it and controller.pt, or use another --run"
            )
        return es, progress

    def input_scale(self) -> InputScale | None:
        """controller.normalize: C's inputs' scale, measured on the run's data when the search began and kept for
        its whole length (later rounds' data would move the search's units under it)."""
        p = self.progress
        if not self.c.normalize:
            return None
        if p.input_scale is None:
            if self.world.inputs is None:
                raise WorldModelsError(
                    f"controller.normalize needs a world that says what C sees; the {self.c.world} world does not"
                )
            scale = InputScale.of(self.world.inputs())
            p.input_scale = {"mean": scale.mean, "std": scale.std}
        return InputScale(p.input_scale["mean"], p.input_scale["std"])

    def controllers(self, points: np.ndarray) -> np.ndarray:
        """CMA-ES's points (P, N) -> the controllers they stand for (P, N)."""
        return np.atleast_2d(points) if self.scale is None else self.scale.to_controller(points)

    def point(self, controller: np.ndarray) -> np.ndarray:
        """A controller's point in CMA-ES's space."""
        return controller if self.scale is None else self.scale.to_search(controller)[0]

    def until(self) -> int:
        """The generation the current round stops at."""
        p = self.progress
        return self.c.generations if p.round == 0 else p.round_start + self.cfg.rounds.generations

    def finished(self) -> bool:
        return self.progress.generation >= self.until() or self.progress.best_score >= self.c.target

    def selected(self) -> bool:
        """The final re-scoring (controller.select_top) is done, or not asked for."""
        p = self.progress
        return not self.c.select_top or p.best is None or p.selected == p.generation

    def done(self) -> bool:
        return self.finished() and not self.new_round and self.selected()

    def keep(self, flat: np.ndarray, score: float) -> None:
        """Make `flat` the kept controller, with its score, and write controller.pt."""
        self.progress.best, self.progress.best_score = flat, score
        checkpoints.save_controller(
            self.run.controller,
            flat,
            self.world.input_dim,
            score,
            self.progress.generation,
            checkpoints.fingerprint(self.cfg),
        )

    def save(self, evaluator: Evaluator) -> None:
        """Write the search (and its world's state) to cmaes.pt; the steps spent join the progress."""
        self.progress.env_steps += evaluator.steps
        evaluator.steps = 0
        if isinstance(evaluator, StatefulEvaluator):
            self.progress.world_state = evaluator.state()
        search_state.save(self.run.cmaes, self.es, self.search, self.progress, checkpoints.fingerprint(self.cfg))

    def start_round(self, evaluator: Evaluator) -> None:
        """M changed: the kept controller's score is re-measured in the new dream before the round searches."""
        p = self.progress
        p.round, p.round_start = self.round, p.generation
        if p.best is not None:
            seeds = stream_seeds(self.c, Stream.ROUND_START, self.round, self.c.eval_rollouts)
            self.keep(p.best, float(evaluator.returns(p.best[None], seeds).mean()))
            tqdm.write(f"round {self.round}: the kept controller scores {p.best_score:.1f} in the new dream")
            if self.cfg.rounds.sigma:  # M has just seen the kept controller's states: search near it, not
                # from wherever the last search's distribution went (where M had seen nothing)
                self.es = search_state.fresh_search(self.search, self.point(p.best), self.cfg.rounds.sigma, self.round)
        self.save(evaluator)

    def generation(self, evaluator: Evaluator, generation: int, writer: SummaryWriter) -> tuple[np.ndarray, np.ndarray]:
        """Ask CMA-ES for a population, score it on the shared seeds, tell CMA-ES: (controllers, fitness)."""
        c = self.c
        points = np.asarray(self.es.ask())
        candidates = self.controllers(points)
        # a real-world generation takes minutes: its episodes get a bar of their own (the dream's takes seconds)
        within = f"generation {generation + 1}" if c.world == "real" else None
        seeds = stream_seeds(c, Stream.CANDIDATES, generation, c.rollouts)
        fitness = evaluator.returns(candidates, seeds, within).mean(1)
        self.es.tell(list(points), list(-fitness))  # cma minimises
        self.progress.generation = step = generation + 1
        writer.add_scalar("controller/fitness_best", fitness.max(), step)
        writer.add_scalar("controller/fitness_mean", fitness.mean(), step)
        writer.add_scalar("controller/fitness_worst", fitness.min(), step)
        writer.add_scalar("controller/sigma", self.es.sigma, step)
        return candidates, fitness

    def reevaluate(
        self, evaluator: Evaluator, candidates: np.ndarray, fitness: np.ndarray, writer: SummaryWriter
    ) -> str:
        """Re-score the generation's best and the distribution's mean on fresh seeds; keep the better if it beats the
        kept one. Returns the line to print."""
        p, generation = self.progress, self.progress.generation - 1
        seeds = stream_seeds(self.c, Stream.REEVALUATE, generation, self.c.eval_rollouts)
        contenders = np.stack([candidates[fitness.argmax()], self.controllers(self.es.mean)[0]])
        scores = evaluator.returns(contenders, seeds).mean(1)
        writer.add_scalar("controller/eval_best", scores[0], p.generation)
        writer.add_scalar("controller/eval_mean", scores[1], p.generation)
        line = f"generation {p.generation}: re-evaluated best {scores[0]:.4g}, mean {scores[1]:.4g}"
        rising = np.flatnonzero(scores > p.best_score)
        if self.c.confirm_rollouts and len(rising):
            scores[rising] = self.confirm(evaluator, contenders[rising], scores[rising])
            line += f"; over {self.c.eval_rollouts + self.c.confirm_rollouts} episodes: " + ", ".join(
                f"{('best', 'mean')[i]} {scores[i]:.4g}" for i in rising
            )
        p.history = (p.history or []) + [
            {"generation": p.generation, "kind": kind, "params": flat, "score": float(score)}
            for kind, flat, score in zip(("best", "mean"), contenders, scores)
        ]
        if scores.max() > p.best_score:
            self.keep(contenders[scores.argmax()], float(scores.max()))
            if isinstance(evaluator, DreamEvaluator):
                log_dream_rollout(writer, evaluator, contenders[scores.argmax()], seeds[0], p.generation)
        return line

    def confirm(self, evaluator: Evaluator, contenders: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """controller.confirm_rollouts: the contenders' scores over their re-evaluation and that many fresh episodes
        more; the top of many 8-episode scores is a lucky one, and the kept score is what the target is checked on."""
        c, generation = self.c, self.progress.generation - 1
        more = evaluator.returns(contenders, stream_seeds(c, Stream.CONFIRM, generation, c.confirm_rollouts)).mean(1)
        return (scores * c.eval_rollouts + more * c.confirm_rollouts) / (c.eval_rollouts + c.confirm_rollouts)

    def watch(self, watcher: Evaluator, writer: SummaryWriter) -> str:
        """Real episodes of the kept controller beside its dream score (controller.real_rollouts), for the logs only."""
        p = self.progress
        assert p.best is not None
        seeds = stream_seeds(self.c, Stream.REAL_WATCH, p.generation - 1, self.c.real_rollouts)
        real = watcher.returns(p.best[None], seeds).mean()
        p.real_steps += watcher.steps
        watcher.steps = 0
        writer.add_scalars("controller/dream_vs_real", {"dream": p.best_score, "real": real}, p.generation)
        return f"; kept controller: dream {p.best_score:.1f}, real {real:.1f}"

    def select(self, evaluator: Evaluator, writer: SummaryWriter) -> None:
        """The final choice: the kept controller and this round's `select_top` best re-evaluated ones, re-scored on
        `select_rollouts` fresh episodes they share; the best of those is kept, with that score."""
        p, c = self.progress, self.c
        history = sorted((h for h in p.history or [] if h["generation"] > p.round_start), key=lambda h: -h["score"])
        contenders: list[np.ndarray] = []
        for flat in [p.best] + [h["params"] for h in history]:
            if len(contenders) < max(c.select_top, 1) and not any(np.array_equal(flat, k) for k in contenders):
                contenders.append(flat)
        seeds = stream_seeds(c, Stream.SELECT, p.generation, c.select_rollouts)
        scores = evaluator.returns(np.stack(contenders), seeds).mean(1)
        p.selected = p.generation
        self.keep(contenders[int(scores.argmax())], float(scores.max()))
        writer.add_scalar("controller/selected_score", p.best_score, p.generation)
        tqdm.write(
            f"controller: the kept controller and the top {len(scores) - 1} others re-scored on {c.select_rollouts} "
            f"episodes: {', '.join(f'{x:.4g}' for x in scores)}; kept {p.best_score:.4g}"
        )
        self.save(evaluator)


def train_controller(cfg: Config, run: checkpoints.Run, round: int = 0) -> dict:
    """Search controller parameters with CMA-ES in the recipe's world; resumable from the saved CMA-ES state.

    Round r > 0 of iterative training goes on searching for `rounds.generations` generations in the
    dream of the retrained M, after re-scoring the kept controller there.
    """
    c, world = cfg.controller, open_world(cfg, run)
    search = Search(cfg, run, world, round)
    p = search.progress
    if search.done():
        tqdm.write(f"controller: already searched {p.generation} generations, skipping")
        return {"world": c.world, "generation": p.generation, "best_score": p.best_score, "steps": p.env_steps}
    if p.generation:
        tqdm.write(f"controller: resuming after generation {p.generation}")
    writer = SummaryWriter(run.tensorboard)
    tqdm.write(
        f"controller: {search.search['dim']} parameters, population {c.population} x {c.rollouts} rollouts "
        f"in the {c.world} world"
    )
    with contextlib.ExitStack() as stack:
        evaluator = stack.enter_context(world.open())
        if isinstance(evaluator, StatefulEvaluator) and p.world_state:
            evaluator.restore(p.world_state)
        watcher = None  # real episodes that only watch a dream-trained controller
        if c.world == "dream" and c.real_rollouts:
            watcher = stack.enter_context(real_evaluator(cfg, run.vision, run.memory, c.workers, c.max_steps))
        if search.new_round:
            search.start_round(evaluator)
        generations = bar(range(p.generation, search.until()), desc=f"cma-es ({c.world})", unit="gen")
        for generation in generations:
            if search.finished():
                break
            candidates, fitness = search.generation(evaluator, generation, writer)
            generations.set_postfix(
                best=f"{fitness.max():.1f}", mean=f"{fitness.mean():.1f}", kept=f"{p.best_score:.1f}"
            )
            if p.generation % c.eval_every == 0 or p.generation == search.until():
                line = search.reevaluate(evaluator, candidates, fitness, writer)
                tqdm.write(line + (search.watch(watcher, writer) if watcher else ""))
            if isinstance(evaluator, StatefulEvaluator):
                evaluator.log(writer, p.generation)
            spent = p.env_steps + evaluator.steps
            writer.add_scalar(f"controller/{c.world}_steps", spent, p.generation)
            if p.generation % c.eval_every == 0 and np.isfinite(p.best_score):  # the learning curve by frames spent
                writer.add_scalar(f"controller/kept_score_by_{c.world}_steps", p.best_score, spent)
            search.save(evaluator)
            if p.best_score >= c.target:
                tqdm.write(f"controller: target {c.target} reached, stopping")
        generations.close()
        if search.finished() and not search.selected():
            search.select(evaluator, writer)
    writer.close()
    result = {"world": c.world, "generation": p.generation, "best_score": p.best_score, "steps": p.env_steps}
    if p.real_steps:
        result["real_steps_watching"] = p.real_steps
    return result
