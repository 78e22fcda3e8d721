"""Writing files and folders so that a crash never leaves a partial result behind.

Every output of the toolkit (statistics, shards, pairs tables, checkpoints, encoder exports,
pictures, metrics) is written under a temporary name in the target's own folder and renamed
into place only when complete. A reader therefore sees either the old file or the whole new one.
Temporary names start with ``.`` and contain ``.tmp`` so that :func:`remove_stale_temps` can
find the leftovers of a killed writer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "remove_stale_temps", "undo_outputs_on_failure"]

TMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` if the block succeeds.

    For writers that want a path (safetensors, matplotlib, parquet). On an exception the
    temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_path(out / "model.safetensors") as tmp:
        ...     save_file(weights, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp_file(path: Path) -> Path:
    """A new empty file beside ``path`` with the permissions ``open`` gives (0666 less the umask;
    ``mkstemp``'s 0600 would hide shard sets and exports from a group that shares them)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_MARK}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: found no free temporary name for {path.name}")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file and a rename."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it onto ``path`` if the block succeeds.

    Args:
        path: the folder to create.
        replace: an existing ``path`` is replaced (the old one is removed after the rename);
            without it an existing ``path`` is a ``FileExistsError`` raised before anything is
            written.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_MARK))
    try:
        yield tmp
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temps(folder: str | os.PathLike, prefix: str = ".") -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder``.

    Only names made by this module (or following its convention: starting with ``prefix`` and
    containing ``.tmp``) are touched. Call it where a single writer owns the folder (a locked run
    folder, a shard set being resumed), never while another writer may be active.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(prefix) and TMP_MARK in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def undo_outputs_on_failure(folder_of: Callable[..., str | os.PathLike]) -> Callable[[Callable], Callable]:
    """Decorator: if the command raises, remove what it added to its output folder.

    ``folder_of`` gets the command's arguments and returns its output folder. Entries the folder
    held before the call stay (outputs are replaced atomically, so they are old or new, never
    half); new ones go, and the folder itself if the call created it. A failed command thus
    leaves no partial outputs (e.g. ``encoder_stats.json`` of an evaluation that failed later).
    """

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            folder = Path(folder_of(*args, **kwargs))
            created = not folder.exists()
            before = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            try:
                return command(*args, **kwargs)
            except BaseException:
                if created:
                    shutil.rmtree(folder, ignore_errors=True)
                elif folder.is_dir():
                    for p in folder.iterdir():
                        if p.name not in before:
                            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                raise

        return wrapper

    return decorate
