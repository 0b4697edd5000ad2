"""The lookup table: sampled architectures trained for real on digits, one CSV row each.

python -m worldmodels.nas.table --archs 400 --seeds 3 --sample-seed 0   # ~10 min on one core
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldmodels.core.errors import WorldModelsError
from worldmodels.core.progress import bar
from worldmodels.nas.space import Architecture, num_params, sample, train
from worldmodels.runs.checkpoints import atomic_write

DEFAULT_TABLE = Path(__file__).parent / "digits_table.csv"
COLUMNS = ["arch", "depth", "params", "val_acc", "val_acc_std", "test_acc", "seconds"]


@dataclass(frozen=True)
class Row:
    """One measured architecture: mean accuracies over seeds, and the mean seconds of one training."""

    arch: Architecture
    params: int
    val_acc: float
    val_acc_std: float
    test_acc: float
    seconds: float


def sample_distinct(n: int, rng: np.random.Generator) -> list[Architecture]:
    """n different architectures, in the order they were first drawn."""
    seen: dict[Architecture, None] = {}
    while len(seen) < n:
        seen.setdefault(sample(rng), None)
    return list(seen)


def measure(arch: Architecture, seeds: int) -> Row:
    """Train arch once per seed 0..seeds-1 and summarise."""
    runs = [train(arch, seed=seed) for seed in range(seeds)]
    val = np.array([r["val_acc"] for r in runs])
    return Row(
        arch=arch,
        params=num_params(arch),
        val_acc=float(val.mean()),
        val_acc_std=float(val.std()),
        test_acc=float(np.mean([r["test_acc"] for r in runs])),
        seconds=float(np.mean([r["seconds"] for r in runs])),
    )


def write_table(path: Path, rows: list[Row]) -> None:
    """Write rows as CSV, atomically (a half-written table would poison every surrogate fitted on it)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        accs = [f"{acc:.5f}" for acc in (r.val_acc, r.val_acc_std, r.test_acc)]
        writer.writerow([str(r.arch), r.arch.depth, r.params, *accs, f"{r.seconds:.3f}"])
    atomic_write(Path(path), lambda f: f.write(text.getvalue()), mode="w")


def load_table(path: Path = DEFAULT_TABLE) -> list[Row]:
    """Read a table written by write_table; a missing or malformed file is a WorldModelsError."""
    path = Path(path)
    if not path.is_file():
        raise WorldModelsError(
            f"NAS table '{path}' not found; make it with `python -m worldmodels.nas.table --out {path}`"
        )
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
                raise WorldModelsError(f"NAS table '{path}' is malformed: expected columns {','.join(COLUMNS)}")
            rows = []
            for line, record in enumerate(reader, start=2):
                if None in record or None in record.values():  # csv's marks for too many or too few fields
                    raise WorldModelsError(
                        f"NAS table '{path}' is malformed at line {line}: expected {len(reader.fieldnames)} fields"
                    )
                try:
                    row = Row(
                        arch=Architecture.parse(record["arch"]),
                        params=int(record["params"]),
                        val_acc=float(record["val_acc"]),
                        val_acc_std=float(record["val_acc_std"]),
                        test_acc=float(record["test_acc"]),
                        seconds=float(record["seconds"]),
                    )
                except ValueError as exc:
                    raise WorldModelsError(f"NAS table '{path}' is malformed at line {line}: {exc}") from None
                if not 0.0 <= row.val_acc <= 1.0:
                    raise WorldModelsError(
                        f"NAS table '{path}' is malformed at line {line}: val_acc {row.val_acc} outside [0, 1]"
                    )
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as exc:  # binary junk, NUL bytes
        raise WorldModelsError(f"NAS table '{path}' is unreadable: {exc}") from None
    if not rows:
        raise WorldModelsError(f"NAS table '{path}' has no rows")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Sample, train and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=400, help="number of distinct architectures")
    parser.add_argument("--seeds", type=int, default=3, help="trainings per architecture, seeds 0..S-1")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the architecture sampler")
    parser.add_argument("--out", type=Path, default=DEFAULT_TABLE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # models this small run fastest on one thread, and the machine is shared
    start = time.perf_counter()
    archs = sample_distinct(args.archs, np.random.default_rng(args.sample_seed))
    rows = [measure(arch, args.seeds) for arch in bar(archs, desc="nas table", unit="arch")]
    write_table(args.out, rows)
    print(f"wrote {len(rows)} architectures x {args.seeds} seeds to {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
