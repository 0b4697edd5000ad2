"""Can M learn the codebook world? A categorical M trained on random-policy episodes of the codebook NAS
world, scored on held-out episodes: next-code accuracy per slot and per latent, reward and done.
One JSON line.

    python benchmarks/codebook_memory.py [--run checkpoints/codebook_nas] [--episodes 2000] [--epochs 10]

Needs a trained V of architectures (`worldmodels train-vision envs/codebook_nas.toml`). The codebook world's
writes are deterministic, so a perfect M predicts every next latent; "copy" is the baseline that predicts
no change, right on every slot not written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from worldmodels import config
from worldmodels.config import MemoryConfig
from worldmodels.core.actions import action_dim, encode_actions
from worldmodels.data.latents import LatentEpisode, SequenceDataset
from worldmodels.memory import MDNRNN, memory_loss
from worldmodels.nas.search import fit_surrogate, load_architecture_vision, make_codebook_world


def episodes(world, n: int, seed: int) -> list[LatentEpisode]:
    """n random-policy episodes of the codebook world as M's training data (codes, z, actions, rewards, dones)."""
    world.action_space.seed(seed)
    out = []
    for k in range(n):
        obs, _ = world.reset(seed=seed * 1_000_003 + k)
        codes, latents, actions, rewards, dones = [world.codes.copy()], [obs["latent"].ravel()], [], [], []
        done = False
        while not done:
            action = world.action_space.sample()
            obs, reward, terminated, truncated, _ = world.step(action)
            codes.append(world.codes.copy())
            latents.append(obs["latent"].ravel())
            actions.append(action)
            rewards.append(reward)
            dones.append(terminated)
            done = terminated or truncated
        out.append(
            LatentEpisode(
                np.stack(latents),
                np.zeros_like(np.stack(latents)),
                encode_actions(np.stack(actions), world.action_space),
                np.asarray(rewards, np.float32),
                np.asarray(dones),
                np.stack(codes),
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="envs/codebook_nas.toml")
    p.add_argument("--run", default="checkpoints/codebook_nas")
    p.add_argument("--episodes", type=int, default=2000, help="training episodes (a quarter as many are held out)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=128)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = config.load(args.recipe)
    vision = load_architecture_vision(Path(args.run) / "vision.pt")
    world = make_codebook_world(cfg, vision, fit_surrogate(cfg))
    train, held_out = episodes(world, args.episodes, seed=0), episodes(world, args.episodes // 4, seed=1)
    slots, num_codes = vision.cfg.slots, vision.cfg.num_embeddings
    memory = MDNRNN(
        MemoryConfig(hidden_size=args.hidden, sample_latents=False, done_weight=1.0),
        slots * vision.cfg.embed_dim,
        action_dim(world.action_space),
        positions=slots,
        num_codes=num_codes,
    )
    memory.codebook.copy_(vision.codebook)
    seq_len = cfg.codebook.max_allowed_actions
    optimizer = torch.optim.Adam(memory.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(SequenceDataset(train, seq_len), batch_size=64, shuffle=True)
    for _ in range(args.epochs):
        for b in loader:
            prediction, _ = memory(b["mu"], b["action"])
            losses = memory_loss(
                prediction, b["next_mu"], b["reward"], b["done"], b["mask"], 1.0, next_codes=b["next_codes"]
            )
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
    b = next(iter(torch.utils.data.DataLoader(SequenceDataset(held_out, seq_len), batch_size=len(held_out))))
    with torch.no_grad():
        prediction, _ = memory(b["mu"], b["action"])
    mask = b["mask"].bool()
    hit = (prediction.code_logits.argmax(-1) == b["next_codes"])[mask]  # (steps, slots)
    copy = (b["codes"] == b["next_codes"])[mask]
    reward, predicted = b["reward"][mask], prediction.reward[mask]
    done, p_done = b["done"][mask].bool(), memory.done_probability(prediction)[mask]
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "train_episodes": len(train),
                "held_out_steps": int(mask.sum()),
                "epochs": args.epochs,
                "next_code_accuracy": round(hit.float().mean().item(), 4),
                "next_latent_exact": round(hit.all(-1).float().mean().item(), 4),
                "copy_code_accuracy": round(copy.float().mean().item(), 4),
                "copy_latent_exact": round(copy.all(-1).float().mean().item(), 4),
                "reward_r2": round(1 - ((predicted - reward) ** 2).mean().item() / reward.var().item(), 4),
                "done_accuracy": round(((p_done > 0.5) == done).float().mean().item(), 4),
                "done_rate": round(done.float().mean().item(), 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
