"""The V-M-C agent: load V and M from a run folder, act in a world, play episodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import gymnasium as gym
import numpy as np
import torch

from worldmodels.core.actions import encode_actions
from worldmodels.core.errors import WorldModelsError
from worldmodels.data.frames import frames_to_float
from worldmodels.data.latents import LatentEpisode
from worldmodels.memory import MDNRNN
from worldmodels.runs import checkpoints
from worldmodels.vision import VQVAE, VisionModel, build_vision


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


def load_ensemble(run: checkpoints.Run, device: torch.device | str = "cpu") -> list[MDNRNN]:
    """The other M's of memory.ensemble when the recipe's dream charges for their disagreement (dream.disagreement)."""
    cfg = run.cfg
    if not cfg.dream.disagreement:
        return []
    return [load_memory(run.require(run.member(k), "train-memory"), device) for k in range(1, cfg.memory.ensemble)]


def memory_from_checkpoint(saved: dict, device: torch.device | str = "cpu") -> MDNRNN:
    """M from a loaded memory checkpoint, in eval mode."""
    model = MDNRNN.from_stored(saved["config"])
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
        if world_model.memory.latent_dim != world_model.vision.latent_dim:
            raise WorldModelsError(
                f"'{memory_path}' expects latents of size {world_model.memory.latent_dim} "
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
        return self.vision.latent_dim + self.memory.readout_size

    @property
    def device(self) -> torch.device:
        return next(self.memory.parameters()).device

    @torch.no_grad()
    def controller_inputs(self, episodes: list[LatentEpisode]) -> np.ndarray:
        """What C saw at every step of encoded episodes, [z_t, h_t], with h through M on the episode's own latents
        and actions (h_0 = 0): (steps, Z + H)."""
        rows = []
        for episode in episodes:
            z = torch.from_numpy(episode.mu[:-1]).float().to(self.device)
            a = torch.from_numpy(np.asarray(episode.action, dtype=np.float32)).reshape(len(z), -1).to(self.device)
            if self.memory.cfg.cell_to_controller:  # nn.LSTM returns only the last c: step the cell
                state, reads = self.memory.initial_state(1, self.device), []
                for t in range(len(z)):
                    reads.append(self.memory.readout(state))
                    state = self.memory.step(z[t : t + 1], a[t : t + 1], state)[1]
                read = torch.cat(reads)
            else:
                out, _ = self.memory.lstm(torch.cat([z, a], dim=-1)[None])
                read = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)[0]
            rows.append(torch.cat([z, read], dim=-1).cpu().numpy())
        return np.concatenate(rows)

    def see(self, frames: np.ndarray, history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 frames (B, H, W, 3) -> (z (B, Z), V's posterior mean: what C and M read; what V keeps for the next
        frames, None for a V that reads one frame). `history` is the last call's, a row of NaN for a new episode."""
        latent, history = self.vision.observe(frames_to_float(torch.from_numpy(frames), self.device), history)
        return latent.mean, history

    def remember(self, z: torch.Tensor, actions: list, space: gym.Space, state: tuple) -> tuple:
        """M's next state after seeing z and taking `actions` (one per row)."""
        a = torch.from_numpy(encode_actions(np.asarray(actions), space)).to(self.device)
        return self.memory.step(z, a, state)[1]
