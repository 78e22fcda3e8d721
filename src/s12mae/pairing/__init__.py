"""S1/S2 pairing: each Sentinel-2 item gets the closest-in-time Sentinel-1 item of the same place.

The rule (paper section 3.1, design note 10): for every S2 item, among the S1 items that cover the
same place, take the one closest in time; it is paired if ``|t_S1 - t_S2| <= max_days x 24 h``
(7 days by default; exactly 7 days is paired, 7 days + 1 s is not). S1 items may serve several S2
items. Times are compared as integer microseconds (UTC; naive times are read as UTC; the parsing
rule is :mod:`s12mae.times`'s).

Choosing among candidates (each step only breaks the ties of the previous one):

1. the smallest ``|gap|`` (``gap = t_S1 - t_S2``);
2. the earlier S1 (equal gaps before and after: the S1 acquired *before* the S2 wins);
3. the larger footprint overlap (unknown overlap counts as lowest);
4. the smaller ``s1_id`` (plain string order), so the result never depends on input order.

"Same place" (``match``):

- ``"footprint"``: ``overlap = area(S2 footprint & S1 footprint) / area(S2 footprint) >= min_overlap``
  and ``> 0``. Areas are planar in lon/lat degrees (a ratio over one small footprint, so the
  cos(latitude) scale nearly cancels). ``min_overlap`` defaults to 0.5: **our value**, the paper
  says only "matching latitude and longitude coordinates".
- ``"location"``: equal ``location`` keys (an SSL4EO-S12 location folder holds chips cut at one
  place for every modality, so equal keys *are* the same place; footprints are not consulted).
- ``"auto"`` (default): per candidate, equal locations decide when both items have a location,
  footprints otherwise. Why: SSL4EO-S12 ``metadata.json`` footprints are those of the whole source
  product (a 110 km S2 tile, a 250 km S1 slice), not of the 2.64 km chip; on the shipped sample
  the S2 tile of 2020-06-04 is only 44 % covered by the S1 slice of 2020-06-07 although both chips
  are cut at location 0000200.

Missing geometry (our rule): an S2 item with no usable footprint can pair only through its
``location`` (``auto``/``location``); without one it goes to ``s2_only`` with reason
``no_footprint``. An S1 item with no usable footprint is likewise usable only through its
``location``; an S1 item that can match nothing under ``match`` is ignored and counted
(``stats["s1_ignored"]``).

The package: :mod:`~s12mae.pairing.items` (inputs -> item tables), :mod:`~s12mae.pairing.geometry`
(footprints, the antimeridian), :mod:`~s12mae.pairing.search` (the DuckDB candidate join, exact
overlaps, the choice), :mod:`~s12mae.pairing.results` (output tables, statistics, files),
:mod:`~s12mae.pairing.windows` (two parquet indexes read and paired window by window: bounded
memory at archive scale, the same files).
"""

from __future__ import annotations

import math
import os
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from s12mae.pairing.items import (
    Items,
    items_from_ssl4eo,
    items_from_stac,
    items_from_table,
    load_items,
    loading,
)
from s12mae.pairing.results import (
    PAIR_SCHEMA,
    S2_ONLY_SCHEMA,
    US_PER_DAY,
    US_PER_HOUR,
    PairResult,
    pair_stats,
    pairs_table,
    s2_only_table,
    write_outputs,
)
from s12mae.pairing.search import Candidates, Match, Query, best_candidates, connect
from s12mae.pairing.windows import pair_files, windowed_inputs
from s12mae.readers.ssl4eo import product_of

__all__ = [
    "DEFAULT_MAX_DAYS",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_NEAREST_DAYS",
    "DEFAULT_S2_PRODUCT",
    "PAIR_SCHEMA",
    "S2_ONLY_SCHEMA",
    "US_PER_DAY",
    "US_PER_HOUR",
    "Items",
    "Match",
    "PairResult",
    "Resources",
    "items_from_ssl4eo",
    "items_from_stac",
    "items_from_table",
    "load_items",
    "pair",
    "pair_cli",
    "write_outputs",
]

DEFAULT_MAX_DAYS = 7.0  # paper, section 3.1: "more than one week" apart is excluded
DEFAULT_MIN_OVERLAP = 0.5  # ours: the paper gives no overlap threshold
DEFAULT_NEAREST_DAYS = 30.0  # ours: how far S2-only rows look for the nearest same-place S1
DEFAULT_S2_PRODUCT = product_of("s2")  # the first S2 product of sensors.yaml: s2c, L1C as in the paper


@dataclass(frozen=True)
class _Rule:
    """The settings of one pairing run (see :func:`pair`)."""

    max_days: float
    min_overlap: float
    match: Match
    nearest_days: float | None
    cell_deg: float

    def __post_init__(self) -> None:
        if self.match not in ("auto", "footprint", "location"):
            raise ValueError(f"match must be 'auto', 'footprint' or 'location', not {self.match!r}")
        if not (self.max_days >= 0 and math.isfinite(self.max_days)):
            raise ValueError(f"max_days must be a finite number >= 0, not {self.max_days!r}")
        if not (0.0 <= self.min_overlap <= 1.0):
            raise ValueError(f"min_overlap must be within [0, 1], not {self.min_overlap!r}")
        if not (self.cell_deg > 0):
            raise ValueError(f"cell_deg must be > 0, not {self.cell_deg!r}")

    def query(self, s2_mask: np.ndarray, days: float) -> Query:
        """The candidate search for the S2 items in ``s2_mask`` within ``days``."""
        return Query(s2_mask, round(days * US_PER_DAY), self.min_overlap, self.match, self.cell_deg)

    @property
    def searches_nearest(self) -> bool:
        return self.nearest_days is not None and self.nearest_days > self.max_days

    @property
    def reach_days(self) -> float:
        """How far in time from an S2 item its search looks (``max_days``, or ``nearest_days``)."""
        return float(self.nearest_days) if self.searches_nearest else self.max_days  # type: ignore[arg-type]

    def settings(self) -> dict[str, Any]:
        """The settings recorded in the statistics."""
        return {"max_days": self.max_days, "min_overlap": self.min_overlap, "match": self.match}


def _share_location_codes(s2: Items, s1: Items) -> None:
    """Integer codes of the location keys, shared by both sides (-1: no location)."""
    both = pa.chunked_array([s2.location, s1.location], pa.string()).combine_chunks()
    codes = both.dictionary_encode().indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    s2.loc_code, s1.loc_code = codes[: len(s2)], codes[len(s2) :]


def _placeable(s2: Items, s1: Items, match: Match) -> tuple[np.ndarray, np.ndarray]:
    """(S2 items that can be placed, S1 items that can match anything) under ``match``."""
    if match == "footprint":
        return s2.has_geom, s1.has_geom
    if match == "location":
        return s2.loc_code >= 0, s1.loc_code >= 0
    return s2.has_geom | (s2.loc_code >= 0), s1.has_geom | (s1.loc_code >= 0)


def _unpaired(n: int, best: Candidates) -> np.ndarray:
    """``(n,)`` bool: the S2 items without a pair."""
    lone = np.ones(n, bool)
    lone[best.s2] = False
    return lone


@dataclass(frozen=True)
class Resources:
    """How the search uses memory (results never depend on these; see :mod:`~s12mae.pairing.search`)."""

    threads: int | None = None
    """DuckDB threads (default: all cores)."""
    partition_days: float | None = None
    """Search the S2 items in time windows this many days wide, each against the S1 items near it
    (``None``: all at once). Bounds the join's memory by one window's share; ``pair_cli`` (``s12mae
    pair``) with two parquet indexes also *reads* them window by window
    (:mod:`~s12mae.pairing.windows`), so memory is bounded by one window (its S2 items and the S1
    items within ``nearest_days`` of it), not the archive. 10-30 days suits archives of tens of
    millions of rows (ours)."""
    memory_limit: str | None = None
    """DuckDB's memory limit, e.g. ``"4GB"`` (default: DuckDB's, 80 % of RAM)."""
    temp_directory: str | None = None
    """Where DuckDB spills joins that exceed ``memory_limit`` (default: DuckDB's, ``.tmp`` beside
    an on-disk database; none for this in-memory one, so set it with ``memory_limit``)."""


def _search(
    s2: Items, s1: Items, s2_placed: np.ndarray, rule: _Rule, res: Resources, timings: dict[str, float],
    con: Any = None,
) -> tuple[Candidates, Candidates | None]:
    """The best S1 of every S2 within ``max_days``, and the nearest one (within ``nearest_days``)
    of the S2 items left without (on ``con``, else on a connection of its own)."""
    own = con is None
    con = connect(res.threads, res.memory_limit, res.temp_directory) if own else con
    try:
        t = _time.perf_counter()
        best = best_candidates(con, s2, s1, rule.query(s2_placed, rule.max_days), res.partition_days)
        timings["join_select_s"] = _time.perf_counter() - t
        t = _time.perf_counter()
        lone = _unpaired(len(s2), best)
        near = None
        if rule.searches_nearest and (lone & s2_placed).any():
            near = best_candidates(con, s2, s1, rule.query(lone & s2_placed, rule.nearest_days), res.partition_days)
        timings["nearest_s"] = _time.perf_counter() - t
    finally:
        if own:
            con.close()
    return best, near


def _same_path(a: Any, b: Any) -> bool:
    paths = [x for x in (a, b) if isinstance(x, str | os.PathLike)]
    return len(paths) == 2 and Path(a).resolve() == Path(b).resolve()


def _check_families(s2: Items, s1: Items, same_input: bool) -> None:
    """One input serving as both S2 and S1 must name every item's sensor: an item of unknown family
    would be on both sides (paired with itself). Separate inputs are taken as given."""
    if not same_input:
        return
    for items, side in ((s2, "S2"), (s1, "S1")):
        unknown = np.flatnonzero(items.family.is_null().to_numpy(zero_copy_only=False))
        if unknown.size:
            raise ValueError(
                f"{items.source}: serves as both the S2 and the S1 input, but {unknown.size} item(s) name no "
                f"sensor (e.g. id {items.ids[int(unknown[0])].as_py()!r}), so {side} items cannot be told "
                "apart: give the S1 items separately (--s1) or name each row's sensor in a 'sensor' column "
                "(s2_l1c, s2_l2a, s1_grd, ...)"
            )


def pair(
    s2: Any,
    s1: Any,
    *,
    max_days: float = DEFAULT_MAX_DAYS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    match: Match = "auto",
    nearest_days: float | None = DEFAULT_NEAREST_DAYS,
    cell_deg: float = 1.0,
    threads: int | None = None,
    s2_product: str = DEFAULT_S2_PRODUCT,
    partition_days: float | None = None,
    memory_limit: str | None = None,
    temp_directory: str | None = None,
) -> PairResult:
    """Pair every S2 item with its closest-in-time same-place S1 item (see the module docstring).

    Pairs are made across sensor families only: ``s2`` contributes its S2 items and ``s1`` its S1
    items (items of other families are left out; see :mod:`~s12mae.pairing.items` for how an
    input names them). One input may serve as both (an index listing both sensors) if it names
    every item's sensor; an input without S2 or without S1 items is a ValueError.

    Args:
        s2, s1: anything ``load_items`` reads (``s1`` may be an SSL4EO-S12 root: its ``s1/``).
        max_days: largest ``|t_S1 - t_S2|`` that is paired, in days of 24 h (paper: 7).
        min_overlap: smallest area(S2 & S1) / area(S2) for footprint matches (ours: 0.5).
        match: ``auto``, ``footprint`` or ``location`` (how "same place" is decided).
        nearest_days: S2-only rows report the nearest same-place S1 within this many days
            (``None`` or <= ``max_days``: not searched).
        cell_deg: grid cell size of the spatial join, degrees (a speed knob; results do not
            depend on it).
        threads: DuckDB threads (default: all cores).
        s2_product: the SSL4EO-S12 S2 folder (``s2c`` L1C, as in the paper, or ``s2a`` L2A).
        partition_days, memory_limit, temp_directory: bounded memory at archive scale, see
            :class:`Resources` (the result does not depend on them).
    """
    rule = _Rule(max_days, min_overlap, match, nearest_days, cell_deg)
    resources = Resources(threads, partition_days, memory_limit, temp_directory)
    t0 = _time.perf_counter()
    s2_items = loading(s2, lambda: load_items(s2, product=s2_product, family="s2"))
    s1_items = loading(s1, lambda: load_items(s1, product=product_of("s1"), family="s1"))
    _check_families(s2_items, s1_items, s2 is s1 or _same_path(s2, s1))
    timings = {"load_s": _time.perf_counter() - t0}
    found = pair_items(s2_items, s1_items, rule, resources, timings)
    found.result.stats.update(rule.settings(), seconds=dict(timings, total_s=_time.perf_counter() - t0))
    return found.result


@dataclass
class Found:
    """What :func:`pair_items` found: the result, plus rows the windowed pairing needs."""

    result: PairResult
    pair_s2: np.ndarray
    """``(P,)`` the S2 row of each row of ``result.pairs``."""
    lone: np.ndarray
    """``(L,)`` the S2 row of each row of ``result.s2_only``."""
    s1_usable: np.ndarray
    """``(N1,)`` the S1 items that can match anything under the rule's ``match``."""


def pair_items(s2_items: Items, s1_items: Items, rule: _Rule, resources: Resources,
               timings: dict[str, float], con: Any = None) -> Found:
    """The pairing of two loaded item tables (the core of :func:`pair`; ``timings`` gains the
    search's stages; ``con``: a DuckDB connection to reuse)."""
    _share_location_codes(s2_items, s1_items)
    s2_placed, s1_usable = _placeable(s2_items, s1_items, rule.match)
    best, near = _search(s2_items, s1_items, s2_placed, rule, resources, timings, con)
    lone = np.flatnonzero(_unpaired(len(s2_items), best))
    unplaced = "no_location" if rule.match == "location" else "no_footprint"
    stats: dict[str, Any] = pair_stats(s2_items, s1_items, best, lone, s2_placed, s1_usable)
    result = PairResult(
        pairs=pairs_table(s2_items, s1_items, best),
        s2_only=s2_only_table(s2_items, s1_items, lone, near, s2_placed, unplaced),
        stats=stats,
    )
    return Found(result, np.sort(best.s2), lone, s1_usable)


def pair_cli(
    s2: str,
    s1: str | None = None,
    out: str = "pairs",
    max_days: float = DEFAULT_MAX_DAYS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    match: Match = "auto",
    nearest_days: float | None = DEFAULT_NEAREST_DAYS,
    s2_product: str = DEFAULT_S2_PRODUCT,
    cell_deg: float = 1.0,
    threads: int | None = None,
    quiet: bool = False,
    partition_days: float | None = None,
    memory_limit: str | None = None,
    temp_directory: str | None = None,
) -> dict[str, Any]:
    """``s12mae pair``: pair S2 with S1 acquisitions; write ``out/pairs.parquet`` and ``out/s2_only.parquet``.

    Args:
        s2: S2 metadata: an SSL4EO-S12 root (``s2c``/``s2a``/``s1`` folders) or modality folder, a
            parquet/CSV index, or STAC (Item/ItemCollection/Catalog JSON, or a catalog folder).
        s1: S1 metadata in the same forms; default: ``s2`` itself (its ``s1/`` folder, or the
            items whose ``sensor`` column or STAC properties name an S1 sensor).
        out: output folder.
        max_days: pair only if ``|t_S1 - t_S2| <= max_days x 24 h`` (paper: 7).
        min_overlap: smallest intersection area / S2 footprint area for footprint matches (ours: 0.5).
        match: ``auto`` (location keys where both items have one, else footprints), ``footprint``
            or ``location``.
        nearest_days: S2-only rows report the nearest same-place S1 within this many days.
        s2_product: SSL4EO-S12 S2 folder, ``s2c`` (L1C) or ``s2a`` (L2A).
        cell_deg: spatial join grid cell, degrees (speed only).
        threads: DuckDB threads (default: all cores).
        quiet: print nothing.
        partition_days, memory_limit, temp_directory: bounded memory, see :class:`Resources`. With
            ``partition_days`` and two parquet indexes, the inputs are read window by window too
            (:mod:`~s12mae.pairing.windows`): memory is bounded by one window, not the archive.

    Returns the statistics (counts, seconds).
    """
    s1 = s2 if s1 is None else s1
    options = {"max_days": max_days, "min_overlap": min_overlap, "match": match, "nearest_days": nearest_days,
               "cell_deg": cell_deg, "threads": threads, "partition_days": partition_days,
               "memory_limit": memory_limit, "temp_directory": temp_directory}
    if partition_days is not None and windowed_inputs(s2, s1):
        rule = _Rule(max_days, min_overlap, match, nearest_days, cell_deg)
        resources = Resources(threads, partition_days, memory_limit, temp_directory)
        stats = pair_files(s2, s1, out, rule, resources)
        paths = {name: Path(out) / name for name in ("pairs.parquet", "s2_only.parquet")}
    else:
        res = pair(s2, s1, s2_product=s2_product, **options)  # type: ignore[arg-type]
        t = _time.perf_counter()
        paths = write_outputs(res, out)
        stats = res.stats
        stats["seconds"]["write_s"] = _time.perf_counter() - t
    stats["outputs"] = {k: str(v) for k, v in paths.items()}
    if not quiet:
        st = stats
        print(
            f"paired {st['pairs']} of {st['s2']} S2 items with {st['s1_used']} of {st['s1']} S1 items "
            f"(max {max_days:g} days, min overlap {min_overlap:g}, match {match}); "
            f"S2-only {st['s2_only']}; S1 ignored (no footprint/location) {st['s1_ignored']}"
        )
        print(f"wrote {paths['pairs.parquet']} and {paths['s2_only.parquet']}")
    return stats
