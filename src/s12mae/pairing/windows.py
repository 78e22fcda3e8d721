"""Pairing parquet indexes window by window: memory bounded by one time window, not the archive.

:func:`pair_files` is what ``s12mae pair --partition_days D`` runs when the S2 and the S1 inputs
are two parquet indexes:

1. A streaming pass over each file (``batch_rows`` rows at a time) finds the time range; a second
   one sorts the rows of the side's sensor family into window files ``D`` days wide in a scratch
   folder, each row keeping its number in the input file.
2. Each window's S2 items are paired (:func:`s12mae.pairing.pair_items`) with the S1 items of the
   window widened on both sides by the search's reach (``max_days``, or ``nearest_days`` when the
   S2-only rows look for their nearest S1). Every S1 item that the whole search could consider for
   those S2 items is there, and the choice is made per S2 item by a rule that does not depend on
   which other items are present, so each S2 item gets exactly the row the whole search gives it.
3. DuckDB merges the window outputs in input row order (an external sort under ``memory_limit``,
   spilling to ``temp_directory``) into ``pairs.parquet`` and ``s2_only.parquet``, written under
   temporary names and renamed once both are complete.

Peak memory is one window's: its S2 rows and its widened S1 rows as :class:`Items` plus their
search, or one batch of the streaming passes. Statistics are summed over the windows (an S1 item
counts in the window of its own time); ``s1_used`` and ``s1_max_reuse`` are counted on the merged
pairs; ids are checked unique over the whole file. Errors about a row name the file, the batch or
window and the item's id.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s12mae.files import atomic_path
from s12mae.pairing.items import (
    _TABLE_SUFFIXES,
    Items,
    _col,
    _keep_family,
    _table_family,
    concat_items,
    items_from_table,
    loading,
    out_of_memory,
)
from s12mae.pairing.results import PAIR_SCHEMA, S2_ONLY_SCHEMA, US_PER_DAY
from s12mae.pairing.search import connect
from s12mae.times import times_to_us

__all__ = ["BATCH_ROWS", "pair_files", "windowed_inputs"]

BATCH_ROWS = 1_000_000
"""Rows per batch of the streaming passes (ours: ~0.1-0.2 GB of parquet decoded at once)."""
log = logging.getLogger(__name__)

_MERGE_ROWS = 262_144  # rows per batch of the merged outputs (ours)
_ROW = "_s12mae_row"  # the row's number in its input file, carried through the windows


def windowed_inputs(s2: Any, s1: Any) -> bool:
    """Whether :func:`pair_files` can read ``s2`` and ``s1`` window by window: two different
    parquet files."""
    if not all(isinstance(x, str | os.PathLike) for x in (s2, s1)):
        return False
    a, b = Path(s2), Path(s1)
    parquet = all(p.name.lower().endswith(_TABLE_SUFFIXES) and p.is_file() for p in (a, b))
    return parquet and a.resolve() != b.resolve()


@dataclass(frozen=True)
class _Side:
    """One input file and the columns the passes read."""

    path: Path
    family: str
    id_col: str
    time_col: str

    @classmethod
    def of(cls, path: Any, family: str) -> _Side:
        path = Path(path)
        try:
            names = pq.read_schema(path).empty_table()
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path}: cannot read the table: {e}") from None
        id_col, time_col = _col(names, ["id"]), _col(names, ["time", "datetime"])
        if id_col is None or time_col is None:
            missing = "an 'id'" if id_col is None else "a 'time'"
            raise ValueError(f"{path}: has no {missing} column (columns: {names.column_names})")
        return cls(path, family, id_col, time_col)

    def batches(self, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """``(first row, table)`` of each batch of the file."""
        row0 = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows, columns=columns):
            yield row0, pa.Table.from_batches([batch])
            row0 += batch.num_rows

    def where(self, row0: int) -> str:
        return f"{self.path} (batch from row {row0})"


def _time_range(side: _Side, batch_rows: int) -> tuple[int, int] | None:
    lo, hi = None, None
    for row0, tab in side.batches(batch_rows, [side.id_col, side.time_col]):
        if tab.num_rows:
            t = times_to_us(
                tab.column(side.time_col), side.where(row0), tab.column(side.id_col).combine_chunks()
            )
            lo = int(t.min()) if lo is None else min(lo, int(t.min()))
            hi = int(t.max()) if hi is None else max(hi, int(t.max()))
    return None if lo is None else (lo, hi)  # type: ignore[return-value]


def _split(side: _Side, t0: int, width: int, batch_rows: int, folder: Path) -> dict[int, Path]:
    """The file's rows of ``side.family`` (or of no named family) sorted into window files."""
    writers: dict[int, pq.ParquetWriter] = {}
    files: dict[int, Path] = {}
    try:
        for row0, tab in side.batches(batch_rows):
            ids = tab.column(side.id_col).combine_chunks()
            tab = tab.append_column(_ROW, pa.array(np.arange(row0, row0 + tab.num_rows, dtype=np.int64)))
            tab, _ = _keep_family(tab, _table_family(tab, side.where(row0), ids), side.family)
            if not tab.num_rows:
                continue
            t = times_to_us(
                tab.column(side.time_col), side.where(row0), tab.column(side.id_col).combine_chunks()
            )
            window = (t - t0) // width
            order = np.argsort(window, kind="stable")
            sorted_w = window[order]
            starts = np.flatnonzero(np.r_[True, sorted_w[1:] != sorted_w[:-1]])
            for a, b in zip(starts, [*starts[1:], len(order)], strict=True):
                k = int(sorted_w[a])
                if k not in writers:
                    files[k] = folder / f"{side.family}-{k:06d}.parquet"
                    writers[k] = pq.ParquetWriter(files[k], tab.schema)
                writers[k].write_table(tab.take(order[a:b]))
    finally:
        for w in writers.values():
            w.close()
    return files


def _check_unique_ids(con: Any, side: _Side, files: dict[int, Path]) -> None:
    """Ids unique over the whole file: 64-bit hashes of every id (8 bytes a row) sorted in memory,
    equal hashes checked on the ids themselves."""
    if not files:
        return
    hashes = np.sort(
        np.concatenate(
            [
                con.sql(f"SELECT hash(\"{side.id_col}\") AS h FROM read_parquet('{f}')").fetchnumpy()["h"]
                for f in files.values()
            ]
        )
    )
    same = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])[:1000]
    if not same.size:
        return
    listed = ", ".join(repr(str(p)) for p in files.values())
    wanted = ", ".join(str(int(h)) for h in same)
    dup = con.sql(
        f'SELECT "{side.id_col}" FROM read_parquet([{listed}]) WHERE hash("{side.id_col}") IN ({wanted}) '
        "GROUP BY 1 HAVING count(*) > 1 LIMIT 3"
    ).fetchall()
    if dup:
        raise ValueError(f"{side.path}: ids are not unique, e.g. {[d[0] for d in dup]}")


@dataclass(frozen=True)
class _Window:
    """Window ``k``: S2 times in ``[start, end)``; S1 times in ``[start - reach, end + reach]``."""

    k: int
    start: int
    end: int
    reach: int

    def name(self) -> str:
        start, end = (
            datetime.fromtimestamp(t / 1e6, UTC).isoformat(timespec="seconds") for t in (self.start, self.end)
        )
        return f"time window {start} .. {end}"


def _read(side: _Side, file: Path, lo: int, hi: int, where: str) -> tuple[Items | None, np.ndarray]:
    """The items of window file ``file`` with times in ``[lo, hi)`` (and their rows in the input)."""
    tab = pq.read_table(file)
    t = times_to_us(tab.column(side.time_col), where, tab.column(side.id_col).combine_chunks())
    tab = tab.filter(pa.array((t >= lo) & (t < hi)))
    if not tab.num_rows:
        return None, np.zeros(0, np.int64)
    rows = tab.column(_ROW).to_numpy()
    return loading(where, lambda: items_from_table(tab, where, side.path.parent, side.family)), rows


class _Totals:
    """Statistics summed over the windows."""

    SUMMED = (
        "s2",
        "s1",
        "pairs",
        "s2_only",
        "s2_no_footprint",
        "s1_no_footprint",
        "s1_ignored",
        "s2_unplaceable",
        "pairs_by_location",
        "pairs_by_footprint",
    )

    def __init__(self) -> None:
        self.stats = dict.fromkeys(self.SUMMED, 0)

    def add_s2(self, window_stats: dict[str, Any]) -> None:
        for key in (
            "s2",
            "pairs",
            "s2_only",
            "s2_no_footprint",
            "s2_unplaceable",
            "pairs_by_location",
            "pairs_by_footprint",
        ):
            self.stats[key] += int(window_stats[key])

    def add_s1(self, s1: Items, match: str) -> None:
        """One S1 window file's items (each S1 item is in exactly one)."""
        has_loc = s1.location.is_valid().to_numpy(zero_copy_only=False)
        usable = {"footprint": s1.has_geom, "location": has_loc}.get(match, s1.has_geom | has_loc)
        self.stats["s1"] += len(s1)
        self.stats["s1_no_footprint"] += int((~s1.has_geom).sum())
        self.stats["s1_ignored"] += int((~usable).sum())


class _S1Windows:
    """The S1 window files parsed once each and kept while a later window still needs them."""

    def __init__(
        self, side: _Side, files: dict[int, Path], width: int, t0: int, totals: _Totals, match: str
    ) -> None:
        self.side, self.files, self.width, self.t0 = side, files, width, t0
        self.totals, self.match = totals, match
        self.cache: dict[int, Items | None] = {}

    def get(self, k: int) -> Items | None:
        if k not in self.cache:
            start = self.t0 + k * self.width
            win = _Window(k, start, start + self.width, 0)
            self.cache[k] = None
            if k in self.files:
                items, _ = _read(
                    self.side, self.files[k], win.start, win.end, f"{self.side.path}, {win.name()}"
                )
                self.cache[k] = items
                if items is not None:
                    self.totals.add_s1(items, self.match)
        return self.cache[k]

    def around(self, win: _Window) -> Items | None:
        """The S1 items of the window files that hold times within ``win.reach`` of ``win``."""
        lo = win.k + math.floor(-win.reach / self.width)
        hi = win.k + math.floor((self.width + win.reach) / self.width)
        for k in [k for k in self.cache if k < lo]:
            del self.cache[k]
        parts = [items for k in range(lo, hi + 1) if (items := self.get(k)) is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else concat_items(parts, f"{self.side.path}, around {win.name()}")


def _pair_window(
    win: _Window,
    s2_side: _Side,
    s2_files: dict[int, Path],
    s1: _S1Windows,
    rule: Any,
    resources: Any,
    con: Any,
    parts: Path,
    totals: _Totals,
) -> None:
    from s12mae.pairing import pair_items

    if win.k not in s2_files:
        s1.get(win.k)  # counted in the statistics even where no S2 item is near
        return
    s2, s2_rows = _read(s2_side, s2_files[win.k], win.start, win.end, f"{s2_side.path}, {win.name()}")
    s1_items = s1.around(win)
    if s2 is None:
        return
    if s1_items is None:  # nothing to pair with: an empty S1 side with the right columns
        some = next(iter(s1.files.values()))
        s1_items = items_from_table(pq.read_table(some).slice(0, 0), str(s1.side.path), s1.side.path.parent)
    found = pair_items(s2, s1_items, rule, resources, {}, con)
    totals.add_s2(found.result.stats)
    res = found.result
    pq.write_table(
        res.pairs.append_column(_ROW, pa.array(s2_rows[found.pair_s2])), parts / f"pairs-{win.k:06d}.parquet"
    )
    pq.write_table(
        res.s2_only.append_column(_ROW, pa.array(s2_rows[found.lone])), parts / f"s2_only-{win.k:06d}.parquet"
    )


def _merge(con: Any, parts: Path, name: str, schema: pa.Schema, target: Path) -> None:
    """The window outputs ``<name>-*.parquet`` in input row order -> ``target`` (streamed through
    DuckDB's external sort, written in ``schema``)."""
    with pq.ParquetWriter(target, schema) as writer:
        if not any(parts.glob(f"{name}-*.parquet")):
            writer.write_table(schema.empty_table())
            return
        glob = str(parts / f"{name}-*.parquet")
        reader = con.sql(
            f"SELECT * EXCLUDE ({_ROW}) FROM read_parquet('{glob}') ORDER BY {_ROW}"
        ).to_arrow_reader(_MERGE_ROWS)
        for batch in reader:
            writer.write_batch(
                pa.RecordBatch.from_arrays(
                    [col.cast(field.type) for col, field in zip(batch.columns, schema, strict=True)],
                    schema=schema,
                )
            )


def _reuse(con: Any, parts: Path) -> tuple[int, int]:
    """(distinct S1 items used, most pairs of one S1 item) over the window outputs."""
    if not any(parts.glob("pairs-*.parquet")):
        return 0, 0
    glob = str(parts / "pairs-*.parquet")
    used, most = con.execute(
        f"SELECT count(*), coalesce(max(c), 0) FROM (SELECT s1_id, count(*) AS c "
        f"FROM read_parquet('{glob}') GROUP BY s1_id)"
    ).fetchone()
    return int(used), int(most)


def pair_files(
    s2: Any, s1: Any, out: Any, rule: Any, resources: Any, batch_rows: int = BATCH_ROWS, on_window: Any = None
) -> dict[str, Any]:
    """Pair two parquet indexes window by window and write ``out/pairs.parquet`` and
    ``out/s2_only.parquet`` (see the module docstring); the same files as ``pair`` +
    ``write_outputs``.

    Args:
        s2, s1: the S2 and the S1 parquet index (two files).
        out: output folder.
        rule, resources: the pairing settings and ``Resources`` (``partition_days`` is the window).
        batch_rows: rows per batch of the streaming passes.
        on_window: ``on_window(done, total)`` after each window (progress).

    Returns the statistics, as ``pair`` gives them (``seconds`` has this path's stages).
    """
    t_start = _time.perf_counter()
    if not (resources.partition_days and resources.partition_days > 0):
        raise ValueError(f"partition_days must be > 0, not {resources.partition_days!r}")
    width = max(1, round(resources.partition_days * US_PER_DAY))
    sides = (_Side.of(s2, "s2"), _Side.of(s1, "s1"))
    ranges = [r for r in (_time_range(s, batch_rows) for s in sides) if r is not None]
    if len(ranges) < 2:
        empty = sides[0] if _time_range(sides[0], batch_rows) is None else sides[1]
        raise ValueError(f"{empty.path}: holds no rows")
    t0, t1 = min(r[0] for r in ranges), max(r[1] for r in ranges)
    timings: dict[str, float] = {"scan_s": _time.perf_counter() - t_start}
    if resources.temp_directory is not None:
        Path(resources.temp_directory).mkdir(parents=True, exist_ok=True)
    con = connect(resources.threads, resources.memory_limit, resources.temp_directory)
    with contextlib.ExitStack() as stack:
        stack.callback(con.close)
        scratch = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="s12mae-pair-", dir=resources.temp_directory)
            )
        )
        t = _time.perf_counter()
        files = tuple(_split(side, t0, width, batch_rows, scratch) for side in sides)
        for side, f in zip(sides, files, strict=True):
            if not f:
                raise ValueError(f"{side.path}: holds no {side.family.upper()} items")
            _check_unique_ids(con, side, f)
        timings["split_s"] = _time.perf_counter() - t
        log.info("split into %d-day windows in %.0f s", resources.partition_days, timings["split_s"])
        t = _time.perf_counter()
        totals = _Totals()
        s1_windows = _S1Windows(sides[1], files[1], width, t0, totals, rule.match)
        reach = round(rule.reach_days * US_PER_DAY)
        n = (t1 - t0) // width + 1
        for k in range(n):
            win = _Window(k, t0 + k * width, t0 + (k + 1) * width, reach)
            try:
                _pair_window(win, sides[0], files[0], s1_windows, rule, resources, con, scratch, totals)
            except MemoryError as err:
                raise out_of_memory(f"{sides[0].path} and {sides[1].path}, {win.name()}", None, err) from None
            log.info(
                "window %d of %d done (%s); %d S2 rows so far, %.0f s",
                k + 1,
                n,
                win.name(),
                totals.stats["s2"],
                _time.perf_counter() - t,
            )
            if on_window is not None:
                on_window(k + 1, n)
        timings["windows_s"] = _time.perf_counter() - t
        t = _time.perf_counter()
        target = Path(out)
        with (
            atomic_path(target / "pairs.parquet") as pairs_tmp,
            atomic_path(target / "s2_only.parquet") as only_tmp,
        ):
            _merge(con, scratch, "pairs", PAIR_SCHEMA, pairs_tmp)
            _merge(con, scratch, "s2_only", S2_ONLY_SCHEMA, only_tmp)
        used, most = _reuse(con, scratch)
        timings["merge_s"] = _time.perf_counter() - t
    stats: dict[str, Any] = dict(totals.stats, s1_used=used, s1_max_reuse=most, windows=int(n))
    stats.update(rule.settings(), seconds=dict(timings, total_s=_time.perf_counter() - t_start))
    return stats
