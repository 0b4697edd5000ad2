"""One writer per run folder: every stage holds the folder's lock, which the OS drops when the process ends,
kill -9 included."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from worldmodels.core.errors import WorldModelsError

LOCK = ".worldmodels.lock"
HOLDER = ".worldmodels.pid"  # beside the lock: filelock empties the lock file itself when it tries it


@contextlib.contextmanager
def hold(folders: list[Path]) -> Iterator[None]:
    """Hold the locks of `folders` (those that exist) for the block; a folder another process holds
    is one error line."""
    with contextlib.ExitStack() as stack:
        for folder in dict.fromkeys(f.resolve() for f in folders):  # --checkpoints and --rollouts may be one folder
            if not folder.is_dir():
                continue
            confine(folder)  # before the lock: opening a planted lock or PID link would write through it
            lock = FileLock(folder / LOCK, is_singleton=False)
            try:
                stack.enter_context(lock.acquire(timeout=0))
            except Timeout:
                raise WorldModelsError(
                    f"'{folder}' is in use by another worldmodels process ({holder(folder)}); "
                    "wait for it to end, or use another --run"
                ) from None
            except OSError:  # a read-only folder cannot be written to either: nothing to protect
                continue
            with contextlib.suppress(OSError):
                (folder / HOLDER).write_text(str(os.getpid()))
            remove_orphans(folder)
        yield


def confine(folder: Path) -> None:
    """Refuse a folder that holds a symbolic link leading outside it (run folders travel): the lock's PID file, the
    clean-up of temp files and every stage's writes would follow it and write or delete elsewhere."""
    for root, dirs, files in os.walk(folder):  # a linked folder is looked at, never entered
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() and not path.resolve().is_relative_to(folder):
                raise WorldModelsError(
                    f"'{path}' is a link to '{os.readlink(path)}', outside '{folder}'; nothing in a run folder may "
                    "lead out of it: remove the link (copy what it points to in its place, if it is yours)"
                )


def remove_orphans(folder: Path) -> None:
    """Temp files of writers killed mid-write (atomic writes name them .NAME.*.tmp): with the lock held,
    nobody owns them."""
    for pattern in (".*.tmp", "*/.*.tmp"):
        for orphan in folder.glob(pattern):
            with contextlib.suppress(OSError):
                orphan.unlink()


def holder(folder: Path) -> str:
    """Who holds a folder's lock, as well as its PID file says."""
    try:
        return f"PID {int((folder / HOLDER).read_text())}"
    except (OSError, ValueError):
        return "PID unknown"
