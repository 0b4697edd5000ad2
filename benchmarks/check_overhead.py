"""The run-folder checks' share of each stage's time on the CartPole pipeline (issue 44's checks: symbolic links out
of a run folder, the recipe's ceilings, cmaes.pt's schema, the world fingerprints, the episode and latent checks).
One JSON line per stage, then one with the totals.

    python benchmarks/check_overhead.py [envs/cartpole.toml] [--set collect.episodes=20 ...]
                                        [--checkpoints DIR] [--rollouts DIR] [--keep]

Each stage runs in this process as `worldmodels STAGE` runs it (`cli.run_stage`: the recipe loaded and checked, the
folders' locks, `check_run`, the stage function), in the pipeline's order: collect, train-vision, encode,
train-memory, train-controller, evaluate. Then each runs a second time on the finished run, `STAGE (again)`: a
finished stage reads its files and checks them and does little else, so there the checks' share is largest
(evaluate, as the CLI runs it, plays its episodes again). Last, `pipeline (again)`: the whole pipeline on the
finished run, every stage skipping itself.

Every check function is wrapped by a timer where it is looked up: its module's attribute (or its class's), and every
name a `from x import y` bound to it in a worldmodels module. A row's `calls` counts each check's calls; `checks_s`
sums the time of the outermost check on the thread, so a check called inside another (`check_fingerprint` inside
`Run.check_world`, `_check_layout` inside `check_episode_file`, `_check_like`'s recursion) is not counted twice;
`check_s` splits `checks_s` by outermost check. `fraction` is `checks_s / stage_s`.

`read_latent`'s checks (latent width, finiteness) are lines inside the reader, not functions: the wrapper replays
them on the arrays the reader returned and counts the replay's time as theirs (and takes it off `stage_s`, which it
would otherwise add to); the vision-id check is one string comparison and is not replayed. `other_s` gives, for
scale, the time of whole `read_latent` calls, of `checkpoints.save` (the buffered write of the disk-full change) and of
`checkpoints.load`, with the share of it that checks spend reading whole checkpoints (`Run.check_world`, `check_run`).

Not measured: checks in worker processes. Collection, the controller search's real episodes and evaluation play in
spawned pool processes, which import the package afresh, unpatched; none of the checks above runs there (workers
write episodes and play them), and every check the parent runs (collect reading back each episode it stored, the
locks, `check_run`) is counted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import types
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from worldmodels import cli, config
from worldmodels.controller import search_state
from worldmodels.data import episodes, latents
from worldmodels.data.episodes import EpisodeLayout, EpisodeStore
from worldmodels.runs import checkpoints, lock
from worldmodels.runs.checkpoints import Run
from worldmodels.stages import evaluation, evolution, fidelity, pipeline, sweep, watch  # noqa: F401  # as the CLI does

STAGES = ["collect", "train-vision", "encode", "train-memory", "train-controller", "evaluate"]
CHECKS: dict[str, tuple[Any, str]] = {  # name -> (where it is defined, attribute)
    "lock.confine": (lock, "confine"),
    "config.check_numbers": (config, "check_numbers"),
    "search_state._check_like": (search_state, "_check_like"),
    "search_state._check_ranges": (search_state, "_check_ranges"),
    "search_state._check_progress": (search_state, "_check_progress"),
    "checkpoints.check_same_config": (checkpoints, "check_same_config"),
    "checkpoints.check_fingerprint": (checkpoints, "check_fingerprint"),
    "Run.check_world": (Run, "check_world"),
    "stages.check_run": (evaluation, "check_run"),
    "EpisodeLayout.check_headers": (EpisodeLayout, "check_headers"),
    "EpisodeLayout.check_values": (EpisodeLayout, "check_values"),
    "episodes._check_layout": (episodes, "_check_layout"),
    "episodes.check_episode_file": (episodes, "check_episode_file"),
    "EpisodeStore.check_world": (EpisodeStore, "check_world"),
}
LATENT_CHECKS = "read_latent: width, finiteness (replayed)"
OTHER: dict[str, tuple[Any, str]] = {  # timed for scale, not checks
    "checkpoints.save": (checkpoints, "save"),
    "checkpoints.load": (checkpoints, "load"),
}


class Timers:
    """Calls and seconds of the wrapped functions; a check's seconds count only when no other check is running on
    the thread."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # outermost checks
        self.other: defaultdict[str, float] = defaultdict(float)  # whole calls of non-checks, for scale
        self.replayed = 0.0  # seconds of replayed checks: work the stage itself does not do
        self.patched: dict[str, list[str]] = {}

    def check(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.calls[name] += 1
            if getattr(self.local, "inside", False):
                return fn(*args, **kwargs)
            self.local.inside = True
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.local.inside = False

        return timed

    def whole(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.other[name] += time.perf_counter() - start
                if getattr(self.local, "inside", False):  # a whole checkpoint read by a check
                    self.other[f"{name} (inside checks)"] += time.perf_counter() - start

        return timed

    def read_latent(self, fn: Callable) -> Callable:
        """`read_latent`, timed whole, with its width and finiteness checks replayed and timed on what it read."""

        @functools.wraps(fn)
        def timed(path: Path, width: int | None = None, vision_id: str | None = None) -> latents.LatentEpisode:
            self.calls[LATENT_CHECKS] += 1
            start = time.perf_counter()
            episode = fn(path, width, vision_id)
            read = time.perf_counter()
            numbers = (episode.mu, episode.logstd, episode.action, episode.reward)
            wide = width is None or episode.mu.shape[1] == width
            finite = all(a.dtype.kind in "fiub" and np.isfinite(a).all() for a in numbers)
            end = time.perf_counter()
            assert wide and finite, f"{path}: read_latent let through what its checks refuse"
            self.other["read_latent"] += read - start
            self.replayed += end - read
            if not getattr(self.local, "inside", False):
                self.seconds[LATENT_CHECKS] += end - read
            return episode

        return timed

    def patch(self, name: str, owner: Any, attribute: str, wrap: Callable[[Callable], Callable]) -> None:
        """Replace `owner.attribute` and every worldmodels module global bound to the same function."""
        original = vars(owner)[attribute]
        wrapped = wrap(original)
        setattr(owner, attribute, wrapped)
        label = owner.__name__ if isinstance(owner, types.ModuleType) else f"{owner.__module__}.{owner.__qualname__}"
        where = [f"{label}.{attribute}"]
        for module_name, module in list(sys.modules.items()):
            if module is owner or not module_name.startswith("worldmodels"):
                continue
            for global_name, value in list(vars(module).items()):
                if value is original:
                    setattr(module, global_name, wrapped)
                    where.append(f"{module_name}.{global_name}")
        self.patched[name] = where

    def install(self) -> None:
        for name, (owner, attribute) in CHECKS.items():
            self.patch(name, owner, attribute, functools.partial(self.check, name))
        self.patch(LATENT_CHECKS, latents, "read_latent", self.read_latent)
        for name, (owner, attribute) in OTHER.items():
            self.patch(name, owner, attribute, functools.partial(self.whole, name))

    def snapshot(self) -> tuple[Counter[str], dict[str, float], dict[str, float], float]:
        return Counter(self.calls), dict(self.seconds), dict(self.other), self.replayed


def since(now: dict[str, float], before: dict[str, float], digits: int) -> dict[str, float]:
    """What each entry of `now` added since `before`, rounded; entries that did not move left out."""
    return {k: round(v - before.get(k, 0.0), digits) for k, v in sorted(now.items()) if v > before.get(k, 0.0)}


def run_stage(stage: str, args: argparse.Namespace, timers: Timers) -> dict:
    """One `worldmodels STAGE` in this process, its stage output sent to stderr; its row."""
    argv = [stage, args.recipe, "--checkpoints", str(args.checkpoints), "--rollouts", str(args.rollouts)]
    for override in args.overrides:
        argv += ["--set", override]
    parsed = cli.parser().parse_args(argv)
    calls, seconds, other, replayed = timers.snapshot()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the stages' messages (tqdm.write) stay out of the JSON lines
        cli.run_stage(parsed)
    wall = time.perf_counter() - start - (timers.replayed - replayed)
    checks = sum(timers.seconds.values()) - sum(seconds.values())
    return {
        "stage_s": round(wall, 3),
        "checks_s": round(checks, 4),
        "fraction": round(checks / wall, 5),
        "calls": dict(sorted((timers.calls - calls).items())),
        "check_s": since(timers.seconds, seconds, 4),
        "other_s": since(timers.other, other, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="envs/cartpole.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--checkpoints", type=Path, help="folder of run folders (default: a fresh temporary one)")
    parser.add_argument("--rollouts", type=Path, help="folder of collected episodes (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="check_overhead_"))
    args.checkpoints = args.checkpoints or scratch / "checkpoints"
    args.rollouts = args.rollouts or scratch / "rollouts"
    timers = Timers()
    timers.install()
    cli.keep_thread_errors()
    rows = []
    try:
        for stage in STAGES + [f"{s} (again)" for s in STAGES] + ["pipeline (again)"]:
            row = {"stage": stage} | run_stage(stage.removesuffix(" (again)"), args, timers)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}", file=sys.stderr)
    first = [r for r in rows if "(again)" not in r["stage"]]
    again = [r for r in rows if "(again)" in r["stage"]]
    worst = max(rows, key=lambda r: r["fraction"])
    worst_first = max(first, key=lambda r: r["fraction"])
    stage_s, checks_s = sum(r["stage_s"] for r in first), sum(r["checks_s"] for r in first)
    again_s, again_checks_s = sum(r["stage_s"] for r in again), sum(r["checks_s"] for r in again)
    print(
        json.dumps(
            {
                "stage": "total",
                "stage_s": round(stage_s, 3),
                "checks_s": round(checks_s, 4),
                "fraction": round(checks_s / stage_s, 5),
                "again_stage_s": round(again_s, 3),
                "again_checks_s": round(again_checks_s, 4),
                "again_fraction": round(again_checks_s / again_s, 5),
                "max_fraction": worst["fraction"],
                "max_fraction_stage": worst["stage"],
                "max_fraction_first_pass": worst_first["fraction"],
                "max_fraction_first_pass_stage": worst_first["stage"],
                "calls": {name: timers.calls[name] for name in [*CHECKS, LATENT_CHECKS]},
                "never_called": [name for name in [*CHECKS, LATENT_CHECKS] if not timers.calls[name]],
                "check_s": {k: round(v, 4) for k, v in sorted(timers.seconds.items())},
                "other_s": {k: round(v, 3) for k, v in sorted(timers.other.items())},
                "patched": timers.patched,
                "recipe": args.recipe,
                "overrides": args.overrides,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
