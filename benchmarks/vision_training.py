"""V training against a classic loop, and V training's peak memory at 1x and 4x the episodes. One JSON line.

    python benchmarks/vision_training.py [--recipe envs/carracing_small.toml] [--episodes 16] [--epochs 2]
                                         [--threads 1]

Every measurement is a fresh process, timed from start to exit, with its own peak RSS (`os.wait4`):

- `ours`: `worldmodels train-vision` (its conv VAE, its data stream, its checkpoints), on `--episodes` x 4 episodes
  (collected once) and on `--episodes`: how its peak RSS grows against the frames it streams.
- `reference`: V trained the way the classic World Models ports train Ha's VAE: every frame loaded into memory,
  a torch `Dataset` turning one frame at a time into a float tensor, a shuffling `DataLoader`, Ha's unpadded conv
  VAE (4x4 stride-2 convs down to 2x2x256, a 1024-wide bottleneck, 5-5-6-6 deconvs), summed squared error plus
  KL, Adam at the recipe's learning rate. The 4x episodes, batch size, epochs and threads of `ours`.

Held-out reconstruction (`mse_z`: decode(encode(x).mean), per pixel and channel) is measured on the last 20% of
the episodes, which neither trains on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodels import config, stages
from worldmodels.agent import load_vision
from worldmodels.data.episodes import EpisodeStore
from worldmodels.data.frames import frames_to_float


class HaVAE(nn.Module):
    """Ha & Schmidhuber's conv VAE as the classic ports write it (no padding, a 1x1x1024 decoder input)."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2), nn.ReLU(), nn.Conv2d(128, 256, 4, 2), nn.ReLU(), nn.Flatten(),
        )  # fmt: skip
        self.mu, self.logvar = nn.Linear(1024, latent_dim), nn.Linear(1024, latent_dim)
        self.fc = nn.Linear(latent_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, 2), nn.ReLU(), nn.ConvTranspose2d(128, 64, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, 2), nn.ReLU(), nn.ConvTranspose2d(32, 3, 6, 2), nn.Sigmoid(),
        )  # fmt: skip

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc(z)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        return self.decode(mu + (0.5 * logvar).exp() * torch.randn_like(mu)), mu, logvar


class FrameDataset(torch.utils.data.Dataset):
    """All frames in memory, one converted per item, as the classic ports' datasets do."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.frames[i]).permute(2, 0, 1).float() / 255.0


def episode_frames(root: Path, names: list[str]) -> np.ndarray:
    store = EpisodeStore(root)
    return np.concatenate([ep["obs"] for _, ep in store.iter_episodes([root / n for n in names])])


def reference(args: argparse.Namespace) -> None:
    """The child process of the classic loop: train, then print the held-out error as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = episode_frames(Path(args.reference), args.names)
    loader = torch.utils.data.DataLoader(FrameDataset(frames), batch_size=args.batch_size, shuffle=True)
    model = HaVAE(args.latent_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        for x in loader:
            recon, mu, logvar = model(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (F.mse_loss(recon, x, reduction="sum") + kl) / len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    held = torch.from_numpy(episode_frames(Path(args.reference), args.held))
    print(json.dumps({"mse_z": heldout_mse(lambda x: model.decode(model.mu(model.encoder(x))), held)}))


@torch.no_grad()
def heldout_mse(through_z, frames: torch.Tensor, batch: int = 256) -> float:
    squared = sum(
        float((through_z(x) - x).double().pow(2).sum())
        for x in (frames_to_float(frames[i : i + batch], "cpu") for i in range(0, len(frames), batch))
    )
    return round(squared / frames.numel(), 7)


def timed(command: list[str], threads: int) -> tuple[float, float, str]:
    """Run a fresh process: (seconds, its own peak RSS in MiB, its stdout)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed")
    return seconds, usage.ru_maxrss / 1024, out  # ru_maxrss is in KiB on Linux


def link_run(source: Path, rollouts: Path, run: str, names: list[str]) -> None:
    """rollouts/run/episodes holding hard links to `names` of `source`, listed in its manifest."""
    target = rollouts / run / "episodes"
    shutil.rmtree(target.parent, ignore_errors=True)
    target.mkdir(parents=True)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["episodes"] = [e for e in manifest["episodes"] if e["file"] in names]
    manifest["frames"] = sum(e["steps"] + 1 for e in manifest["episodes"])
    for name in names:
        os.link(source / name, target / name)
    (target / "manifest.json").write_text(json.dumps(manifest))


def ours(args, recipe: str, scratch: Path, source: Path, names: list[str], run: str) -> tuple[float, float, Path]:
    """`worldmodels train-vision` on `names` in a fresh process: (seconds, peak RSS MiB, its run folder)."""
    link_run(source, scratch / "rollouts", run, names)
    shutil.rmtree(scratch / "checkpoints" / run, ignore_errors=True)
    command = [sys.executable, "-m", "worldmodels", "train-vision", recipe, "--run", run]
    command += ["--rollouts", str(scratch / "rollouts"), "--checkpoints", str(scratch / "checkpoints")]
    command += ["--set", f"vision.epochs={args.epochs}", *[a for o in args.overrides for a in ("--set", o)]]
    seconds, rss, _ = timed(command, args.threads)
    return seconds, rss, scratch / "checkpoints" / run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/carracing_small.toml")
    p.add_argument("--episodes", type=int, default=16, help="the 1x run's episodes, a fifth held out from every run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for ours")
    p.add_argument("--scratch", default="/tmp/worldmodels_bench_vision_training")
    p.add_argument("--reference", help=argparse.SUPPRESS)  # the child process of the classic loop: its episodes
    p.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--held", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    p.add_argument("--latent-dim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference:
        return reference(args)

    recipe = str(Path(args.recipe).resolve()) if Path(args.recipe).exists() else args.recipe
    cfg = config.load(recipe, [("collect.episodes", 4 * args.episodes)])
    scratch = Path(args.scratch)
    stages.collect(cfg, scratch / "source")  # once; later runs reuse the episodes
    source = stages.episodes_dir(scratch / "source", cfg)
    lengths = {e["file"]: e["steps"] + 1 for e in json.loads((source / "manifest.json").read_text())["episodes"]}
    every = sorted(lengths)
    held = max(1, args.episodes // 5)
    heldout, train = every[:held], every[held : args.episodes]  # 1x: `--episodes` in all, a fifth held out
    four = every[held : held + 4 * len(train)]

    rss = ours(args, recipe, scratch, source, train, "ours_1x")[1]
    seconds, rss_4x, run = ours(args, recipe, scratch, source, four, "ours_4x")
    frames, frames_4x = sum(lengths[n] for n in train), sum(lengths[n] for n in four)
    held_frames = torch.from_numpy(episode_frames(source, heldout))
    ours_mse = heldout_mse(load_vision(run / "vision.pt").through_z, held_frames)
    command = [sys.executable, __file__, "--reference", str(source), "--names", *four, "--held", *heldout]
    command += ["--epochs", str(args.epochs), "--threads", str(args.threads), "--lr", str(cfg.vision.lr)]
    command += ["--batch-size", str(cfg.vision.batch_size), "--latent-dim", str(cfg.vision.latent_dim)]
    ref_seconds, ref_rss, out = timed(command, args.threads)
    ref_mse = json.loads(out.strip().splitlines()[-1])["mse_z"]
    frame_mib = held_frames[0].numel() / 2**20  # one uint8 frame
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "torch": torch.__version__,
                "recipe": args.recipe,
                "threads": args.threads,
                "overrides": args.overrides,
                "epochs": args.epochs,
                "batch_size": cfg.vision.batch_size,
                "train_frames": frames_4x,
                "heldout_frames": len(held_frames),
                "ours_frames_per_s": round(args.epochs * frames_4x / seconds, 1),
                "reference_frames_per_s": round(args.epochs * frames_4x / ref_seconds, 1),
                "speedup_vs_reference": round(ref_seconds / seconds, 2),
                "ours_mse_z": ours_mse,
                "reference_mse_z": ref_mse,
                "reference_peak_rss_mib": round(ref_rss, 1),
                "ours_1x_frames": frames,
                "ours_1x_peak_rss_mib": round(rss, 1),
                "ours_4x_peak_rss_mib": round(rss_4x, 1),
                "rss_growth_mib": round(rss_4x - rss, 1),
                "added_frames_mib": round((frames_4x - frames) * frame_mib, 1),
                "rss_growth_per_added_frame_mib": round((rss_4x - rss) / ((frames_4x - frames) * frame_mib), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
