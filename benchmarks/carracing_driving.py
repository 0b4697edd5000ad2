"""How a run's controller drives CarRacing, and where M's reward lies about it. One JSON line.

    python benchmarks/carracing_driving.py checkpoints/carracing_dream [--episodes 10] [--first-seed 10000]

Plays the run's kept controller, noise-free (or with `--exploration`, the noise the rounds collect with), in the
real CarRacing-v3 (the recipe's action repeat and bounds) and records per episode: tiles reached, mean speed,
decisions off the road, decisions driven backwards along the track (a moving car whose velocity points against the
track's direction), and M's reward summed over the episode when M is fed the real latents and actions (teacher-
forced) against the real return, split by driving forwards and backwards.

CarRacing pays only for tiles not yet visited, which no single frame shows: a car that turns round and drives back
over its own tiles sees a road like any other, gets -0.1 a frame, and an M that cannot tell goes on paying it.
The split shows whether that is what the controller learnt to exploit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from worldmodels.controller.linear import Controller
from worldmodels.core.actions import encode_actions
from worldmodels.runs import checkpoints
from worldmodels.worlds.latent import latent_env


def backwards(car_racing) -> bool:
    """The car moves (speed > 3) with its velocity more than ~107 degrees off the nearest tile's direction."""
    position = np.array(car_racing.car.hull.position)
    velocity = np.array(car_racing.car.hull.linearVelocity)
    track = np.array([(t[2], t[3]) for t in car_racing.track])
    i = int(np.argmin(((track - position) ** 2).sum(1)))
    direction = track[(i + 1) % len(track)] - track[i]
    speed = np.linalg.norm(velocity)
    return bool(speed > 3 and velocity @ direction < -0.3 * speed * np.linalg.norm(direction))


def drive(env, controller: Controller, seed: int, exploration: float = 0.0) -> dict:
    """One real episode (noise-free, or with the rounds' exploration noise): what the car did, and M's
    teacher-forced reward beside the real one."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    car_racing, latent = env.unwrapped, env.model.vision.latent_dim
    zs, actions, rewards, speeds, off_road, back = [env.z[0].clone()], [], [], [], [], []
    done = False
    while not done:
        x = torch.as_tensor(obs)[None]
        noise = exploration * rng.standard_normal((1, controller.out)) if exploration else None
        action = controller.act(x[:, :latent], x[:, latent:], noise=noise)[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
        zs.append(env.z[0].clone())
        actions.append(action)
        rewards.append(float(reward))
        speeds.append(float(np.linalg.norm(car_racing.car.hull.linearVelocity)))
        off_road.append(all(len(wheel.tiles) == 0 for wheel in car_racing.car.wheels))
        back.append(backwards(car_racing))
    z = torch.stack(zs)[None]
    a = torch.from_numpy(encode_actions(np.array(actions), env.action_space)).float()[None]
    with torch.inference_mode():
        prediction, _ = env.model.memory(z[:, :-1], a, None, next_z=z[:, 1:])
    predicted = prediction.reward[0].cpu().numpy()
    real, back_mask, off_mask = np.array(rewards), np.array(back), np.array(off_road)
    return {
        "seed": seed,
        "return": float(real.sum()),
        "decisions": len(real),
        "tiles": int(car_racing.tile_visited_count),
        "track_tiles": len(car_racing.track),
        "mean_speed": float(np.mean(speeds)),
        "off_road": int(off_mask.sum()),
        "backwards": int(back_mask.sum()),
        "m_return": float(predicted.sum()),
        "forwards_real": float(real[~back_mask].sum()),
        "forwards_m": float(predicted[~back_mask].sum()),
        "backwards_real": float(real[back_mask].sum()),
        "backwards_m": float(predicted[back_mask].sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a CarRacing run folder with V, M and a controller")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=10000, help="the evaluation's seeds start here")
    parser.add_argument("--exploration", type=float, default=0.0, help="noise on C's outputs, as the rounds collect")
    args = parser.parse_args()
    env = latent_env(args.run)
    if not str(env.unwrapped.spec.id if env.unwrapped.spec else "").startswith("CarRacing"):
        raise SystemExit(f"'{args.run}' is not a CarRacing run")
    saved = checkpoints.load(args.run / "controller.pt", "controller")
    controller = Controller.from_flat(saved["params"].numpy(), saved["config"]["input_dim"], env.action_space)
    episodes = [drive(env, controller, args.first_seed + k, args.exploration) for k in range(args.episodes)]
    total = {key: float(np.mean([e[key] for e in episodes])) for key in episodes[0] if key != "seed"}
    print(
        json.dumps(
            {
                "benchmark": "carracing_driving",
                "run": str(args.run),
                "generation": saved.get("generation"),
                "exploration": args.exploration,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "mean": total,
                "episodes": episodes,
            }
        )
    )


if __name__ == "__main__":
    main()
