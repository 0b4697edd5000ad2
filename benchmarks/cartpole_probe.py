"""What a CartPole run's [z, h, c] says about the true state: held-out R^2 of the cart's position and velocity and the
pole's angle and angular velocity, read linearly (as C reads them) and by a small MLP. One JSON line.

    python benchmarks/cartpole_probe.py checkpoints/cartpole [--recipe envs/cartpole.toml] [--episodes 40]

The episodes are played by a noisy hand-written balancer on the true state, so they reach the states a good
controller visits, beyond what a random policy shows. A low linear R^2 with a high MLP R^2 means V's z holds the
variable but a linear C cannot read it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

from worldmodels import config
from worldmodels.agent import WorldModel
from worldmodels.worlds.real import make_world

STATE = ("x", "x_dot", "theta", "theta_dot")


@torch.no_grad()
def features_and_states(run: Path, recipe: str, episodes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """[z, h, c] and CartPole's true state at every step of `episodes` balancer episodes; and z's size."""
    cfg = config.load(recipe)
    model = WorldModel.load(run / "vision.pt", run / "memory.pt")
    env = make_world(cfg.env)
    rng = np.random.default_rng(0)
    features, states = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        memory_state, history = model.memory.initial_state(1, "cpu"), None
        for _ in range(200):
            z, history = model.see(obs[None], history)
            s = np.array(env.unwrapped.state)
            action = int(s[2] + 0.5 * s[3] + 0.05 * s[0] + 0.1 * s[1] + rng.normal(0, 0.3) > 0)
            h, c = memory_state[0][0, 0].numpy(), memory_state[1][0, 0].numpy()
            features.append(np.concatenate([z[0].numpy(), h, c]))
            states.append(s)
            memory_state = model.remember(z, [action], env.action_space, memory_state)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    return np.array(features), np.array(states), model.memory.latent_dim


def r2(prediction: np.ndarray, target: np.ndarray) -> float:
    return round(float(1 - ((prediction - target) ** 2).sum() / ((target - target.mean()) ** 2).sum()), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a CartPole run folder (vision.pt, memory.pt)")
    p.add_argument("--recipe", default="envs/cartpole.toml")
    p.add_argument("--episodes", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    x, y, z_dim = features_and_states(args.run, args.recipe, args.episodes)
    order = np.random.default_rng(1).permutation(len(x))
    train, test = order[: len(x) * 4 // 5], order[len(x) * 4 // 5 :]
    result: dict = {"run": str(args.run), "steps": len(x)}
    h_dim = (x.shape[1] - z_dim) // 2
    parts = {
        "z": slice(0, z_dim),
        "h": slice(z_dim, z_dim + h_dim),
        "z_h": slice(0, z_dim + h_dim),
        "z_h_c": slice(None),
    }
    for name, cols in parts.items():  # z_h_c: what C reads with memory.cell_to_controller
        fits = [Ridge(1e-2).fit(x[train, cols], y[train, k]) for k in range(4)]
        result[f"linear_r2_from_{name}"] = {
            s: r2(f.predict(x[test, cols]), y[test, k]) for k, (s, f) in enumerate(zip(STATE, fits))
        }
    scale = StandardScaler().fit(x[train, :z_dim])
    mlp = {}
    for k in (0, 2):  # the position and the angle: what a controller must hold in view
        net = MLPRegressor(hidden_layer_sizes=(128, 128), max_iter=300, random_state=0)
        net.fit(scale.transform(x[train, :z_dim]), y[train, k] / y[:, k].std())
        mlp[STATE[k]] = r2(net.predict(scale.transform(x[test, :z_dim])) * y[:, k].std(), y[test, k])
    result["mlp_r2_from_z"] = mlp
    print(json.dumps(result))


if __name__ == "__main__":
    main()
