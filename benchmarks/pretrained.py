"""What a frozen encoder costs per frame: the pretrained V's feature extraction, frames/s, one JSON line each.

Encoders: the conv VAE's encoder (the `run:` encoder of envs/cartpole_pretrained.toml) and CLIP towers at the
sizes of ViT-B/32 and ViT-B/16 (random weights built from their configs: the compute is the weights' shape, and
nothing is downloaded). Frames are 64x64, resized to the tower's 224 as the pretrained V does.

    python benchmarks/pretrained.py [--frames 128] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from worldmodels.vision import build_vision
from worldmodels.vision.encoders import TowerEncoder, VisionEncoder


def frames_per_second(encoder: torch.nn.Module, frames: torch.Tensor, batch: int) -> float:
    with torch.no_grad():
        encoder(frames[:batch])  # warm-up
        start = time.perf_counter()
        for chunk in frames.split(batch):
            encoder(chunk)
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = torch.rand(args.frames, 3, 64, 64)
    encoders = {"conv VAE (z 32)": VisionEncoder(build_vision({"model": "vae", "frame_size": 64, "latent_dim": 32}))}
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        for name, patch in (("CLIP ViT-B/32", 32), ("CLIP ViT-B/16", 16)):
            tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(patch_size=patch, image_size=224))
            mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
            encoders[name] = TowerEncoder(tower.eval(), -1, 224, mean, std)
    for name, encoder in encoders.items():
        fps = frames_per_second(encoder, frames, args.batch)
        line = {"encoder": name, "features": encoder.feature_dim, "threads": args.threads}
        line["frames_per_s"] = round(fps, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
