"""train-vision, sample and encode: V trained on frames, its pictures, the episodes as latents."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from worldmodels.agent import load_vision, vision_from_checkpoint
from worldmodels.config import Config
from worldmodels.core import distributed
from worldmodels.core.actions import encode_actions
from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import bar, say
from worldmodels.data.episodes import CorruptEpisode, EpisodeStore, save_episode
from worldmodels.data.frames import FrameStream, frames_to_float
from worldmodels.data.latents import read_latent
from worldmodels.runs import checkpoints
from worldmodels.runs.checkpoints import Run
from worldmodels.stages.episodes import episode_store
from worldmodels.stages.features import train_pretrained_vision
from worldmodels.training import Fit, fit, fit_options, main_writer, pick_device
from worldmodels.vision import PretrainedV, build_vision, vision_config
from worldmodels.vision.encoders import encoder_weights
from worldmodels.worlds.real import action_space


def image_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """Stack rows of (N, 3, H, W) images in [0, 1] into one uint8 (H*rows, W*N, 3) picture."""
    width = max(len(r) for r in rows)
    rows = [torch.cat([r, r.new_zeros(width - len(r), *r.shape[1:])]) for r in rows]  # pad short rows with black
    lines = [torch.cat(list(r.clamp(0, 1)), dim=2) for r in rows]  # each (3, H, W*N)
    return (torch.cat(lines, dim=1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def fixed_frames(store: EpisodeStore, n: int) -> torch.Tensor:
    """n frames spread over the first episodes, the same every time: for pictures."""
    frames = []
    for _, episode in store.iter_episodes(store.listed()[: max(n, 1)]):
        obs = episode["obs"]
        frames.append(torch.from_numpy(obs[len(obs) // 2]))
        if len(frames) == n:
            break
    if not frames:
        raise WorldModelsError(f"no readable episodes in '{store.root}'")
    return torch.stack(frames)


def train_vision(cfg: Config, run: Run, rollouts_root: Path) -> dict:
    """Train V on streamed frames; a reconstruction grid goes to TensorBoard every epoch."""
    v = cfg.vision
    device = pick_device(cfg.device)
    batch_size = distributed.local_batch(v.batch_size, "vision.batch_size")  # the recipe's is the global batch
    store = episode_store(rollouts_root, cfg)
    frames = max(store.manifest().get("frames", 1), 1)  # fails clearly when nothing was collected
    model_config = vision_config(cfg)
    torch.manual_seed(v.seed)  # the same initial weights whatever ran before in this process
    model = build_vision(model_config).to(device)
    if isinstance(model, PretrainedV):  # the frozen encoder's own weights; only its compressor trains
        model.encoder.load_state_dict(encoder_weights(v.pretrained.encoder))
        return train_pretrained_vision(cfg, run, store, model, model_config, device)
    if device.type == "cuda":  # cuDNN's fast convolutions want NHWC; frames_to_float already makes NHWC batches
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack memory_format
    stream = FrameStream(store, v.buffer_episodes, seed=v.seed)
    writer = main_writer(run.tensorboard)
    preview = frames_to_float(fixed_frames(store, 8), device)

    def batches(epoch: int):
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=batch_size, pin_memory=device.type == "cuda")
        for i, batch in enumerate(loader):
            model.progress = (epoch + i * v.batch_size / frames) / v.epochs  # NVAE's KL warm-up reads it
            yield batch

    def on_epoch_end(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            recon = model.through_z(preview)
        model.train()
        writer.add_image("vision/reconstruction", image_grid([preview.cpu(), recon.cpu()]), epoch, dataformats="HWC")

    job = Fit(
        "vision",
        model,
        model_config,
        batches,
        lambda b: model.loss(frames_to_float(b, device)),
        v.epochs,
        v.lr,
        v.seed,
        run.vision,
        writer,
        on_epoch_end,
        **fit_options(cfg, device),
        batches_per_epoch=-(-frames // v.batch_size),
    )  # every process takes its share of each global batch
    result = fit(job)
    writer.close()
    if store.skipped:
        say(f"train-vision: skipped {len(store.skipped)} corrupt episode(s)")
    return result


def two_rows(*images: torch.Tensor) -> list[torch.Tensor]:
    """Split each batch into two rows when it has more than one frame: [a[:h], b[:h], a[h:], b[h:]]."""
    if len(images[0]) < 2:
        return list(images)
    half = (len(images[0]) + 1) // 2
    return [x[:half] for x in images] + [x[half:] for x in images]


def sample(cfg: Config, run: Run, rollouts_root: Path, n: int = 16, temperature: float = 1.0) -> list[Path]:
    """Write PNG grids: prior samples, and reconstructions under their originals."""
    model = load_vision(run.require(run.vision, "train-vision"))
    if not model.draws:
        say("sample: this V draws no frames (vision.pretrained.decoder = false); nothing to show")
        return []
    store = episode_store(rollouts_root, cfg)
    store.manifest()
    torch.manual_seed(cfg.vision.seed)
    originals = frames_to_float(fixed_frames(store, n), "cpu")
    with torch.no_grad():
        recon = model.through_z(originals)
        full = model.reconstruct(originals)  # a hierarchical V's own, from all its latents: a third row when it differs
        prior = model.sample(n, temperature) if model.has_prior else None
    out = run.dir / "samples"
    paths = [out / "reconstructions.png", out / "prior.png"][: 2 if prior is not None else 1]
    rows = two_rows(originals, recon) if torch.equal(full, recon) else two_rows(originals, recon, full)
    pictures = [image_grid(rows)] + ([image_grid(two_rows(prior))] if prior is not None else [])
    writer = main_writer(run.tensorboard)
    for path, picture in zip(paths, pictures):
        png = io.BytesIO()
        Image.fromarray(picture).save(png, format="PNG")
        if checkpoints.write_if_changed(path, png.getvalue()):  # the same V draws the same pictures: nothing to write
            writer.add_image(f"sample/{path.stem}", picture, 0, dataformats="HWC")
    writer.close()
    return paths


def encode(cfg: Config, run: Run, rollouts_root: Path) -> dict:
    """Cache each episode's latent mean and log-std (float16) in the run folder."""
    device = pick_device(cfg.device)
    vision_ckpt = checkpoints.load(run.require(run.vision, "train-vision"), "vision")
    checkpoints.check_same_config(run.vision, vision_ckpt["config"], vision_config(cfg), "vision")
    model = vision_from_checkpoint(vision_ckpt, device)
    store = episode_store(rollouts_root, cfg)
    space = action_space(cfg.env)
    wanted = store.listed()
    manifest_path = run.latents / "manifest.json"
    made_by = vision_ckpt["id"]  # latents are stale once V is trained further or anew
    try:
        fresh = manifest_path.is_file() and json.loads(manifest_path.read_text()).get("vision_id") == made_by
    except (ValueError, AttributeError):  # a damaged manifest: the files are checked one by one below
        fresh = False
    if not fresh:
        for stale in run.latents.glob("*.npz"):
            stale.unlink()
    run.latents.mkdir(parents=True, exist_ok=True)
    # each latent file is written atomically, so the files themselves say how far an interrupted encode got;
    # a damaged one (a disk fault, a copy cut short) is encoded again
    done = set()
    for path in run.latents.glob("*.npz"):
        try:
            read_latent(path, model.latent_dim, made_by)
            done.add(path.name)
        except CorruptEpisode as exc:
            say(f"encode: latent file {exc} is damaged, encoding it again")
            path.unlink()
    made = {"vision_id": made_by, "latent_dim": model.latent_dim, "world": checkpoints.fingerprint(cfg)}
    checkpoints.save_json(manifest_path, made | {"episodes": sorted(done & {p.name for p in wanted})})
    todo = [p for p in wanted if p.name not in done]
    for path, episode in bar(store.iter_episodes(todo), total=len(todo), desc="encode", unit="ep"):
        frames = torch.from_numpy(episode["obs"])
        with torch.no_grad():
            latent = model.encode_episode(frames_to_float(chunk, device) for chunk in frames.split(256))
        parts = {"mu": latent.mean, "logstd": latent.logstd, "codes": latent.codes}  # None: not made by this V
        # a discrete V's z is codebook rows, kept exact (float32) so M learns and dreams the very vectors C sees
        dtypes = {"mu": np.float32 if latent.codes is not None else np.float16, "logstd": np.float16, "codes": np.int16}
        save_episode(
            run.latents / path.name,
            {
                **{key: value.cpu().numpy().astype(dtypes[key]) for key, value in parts.items() if value is not None},
                "action": encode_actions(episode["action"], space),
                "reward": episode["reward"].astype(np.float32),
                "done": episode["terminated"].astype(bool),
                "vision_id": np.asarray(made_by),  # a latent file planted among them is told apart
            },
        )
    encoded = sorted({p.name for p in wanted} & {p.name for p in run.latents.glob("*.npz")})
    checkpoints.save_json(manifest_path, made | {"episodes": encoded})
    if store.skipped:
        say(f"encode: skipped {len(store.skipped)} corrupt episode(s)")
    return {"episodes": len(encoded), "skipped": sorted(store.skipped)}
