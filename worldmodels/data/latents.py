"""M's data: encoded episodes, their files checked when read, sequences for training and dream starts."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.core.errors import WorldModelsError
from worldmodels.data.episodes import CorruptEpisode
from worldmodels.runs.checkpoints import Run, check_fingerprint, load


@dataclass
class LatentEpisode:
    """One encoded episode: latent mean and log-std per frame (codes for a discrete V), actions, rewards, dones."""

    mu: np.ndarray  # (T+1, Z)
    logstd: np.ndarray  # (T+1, Z); zeros for a discrete V, unused: its M trains on codes, sample_latents off
    action: np.ndarray  # (T, A) float
    reward: np.ndarray  # (T,)
    done: np.ndarray  # (T,) terminated (not truncated)
    codes: np.ndarray | None = None  # (T+1, P) integers, discrete V
    name: str = ""  # the episode's file name


class SequenceDataset(torch.utils.data.Dataset):
    """Fixed-length windows over encoded episodes for M, padded with a mask.

    With `random_starts`, each window starts at a random step of its episode, a function of (seed, epoch,
    window): M then cannot learn "episodes end about t steps after my state was reset", a shortcut
    random-policy data invites and a dream-trained controller cannot beat.
    """

    def __init__(self, episodes: list[LatentEpisode], seq_len: int, random_starts: bool = False, seed: int = 0):
        self.episodes, self.seq_len, self.random_starts, self.seed = episodes, seq_len, random_starts, seed
        self.index = [(e, s) for e, ep in enumerate(episodes) for s in range(0, len(ep.action), seq_len)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, s = self.index[i]
        ep, L = self.episodes[e], self.seq_len
        if self.random_starts:
            s = int(np.random.default_rng([self.seed, self.epoch, i]).integers(len(ep.action)))
        n = min(L, len(ep.action) - s)

        def window(x: np.ndarray, offset: int = 0) -> torch.Tensor:
            out = np.zeros((L, *x.shape[1:]), dtype=np.float32)
            out[:n] = x[s + offset : s + offset + n]
            return torch.from_numpy(out)

        mask = torch.zeros(L)
        mask[:n] = 1
        codes = {}
        if ep.codes is not None:
            codes = {"codes": window(ep.codes).long(), "next_codes": window(ep.codes, 1).long()}
        return codes | {
            "mu": window(ep.mu),
            "logstd": window(ep.logstd),
            "next_mu": window(ep.mu, 1),
            "next_logstd": window(ep.logstd, 1),
            "action": window(ep.action),
            "reward": window(ep.reward),
            "done": window(ep.done.astype(np.float32)),
            "mask": mask,
        }


def read_latent(path: Path, width: int | None = None, vision_id: str | None = None) -> LatentEpisode:
    """One encoded episode; CorruptEpisode if it cannot be read, its arrays disagree or hold non-finite numbers, or
    (when given) its latents are not `width` wide or were made by another V than `vision_id`."""
    try:
        with np.load(path) as d:
            mu = d["mu"].astype(np.float32)
            logstd = d["logstd"].astype(np.float32) if "logstd" in d else np.zeros_like(mu)
            codes = d["codes"].astype(np.int64) if "codes" in d else None
            episode = LatentEpisode(mu, logstd, d["action"], d["reward"], d["done"], codes, path.name)
            made_by = str(d["vision_id"]) if "vision_id" in d else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise CorruptEpisode(f"{path.name}: {type(exc).__name__}") from None
    steps = len(episode.action)
    if mu.ndim != 2 or len(mu) != steps + 1 or len(episode.reward) != steps or len(episode.done) != steps:
        raise CorruptEpisode(f"{path.name}: array lengths disagree")
    if width is not None and mu.shape[1] != width:
        raise CorruptEpisode(f"{path.name}: latents {mu.shape[1]} wide, but V's are {width}")
    if vision_id is not None and made_by not in (None, vision_id):
        raise CorruptEpisode(f"{path.name}: encoded by another V")
    numbers = (mu, logstd, episode.action, episode.reward)
    if any(a.dtype.kind not in "fiub" or not np.isfinite(a).all() for a in numbers):
        raise CorruptEpisode(f"{path.name}: latents, actions or rewards that are not finite numbers")
    return episode


def load_latents(run: Run) -> list[LatentEpisode]:
    """Every encoded episode of the run, checked to be of this recipe's world and of the run's V."""
    manifest_path = run.require(run.latents / "manifest.json", "encode")
    try:
        manifest = json.loads(manifest_path.read_text())
        names = manifest["episodes"]
        if not all(isinstance(n, str) and "/" not in n for n in names):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise WorldModelsError(f"'{manifest_path}' is damaged; `worldmodels encode` rebuilds it") from None
    check_fingerprint(manifest_path, manifest, run.cfg)
    vision_id = manifest.get("vision_id")
    if run.vision.is_file() and vision_id != load(run.vision, "vision").get("id", vision_id):
        raise WorldModelsError(f"the latents in '{run.latents}' were encoded by an earlier V; run `worldmodels encode`")
    episodes = []
    for name in names:
        try:
            episodes.append(read_latent(run.latents / name, manifest.get("latent_dim"), vision_id))
        except CorruptEpisode as exc:
            raise WorldModelsError(f"latent file {exc}; `worldmodels encode` encodes it again") from None
    if not episodes:
        raise WorldModelsError(f"no encoded episodes in '{run.latents}'")
    return episodes


def dream_starts(run: Run, start: str) -> torch.Tensor | None:
    """The run's encoded frames its dreams start from (`dream.start`); None for V's prior."""
    return None if start == "prior" else start_latents(load_latents(run), start)


def start_latents(episodes: list[LatentEpisode], start: str = "data") -> torch.Tensor:
    """Where dreams start, (N, 2, Z) latent means and log-stds: every episode's first frame ("data") or every
    frame of every episode ("along")."""
    if start == "along":  # M trains on windows from random steps with a fresh LSTM state: such a start is in its data
        return torch.from_numpy(np.concatenate([np.stack([e.mu, e.logstd], axis=1) for e in episodes]))
    return torch.from_numpy(np.stack([np.stack([e.mu[0], e.logstd[0]]) for e in episodes]))
