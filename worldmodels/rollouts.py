"""Collect episodes in parallel, store them one compressed .npz each, and stream them back as datasets."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym
import numpy as np
import torch

from . import distributed
from .actions import action_dim
from .checkpoints import Run, atomic_write, check_fingerprint, fingerprint, load, read_json, save_json
from .config import CollectConfig, Config, EnvConfig
from .controller import to_action
from .errors import WorldModelsError
from .pool import worker_pool
from .progress import bar, say
from .worlds.real import action_space, make_world

EPISODE_KEYS = ("obs", "action", "reward", "terminated", "truncated", "seed")


# ---------------------------------------------------------------- policies


class RandomPolicy:
    """Uniform random actions from the action space."""

    def __init__(self, space: gym.Space, seed: int):
        self.space = space
        self.space.seed(seed)

    def __call__(self):
        return self.space.sample()


class BrownianPolicy:
    """Smoothly varying actions: a random walk in [-1, 1]^d, mapped onto the space (argmax for Discrete)."""

    def __init__(self, space: gym.Space, seed: int, sigma: float):
        self.space, self.sigma = space, sigma
        self.rng = np.random.default_rng(seed)
        self.dim = action_dim(space)
        self.x = self.rng.uniform(-1, 1, self.dim)

    def __call__(self):
        self.x = np.clip(self.x + self.sigma * self.rng.standard_normal(self.dim), -1, 1)
        return to_action(self.x, self.space)  # mapped like a controller's output


def make_policy(cfg: CollectConfig, space: gym.Space, seed: int):
    """The collection policy named by the recipe."""
    if cfg.policy == "brownian":
        return BrownianPolicy(space, seed, cfg.brownian_sigma)
    return RandomPolicy(space, seed)


# ---------------------------------------------------------------- episode store


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

    @classmethod
    def of(cls, cfg: EnvConfig) -> EpisodeLayout:
        return cls(cfg.frame_size, action_space(cfg))

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


def episode_seed(cfg: CollectConfig, index: int) -> int:
    """The seed of collected episode `index`, whoever plays it."""
    return cfg.seed * 1_000_003 + index


Drive = Callable[[list[int], list[Path]], None]  # the driver playing episodes: (their seeds, their files)


def driven(cfg: CollectConfig) -> int:
    """How many of the collected episodes (the first ones) the driver plays."""
    return round(cfg.driver_fraction * cfg.episodes)


# ---------------------------------------------------------------- collection


def _inside(state: np.ndarray | None, cfg: CollectConfig) -> bool:
    if state is None:
        return True
    return all(b.low <= float(state[b.index]) <= b.high for b in cfg.keep)


def collect_episode(env: gym.Env, cfg: CollectConfig, seed: int) -> dict:
    """Play one episode with the collection policy; stop early when the state leaves `cfg.keep`."""
    policy = make_policy(cfg, env.action_space, seed)
    obs, info = env.reset(seed=seed)
    actions: list[Any]  # the action space's elements: ints, arrays
    frames, actions, rewards, terminated, truncated = [obs], [], [], [], []
    played = 0  # frames of the world, more than steps under an action repeat
    while True:
        action = policy()
        obs, reward, term, trunc, info = env.step(action)
        played += info.get("frames", 1)
        out_of_bounds = not _inside(info.get("state"), cfg)
        capped = cfg.max_steps and len(actions) + 1 >= cfg.max_steps
        if out_of_bounds and not term:
            break  # the frame fails the filter: end the episode before it, so every frame after the reset passes
        frames.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminated.append(term)
        truncated.append(trunc or bool(capped))
        if term or trunc or capped:
            break
    if actions and not (terminated[-1] or truncated[-1]):
        truncated[-1] = True
    return {
        "obs": np.stack(frames).astype(np.uint8),
        "action": np.asarray(actions),
        "reward": np.asarray(rewards, dtype=np.float32),
        "terminated": np.asarray(terminated, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
        "seed": np.asarray(seed),
        "frames": np.asarray(played),
        "policy": np.asarray(cfg.policy),  # who played it, for the manifest (a driver's episodes say "controller")
    }


class EpisodeCollector:
    """What one collecting worker holds: its world, made once, and the collection's settings (not the recipe)."""

    def __init__(self, env: EnvConfig, collect: CollectConfig):
        self.world, self.collect = make_world(env), collect

    def one(self, job: tuple[int, str]) -> tuple[str, int]:
        """Collect and save episode `index` into `root`: (its file name, its steps)."""
        index, root = job
        episode = collect_episode(self.world, self.collect, episode_seed(self.collect, index))
        save_episode(Path(root) / episode_name(index), episode)
        return episode_name(index), len(episode["action"])


_process_collector: EpisodeCollector | None = None  # a pool process's own, made by the pool's initializer


def _start_process_collector(env: EnvConfig, collect: CollectConfig) -> None:
    global _process_collector
    _process_collector = EpisodeCollector(env, collect)


def _collect_in_process(job: tuple[int, str]) -> tuple[str, int]:
    assert _process_collector is not None  # made by _start_process_collector when the pool started
    return _process_collector.one(job)


def collect(cfg: Config, root: Path, drive: Drive | None = None) -> dict:
    """Collect `cfg.collect.episodes` episodes into `root`, skipping those already there (resume); with `drive`,
    the first `collect.driver_fraction` of them are the driver's."""
    store = EpisodeStore(root, EpisodeLayout.of(cfg.env))  # a bad env id fails here, fast, in this process
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):  # a corrupt episode is named, deleted and collected again, once
        _collect_missing(cfg, store, root, drive)
        entries = [
            episode_entry(path, episode)
            for path, episode in store.iter_episodes()
            if int(path.stem.split("_")[1]) < cfg.collect.episodes
        ]
        corrupt = sorted(n for n in store.skipped if int(Path(n).stem.split("_")[1]) < cfg.collect.episodes)
        if not corrupt or attempt:
            break
        say(
            f"collect: collecting {len(corrupt)} corrupt episode(s) again: "
            f"{', '.join(corrupt[:5])}{' ...' if len(corrupt) > 5 else ''}"
        )
        for name in corrupt:
            (root / name).unlink()
        store.skipped.clear()
    # episodes collected by a controller in iterative training rounds stay listed: rebuilt from their files, so a
    # damaged manifest loses nothing
    rounds = []
    for path, episode in store.iter_episodes(sorted(root.glob("round*_*.npz"))):
        rounds.append(episode_entry(path, episode, round=int(path.name[5:7])))
    episodes = entries + rounds  # named roundRR_*, never among the ep_* files above
    manifest = {
        "world": fingerprint(cfg),
        **({"driver": cfg.collect.driver} if drive is not None else {}),
        "episodes": episodes,
        "frames": sum(e["steps"] + 1 for e in episodes),
        "skipped_corrupt": sorted(store.skipped),
    }
    save_json(store.manifest_path, manifest)
    return manifest


def _collect_missing(cfg: Config, store: EpisodeStore, root: Path, drive: Drive | None = None) -> None:
    """Collect the recipe's episodes that have no file yet: the driver's first, then the collection policy's."""
    have = {p.name for p in store.paths()}
    todo = [i for i in range(cfg.collect.episodes) if episode_name(i) not in have]
    if drive is not None:
        mine = [i for i in todo if i < driven(cfg.collect)]
        if mine:
            drive([episode_seed(cfg.collect, i) for i in mine], [root / episode_name(i) for i in mine])
        todo = [i for i in todo if i >= driven(cfg.collect)]
    if todo:
        jobs = [(i, str(root)) for i in todo]
        progress = bar(total=len(todo), desc="collect", unit="ep")
        if cfg.collect.workers > 1:
            with worker_pool(cfg.collect.workers, _start_process_collector, (cfg.env, cfg.collect)) as pool:
                for _ in pool.imap_unordered(_collect_in_process, jobs):
                    progress.update()
                pool.close()
                pool.join()
        else:
            collector = EpisodeCollector(cfg.env, cfg.collect)
            for job in jobs:
                collector.one(job)
                progress.update()
        progress.close()


# ---------------------------------------------------------------- datasets


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
