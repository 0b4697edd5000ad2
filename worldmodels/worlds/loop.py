"""The one loop that plays episodes: copies of a world stepped in lock-step, an actor choosing every copy's action
at once, a finished copy reset with the next episode's seed (or dropped from the batch once none is left).

The copies are real worlds in this process (`WorldList`), a gymnasium vector env (`VectorCopies`) or M's dream
(`worlds.dream`); the actor is the V-M-C agent (`play.loops`), C alone in the dream, or an outside policy.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, SupportsFloat

import gymnasium as gym
import numpy as np

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

    def apply(self, episodes: np.ndarray | list[int], actions: list) -> list:
        """`actions[row]` is episode `episodes[row]`'s (-1: an idle copy, left alone); perturbed in place."""
        if self.probability:
            for row, k in enumerate(np.asarray(episodes).tolist()):
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

    obs: np.ndarray  # (copies, ...) what the actor sees next: uint8 frames of a real world
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    frames: np.ndarray  # the world's frames each copy's step played: more than one under an action repeat
    success: list[bool | None] | None  # the step's is_success, None where the world reports none (None: nowhere)


class Played(NamedTuple):
    """One episode's outcome."""

    ret: float
    frames: int
    success: bool | None  # its last reported is_success; None if the world reports none


class Copies(Protocol):
    """Copies of a world that episodes are played on in lock-step (`run_episodes`)."""

    single_action_space: gym.Space
    drops_finished: bool  # a finished copy leaves the batch (a list of worlds), or is stepped on idle (a vector env)

    @property
    def num_envs(self) -> int: ...

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> np.ndarray:
        """Reset the copies in `mask`, copy i with seeds[i]: their first observations, (mask.sum(), ...)."""
        ...

    def step(self, actions) -> Outcome: ...

    def keep(self, rows: np.ndarray) -> None:
        """From now on only these copies play, in this order (drops_finished copies only)."""
        ...


class Actor(Protocol):
    """Who chooses the actions of every copy in play at once: the V-M-C agent, C in the dream, an outside policy.
    An actor with no memory of the episode subclasses it for the three methods that then do nothing."""

    outputs: int  # the width of the exploration noise it takes (C's outputs)

    def act(self, obs: np.ndarray, rows: np.ndarray, noise: np.ndarray | None) -> Any:
        """Each copy's action from its observation, in the form the copies step on (a list of the world's actions,
        M's action input on the dream's device); `rows[i]`: the episode copy i plays (0 for an idle copy)."""
        ...

    def observe(self, actions: Any) -> None:
        """The copies were stepped with these actions (what a memory of the episode needs)."""
        return None

    def restart(self, mask: np.ndarray) -> None:
        """The copies in `mask` begin new episodes."""
        return None

    def keep(self, rows: np.ndarray) -> None:
        """Only these copies play on, in this order."""
        return None


class PolicyActor(Actor):
    """A policy of one observation at a time (an outside policy, a collection policy) as the loop's actor."""

    outputs = 0  # takes no exploration noise

    def __init__(self, policy: Callable[[np.ndarray], Any]):
        self.policy = policy

    def act(self, obs: np.ndarray, rows: np.ndarray, noise: np.ndarray | None) -> list:
        return [self.policy(o) for o in obs]


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
    """The episodes of one `run_episodes` call: which copy plays which, their noise and perturbations, their
    tallies (in arrays: a dream plays thousands at once)."""

    def __init__(self, seeds: list[int], copies: int, exploration: float, perturb: RandomActions, record: bool):
        self.seeds, self.exploration, self.perturb, self.record = seeds, exploration, perturb, record
        self.queue = list(range(len(seeds)))[::-1]  # episodes not started yet, next last
        self.playing = np.full(copies, -1)  # the episode each copy plays; -1: idle, stepped as a vector env steps all
        self.rngs: dict[int, np.random.Generator] = {}
        self.records: dict[int, EpisodeRecord] = {}
        self.totals, self.frames = np.zeros(len(seeds)), np.zeros(len(seeds), dtype=np.int64)
        self.success: list[bool | None] = [None] * len(seeds)

    def going(self) -> bool:
        return bool((self.playing >= 0).any())

    def assign(self, mask: np.ndarray) -> list[int | None]:
        """Give the copies in `mask` the next episodes (none once all are started): each copy's reset seed."""
        for i in np.flatnonzero(mask):
            self.playing[i] = self.queue.pop() if self.queue else -1
        return [self.seeds[k] if k >= 0 else None for k in self.playing]

    def started(self, mask: np.ndarray, obs: np.ndarray) -> None:
        """The episodes just assigned to `mask` begin, at these first observations."""
        for i in np.flatnonzero(mask):
            if (k := self.playing[i]) >= 0:
                if self.exploration:
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
        on = self.playing >= 0
        played = self.playing[on]  # every episode in play once: no two copies play the same one
        self.totals[played] += np.asarray(outcome.reward, dtype=np.float64)[on]
        self.frames[played] += np.asarray(outcome.frames)[on]
        if self.record:
            for i in np.flatnonzero(on):
                step = (outcome.reward[i], outcome.terminated[i], outcome.truncated[i], int(outcome.frames[i]))
                self.records[self.playing[i]].add(outcome.obs[i].copy(), actions[i], *step)
        if outcome.success is not None:
            for row, success in enumerate(outcome.success):
                if success is not None and self.playing[row] >= 0:
                    self.success[self.playing[row]] = success

    def keep(self, rows: np.ndarray) -> None:
        self.playing = self.playing[rows]

    def played(self) -> list[Played]:
        return [Played(*episode) for episode in zip(self.totals.tolist(), self.frames.tolist(), self.success)]


def run_episodes(
    copies: Copies,
    actor: Actor,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
    random_actions: float = 0.0,
) -> list[Played]:
    """Episode k played with seeds[k] (and the actor's row k) on `copies` in lock-step: one Played per episode.

    `exploration` adds Gaussian noise of that std to the actor's outputs, drawn from the episode's seed; with a
    `record` list, each episode is appended to it in the episode store's format; `random_actions` as in
    `RandomActions`."""
    space, everyone = copies.single_action_space, np.ones(copies.num_envs, dtype=bool)
    episodes = Episodes(seeds, copies.num_envs, exploration, RandomActions(random_actions, space), record is not None)
    obs = copies.reset(episodes.assign(everyone), everyone)
    episodes.started(everyone, obs)
    actor.restart(everyone)
    while episodes.going():
        rows = np.maximum(episodes.playing, 0)  # an idle copy acts as row 0 would; its steps are dropped
        actions = episodes.perturb.apply(episodes.playing, actor.act(obs, rows, episodes.noise(actor.outputs)))
        outcome = copies.step(actions)
        obs = outcome.obs
        actor.observe(actions)
        episodes.tally(outcome, actions)
        done = outcome.terminated | outcome.truncated
        # a finished copy starts the next episode; one with none left leaves the batch (or idles in a vector env)
        restart = done & (np.cumsum(done) <= len(episodes.queue)) if copies.drops_finished else done
        if restart.any():
            obs[restart] = copies.reset(episodes.assign(restart), restart)
            actor.restart(restart)
            episodes.started(restart, obs)
        if (leaving := done & ~restart).any():  # V, M and C skip them from now on
            on = np.flatnonzero(~leaving)
            copies.keep(on)
            episodes.keep(on)
            actor.keep(on)
            obs = obs[on]
    if record is not None:
        record.extend(episodes.records[k].arrays() for k in range(len(seeds)))
    return episodes.played()
