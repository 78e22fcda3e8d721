"""Reading shard sets: every chip in order (:func:`read_samples`) and the training stream.

:class:`ShardStream` serves a shard set to training as an endless, rank- and worker-split stream
in exactly the sample format of :class:`s12mae.data.ArrayDataset`; :func:`shard_loader` batches
it. Only complete ``shard-NNNNNN.tar`` files are read: a writer's temporaries never are.

A shard set is a local folder or an object-storage prefix (``s3://``, ``gs://``, ``https://``):
shards are listed, sized and streamed through :mod:`s12mae.storage` (fsspec; each shard is read
front to back in 4 MiB ranges, never staged whole on disk).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from s12mae import storage
from s12mae.inputs import NodataPolicy, model_inputs
from s12mae.sensors import SensorSpec
from s12mae.shards.format import MANIFEST, decode_sample, npy_load, read_manifest, shard_files, unpack_valid

__all__ = ["ShardStream", "read_samples", "read_shard", "resume_epoch", "shard_loader"]

log = logging.getLogger(__name__)

Location = Path | str
"""A shard or shard set: a local path, or a URL (:mod:`s12mae.storage`)."""
BadMember = Callable[[Location, str, str], None]
"""``bad(shard, member, reason)``: raises, or records and lets the reader go on."""


def _raise(shard: Location, member: str, reason: str) -> None:
    raise ValueError(f"{shard}: member {member}: {reason}")


def _name(shard: Location) -> str:
    """The file name of a shard path or URL."""
    return Path(shard).name if isinstance(shard, Path) else str(shard).rstrip("/").rsplit("/", 1)[-1]


def _location(path: str | Path) -> Location:
    """A URL stays a string (without a trailing ``/``); anything else is a :class:`~pathlib.Path`."""
    return str(path).rstrip("/") if storage.is_url(path) else Path(path)


def read_shard(shard: Location, expect: Mapping[str, Any] | None,
               bad: BadMember = _raise) -> Iterator[dict[str, Any]]:
    """Decoded raw samples ``{"__key__", "__shard__", "json", <ext>: array}`` of one shard.

    ``bad(shard, member, reason)`` is called on a corrupt/truncated tar (then reading stops), a
    member that fails to decode (its sample is dropped) or a count/size that disagrees with
    ``expect`` (the shard's manifest entry); it raises or records.
    """
    if expect is not None and (size := storage.size(shard)) != expect["bytes"]:
        bad(shard, "-", f"is {size} bytes, the manifest says {expect['bytes']} (truncated or overwritten)")
        return
    current: dict[str, Any] = {}
    bad_key, member, count = None, "-", 0
    try:
        with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                member = info.name
                key, _, ext = member.partition(".")
                if current and key != current["__key__"]:
                    if current["__key__"] != bad_key:
                        count += 1
                        yield current
                    current = {}
                if not current:
                    current = {"__key__": key, "__shard__": str(shard)}
                if not info.isfile() or not ext:
                    bad(shard, member, "is not a sample file (key.ext)")
                    bad_key = key
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                try:
                    current[ext] = json.loads(data) if ext == "json" else npy_load(data)
                except (ValueError, OSError, EOFError) as err:
                    bad(shard, member, f"cannot be decoded ({err})")
                    bad_key = key
            end = tar.offset  # tarfile ends quietly at a truncation on a block boundary: check the marker
            f.seek(end)
            if f.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError("no end-of-archive marker after the last member")
    except (tarfile.TarError, EOFError, OSError) as err:
        bad(shard, member, f"the tar file is corrupt or truncated ({err})")
        return
    if current and current["__key__"] != bad_key:
        count += 1
        yield current
    if expect is not None and count != expect["samples"]:
        bad(shard, "-", f"holds {count} samples, the manifest says {expect['samples']}")


def _expected(path: Location) -> dict[str, dict[str, Any]]:
    """Manifest entries by shard name; none for a set without a manifest (a crashed writer's)."""
    if not storage.exists(storage.join(path, MANIFEST)):
        return {}
    return {s["name"]: s for s in read_manifest(path)["shards"]}


def read_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """The chips of a shard set (folder or URL prefix, in index order) or of one shard (``.tar``),
    in reader format.

    Yields ``{"id", "scene_id", "index", "crop", "meta", <sensor>: (C, H, W) stored dtype,
    "valid.<sensor>": (C, H, W) bool, "label.*": ...}``; for inspection, statistics and tests.

    Raises:
        ValueError: a corrupt or truncated shard or an undecodable member (names file and member).
    """
    path = _location(path)
    one = str(path).endswith(".tar") if isinstance(path, str) else not path.is_dir()
    shards, expected = ([path], {}) if one else (shard_files(path), _expected(path))
    for shard in shards:
        for raw in read_shard(shard, expected.get(_name(shard))):
            yield decode_sample(raw)


def resume_epoch(path: str | Path, samples_seen: int) -> int:
    """The epoch to restart a stream at after ``samples_seen`` samples (e.g. steps x batch size).

    A stream resumes at an epoch boundary: the samples of the interrupted epoch are seen again.
    """
    return samples_seen // read_manifest(path)["num_samples"]


class ShardStream(IterableDataset):
    """Infinite stream of training samples from a shard set, split by rank and worker.

    Each epoch ``e`` the shards are permuted by ``(seed, e)`` (the same on every rank); rank ``r``
    takes ``perm[r::world]`` and worker ``w`` of its DataLoader ``[w::workers]`` of those. If there
    are fewer shards than ``world * workers``, every consumer reads every shard and keeps the
    samples at stream positions ``p % (world * workers) == rank * workers + worker`` (correct but
    each consumer decodes all data). Samples pass through a shuffle buffer seeded by
    ``(seed, e, consumer)`` that is flushed at the end of each epoch, so epochs never mix and the
    stream restarts exactly at any epoch. Ranks may hold different numbers of samples per epoch,
    so their epoch counters may drift apart; within an epoch no sample goes to two consumers.

    Args:
        path: shard-set folder or URL prefix (``s3://``, ``gs://``, ``https://``); only
            ``shard-NNNNNN.tar`` files are read (temps are ignored).
        sensors: specs of the sensors to serve (their statistics standardise the values).
        seed: run seed.
        rank: this process's rank; world: the number of ranks.
        shuffle_buffer: samples held for shuffling per consumer; <= 1 keeps shard order.
        epoch: the first epoch of the stream.
        nodata: ``error`` raises on a nodata/non-finite value naming sample and shard; ``mask``
            fills them with 0 and adds ``valid.<sensor>`` (stored mask and finite values); see
            :func:`s12mae.inputs.model_inputs`.
        extra_keys: label keys (``label.*``) to serve as tensors.
        skip_bad: a corrupt or truncated shard, or a member that fails to decode, is logged and
            recorded in :attr:`skipped` (per process) instead of raising.
        standardise: serve model inputs (default); ``False`` serves the stored values (int16/uint16
            DN, float16/float32 dB) and the stored valid mask as bool, for the training loop to
            standardise per batch on its device (:func:`s12mae.data.model_batch`; ``nodata``
            applies there).

    Attributes:
        skipped: ``(shard, member, reason)`` of everything skipped by this process.
    """

    def __init__(self, path: str | Path, sensors: Sequence[SensorSpec], seed: int, rank: int = 0,
                 world: int = 1, shuffle_buffer: int = 256, epoch: int = 0, nodata: NodataPolicy = "error",
                 extra_keys: Sequence[str] = (), skip_bad: bool = False, standardise: bool = True) -> None:
        self.path = _location(path)
        if isinstance(self.path, Path) and not self.path.is_dir():
            raise ValueError(f"{self.path}: no such shard-set folder")
        self.shards = shard_files(self.path)
        if not self.shards:
            raise ValueError(f"{self.path}: holds no shard-NNNNNN.tar files")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.manifest = read_manifest(self.path) if storage.exists(storage.join(self.path, MANIFEST)) else None
        self.expected = _expected(self.path)
        if self.manifest is not None:
            _check_sensors(self.path, self.manifest, sensors)
        self.sensors, self.seed, self.rank, self.world = list(sensors), seed, rank, world
        self.shuffle_buffer, self.epoch, self.nodata = shuffle_buffer, epoch, nodata
        self.extra_keys, self.skip_bad, self.standardise = list(extra_keys), skip_bad, standardise
        self.skipped: list[tuple[str, str, str]] = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        while True:
            n = 0
            for sample in self.iter_epoch(epoch, worker, workers):
                n += 1
                yield sample
            if n == 0:
                raise ValueError(f"{self.path}: epoch {epoch} gave rank {self.rank} worker {worker} no "
                                 f"sample ({len(self.shards)} shard(s) for {self.world * workers} consumers)")
            epoch += 1

    def iter_epoch(self, epoch: int, worker: int = 0, workers: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """The training samples of one epoch for this rank's ``worker`` of ``workers``."""
        consumers, me = self.world * workers, self.rank * workers + worker
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        by_shard = len(self.shards) >= consumers
        mine = perm[self.rank::self.world][worker::workers] if by_shard else perm
        raw = (s for i in mine for s in self._read_shard(self.shards[i]))
        if not by_shard:
            raw = (s for p, s in enumerate(raw) if p % consumers == me)
        rng = np.random.default_rng([self.seed, epoch, me])
        for sample in _shuffled(raw, self.shuffle_buffer, rng):
            yield self._to_training(sample)

    def _bad(self, shard: Location, member: str, reason: str) -> None:
        msg = f"{shard}: member {member}: {reason}"
        if not self.skip_bad:
            raise ValueError(msg)
        log.warning("skipping %s", msg)
        self.skipped.append((str(shard), member, reason))

    def _read_shard(self, shard: Location) -> Iterator[dict[str, Any]]:
        return read_shard(shard, self.expected.get(_name(shard)), self._bad)

    def _to_training(self, raw: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw decoded sample to the ArrayDataset format (standardised float32, index, masks; or
        stored values and masks without ``standardise``)."""
        head = raw.get("json")
        if head is None:
            raise ValueError(f"{raw['__shard__']}: sample {raw['__key__']}: has no .json member")
        where = f"{raw['__shard__']}: sample {head.get('id')!r} (key {raw['__key__']})"
        out: dict[str, torch.Tensor] = {"index": torch.tensor(int(head["index"]), dtype=torch.int64)}
        for spec in self.sensors:
            stored, packed = raw.get(f"{spec.key}.npy"), raw.get(f"valid.{spec.key}.npy")
            if stored is None or packed is None:
                raise ValueError(f"{where}: has no {spec.key} (or its valid mask); it holds "
                                 f"{sorted(k for k in raw if not k.startswith('__'))}")
            if stored.ndim != 3:  # one sample: (C, H, W); model_inputs checks the channels
                raise ValueError(f"{where}: {spec.key} has shape {stored.shape}, expected (C, H, W)")
            valid = torch.from_numpy(unpack_valid(packed, stored.shape[-1]))
            if not self.standardise:
                out[spec.key], out[f"valid.{spec.key}"] = torch.from_numpy(stored), valid
                continue
            x, ok = model_inputs(spec, torch.from_numpy(stored), valid, nodata=self.nodata, where=where)
            if self.nodata == "mask":
                out[f"valid.{spec.key}"] = ok
            out[spec.key] = x
        for key in self.extra_keys:
            if f"{key}.npy" not in raw:
                raise ValueError(f"{where}: has no {key}")
            out[key] = torch.from_numpy(raw[f"{key}.npy"])
        return out


def _check_sensors(path: Location, manifest: Mapping[str, Any], sensors: Sequence[SensorSpec]) -> None:
    """The shard set holds every sensor asked for, with the spec's bands in the spec's order."""
    have = manifest["sensors"]
    for spec in sensors:
        if spec.key not in have:
            raise ValueError(f"{path}: shard set holds sensors {sorted(have)}, not {spec.key}")
        if have[spec.key]["bands"] != spec.band_names:
            raise ValueError(f"{path}: {spec.key} has bands {have[spec.key]['bands']}, the "
                             f"sensor spec expects {spec.band_names}")


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: keep ``size`` items, emit a random one per new item, flush at the end."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(size))
        buf[i], item = item, buf[i]
        yield item
    for i in rng.permutation(len(buf)):
        yield buf[i]


def shard_loader(path: str | Path, sensors: Sequence[SensorSpec], micro_batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, num_workers: int = 0, shuffle_buffer: int = 256,
                 epoch: int = 0, nodata: NodataPolicy = "error",
                 extra_keys: Sequence[str] = (), skip_bad: bool = False, standardise: bool = True,
                 pin_memory: bool | None = None) -> DataLoader:
    """Endless loader of this rank's micro-batches from a shard set (see :class:`ShardStream`).

    ``iter(loader)`` then ``next()`` gives ``{sensor: (B, C, H, W) float32, "index": (B,) int64,
    ["valid.<sensor>": (B, C, H, W) bool]}``, as :func:`s12mae.data.task_loader` does. Batches
    run on across epoch boundaries; each DataLoader worker batches its own share. Without
    ``standardise`` the sensors come in their stored dtype with ``valid.<sensor>`` masks (see
    :class:`ShardStream`). ``pin_memory`` (default: when CUDA is available) page-locks batches
    for asynchronous copies; workers are persistent.
    """
    stream = ShardStream(path, sensors, seed, rank, world, shuffle_buffer, epoch, nodata, extra_keys,
                         skip_bad, standardise)
    return DataLoader(stream, batch_size=micro_batch_size, num_workers=num_workers,
                      persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)
