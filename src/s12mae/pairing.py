"""S1/S2 pairing: each Sentinel-2 item gets the closest-in-time Sentinel-1 item of the same place.

The rule (paper section 3.1, design note 10): for every S2 item, among the S1 items that cover the
same place, take the one closest in time; it is paired if ``|t_S1 - t_S2| <= max_days x 24 h``
(7 days by default; exactly 7 days is paired, 7 days + 1 s is not). S1 items may serve several S2
items. Times are compared as integer microseconds (UTC; naive times are read as UTC).

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
(``stats["s1_ignored"]``). A footprint of zero area counts as missing.

Antimeridian: a bbox with ``minlon > maxlon`` (or ``maxlon > 180``), and a polygon whose
longitude extent exceeds 180 degrees (vertices jumping from +179 to -179) or that goes beyond
+-180, is read as crossing 180 degrees and split into its pieces on either side, so overlaps
across it are right. (A real footprint never spans more than 180 degrees of longitude.)

At scale (design note 11): DuckDB core SQL only. Every footprint piece is put in all the
``cell_deg`` grid cells its bbox touches; the S2 side is repeated over the time buckets
(``max_days`` wide) t-1, t, t+1; the join is on one (cell, time bucket) key, then filtered by
``|gap| <= max_days``, bbox intersection and a reference cell (each candidate counted once); the
bbox intersection over the S2 area is an upper bound of the overlap and exact for axis-aligned
boxes. Window functions keep, per S2, only the candidates ranked no worse than the best one that
is certain; exact overlaps (vectorised shapely) are computed only for those.

Outputs (written atomically: temporary names in the output folder, then renamed):

- ``pairs.parquet``: s2_id, s1_id, s2_time, s1_time, gap_hours (signed, S1 minus S2), overlap
  (null if a footprint is missing), s2_path, s1_path, location (the S2's, else the S1's),
  match (``footprint`` or ``location``).
- ``s2_only.parquet``: s2_id, s2_time, s2_path, location, reason (``no_footprint``: cannot be
  placed (no footprint, nor a location where locations count; ``no_location`` under
  ``match="location"``),
  ``no_s1_within_max_days``: the same place has an S1 but further than ``max_days``,
  ``no_s1_same_place``: none within ``nearest_days``), nearest_s1_id, nearest_s1_time,
  nearest_gap_hours (the nearest same-place S1 within ``nearest_days``, by the same rule).

Inputs (``load_items``): an SSL4EO-S12 folder (``<root>/s2c|s2a|s1/<location>/<acquisition>/
metadata.json``, or one modality folder), a parquet or CSV index (columns ``id``, ``time`` (ISO
8601, a timestamp type, or epoch numbers: seconds below 1e11, milliseconds below 1e14, else
microseconds), ``footprint`` (WKT or WKB) and/or ``minlon, minlat, maxlon, maxlat``, optional
``path`` and ``location``), or STAC (an Item, an ItemCollection or a Catalog/Collection file or
folder, read with pystac; or pystac objects in memory).
"""

from __future__ import annotations

import json
import math
import os
import time as _time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

__all__ = [
    "DEFAULT_MAX_DAYS",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_NEAREST_DAYS",
    "Items",
    "PairResult",
    "load_items",
    "pair",
    "pair_cli",
    "write_outputs",
]

DEFAULT_MAX_DAYS = 7.0  # paper, section 3.1: "more than one week" apart is excluded
DEFAULT_MIN_OVERLAP = 0.5  # ours: the paper gives no overlap threshold
DEFAULT_NEAREST_DAYS = 30.0  # ours: how far S2-only rows look for the nearest same-place S1

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
Match = Literal["auto", "footprint", "location"]

PAIR_SCHEMA = pa.schema(
    [
        ("s2_id", pa.string()),
        ("s1_id", pa.string()),
        ("s2_time", pa.timestamp("us", tz="UTC")),
        ("s1_time", pa.timestamp("us", tz="UTC")),
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
        ("s2_time", pa.timestamp("us", tz="UTC")),
        ("s2_path", pa.string()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("nearest_s1_id", pa.string()),
        ("nearest_s1_time", pa.timestamp("us", tz="UTC")),
        ("nearest_gap_hours", pa.float64()),
    ]
)


# --------------------------------------------------------------------------------------------
# Normalised items
# --------------------------------------------------------------------------------------------


@dataclass
class Items:
    """One side (S2 or S1) in normalised, columnar form.

    ``rect`` items are unions of axis-aligned boxes (their ``parts``) whose overlaps are exact from
    bbox arithmetic; other items keep a shapely geometry in ``geom`` (already split at the
    antimeridian). ``parts`` rows are (item index, minx, miny, maxx, maxy), all within +-180.
    """

    source: str
    ids: pa.Array
    t_us: np.ndarray
    path: pa.Array
    location: pa.Array
    has_geom: np.ndarray
    rect: np.ndarray
    area: np.ndarray
    geom: np.ndarray  # object array: shapely geometry for non-rect or split items, else None
    part_item: np.ndarray
    part_box: np.ndarray  # (P, 4) float64
    bbox: np.ndarray  # (N, 4) item bbox (meaningful for single-part rect items)
    single: np.ndarray  # item has exactly one part
    loc_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.t_us)


def _fail(source: str, msg: str) -> ValueError:
    return ValueError(f"{source}: {msg}")


def _boxes_to_parts(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, object]:
    """Bboxes (N, 4) with the antimeridian convention -> (part_item, part_box, area, split mask)."""
    x0, y0, x1, y1 = b.T
    split_w = x0 > x1  # minlon > maxlon: crosses 180
    split_e = x1 > 180.0  # unwrapped east of 180
    split_wx = x0 < -180.0  # unwrapped west of -180
    split = split_w | split_e | split_wx
    n = len(b)
    idx = np.arange(n)
    boxes = [np.column_stack([x0, y0, x1, y1])[~split]]
    items = [idx[~split]]
    for m, a, c in (
        (split_w, (x0, 180.0), (-180.0, x1)),
        (split_e & ~split_w, (x0, 180.0), (-180.0, x1 - 360.0)),
        (split_wx & ~split_w & ~split_e, (x0 + 360.0, 180.0), (-180.0, x1)),
    ):
        if m.any():
            for lo, hi in (a, c):
                lo_ = np.broadcast_to(lo, n)[m]
                hi_ = np.broadcast_to(hi, n)[m]
                boxes.append(np.column_stack([lo_, y0[m], hi_, y1[m]]))
                items.append(idx[m])
    part_box = np.concatenate(boxes)
    part_item = np.concatenate(items)
    keep = (part_box[:, 2] > part_box[:, 0]) & (part_box[:, 3] > part_box[:, 1])
    part_box, part_item = part_box[keep], part_item[keep]
    area = np.bincount(
        part_item, weights=(part_box[:, 2] - part_box[:, 0]) * (part_box[:, 3] - part_box[:, 1]), minlength=n
    )
    return part_item, part_box, area, split


def _split_antimeridian(g: Any) -> Any:
    """A polygonal geometry crossing 180 degrees -> its pieces within +-180 (a MultiPolygon)."""
    minx, _, maxx, _ = g.bounds
    if maxx - minx > 180.0 and minx >= -180.0 and maxx <= 180.0:
        # wrapped form (+179 ... -179): move the western hemisphere by +360
        g = shapely.transform(g, lambda c: np.where(c[:, :1] < 0, c + np.array([360.0, 0.0]), c))
    pieces = []
    for shift in (-360.0, 0.0, 360.0):
        win = shapely.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0)
        p = shapely.intersection(g, win)
        if not p.is_empty and p.area > 0:
            pieces.extend(shapely.get_parts(shapely.transform(p, lambda c, s=shift: c + np.array([s, 0.0]))))
    pieces = [p for p in pieces if p.geom_type == "Polygon" and p.area > 0]
    return shapely.MultiPolygon(pieces) if pieces else None


def _polygonal(g: np.ndarray, source: str, ids: pa.Array | None, rows: np.ndarray) -> np.ndarray:
    """Rings and closed lines -> polygons; other non-polygonal types are an error."""
    types = shapely.get_type_id(g)  # -1 for None
    ring = (types == 2) | ((types == 1) & shapely.is_closed(g))  # LinearRing, closed LineString
    if ring.any():
        g = g.copy()
        g[ring] = [shapely.Polygon(x.coords) for x in g[ring]]
    bad = ~np.isin(shapely.get_type_id(g), [-1, 3, 6])  # None, Polygon, MultiPolygon
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        r = int(rows[k])
        raise _fail(source, f"footprint of row {r}{_id_note(ids, r)} is a {g[k].geom_type}, not a polygon")
    return g


def _normalise_geometry(
    geoms: np.ndarray | None, boxes: np.ndarray | None, n: int, source: str, ids: pa.Array | None = None
) -> dict[str, np.ndarray]:
    """Footprints -> has_geom, rect, area, geom, parts. ``geoms`` wins over ``boxes`` where set."""
    has_poly = np.zeros(n, bool) if geoms is None else ~shapely.is_missing(geoms)
    b = np.full((n, 4), np.nan) if boxes is None else np.asarray(boxes, float).copy()
    has_box = np.isfinite(b).all(axis=1) & ~has_poly
    geom = np.full(n, None, dtype=object)
    rect = np.zeros(n, bool)

    if has_poly.any():
        pi = np.flatnonzero(has_poly)
        g = _polygonal(np.asarray(geoms, dtype=object)[pi], source, ids, pi)
        invalid = ~shapely.is_valid(g)
        if invalid.any():
            g[invalid] = shapely.make_valid(g[invalid])
            g[invalid] = [_only_polygons(x) for x in g[invalid]]
        bd = shapely.bounds(g)
        cross = (bd[:, 2] - bd[:, 0] > 180.0) | (bd[:, 0] < -180.0) | (bd[:, 2] > 180.0)
        for k in np.flatnonzero(cross):
            g[k] = _split_antimeridian(g[k])
        area = shapely.area(g)
        area = np.where(np.isnan(area), 0.0, area)
        bd = shapely.bounds(g)
        env = (bd[:, 2] - bd[:, 0]) * (bd[:, 3] - bd[:, 1])
        is_rect = ~cross & (area > 0) & (np.abs(area - env) <= 1e-9 * env)
        ok = area > 0
        # rect polygons become plain boxes; others keep their geometry
        b[pi[is_rect]] = bd[is_rect]
        rect[pi[is_rect]] = True
        nr = ok & ~is_rect
        geom[pi[nr]] = g[nr]
        has_poly[pi[~ok]] = False
    b[~(has_box | rect)] = np.nan

    # parts of box items (single or split at 180)
    bi = np.flatnonzero(has_box | rect)
    part_item_b, part_box_b, area_b, split_b = _boxes_to_parts(b[bi])
    part_item_b = bi[part_item_b]
    area = np.zeros(n)
    area[bi] = area_b
    box_ok = np.zeros(n, bool)
    box_ok[bi] = area_b > 0
    rect[bi] = area_b > 0
    if split_b.any():  # split boxes keep a geometry for exact checks against polygons
        is_split_item = np.zeros(n, bool)
        is_split_item[bi[split_b]] = True
        sp = np.flatnonzero(is_split_item[part_item_b])
        sp = sp[np.argsort(part_item_b[sp], kind="stable")]
        owners, inv = np.unique(part_item_b[sp], return_inverse=True)
        pbs = part_box_b[sp]
        geom[owners] = shapely.multipolygons(
            shapely.box(pbs[:, 0], pbs[:, 1], pbs[:, 2], pbs[:, 3]), indices=inv
        )

    # parts of polygon items: the envelope, or the envelope of each piece when split at 180
    gi = np.flatnonzero(~shapely.is_missing(geom) & ~rect)
    if len(gi):
        pieces, owner = shapely.get_parts(geom[gi], return_index=True)
        nparts = np.bincount(owner, minlength=len(gi))
        multi = nparts[owner] > 1
        pb = shapely.bounds(pieces)
        # non-split multi-part polygons: one envelope part (an upper bound is all the join needs)
        env = shapely.bounds(geom[gi])
        split_owner = (env[:, 0] <= -180.0) & (env[:, 2] >= 180.0)  # pieces on both sides of 180
        use_piece = multi & split_owner[owner]
        part_item_g = np.concatenate([gi[owner[use_piece]], gi[~split_owner]])
        part_box_g = np.concatenate([pb[use_piece], env[~split_owner]])
        area[gi] = shapely.area(geom[gi])
    else:
        part_item_g = np.zeros(0, np.int64)
        part_box_g = np.zeros((0, 4))
    has_geom = box_ok.copy()
    has_geom[gi] = True
    part_item = np.concatenate([part_item_b, part_item_g]).astype(np.int64)
    part_box = np.concatenate([part_box_b, part_box_g]).reshape(-1, 4)
    single = np.bincount(part_item, minlength=n) == 1
    bbox = b
    return dict(
        has_geom=has_geom,
        rect=rect & box_ok,
        area=area,
        geom=geom,
        part_item=part_item,
        part_box=part_box,
        bbox=bbox,
        single=single,
    )


def _only_polygons(g: Any) -> Any:
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return None
    u = shapely.union_all(parts)
    return u if u.geom_type in ("Polygon", "MultiPolygon") else None


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------


def _epoch_to_us(v: np.ndarray) -> np.ndarray:
    """Epoch numbers -> microseconds; the unit from the magnitude (s < 1e11 <= ms < 1e14 <= us)."""
    v = np.asarray(v, dtype=np.float64)
    m = np.nanmax(np.abs(v)) if len(v) else 0.0
    scale = 1e6 if m < 1e11 else 1e3 if m < 1e14 else 1.0
    return np.round(v * scale).astype(np.int64)


def _parse_one(s: str) -> int:
    s = s.strip()
    try:
        return int(_epoch_to_us(np.array([float(s)]))[0])
    except ValueError:
        pass
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    d = datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    delta = d - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _times_to_us(col: pa.Array | pa.ChunkedArray, source: str, ids: pa.Array | None = None) -> np.ndarray:
    """A time column (timestamp, date, epoch number or ISO string) -> int64 UTC microseconds."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise _fail(source, f"time is missing in row {r}{_id_note(ids, r)}")
    t = col.type
    if pa.types.is_timestamp(t):
        return pc.cast(col, pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64()).to_numpy()
    if pa.types.is_date(t):
        return pc.cast(col, pa.timestamp("us")).cast(pa.int64()).to_numpy()
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        v = col.to_numpy(zero_copy_only=False)
        if not np.isfinite(v).all():
            r = int(np.flatnonzero(~np.isfinite(v))[0])
            raise _fail(source, f"time {v[r]!r} in row {r}{_id_note(ids, r)} is not a time")
        return _epoch_to_us(v)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        for tz in ("UTC", None):
            try:
                return col.cast(pa.timestamp("us", tz=tz)).cast(pa.int64()).to_numpy()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        out = np.empty(len(col), np.int64)
        for r, s in enumerate(col.to_pylist()):
            try:
                out[r] = _parse_one(s)
            except (ValueError, OverflowError):
                raise _fail(
                    source,
                    f"cannot parse time {s!r} in row {r}{_id_note(ids, r)} "
                    "(expected ISO 8601, e.g. 2020-06-04T05:47:21Z, or epoch seconds/ms)",
                ) from None
        return out
    raise _fail(source, f"time column has type {t}, expected timestamps, ISO 8601 strings or epoch numbers")


def _id_note(ids: pa.Array | None, r: int) -> str:
    return "" if ids is None else f" (id {ids[r].as_py()!r})"


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _build_items(
    source: str,
    ids: pa.Array,
    t_us: np.ndarray,
    path: pa.Array,
    location: pa.Array,
    geoms: np.ndarray | None,
    boxes: np.ndarray | None,
) -> Items:
    ids = ids.cast(pa.string())
    if ids.null_count:
        r = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise _fail(source, f"id is missing in row {r}")
    if len(pc.unique(ids)) != len(ids):
        vc = pc.value_counts(ids)
        dup = [v["values"] for v in vc.to_pylist() if v["counts"] > 1][:3]
        raise _fail(source, f"ids are not unique, e.g. {dup}")
    geo = _normalise_geometry(geoms, boxes, len(ids), source, ids)
    location = location.cast(pa.string())
    blank = pc.equal(pc.utf8_trim_whitespace(location), "")  # an empty location is no location
    location = pc.if_else(pc.fill_null(blank, False), pa.scalar(None, pa.string()), location)
    return Items(
        source=source,
        ids=ids,
        t_us=np.asarray(t_us, np.int64),
        path=path.cast(pa.string()),
        location=location,
        **geo,
    )


def _read_table(p: Path) -> pa.Table:
    source = str(p)
    name = p.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq") or name.endswith(".geoparquet"):
            return pq.read_table(p)
        import pyarrow.csv as pacsv

        strings = {
            c: pa.string()
            for c in ("id", "time", "datetime", "footprint", "geometry", "wkt", "path", "location")
        }
        return pacsv.read_csv(
            p, convert_options=pacsv.ConvertOptions(column_types=strings, strings_can_be_null=True)
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise _fail(source, f"cannot read the table: {e}") from None


def _col(tab: pa.Table, names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in tab.column_names}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def items_from_table(tab: pa.Table, source: str = "table") -> Items:
    """An index table (id, time, footprint WKT/WKB and/or minlon..maxlat, path, location)."""
    cid = _col(tab, ["id"])
    ct = _col(tab, ["time", "datetime"])
    if cid is None:
        raise _fail(source, f"has no 'id' column (columns: {tab.column_names})")
    if ct is None:
        raise _fail(source, f"has no 'time' column (columns: {tab.column_names})")
    ids = tab.column(cid).combine_chunks().cast(pa.string())
    t_us = _times_to_us(tab.column(ct), source, ids)
    n = tab.num_rows
    cp, cl = _col(tab, ["path"]), _col(tab, ["location"])
    path = tab.column(cp).combine_chunks() if cp else pa.nulls(n, pa.string())
    loc = tab.column(cl).combine_chunks() if cl else pa.nulls(n, pa.string())
    cf = _col(tab, ["footprint", "geometry", "wkt"])
    bcols = [
        _col(tab, [a, b])
        for a, b in (("minlon", "xmin"), ("minlat", "ymin"), ("maxlon", "xmax"), ("maxlat", "ymax"))
    ]
    if cf is None and not all(bcols):
        if any(bcols):
            raise _fail(source, "has only some of minlon, minlat, maxlon, maxlat")
        raise _fail(
            source,
            f"has no footprint: neither a 'footprint' column (WKT) nor minlon, minlat, maxlon, "
            f"maxlat (columns: {tab.column_names})",
        )
    geoms = None
    if cf is not None:
        fc = tab.column(cf).combine_chunks()
        if pa.types.is_binary(fc.type) or pa.types.is_large_binary(fc.type):
            vals = fc.to_numpy(zero_copy_only=False)
            given = fc.is_valid().to_numpy(zero_copy_only=False)
            geoms = shapely.from_wkb(np.where(given, vals, None), on_invalid="ignore")
        else:
            fc = fc.cast(pa.string())
            vals = fc.to_numpy(zero_copy_only=False)
            given = ~pc.fill_null(pc.equal(pc.utf8_trim_whitespace(fc), ""), True).to_numpy(
                zero_copy_only=False
            )
            geoms = shapely.from_wkt(np.where(given, vals, None), on_invalid="ignore")
        bad = shapely.is_missing(geoms) & given
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise _fail(source, f"cannot parse footprint {str(vals[r])[:60]!r} in row {r}{_id_note(ids, r)}")
    boxes = None
    if all(bcols):
        try:
            boxes = np.column_stack(
                [
                    tab.column(c).combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False)
                    for c in bcols
                ]
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise _fail(source, f"minlon..maxlat are not numbers: {e}") from None
    return _build_items(source, ids, t_us, path, loc, geoms, boxes)


def _geojson_geom(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict) and obj.get("type") == "LinearRing":
        return shapely.Polygon(obj["coordinates"])
    from shapely.geometry import shape

    return shape(obj)


def items_from_ssl4eo(folder: Path, source: str | None = None) -> Items:
    """One SSL4EO-S12 modality folder: ``<folder>/<location>/<acquisition>/metadata.json``."""
    source = source or str(folder)
    files = sorted(folder.glob("*/*/metadata.json"))
    if not files:
        raise _fail(source, "holds no <location>/<acquisition>/metadata.json")
    ids, times, geoms, paths, locs = [], [], [], [], []
    for f in files:
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _fail(str(f), f"cannot read metadata: {e}") from None
        t = m.get("system:time_start", m.get("datetime", m.get("time")))
        if t is None:
            raise _fail(str(f), "has no time (system:time_start)")
        try:
            times.append(_parse_one(str(t)) if isinstance(t, str) else int(_epoch_to_us(np.array([t]))[0]))
        except (ValueError, OverflowError):
            raise _fail(str(f), f"cannot parse time {t!r}") from None
        fp = m.get("system:footprint", m.get("footprint", m.get("geometry")))
        try:
            geoms.append(_geojson_geom(fp))
        except Exception as e:  # shapely/GeoJSON errors of many kinds
            raise _fail(str(f), f"cannot read footprint: {e}") from None
        loc, acq = f.parent.parent.name, f.parent.name
        ids.append(f"{loc}/{acq}")
        paths.append(str(f.parent))
        locs.append(loc)
    return _build_items(
        source,
        pa.array(ids),
        np.array(times, np.int64),
        pa.array(paths),
        pa.array(locs),
        np.array(geoms, dtype=object),
        None,
    )


def items_from_stac(items: Iterable[Any], source: str = "STAC") -> Items:
    """pystac Items (or dicts): id, datetime (or start_datetime), geometry (or bbox), self href."""
    import pystac

    ids, times, geoms, boxes, paths, locs = [], [], [], [], [], []
    for r, it in enumerate(items):
        if isinstance(it, dict):
            it = pystac.Item.from_dict(it)
        ids.append(it.id)
        t = it.datetime or it.common_metadata.start_datetime
        if t is None:
            raise _fail(source, f"item {it.id!r} (row {r}) has no datetime or start_datetime")
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        d = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
        times.append((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds)
        try:
            geoms.append(_geojson_geom(it.geometry))
        except Exception as e:
            raise _fail(source, f"item {it.id!r}: cannot read geometry: {e}") from None
        bb = it.bbox
        boxes.append(
            [bb[0], bb[1], bb[2], bb[3]]
            if bb and len(bb) == 4
            else [bb[0], bb[1], bb[3], bb[4]]
            if bb and len(bb) == 6
            else [np.nan] * 4
        )
        paths.append(it.get_self_href())
        loc = it.properties.get("location")
        locs.append(None if loc is None else str(loc))
    if not ids:
        raise _fail(source, "holds no STAC items")
    return _build_items(
        source,
        pa.array(ids, pa.string()),
        np.array(times, np.int64),
        pa.array(paths, pa.string()),
        pa.array(locs, pa.string()),
        np.array(geoms, dtype=object),
        np.array(boxes, float),
    )


def _stac_file_items(p: Path) -> list[Any]:
    import pystac

    source = str(p)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise _fail(source, f"cannot read JSON: {e}") from None
    kind = d.get("type")
    if kind == "Feature":
        return [pystac.Item.from_file(str(p))]
    if kind == "FeatureCollection":
        return list(pystac.ItemCollection.from_file(str(p)))
    if kind in ("Catalog", "Collection"):
        cat = pystac.read_file(str(p))
        return list(cat.get_items(recursive=True))
    raise _fail(source, f"is not a STAC Item, ItemCollection, Catalog or Collection (type {kind!r})")


def load_items(src: Any, *, product: str = "s2c", source: str | None = None) -> Items:
    """Any supported input -> ``Items``.

    ``src``: a path (SSL4EO-S12 root or modality folder, ``.parquet``/``.csv`` index, STAC JSON
    file or folder holding ``catalog.json``/``collection.json``), a ``pyarrow.Table``, pystac
    Items / ItemCollection / Catalog, or an ``Items``. ``product`` picks the modality folder when
    ``src`` is an SSL4EO-S12 root (``s2c``, ``s2a`` or ``s1``).
    """
    if isinstance(src, Items):
        return src
    if isinstance(src, pa.Table):
        return items_from_table(src, source or "table")
    if not isinstance(src, (str, os.PathLike)):
        import pystac

        if isinstance(src, pystac.Catalog):
            return items_from_stac(src.get_items(recursive=True), source or f"STAC catalog {src.id}")
        return items_from_stac(src, source or "STAC items")
    p = Path(src)
    source = source or str(p)
    if not p.exists():
        raise _fail(source, "does not exist")
    if p.is_dir():
        for cat in ("catalog.json", "collection.json"):
            if (p / cat).is_file():
                return items_from_stac(_stac_file_items(p / cat), source)
        if (p / product).is_dir():
            return items_from_ssl4eo(p / product, str(p / product))
        if any(p.glob("*/*/metadata.json")):
            return items_from_ssl4eo(p, source)
        raise _fail(
            source,
            f"is neither an SSL4EO-S12 folder (no {product}/ nor <location>/<acquisition>/"
            "metadata.json) nor a STAC catalog folder",
        )
    name = p.name.lower()
    if name.endswith((".json", ".geojson")):
        return items_from_stac(_stac_file_items(p), source)
    if name.endswith((".parquet", ".pq", ".geoparquet", ".csv", ".csv.gz", ".tsv")):
        return items_from_table(_read_table(p), source)
    raise _fail(source, "unknown input type (expected a folder, .parquet, .csv or STAC .json)")


# --------------------------------------------------------------------------------------------
# Candidate search (DuckDB) and selection
# --------------------------------------------------------------------------------------------


def _cells(part_box: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Every grid cell each part's bbox touches -> (part row, cell key)."""
    nx, ny = int(math.ceil(360.0 / cell)), int(math.ceil(180.0 / cell))
    cx0 = np.clip(np.floor((part_box[:, 0] + 180.0) / cell), 0, nx - 1).astype(np.int64)
    cx1 = np.clip(np.floor((part_box[:, 2] + 180.0) / cell), 0, nx - 1).astype(np.int64)
    cy0 = np.clip(np.floor((part_box[:, 1] + 90.0) / cell), 0, ny - 1).astype(np.int64)
    cy1 = np.clip(np.floor((part_box[:, 3] + 90.0) / cell), 0, ny - 1).astype(np.int64)
    wx, wy = cx1 - cx0 + 1, cy1 - cy0 + 1
    cnt = wx * wy
    rep = np.repeat(np.arange(len(part_box)), cnt)
    k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cx = cx0[rep] + k % wx[rep]
    cy = cy0[rep] + k // wx[rep]
    return rep, cx * ny + cy


def _connect(threads: int | None) -> Any:
    import duckdb

    con = duckdb.connect(
        config={"threads": int(threads or os.cpu_count() or 1), "preserve_insertion_order": False}
    )
    return con


def _candidates(
    con: Any,
    A: Items,
    B: Items,
    a_mask: np.ndarray,
    window_us: int,
    min_overlap: float,
    match: Match,
    cell: float,
) -> dict[str, np.ndarray]:
    """Same-place S1 candidates within the window for the S2 items in ``a_mask``, pruned per S2
    to those ranked no worse than its best certain candidate."""
    bucket = max(int(window_us), 1_000_000)
    tmin = int(min(A.t_us.min(), B.t_us.min())) if len(A) and len(B) else 0
    tb_a = (A.t_us - tmin) // bucket + 1
    tb_b = (B.t_us - tmin) // bucket + 1
    ntb = int(max(tb_a.max(initial=0), tb_b.max(initial=0))) + 3
    nxc, nyc = int(math.ceil(360.0 / cell)), int(math.ceil(180.0 / cell))
    parts = []

    a_loc, b_loc = A.loc_code, B.loc_code
    use_fp = match in ("auto", "footprint")
    use_loc = match in ("auto", "location")

    # ---- footprint candidates: grid cell x time bucket join
    if use_fp:
        a_ok_item = a_mask & A.has_geom
        b_ok_item = B.has_geom.copy()
        if match == "auto":  # pairs where both sides have a location are decided by location
            if (b_loc >= 0).all():
                a_ok_item &= a_loc < 0
            if (a_loc[a_ok_item] >= 0).all():
                b_ok_item &= b_loc < 0
        ap = np.flatnonzero(a_ok_item[A.part_item])
        bp = np.flatnonzero(b_ok_item[B.part_item])
        if len(ap) and len(bp):
            ar, akey = _cells(A.part_box[ap], cell)
            br, bkey = _cells(B.part_box[bp], cell)
            ap, bp = ap[ar], bp[br]
            ai, bi = A.part_item[ap], B.part_item[bp]
            a_tab = pa.table(
                {
                    "key": np.concatenate([akey * ntb + tb_a[ai] + d for d in (-1, 0, 1)]),
                    "i": np.tile(ai, 3),
                    "t": np.tile(A.t_us[ai], 3),
                    "x0": np.tile(A.part_box[ap, 0], 3),
                    "y0": np.tile(A.part_box[ap, 1], 3),
                    "x1": np.tile(A.part_box[ap, 2], 3),
                    "y1": np.tile(A.part_box[ap, 3], 3),
                    "loc": np.tile(a_loc[ai], 3),
                }
            )
            b_tab = pa.table(
                {
                    "key": bkey * ntb + tb_b[bi],
                    "j": bi,
                    "t": B.t_us[bi],
                    "x0": B.part_box[bp, 0],
                    "y0": B.part_box[bp, 1],
                    "x1": B.part_box[bp, 2],
                    "y1": B.part_box[bp, 3],
                    "loc": b_loc[bi],
                }
            )
            con.register("a_cells", a_tab)
            con.register("b_cells", b_tab)
            both_loc = "AND NOT (a.loc >= 0 AND b.loc >= 0)" if match == "auto" else ""
            res = con.execute(f"""
                SELECT i, j, any_value(gap) AS gap, sum(inter) AS inter FROM (
                  SELECT a.i, b.j, b.t - a.t AS gap,
                         (least(a.x1, b.x1) - greatest(a.x0, b.x0))
                           * (least(a.y1, b.y1) - greatest(a.y0, b.y0)) AS inter,
                         a.key // {ntb} AS c,
                         least({nxc - 1}, greatest(0, floor((greatest(a.x0, b.x0) + 180.0::DOUBLE)
                                                            / {cell!r}::DOUBLE)::BIGINT)) * {nyc}
                         + least({nyc - 1}, greatest(0, floor((greatest(a.y0, b.y0) + 90.0::DOUBLE)
                                                              / {cell!r}::DOUBLE)::BIGINT)) AS ref
                  FROM a_cells a JOIN b_cells b ON a.key = b.key
                  WHERE abs(b.t - a.t) <= {int(window_us)}
                    AND least(a.x1, b.x1) > greatest(a.x0, b.x0)
                    AND least(a.y1, b.y1) > greatest(a.y0, b.y0) {both_loc}
                ) WHERE c = ref GROUP BY i, j
            """).fetchnumpy()
            con.unregister("a_cells")
            con.unregister("b_cells")
            i = np.asarray(res["i"], np.int64)
            j = np.asarray(res["j"], np.int64)
            inter = np.asarray(res["inter"], float)
            ub = inter / A.area[i]
            keep = (inter > 0) & (ub >= min_overlap)
            i, j, ub = i[keep], j[keep], ub[keep]
            certain = A.rect[i] & B.rect[j]
            parts.append(
                dict(
                    i=i,
                    j=j,
                    gap=np.asarray(res["gap"], np.int64)[keep],
                    kind=np.ones(len(i), np.int8),
                    certain=certain,
                    ov=np.where(certain, ub, np.nan),
                )
            )

    # ---- location candidates: location x time bucket join
    if use_loc:
        ai = np.flatnonzero(a_mask & (a_loc >= 0))
        bi = np.flatnonzero(b_loc >= 0)
        if len(ai) and len(bi):
            a_tab = pa.table(
                {
                    "key": np.concatenate([a_loc[ai] * ntb + tb_a[ai] + d for d in (-1, 0, 1)]),
                    "i": np.tile(ai, 3),
                    "t": np.tile(A.t_us[ai], 3),
                }
            )
            b_tab = pa.table({"key": b_loc[bi] * ntb + tb_b[bi], "j": bi, "t": B.t_us[bi]})
            con.register("a_locs", a_tab)
            con.register("b_locs", b_tab)
            res = con.execute(f"""
                SELECT a.i, b.j, b.t - a.t AS gap FROM a_locs a JOIN b_locs b ON a.key = b.key
                WHERE abs(b.t - a.t) <= {int(window_us)}
            """).fetchnumpy()
            con.unregister("a_locs")
            con.unregister("b_locs")
            n = len(res["i"])
            parts.append(
                dict(
                    i=np.asarray(res["i"], np.int64),
                    j=np.asarray(res["j"], np.int64),
                    gap=np.asarray(res["gap"], np.int64),
                    kind=np.zeros(n, np.int8),
                    certain=np.ones(n, bool),
                    ov=np.full(n, np.nan),
                )
            )

    if not parts:
        return dict(
            i=np.zeros(0, np.int64),
            j=np.zeros(0, np.int64),
            gap=np.zeros(0, np.int64),
            kind=np.zeros(0, np.int8),
            certain=np.zeros(0, bool),
            ov=np.zeros(0),
        )
    cand = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # ---- prune with a window function: per S2 keep rank <= its best certain candidate
    # k2 orders by (|gap|, S1 time): for equal |gap| the earlier S1 is the negative gap.
    k2 = 2 * np.abs(cand["gap"]) + (cand["gap"] > 0)
    con.register(
        "cand", pa.table({"r": np.arange(len(k2)), "i": cand["i"], "k": k2, "certain": cand["certain"]})
    )
    keep = con.execute("""
        SELECT r FROM (
          SELECT r, k, min(CASE WHEN certain THEN k END) OVER (PARTITION BY i) AS kc FROM cand
        ) WHERE kc IS NULL OR k <= kc
    """).fetchnumpy()["r"]
    con.unregister("cand")
    keep = np.sort(np.asarray(keep, np.int64))
    cand = {k: v[keep] for k, v in cand.items()}
    cand["k2"] = k2[keep]
    return cand


def _geoms(S: Items, idx: np.ndarray) -> np.ndarray:
    g = S.geom[idx].copy()
    box = shapely.is_missing(g)
    if box.any():
        b = S.bbox[idx[box]]
        g[box] = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    return g


def _exact_overlap(A: Items, B: Items, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """area(S2 & S1) / area(S2); NaN where a footprint is missing."""
    ov = np.full(len(i), np.nan)
    ok = A.has_geom[i] & B.has_geom[j]
    fast = ok & A.rect[i] & B.rect[j] & A.single[i] & B.single[j]
    if fast.any():
        a, b = A.bbox[i[fast]], B.bbox[j[fast]]
        w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        ov[fast] = np.where((w > 0) & (h > 0), w * h, 0.0) / A.area[i[fast]]
    slow = ok & ~fast
    if slow.any():
        inter = shapely.intersection(_geoms(A, i[slow]), _geoms(B, j[slow]))
        ov[slow] = shapely.area(inter) / A.area[i[slow]]
    return ov


def _select(A: Items, B: Items, cand: dict[str, np.ndarray], min_overlap: float) -> dict[str, np.ndarray]:
    """Exact overlaps where needed, the footprint test, then the best candidate per S2."""
    i, j = cand["i"], cand["j"]
    ov = _exact_overlap(A, B, i, j)
    fp_certain = (cand["kind"] == 1) & cand["certain"]
    ov = np.where(fp_certain & ~np.isnan(cand["ov"]), cand["ov"], ov)  # the value the SQL test used
    passes = (cand["kind"] == 0) | fp_certain | ((ov > 0) & (ov >= min_overlap))
    sel = {k: v[passes] for k, v in cand.items()}
    sel["ov"] = ov[passes]
    if not len(sel["i"]):
        return sel
    ovkey = -np.where(np.isnan(sel["ov"]), -1.0, sel["ov"])
    order = np.lexsort((ovkey, sel["k2"], sel["i"]))
    si, sk, so = sel["i"][order], sel["k2"][order], ovkey[order]
    first = np.r_[True, si[1:] != si[:-1]]
    win = order[first].copy()
    # full ties on (|gap|, S1 time, overlap): the smaller s1_id wins (rare, resolved in Python)
    tie = np.r_[False, (si[1:] == si[:-1]) & (sk[1:] == sk[:-1]) & (so[1:] == so[:-1])]
    if tie.any():
        group_start = np.flatnonzero(first)
        gid = np.cumsum(first) - 1
        for g in np.unique(gid[tie]):
            s = group_start[g]
            e = s + 1
            while e < len(si) and si[e] == si[s] and sk[e] == sk[s] and so[e] == so[s]:
                e += 1
            rows = order[s:e]
            ids = [B.ids[int(x)].as_py() for x in sel["j"][rows]]
            win[g] = rows[min(range(len(ids)), key=lambda q: ids[q])]
    return {k: v[win] for k, v in sel.items()}


# --------------------------------------------------------------------------------------------
# The pairing
# --------------------------------------------------------------------------------------------


@dataclass
class PairResult:
    pairs: pa.Table
    s2_only: pa.Table
    stats: dict[str, Any]


def _ts(t_us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(t_us, np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _take(a: pa.Array, idx: np.ndarray) -> pa.Array:
    return a.take(pa.array(np.asarray(idx, np.int64)))


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
    s2_product: str = "s2c",
) -> PairResult:
    """Pair every S2 item with its closest-in-time same-place S1 item (see the module docstring).

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
    """
    if match not in ("auto", "footprint", "location"):
        raise ValueError(f"match must be 'auto', 'footprint' or 'location', not {match!r}")
    if not (max_days >= 0 and math.isfinite(max_days)):
        raise ValueError(f"max_days must be a finite number >= 0, not {max_days!r}")
    if not (0.0 <= min_overlap <= 1.0):
        raise ValueError(f"min_overlap must be within [0, 1], not {min_overlap!r}")
    if not (cell_deg > 0):
        raise ValueError(f"cell_deg must be > 0, not {cell_deg!r}")
    timings: dict[str, float] = {}
    t0 = _time.perf_counter()
    A = load_items(s2, product=s2_product)
    B = load_items(s1, product="s1")
    timings["load_s"] = _time.perf_counter() - t0

    # shared location codes (-1: none)
    allloc = pa.chunked_array([A.location, B.location], pa.string()).combine_chunks()
    enc = allloc.dictionary_encode()
    codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    A.loc_code, B.loc_code = codes[: len(A)], codes[len(A) :]

    if match == "footprint":
        a_place, b_usable = A.has_geom, B.has_geom
    elif match == "location":
        a_place, b_usable = A.loc_code >= 0, B.loc_code >= 0
    else:
        a_place, b_usable = A.has_geom | (A.loc_code >= 0), B.has_geom | (B.loc_code >= 0)

    window = int(round(max_days * US_PER_DAY))
    con = _connect(threads)
    try:
        t1 = _time.perf_counter()
        cand = _candidates(con, A, B, a_place, window, min_overlap, match, cell_deg)
        timings["join_s"] = _time.perf_counter() - t1
        t1 = _time.perf_counter()
        best = _select(A, B, cand, min_overlap)
        timings["select_s"] = _time.perf_counter() - t1
        paired = np.zeros(len(A), bool)
        paired[best["i"]] = True

        # nearest same-place S1 for the S2-only rows
        lone = np.flatnonzero(~paired)
        near = None
        t1 = _time.perf_counter()
        if nearest_days is not None and nearest_days > max_days and len(lone):
            m2 = np.zeros(len(A), bool)
            m2[lone] = True
            m2 &= a_place
            if m2.any():
                c2 = _candidates(
                    con, A, B, m2, int(round(nearest_days * US_PER_DAY)), min_overlap, match, cell_deg
                )
                near = _select(A, B, c2, min_overlap)
        timings["nearest_s"] = _time.perf_counter() - t1
    finally:
        con.close()

    # ---- output tables (S2 input order)
    order = np.argsort(best["i"], kind="stable")
    bi, bj = best["i"][order], best["j"][order]
    gap = best["gap"][order]
    s2loc = _take(A.location, bi)
    pairs = pa.table(
        {
            "s2_id": _take(A.ids, bi),
            "s1_id": _take(B.ids, bj),
            "s2_time": _ts(A.t_us[bi]),
            "s1_time": _ts(B.t_us[bj]),
            "gap_hours": pa.array(gap / US_PER_HOUR, pa.float64()),
            "overlap": pa.array(best["ov"][order], pa.float64(), from_pandas=True),
            "s2_path": _take(A.path, bi),
            "s1_path": _take(B.path, bj),
            "location": pc.coalesce(s2loc, _take(B.location, bj)),
            "match": pa.array(np.where(best["kind"][order] == 1, "footprint", "location"), pa.string()),
        },
        schema=PAIR_SCHEMA,
    )

    n_near_j = np.full(len(A), -1, np.int64)
    n_near_gap = np.zeros(len(A), np.int64)
    if near is not None and len(near["i"]):
        n_near_j[near["i"]] = near["j"]
        n_near_gap[near["i"]] = near["gap"]
    lj = n_near_j[lone]
    has_near = lj >= 0
    unplaced = "no_location" if match == "location" else "no_footprint"
    reason = np.where(
        ~a_place[lone], unplaced, np.where(has_near, "no_s1_within_max_days", "no_s1_same_place")
    )
    near_idx = pa.array(lj, pa.int64(), mask=~has_near)  # null index -> null value
    near_ids = B.ids.take(near_idx)
    near_t = _ts(B.t_us).take(near_idx)
    near_gap = pa.array(
        np.where(has_near, n_near_gap[lone] / US_PER_HOUR, np.nan), pa.float64(), from_pandas=True
    )
    s2_only = pa.table(
        {
            "s2_id": _take(A.ids, lone),
            "s2_time": _ts(A.t_us[lone]),
            "s2_path": _take(A.path, lone),
            "location": _take(A.location, lone),
            "reason": pa.array(reason, pa.string()),
            "nearest_s1_id": near_ids,
            "nearest_s1_time": near_t,
            "nearest_gap_hours": near_gap,
        },
        schema=S2_ONLY_SCHEMA,
    )

    reuse = np.bincount(bj, minlength=len(B)) if len(bj) else np.zeros(1, np.int64)
    stats = {
        "s2": len(A),
        "s1": len(B),
        "pairs": int(len(bi)),
        "s2_only": int(len(lone)),
        "s2_no_footprint": int((~A.has_geom).sum()),
        "s1_no_footprint": int((~B.has_geom).sum()),
        "s1_ignored": int((~b_usable).sum()),
        "s2_unplaceable": int((~a_place).sum()),
        "s1_used": int((reuse > 0).sum()),
        "s1_max_reuse": int(reuse.max()),
        "pairs_by_location": int((best["kind"] == 0).sum()),
        "pairs_by_footprint": int((best["kind"] == 1).sum()),
        "max_days": max_days,
        "min_overlap": min_overlap,
        "match": match,
        "seconds": dict(timings, total_s=_time.perf_counter() - t0),
    }
    return PairResult(pairs=pairs, s2_only=s2_only, stats=stats)


def write_outputs(result: PairResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``pairs.parquet`` and ``s2_only.parquet`` atomically: both go to temporary names in
    ``out`` first and are renamed only once both are complete; on failure nothing is left."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    plan = {"pairs.parquet": result.pairs, "s2_only.parquet": result.s2_only}
    tmps: dict[str, Path] = {}
    try:
        for name, tab in plan.items():
            tmp = out / f".{name}.{tag}.tmp"
            tmps[name] = tmp
            pq.write_table(tab, tmp)
        for name, tmp in tmps.items():
            os.replace(tmp, out / name)
    except BaseException:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise
    return {name: out / name for name in plan}


def pair_cli(
    s2: str,
    s1: str | None = None,
    out: str = "pairs",
    max_days: float = DEFAULT_MAX_DAYS,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    match: Match = "auto",
    nearest_days: float | None = DEFAULT_NEAREST_DAYS,
    s2_product: str = "s2c",
    cell_deg: float = 1.0,
    threads: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """``s12mae pair``: pair S2 with S1 acquisitions; write ``out/pairs.parquet`` and ``out/s2_only.parquet``.

    Args:
        s2: S2 metadata: an SSL4EO-S12 root (``s2c``/``s2a``/``s1`` folders) or modality folder, a
            parquet/CSV index, or STAC (Item/ItemCollection/Catalog JSON, or a catalog folder).
        s1: S1 metadata in the same forms; default: ``s2`` itself (its ``s1/`` folder).
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

    Returns the statistics (counts, seconds).
    """
    res = pair(
        s2,
        s2 if s1 is None else s1,
        max_days=max_days,
        min_overlap=min_overlap,
        match=match,
        nearest_days=nearest_days,
        cell_deg=cell_deg,
        threads=threads,
        s2_product=s2_product,
    )
    t = _time.perf_counter()
    paths = write_outputs(res, out)
    res.stats["seconds"]["write_s"] = _time.perf_counter() - t
    res.stats["outputs"] = {k: str(v) for k, v in paths.items()}
    if not quiet:
        st = res.stats
        print(
            f"paired {st['pairs']} of {st['s2']} S2 items with {st['s1_used']} of {st['s1']} S1 items "
            f"(max {max_days:g} days, min overlap {min_overlap:g}, match {match}); "
            f"S2-only {st['s2_only']}; S1 ignored (no footprint/location) {st['s1_ignored']}"
        )
        print(f"wrote {paths['pairs.parquet']} and {paths['s2_only.parquet']}")
    return res.stats
