"""Run folders and checkpoints: atomic writes, safe loads, clear errors."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from worldmodels import config as config_lib
from worldmodels.core.errors import WorldModelsError


class ControllerInputs(Protocol):
    """What C sits on (a `WorldModel`): the size of the input it hands C."""

    @property
    def controller_input(self) -> int: ...


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are 0600, unreadable by a shared TensorBoard


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through `write(file)` to a temp file beside `path`, then rename: never a half-written file, and the old
    one intact when the write fails (a full disk is an OSError naming `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a write or close says only why: name the file it was for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: Path, payload: dict) -> None:
    """Save a checkpoint dict (state_dicts and plain data) atomically."""
    buffer = io.BytesIO()  # serialised first: torch's zip writer reports a full disk as a RuntimeError of its own
    torch.save(payload, buffer)
    atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def load(path: Path, kind: str) -> dict:
    """Load a checkpoint written by `save` with weights_only=True; check it is a `kind` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise WorldModelsError(f"checkpoint '{path}' not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise WorldModelsError(
            f"checkpoint '{path}' is unreadable ({type(exc).__name__}); delete it to retrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise WorldModelsError(f"checkpoint '{path}' is not a {kind} checkpoint")
    return payload


def check_same_config(path: Path, saved: dict, wanted: dict, section: str = "") -> None:
    """Refuse to resume or use a file whose recorded config differs from the recipe's: one line naming the file,
    the field, both values and what to do."""
    for key, value in wanted.items():
        if key in saved and saved[key] != value:
            field = f"{section}.{key}" if section else key
            raise WorldModelsError(
                f"'{path}' was made with {field}={saved[key]!r} but the recipe says {value!r}; "
                f"use another --run or delete the file to make it again"
            )


def fingerprint(cfg: config_lib.Config) -> dict:
    """The recipe fields every file of a run is shaped by, whatever the model: the world, its frames, its actions.
    Stored in each checkpoint and latent manifest, checked by every reader (`check_fingerprint`)."""
    e = cfg.env
    return {
        "env.id": e.id,
        "env.frame_size": e.frame_size,
        "env.crop": list(e.crop),
        "env.render_size": list(e.render_size),
        "env.action_low": list(e.action_low),
        "env.action_high": list(e.action_high),
    }


def check_fingerprint(path: Path, saved: dict, cfg: config_lib.Config) -> None:
    """Refuse a file made for another world than the recipe's (a file older than fingerprints is let through)."""
    world = saved.get("world") or {}
    if not isinstance(world, dict):
        raise WorldModelsError(f"'{path}' is damaged (its world is not a table); delete it to make it again")
    check_same_config(path, world, fingerprint(cfg))


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file this program derived (a report, a history), or None when it is absent or damaged: it is remade."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, kind) else None


def write_if_changed(path: Path, content: str | bytes) -> bool:
    """Write `content` atomically unless the file already holds it (a finished stage, run again, writes nothing);
    True if written."""
    path, data = Path(path), content.encode() if isinstance(content, str) else content
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write(path, lambda f: f.write(data))
    return True


def save_json(path: Path, data: Any) -> bool:
    """Write JSON atomically; a file that already says the same is left untouched. True if written."""
    return write_if_changed(path, json.dumps(data, indent=2))


class Run:
    """The folder of one run: resolved recipe, checkpoints, latents, report, TensorBoard events."""

    def __init__(self, root: Path | str, cfg: config_lib.Config):
        self.dir = Path(root) / cfg.name
        self.cfg = cfg

    @property
    def vision(self) -> Path:
        return self.dir / "vision.pt"

    @property
    def memory(self) -> Path:
        return self.dir / "memory.pt"

    def member(self, k: int) -> Path:
        """M's file for member k of memory.ensemble: 0 is M itself."""
        return self.memory if k == 0 else self.dir / f"memory_{k}.pt"

    @property
    def controller(self) -> Path:
        return self.dir / "controller.pt"

    @property
    def cmaes(self) -> Path:
        return self.dir / "cmaes.pt"

    @property
    def latents(self) -> Path:
        return self.dir / "latents"

    @property
    def report(self) -> Path:
        return self.dir / "report.json"

    @property
    def dream_report(self) -> Path:
        return self.dir / "report_dream.json"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tb"

    def require(self, path: Path, stage: str) -> Path:
        """Fail with one line if a stage's input is missing."""
        if not self.dir.is_dir():
            raise WorldModelsError(f"run folder '{self.dir}' does not exist; run the earlier stages first")
        if not path.exists():
            raise WorldModelsError(f"'{path}' not found; run `worldmodels {stage}` first")
        return path

    def check_world(self) -> None:
        """Every file of the run that records the world it was made for was made for the recipe's (`fingerprint`)."""
        for path, kind in ((self.vision, "vision"), (self.memory, "memory"), (self.controller, "controller")):
            if path.is_file():
                check_fingerprint(path, load(path, kind), self.cfg)
        if self.cmaes.is_file():  # read as data only (weights_only): its pycma object is rebuilt by search_state
            check_fingerprint(self.cmaes, load(self.cmaes, "cmaes"), self.cfg)
        manifest = read_json(self.latents / "manifest.json")
        if manifest is not None:
            check_fingerprint(self.latents / "manifest.json", manifest, self.cfg)

    def write_recipe(self) -> None:
        """Record the resolved recipe this run was made with (left untouched when it says the same:
        a finished run writes nothing)."""
        write_if_changed(self.dir / "recipe.toml", config_lib.dumps(self.cfg))


def save_controller(path: Path, flat: np.ndarray, input_dim: int, score: float, generation: int, world: dict) -> None:
    """C's checkpoint: its flat parameters, the input size it reads, its score, the generation it came from and the
    world it acts in (`fingerprint`)."""
    save(
        path,
        {
            "kind": "controller",
            "config": {"input_dim": input_dim},
            "world": world,
            "params": torch.as_tensor(flat, dtype=torch.float32),
            "score": float(score),
            "generation": generation,
        },
    )


def load_controller(path: Path, model: ControllerInputs) -> dict:
    """C's checkpoint, checked against the world model it will sit on."""
    saved = load(path, "controller")
    if saved["config"]["input_dim"] != model.controller_input:
        raise WorldModelsError(
            f"'{path}' was trained on inputs of size {saved['config']['input_dim']} but V and M give "
            f"{model.controller_input}; retrain the controller"
        )
    return saved
