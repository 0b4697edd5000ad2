"""Episodes on disk: one compressed .npz each, their layout checked when read, and the store that lists them."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gymnasium as gym
import numpy as np

from worldmodels.config import Config
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import say
from worldmodels.runs.checkpoints import atomic_write, check_fingerprint, read_json, save_json

EPISODE_KEYS = ("obs", "action", "reward", "terminated", "truncated", "seed")


def episode_name(index: int) -> str:
    return f"ep_{index:06d}.npz"


def save_episode(path: Path, episode: dict) -> None:
    """Write one episode as a compressed .npz, atomically."""

    def write(f):
        buffer = io.BytesIO()  # np.savez_compressed needs a seekable target; keep the rename atomic
        np.savez_compressed(buffer, **episode)
        f.write(buffer.getvalue())

    atomic_write(path, write)


class CorruptEpisode(Exception):
    """An episode file that cannot be read or whose arrays disagree."""


@dataclass(frozen=True)
class EpisodeLayout:
    """What a recipe's episodes hold, checked whenever one is read: frames of its size, actions of its world."""

    frame_size: int
    space: gym.Space

    def check_headers(self, name: str, arrays: dict[str, tuple[tuple, np.dtype]]) -> None:
        """Frame size and action shape, from the arrays' headers."""
        size = tuple(arrays["obs"][0][1:3])
        if size != (self.frame_size, self.frame_size):
            raise CorruptEpisode(f"{name}: frames of {size[0]}x{size[1]}, but env.frame_size is {self.frame_size}")
        shape = tuple(arrays["action"][0][1:])
        if shape != self.space.shape:
            raise CorruptEpisode(f"{name}: actions of shape {shape}, but the world's are {self.space.shape}")

    def check_values(self, name: str, episode: dict) -> None:
        """Actions inside the world's action space, finite rewards."""
        action, space, inside = episode["action"], self.space, True
        if isinstance(space, gym.spaces.Box):  # a little slack for float32 rounding at a bound; NaN is inside neither
            low, high = space.low - 1e-6 * (1 + np.abs(space.low)), space.high + 1e-6 * (1 + np.abs(space.high))
            inside = (action >= low) & (action <= high)
        elif isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
            choices = space.n if isinstance(space, gym.spaces.Discrete) else space.nvec
            inside = (action == np.round(action)) & (action >= space.start) & (action < space.start + choices)
        if not np.all(inside):
            raise CorruptEpisode(f"{name}: actions outside the world's action space {space}")
        if not np.isfinite(episode["reward"]).all():
            raise CorruptEpisode(f"{name}: rewards that are not finite numbers")


def load_episode(path: Path, layout: EpisodeLayout | None = None) -> dict:
    """Read one episode; raise CorruptEpisode with a reason if it is truncated, inconsistent or (with `layout`) not
    one of the recipe's world."""
    try:
        with np.load(path) as data:
            episode = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise CorruptEpisode(f"{path.name}: {type(exc).__name__}") from None
    _check_layout(path.name, {k: (v.shape, v.dtype) for k, v in episode.items()}, layout)
    if layout is not None:
        layout.check_values(path.name, episode)
    return episode


def _check_layout(name: str, arrays: dict[str, tuple[tuple, np.dtype]], layout: EpisodeLayout | None = None) -> None:
    """Shapes and dtypes of an episode's arrays: frames as uint8 RGB, one step more than actions and rewards,
    numbers where numbers belong; with `layout`, the recipe's frame size and action shape."""
    missing = [k for k in EPISODE_KEYS if k not in arrays]
    if missing:
        raise CorruptEpisode(f"{name}: missing {', '.join(missing)}")
    (obs_shape, obs_dtype), steps = arrays["obs"], arrays["action"][0][0] if arrays["action"][0] else -1
    if obs_dtype != np.uint8 or len(obs_shape) != 4 or obs_shape[-1] != 3:
        raise CorruptEpisode(f"{name}: obs must be uint8 frames (steps + 1, H, W, 3), got {obs_dtype} {obs_shape}")
    if any(len(arrays[k][0]) != 1 for k in ("reward", "terminated", "truncated")) or len(arrays["action"][0]) not in (
        1,
        2,
    ):
        raise CorruptEpisode(f"{name}: reward, terminated and truncated must be one value per step")
    if obs_shape[0] != steps + 1 or any(arrays[k][0][0] != steps for k in ("reward", "terminated", "truncated")):
        raise CorruptEpisode(f"{name}: array lengths disagree")
    for key, kinds in (("action", "fiu"), ("reward", "fiu"), ("terminated", "biu"), ("truncated", "biu")):
        if np.dtype(arrays[key][1]).kind not in kinds:
            raise CorruptEpisode(f"{name}: {key} must be numbers, got {arrays[key][1]}")
    if layout is not None:
        layout.check_headers(name, arrays)


def check_episode_file(path: Path, layout: EpisodeLayout | None = None) -> None:
    """The checks of `load_episode` from the arrays' headers alone (a few bytes each), nothing decompressed in full."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                arrays[member.removesuffix(".npy")] = (shape, dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise CorruptEpisode(f"{path.name}: {type(exc).__name__}") from None
    _check_layout(path.name, arrays, layout)


class EpisodeStore:
    """A folder of episodes `ep_NNNNNN.npz` (and iterative rounds' `roundRR_NNNNNN.npz`) plus `manifest.json`."""

    def __init__(self, root: Path | str, layout: EpisodeLayout | None = None):
        self.root, self.layout = Path(root), layout  # layout: what every episode read is checked to hold
        self.skipped: set[str] = set()

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def paths(self) -> list[Path]:
        return sorted(self.root.glob("ep_*.npz"))

    def listed(self) -> list[Path]:
        """The episodes the manifest lists: what V, encode and M use (not stray files in the folder)."""
        return [self.root / e["file"] for e in self.manifest()["episodes"]]

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise WorldModelsError(f"no episodes in '{self.root}'; run `worldmodels collect` first")
        try:
            manifest = json.loads(self.manifest_path.read_text())
            if not isinstance(manifest, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str) and "/" not in e["file"]
                for e in manifest["episodes"]
            ):
                raise ValueError("not an episode list")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise WorldModelsError(
                f"'{self.manifest_path}' is damaged; `worldmodels collect` rebuilds it from the episodes present"
            ) from None
        return manifest

    def check_world(self, cfg: Config) -> None:
        """Refuse a folder of episodes collected for another world than the recipe's (one line naming the field)."""
        manifest = read_json(self.manifest_path)  # a damaged manifest is collect's to rebuild, not a world to check
        if manifest is not None:
            older = {"env.id": manifest.get("env"), "env.frame_size": manifest.get("frame_size")}  # before fingerprints
            world = manifest.get("world") or {k: v for k, v in older.items() if v is not None}
            check_fingerprint(self.manifest_path, {"world": world}, cfg)

    def complete(self, episodes: int) -> bool:
        """The manifest lists `episodes` collected episodes whose files are whole and well formed (checked from
        the zip's index and the arrays' headers, nothing decompressed); else `collect` has work to do."""
        try:
            listed = [e["file"] for e in self.manifest()["episodes"] if not e.get("round")]
            for name in listed:
                check_episode_file(self.root / name, self.layout)
        except (WorldModelsError, CorruptEpisode):
            return False
        return len(listed) >= episodes

    def add(self, entries: list[dict]) -> dict:
        """List more episodes in the manifest (those already listed are left as they are)."""
        manifest = self.manifest()
        listed = {e["file"] for e in manifest["episodes"]}
        manifest["episodes"] += [e for e in entries if e["file"] not in listed]
        manifest["frames"] = sum(e["steps"] + 1 for e in manifest["episodes"])
        save_json(self.manifest_path, manifest)
        return manifest

    def iter_episodes(self, paths: list[Path] | None = None) -> Iterator[tuple[Path, dict]]:
        """Yield readable episodes; corrupt ones are skipped, named once and counted in `skipped`."""
        for path in self.paths() if paths is None else paths:
            try:
                yield path, load_episode(path, self.layout)
            except CorruptEpisode as exc:
                if path.name not in self.skipped:
                    self.skipped.add(path.name)
                    say(f"skipping corrupt episode {exc} ({len(self.skipped)} skipped so far)")


def episode_entry(path: Path, episode: dict, **extra) -> dict:
    """An episode's line in the manifest: its file, steps, the world's frames behind them, its seed and who played
    it (the collection policy, the driver, a round's controller)."""
    steps = int(len(episode["action"]))
    frames = int(episode["frames"]) if "frames" in episode else steps  # episodes from before action repeats
    played_by = {"policy": str(episode["policy"])} if "policy" in episode else {}
    return {"file": path.name, "steps": steps, "frames": frames, "seed": int(episode["seed"]), **played_by, **extra}
