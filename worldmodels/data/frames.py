"""V's data: shuffled frames streamed from the episode store."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from worldmodels.core import distributed
from worldmodels.data.episodes import EpisodeStore


class FrameStream(torch.utils.data.IterableDataset):
    """Shuffled uint8 frames streamed from the episode store, `buffer_episodes` episodes in memory at a time.

    Never loads the whole set: a 10,000-episode CarRacing store is ~120 GB as uint8. Under torchrun every
    process streams the same shuffled order and keeps its interleaved share of it (`distributed.interleave`),
    so the processes' batches together are exactly one process's batches.
    """

    def __init__(self, store: EpisodeStore, buffer_episodes: int, seed: int = 0):
        super().__init__()
        self.store, self.buffer_episodes, self.seed = store, buffer_episodes, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        return distributed.interleave(self._frames())

    def _frames(self) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch])
        paths = self.store.listed()
        paths = [paths[i] for i in rng.permutation(len(paths))]
        for start in range(0, len(paths), self.buffer_episodes):
            chunk = [ep["obs"] for _, ep in self.store.iter_episodes(paths[start : start + self.buffer_episodes])]
            # frame k of the chunk is frame offset[k] of episode owner[k]: the episodes are never concatenated,
            # so the buffer's frames are held once, not twice
            lengths = [len(obs) for obs in chunk]
            owner = np.repeat(np.arange(len(chunk)), lengths)
            offset = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            for i in rng.permutation(len(owner)):
                yield torch.from_numpy(chunk[owner[i]][offset[i]])
            del chunk  # before the next chunk loads, not after


def frames_to_float(frames: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] on the device."""
    return frames.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
