"""The real CarRacing world, measured: one env step on each renderer, the fast frames against gymnasium's, and the
real-world search and collection throughput. One JSON line per measurement, all in one run.

    python benchmarks/real_world.py [--recipe envs/carracing.toml] [--candidates 16] [--rollouts 2]

Env steps: one core, Brownian actions (the collection policy's) and, as the issue's first figures, a constant one,
reset at every episode's end, the renderers' chunks interleaved (this machine's speed drifts within minutes):
gymnasium's `CarRacing-v3` as it ships, the same world with env.renderer = "fast" (drawn at the recipe's frame size
and crop), the physics alone (the drawing skipped), and EnvPool's C++ `CarRacing-v3` (one env, one thread) when
installed.
Frames: both renderers side by side on the same seeds and actions, at V's frame size: the mean absolute pixel error,
how many pixels fall in the same colour class (road, grass, red, other), and whether rewards, terminations and car
states are identical. Search: one generation's load of the recipe (random controllers on untrained V and M, whose
throughput does not depend on training) through the search's own evaluator, at 1 and 2 workers, with its bound:
the physics plus V's encoder at the same batch, per frame, measured in as many processes at once. Collection: the
recipe's collection (env frames, start-up included) into a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from worldmodels import config
from worldmodels.controller.linear import Controller
from worldmodels.data.frames import frames_to_float
from worldmodels.memory import MDNRNN
from worldmodels.play import collect as collection
from worldmodels.play.backends import Evaluator, InProcess, LocalPool
from worldmodels.stages.memory import memory_sizes
from worldmodels.vision import build_vision, vision_config
from worldmodels.worlds.carracing import FastFrames
from worldmodels.worlds.real import action_space, make_world

# colour classes of a CarRacing frame: the nearest of these colours names a pixel's class
PALETTE = {
    "road": [(102, 102, 102), (104, 104, 104), (107, 107, 107)],
    "grass": [(102, 204, 102), (102, 230, 102)],
    "red": [(204, 0, 0), (255, 0, 0)],
    "other": [(0, 0, 0), (255, 255, 255), (77, 77, 77)],
}


CONSTANT = np.array([0.0, 0.3, 0.0])  # straight ahead, a little gas


def emit(**fields) -> None:
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", **fields}), flush=True)


def brownian(rng: np.random.Generator, action: np.ndarray) -> np.ndarray:
    """The next action of a Brownian driver in CarRacing's box (steer, gas, brake)."""
    return np.clip(action + rng.normal(0.0, 0.2, 3), [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0])


class Driver:
    """One env under Brownian (or constant) actions, stepped a chunk at a time, its time summed. A gymnasium env is
    reset at each episode's end; an EnvPool env (`batched`: one env in a batch of one) resets by itself."""

    def __init__(self, env, seed: int = 0, batched: bool = False, actions: str = "brownian"):
        self.env, self.batched, self.constant = env, batched, actions == "constant"
        self.rng, self.action = np.random.default_rng(seed), np.zeros(3)
        self.steps, self.seconds = 0, 0.0
        env.reset() if batched else env.reset(seed=seed)

    def drive(self, steps: int) -> None:
        """Step `steps` times; only the steps are timed: a gymnasium env's reset (a new track, ~20 ms) falls outside,
        so every world is timed on steps alone however many episodes its chunks end (EnvPool resets inside its step
        and keeps that cost)."""
        for _ in range(steps):
            self.action = CONSTANT if self.constant else brownian(self.rng, self.action)
            start = time.perf_counter()
            if self.batched:
                self.env.step(self.action[None].astype(np.float32))
                ended = False
            else:
                _, _, terminated, truncated, _ = self.env.step(self.action)
                ended = terminated or truncated
            self.seconds += time.perf_counter() - start
            if ended:
                self.env.reset()
        self.steps += steps


def steps_per_s(drivers: dict[str, tuple[Driver, int]], rounds: int) -> dict[str, float]:
    """Steps/s of each driver, their chunks interleaved round by round so that all of them meet the same load
    (this machine's speed drifts by tens of percent within minutes)."""
    for _ in range(rounds):
        for driver, chunk in drivers.values():
            driver.drive(chunk)
    return {name: driver.steps / driver.seconds for name, (driver, _) in drivers.items()}


def envpool_world():
    """EnvPool's C++ CarRacing-v3: one env on one thread."""
    import envpool

    return envpool.make("CarRacing-v3", env_type="gymnasium", num_envs=1, batch_size=1, num_threads=1, seed=0)


def physics_world() -> gym.Env:
    """CarRacing-v3 whose step skips drawing: what a step costs without any picture."""
    env = gym.make("CarRacing-v3")
    world = env.unwrapped
    world._render = lambda mode: world.__dict__.get("state")  # type: ignore[attr-defined]
    return env


def classes(frames: np.ndarray) -> np.ndarray:
    """Each pixel's colour class (index into PALETTE) by its nearest palette colour."""
    colours = np.array([c for group in PALETTE.values() for c in group], dtype=np.float32)
    owner = np.array([k for k, group in enumerate(PALETTE.values()) for _ in group])
    distance = ((frames[..., None, :].astype(np.float32) - colours) ** 2).sum(-1)
    return owner[distance.argmin(-1)]


def compare_renderers(env_cfg: config.EnvConfig, seeds: list[int], steps: int) -> dict:
    """Both renderers on the same seeds and Brownian actions: pixel error, class agreement, identical dynamics."""
    worlds = {r: make_world(dataclasses.replace(env_cfg, renderer=r)) for r in ("gymnasium", "fast")}
    errors, agree, same = [], [], True
    for seed in seeds:
        obs = {r: w.reset(seed=seed)[0] for r, w in worlds.items()}
        rng, action = np.random.default_rng(seed), np.zeros(3)
        for _ in range(steps):
            errors.append(np.abs(obs["fast"].astype(np.int16) - obs["gymnasium"].astype(np.int16)).mean())
            agree.append((classes(obs["fast"]) == classes(obs["gymnasium"])).mean())
            action = brownian(rng, action)
            out = {r: w.step(action) for r, w in worlds.items()}
            obs = {r: o[0] for r, o in out.items()}
            cars = [w.unwrapped.car.hull for w in worlds.values()]
            same &= out["fast"][1:4] == out["gymnasium"][1:4]
            same &= tuple(cars[0].position) == tuple(cars[1].position) and cars[0].angle == cars[1].angle
            if out["fast"][2] or out["fast"][3]:
                break
    return {
        "frame_mae": round(float(np.mean(errors)), 3),
        "frame_mae_worst_step": round(float(np.max(errors)), 3),
        "class_agreement": round(float(np.mean(agree)), 4),
        "class_agreement_worst_step": round(float(np.min(agree)), 4),
        "identical_rewards_terminations_and_car_states": bool(same),
        "frames_compared": len(errors),
    }


def untrained_models(cfg: config.Config) -> tuple[dict, dict]:
    """V's and M's checkpoint contents, untrained: what the search's workers receive."""
    torch.manual_seed(0)
    vision_cfg = vision_config(cfg)
    vision = build_vision(vision_cfg)
    memory = MDNRNN(cfg.memory, **memory_sizes(cfg, vision))
    return (
        {"kind": "vision", "config": vision_cfg, "state_dict": vision.state_dict()},
        {"kind": "memory", "config": memory.stored_config(), "state_dict": memory.state_dict()},
    )


def search_frames_per_s(cfg: config.Config, models: tuple, workers: int, candidates: int, rollouts_: int) -> float:
    """Env frames/s of the search's own evaluator on one generation's load of random controllers."""
    init_args = (cfg.env, *models, cfg.controller.max_steps or cfg.env.max_steps)
    dim = Controller(cfg.vision.latent_dim + cfg.memory.hidden_size, action_space(cfg.env)).num_params
    flats = np.random.default_rng(0).normal(0, 0.1, (candidates, dim))
    runner = LocalPool(workers, init_args) if workers > 1 else InProcess(init_args)
    with Evaluator(runner, workers) as evaluator:
        evaluator.returns(flats[:workers], [0])  # the workers start, load V and M and make their worlds
        evaluator.steps = 0
        start = time.perf_counter()
        evaluator.returns(flats, list(range(rollouts_)))
        return evaluator.steps / (time.perf_counter() - start)


def encoder_seconds_per_frame(models: tuple, batch: int, frame_size: int) -> float:
    """V's encoder per frame at a batch, one thread."""
    vision = build_vision(models[0]["config"])
    vision.load_state_dict(models[0]["state_dict"])
    frames = torch.randint(0, 256, (batch, frame_size, frame_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        vision.eval().observe(frames_to_float(frames, "cpu"), None)
        start, repeats = time.perf_counter(), 50
        for _ in range(repeats):
            vision.observe(frames_to_float(frames, "cpu"), None)
    return (time.perf_counter() - start) / (repeats * batch)


def bound_parts(models: tuple, batch: int, frame_size: int) -> tuple[float, float]:
    """(physics steps/s, V's encoder seconds per frame) measured in one process on one thread."""
    torch.set_num_threads(1)
    physics = steps_per_s({"physics": (Driver(physics_world()), 1000)}, 5)["physics"]
    return physics, encoder_seconds_per_frame(models, batch, frame_size)


def bound_frames_per_s(models: tuple, batch: int, frame_size: int, repeat: int, workers: int) -> tuple[float, float]:
    """The search's bound with `workers` processes measuring at once (so they share the machine as the search's
    workers do): each plays `repeat` physics steps and one encoder frame per decision. (frames/s, encoder ms)."""
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = pool.starmap(bound_parts, [(models, batch, frame_size)] * workers)
    rate = sum(1.0 / (1.0 / physics + encoder / repeat) for physics, encoder in parts)
    return rate, 1000 * float(np.mean([encoder for _, encoder in parts]))


def collection_frames_per_s(cfg: config.Config, episodes: int, workers: int) -> float:
    """Frames/s of the recipe's collection (Brownian episodes written to disk) into a temporary folder."""
    cfg = dataclasses.replace(cfg, collect=dataclasses.replace(cfg.collect, episodes=episodes, workers=workers))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = collection.collect(cfg, Path(tmp) / "episodes")
        return sum(entry["frames"] for entry in manifest["episodes"]) / (time.perf_counter() - start)


def env_step_line(fast_env: config.EnvConfig, actions: str, rounds: int) -> None:
    """One JSON line: steps/s of gymnasium's CarRacing-v3, the fast renderer, the physics alone and EnvPool, their
    chunks interleaved, under Brownian actions (the collection's) or the constant action the issue's first
    figures used (a little gas, straight ahead)."""
    fast_world = FastFrames(gym.make("CarRacing-v3"), fast_env.frame_size, fast_env.crop)
    drivers = {
        "gymnasium": (Driver(gym.make("CarRacing-v3"), actions=actions), 20),
        "fast": (Driver(fast_world, actions=actions), 300),
        "physics": (Driver(physics_world(), actions=actions), 1000),
    }
    if importlib.util.find_spec("envpool") is not None:
        drivers["envpool"] = (Driver(envpool_world(), actions=actions, batched=True), 100)
    rates = steps_per_s(drivers, rounds)
    gymnasium, fast, physics, envpool = (rates.get(k) for k in ("gymnasium", "fast", "physics", "envpool"))
    assert gymnasium is not None and fast is not None and physics is not None
    emit(
        benchmark="env_step",
        env="CarRacing-v3",
        actions=actions,
        frame_size=fast_env.frame_size,
        crop=fast_env.crop,
        gymnasium_steps_per_s=round(gymnasium, 1),
        fast_steps_per_s=round(fast, 1),
        physics_steps_per_s=round(physics, 1),
        envpool_steps_per_s=None if envpool is None else round(envpool, 1),
        fast_over_gymnasium=round(fast / gymnasium, 2),
        fast_over_envpool=None if envpool is None else round(fast / envpool, 2),
        fast_over_physics=round(fast / physics, 3),
    )


def main() -> None:
    warnings.filterwarnings("ignore")  # gymnasium's checker on the physics-only world's undrawn observations
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="envs/carracing.toml")
    parser.add_argument("--candidates", type=int, default=16, help="controllers in the search's generation")
    parser.add_argument("--rollouts", type=int, default=2, help="episodes per controller")
    parser.add_argument("--seeds", type=int, default=4, help="episodes compared between the renderers")
    parser.add_argument("--compare-steps", type=int, default=300, help="steps compared per episode")
    parser.add_argument("--collect-episodes", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds of the env step measurements")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config.load(args.recipe)
    fast_env = dataclasses.replace(cfg.env, renderer="fast")
    for actions in ("brownian", "constant"):
        env_step_line(fast_env, actions, args.rounds)
    emit(
        benchmark="frames",
        env="CarRacing-v3",
        frame_size=fast_env.frame_size,
        crop=fast_env.crop,
        seeds=list(range(args.seeds)),
        **compare_renderers(cfg.env, list(range(args.seeds)), args.compare_steps),
    )
    cfg = dataclasses.replace(cfg, env=fast_env)
    models = untrained_models(cfg)
    batch = min(16, args.candidates * args.rollouts)  # the pool's lock-step batch of episodes
    for workers in (1, 2):
        bound, encoder_ms = bound_frames_per_s(models, batch, cfg.env.frame_size, cfg.env.action_repeat, workers)
        rate = search_frames_per_s(cfg, models, workers, args.candidates, args.rollouts)
        emit(
            benchmark="real_world_search",
            env="CarRacing-v3",
            renderer="fast",
            action_repeat=cfg.env.action_repeat,
            episodes=args.candidates * args.rollouts,
            batch=batch,
            workers=workers,
            search_frames_per_s=round(rate, 1),
            bound_frames_per_s=round(bound, 1),
            fraction_of_bound=round(rate / bound, 3),
            encoder_ms_per_frame=round(encoder_ms, 3),
        )
    for workers in (1, 2):
        rate = collection_frames_per_s(cfg, args.collect_episodes, workers)
        emit(
            benchmark="collection",
            env="CarRacing-v3",
            renderer="fast",
            episodes=args.collect_episodes,
            workers=workers,
            collection_frames_per_s=round(rate, 1),
        )


if __name__ == "__main__":
    main()
