"""Writing a shard set on a Dask cluster: the same bytes as the one-process writer (design note 17).

Two passes over the input, both spread over the workers:

1. **Plan.** Every scene is read and cut (:func:`~s12mae.shards.write._scene_at`, the one-process
   writer's own rule: chip positions from (seed, scene id), validity, skips) and only the number
   of chips it gives and its counters come back. Scenes keep the input's order (the layouts list
   them sorted), so chip ``i`` of the set is the ``i``-th chip of the one-process writer, and
   shard ``k`` holds chips ``[k * chips_per_shard, (k + 1) * chips_per_shard)``. The plan is saved
   (``shards.plan.json``) so that a rerun skips this pass.
2. **Write.** One task per missing shard re-reads the scenes whose chips fall in it, cuts them again
   (deterministic) and writes the shard under a temporary name, then renames it
   (:func:`~s12mae.shards.write._write_shard`, the one-process writer's own code).

The manifest is written last, from the shards' entries in shard order and the scene counters
summed in scene order: byte-identical to ``write_shards`` on the same input. The price of
bounded memory and free assignment is reading each scene twice (a scene that straddles two
shards three times).

Crash safety: a killed worker's task is rerun by the scheduler on another worker (the task is
idempotent); a killed client leaves complete shards under their final names and temporaries
under ``.shard-*.tmp*`` names, and a rerun removes the temporaries, keeps the complete shards and
writes the rest. Shards already in the folder are kept only when the folder holds this run's plan
or a one-process writer's progress file of the same config and input (its shards are the same
bytes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from s12mae.distributed import TaskBar, gather_in_order, worker_cached
from s12mae.files import atomic_write, remove_stale_temps
from s12mae.shards.format import (
    MANIFEST,
    PROGRESS,
    SHARD_RE,
    ShardConfig,
    json_bytes,
    manifest_bytes,
    new_manifest,
)
from s12mae.shards.write import (
    PLAN,
    Placed,
    _check_same_input,
    _fresh_counters,
    _remove_leftovers,
    _scene_at,
    _write_shard,
    print_summary,
)

__all__ = ["write_shard_set_dask", "write_shards_distributed"]

Source = Any
"""Where a task finds the samples: a sequence (scattered to the workers) or a picklable opener
``() -> Sequence`` that each worker calls once (:func:`s12mae.distributed.worker_cached`)."""
Span = tuple[int, int, int]
"""``(scene position, first chip, end chip)``: a run of one scene's chips inside one shard."""

def _plan_task(source: Source, token: str, positions: Sequence[int], cfg: ShardConfig,
               skip_bad: bool) -> list[tuple[int, dict[str, Any]]]:
    """``(chips, counters)`` of each scene at ``positions``."""
    samples = worker_cached(source, token)
    out = []
    for pos in positions:
        counters = _fresh_counters()
        out.append((len(_scene_at(samples, pos, cfg, counters, skip_bad)), counters))
    return out


def _shard_task(source: Source, token: str, out: str, number: int, spans: Sequence[Span], cfg: ShardConfig,
                skip_bad: bool) -> dict[str, Any]:
    """Write shard ``number`` from the chips of ``spans``; its manifest entry."""
    samples = worker_cached(source, token)

    def placed() -> Iterator[Placed]:
        for pos, first, end in spans:
            chips = _scene_at(samples, pos, cfg, _fresh_counters(), skip_bad)
            if len(chips) < end:
                raise ValueError(f"sample {pos}: gave {len(chips)} chips now and at least {end} when the "
                                 "run was planned; the input changed (or failed to load) during the run")
            for j in range(first, end):
                yield chips[j], pos, j, {}

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


def _spans(chips: Sequence[int], per_shard: int) -> list[list[Span]]:
    """The scene spans of every shard: global chip ``i`` goes to shard ``i // per_shard``."""
    shards: list[list[Span]] = [[] for _ in range(math.ceil(sum(chips) / per_shard))]
    start = 0
    for pos, n in enumerate(chips):
        j = 0
        while j < n:
            k, room = divmod(start + j, per_shard)
            take = min(n - j, per_shard - room)
            shards[k].append((pos, j, j + take))
            j += take
        start += n
    return shards


def _plan(client: Any, source: Source, token: str, out: Path, cfg: ShardConfig, num_input: int,
          skip_bad: bool, progress: bool) -> dict[str, Any]:
    """The chips of every scene and the summed counters: read from ``out``'s plan or computed."""
    if (out / PLAN).exists():
        return json.loads((out / PLAN).read_text())
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    per_task = max(1, min(64, math.ceil(num_input / (4 * workers))))
    tasks = [(source, token, list(range(s, min(s + per_task, num_input))), cfg, skip_bad)
             for s in range(0, num_input, per_task)]
    bar, found = TaskBar(num_input, "scene", "planning chips", progress), [0]

    def done(_: int, result: list[tuple[int, dict[str, Any]]]) -> None:
        found[0] += sum(n for n, _ in result)
        bar.update(len(result), chips=found[0])

    try:
        parts = gather_in_order(client, _plan_task, tasks, done, key="s12mae-plan")
    finally:
        bar.close()
    counters = _fresh_counters()
    chips = []
    for part in parts:
        for n, scene_counters in part:
            chips.append(n)
            _merge_counters(counters, scene_counters)
    plan = {"config": cfg.to_dict(), "input_samples": num_input, "chips": chips, "counters": counters}
    atomic_write(out / PLAN, json_bytes(plan))
    return plan


def _entry(path: Path, samples: int) -> dict[str, Any]:
    """The manifest entry of a complete shard already in the folder."""
    return {"name": path.name, "samples": samples, "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def write_shards_distributed(source: Source, out: str | Path, cfg: ShardConfig, client: Any, *,
                             skip_bad: bool = False, overwrite: bool = False, progress: bool = True,
                             num_input: int | None = None, token: str | None = None) -> dict[str, Any]:
    """:func:`~s12mae.shards.write.write_shards` on the Dask cluster of ``client``: the same shard set,
    byte for byte, planned and written by the workers (see the module docstring).

    Args:
        source: the samples (a sequence; sent once to every worker) or a picklable opener
            ``() -> Sequence`` that each worker calls once (e.g. ``functools.partial(open_layout,
            ...)``, so that workers read the dataset themselves).
        out: folder of this shard set (local or shared by the workers, e.g. a network file system).
        cfg, skip_bad, overwrite: as for ``write_shards``.
        client: a ``distributed.Client``.
        progress: show the live progress bars (scenes, then chips, with rate and ETA).
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
    if not callable(source):
        source = client.scatter(source, broadcast=True)
    plan = _plan(client, source, token, out, cfg, num_input, skip_bad, progress)
    spans = _spans(plan["chips"], cfg.chips_per_shard)
    if not spans:
        (out / PLAN).unlink(missing_ok=True)
        raise ValueError(f"{out}: no chip was written from {num_input} sample(s): {plan['counters']}")
    done = {int(m.group(1)) for p in out.iterdir() if (m := SHARD_RE.match(p.name)) and int(m.group(1)) < len(spans)}
    todo = [k for k in range(len(spans)) if k not in done]
    entries = {k: _entry(out / f"shard-{k:06d}.tar", sum(e - f for _, f, e in spans[k])) for k in sorted(done)}
    entries.update(_write_missing(client, source, token, out, cfg, spans, todo, skip_bad, progress))
    _remove_leftovers(out, len(spans))
    manifest = new_manifest(cfg, num_input, [entries[k] for k in range(len(spans))], plan["counters"])
    atomic_write(out / MANIFEST, manifest_bytes(manifest))
    for name in (PLAN, PROGRESS):
        (out / name).unlink(missing_ok=True)
    return manifest


def _write_missing(client: Any, source: Source, token: str, out: Path, cfg: ShardConfig,
                   spans: list[list[Span]], todo: list[int], skip_bad: bool,
                   progress: bool) -> dict[int, dict[str, Any]]:
    """Write shards ``todo`` on the workers, with a live bar of chips (rate, ETA) and scenes done."""
    scenes = {pos for k in todo for pos, _, _ in spans[k]}
    total = sum(e - f for k in todo for _, f, e in spans[k])
    bar, seen = TaskBar(total, "chip", "writing shards", progress), set()

    def done(i: int, entry: dict[str, Any]) -> None:
        seen.update(pos for pos, _, _ in spans[todo[i]])
        bar.update(entry["samples"], scenes=f"{len(seen)}/{len(scenes)}")

    tasks = [(source, token, str(out), k, spans[k], cfg, skip_bad) for k in todo]
    try:
        results = gather_in_order(client, _shard_task, tasks, done, key="s12mae-shard")
    finally:
        bar.close()
    return dict(zip(todo, results))



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
