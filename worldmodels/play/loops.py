"""The agent playing real episodes: V, M and C batched across episodes in lock-step, on a list of worlds or one
vector env (`worlds.loop` is the loop; this is the V-M-C actor in it)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.worlds.loop import Actor, Copies, Played, WorldList, run_episodes


class Agent(Actor):
    """V reads each copy's frame, C acts on [z, h], M remembers what was done: one batch for every copy in play."""

    def __init__(self, model: WorldModel, controller: Controller, space: gym.Space):
        self.model, self.controller, self.space, self.outputs = model, controller, space, controller.out
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history: torch.Tensor | None = None  # V's memory of past frames, for a V that reads several

    def act(self, obs: np.ndarray, rows: np.ndarray, noise: np.ndarray | None) -> list:
        assert self.state is not None  # restarted by the loop before its first step
        self.z, self.history = self.model.see(obs, self.history)
        return self.controller.act(self.z.cpu(), self.model.memory.readout(self.state).cpu(), rows.tolist(), noise)

    def observe(self, actions: list) -> None:
        assert self.state is not None
        self.state = self.model.remember(self.z, actions, self.space, self.state)

    def restart(self, mask: np.ndarray) -> None:
        if self.state is None:  # the loop's first step
            self.state = self.model.memory.initial_state(len(mask), self.model.device)
            return
        rows = torch.from_numpy(mask).to(self.model.device)
        if self.history is not None:  # these copies' next frame starts anew
            self.history[rows] = float("nan")
        self.state[0][:, rows], self.state[1][:, rows] = 0, 0  # M starts each episode from its initial (zero) state

    def keep(self, rows: np.ndarray) -> None:
        assert self.state is not None
        on = torch.from_numpy(rows).to(self.model.device)
        self.state = (self.state[0][:, on], self.state[1][:, on])
        self.history = None if self.history is None else self.history[on]


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
    `random_actions` as in `worlds.loop.RandomActions`.
    """
    agent = Agent(model, controller, copies.single_action_space)
    return run_episodes(copies, agent, seeds, exploration, record, random_actions)


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
