"""A pretraining run whose ``train.out_dir`` is on object storage (``s3://``, ``gs://``, ...).

The run itself works in a local folder, ``train.local_dir`` (by default one per URL under
``$S12MAE_CACHE/runs``, ``~/.cache/s12mae/runs`` if unset; ours), which
:class:`~s12mae.train.rundir.RunFolder` locks and cleans as for any run. :class:`RunMirror` ties
that folder to the URL (rank 0 only):

* :meth:`RunMirror.pull`, before the run: a URL that already holds a run (a ``latest`` file) is
  refused unless the run is resumed; a resume downloads the run's top-level files (config,
  metrics, statistics), the checkpoint folder ``latest`` names and ``latest`` itself (always:
  another machine may have moved the run on since this folder last saw it), and removes the
  local checkpoints the URL does not name. A folder of our cache that holds a run the URL does
  not is cleared first; a ``train.local_dir`` holding one is refused.
* :meth:`RunMirror.push`, after every checkpoint and at the end of the run: the files new or
  changed since the last push are uploaded, each atomically, with ``latest`` last, so a reader
  (or a resume on another machine) that follows ``latest`` never finds a checkpoint half
  uploaded; checkpoint folders pruned locally are then deleted from the URL. A push that fails
  at a checkpoint is a warning and is retried at the next one (nothing is recorded as uploaded);
  the push at the end of the run must succeed.

What happens between two pushes is lost with the machine: a resume starts from the last pushed
checkpoint, as it would locally. Only rank 0 pulls and pushes: with several nodes,
``train.local_dir`` must be a folder every node sees (as a local ``out_dir`` must be). Credentials
come from the usual environment variables and profiles (:mod:`s12mae.storage`) and are never
printed. Sharded (FSDP) checkpoints are written by every rank and are not mirrored: such runs
need an ``out_dir`` every rank can write.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import warnings
from pathlib import Path

from s12mae import storage
from s12mae.files import TMP_MARK, atomic_write

__all__ = ["RunMirror", "default_local_dir"]

_RECORD = ".s12mae-mirror.json"
"""What the last push uploaded: ``{relative name: [size, mtime_ns]}`` (in the local folder)."""
_NOT_MIRRORED = re.compile(r"\.s12mae[.-].*|\..*" + re.escape(TMP_MARK) + r".*")
"""The lock, the mirror's own record and the atomic writers' temporaries stay local."""
_CHECKPOINT = re.compile(r"checkpoint-\d+")


def default_local_dir(url: str) -> Path:
    """The local working folder of the run at ``url``: readable, and one per URL."""
    cache = Path(os.environ.get("S12MAE_CACHE") or Path.home() / ".cache" / "s12mae").expanduser()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", storage.redact(url).split("://", 1)[-1]).strip("_")[-80:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return cache / "runs" / f"{storage.protocol(url)}_{slug}_{digest}"


class RunMirror:
    """The run folder at ``url`` worked on in ``local`` (see the module docstring).

    Args:
        url: ``train.out_dir``, an ``s3://``, ``gs://``, ... URL.
        local: the local working folder (``train.local_dir``); ``None`` = :func:`default_local_dir`.
    """

    def __init__(self, url: str, local: str | os.PathLike[str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.owned = local is None  # our cache folder: stale content may be cleared
        self.local = Path(local) if local is not None else default_local_dir(self.url)

    def __repr__(self) -> str:
        return f"RunMirror({storage.redact(self.url)!r} <- {str(self.local)!r})"

    def _remote(self, rel: str) -> str:
        return storage.join(self.url, *rel.split("/"))

    # -- before the run ---------------------------------------------------------------------------
    def pull(self, resume: bool) -> None:
        """Prepare the (locked) local folder: refuse to start over a run at the URL, or download
        what a resume needs.

        Raises:
            ValueError: the URL holds a run and ``resume`` is false; or the local folder holds a
                run that the URL does not (a folder given as ``train.local_dir``).
            s12mae.storage.StorageError: the URL cannot be read (unreachable, refused).
        """
        remote_latest = self._remote("latest")
        at_url = storage.exists(remote_latest)
        if at_url and not resume:
            raise ValueError(f"{storage.redact(self.url)}: already holds a run with checkpoints; pass "
                             "--resume to continue it or choose another train.out_dir")
        if not at_url:  # a fresh run; or a resume that then finds no checkpoint and says so
            self._clear_stale()
            return
        name = storage.read_bytes(remote_latest).decode().strip()
        if not _CHECKPOINT.fullmatch(name):
            raise ValueError(f"{storage.redact(remote_latest)}: names {name!r}, not a checkpoint folder")
        wanted = [u for u in storage.list_files(self.url) if posixpath.basename(u) != "latest"]
        wanted += self._files_under(name)
        for url in wanted:
            rel = url[len(self.url) + 1:]
            self._download(url, self.local / rel)
        self._download(remote_latest, self.local / "latest")  # last: it names a complete folder
        for old in self.local.glob("checkpoint-*"):  # local checkpoints the URL no longer has
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self._save_record(self._snapshot())  # what is here is what the URL has

    def _files_under(self, folder: str) -> list[str]:
        fs, root = storage.filesystem(self._remote(folder))
        fs.invalidate_cache(root)
        found = sorted(fs.find(root))
        if not found:
            raise ValueError(f"{storage.redact(self._remote(folder))}: named by latest but empty or missing")
        return [self._remote(folder + "/" + posixpath.relpath(p, root)) for p in found]

    def _download(self, url: str, dst: Path) -> None:
        """Always: a same-sized local file may be another run's or an older state's."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, storage.read_bytes(url))

    def _clear_stale(self) -> None:
        """A fresh run over our own cache folder drops what an earlier run of this URL left."""
        stale = [p for p in self.local.iterdir() if not _NOT_MIRRORED.fullmatch(p.name)] if self.local.is_dir() else []
        if not stale:
            return
        if not self.owned:
            if (self.local / "latest").exists():
                raise ValueError(f"{self.local}: train.local_dir holds a run that {storage.redact(self.url)} does "
                                 "not; empty it or choose another train.local_dir")
            return
        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        (self.local / _RECORD).unlink(missing_ok=True)

    # -- during and after the run -----------------------------------------------------------------
    def push(self, strict: bool = True) -> list[str]:
        """Upload what changed since the last push (``latest`` last), then delete checkpoint folders
        pruned locally from the URL. Returns the relative names uploaded.

        Args:
            strict: a failed upload raises; else it is a warning, nothing is recorded as uploaded,
                and the next push tries again.
        """
        if strict:
            return self._push()
        try:
            return self._push()
        except (OSError, ValueError) as err:  # StorageError is a ValueError
            warnings.warn(f"{storage.redact(self.url)}: upload failed, retried at the next checkpoint "
                          f"({storage.redact(str(err))})", RuntimeWarning, stacklevel=2)
            return []

    def _push(self) -> list[str]:
        now, before = self._snapshot(), self._load_record()
        changed = sorted(rel for rel, sig in now.items() if before.get(rel) != sig)
        changed.sort(key=lambda rel: rel == "latest")  # stable: everything else first, in name order
        for rel in changed:
            with open(self.local / rel, "rb") as fin, storage.atomic_open(self._remote(rel)) as fout:
                shutil.copyfileobj(fin, fout, 16 * 2**20)
        self._save_record(now)
        if changed:  # the checkpoints kept are the local ones: the others go, once `latest` names a kept one
            kept = {rel.split("/")[0] for rel in now}
            fs, root = storage.filesystem(self.url)
            fs.invalidate_cache(root)
            for entry in fs.ls(root, detail=True):
                name = posixpath.basename(entry["name"].rstrip("/"))
                if entry.get("type") == "directory" and _CHECKPOINT.fullmatch(name) and name not in kept:
                    fs.rm(entry["name"], recursive=True)
        return changed

    def _snapshot(self) -> dict[str, list[int]]:
        out = {}
        for p in sorted(self.local.rglob("*")):
            rel = p.relative_to(self.local).as_posix()
            if p.is_file() and not any(_NOT_MIRRORED.fullmatch(part) for part in rel.split("/")):
                st = p.stat()
                out[rel] = [st.st_size, st.st_mtime_ns]
        return out

    def _load_record(self) -> dict[str, list[int]]:
        path = self.local / _RECORD
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            return {}  # a damaged record: upload everything again

    def _save_record(self, record: dict[str, list[int]]) -> None:
        atomic_write(self.local / _RECORD, json.dumps(record, sort_keys=True))
