"""The run folder of one pretraining run: locked, cleaned, and left as found when a run fails early.

:class:`RunFolder` is entered before anything is written into ``train.out_dir``:

* **one run per folder**: rank 0 holds an exclusive ``fcntl.flock`` on ``.s12mae.lock`` for the
  whole run. The operating system releases it when the process dies (kill -9, crash, power loss
  of a local disk), so a stale lock never blocks the next run; a second live run gets an error
  naming the holder's pid and host (written into the lock file).
* **leftovers of a killed run are removed** under the lock: temporaries of the atomic writers
  (``.checkpoint-*.tmp`` folders, ``.loss_curve.png.*.tmp.png`` pictures, ...; see
  :func:`s12mae.files.remove_stale_temps`).
* **a run that fails before its first checkpoint leaves nothing behind**: the files it created
  are removed, and the folder too if the run created it. A folder with a checkpoint is kept as it
  is: it can be resumed.

Also here: :func:`step_seed`, which keys the global random generators to the step, so every
draw the loop does not key itself (drop path, on CPU and CUDA) repeats after a resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from s12mae.files import remove_stale_temps
from s12mae.train.ranks import RankErrors

__all__ = ["LOCK_NAME", "RunFolder", "RunFolderBusy", "step_seed"]

LOCK_NAME = ".s12mae.lock"


class RunFolderBusy(FileExistsError):
    """Another live run holds the run folder."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global random generators for optimizer step ``step`` on ``rank``.

    Seeding every step from (seed, step, rank) makes draws that nothing else keys (timm's drop
    path) independent of what ran before the step: a resumed run repeats them exactly, whatever
    the data loader or a previous session drew, on the CPU and on CUDA alike.
    """
    digest = hashlib.sha256(f"s12mae-step/{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63


class RunFolder:
    """Context manager owning ``path`` for one run (see the module docstring).

    Args:
        path: the run folder (``train.out_dir``).
        rank: this process's rank; only rank 0 touches the folder.
        errors: the ranks' error agreement: a failure of rank 0 here stops every rank.
    """

    def __init__(self, path: Path, rank: int = 0, errors: RankErrors | None = None) -> None:
        self.path, self.rank = Path(path), rank
        self.errors = errors or RankErrors(1)
        self.created = False
        self.before: set[str] = set()
        self.removed: list[Path] = []
        self._lock: IO[str] | None = None

    def __enter__(self) -> RunFolder:
        with self.errors.caught():
            if self.rank == 0:
                try:
                    self._open()
                except BaseException:
                    self._close(failed=True)
                    raise
        self.errors.raise_if_any()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.rank == 0:
            self._close(failed=exc_type is not None)

    def _open(self) -> None:
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.before = {p.name for p in self.path.iterdir()}
        self._lock = _acquire(self.path / LOCK_NAME)
        self.removed = remove_stale_temps(self.path)
        if self.removed:
            print(f"{self.path}: removed {len(self.removed)} temporary file(s)/folder(s) left by an "
                  f"interrupted run: {sorted(p.name for p in self.removed)}", flush=True)

    def _close(self, failed: bool) -> None:
        if failed and not (self.path / "latest").exists():  # no checkpoint: nothing worth keeping
            self._remove_new_entries()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _remove_new_entries(self) -> None:
        if not self.path.is_dir():
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for p in self.path.iterdir():
            if p.name not in self.before and p.name != LOCK_NAME:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _acquire(lock_path: Path) -> IO[str]:
    """An open lock file holding an exclusive flock, or :class:`RunFolderBusy` naming the holder."""
    import fcntl  # POSIX; the toolkit runs on Linux and macOS

    f = lock_path.open("a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        f.close()
        raise RunFolderBusy(f"{lock_path.parent}: another pretrain run is using this folder ({holder}); "
                            "wait for it to finish or choose another train.out_dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f
