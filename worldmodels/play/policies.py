"""Outside policies (a `module:callable`, an SB3 zip) played in the real world through a run's V and M."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from worldmodels.agent import WorldModel
from worldmodels.config import Config
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import bar
from worldmodels.play.evaluators import returns_report
from worldmodels.runs import checkpoints
from worldmodels.worlds.latent import LatentObservation
from worldmodels.worlds.loop import PolicyActor, WorldList, run_episodes
from worldmodels.worlds.real import make_world

SB3_ALGORITHMS = ("A2C", "DDPG", "DQN", "PPO", "SAC", "TD3")


def load_policy(spec: str, algo: str | None = None) -> Callable[[np.ndarray], Any]:
    """obs [z, h] -> action: an SB3 zip (with its algorithm) or a `module:callable` taking one observation."""
    if spec.endswith(".zip"):
        if algo is None or algo.upper() not in SB3_ALGORITHMS:
            raise WorldModelsError(
                f"--policy {spec} is a Stable-Baselines3 zip: name its algorithm with --algo "
                f"({', '.join(a.lower() for a in SB3_ALGORITHMS)})"
            )
        if not Path(spec).is_file():
            raise WorldModelsError(f"policy '{spec}' not found")
        try:
            sb3 = importlib.import_module("stable_baselines3")
        except ImportError:
            raise WorldModelsError("an SB3 policy needs stable-baselines3: pip install stable-baselines3") from None
        try:  # SB3 zips hold pickled parts: load only policies you trust, as with any SB3 file
            model = getattr(sb3, algo.upper()).load(spec, device="cpu")
        except Exception as exc:  # noqa: BLE001 - a zip of another algorithm or version fails in many ways
            raise WorldModelsError(f"'{spec}' is not a {algo.upper()} policy ({type(exc).__name__}: {exc})") from None
        return lambda obs: model.predict(obs, deterministic=True)[0]
    module, _, name = spec.partition(":")
    if not module or not name:
        raise WorldModelsError(f"--policy '{spec}' must be an SB3 zip (with --algo) or module:callable")
    try:
        policy: Any = importlib.import_module(module)
        for part in name.split("."):
            policy = getattr(policy, part)
    except (ImportError, AttributeError) as exc:
        raise WorldModelsError(f"--policy '{spec}' cannot be loaded ({exc})") from None
    if not callable(policy):
        raise WorldModelsError(f"--policy '{spec}' is not callable")
    return policy


def evaluate_policy(cfg: Config, run: checkpoints.Run, spec: str, algo: str | None = None) -> dict:
    """The recipe's evaluation episodes played by an outside policy on [z, h]; written to report_policy.json."""
    policy = load_policy(spec, algo)
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"))
    env = LatentObservation(make_world(cfg.env), model)
    seeds = [cfg.evaluate.seed + i for i in range(cfg.evaluate.episodes)]
    returns = [
        run_episodes(WorldList([env]), PolicyActor(policy), [seed])[0].ret
        for seed in bar(seeds, desc="evaluate (policy)", unit="ep")
    ]
    env.close()
    report = {"world": "real", "env": cfg.env.id, "policy": spec, **returns_report(np.asarray(returns), seeds, None)}
    checkpoints.save_json(run.dir / "report_policy.json", report)
    return report
