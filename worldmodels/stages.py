"""The pipeline's stages; each reads only what the stage before it wrote and skips itself when complete."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Callable, cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter

from . import checkpoints, distributed, evaluators, fidelity, rollouts
from .actions import action_dim, encode_actions
from .agent import WorldModel, load_vision, memory_from_checkpoint, vision_from_checkpoint
from .backends import real_evaluator
from .checkpoints import Run
from .config import Config, MemoryConfig
from .errors import WorldModelsError
from .evaluators import Evaluator
from .evolution import dream_evaluator
from .features import train_pretrained_vision
from .memory import MDNRNN, MemoryModelConfig, memory_loss
from .progress import bar, say
from .rollouts import (
    EpisodeLayout,
    EpisodeStore,
    FrameStream,
    LatentEpisode,
    SequenceDataset,
    frames_to_float,
    load_latents,
)
from .training import Fit, fit, fit_options, main_writer, pick_device
from .vision import VQVAE, PretrainedV, VisionModel, build_vision, vision_config
from .vision.encoders import encoder_weights
from .worlds.real import action_space


def episodes_dir(rollouts_root: Path, cfg: Config) -> Path:
    return Path(rollouts_root) / cfg.name / "episodes"


def episode_store(rollouts_root: Path, cfg: Config) -> EpisodeStore:
    """The recipe's episodes: refused when collected for another world, each checked against its frames and actions
    when read."""
    store = EpisodeStore(episodes_dir(rollouts_root, cfg), EpisodeLayout.of(cfg.env))
    store.check_world(cfg)
    return store


# ---------------------------------------------------------------- collect


def collect(cfg: Config, rollouts_root: Path) -> dict:
    """Gather episodes with the collection policy; already collected episodes are kept."""
    root = episodes_dir(rollouts_root, cfg)
    store = episode_store(rollouts_root, cfg)
    if store.complete(cfg.collect.episodes):
        say(f"collect: {root} already holds {cfg.collect.episodes} episodes, skipping")
        return store.manifest()
    manifest = rollouts.collect(cfg, root, driver(cfg) if cfg.collect.driver else None)
    say(f"collect: {len(manifest['episodes'])} episodes, {manifest['frames']} frames in {root}")
    return manifest


def driver(cfg: Config) -> rollouts.Drive:
    """collect.driver: another run folder's V, M and C, checked to fit this recipe's world, playing episodes with
    noise on C's outputs."""
    folder = Path(cfg.collect.driver)
    if not folder.is_dir():
        raise WorldModelsError(f"collect.driver '{folder}' is not a run folder")
    run = Run(folder.parent, dataclasses.replace(cfg, name=folder.name))
    run.check_world()  # its files were made for this recipe's world (env, frames, actions), or one line says which
    memory = checkpoints.load(run.require(run.memory, "train-memory"), "memory")["config"]
    frames = checkpoints.load(run.require(run.vision, "train-vision"), "vision")["config"]
    checkpoints.check_same_config(run.vision, frames, {"frame_size": cfg.env.frame_size}, "env")
    checkpoints.check_same_config(run.memory, memory, {"action_dim": action_dim(action_space(cfg.env))}, "memory")
    model = WorldModel.load(run.vision, run.memory)
    flat = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)["params"].numpy()

    def drive(seeds: list[int], paths: list[Path]) -> None:
        with real_evaluator(cfg, run.vision, run.memory, cfg.collect.workers) as player:
            player.collect(np.repeat(flat[None], len(seeds), axis=0), seeds, cfg.collect.driver_noise, paths)

    return drive


# ---------------------------------------------------------------- vision


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


# ---------------------------------------------------------------- encode


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
            rollouts.read_latent(path, model.latent_dim, made_by)
            done.add(path.name)
        except rollouts.CorruptEpisode as exc:
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
        rollouts.save_episode(
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


# ---------------------------------------------------------------- memory


def memory_config(cfg: Config, vision: VisionModel) -> dict:
    """The model config of the recipe's M on top of V, as stored in its checkpoint."""
    m = cfg.memory
    space = action_space(cfg.env)
    discrete = vision.latent_kind == "discrete"  # a categorical head over V's codes; codes have no posterior spread
    return vars(
        MemoryModelConfig(
            vision.latent_dim,
            action_dim(space),
            m.hidden_size,
            m.num_gaussians,
            done_weight=m.done_weight,
            sample_latents=m.sample_latents and not discrete,
            dropout=m.dropout,
            reward_from=m.reward_from,
            cell_to_controller=m.cell_to_controller,
            positions=cast(VQVAE, vision).positions if discrete else 0,  # the discrete V is a VQ-VAE
            num_codes=cast(VQVAE, vision).num_embeddings if discrete else 0,
        )
    )


def holdout_split(
    everything: list[LatentEpisode], holdout: float
) -> tuple[list[LatentEpisode], list[LatentEpisode], str]:
    """M's training episodes, the episodes its fidelity is reported on, and which split those are."""
    is_held = [fidelity.held_out(e.name, holdout) for e in everything]
    held = [e for e, h in zip(everything, is_held) if h]
    episodes = [e for e, h in zip(everything, is_held) if not h]
    split = "held-out"
    if not held or not episodes:  # no holdout, or a store too small to split: M trains and reports on everything
        episodes, held, split = everything, everything, "train"
    return episodes, held, split


def memory_objective(model: MDNRNN, m: MemoryConfig, device: torch.device) -> Callable[[dict], dict]:
    """M's loss on a batch of sequences, z drawn from the cached mean and std when the model samples latents."""

    def loss(batch: dict) -> dict:
        b = {k: t.to(device) for k, t in batch.items()}
        z, next_z = b["mu"], b["next_mu"]
        if model.cfg.sample_latents:
            z = z + b["logstd"].exp() * distributed.randn_like(z)
            next_z = next_z + b["next_logstd"].exp() * distributed.randn_like(next_z)
        prediction, _ = model(z, b["action"], next_z=next_z)
        return memory_loss(
            prediction,
            next_z,
            b["reward"],
            b["done"],
            b["mask"],
            m.done_weight,
            m.reward_weight,
            m.done_loss_weight,
            b.get("next_codes"),
        )

    return loss


def train_memory(cfg: Config, run: Run, epochs: int | None = None) -> dict:
    """Train M on latent sequences (z drawn from the cached mean and std, or the mean);
    `epochs` in all (default: the recipe's)."""
    m = cfg.memory
    device = pick_device(cfg.device)
    episodes, held, split = holdout_split(load_latents(run), m.holdout)
    vision = load_vision(run.require(run.vision, "train-vision"))
    model_config = memory_config(cfg, vision)
    torch.manual_seed(m.seed)
    model = MDNRNN(MemoryModelConfig(**model_config)).to(device)
    if model.categorical:  # V is a VQ-VAE
        model.codebook.copy_(cast(VQVAE, vision).codebook)
    dataset = SequenceDataset(episodes, m.seq_len, m.random_starts, m.seed)
    rank, processes = distributed.rank_and_size()
    # one process draws the same permutation as W would; process r takes its rows r, r + W, ... of each global batch
    sampler: DistributedSampler[int] = DistributedSampler(dataset, processes, rank, shuffle=True, seed=m.seed)
    batch_size = distributed.local_batch(m.batch_size, "memory.batch_size")
    writer = main_writer(run.tensorboard)

    def batches(epoch: int):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, pin_memory=device.type == "cuda")

    loss = memory_objective(model, m, device)
    result = fit(
        Fit(
            "memory",
            model,
            model_config,
            batches,
            loss,
            epochs or m.epochs,
            m.lr,
            m.seed,
            run.memory,
            writer,
            **fit_options(cfg, device),
        )
    )
    writer.close()
    if distributed.is_main():
        trained = memory_from_checkpoint(checkpoints.load(run.memory, "memory"), device)
        result["fidelity"] = fidelity.write_memory_report(run, trained, held, split, epochs or m.epochs)
    return result


# ---------------------------------------------------------------- checks


def check_run(cfg: Config, run: Run) -> None:
    """Refuse a recipe whose world or model sizes differ from the files already in the run folder."""
    run.check_world()
    if run.vision.is_file():
        saved = checkpoints.load(run.vision, "vision")["config"]
        task = evaluators.task_stages(cfg)
        if task is not None:  # the task's own V (the codebook world's: of architectures, not frames); no M
            checkpoints.check_same_config(run.vision, saved, task.vision_config(cfg), "vision")
            return
        checkpoints.check_same_config(run.vision, saved, vision_config(cfg), "vision")
        if run.memory.is_file():
            wanted = memory_config(cfg, build_vision(saved))
            # as it loads: a field the checkpoint predates takes its default (an old M reads its reward from h)
            saved_memory = vars(MemoryModelConfig(**checkpoints.load(run.memory, "memory")["config"]))
            checkpoints.check_same_config(run.memory, saved_memory, wanted, "memory")


# ---------------------------------------------------------------- evaluate


def returns_report(returns: np.ndarray, seeds: list[int], generation: int | None) -> dict:
    """The part of a report every world shares: the returns of the evaluation episodes and their seeds."""
    return {
        "episodes": len(seeds),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "returns": [float(r) for r in returns],
        "seeds": seeds,
        "controller_generation": generation,
    }


def memory_id(run: checkpoints.Run) -> str:
    """The identity of the run's M, changed by every retraining."""
    return str(checkpoints.load(run.memory, "memory").get("id"))


def evaluate(cfg: Config, run: checkpoints.Run, world: str = "real") -> dict:
    """Play `cfg.evaluate.episodes` episodes with fixed seeds in the real world or the dream; write the report."""
    e = cfg.evaluate
    device = pick_device(cfg.device) if world == "dream" else "cpu"
    model = WorldModel.load(run.require(run.vision, "train-vision"), run.require(run.memory, "train-memory"), device)
    saved = checkpoints.load_controller(run.require(run.controller, "train-controller"), model)
    seeds = [e.seed + i for i in range(e.episodes)]
    flat = saved["params"].numpy()
    evaluator: Evaluator
    if world == "dream":
        evaluator = dream_evaluator(cfg, run, model)
    else:  # scored on the renderer users know (gymnasium's), whichever one C was trained with
        played = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, renderer=e.renderer))
        evaluator = real_evaluator(played, run.vision, run.memory, e.workers)
    with evaluator:
        returns = evaluator.returns(flat[None], seeds, progress="evaluate")[0]
    report = {"world": world, "env": cfg.env.id, **returns_report(returns, seeds, saved["generation"])}
    if world == "real":
        report["renderer"] = e.renderer
    report["memory_id"] = memory_id(run)  # C reads M's h: a retrained M makes another agent of the same C
    success = getattr(evaluator, "success", None)  # goal-reaching envs: did each episode's last step reach the goal
    if world == "dream":
        report["tau"] = cfg.dream.tau
    elif success is not None:
        report["success_rate"] = float(success[0].mean())
        report["successes"] = [bool(s) for s in success[0]]
    checkpoints.save_json(run.report if world == "real" else run.dream_report, report)
    writer = SummaryWriter(run.tensorboard)
    writer.add_scalar(f"evaluate/{world}_mean_return", report["mean"], saved["generation"])
    if "success_rate" in report:
        writer.add_scalar("evaluate/real_success_rate", report["success_rate"], saved["generation"])
    writer.close()
    return report
