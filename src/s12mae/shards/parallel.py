"""Writing a shard set on a Dask cluster: the same bytes as the one-process writer (design note 17).

Every scene is read and cut once. The client submits tasks that each read a batch of consecutive
scenes (:func:`_read_task`, the one-process writer's own per-scene rule
:func:`~s12mae.shards.write._scene_at`: chip positions from (seed, scene id), validity, skips;
about two shards of chips per batch once the chips per scene are known); a batch's chips stay in
the memory of the worker that cut them, and only the number of chips of each scene and its
counters come back to the client (:func:`_count_task`). The client takes those counts in scene
order (the layouts list scenes sorted), numbers the chips globally (:class:`_Numbering`: shard
``k`` holds chips ``[k * chips_per_shard, (k + 1) * chips_per_shard)``) and, as soon as shard
``k``'s chips are known, submits one task that writes it (:func:`_shard_task`, under a temporary
name, then a rename: :func:`~s12mae.shards.write._write_shard`) from its chips, picked out of each
batch where the batch is (:func:`_pick_task`), so that only those chips travel when Dask runs the
shard on another worker. The scheduler frees a batch once the last task that needs it is done.

Memory is bounded: reads run at most ``workers + 1`` batches ahead of the numbering and at most
``2 * workers`` shard tasks wait at a time, so the cluster holds a few shards of chips per worker,
never the input; chips that are views of a much larger scene (a few random crops) are copied so
that the scene is freed (:func:`_compact`). The manifest is written last, from the shards' entries
in shard order and the scene counters summed in scene order: byte-identical to ``write_shards``
on the same input.

Crash safety: a killed worker's lost batches are recomputed by the scheduler (the tasks are pure
functions of the input) and its shard task is rerun (temporary name, then rename; same bytes). A
killed client leaves complete shards under their final names, temporaries under ``.shard-*.tmp*``
names and ``shards.progress.json``, the one-process writer's own progress record: the complete
shards from shard 0 on without a gap, and the scene and chip the next shard starts at (written at
most every :data:`PROGRESS_EVERY_S` seconds). A rerun (of either writer) removes the temporaries
and reads the input from that scene on, once; shards beyond the gap that are already complete are
kept, not rewritten (their scenes are read again, to number the chips). Shards already in the
folder are kept only when it holds a progress file (or an older version's ``shards.plan.json``)
of the same config and input, whose shards are the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s12mae.distributed import TaskBar, worker_cached
from s12mae.files import atomic_write, remove_stale_temps
from s12mae.shards.format import (
    MANIFEST,
    PROGRESS,
    SHARD_RE,
    ShardConfig,
    json_bytes,
    manifest_bytes,
    new_manifest,
    plain,
)
from s12mae.shards.write import (
    PLAN,
    Chip,
    Placed,
    _check_same_input,
    _fresh_counters,
    _remove_leftovers,
    _resume_state,
    _scene_at,
    _write_shard,
    print_summary,
)

__all__ = ["write_shard_set_dask", "write_shards_distributed"]

Source = Any
"""Where a task finds the samples: a sequence (scattered to the workers) or a picklable opener
``() -> Sequence`` that each worker calls once (:func:`s12mae.distributed.worker_cached`)."""
Batch = list[tuple[list[Chip], dict[str, Any]]]
"""The chips and counters of each scene of a run of consecutive scenes."""
Piece = tuple[Any, int, int, int, int]
"""``(batch, scene offset in the batch, scene position, first chip, end chip)``: a run of one
scene's chips inside one shard; ``batch`` is the future of the batch that holds them."""

MAX_SCENES_PER_TASK = 64
"""Most scenes one read task takes (ours): fewer tasks where scenes give few chips."""
PROGRESS_EVERY_S = 2.0
"""Seconds between two writes of the progress file (ours): a killed client loses at most this much
of its record (those shards are kept anyway, only their scenes are read again)."""


def _read_task(source: Source, token: str, first: int, end: int, cfg: ShardConfig, skip_bad: bool,
               num_input: int) -> Batch:
    """The chips and counters of scenes ``first .. end - 1``; they stay on the worker.

    Raises:
        ValueError: the input lists another number of samples on this worker than on the client:
            positions would name other scenes here and the shard set would silently differ.
    """
    samples = worker_cached(source, token)
    if len(samples) != num_input:
        raise ValueError(f"the input lists {len(samples)} sample(s) on this worker and {num_input} on the client "
                         "(it changed while the run started, or a row was skipped on one machine only, e.g. a "
                         "transient read error under skip_bad); nothing is written from it, run again")
    batch = []
    for pos in range(first, end):
        counters = _fresh_counters()
        batch.append((_compact(_scene_at(samples, pos, cfg, counters, skip_bad)), counters))
    return batch


def _compact(chips: list[Chip]) -> list[Chip]:
    """``chips`` with their own arrays where they are views that keep a much larger scene alive
    (a few random crops of a big scene), so that a held batch keeps about its chips' pixels (and Dask
    counts what it holds). Chips that cover their scene (a grid) stay views: copying saves nothing."""
    views = [v for chip in chips for v in chip.values() if isinstance(v, np.ndarray) and v.base is not None]
    scenes = {id(v.base): getattr(v.base, "nbytes", 0) for v in views}
    if sum(scenes.values()) <= 2 * sum(v.nbytes for v in views):
        return chips
    return [{k: v.copy() if isinstance(v, np.ndarray) and v.base is not None else v for k, v in chip.items()}
            for chip in chips]


def _count_task(batch: Batch) -> list[tuple[int, dict[str, Any]]]:
    """What the client needs of a batch: each scene's number of chips and its counters."""
    return [(len(chips), counters) for chips, counters in batch]


def _pick_task(batch: Batch, picks: Sequence[tuple[int, int, int, int]]) -> list[list[Chip]]:
    """The chips ``first .. end - 1`` of each scene ``(offset in the batch, position, first, end)``
    of ``picks``: a shard task's part of one batch, cut where the batch is, so that only the chips
    a shard needs travel to the worker writing it."""
    runs = []
    for offset, pos, first, end in picks:
        chips = batch[offset][0]
        if len(chips) < end:  # only where a lost batch was recomputed from an input that changed
            raise ValueError(f"sample {pos}: gave {len(chips)} chips now and at least {end} before; "
                             "the input changed (or failed to load) during the run")
        runs.append(chips[first:end])
    return runs


def _shard_task(out: str, number: int, cfg: ShardConfig, spans: Sequence[tuple[int, int, int]],
                *parts: list[list[Chip]]) -> dict[str, Any]:
    """Write shard ``number``: the chips of ``spans`` (``(scene position, first, end)``, in order),
    found in the ``parts`` picked from the batches (one run of chips per span); its manifest entry."""
    runs = [run for part in parts for run in part]

    def placed() -> Iterator[Placed]:
        for (pos, first, _), chips in zip(spans, runs, strict=True):
            for j, chip in enumerate(chips, first):
                yield chip, pos, j, {}

    entry, _ = _write_shard(Path(out) / f"shard-{number:06d}.tar", number, placed(), cfg)
    return entry


def _merge_counters(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Add one scene's counters to ``total`` (numbers add, lists of skipped items extend, counts
    by reason add per reason)."""
    for key, value in part.items():
        if isinstance(value, list):
            total.setdefault(key, []).extend(value)
        elif isinstance(value, dict):
            _merge_counters(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


class _Numbering:
    """Global chip numbers of scenes taken in order: chip ``i`` goes to shard ``i // per_shard``.

    Args:
        per_shard: chips per shard.
        shard: the number of the next shard (a rerun starts after its complete shards).
        resume: ``(scene, chip)``: chips ``0 .. chip`` of that scene are already in a shard.
    """

    def __init__(self, per_shard: int, shard: int = 0, resume: tuple[int, int] = (0, -1)) -> None:
        self.per_shard, self.shard, self.resume = per_shard, shard, resume
        self.pieces: list[Piece] = []
        self.count = 0

    def add(self, batch: Any, offset: int, pos: int, n: int) -> list[tuple[int, list[Piece]]]:
        """Append the ``n`` chips of scene ``pos``; the shards they complete, as ``(number, pieces)``."""
        j = self.resume[1] + 1 if pos == self.resume[0] else 0
        full = []
        while j < n:
            take = min(n - j, self.per_shard - self.count)
            self.pieces.append((batch, offset, pos, j, j + take))
            self.count, j = self.count + take, j + take
            if self.count == self.per_shard:
                full.append(self._close())
        return full

    def flush(self) -> list[tuple[int, list[Piece]]]:
        """The last shard, if it holds any chip (after the last scene)."""
        return [self._close()] if self.pieces else []

    def _close(self) -> tuple[int, list[Piece]]:
        shard = (self.shard, self.pieces)
        self.shard, self.pieces, self.count = self.shard + 1, [], 0
        return shard


def _entry(path: Path, samples: int) -> dict[str, Any]:
    """The manifest entry of a complete shard already in the folder."""
    return {"name": path.name, "samples": samples, "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class _Run:
    """One distributed write, driven by the client: reads a bounded window ahead, each shard as
    soon as its chips are known, the progress record as shards finish (see the module docstring).

    Args:
        state: the progress record to start from (:func:`~s12mae.shards.write._resume_state`).
        kept: numbers of complete shards in the folder beyond ``state``'s, kept as they are.
        Others: as for :func:`write_shards_distributed`.
    """

    def __init__(self, client: Any, source: Source, token: str, out: Path, cfg: ShardConfig, num_input: int,
                 skip_bad: bool, progress: bool, state: dict[str, Any], kept: set[int]) -> None:
        self.client, self.source, self.token, self.out, self.cfg = client, source, token, out, cfg
        self.num_input, self.skip_bad, self.state, self.kept = num_input, skip_bad, state, kept
        self.counters = plain(state["counters"])  # summed in scene order, like the one-process writer's
        self.numbering = _Numbering(cfg.chips_per_shard, len(state["shards"]), (state["scene"], state["after_chip"]))
        self.entries: dict[int, dict[str, Any]] = dict(enumerate(state["shards"]))
        self.ends: dict[int, tuple[int, int, Any]] = {}  # shard -> (scene, last chip, counters before the scene)
        self.workers = workers = max(1, len(client.scheduler_info().get("workers", {})))
        self.scenes_taken = self.chips_taken = 0  # size the read tasks
        self.max_reading, self.max_writing = workers + 1, 2 * workers  # the memory bound (ours)
        self.next_read = self.next_count = state["scene"]
        self.reading: dict[int, tuple[Any, Any, int]] = {}  # first scene -> (batch, counts future, end)
        self.counted: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # arrived before their turn
        self.keys: dict[str, tuple[str, int]] = {}  # future key -> ("counts", first scene) or ("shard", number)
        self.writing: dict[int, Any] = {}  # shard -> its future
        self.run_id = uuid.uuid4().hex[:8]  # task keys unique per run: two runs on one client never collide
        self.bar = TaskBar(num_input - state["scene"], "scene", "writing shards", progress)
        self.written, self.t0 = 0, time.perf_counter()
        self.saved_at = self.t0

    def run(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Write the shards; their manifest entries in order and the summed scene counters."""
        from distributed import as_completed

        self.done = as_completed()
        try:
            self._flush_if_all_read()  # an input of no scenes
            self._submit_reads()
            for fut in self.done:
                kind, key = self.keys.pop(fut.key)
                if kind == "counts":
                    self._take_counts(key, fut.result())  # raises a failed read's error
                else:
                    self.writing.pop(key)
                    self._shard_done(key, fut.result())
                self._submit_reads()
        except BaseException:
            self.client.cancel([f for b, c, _ in self.reading.values() for f in (b, c)]
                               + list(self.writing.values()) + [p[0] for p in self.numbering.pieces])
            raise
        finally:
            self.bar.close()
        return [self.entries[k] for k in range(len(self.entries))], self.counters

    def _submit_reads(self) -> None:
        """Submit batches of scenes while the window has room."""
        while (self.next_read < self.num_input and len(self.reading) < self.max_reading
               and len(self.writing) < self.max_writing):
            first, end = self.next_read, min(self.next_read + self._scenes_per_task(), self.num_input)
            batch = self.client.submit(_read_task, self.source, self.token, first, end, self.cfg, self.skip_bad,
                                       self.num_input, key=f"s12mae-read-{self.run_id}-{first}", pure=False)
            counts = self.client.submit(_count_task, batch, key=f"s12mae-count-{self.run_id}-{first}", pure=False)
            self.reading[first] = (batch, counts, end)
            self.keys[counts.key] = ("counts", first)
            self.done.add(counts)
            self.next_read = end

    def _scenes_per_task(self) -> int:
        """About two shards of chips per read task (ours: most shards are then written where their
        chips are; a few shards of chips in memory per worker), at most MAX_SCENES_PER_TASK scenes,
        and 4 tasks per worker at least while the chips per scene are not known yet."""
        left = self.num_input - self.next_read
        if not self.scenes_taken:
            return max(1, min(8, math.ceil(left / (4 * self.workers))))
        per_scene = max(self.chips_taken / self.scenes_taken, 1 / MAX_SCENES_PER_TASK)
        return max(1, min(MAX_SCENES_PER_TASK, round(2 * self.cfg.chips_per_shard / per_scene),
                          math.ceil(left / self.workers)))

    def _take_counts(self, first: int, counts: list[tuple[int, dict[str, Any]]]) -> None:
        """Number the chips of the batches counted so far, in scene order; write the shards they fill."""
        self.counted[first] = counts
        while self.next_count in self.counted:
            first = self.next_count
            batch, _, end = self.reading.pop(first)
            for offset, (n, scene_counters) in enumerate(self.counted.pop(first)):
                for shard, pieces in self.numbering.add(batch, offset, first + offset, n):
                    self._write(shard, pieces, plain(self.counters))
                _merge_counters(self.counters, scene_counters)
                self.scenes_taken, self.chips_taken = self.scenes_taken + 1, self.chips_taken + n
            self.next_count = end
            self.bar.update(end - first, **self._rate())
        self._flush_if_all_read()

    def _flush_if_all_read(self) -> None:
        if self.next_count == self.num_input:
            for shard, pieces in self.numbering.flush():
                self._write(shard, pieces, None)  # the last shard: the manifest, not the record, follows it

    def _write(self, shard: int, pieces: list[Piece], before: dict[str, Any] | None) -> None:
        """Submit the task that writes ``shard`` (or take the complete one already in the folder)."""
        _, _, pos, _, end = pieces[-1]
        self.ends[shard] = (pos, end - 1, before)
        if shard in self.kept:
            self._shard_done(shard, _entry(self.out / f"shard-{shard:06d}.tar", sum(p[4] - p[3] for p in pieces)))
            return
        groups: dict[str, list[Piece]] = {}  # pieces by batch, in scene order
        for piece in pieces:
            groups.setdefault(piece[0].key, []).append(piece)
        parts = [self.client.submit(_pick_task, group[0][0], [p[1:] for p in group], pure=False, priority=1,
                                    key=f"s12mae-pick-{self.run_id}-{shard}-{i}")
                 for i, group in enumerate(groups.values())]
        fut = self.client.submit(_shard_task, str(self.out), shard, self.cfg, [p[2:] for p in pieces], *parts,
                                 key=f"s12mae-shard-{self.run_id}-{shard}", pure=False, priority=1)
        self.writing[shard] = fut
        self.keys[fut.key] = ("shard", shard)
        self.done.add(fut)

    def _shard_done(self, shard: int, entry: dict[str, Any]) -> None:
        self.entries[shard] = entry
        self.written += entry["samples"]
        self.bar.update(0, **self._rate())
        self._save_progress()

    def _rate(self) -> dict[str, Any]:
        return {"chips": self.written, "chips/s": f"{self.written / max(time.perf_counter() - self.t0, 1e-9):.0f}"}

    def _save_progress(self) -> None:
        """Record the complete shards without a gap from shard 0 (at most every PROGRESS_EVERY_S)."""
        if time.perf_counter() - self.saved_at < PROGRESS_EVERY_S:
            return
        count = len(self.state["shards"])
        while count in self.entries and self.ends[count][2] is not None:
            count += 1
        if count == len(self.state["shards"]):
            return
        scene, chip, before = self.ends[count - 1]
        for k in range(len(self.state["shards"]), count):
            del self.ends[k]  # the record holds them now (each holds a copy of the counters)
        self.state.update(shards=[self.entries[k] for k in range(count)], scene=scene, after_chip=chip,
                          counters=before)
        atomic_write(self.out / PROGRESS, json_bytes(self.state))
        self.saved_at = time.perf_counter()


def write_shards_distributed(source: Source, out: str | Path, cfg: ShardConfig, client: Any, *,
                             skip_bad: bool = False, overwrite: bool = False, progress: bool = True,
                             num_input: int | None = None, token: str | None = None) -> dict[str, Any]:
    """:func:`~s12mae.shards.write.write_shards` on the Dask cluster of ``client``: the same shard set,
    byte for byte, each scene read and cut once by a worker (see the module docstring).

    Args:
        source: the samples (a sequence; sent once to every worker) or a picklable opener
            ``() -> Sequence`` that each worker calls once (e.g. ``functools.partial(open_layout,
            ...)``, so that workers read the dataset themselves).
        out: folder of this shard set (local or shared by the workers, e.g. a network file system).
        cfg, skip_bad, overwrite: as for ``write_shards``.
        client: a ``distributed.Client``.
        progress: show the live progress bar (scenes read, with rate and ETA; chips written, chips/s).
        num_input: the number of samples (default: ``len`` of the samples on the client).
        token: names the opened samples in the workers' cache (default: Dask's hash of ``source``).

    Returns:
        The manifest (also written to ``out/shards.json``).
    """
    from dask.base import tokenize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if num_input is None:
        num_input = len(source() if callable(source) else source)
    token = token or tokenize(source)
    _check_same_input(out, cfg, num_input, overwrite)
    if (out / MANIFEST).exists():
        return json.loads((out / MANIFEST).read_text())
    trusted = (out / PLAN).exists() or (out / PROGRESS).exists()  # same config and input: checked above
    remove_stale_temps(out, prefix=".shard")  # a killed run's temporaries; no writer is active now
    if not trusted:
        _remove_leftovers(out, 0)
    state = _resume_state(out, cfg, num_input)
    atomic_write(out / PROGRESS, json_bytes(state))  # marks the folder as this run's: a rerun keeps its shards
    kept = {int(m.group(1)) for p in out.iterdir() if (m := SHARD_RE.match(p.name))} - set(range(len(state["shards"])))
    if not callable(source):
        source = client.scatter(source, broadcast=True, hash=False)  # a fresh key: the same data scattered by an
        # earlier run has the same content key, and that run releasing it would cancel this run's tasks
    entries, counters = _Run(client, source, token, out, cfg, num_input, skip_bad, progress, state, kept).run()
    if not entries:
        for name in (PROGRESS, PLAN):
            (out / name).unlink(missing_ok=True)
        raise ValueError(f"{out}: no chip was written from {num_input} sample(s): {counters}")
    _remove_leftovers(out, len(entries))
    manifest = new_manifest(cfg, num_input, entries, counters)
    atomic_write(out / MANIFEST, manifest_bytes(manifest))
    for name in (PLAN, PROGRESS):
        (out / name).unlink(missing_ok=True)
    return manifest


def write_shard_set_dask(data: str | Path, out: str | Path, cfg: ShardConfig, cluster: str,
                         layout: str = "simulated", skip_bad: bool = False, overwrite: bool = False,
                         progress: bool = True, split: list[str] | None = None) -> dict[str, Any]:
    """``s12mae shards --cluster``: :func:`~s12mae.shards.write.write_shard_set` with the scenes spread
    over the Dask cluster ``cluster`` (``local:N`` or ``tcp://HOST:PORT``, see
    :func:`s12mae.distributed.open_client`). Every worker opens the dataset itself (``data`` must be
    reachable from the workers: a shared file system or an object-storage URL) and ``out`` must be a
    folder every worker can write. The shard set is byte-identical to the one-process writer's.
    """
    from s12mae.distributed import open_client
    from s12mae.shards.write import layout_opener

    opener = layout_opener(layout, data, cfg, skip_bad, split)
    samples = opener()
    with open_client(cluster) as client:
        manifest = write_shards_distributed(opener, out, cfg, client, skip_bad=skip_bad, overwrite=overwrite,
                                            progress=progress, num_input=len(samples))
    print_summary(manifest, out, layout, list(getattr(samples, "skipped", [])))
    return manifest
