"""The candidate search (DuckDB core SQL), exact overlaps and the choice of one S1 per S2.

Design note 11: every footprint part is put in all the ``cell_deg`` grid cells its bbox touches;
the S2 side is repeated over the time buckets (``window`` wide) t-1, t, t+1; the join is on one
(cell, time bucket) key, then filtered by ``|gap| <= window``, bbox intersection and a reference
cell (the cell of the intersection's lower-left corner, so each candidate is counted once per
part pair). The bbox intersection over the S2 area is an upper bound of the overlap, exact for
boxes. Location candidates join on (location, time bucket) the same way. A window function then
keeps, per S2, only the candidates ranked no worse than its best *certain* one (a location match,
or boxes whose overlap is exact); exact overlaps (vectorised shapely) are computed only for those.

Bounded memory at archive scale (:func:`best_candidates`): the S2 items are taken in time windows
of ``partition_days``; each window is searched against the S1 items within the search window
(``max_days`` or ``nearest_days``) of it only, and its best candidates are chosen before the next
window. Every S2 item's candidates all fall in its own window's search (they are within the search
window of it), and the choice is made per S2 item, so the result is exactly the unpartitioned one.
DuckDB's ``memory_limit`` and ``temp_directory`` (:func:`connect`) bound the join itself and let
it spill to disk.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import shapely

from s12mae.pairing.geometry import as_geometries
from s12mae.pairing.items import Items

__all__ = ["Candidates", "Match", "Query", "best_candidates", "candidates", "connect", "exact_overlap",
           "select_best"]

Match = Literal["auto", "footprint", "location"]


@dataclass
class Candidates:
    """Candidate (S2, S1) pairs as parallel ``(K,)`` arrays.

    Attributes:
        s2: S2 item row.
        s1: S1 item row.
        gap_us: ``t_S1 - t_S2`` in microseconds.
        by_footprint: matched by footprint overlap (else by equal location keys).
        certain: the overlap is known exactly already (both footprints are boxes).
        overlap: area(S2 & S1) / area(S2) where known, else NaN.
        rank: ``2 |gap| + (gap > 0)``: orders by ``|gap|``, and for equal ``|gap|`` puts the earlier
            S1 (the negative gap) first.
    """

    s2: np.ndarray
    s1: np.ndarray
    gap_us: np.ndarray
    by_footprint: np.ndarray
    certain: np.ndarray
    overlap: np.ndarray

    @property
    def rank(self) -> np.ndarray:
        return 2 * np.abs(self.gap_us) + (self.gap_us > 0)

    def __len__(self) -> int:
        return len(self.s2)

    def take(self, rows: np.ndarray) -> Candidates:
        return Candidates(**{k: v[rows] for k, v in vars(self).items()})

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, np.zeros(0, bool), np.zeros(0, bool), np.zeros(0))
        return cls(**{k: np.concatenate([vars(p)[k] for p in parts]) for k in vars(parts[0])})


@dataclass(frozen=True)
class Query:
    """One candidate search.

    Attributes:
        s2_mask: ``(N2,)`` the S2 items to find candidates for.
        window_us: largest ``|t_S1 - t_S2|``, microseconds.
        min_overlap: smallest area(S2 & S1) / area(S2) of a footprint match.
        match: how "same place" is decided (``auto``, ``footprint``, ``location``).
        cell_deg: grid cell of the spatial join, degrees (speed only).
        s1_mask: ``(N1,)`` the S1 items to search among (``None``: all).
    """

    s2_mask: np.ndarray
    window_us: int
    min_overlap: float
    match: Match
    cell_deg: float
    s1_mask: np.ndarray | None = None


@dataclass(frozen=True)
class _TimeBuckets:
    """Times cut into buckets one ``window`` wide (at least 1 s); bucket 0 and the last two stay
    free for the S2 side's t-1 and t+1 copies."""

    s2: np.ndarray  # (N2,) bucket of each S2 item
    s1: np.ndarray  # (N1,) bucket of each S1 item
    count: int

    @classmethod
    def of(cls, s2: Items, s1: Items, window_us: int) -> _TimeBuckets:
        width = max(int(window_us), 1_000_000)
        t0 = int(min(s2.t_us.min(), s1.t_us.min())) if len(s2) and len(s1) else 0
        b2, b1 = (s2.t_us - t0) // width + 1, (s1.t_us - t0) // width + 1
        return cls(b2, b1, int(max(b2.max(initial=0), b1.max(initial=0))) + 3)


def connect(threads: int | None, memory_limit: str | None = None, temp_directory: str | None = None) -> Any:
    """A DuckDB connection with ``threads`` threads (default: all cores), at most ``memory_limit``
    of memory for its operators (DuckDB's form, e.g. ``"4GB"``; default: DuckDB's, 80 % of RAM)
    and ``temp_directory`` to spill joins and sorts to once the limit is reached."""
    import duckdb

    config: dict[str, Any] = {"threads": int(threads or os.cpu_count() or 1), "preserve_insertion_order": False}
    if memory_limit is not None:
        config["memory_limit"] = str(memory_limit)
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    try:
        return duckdb.connect(config=config)
    except duckdb.Error as err:
        raise ValueError(f"DuckDB refused memory_limit={memory_limit!r} / temp_directory={temp_directory!r}: "
                         f"{err}") from None


def _query(con: Any, tables: dict[str, pa.Table], sql: str) -> dict[str, np.ndarray]:
    for name, table in tables.items():
        con.register(name, table)
    try:
        return con.execute(sql).fetchnumpy()
    finally:
        for name in tables:
            con.unregister(name)


def _cells(part_box: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Every grid cell each part's bbox touches -> (part row, cell key)."""
    nx, ny = math.ceil(360.0 / cell), math.ceil(180.0 / cell)
    cx0 = np.clip(np.floor((part_box[:, 0] + 180.0) / cell), 0, nx - 1).astype(np.int64)
    cx1 = np.clip(np.floor((part_box[:, 2] + 180.0) / cell), 0, nx - 1).astype(np.int64)
    cy0 = np.clip(np.floor((part_box[:, 1] + 90.0) / cell), 0, ny - 1).astype(np.int64)
    cy1 = np.clip(np.floor((part_box[:, 3] + 90.0) / cell), 0, ny - 1).astype(np.int64)
    wx, wy = cx1 - cx0 + 1, cy1 - cy0 + 1
    count = wx * wy
    rep = np.repeat(np.arange(len(part_box)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return rep, (cx0[rep] + k % wx[rep]) * ny + cy0[rep] + k // wx[rep]


def _cell_table(
    items: Items, parts: np.ndarray, cell: float, buckets: np.ndarray, count: int, offsets: tuple[int, ...]
) -> pa.Table:
    """One row per (part, grid cell, time bucket offset): key, item row, time, part box, location."""
    rep, cell_key = _cells(items.part_box[parts], cell)
    parts = parts[rep]
    rows = items.part_item[parts]
    copies = len(offsets)

    def repeat(a: np.ndarray) -> np.ndarray:
        return a if copies == 1 else np.tile(a, copies)

    columns = {
        "key": np.concatenate([cell_key * count + buckets[rows] + d for d in offsets]),
        "row": repeat(rows),
        "t": repeat(items.t_us[rows]),
    }
    for k, name in enumerate(("x0", "y0", "x1", "y1")):
        columns[name] = repeat(items.part_box[parts, k])
    columns["loc"] = repeat(items.loc_code[rows])
    return pa.table(columns)


def _footprint_sides(
    s2: Items, s1: Items, s2_mask: np.ndarray, match: Match, s1_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Items that take part in the footprint join. Under ``auto``, pairs where both sides have a
    location are decided by location (whole sides are dropped where that is certain)."""
    s2_ok, s1_ok = s2_mask & s2.has_geom, s1.has_geom.copy()
    if s1_mask is not None:
        s1_ok &= s1_mask
    if match == "auto":
        if (s1.loc_code >= 0).all():
            s2_ok &= s2.loc_code < 0
        if (s2.loc_code[s2_ok] >= 0).all():
            s1_ok &= s1.loc_code < 0
    return s2_ok, s1_ok


def _footprint_sql(count: int, cell: float, window_us: int, match: Match) -> str:
    nx, ny = math.ceil(360.0 / cell), math.ceil(180.0 / cell)
    both_loc = "AND NOT (s2.loc >= 0 AND s1.loc >= 0)" if match == "auto" else ""
    return f"""
        SELECT s2_row, s1_row, any_value(gap) AS gap, sum(inter) AS inter FROM (
          SELECT s2.row AS s2_row, s1.row AS s1_row, s1.t - s2.t AS gap,
                 (least(s2.x1, s1.x1) - greatest(s2.x0, s1.x0))
                   * (least(s2.y1, s1.y1) - greatest(s2.y0, s1.y0)) AS inter,
                 s2.key // {count} AS c,
                 least({nx - 1}, greatest(0, floor((greatest(s2.x0, s1.x0) + 180.0::DOUBLE)
                                                   / {cell!r}::DOUBLE)::BIGINT)) * {ny}
                 + least({ny - 1}, greatest(0, floor((greatest(s2.y0, s1.y0) + 90.0::DOUBLE)
                                                     / {cell!r}::DOUBLE)::BIGINT)) AS ref
          FROM s2_cells s2 JOIN s1_cells s1 ON s2.key = s1.key
          WHERE abs(s1.t - s2.t) <= {int(window_us)}
            AND least(s2.x1, s1.x1) > greatest(s2.x0, s1.x0)
            AND least(s2.y1, s1.y1) > greatest(s2.y0, s1.y0) {both_loc}
        ) WHERE c = ref GROUP BY s2_row, s1_row
    """


def _footprint_candidates(con: Any, s2: Items, s1: Items, query: Query) -> Candidates | None:
    """Same-place-by-footprint candidates: grid cell x time bucket join, bbox upper bound >= min."""
    s2_ok, s1_ok = _footprint_sides(s2, s1, query.s2_mask, query.match, query.s1_mask)
    window_us, cell = query.window_us, query.cell_deg
    s2_parts, s1_parts = np.flatnonzero(s2_ok[s2.part_item]), np.flatnonzero(s1_ok[s1.part_item])
    if not (len(s2_parts) and len(s1_parts)):
        return None
    buckets = _TimeBuckets.of(s2, s1, window_us)
    tables = {
        "s2_cells": _cell_table(s2, s2_parts, cell, buckets.s2, buckets.count, (-1, 0, 1)),
        "s1_cells": _cell_table(s1, s1_parts, cell, buckets.s1, buckets.count, (0,)),
    }
    res = _query(con, tables, _footprint_sql(buckets.count, cell, window_us, query.match))
    s2_rows, s1_rows = np.asarray(res["s2_row"], np.int64), np.asarray(res["s1_row"], np.int64)
    inter = np.asarray(res["inter"], float)
    bound = inter / s2.area[s2_rows]
    keep = (inter > 0) & (bound >= query.min_overlap)
    s2_rows, s1_rows, bound = s2_rows[keep], s1_rows[keep], bound[keep]
    certain = s2.rect[s2_rows] & s1.rect[s1_rows]
    return Candidates(
        s2_rows,
        s1_rows,
        np.asarray(res["gap"], np.int64)[keep],
        np.ones(len(s2_rows), bool),
        certain,
        np.where(certain, bound, np.nan),
    )


def _location_candidates(
    con: Any, s2: Items, s1: Items, s2_mask: np.ndarray, window_us: int, s1_mask: np.ndarray | None = None
) -> Candidates | None:
    """Same-place-by-location candidates: location x time bucket join."""
    s2_rows = np.flatnonzero(s2_mask & (s2.loc_code >= 0))
    s1_rows = np.flatnonzero((s1.loc_code >= 0) & (True if s1_mask is None else s1_mask))
    if not (len(s2_rows) and len(s1_rows)):
        return None
    buckets = _TimeBuckets.of(s2, s1, window_us)
    s2_key = s2.loc_code[s2_rows] * buckets.count + buckets.s2[s2_rows]
    tables = {
        "s2_locs": pa.table(
            {
                "key": np.concatenate([s2_key + d for d in (-1, 0, 1)]),
                "row": np.tile(s2_rows, 3),
                "t": np.tile(s2.t_us[s2_rows], 3),
            }
        ),
        "s1_locs": pa.table(
            {
                "key": s1.loc_code[s1_rows] * buckets.count + buckets.s1[s1_rows],
                "row": s1_rows,
                "t": s1.t_us[s1_rows],
            }
        ),
    }
    res = _query(
        con,
        tables,
        f"""
        SELECT s2.row AS s2_row, s1.row AS s1_row, s1.t - s2.t AS gap
        FROM s2_locs s2 JOIN s1_locs s1 ON s2.key = s1.key WHERE abs(s1.t - s2.t) <= {int(window_us)}
    """,
    )
    n = len(res["s2_row"])
    return Candidates(
        np.asarray(res["s2_row"], np.int64),
        np.asarray(res["s1_row"], np.int64),
        np.asarray(res["gap"], np.int64),
        np.zeros(n, bool),
        np.ones(n, bool),
        np.full(n, np.nan),
    )


def _prune(con: Any, cand: Candidates) -> Candidates:
    """Per S2, keep the candidates ranked no worse than its best certain one (window function)."""
    table = pa.table({"r": np.arange(len(cand)), "s2": cand.s2, "k": cand.rank, "certain": cand.certain})
    keep = _query(
        con,
        {"cand": table},
        """
        SELECT r FROM (
          SELECT r, k, min(CASE WHEN certain THEN k END) OVER (PARTITION BY s2) AS kc FROM cand
        ) WHERE kc IS NULL OR k <= kc
    """,
    )["r"]
    return cand.take(np.sort(np.asarray(keep, np.int64)))


def candidates(con: Any, s2: Items, s1: Items, query: Query) -> Candidates:
    """Same-place S1 candidates of ``query``, pruned per S2 to those ranked no worse than its best
    certain candidate."""
    parts = []
    if query.match in ("auto", "footprint"):
        parts.append(_footprint_candidates(con, s2, s1, query))
    if query.match in ("auto", "location"):
        parts.append(_location_candidates(con, s2, s1, query.s2_mask, query.window_us, query.s1_mask))
    found = [p for p in parts if p is not None]
    return _prune(con, Candidates.concat(found)) if found else Candidates.concat([])


def exact_overlap(s2: Items, s1: Items, s2_rows: np.ndarray, s1_rows: np.ndarray) -> np.ndarray:
    """area(S2 & S1) / area(S2) for each (S2, S1) row pair; NaN where a footprint is missing."""
    overlap = np.full(len(s2_rows), np.nan)
    ok = s2.has_geom[s2_rows] & s1.has_geom[s1_rows]
    boxes = ok & s2.rect[s2_rows] & s1.rect[s1_rows] & s2.single[s2_rows] & s1.single[s1_rows]
    if boxes.any():
        a, b = s2.bbox[s2_rows[boxes]], s1.bbox[s1_rows[boxes]]
        w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        overlap[boxes] = np.where((w > 0) & (h > 0), w * h, 0.0) / s2.area[s2_rows[boxes]]
    shapes = ok & ~boxes
    if shapes.any():
        inter = shapely.intersection(as_geometries(s2, s2_rows[shapes]), as_geometries(s1, s1_rows[shapes]))
        overlap[shapes] = shapely.area(inter) / s2.area[s2_rows[shapes]]
    return overlap


def _smallest_id_of_ties(
    s1: Items,
    sel: Candidates,
    order: np.ndarray,
    keys: tuple[np.ndarray, ...],
    first: np.ndarray,
    winners: np.ndarray,
) -> np.ndarray:
    """Where the best candidates of an S2 tie on (|gap|, S1 time, overlap), the smaller s1_id wins
    (rare, resolved in Python). ``keys`` are the sort keys in ``order``; ``first`` marks each S2's
    first row."""
    same = np.all([k[1:] == k[:-1] for k in keys], axis=0)
    tie = np.r_[False, same]
    if not tie.any():
        return winners
    winners = winners.copy()
    starts = np.flatnonzero(first)
    for g in np.unique((np.cumsum(first) - 1)[tie]):
        s = e = starts[g]
        while e + 1 < len(order) and same[e]:
            e += 1
        rows = order[s : e + 1]
        ids = [s1.ids[int(x)].as_py() for x in sel.s1[rows]]
        winners[g] = rows[min(range(len(ids)), key=lambda q: ids[q])]
    return winners


def select_best(s2: Items, s1: Items, cand: Candidates, min_overlap: float) -> Candidates:
    """Exact overlaps where needed, the footprint test, then the best candidate per S2: the
    smallest rank (|gap|, then the earlier S1), then the larger overlap, then the smaller s1_id."""
    overlap = exact_overlap(s2, s1, cand.s2, cand.s1)
    fp_certain = cand.by_footprint & cand.certain
    overlap = np.where(
        fp_certain & ~np.isnan(cand.overlap), cand.overlap, overlap
    )  # the value the SQL test used
    passes = ~cand.by_footprint | fp_certain | ((overlap > 0) & (overlap >= min_overlap))
    sel = cand.take(passes)
    sel.overlap = overlap[passes]
    if not len(sel):
        return sel
    overlap_key = -np.where(np.isnan(sel.overlap), -1.0, sel.overlap)  # unknown overlap ranks lowest
    rank = sel.rank
    order = np.lexsort((overlap_key, rank, sel.s2))
    keys = (sel.s2[order], rank[order], overlap_key[order])
    first = np.r_[True, keys[0][1:] != keys[0][:-1]]
    winners = _smallest_id_of_ties(s1, sel, order, keys, first, order[first])
    return sel.take(winners)


def best_candidates(con: Any, s2: Items, s1: Items, query: Query, partition_days: float | None = None,
                    on_partition: Any = None) -> Candidates:
    """The best candidate of every S2 item of ``query`` (:func:`candidates`, then :func:`select_best`).

    With ``partition_days``, the S2 items are searched window by window (``partition_days`` wide,
    from the earliest S2 time), each against the S1 items within ``query.window_us`` of the window
    only, so that the join's tables and results stay bounded by one window's share; the result is
    the same as without (see the module docstring). ``on_partition(done, total)`` reports progress.
    """
    if partition_days is None or not len(s2) or not query.s2_mask.any():
        return select_best(s2, s1, candidates(con, s2, s1, query), query.min_overlap)
    if not partition_days > 0:
        raise ValueError(f"partition_days must be > 0, not {partition_days!r}")
    width = max(1, round(partition_days * 86_400_000_000))
    t2 = s2.t_us
    t0 = int(t2[query.s2_mask].min())
    window = (t2 - t0) // width  # (N2,) window of each S2 item; < 0 only for items outside the mask
    todo = np.unique(window[query.s2_mask])
    order = np.argsort(s1.t_us, kind="stable")  # S1 rows by time: each window's S1 is one slice
    t1 = s1.t_us[order]
    parts = []
    for i, k in enumerate(todo):
        lo, hi = t0 + int(k) * width - query.window_us, t0 + (int(k) + 1) * width + query.window_us
        s1_mask = np.zeros(len(s1), bool)
        s1_mask[order[np.searchsorted(t1, lo, "left"):np.searchsorted(t1, hi, "right")]] = True
        part = Query(query.s2_mask & (window == k), query.window_us, query.min_overlap, query.match,
                     query.cell_deg, s1_mask if query.s1_mask is None else s1_mask & query.s1_mask)
        parts.append(select_best(s2, s1, candidates(con, s2, s1, part), query.min_overlap))
        if on_partition is not None:
            on_partition(i + 1, len(todo))
    best = Candidates.concat(parts)
    return best.take(np.argsort(best.s2, kind="stable"))
