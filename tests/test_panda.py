"""Success rate for goal-reaching worlds, and panda-gym's Reach from pixels (envs/panda_reach.toml).

The success-rate plumbing is checked on a toy gymnasium env registered here, which reports info["is_success"]
like panda-gym does; the panda tests run only where panda-gym is installed (pip install -e .[panda]).
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import RUN_NAME, TINY, cli_stage

from worldmodels import config as config_lib
from worldmodels.agent import WorldModel
from worldmodels.controller.linear import Controller
from worldmodels.core.errors import WorldModelsError
from worldmodels.memory import MDNRNN
from worldmodels.play.backends import real_evaluator
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.worlds.real import find_spec, make_world

RECIPE = Path(__file__).resolve().parents[1] / "envs" / "panda_reach.toml"


class ToySuccessEnv(gym.Env):
    """Reaches its goal at step 3 on even seeds (is_success, terminated); on odd seeds never, truncated at step 6.

    State observations and rgb_array renders, like panda-gym; same action space as CartPole, so the tiny run's C fits.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.reaches, self.t = False, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / 6, float(self.reaches)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.reaches, self.t = seed is not None and seed % 2 == 0, 0
        return self._obs(), {"is_success": np.array(False)}

    def step(self, action):
        self.t += 1
        success = self.reaches and self.t >= 3
        return self._obs(), 0.0 if success else -1.0, success, self.t >= 6, {"is_success": np.array(success)}

    def render(self) -> np.ndarray:
        return np.full((32, 32, 3), 40 * self.t, dtype=np.uint8)


if "ToySuccess-v0" not in gym.registry:
    gym.register("ToySuccess-v0", entry_point=ToySuccessEnv)
TOY_ID = f"{__name__}:ToySuccess-v0"  # "module:EnvId": the world imports this module, which registers the env


# ---------------------------------------------------------------- success rate, without panda-gym


def test_module_prefixed_id_imports_the_module():
    assert find_spec(TOY_ID).id == "ToySuccess-v0"
    assert find_spec("gymnasium.envs.classic_control:CartPole-v1").id == "CartPole-v1"
    with pytest.raises(WorldModelsError, match="no_such_module_xyz"):
        find_spec("no_such_module_xyz:Foo-v0")
    with pytest.raises(WorldModelsError, match="unknown env id"):
        find_spec(f"{__name__}:NoSuchEnv-v0")


def test_pixel_world_tracks_the_last_is_success():
    world = make_world(config_lib.EnvConfig(id=TOY_ID, frame_size=16))
    obs, _ = world.reset(seed=2)
    assert obs.shape == (16, 16, 3) and world.success is False
    flags = []
    while True:
        _, _, terminated, truncated, _ = world.step(0)
        flags.append(world.success)
        if terminated or truncated:
            break
    assert flags == [False, False, True] and terminated
    world.reset(seed=3)
    while not world.step(1)[3]:
        pass
    assert world.success is False
    cartpole = make_world(config_lib.EnvConfig(id="CartPole-v1", frame_size=16))
    cartpole.reset(seed=0)
    cartpole.step(0)
    assert cartpole.success is None  # CartPole reports no is_success
    for w in (world, cartpole):
        w.close()


def test_evaluator_keeps_success_flags_per_candidate_and_seed(tiny_run):
    cfg = config_lib.load(TINY, [f"env.id={TOY_ID}"])
    run = Run(tiny_run["checkpoints"], cfg)
    model = WorldModel.load(run.vision, run.memory)
    dim = Controller(model.controller_input, gym.spaces.Discrete(2)).num_params
    candidates = np.random.default_rng(0).normal(0, 0.1, (2, dim))
    with real_evaluator(cfg, run.vision, run.memory, workers=1) as evaluator:
        returns = evaluator.returns(candidates, [4, 5, 6])
        np.testing.assert_array_equal(evaluator.success, [[True, False, True]] * 2)
        np.testing.assert_array_equal(returns, [[-2.0, -6.0, -2.0]] * 2)
    cartpole = config_lib.load(TINY)
    with real_evaluator(cartpole, run.vision, run.memory, workers=1) as evaluator:
        evaluator.returns(candidates[:1], [0])
        assert evaluator.success is None


def test_evaluate_reports_success_rate_only_where_the_env_gives_it(copy_run, tmp_path):
    assert "success_rate" not in json.loads((copy_run["dir"] / "report.json").read_text())  # CartPole
    # a run of the toy world's own (a run folder refuses a recipe for another world): V, M and C trained in it
    toy = ("--set", f"env.id={TOY_ID}")
    assert cli_stage("pipeline", tmp_path / "toy", tmp_path / "toy_ro", *toy) == 0
    assert cli_stage("evaluate", tmp_path / "toy", tmp_path / "toy_ro", *toy) == 0
    report = json.loads((tmp_path / "toy" / "tiny" / "report.json").read_text())
    assert report["env"] == TOY_ID and report["seeds"] == [10_000, 10_001, 10_002]
    assert report["successes"] == [True, False, True]
    assert report["success_rate"] == pytest.approx(2 / 3)
    assert report["returns"] == [-2.0, -6.0, -2.0]


# ---------------------------------------------------------------- panda-gym's Reach


@pytest.fixture(scope="module")
def panda():
    pytest.importorskip("panda_gym")
    return config_lib.load(RECIPE)


def test_panda_recipe_world_is_pixels(panda):
    assert panda.vision.latent_dim == 8 and panda.env.frame_size == 64
    world = make_world(panda.env)
    assert world.spec.max_episode_steps == 50
    assert isinstance(world.action_space, gym.spaces.Box) and world.action_space.shape == (3,)
    obs, info = world.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 10  # a picture, not a blank
    assert world.success is False and "is_success" in info
    for _ in range(3):
        obs, reward, *_, info = world.step(world.action_space.sample())
        assert obs.shape == (64, 64, 3) and "is_success" in info and isinstance(world.success, bool)
        assert -2.0 < float(reward) <= 0.0  # dense: minus the distance to the goal
    world.close()


def test_panda_success_flag_on_real_episodes(panda):
    world = make_world(panda.env, max_steps=20)
    # towards the goal (read from the state panda-gym's observation holds): reached, and the episode ends
    _, info = world.reset(seed=1)
    for _ in range(20):
        state = info["state"].item()
        action = np.clip(10 * (state["desired_goal"] - state["achieved_goal"]), -1, 1)
        _, _, terminated, truncated, info = world.step(action)
        if terminated or truncated:
            break
    assert terminated and world.success is True
    # standing still: the goal is not reached, the step cap ends it
    _, info = world.reset(seed=1)
    state = info["state"].item()
    assert np.linalg.norm(state["desired_goal"] - state["achieved_goal"]) > 0.1
    for _ in range(20):
        _, _, terminated, truncated, _ = world.step(np.zeros(3, np.float32))
        if terminated or truncated:
            break
    assert truncated and not terminated and world.success is False
    world.close()


def test_panda_evaluator_returns_success_flags(panda, tiny_run, tmp_path):
    # the tiny run's V sees 16x16 frames: the panda world at that size, beside an untrained M for 3-D actions,
    # a random C, 5-step episodes
    cfg = config_lib.load(RECIPE, ["env.frame_size=16", f"name={RUN_NAME}"])
    run = Run(tiny_run["checkpoints"], cfg)
    saved = checkpoints.load(run.memory, "memory")
    saved["config"] = {**saved["config"], "action_dim": 3}
    saved["state_dict"] = MDNRNN.from_stored(saved["config"]).state_dict()
    checkpoints.save(tmp_path / "memory.pt", saved)
    model = WorldModel.load(run.vision, tmp_path / "memory.pt")
    space = make_world(cfg.env).action_space
    flat = np.random.default_rng(0).normal(0, 0.1, (1, Controller(model.controller_input, space).num_params))
    with real_evaluator(cfg, run.vision, tmp_path / "memory.pt", workers=1, max_steps=5) as evaluator:
        returns = evaluator.returns(flat, [0, 1])
    assert returns.shape == (1, 2) and np.all(returns <= 0)
    assert evaluator.success.shape == (1, 2) and evaluator.success.dtype == bool
