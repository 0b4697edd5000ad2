"""The V-M-C agent: load V and M from a run folder, act in a world, play episodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import SupportsFloat, cast

import gymnasium as gym
import numpy as np
import torch

from . import checkpoints
from .controller import Controller
from .errors import WorldModelsError
from .memory import MDNRNN, MemoryModelConfig
from .rollouts import frames_to_float
from .vision import VQVAE, VisionModel, build_vision
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
    return memory_from_checkpoint(checkpoints.load(path, "memory"), device)


def memory_from_checkpoint(saved: dict, device: torch.device | str = "cpu") -> MDNRNN:
    """M from a loaded memory checkpoint, in eval mode."""
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
        saved = checkpoints.load(vision_path, "vision"), checkpoints.load(memory_path, "memory")
        return cls.from_checkpoints(*saved, device, names=(vision_path, memory_path))

    @classmethod
    def from_checkpoints(
        cls,
        vision: dict,
        memory: dict,
        device: torch.device | str = "cpu",
        names: tuple = ("V's checkpoint", "M's checkpoint"),
    ) -> "WorldModel":
        """V and M from their loaded checkpoints (what remote workers receive), checked against each other."""
        vision_path, memory_path = names
        world_model = cls(vision_from_checkpoint(vision, device), memory_from_checkpoint(memory, device))
        if world_model.memory.cfg.latent_dim != world_model.vision.latent_dim:
            raise WorldModelsError(
                f"'{memory_path}' expects latents of size {world_model.memory.cfg.latent_dim} "
                f"but '{vision_path}' makes {world_model.vision.latent_dim}; retrain memory"
            )
        memory_model = world_model.memory
        if memory_model.categorical and not torch.equal(  # a categorical M goes with a discrete V: a VQ-VAE
            memory_model.codebook, cast(VQVAE, world_model.vision).codebook.to(memory_model.codebook.device)
        ):
            raise WorldModelsError(
                f"'{memory_path}' dreams with another codebook than '{vision_path}' has (V trained on since); "
                "retrain memory"
            )
        return world_model

    @property
    def controller_input(self) -> int:
        return self.vision.latent_dim + self.memory.cfg.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.memory.parameters()).device

    def see(self, frames: np.ndarray, history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 frames (B, H, W, 3) -> (z (B, Z), V's posterior mean: what C and M read; what V keeps for the next
        frames, None for a V that reads one frame). `history` is the last call's, a row of NaN for a new episode."""
        latent, history = self.vision.observe(frames_to_float(torch.from_numpy(frames), self.device), history)
        return latent.mean, history

    def remember(self, z: torch.Tensor, actions: list, space: gym.Space, state: tuple) -> tuple:
        """M's next state after seeing z and taking `actions` (one per row)."""
        a = torch.from_numpy(encode_actions(np.asarray(actions), space)).to(self.device)
        return self.memory.step(z, a, state)[1]


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
        }


@torch.inference_mode()
def play(
    worlds: list[gym.Env],
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
) -> list[tuple[float, int]]:
    """Real episodes in lock-step, episode k in worlds[k] with controller k and seeds[k]: [(return, frames)].

    Frames are the world's steps: more than C's decisions under an action repeat.
    V, M and C run batched over the episodes still going, which is what makes a worker fast on a CPU.
    `exploration` adds Gaussian noise of that std to C's outputs (seeded by the episode's seed); with a
    `record` list, each episode is appended to it in the episode store's format.
    """
    n = len(seeds)
    obs = [world.reset(seed=seed)[0] for world, seed in zip(worlds, seeds)]
    rngs = [np.random.default_rng(seed) for seed in seeds]
    episodes = [EpisodeRecord(o, seed) for o, seed in zip(obs, seeds)] if record is not None else None
    state = model.memory.initial_state(n, model.device)
    totals, steps = [0.0] * n, [0] * n
    alive = list(range(n))
    space = worlds[0].action_space
    history = None
    while alive:
        z, history = model.see(np.stack([obs[k] for k in alive]), history)  # (B, Z)
        noise = (
            exploration * np.stack([rngs[k].standard_normal(controller.out) for k in alive]) if exploration else None
        )
        actions = controller.act(z.cpu(), MDNRNN.hidden(state).cpu(), rows=alive, noise=noise)
        still = []
        for row, (k, action) in enumerate(zip(alive, actions)):
            obs[k], reward, terminated, truncated, info = worlds[k].step(action)
            totals[k] += float(reward)
            steps[k] += info.get("frames", 1)
            if episodes:
                episodes[k].add(obs[k], action, reward, terminated, truncated, info.get("frames", 1))
            if not (terminated or truncated):  # step caps are the worlds' own TimeLimit
                still.append(row)
        state = model.remember(z, actions, space, state)
        keep = torch.tensor(still, dtype=torch.long, device=model.device)
        state = (state[0][:, keep], state[1][:, keep])
        history = None if history is None else history[keep]
        alive = [alive[row] for row in still]
    if record is not None:
        assert episodes is not None
        record.extend(episode.arrays() for episode in episodes)
    return list(zip(totals, steps))


def _exploration_noise(
    playing: list[int], rngs: dict[int, np.random.Generator], exploration: float, size: int
) -> np.ndarray | None:
    """Each copy's exploration noise from its episode's generator (zeros for an idle copy); None without exploration."""
    if not exploration:
        return None
    return np.stack([exploration * rngs[k].standard_normal(size) if k >= 0 else np.zeros(size) for k in playing])


def _tally_step(
    playing: list[int],
    obs: np.ndarray,
    actions: list,
    outcome: tuple[np.ndarray, np.ndarray, np.ndarray, dict],
    totals: list[float],
    steps: list[int],
    success: list[bool | None],
    episodes: dict[int, EpisodeRecord] | None,
) -> None:
    """Add one vector step to the returns, frame counts, successes (and records) of the episodes being played."""
    reward, terminated, truncated, info = outcome
    for i, k in enumerate(playing):
        if k < 0:
            continue
        frames = int(info["frames"][i]) if "frames" in info else 1
        totals[k] += float(reward[i])
        steps[k] += frames
        if episodes is not None:
            episodes[k].add(obs[i].copy(), actions[i], reward[i], terminated[i], truncated[i], frames)
        if "is_success" in info and info["_is_success"][i]:
            success[k] = bool(info["is_success"][i])


@torch.inference_mode()
def play_vector(
    envs: gym.vector.VectorEnv,
    model: WorldModel,
    controller: Controller,
    seeds: list[int],
    exploration: float = 0.0,
    record: list[dict] | None = None,
) -> list[tuple[float, int, bool | None]]:
    """Real episodes on the copies of a vector env (autoreset off): episode k with controller k and seeds[k].

    Every step runs V, M and C once, batched across the copies; a copy that finishes an episode is reset
    with the next episode's seed. Returns [(return, frames, the last step's is_success or None)]; `exploration`
    and `record` as in `play`.
    """
    copies, space = envs.num_envs, envs.single_action_space
    queue = list(range(len(seeds)))[::-1]  # episodes not started yet, next last
    playing = [-1] * copies  # the episode each copy plays; -1: idle, stepped only because a vector env steps all
    assert envs.single_observation_space.shape is not None
    obs = np.zeros((copies, *envs.single_observation_space.shape), dtype=np.uint8)
    state = model.memory.initial_state(copies, model.device)
    rngs: dict[int, np.random.Generator] = {}
    episodes: dict[int, EpisodeRecord] = {}
    totals, steps = [0.0] * len(seeds), [0] * len(seeds)
    success: list[bool | None] = [None] * len(seeds)
    history: torch.Tensor | None = None  # V's memory of past frames, for a V that reads several

    def start(mask: np.ndarray) -> None:
        """Reset the copies in `mask`, each with the next episode's seed (idle once none is left)."""
        if history is not None:
            history[torch.from_numpy(mask).to(history.device)] = float("nan")  # these copies' next frame starts anew
        for i in np.flatnonzero(mask):
            playing[i] = queue.pop() if queue else -1
        seed = [seeds[playing[i]] if mask[i] and playing[i] >= 0 else None for i in range(copies)]
        # gymnasium's vector envs take one seed per copy; VectorEnv.reset's annotation says a single int
        fresh, _ = envs.reset(seed=seed, options={"reset_mask": mask})  # type: ignore[arg-type]
        obs[mask] = fresh[mask]
        for i in np.flatnonzero(mask):
            state[0][:, i] = state[1][:, i] = 0  # M starts each episode from its initial (zero) state
            if (k := playing[i]) >= 0:
                rngs[k] = np.random.default_rng(seeds[k])
                if record is not None:
                    episodes[k] = EpisodeRecord(obs[i].copy(), seeds[k])

    start(np.ones(copies, dtype=bool))
    while any(k >= 0 for k in playing):
        z, history = model.see(obs, history)
        rows = [max(k, 0) for k in playing]  # idle copies act with any controller; their steps are dropped
        noise = _exploration_noise(playing, rngs, exploration, controller.out)
        actions = controller.act(z.cpu(), MDNRNN.hidden(state).cpu(), rows=rows, noise=noise)
        obs[:], reward, terminated, truncated, info = envs.step(np.asarray(actions))
        state = model.remember(z, actions, space, state)
        recording = episodes if record is not None else None
        _tally_step(playing, obs, actions, (reward, terminated, truncated, info), totals, steps, success, recording)
        done = terminated | truncated
        if done.any():
            start(done)
    if record is not None:
        record.extend(episodes[k].arrays() for k in range(len(seeds)))
    return list(zip(totals, steps, success))
