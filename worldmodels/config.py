"""Recipes: typed dataclass configs loaded from TOML, with `--set section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
import tomli_w

from worldmodels.core.errors import WorldModelsError


@dataclass
class StateBound:
    """Keep a frame only while `low <= state[index] <= high` (seed 002's pole-angle filter)."""

    index: int = 0
    low: float = float("-inf")
    high: float = float("inf")


@dataclass
class EnvConfig:
    """The real world: a gymnasium environment seen through pixels."""

    id: str = "CartPole-v1"  # a gymnasium env id ("module:EnvId" imports the module that registers it)
    frame_size: int = 64  # frames are resized to frame_size x frame_size, uint8 RGB
    crop: list[float] = field(default_factory=lambda: [0.0, 1.0, 0.0, 1.0])  # top, bottom, left, right (fractions)
    render_size: list[int] = field(default_factory=list)  # [width, height] of a classic-control picture; []: its own
    max_steps: int = 0  # 0: the environment's own time limit (counted in frames, whatever the action repeat)
    action_repeat: int = 1  # each action of C (and of the collection policy) is played for this many frames
    action_low: list[float] = field(default_factory=list)  # with action_high: the box C's outputs and the collection
    action_high: list[float] = field(default_factory=list)  # policy span, clipped to the world's own; []: the world's
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    renderer: str = "gymnasium"  # gymnasium (the world's own pictures) | fast (CarRacing drawn at frame_size)


@dataclass
class CollectConfig:
    """Gathering episodes with a random or Brownian policy."""

    episodes: int = 200  # episodes played by the collection policy
    policy: str = "random"  # random | brownian
    brownian_sigma: float = 0.3  # per-step change of the Brownian action (in units of the action range)
    max_steps: int = 0  # reset after this many frames (seed 002); 0: no extra cap
    keep: list[StateBound] = field(default_factory=list)  # an episode ends when its state leaves these bounds
    workers: int = 2  # worker processes playing them
    seed: int = 0  # the episodes' seeds derive from it
    driver: str = ""  # a run (its name under --checkpoints, or a folder) whose V, M and C play some episodes
    driver_fraction: float = 0.0  # share of the episodes the driver plays (the first ones); the rest, `policy`
    driver_noise: float = 0.1  # std of Gaussian noise on the driver's outputs, so its episodes spread around its line


@dataclass
class PretrainedConfig:
    """vision.model = "pretrained" (seed 003): a frozen encoder, its features compressed into z."""

    encoder: str = ""  # hf:FOLDER (a local Hugging Face model: CLIP, SigLIP, any image AutoModel) | run:FOLDER (a V)
    #                    | module:PACKAGE.MODULE:FUNCTION (returns an nn.Module) | export:FILE (torch.export.save's)
    layer: int = -1  # hf: the hidden state whose tokens are averaged into features; -1: the pooled output
    compressor: str = "autoencoder"  # autoencoder (seed 003's main line) | linear (its idea 3)
    hidden: int = 256  # autoencoder: width of its hidden layers
    context: int = 1  # consecutive frames whose features are compressed together (never across episodes)
    concat: bool = False  # z = [the run: encoder's own z, the code] (seed 003's idea 2)
    decoder: bool = False  # also train a conv decoder from z to frames, for sample, dream GIFs and render()


@dataclass
class VQVAEOptions:
    """vision.model = "vqvae": the codebook's size and how it learns."""

    num_embeddings: int = 64  # codes in the codebook
    embed_dim: int = 8  # size of a code
    commitment: float = 0.25  # weight of the encoder's commitment loss
    ema_decay: float = 0.99  # the codebook follows its assigned vectors by EMA
    dead_after: int = 20  # re-seed a code unused for this many steps from the batch; 0: never
    codebook_init: str = "kmeans"  # kmeans (centres of the first batch) | random


@dataclass
class NVAEOptions:
    """vision.model = "nvae" (seed 004): the hierarchy's scales and groups, its KL schedule and regularisation."""

    base_channels: int = 16  # channels at full resolution, doubled at every halving (seed 004: 20)
    scales: list[int] = field(default_factory=lambda: [4, 8])  # side of each scale's latent grid, top first
    groups_per_scale: int = 2  # latent groups per scale
    latent_channels: int = 2  # channels of a latent group
    top_groups: int = 1  # top groups that make z; vision.latent_dim = top_groups x latent_channels x scales[0]^2
    cells_per_group: int = 1  # residual cells per group in the encoder and the decoder
    kl_warmup: float = 0.3  # the KL weight rises linearly from 1e-4 to 1 over this fraction of training
    spectral_lambda: float = 0.1  # weight of the spectral and batch-norm regularisation (seed 004: 0.1)
    lower_temperature: float = 0.0  # prior temperature of the groups below z when decoding z; 0: their means


@dataclass
class VisionConfig:
    """V: the conv VAE of Ha & Schmidhuber, a conv VQ-VAE, NVAE, or a frozen pretrained encoder; the settings only
    one model reads are in its own sub-table ([vision.vqvae], [vision.nvae], [vision.pretrained])."""

    model: str = "vae"  # vae | vqvae | nvae | pretrained
    latent_dim: int = 32  # vae, nvae, pretrained (its code); a VQ-VAE's z is (frame_size / 16)^2 positions x embed_dim
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # vae, vqvae: the four convs' widths
    free_bits: float = 0.5  # vae: KL floor per latent dimension, in nats (Ha's kl_tolerance)
    kl_weight: float = 1.0  # vae and nvae: beta, the KL's weight
    epochs: int = 10  # passes over the collected frames
    batch_size: int = 64  # frames per step, over all processes under torchrun
    lr: float = 1e-3  # Adam's learning rate
    buffer_episodes: int = 256  # episodes held in memory at once while streaming frames
    seed: int = 0  # initial weights and the order of frames
    vqvae: VQVAEOptions = field(default_factory=VQVAEOptions)  # model = "vqvae": its codebook
    nvae: NVAEOptions = field(default_factory=NVAEOptions)  # model = "nvae": its hierarchy
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)  # model = "pretrained": its encoder


@dataclass
class MemoryConfig:
    """M, the MDN-RNN: built from this section (the fields in `memory.SHAPING` are stored with it) and trained by it."""

    hidden_size: int = 256  # LSTM width: h, what C reads besides z
    cell_to_controller: bool = False  # C also reads M's cell state c: [z, h, c] (the reference code's MODE_ZCH)
    num_gaussians: int = 5  # mixture components of the next-z density
    seq_len: int = 64  # steps of the windows M trains on (truncated backpropagation)
    epochs: int = 20  # passes over the latent sequences
    batch_size: int = 32  # windows per step, over all processes under torchrun
    lr: float = 1e-3  # Adam's learning rate
    random_starts: bool = False  # windows start at random steps, so M cannot time episodes from its reset
    sample_latents: bool = True  # z drawn from V's posterior every batch (Ha); false: V's mean, what C sees when acting
    done_weight: float = 10.0  # up-weights the rare done positives
    reward_weight: float = 1.0  # the reward head's share of the loss
    done_loss_weight: float = 1.0  # the done head's share of the loss
    dropout: float = 0.0  # on the LSTM's output before the heads, in training (and in the dream with dream.dropout)
    reward_from: str = "hidden"  # reward and done read from h_{t+1} | "next": from [h_{t+1}, the z_{t+1} drawn]
    holdout: float = 0.0  # fraction of episodes kept out of M's training for its fidelity report; 0: training data
    seed: int = 0  # initial weights and the order of windows
    ensemble: int = 1  # M's trained on the same data from seeds seed, seed + 1, ...: the first is M, the others only
    #                    measure where M is unsure (dream.disagreement)


@dataclass
class ControllerConfig:
    """C and its CMA-ES search, in the real world or in M's dream."""

    world: str = "real"  # real | dream | codebook: where candidates are scored
    backend: str = "pool"  # real-world episodes: pool (local processes) | vector (one vector env, V/M/C batched) | ray
    address: str = ""  # ray: "auto" or HOST:PORT of a running cluster; "": start a local Ray instance
    population: int = 16  # CMA-ES candidates per generation
    sigma0: float = 0.1  # CMA-ES's initial step around C = 0; no effect on choices without noise (argmax ignores scale)
    rollouts: int = 2  # episodes per candidate, seeds shared by the generation
    generations: int = 20  # CMA-ES generations (before any iterative rounds)
    workers: int = 2  # worker processes (pool), Ray actors (ray) or vector-env copies (vector)
    eval_every: int = 5  # re-evaluate the best and the mean solution every N generations
    eval_rollouts: int = 8  # fresh episodes for each re-evaluation
    select_top: int = 0  # at the search's end, re-score the N best re-evaluated controllers on select_rollouts shared
    #                      fresh episodes and keep the best of those: the top of many 8-episode scores is a lucky one;
    #                      0: off
    select_rollouts: int = 32  # episodes for each of them in that final re-scoring
    confirm_rollouts: int = 0  # a re-evaluated contender that beats the kept controller is re-scored on N more fresh
    #                            episodes and stands on its mean over all eval_rollouts + N: a lucky 8-episode score
    #                            neither replaces the kept controller nor reaches the target; 0: off
    target: float = float("inf")  # stop early once a re-evaluated (with confirm_rollouts: confirmed) score reaches this
    max_steps: int = 0  # 0: the environment's own time limit
    real_rollouts: int = 0  # dream training only: real episodes played at each re-evaluation, to log dream vs real
    fidelity_controllers: int = 6  # dream training: controllers of the search's history scored in both worlds; 0: none
    fidelity_episodes: int = 4  # real episodes for each of them (they only watch; nothing feeds the search)
    seed: int = 0  # CMA-ES's sampling and the rollout seeds
    normalize: bool = False  # search C's weights in units of each input's spread over the data (real and dream
    #                          worlds): one step size then moves quiet and loud inputs alike
    noise: float = 0.0  # std of Gaussian noise on C's outputs wherever C acts (searched in the real world or the
    #                     dream, collecting, evaluated): C is the stochastic policy tanh(W [z, h] + b) + noise; 0: none
    random_actions: float = 0.0  # real-world search: each step's chance a random action replaces C's; 0: off
    #                              C is searched to recover from wrong moves; collection and evaluation never


@dataclass
class DreamConfig:
    """The dream world simulated by M: how its episodes start, sample and end."""

    tau: float = 1.0  # M's sampling temperature
    max_steps: int = 1000  # step cap of a dream episode
    done: str = "sample"  # sample: Bernoulli from M's done head | threshold | never
    done_threshold: float = 0.5  # done = "threshold": an episode ends once M's done probability passes it
    start: str = "data"  # data: first frames of real episodes | along: any frame of them | prior: V's N(0, I)
    dropout: bool = False  # M's dropout (memory.dropout) kept on in the dream, a new mask a step (Dropout's Dream Land)
    disagreement: float = 0.0  # the dream pays reward minus this x the ensemble's spread of predicted next z (the std
    #                            over memory.ensemble M's of their mixtures' means, averaged over z): where M's trained
    #                            alike disagree the dream is made up, and a search that goes there pays for it
    batch: int = 0  # episodes dreamt at once; 0: the whole population x rollouts


@dataclass
class RoundsConfig:
    """Iterative training (Ha & Schmidhuber section 5): collect with C, retrain M, retrain C in the dream."""

    count: int = 0  # rounds after the first dream-trained controller; 0: none
    episodes: int = 100  # real episodes collected per round
    exploration: float = 0.5  # std of Gaussian noise on C's outputs while collecting, on top of controller.noise
    exploration_params: float = 0.0  # std of Gaussian noise on C's parameters, drawn once per collected episode: each
    #                                  drives a nearby controller throughout, the kind of policy the next search tries
    memory_epochs: int = 5  # M's further epochs per round, on old + new episodes
    generations: int = 10  # further CMA-ES generations per round
    sigma: float = 0.0  # > 0: each round restarts CMA-ES at the kept controller with this step size (a trust
    #                     region where M has just seen the kept controller drive); 0: the search goes on
    confirm: bool = False  # after the last round, collect once more with its controller and retrain M, then keep
    #                        whichever of it and the controller it replaced the confirmed dream scores higher: no
    #                        search follows, so the last search's exploits of M are shown to M before C is kept


MOVED = {  # keys a recipe of an earlier release may hold -> where they live now, and why
    **{
        f"dream.{old}": (f"rounds.{new}", "[rounds] holds iterative training")
        for old, new in [
            ("rounds", "count"),
            ("round_episodes", "episodes"),
            ("exploration", "exploration"),
            ("exploration_params", "exploration_params"),
            ("round_memory_epochs", "memory_epochs"),
            ("round_generations", "generations"),
            ("round_sigma", "sigma"),
        ]
    },
    **{
        f"vision.{key}": (f"vision.{model}.{key}", f"[vision.{model}] holds what only that model reads")
        for model, options in [("vqvae", VQVAEOptions), ("nvae", NVAEOptions)]
        for key in (f.name for f in fields(options))
    },
}


@dataclass
class CodebookConfig:
    """Seed 000's codebook world: C edits a latent of V's codebook vectors, scored by a surrogate of the decoded
    network."""

    max_allowed_actions: int = 8  # writes per episode
    num_previous_actions: int = 3  # actions C sees in its observation
    size_penalty: float = 0.0  # objective = surrogate score - size_penalty x size (parameters / the largest network's)


@dataclass
class NASConfig:
    """The architecture search behind the codebook world: MLPs on sklearn's digits (worldmodels.nas)."""

    table: str = ""  # measured architectures (CSV); "": the table shipped in worldmodels/nas/
    samples: int = 20_000  # random architectures V (a VQ-VAE of their encodings) trains on
    slots: int = 4  # codebook vectors in V's latent
    hidden: int = 128  # width of V's encoder and decoder MLPs
    final_seeds: int = 3  # training seeds when the winners are trained for real
    seed: int = 0  # random search's seed


@dataclass
class EvaluateConfig:
    """The final report: N real episodes with fixed seeds."""

    episodes: int = 100  # evaluation episodes, seeds seed, seed + 1, ...
    seed: int = 10_000  # the first evaluation seed, apart from every training seed
    workers: int = 2  # worker processes playing them
    renderer: str = "gymnasium"  # the renderer the score is played on, whatever env.renderer trained with


@dataclass
class Config:
    """A whole recipe: one section per stage."""

    name: str = "run"  # the run folder under --checkpoints and the episode folder under --rollouts
    device: str = "auto"  # auto: cuda, then mps, then cpu
    precision: str = "auto"  # V's and M's training: auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    compile: bool = False  # torch.compile V and M for training (worth it on a GPU for long runs)
    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    dream: DreamConfig = field(default_factory=DreamConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    nas: NASConfig = field(default_factory=NASConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where TOML is looser (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise WorldModelsError(f"recipe key '{key}' must be a table, got {value!r}")
        return _build(typing.cast(type, tp), value, key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise WorldModelsError(f"recipe key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise WorldModelsError(f"recipe key '{key}' must be a table, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise WorldModelsError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if f"{prefix}{key}" in MOVED:
            new, why = MOVED[prefix + key]
            raise WorldModelsError(f"recipe key '{prefix}{key}' is '{new}' now: {why}")
        if key not in known:
            raise WorldModelsError(f"unknown recipe key '{prefix}{key}'")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """Read an override's value as TOML (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


Override = str | tuple[str, Any]  # --set's `section.key=value` (the value in TOML), or a (key, value) pair as is


def apply_overrides(data: dict, overrides: list[Override]) -> dict:
    """Apply overrides to a raw recipe dict: `section.key=value` strings, or (section.key, value) pairs (the CLI's
    own flags, never re-parsed, so any string survives)."""
    for item in overrides:
        if isinstance(item, tuple):
            dotted, value = item
        elif "=" in item:
            dotted, text = item.split("=", 1)
            value = _parse_value(text.strip())
        else:
            raise WorldModelsError(f"--set expects section.key=value, got '{item}'")
        *path, leaf = dotted.strip().split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise WorldModelsError(f"--set '{dotted}': '{part}' is not a section")
        node[leaf] = value
    return data


# Every number in a recipe is finite and not negative, except where these say otherwise.
SIGNED = {
    "env.action_low",
    "env.action_high",
    "collect.keep.low",
    "collect.keep.high",
    "controller.target",
    "vision.pretrained.layer",  # -1: the pooled output
}
INFINITE_OK = {"collect.keep.low", "collect.keep.high", "controller.target"}
POSITIVE = {  # 0 would mean an empty model, an empty batch or a search that cannot move
    "env.frame_size",
    "env.action_repeat",
    "collect.episodes",
    "collect.workers",
    "collect.brownian_sigma",
    "vision.latent_dim",
    "vision.channels",
    "vision.epochs",
    "vision.batch_size",
    "vision.lr",
    "vision.buffer_episodes",
    "vision.vqvae.embed_dim",
    "memory.hidden_size",
    "memory.num_gaussians",
    "memory.seq_len",
    "memory.ensemble",
    "memory.epochs",
    "memory.batch_size",
    "memory.lr",
    "controller.population",
    "controller.sigma0",
    "controller.rollouts",
    "controller.generations",
    "controller.workers",
    "controller.eval_every",
    "controller.eval_rollouts",
    "controller.fidelity_episodes",
    "controller.select_rollouts",
    "dream.max_steps",
    "rounds.episodes",
    "evaluate.episodes",
    "evaluate.workers",
    "nas.samples",
    "nas.slots",
    "nas.hidden",
    "nas.final_seeds",
    "codebook.max_allowed_actions",
}
MAXIMUM = {  # far past any recipe that finishes, short of sizes that exhaust memory or budgets that never end
    "env.frame_size": 1024,
    "env.render_size": 8192,
    "env.action_repeat": 1000,
    "collect.episodes": 1_000_000,
    "collect.workers": 1024,
    "vision.latent_dim": 65_536,
    "vision.pretrained.context": 64,
    "vision.pretrained.hidden": 65_536,
    "vision.channels": 8192,
    "vision.batch_size": 65_536,
    "vision.buffer_episodes": 1_000_000,
    "vision.vqvae.embed_dim": 4096,
    "vision.nvae.base_channels": 4096,
    "memory.hidden_size": 16_384,
    "memory.ensemble": 64,
    "memory.num_gaussians": 1024,
    "memory.seq_len": 100_000,
    "memory.batch_size": 65_536,
    "controller.population": 100_000,
    "controller.rollouts": 100_000,
    "controller.generations": 10_000_000,
    "controller.workers": 1024,
    "controller.eval_rollouts": 100_000,
    "controller.select_top": 100_000,
    "controller.select_rollouts": 100_000,
    "controller.confirm_rollouts": 100_000,
    "dream.max_steps": 10_000_000,
    "dream.batch": 10_000_000,
    "rounds.episodes": 1_000_000,
    "evaluate.episodes": 1_000_000,
    "evaluate.workers": 1024,
    "nas.samples": 10_000_000,
    "nas.slots": 4096,
    "nas.hidden": 65_536,
    "nas.final_seeds": 100_000,
    "env.max_steps": 100_000_000,
    "collect.max_steps": 100_000_000,
    "controller.max_steps": 100_000_000,
    "vision.epochs": 1_000_000,
    "memory.epochs": 1_000_000,
    "rounds.count": 100_000,
    "rounds.generations": 10_000_000,
    "rounds.memory_epochs": 1_000_000,
    "controller.eval_every": 10_000_000,
    "controller.fidelity_controllers": 100_000,
    "controller.fidelity_episodes": 100_000,
    "controller.real_rollouts": 100_000,
    "vision.vqvae.num_embeddings": 1_000_000,
    "vision.vqvae.dead_after": 1_000_000_000,
    "vision.nvae.scales": 4096,
    "vision.nvae.groups_per_scale": 1024,
    "vision.nvae.cells_per_group": 1024,
    "vision.nvae.latent_channels": 4096,
    "codebook.max_allowed_actions": 1_000_000,
    "codebook.num_previous_actions": 1_000_000,
    # rates and spreads: far past any that trains, short of floats that overflow on their first use
    "controller.sigma0": 1e6,
    "controller.noise": 1e6,
    "collect.brownian_sigma": 1e6,
    "collect.driver_noise": 1e6,
    "vision.lr": 1e3,
    "memory.lr": 1e3,
    "dream.tau": 1e3,
    "dream.disagreement": 1e6,
    "rounds.sigma": 1e6,
    "rounds.exploration": 1e6,
    "rounds.exploration_params": 1e6,
}


def _numbers(obj: Any, prefix: str = ""):
    """(key, value) for every number in a config, list items under their list's key."""
    for f in fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, key + ".")
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    yield from _numbers(item, key + ".")
                elif isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield key, item
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def check_numbers(cfg: Config) -> None:
    """Refuse NaN, infinities, negatives, zeros where a size belongs and sizes no machine holds, naming the key."""
    for key, value in _numbers(cfg):
        if value != value:
            raise WorldModelsError(f"{key} must be a number, got nan")
        if math.isinf(value) and key not in INFINITE_OK:
            raise WorldModelsError(f"{key} must be finite, got {value}")
        if value < 0 and key not in SIGNED:
            raise WorldModelsError(f"{key} must not be negative, got {value}")
        if value == 0 and key in POSITIVE:
            raise WorldModelsError(f"{key} must be positive, got {value}")
        if key in MAXIMUM and value > MAXIMUM[key]:
            raise WorldModelsError(f"{key} is {value}, more than the {MAXIMUM[key]:,} a run can use; lower it")


def check_name(name: str) -> None:
    """A run name is one folder name: no path separators, no '..', no quotes or other shell-special characters."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name) or ".." in name:
        raise WorldModelsError(
            f"run name {name!r} must be letters, digits, '.', '_' or '-' (starting with a letter or "
            "digit, no '..'): it names a folder inside --checkpoints and --rollouts"
        )


Check = tuple[bool, str]  # a condition that must hold, and the message when it does not

CHOICES = {  # the string settings and the values each may take: the checks and the CLI's flags read them here
    "precision": ("auto", "bf16", "fp32"),
    "collect.policy": ("random", "brownian"),
    "env.renderer": ("gymnasium", "fast"),
    "evaluate.renderer": ("gymnasium", "fast"),
    "vision.model": ("vae", "vqvae", "nvae", "pretrained"),
    "vision.vqvae.codebook_init": ("kmeans", "random"),
    "vision.pretrained.compressor": ("autoencoder", "linear"),
    "memory.reward_from": ("hidden", "next"),
    "controller.backend": ("pool", "vector", "ray"),
    "dream.done": ("sample", "threshold", "never"),
    "dream.start": ("data", "along", "prior"),
}


def one_of(choices: tuple[str, ...]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [f"'{c}'" for c in choices]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def _choice_checks(cfg: Config) -> list[Check]:
    """Every string setting is one of its CHOICES."""
    checks = []
    for key, choices in CHOICES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        checks.append((value in choices, f"{key} must be {one_of(choices)}, got '{value}'"))
    return checks


ENCODER_KINDS = ("hf", "run", "module", "export")  # where a pretrained V's frozen encoder comes from


def encoder_source_problem(source: str) -> str | None:
    """Why `source` names no encoder (the one-line message), or None."""
    kind, _, where = source.partition(":")
    if kind in ENCODER_KINDS and where:
        return None
    return (
        "vision.pretrained.encoder must be 'hf:FOLDER' (a local Hugging Face model), 'run:FOLDER' (another run's V), "
        f"'module:PACKAGE.MODULE:FUNCTION' (returns an nn.Module) or 'export:FILE' (torch.export), got '{source}'"
    )


def _pretrained_checks(p: PretrainedConfig, used: bool) -> list[Check]:
    """vision.pretrained: where its encoder comes from and how its features are compressed."""
    problem = encoder_source_problem(p.encoder) if used else None
    return [
        (problem is None, problem or ""),
        (p.layer >= -1, f"vision.pretrained.layer must be -1 (the pooled output) or a hidden state, got {p.layer}"),
        (p.context >= 1 and p.hidden >= 1, "vision.pretrained.context and vision.pretrained.hidden must be at least 1"),
        (not p.concat or p.encoder.startswith("run:"), "vision.pretrained.concat needs a 'run:' encoder (its z)"),
    ]


def _vqvae_checks(q: VQVAEOptions) -> list[Check]:
    """vision.vqvae: the codebook's size and decay."""
    return [
        (
            2 <= q.num_embeddings <= 32767 and q.embed_dim >= 1 and q.dead_after >= 0,
            "vision.vqvae.num_embeddings must be 2..32767 (codes are stored as int16), vision.vqvae.embed_dim at "
            "least 1, vision.vqvae.dead_after not negative",
        ),
        (0 <= q.ema_decay < 1, f"vision.vqvae.ema_decay must be in [0, 1), got {q.ema_decay}"),
    ]


def _nvae_checks(n: NVAEOptions) -> list[Check]:
    """vision.nvae: sizes at least 1, the KL warm-up a fraction, the weights not negative."""
    return [
        *[
            (getattr(n, key) >= 1, f"vision.nvae.{key} must be at least 1, got {getattr(n, key)}")
            for key in ("base_channels", "groups_per_scale", "latent_channels", "cells_per_group")
        ],
        (0 <= n.kl_warmup <= 1, f"vision.nvae.kl_warmup must be a fraction of training in [0, 1], got {n.kl_warmup}"),
        *[
            (getattr(n, key) >= 0, f"vision.nvae.{key} must not be negative, got {getattr(n, key)}")
            for key in ("spectral_lambda", "lower_temperature")
        ],
    ]


def _vision_checks(cfg: Config) -> list[Check]:
    """V: its model's sub-table, the KL's weight."""
    return [
        *_pretrained_checks(cfg.vision.pretrained, cfg.vision.model == "pretrained"),
        *_vqvae_checks(cfg.vision.vqvae),
        *_nvae_checks(cfg.vision.nvae),
        (cfg.vision.kl_weight >= 0, f"vision.kl_weight must not be negative, got {cfg.vision.kl_weight}"),
    ]


def _data_checks(cfg: Config) -> list[Check]:
    """What the data looks like: frames, crop, conv widths, collected episodes and actions."""
    return [
        (
            cfg.env.frame_size % 16 == 0 and cfg.env.frame_size > 0,
            f"env.frame_size must be a positive multiple of 16, got {cfg.env.frame_size}",
        ),
        (
            len(cfg.env.crop) == 4
            and 0 <= cfg.env.crop[0] < cfg.env.crop[1] <= 1
            and 0 <= cfg.env.crop[2] < cfg.env.crop[3] <= 1,
            "env.crop must be [top, bottom, left, right] fractions with top < bottom and left < right, "
            f"got {cfg.env.crop}",
        ),
        (
            cfg.env.render_size == [] or (len(cfg.env.render_size) == 2 and min(cfg.env.render_size) >= 16),
            f"env.render_size must be [width, height] of at least 16 pixels each, or [], got {cfg.env.render_size}",
        ),
        *(
            (
                value == "gymnasium" or "CarRacing" in cfg.env.id,
                f"{key} = 'fast' draws CarRacing only; '{cfg.env.id}' is drawn by gymnasium (use 'gymnasium')",
            )
            for key, value in (("env.renderer", cfg.env.renderer), ("evaluate.renderer", cfg.evaluate.renderer))
        ),
        (len(cfg.vision.channels) == 4, "vision.channels must list 4 conv widths"),
        (cfg.collect.episodes > 0, "collect.episodes must be positive"),
        (
            cfg.collect.driver_fraction <= 1 and (cfg.collect.driver_fraction == 0) == (cfg.collect.driver == ""),
            "collect.driver_fraction must be in (0, 1] with a collect.driver run folder, and 0 without one",
        ),
        (cfg.env.action_repeat >= 1, f"env.action_repeat must be at least 1, got {cfg.env.action_repeat}"),
        (
            len(cfg.env.action_low) == len(cfg.env.action_high)
            and all(lo < hi for lo, hi in zip(cfg.env.action_low, cfg.env.action_high)),
            "env.action_low and env.action_high must have the same length, each low below its high",
        ),
    ]


def _training_checks(cfg: Config) -> list[Check]:
    """Training sizes and fractions: C's search, evaluation, epochs, M's dropout and holdout, fidelity."""
    return [
        (cfg.controller.population >= 2, "controller.population must be at least 2"),
        (cfg.controller.rollouts >= 1, "controller.rollouts must be at least 1"),
        (cfg.evaluate.episodes >= 1, "evaluate.episodes must be at least 1"),
        (cfg.vision.epochs >= 1 and cfg.memory.epochs >= 1, "vision.epochs and memory.epochs must be at least 1"),
        (cfg.controller.eval_every >= 1, "controller.eval_every must be at least 1"),
        (0 <= cfg.memory.dropout < 1, f"memory.dropout must be in [0, 1), got {cfg.memory.dropout}"),
        (0 <= cfg.memory.holdout < 1, f"memory.holdout must be a fraction in [0, 1), got {cfg.memory.holdout}"),
        (
            cfg.controller.fidelity_controllers >= 0 and cfg.controller.fidelity_episodes >= 1,
            "controller.fidelity_controllers must not be negative, controller.fidelity_episodes at least 1",
        ),
    ]


def _world_checks(cfg: Config) -> list[Check]:
    """Where C trains: the codebook world and its actions, NAS sizes (the world's name is checked against the worlds
    registered, `evaluators.check_world_name`, which sits above the recipe)."""
    return [
        (
            (cfg.controller.world == "codebook") <= (cfg.vision.model == "vqvae"),
            "the codebook world needs vision.model = 'vqvae'",
        ),
        (
            0 <= cfg.controller.random_actions < 1
            and (cfg.controller.random_actions == 0 or cfg.controller.world == "real"),
            f"controller.random_actions must be in [0, 1) and perturbs searches in the real world only, got "
            f"{cfg.controller.random_actions} in the {cfg.controller.world} world",
        ),
        (
            cfg.controller.noise == 0 or cfg.controller.world != "codebook",
            "controller.noise is noise on C's outputs in the real world and the dream; the codebook world takes none",
        ),
        (
            cfg.codebook.max_allowed_actions >= 1 and cfg.codebook.num_previous_actions >= 0,
            "codebook.max_allowed_actions must be at least 1, codebook.num_previous_actions not negative",
        ),
        (
            min(cfg.nas.samples, cfg.nas.slots, cfg.nas.hidden, cfg.nas.final_seeds) >= 1,
            "nas.samples, nas.slots, nas.hidden and nas.final_seeds must be at least 1",
        ),
    ]


def _dream_checks(cfg: Config) -> list[Check]:
    """The dream: how episodes end and start, its temperature, length and rounds."""
    return [
        (cfg.dream.tau >= 0, f"dream.tau must be at least 0, got {cfg.dream.tau}"),
        (cfg.dream.max_steps >= 1, "dream.max_steps must be at least 1"),
        (cfg.dream.batch >= 0, "dream.batch must not be negative"),
        (cfg.rounds.count >= 0, "rounds.count must not be negative"),
        (
            cfg.dream.disagreement == 0 or (cfg.memory.ensemble >= 2 and cfg.vision.model != "vqvae"),
            "dream.disagreement needs memory.ensemble of 2 or more M's over a continuous V (not vqvae), got "
            f"memory.ensemble = {cfg.memory.ensemble} with vision.model = '{cfg.vision.model}'",
        ),
    ]


def validate(cfg: Config) -> Config:
    """Check values that types alone cannot: ranges and choices."""
    check_name(cfg.name)
    check_numbers(cfg)
    checks = [
        *_choice_checks(cfg),
        *_vision_checks(cfg),
        *_data_checks(cfg),
        *_training_checks(cfg),
        *_world_checks(cfg),
        *_dream_checks(cfg),
    ]
    for ok, message in checks:
        if not ok:
            raise WorldModelsError(message)
    if cfg.vision.model == "nvae":
        n = cfg.vision.nvae
        nvae_latent_dim(
            cfg.env.frame_size, n.scales, n.groups_per_scale, n.top_groups, n.latent_channels, cfg.vision.latent_dim
        )
    return cfg


def nvae_latent_dim(
    frame_size: int, scales: list[int], groups_per_scale: int, top_groups: int, latent_channels: int, latent_dim: int
) -> int:
    """The size of NVAE's z for these sizes, or one clear error saying which recipe value to change."""
    if not scales or min(scales) < 2 or any(b != 2 * a for a, b in zip(scales, scales[1:])):
        # a 1x1 grid would leave batch norm a single value per channel on a one-frame batch
        raise WorldModelsError(
            f"vision.nvae.scales must start at 2 or more and double from one scale to the next, top first, "
            f"e.g. [4, 8]; got {scales}"
        )
    ratio = frame_size // scales[-1]
    if frame_size % scales[-1] or ratio & (ratio - 1):
        raise WorldModelsError(
            f"env.frame_size {frame_size} must be the finest of vision.nvae.scales ({scales[-1]}) times a power of 2"
        )
    if not 1 <= top_groups <= groups_per_scale:
        raise WorldModelsError(
            f"vision.nvae.top_groups must be between 1 and groups_per_scale ({groups_per_scale}), got {top_groups}"
        )
    flat = top_groups * latent_channels * scales[0] ** 2
    if latent_dim != flat:
        raise WorldModelsError(
            f"vision.latent_dim is {latent_dim} but NVAE's z is top_groups x latent_channels x "
            f"scales[0]^2 = {flat}; make them equal"
        )
    return flat


def from_dict(data: dict) -> Config:
    """Build and validate a Config from a raw (TOML-shaped) dict."""
    return validate(_build(Config, data))


RECIPES = Path(__file__).resolve().parent / "recipes"  # the recipes that install with the package


def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every recipe shipped with the package."""
    return {p.stem: p for p in sorted(RECIPES.glob("*.toml"))}


def find_recipe(name: str | Path) -> Path:
    """A recipe file: the path itself when it exists, else the shipped recipe of that name ("cartpole",
    "envs/cartpole.toml")."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if (
        path.suffix in ("", ".toml")
        and path.stem in shipped
        and (path.parent == Path(".") or path.parent.name == "envs")
    ):
        return shipped[path.stem]
    raise WorldModelsError(
        f"recipe '{path}' not found; the shipped recipes are {', '.join(shipped)} (`worldmodels recipes` lists them)"
    )


def load(path: str | Path, overrides: list[Override] | None = None) -> Config:
    """Load a recipe TOML (a path, or the name of a shipped recipe), apply overrides, validate."""
    path = find_recipe(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WorldModelsError(f"recipe '{path}' is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorldModelsError(f"recipe '{path}' is not valid TOML: {exc}") from None
    data.setdefault("name", path.stem)
    return from_dict(apply_overrides(data, overrides or []))


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config (infinite floats kept as TOML's inf)."""
    return dataclasses.asdict(cfg)


def field_meanings() -> dict[str, str]:
    """'section.key' -> the comment beside the field in this module: what `worldmodels recipe show` prints."""
    import inspect

    meanings = {}
    todo = [("", Config)]
    while todo:  # the recipe's sections, then their sub-tables (vision.pretrained)
        section, cls = todo.pop(0)
        for f in fields(cls):
            if isinstance(f.type, str) and f.type in globals() and dataclasses.is_dataclass(globals()[f.type]):
                todo.append((f"{section}.{f.name}" if section else f.name, globals()[f.type]))
        for match in re.finditer(r"^    (\w+): [^=\n]+=[^#\n]*#\s*(.+)$", inspect.getsource(cls), re.MULTILINE):
            meanings[f"{section}.{match[1]}" if section else match[1]] = match[2].strip()
    return meanings


def _toml_value(value: Any) -> str:
    """One value as TOML, inline (lists of tables as inline tables, so every field stays on its own line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(value)


def explain(cfg: Config) -> str:
    """The whole resolved recipe as TOML, each field followed by its meaning."""
    meanings, data = field_meanings(), to_dict(cfg)
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {meanings[key]}" if key in meanings else ""))
    tables = [(name, getattr(cfg, name), values) for name, values in data.items() if isinstance(values, dict)]
    while tables:  # a section's own keys, then its sub-tables ([vision.pretrained]) after it
        section, obj, values = tables.pop(0)
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            if dataclasses.is_dataclass(getattr(obj, key)):  # a sub-table; a dict field (env.kwargs) stays inline
                tables.insert(0, (f"{section}.{key}", getattr(obj, key), value))
                continue
            note = meanings.get(f"{section}.{key}")
            lines.append(f"{key} = {_toml_value(value)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def dumps(cfg: Config) -> str:
    """The resolved recipe as TOML text."""
    return tomli_w.dumps(to_dict(cfg))
