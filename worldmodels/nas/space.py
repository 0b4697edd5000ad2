"""The search space: MLPs on sklearn's 8x8 digits, their encodings, and real training."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MAX_LAYERS = 4
WIDTHS = (8, 16, 32, 64, 128, 256)
ACTIVATIONS = ("relu", "tanh", "elu", "sigmoid")
# One slot holds nothing (None) or a (width, activation) hidden layer: 1 + 6 * 4 = 25 choices
CHOICES: list[tuple[int, str] | None] = [None, *itertools.product(WIDTHS, ACTIVATIONS)]
CHOICE_INDEX = {choice: i for i, choice in enumerate(CHOICES)}
ENCODING_DIM = MAX_LAYERS * len(CHOICES)
INPUTS, CLASSES = 64, 10

_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "sigmoid": nn.Sigmoid}


@dataclass(frozen=True)
class Architecture:
    """An MLP 64 -> hidden layers -> 10; no hidden layer is softmax regression."""

    layers: tuple[tuple[int, str], ...]

    def __post_init__(self):
        if len(self.layers) > MAX_LAYERS:
            raise ValueError(f"{len(self.layers)} hidden layers, at most {MAX_LAYERS} allowed")
        for layer in self.layers:
            if not isinstance(layer, (tuple, list)) or tuple(layer) not in CHOICE_INDEX:
                raise ValueError(
                    f"hidden layer {layer!r} is not a (width in {WIDTHS}, activation in {ACTIVATIONS}) pair"
                )
        object.__setattr__(self, "layers", tuple((int(w), str(a)) for w, a in self.layers))

    def __str__(self) -> str:
        return "-".join(f"{w}{a}" for w, a in self.layers) or "linear"

    @property
    def depth(self) -> int:
        """The number of hidden layers."""
        return len(self.layers)

    @classmethod
    def parse(cls, text: str) -> Architecture:
        """The inverse of str(): '64relu-32tanh' or 'linear'."""
        text = text.strip()
        if text == "linear":
            return cls(())
        layers = []
        for part in text.split("-"):
            width = part.rstrip("abcdefghijklmnopqrstuvwxyz")
            activation = part[len(width) :]
            if not width.isdigit() or (int(width), activation) not in CHOICE_INDEX:
                raise ValueError(
                    f"bad architecture {text!r}: layer {part!r} is not <width><activation> "
                    f"with width in {WIDTHS} and activation in {ACTIVATIONS}"
                )
            layers.append((int(width), activation))
        if len(layers) > MAX_LAYERS:
            raise ValueError(f"bad architecture {text!r}: {len(layers)} hidden layers, at most {MAX_LAYERS} allowed")
        return cls(tuple(layers))


def encode(arch: Architecture) -> np.ndarray:
    """One-hot of each slot's choice, hidden layers first, then empty slots: (ENCODING_DIM,) float32."""
    slots = [CHOICE_INDEX[layer] for layer in arch.layers] + [0] * (MAX_LAYERS - arch.depth)
    onehot = np.zeros((MAX_LAYERS, len(CHOICES)), np.float32)
    onehot[np.arange(MAX_LAYERS), slots] = 1.0
    return onehot.reshape(-1)


def decode_slots(choice_indices: Sequence[int]) -> Architecture:
    """The architecture from one choice index per slot; empty slots anywhere are skipped."""
    if len(choice_indices) != MAX_LAYERS:
        raise ValueError(f"expected {MAX_LAYERS} slot choices, got {len(choice_indices)}")
    return Architecture(tuple(choice for i in choice_indices if (choice := CHOICES[int(i)]) is not None))


def decode(encoding_or_logits: np.ndarray) -> Architecture:
    """Argmax per slot of a one-hot encoding (or a controller's logits), then decode_slots."""
    slots = np.asarray(encoding_or_logits).reshape(MAX_LAYERS, len(CHOICES)).argmax(axis=1)
    return decode_slots(slots.tolist())


def sample(rng: np.random.Generator) -> Architecture:
    """A random architecture: depth uniform in 1..MAX_LAYERS, each layer's width and activation uniform."""
    depth = int(rng.integers(1, MAX_LAYERS + 1))
    return Architecture(
        tuple((WIDTHS[rng.integers(len(WIDTHS))], ACTIVATIONS[rng.integers(len(ACTIVATIONS))]) for _ in range(depth))
    )


def num_params(arch: Architecture, inputs: int = INPUTS, classes: int = CLASSES) -> int:
    """Exact weights + biases of build(arch)."""
    sizes = [inputs, *(w for w, _ in arch.layers), classes]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in itertools.pairwise(sizes))


def build(arch: Architecture) -> nn.Sequential:
    """The torch model: Linear + activation per hidden layer, then a Linear to the 10 class logits."""
    modules: list[nn.Module] = []
    fan_in = INPUTS
    for width, activation in arch.layers:
        modules += [nn.Linear(fan_in, width), _ACTIVATION_MODULES[activation]()]
        fan_in = width
    modules.append(nn.Linear(fan_in, CLASSES))
    return nn.Sequential(*modules)


@functools.lru_cache(maxsize=4)
def digits_split(seed: int = 0) -> dict[str, torch.Tensor]:
    """sklearn's 1797 digits, pixels / 16, stratified 60/20/20 train/val/test; cached (one call per architecture)."""
    from sklearn.datasets import (
        load_digits,  # sklearn is slow to import: only pay for it when training
    )
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    arrays = {
        "x_train": x_train,
        "y_train": y_train,
        "x_val": x_val,
        "y_val": y_val,
        "x_test": x_test,
        "y_test": y_test,
    }
    return {k: torch.as_tensor(v, dtype=torch.float32 if k.startswith("x") else torch.int64) for k, v in arrays.items()}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of x classified as y."""
    return (model(x).argmax(dim=1) == y).float().mean().item()


def train(arch: Architecture, seed: int = 0, epochs: int = 30, lr: float = 3e-3, batch_size: int = 64) -> dict:
    """Train arch from scratch with Adam; deterministic for a seed. Returns val_acc, test_acc, seconds."""
    data = digits_split()  # outside the clock: loaded once per process, not per training
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build(arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    x, y = data["x_train"], data["y_train"]
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=shuffle).split(batch_size):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return {
        "val_acc": accuracy(model, data["x_val"], data["y_val"]),
        "test_acc": accuracy(model, data["x_test"], data["y_test"]),
        "seconds": time.perf_counter() - start,
    }
