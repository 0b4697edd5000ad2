"""The one agent loop: episodes played on a list of worlds or a vector env, with as many copies as episodes or
fewer, come out the same, step for step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from helpers import DISCRETE, TINY

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.play.loops import lockstep, play
from worldmodels.runs.checkpoints import Run
from worldmodels.worlds.loop import VectorCopies, WorldList
from worldmodels.worlds.real import make_world

SEEDS = [3, 11, 12, 40, 41]


def played(copies, model: WorldModel, controller: Controller) -> tuple[list, list[dict]]:
    record: list[dict] = []
    results = lockstep(copies, model, controller, SEEDS, exploration=0.8, record=record, random_actions=0.2)
    return [(p.ret, p.frames) for p in results], record


@pytest.mark.parametrize("copies", ["worlds", "vector"])
@pytest.mark.parametrize("count", [2, 5])
def test_fewer_copies_than_episodes_play_the_same_episodes(tiny_run, copies, count):
    cfg = config_lib.load(TINY)
    run = Run(tiny_run["checkpoints"], cfg)
    model = WorldModel.load(run.vision, run.memory)
    rng = np.random.default_rng(0)  # five different controllers, so a mix-up of rows shows
    flats = rng.normal(0.0, 1.0, (len(SEEDS), Controller(model.controller_input, DISCRETE).num_params))
    controller = Controller.from_flat(flats, model.controller_input, DISCRETE)
    record: list[dict] = []
    worlds = [make_world(cfg.env, cfg.controller.max_steps) for _ in SEEDS]
    alone = play(worlds, model, controller, SEEDS, 0.8, record, 0.2)  # one world per episode
    if copies == "worlds":
        tested = WorldList([make_world(cfg.env, cfg.controller.max_steps) for _ in range(count)])
    else:
        make = lambda: make_world(cfg.env, cfg.controller.max_steps)  # noqa: E731
        vector = gym.vector.SyncVectorEnv([make] * count, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        tested = VectorCopies(vector)
    results, episodes = played(tested, model, controller)
    assert results == alone
    assert len({frames for _, frames in alone}) > 1  # episodes of several lengths: copies finish at other steps
    for mine, theirs in zip(episodes, record):
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])
