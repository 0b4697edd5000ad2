"""The agent playing real episodes: V, M and C batched across episodes in lock-step, on a list of worlds or one
vector env."""

from __future__ import annotations

from typing import NamedTuple, Protocol, SupportsFloat

import gymnasium as gym
import numpy as np
import torch

from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError


class EpisodeRecord:
    """One episode being played, kept in the episode store's format."""

    def __init__(self, obs: np.ndarray, seed: int):
        self.seed, self.frames = seed, 0
        self.steps: dict[str, list] = {"obs": [obs], "action": [], "reward": [], "terminated": [], "truncated": []}

    def add(
        self, obs: np.ndarray, action, reward: SupportsFloat, terminated: bool, truncated: bool, frames: int = 1
    ) -> None:
        for key, value in zip(
            ("obs", "action", "reward", "terminated", "truncated"), (obs, action, reward, terminated, truncated)
        ):
            self.steps[key].append(value)
        self.frames += frames

    def arrays(self) -> dict:
        s = self.steps
        return {
            "obs": np.stack(s["obs"]).astype(np.uint8),
            "action": np.asarray(s["action"]),
            "reward": np.asarray(s["reward"], dtype=np.float32),
            "terminated": np.asarray(s["terminated"], dtype=bool),
            "truncated": np.asarray(s["truncated"], dtype=bool),
            "seed": np.asarray(self.seed),
            "frames": np.asarray(self.frames),
            "policy": np.asarray("controller"),  # played by a controller: a driver's, or a round's
        }


class RandomActions:
    """controller.random_actions: at each step of episode k, with this probability a random action replaces C's.

    Drawn from the episode's own seed (a stream apart from the exploration noise), so a perturbed episode is the
    same in every backend and every candidate meets the same perturbations on the same seed."""

    def __init__(self, probability: float, space: gym.Space):
        self.probability, self.space = probability, space
        self.rngs: dict[int, np.random.Generator] = {}

    def start(self, episode: int, seed: int) -> None:
        if self.probability:
            self.rngs[episode] = np.random.default_rng([seed, 7])

    def apply(self, episodes: list[int], actions: list) -> list:
        """`actions[row]` is episode `episodes[row]`'s (-1: an idle copy, left alone); perturbed in place."""
        if self.probability:
            for row, k in enumerate(episodes):
                if k >= 0 and self.rngs[k].random() < self.probability:
                    actions[row] = random_action(self.space, self.rngs[k])
        return actions


def random_action(space: gym.Space, rng: np.random.Generator):
    """A uniform action of a Discrete, MultiDiscrete or bounded Box space, in the form C's actions take."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start + rng.integers(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (space.start + rng.integers(space.nvec)).astype(space.dtype)
    if isinstance(space, gym.spaces.Box) and space.is_bounded():
        return rng.uniform(space.low, space.high).astype(space.dtype)
    raise WorldModelsError("controller.random_actions needs a Discrete, MultiDiscrete or bounded Box action space")


class Outcome(NamedTuple):
    """One lock-step step of the copies in play."""

    obs: np.ndarray  # (copies, ...) uint8 frames
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    frames: np.ndarray  # the world's frames each copy's step played: more than one under an action repeat
    success: list[bool | None]  # the step's is_success, None where the world reports none


class Played(NamedTuple):
    """One episode's outcome."""

    ret: float
    frames: int
    success: bool | None  # its last reported is_success; None if the world reports none


class Copies(Protocol):
    """Copies of a real world that the agent plays episodes on in lock-step (`lockstep`)."""

    single_action_space: gym.Space
    drops_finished: bool  # a finished copy leaves the batch (a list of worlds), or is stepped on idle (a vector env)

    @property
    def num_envs(self) -> int: ...

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> np.ndarray:
        """Reset the copies in `mask`, copy i with seeds[i]: their first frames, (mask.sum(), ...)."""
        ...

    def step(self, actions: list) -> Outcome: ...

    def keep(self, rows: np.ndarray) -> None:
        """From now on only these copies play, in this order (drops_finished copies only)."""
        ...


class WorldList:
    """Worlds stepped one by one in this process: a finished episode's world leaves the batch, so late steps pay only
    for the episodes still going (a worker's cheap worlds)."""

    drops_finished = True

    def __init__(self, worlds: list[gym.Env]):
        self.worlds = list(worlds)
        self.single_action_space = worlds[0].action_space

    @property
    def num_envs(self) -> int:
        return len(self.worlds)

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> np.ndarray:
        return np.stack([self.worlds[i].reset(seed=seeds[i])[0] for i in np.flatnonzero(mask)])

    def step(self, actions: list) -> Outcome:
        obs, reward, terminated, truncated, infos = zip(*(w.step(a) for w, a in zip(self.worlds, actions)))
        return Outcome(
            np.stack(obs),
            np.asarray(reward),
            np.asarray(terminated),
            np.asarray(truncated),
            np.asarray([info.get("frames", 1) for info in infos]),
            [bool(info["is_success"]) if "is_success" in info else None for info in infos],
        )

    def keep(self, rows: np.ndarray) -> None:
        self.worlds = [self.worlds[i] for i in rows]


class VectorCopies:
    """A gymnasium vector env (autoreset off), e.g. an AsyncVectorEnv with a subprocess per copy: it steps every
    copy, so a copy with no episode left to play is stepped on idle."""

    drops_finished = False

    def __init__(self, envs: gym.vector.VectorEnv):
        self.envs, self.num_envs, self.single_action_space = envs, envs.num_envs, envs.single_action_space

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> np.ndarray:
        # gymnasium's vector envs take one seed per copy; VectorEnv.reset's annotation says a single int
        fresh, _ = self.envs.reset(seed=seeds, options={"reset_mask": mask})  # type: ignore[arg-type]
        return fresh[mask]

    def step(self, actions: list) -> Outcome:
        obs, reward, terminated, truncated, info = self.envs.step(np.asarray(actions))
        reported = info["_is_success"] if "is_success" in info else np.zeros(self.num_envs, dtype=bool)
        return Outcome(
            obs,
            reward,
            terminated,
            truncated,
            info["frames"].astype(int) if "frames" in info else np.ones(self.num_envs, dtype=int),
            [bool(info["is_success"][i]) if reported[i] else None for i in range(self.num_envs)],
        )

    def keep(self, rows: np.ndarray) -> None:
        raise NotImplementedError("a vector env steps all its copies")


class Episodes:
    """The episodes of one `lockstep` call: which copy plays which, their noise and perturbations, their tallies."""

    def __init__(self, seeds: list[int], copies: int, exploration: float, perturb: RandomActions, record: bool):
        self.seeds, self.exploration, self.perturb, self.record = seeds, exploration, perturb, record
        self.queue = list(range(len(seeds)))[::-1]  # episodes not started yet, next last
        self.playing = [-1] * copies  # the episode each copy plays; -1: idle, stepped because a vector env steps all
        self.rngs: dict[int, np.random.Generator] = {}
        self.records: dict[int, EpisodeRecord] = {}
        self.totals, self.frames = [0.0] * len(seeds), [0] * len(seeds)
        self.success: list[bool | None] = [None] * len(seeds)

    def going(self) -> bool:
        return any(k >= 0 for k in self.playing)

    def assign(self, mask: np.ndarray) -> list[int | None]:
        """Give the copies in `mask` the next episodes (none once all are started): each copy's reset seed."""
        for i in np.flatnonzero(mask):
            self.playing[i] = self.queue.pop() if self.queue else -1
        return [self.seeds[k] if k >= 0 else None for k in self.playing]

    def started(self, mask: np.ndarray, obs: np.ndarray) -> None:
        """The episodes just assigned to `mask` begin, at these first frames."""
        for i in np.flatnonzero(mask):
            if (k := self.playing[i]) >= 0:
                self.rngs[k] = np.random.default_rng(self.seeds[k])
                self.perturb.start(k, self.seeds[k])
                if self.record:
                    self.records[k] = EpisodeRecord(obs[i].copy(), self.seeds[k])

    def noise(self, size: int) -> np.ndarray | None:
        """Each copy's exploration noise from its episode's generator (zeros for an idle copy); None without it."""
        if not self.exploration:
            return None
        rngs, std = self.rngs, self.exploration
        return np.stack([std * rngs[k].standard_normal(size) if k >= 0 else np.zeros(size) for k in self.playing])

    def tally(self, outcome: Outcome, actions: list) -> None:
        """Add one step to the returns, frame counts, successes and records of the episodes in play."""
        for i, k in enumerate(self.playing):
            if k < 0:
                continue
            frames = int(outcome.frames[i])
            self.totals[k] += float(outcome.reward[i])
            self.frames[k] += frames
            if self.record:
                step = (outcome.reward[i], outcome.terminated[i], outcome.truncated[i], frames)
                self.records[k].add(outcome.obs[i].copy(), actions[i], *step)
            if outcome.success[i] is not None:
                self.success[k] = outcome.success[i]

    def keep(self, rows: np.ndarray) -> None:
        self.playing = [self.playing[i] for i in rows]

    def played(self) -> list[Played]:
        return [Played(*episode) for episode in zip(self.totals, self.frames, self.success)]


@torch.inference_mode()
def lockstep(
    copies: Copies,
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
    random_actions: float = 0.0,
) -> list[Played]:
    """Real episodes on `copies`, episode k with controller row k and seeds[k]; V, M and C batched across the copies
    in play, a copy whose episode ends reset with the next episode's seed: one Played per episode.

    This is what makes a worker fast on a CPU. `exploration` adds Gaussian noise of that std to C's outputs (drawn
    from the episode's seed); with a `record` list, each episode is appended to it in the episode store's format;
    `random_actions` as in `RandomActions`.
    """
    space, everyone = copies.single_action_space, np.ones(copies.num_envs, dtype=bool)
    episodes = Episodes(seeds, copies.num_envs, exploration, RandomActions(random_actions, space), record is not None)
    obs = copies.reset(episodes.assign(everyone), everyone)
    episodes.started(everyone, obs)
    state = model.memory.initial_state(copies.num_envs, model.device)
    history: torch.Tensor | None = None  # V's memory of past frames, for a V that reads several
    while episodes.going():
        z, history = model.see(obs, history)
        rows = [max(k, 0) for k in episodes.playing]  # idle copies act with any controller; their steps are dropped
        outputs = controller.act(z.cpu(), model.memory.readout(state).cpu(), rows, episodes.noise(controller.out))
        actions = episodes.perturb.apply(episodes.playing, outputs)
        outcome = copies.step(actions)
        obs, state = outcome.obs, model.remember(z, actions, space, state)
        episodes.tally(outcome, actions)
        done = outcome.terminated | outcome.truncated
        if copies.drops_finished and not episodes.queue:  # finished episodes leave the batch: V, M and C skip them
            on = np.flatnonzero(~done)
            copies.keep(on)
            episodes.keep(on)
            keep = torch.from_numpy(on).to(model.device)
            obs, state = obs[on], (state[0][:, keep], state[1][:, keep])
            history = None if history is None else history[keep]
        elif done.any():
            mask = torch.from_numpy(done).to(model.device)
            if history is not None:  # these copies' next frame starts anew
                history[mask] = float("nan")
            obs[done] = copies.reset(episodes.assign(done), done)
            state[0][:, mask], state[1][:, mask] = 0, 0  # M starts each episode from its initial (zero) state
            episodes.started(done, obs)
    if record is not None:
        record.extend(episodes.records[k].arrays() for k in range(len(seeds)))
    return episodes.played()


def play(
    worlds: list[gym.Env],
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
    random_actions: float = 0.0,
) -> list[tuple[float, int]]:
    """`lockstep` on a list of worlds, one per episode: [(return, frames)]."""
    played = lockstep(WorldList(worlds), model, controller, seeds, exploration, record, random_actions)
    return [(p.ret, p.frames) for p in played]
