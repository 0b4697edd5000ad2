"""The V-M-C agent: load V and M from a run folder, act in a world, play episodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from . import checkpoints
from .controller import Controller
from .errors import WorldModelsError
from .memory import MDNRNN, MemoryModelConfig
from .rollouts import frames_to_float
from .vision import VisionModel, build_vision
from .worlds.real import encode_actions


def vision_from_checkpoint(saved: dict, device: torch.device | str = "cpu") -> VisionModel:
    """V from a loaded vision checkpoint, in eval mode."""
    model = build_vision(saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()


def load_vision(path: Path, device: torch.device | str = "cpu") -> VisionModel:
    """V from its checkpoint alone."""
    return vision_from_checkpoint(checkpoints.load(path, "vision"), device)


def load_memory(path: Path, device: torch.device | str = "cpu") -> MDNRNN:
    """M from its checkpoint alone."""
    saved = checkpoints.load(path, "memory")
    model = MDNRNN(MemoryModelConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()


@dataclass
class WorldModel:
    """V and M together: what a controller needs to see the world."""

    vision: VisionModel
    memory: MDNRNN

    @classmethod
    def load(cls, vision_path: Path, memory_path: Path, device: torch.device | str = "cpu") -> "WorldModel":
        world_model = cls(load_vision(vision_path, device), load_memory(memory_path, device))
        if world_model.memory.cfg.latent_dim != world_model.vision.latent_dim:
            raise WorldModelsError(
                f"'{memory_path}' expects latents of size {world_model.memory.cfg.latent_dim} "
                f"but '{vision_path}' makes {world_model.vision.latent_dim}; retrain memory"
            )
        memory = world_model.memory
        if memory.categorical and not torch.equal(memory.codebook, world_model.vision.codebook.to(memory.codebook.device)):
            raise WorldModelsError(f"'{memory_path}' dreams with another codebook than '{vision_path}' has (V trained on since); "
                                   "retrain memory")
        return world_model

    @property
    def controller_input(self) -> int:
        return self.vision.latent_dim + self.memory.cfg.hidden_size


@torch.inference_mode()
def play(
    worlds: list[gym.Env],
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
) -> list[tuple[float, int]]:
    """Real episodes in lock-step, episode k in worlds[k] with controller k and seeds[k]: [(return, steps)].

    V, M and C run batched over the episodes still going, which is what makes a worker fast on a CPU.
    `exploration` adds Gaussian noise of that std to C's outputs (seeded by the episode's seed); with a
    `record` list, each episode is appended to it in the episode store's format.
    """
    device = next(model.memory.parameters()).device
    n = len(seeds)
    obs = [world.reset(seed=seed)[0] for world, seed in zip(worlds, seeds)]
    rngs = [np.random.default_rng(seed) for seed in seeds]
    episodes = [{"obs": [o], "action": [], "reward": [], "terminated": [], "truncated": []} for o in obs]
    state = model.memory.initial_state(n, device)
    totals, steps = [0.0] * n, [0] * n
    alive = list(range(n))
    space = worlds[0].action_space
    while alive:
        frames = frames_to_float(torch.from_numpy(np.stack([obs[k] for k in alive])), device)
        z = model.vision.encode(frames).mean  # (B, Z)
        noise = exploration * np.stack([rngs[k].standard_normal(controller.out) for k in alive]) if exploration else None
        actions = controller.act(z.cpu(), MDNRNN.hidden(state).cpu(), rows=alive, noise=noise)
        still = []
        for row, (k, action) in enumerate(zip(alive, actions)):
            obs[k], reward, terminated, truncated, _ = worlds[k].step(action)
            totals[k] += float(reward)
            steps[k] += 1
            if record is not None:
                step = (obs[k], action, reward, terminated, truncated)
                for key, value in zip(("obs", "action", "reward", "terminated", "truncated"), step):
                    episodes[k][key].append(value)
            if not (terminated or truncated):  # step caps are the worlds' own TimeLimit
                still.append(row)
        a = torch.from_numpy(encode_actions(np.asarray(actions), space)).to(device)
        _, state = model.memory.step(z, a, state)
        keep = torch.tensor(still, dtype=torch.long, device=device)
        state = (state[0][:, keep], state[1][:, keep])
        alive = [alive[row] for row in still]
    if record is not None:
        for episode, seed in zip(episodes, seeds):
            record.append({
                "obs": np.stack(episode["obs"]).astype(np.uint8),
                "action": np.asarray(episode["action"]),
                "reward": np.asarray(episode["reward"], dtype=np.float32),
                "terminated": np.asarray(episode["terminated"], dtype=bool),
                "truncated": np.asarray(episode["truncated"], dtype=bool),
                "seed": np.asarray(seed),
            })
    return list(zip(totals, steps))
