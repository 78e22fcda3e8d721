"""What pairing returns and writes: the ``pairs`` and ``s2_only`` tables, statistics, the files.

- ``pairs.parquet``: s2_id, s1_id, s2_time, s1_time, gap_hours (signed, S1 minus S2), overlap
  (null if a footprint is missing), s2_path, s1_path, location (the S2's, else the S1's),
  match (``footprint`` or ``location``).
- ``s2_only.parquet``: s2_id, s2_time, s2_path, location, reason (``no_footprint``: cannot be
  placed (no footprint, nor a location where locations count; ``no_location`` under
  ``match="location"``), ``no_s1_within_max_days``: the same place has an S1 but further than
  ``max_days``, ``no_s1_same_place``: none within ``nearest_days``), nearest_s1_id,
  nearest_s1_time, nearest_gap_hours (the nearest same-place S1 within ``nearest_days``, by the
  same rule).

Paths in both tables are in the stored form of :mod:`s12mae.paths` (absolute, or URLs), so the
files mean the same from any working directory. Both files are written atomically
(:mod:`s12mae.files`): temporary names beside them, renamed only once both are complete.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from s12mae.files import atomic_path
from s12mae.pairing.items import Items
from s12mae.pairing.search import Candidates

__all__ = ["PAIR_SCHEMA", "S2_ONLY_SCHEMA", "US_PER_DAY", "US_PER_HOUR", "PairResult", "write_outputs"]

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
_UTC_US = pa.timestamp("us", tz="UTC")

PAIR_SCHEMA = pa.schema(
    [
        ("s2_id", pa.string()),
        ("s1_id", pa.string()),
        ("s2_time", _UTC_US),
        ("s1_time", _UTC_US),
        ("gap_hours", pa.float64()),
        ("overlap", pa.float64()),
        ("s2_path", pa.string()),
        ("s1_path", pa.string()),
        ("location", pa.string()),
        ("match", pa.string()),
    ]
)
S2_ONLY_SCHEMA = pa.schema(
    [
        ("s2_id", pa.string()),
        ("s2_time", _UTC_US),
        ("s2_path", pa.string()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("nearest_s1_id", pa.string()),
        ("nearest_s1_time", _UTC_US),
        ("nearest_gap_hours", pa.float64()),
    ]
)


@dataclass
class PairResult:
    """The pairs, the S2 items left without a pair, and counts and timings (``stats``)."""

    pairs: pa.Table
    s2_only: pa.Table
    stats: dict[str, Any]


def _ts(t_us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(t_us, np.int64), pa.int64()).cast(_UTC_US)


def _take(a: pa.Array, rows: np.ndarray) -> pa.Array:
    return a.take(pa.array(np.asarray(rows, np.int64)))


def pairs_table(s2: Items, s1: Items, best: Candidates) -> pa.Table:
    """One row per pair, in S2 input order."""
    best = best.take(np.argsort(best.s2, kind="stable"))
    return pa.table(
        {
            "s2_id": _take(s2.ids, best.s2),
            "s1_id": _take(s1.ids, best.s1),
            "s2_time": _ts(s2.t_us[best.s2]),
            "s1_time": _ts(s1.t_us[best.s1]),
            "gap_hours": pa.array(best.gap_us / US_PER_HOUR, pa.float64()),
            "overlap": pa.array(best.overlap, pa.float64(), from_pandas=True),
            "s2_path": _take(s2.path, best.s2),
            "s1_path": _take(s1.path, best.s1),
            "location": pc.coalesce(_take(s2.location, best.s2), _take(s1.location, best.s1)),
            "match": pa.array(np.where(best.by_footprint, "footprint", "location"), pa.string()),
        },
        schema=PAIR_SCHEMA,
    )


def s2_only_table(
    s2: Items, s1: Items, lone: np.ndarray, near: Candidates | None, s2_placed: np.ndarray, unplaced: str
) -> pa.Table:
    """One row per unpaired S2 item ``lone`` (S2 input order) with its reason and nearest S1."""
    nearest_s1, nearest_gap = np.full(len(s2), -1, np.int64), np.zeros(len(s2), np.int64)
    if near is not None and len(near):
        nearest_s1[near.s2], nearest_gap[near.s2] = near.s1, near.gap_us
    s1_row = nearest_s1[lone]
    has_near = s1_row >= 0
    reason = np.where(
        ~s2_placed[lone], unplaced, np.where(has_near, "no_s1_within_max_days", "no_s1_same_place")
    )
    near_rows = pa.array(s1_row, pa.int64(), mask=~has_near)  # null row -> null value
    gap_hours = np.where(has_near, nearest_gap[lone] / US_PER_HOUR, np.nan)
    return pa.table(
        {
            "s2_id": _take(s2.ids, lone),
            "s2_time": _ts(s2.t_us[lone]),
            "s2_path": _take(s2.path, lone),
            "location": _take(s2.location, lone),
            "reason": pa.array(reason, pa.string()),
            "nearest_s1_id": s1.ids.take(near_rows),
            "nearest_s1_time": _ts(s1.t_us).take(near_rows),
            "nearest_gap_hours": pa.array(gap_hours, pa.float64(), from_pandas=True),
        },
        schema=S2_ONLY_SCHEMA,
    )


def pair_stats(
    s2: Items, s1: Items, best: Candidates, lone: np.ndarray, s2_placed: np.ndarray, s1_usable: np.ndarray
) -> dict[str, int]:
    """Counts: items, pairs, S2-only, missing footprints, S1 ignored/used/reuse, match kinds."""
    reuse = np.bincount(best.s1, minlength=len(s1)) if len(best) else np.zeros(1, np.int64)
    return {
        "s2": len(s2),
        "s1": len(s1),
        "pairs": len(best),
        "s2_only": len(lone),
        "s2_no_footprint": int((~s2.has_geom).sum()),
        "s1_no_footprint": int((~s1.has_geom).sum()),
        "s1_ignored": int((~s1_usable).sum()),
        "s2_unplaceable": int((~s2_placed).sum()),
        "s1_used": int((reuse > 0).sum()),
        "s1_max_reuse": int(reuse.max()),
        "pairs_by_location": int((~best.by_footprint).sum()),
        "pairs_by_footprint": int(best.by_footprint.sum()),
    }


def write_outputs(result: PairResult, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``pairs.parquet`` and ``s2_only.parquet`` into folder ``out``: both go to temporary
    names first and are renamed only once both are complete; on failure nothing is left."""
    out = Path(out)
    plan = {"pairs.parquet": result.pairs, "s2_only.parquet": result.s2_only}
    with contextlib.ExitStack() as stack:
        temps = {name: stack.enter_context(atomic_path(out / name)) for name in plan}
        for name, table in plan.items():
            pq.write_table(table, temps[name])
    return {name: out / name for name in plan}
