"""Seeing the dream: a controller's dream episode as a GIF, and side by side with the same controller
in the real world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from worldmodels.agent import WorldModel, load_ensemble
from worldmodels.config import Config
from worldmodels.controller.linear import Controller
from worldmodels.data.frames import frames_to_float
from worldmodels.data.latents import load_latents, start_latents
from worldmodels.play.loops import play
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run, load_controller
from worldmodels.worlds.dream import Dream, dream_rollout, filmstrip
from worldmodels.worlds.real import make_world


def save_gif(path: Path, frames: np.ndarray, scale: int = 2, fps: int = 25) -> None:
    """(T, H, W, 3) uint8 frames as a looping GIF, enlarged `scale` times, written atomically."""
    images = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.Resampling.NEAREST) for f in frames
    ]
    checkpoints.atomic_write(
        path,
        lambda f: images[0].save(
            f, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        ),
    )


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 2) -> np.ndarray:
    """Two frame sequences next to each other; the shorter one holds its last frame."""
    n = max(len(left), len(right))
    left = np.concatenate([left, np.repeat(left[-1:], n - len(left), 0)])
    right = np.concatenate([right, np.repeat(right[-1:], n - len(right), 0)])
    white = np.full((n, left.shape[1], gap, 3), 255, np.uint8)
    return np.concatenate([left, white, right], axis=2)


def dream_gifs(cfg: Config, run: Run, seed: int = 0, scale: int = 2) -> dict:
    """The kept controller in the dream and in the real world from the same first frame: two GIFs."""
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"))
    flat = load_controller(run.require(run.controller, "train-controller"), model)["params"].numpy()
    world = make_world(cfg.env)
    controller = Controller.from_flat(flat, model.controller_input, world.action_space)
    real: list[dict] = []
    [(real_return, _)] = play([world], model, controller, [seed], cfg.controller.noise, record=real)
    world.close()
    real_frames = real[0]["obs"]
    dream = Dream(model.memory, cfg.dream, start_latents(load_latents(run)), model.vision, load_ensemble(run))
    with torch.no_grad():  # the dream starts where the real episode starts: V's reading of its first frame
        start = model.vision.encode(frames_to_float(torch.from_numpy(real_frames[:1]), "cpu")).mean[0]
    dream_frames, dream_return = dream_rollout(dream, controller, seed, start, cfg.controller.noise)
    out = run.dir / "dream"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"dream": out / f"dream_seed{seed}.gif", "dream_vs_real": out / f"dream_vs_real_seed{seed}.gif"}
    both = side_by_side(dream_frames, real_frames)
    save_gif(paths["dream"], dream_frames, scale)
    save_gif(paths["dream_vs_real"], both, scale)
    writer = SummaryWriter(run.tensorboard)
    writer.add_image("dream/dream_vs_real", filmstrip(both, axis=0), seed, dataformats="HWC")
    writer.close()
    return {
        "gifs": {k: str(v) for k, v in paths.items()},
        "dream_return": dream_return,
        "real_return": real_return,
        "dream_steps": len(dream_frames) - 1,
        "real_steps": len(real_frames) - 1,
        "tau": cfg.dream.tau,
    }
