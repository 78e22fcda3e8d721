"""Footprints in lon/lat degrees -> boxes and geometries the candidate search can join on.

Antimeridian: a bbox with ``minlon > maxlon`` (or ``maxlon > 180``, or ``minlon < -180``), and a
polygon whose longitude extent exceeds 180 degrees (vertices jumping from +179 to -179) or that
goes beyond +-180, is read as crossing 180 degrees and split into its pieces on either side, so
overlaps across it are right. (A real footprint never spans more than 180 degrees of longitude.)

A footprint of zero area counts as missing. Rings and closed lines are read as polygons; invalid
polygons are repaired (``make_valid``, polygonal parts kept); other geometry types are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

__all__ = ["Footprints", "as_geometries", "geojson_geometry", "normalise_footprints"]

_ROTATED_TOL = 1e-9  # a polygon whose area equals its envelope's to this share is a box


@dataclass
class Footprints:
    """Normalised footprints of N items, in columnar form.

    Items with ``rect`` are unions of axis-aligned boxes (their parts) whose overlaps are exact from
    bbox arithmetic; the others keep a shapely geometry in ``geom`` (already split at 180 degrees).

    Attributes:
        has_geom: ``(N,)`` the item has a usable footprint (area > 0).
        rect: ``(N,)`` the footprint is one box or boxes split at 180 degrees.
        area: ``(N,)`` planar area in square degrees.
        geom: ``(N,)`` object: the geometry of polygon items and of split boxes, else ``None``.
        part_item: ``(P,)`` the item each part belongs to.
        part_box: ``(P, 4)`` minlon, minlat, maxlon, maxlat of each part, all within +-180.
        bbox: ``(N, 4)`` the item's box (meaningful for single-part ``rect`` items), else NaN.
        single: ``(N,)`` the item has exactly one part.
    """

    has_geom: np.ndarray
    rect: np.ndarray
    area: np.ndarray
    geom: np.ndarray
    part_item: np.ndarray
    part_box: np.ndarray
    bbox: np.ndarray
    single: np.ndarray


def id_note(ids: pa.Array | None, row: int) -> str:
    """`` (id 'x')`` for error messages, or nothing without ids."""
    return "" if ids is None else f" (id {ids[row].as_py()!r})"


def geojson_geometry(obj: Any) -> Any:
    """A GeoJSON geometry dict (``LinearRing`` too, as Earth Engine writes) -> shapely, or None."""
    if obj is None:
        return None
    if isinstance(obj, dict) and obj.get("type") == "LinearRing":
        return shapely.Polygon(obj["coordinates"])
    from shapely.geometry import shape

    return shape(obj)


def _split_boxes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` in the antimeridian convention -> (part item, part box, item area, split)."""
    x0, y0, x1, y1 = boxes.T
    west_gt_east = x0 > x1  # minlon > maxlon: crosses 180
    east_beyond = x1 > 180.0  # unwrapped east of 180
    west_beyond = x0 < -180.0  # unwrapped west of -180
    split = west_gt_east | east_beyond | west_beyond
    n = len(boxes)
    rows = np.arange(n)
    part_boxes, part_items = [np.column_stack([x0, y0, x1, y1])[~split]], [rows[~split]]
    for mask, west_piece, east_piece in (
        (west_gt_east, (x0, 180.0), (-180.0, x1)),
        (east_beyond & ~west_gt_east, (x0, 180.0), (-180.0, x1 - 360.0)),
        (west_beyond & ~west_gt_east & ~east_beyond, (x0 + 360.0, 180.0), (-180.0, x1)),
    ):
        if mask.any():
            for lo, hi in (west_piece, east_piece):
                lo_, hi_ = np.broadcast_to(lo, n)[mask], np.broadcast_to(hi, n)[mask]
                part_boxes.append(np.column_stack([lo_, y0[mask], hi_, y1[mask]]))
                part_items.append(rows[mask])
    part_box, part_item = np.concatenate(part_boxes), np.concatenate(part_items)
    keep = (part_box[:, 2] > part_box[:, 0]) & (part_box[:, 3] > part_box[:, 1])
    part_box, part_item = part_box[keep], part_item[keep]
    widths = part_box[:, 2] - part_box[:, 0]
    area = np.bincount(part_item, weights=widths * (part_box[:, 3] - part_box[:, 1]), minlength=n)
    return part_item, part_box, area, split


def _split_antimeridian(g: Any) -> Any:
    """A polygonal geometry crossing 180 degrees -> its pieces within +-180 (a MultiPolygon)."""
    minx, _, maxx, _ = g.bounds
    if maxx - minx > 180.0 and minx >= -180.0 and maxx <= 180.0:
        # wrapped form (+179 ... -179): move the western hemisphere by +360
        g = shapely.transform(g, lambda c: np.where(c[:, :1] < 0, c + np.array([360.0, 0.0]), c))
    pieces = []
    for shift in (-360.0, 0.0, 360.0):
        window = shapely.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0)
        p = shapely.intersection(g, window)
        if not p.is_empty and p.area > 0:
            pieces.extend(shapely.get_parts(shapely.transform(p, lambda c, s=shift: c + np.array([s, 0.0]))))
    pieces = [p for p in pieces if p.geom_type == "Polygon" and p.area > 0]
    return shapely.MultiPolygon(pieces) if pieces else None


def _only_polygons(g: Any) -> Any:
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return None
    union = shapely.union_all(parts)
    return union if union.geom_type in ("Polygon", "MultiPolygon") else None


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
        row = int(rows[k])
        raise ValueError(
            f"{source}: footprint of row {row}{id_note(ids, row)} is a {g[k].geom_type}, not a polygon"
        )
    return g


def _normalise_polygons(
    geoms: np.ndarray, rows: np.ndarray, source: str, ids: pa.Array | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polygon footprints -> (geometries split at 180, their bounds, is a box, area > 0)."""
    g = _polygonal(geoms, source, ids, rows)
    invalid = ~shapely.is_valid(g)
    if invalid.any():
        g[invalid] = shapely.make_valid(g[invalid])
        g[invalid] = [_only_polygons(x) for x in g[invalid]]
    bounds = shapely.bounds(g)
    cross = (bounds[:, 2] - bounds[:, 0] > 180.0) | (bounds[:, 0] < -180.0) | (bounds[:, 2] > 180.0)
    for k in np.flatnonzero(cross):
        g[k] = _split_antimeridian(g[k])
    area = shapely.area(g)
    area = np.where(np.isnan(area), 0.0, area)
    bounds = shapely.bounds(g)
    envelope = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    is_box = ~cross & (area > 0) & (np.abs(area - envelope) <= _ROTATED_TOL * envelope)
    return g, bounds, is_box, area > 0


def _box_parts(
    bbox: np.ndarray, rows: np.ndarray, geom: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parts of the box items ``rows`` (split at 180 where they cross it) -> (part item, part box,
    area, usable box). Split boxes also get a MultiPolygon in ``geom`` for exact checks."""
    n = len(bbox)
    part_item, part_box, area_rows, split = _split_boxes(bbox[rows])
    part_item = rows[part_item]
    area, usable = np.zeros(n), np.zeros(n, bool)
    area[rows], usable[rows] = area_rows, area_rows > 0
    if split.any():
        is_split = np.zeros(n, bool)
        is_split[rows[split]] = True
        pieces = np.flatnonzero(is_split[part_item])
        pieces = pieces[np.argsort(part_item[pieces], kind="stable")]
        owners, owner_of_piece = np.unique(part_item[pieces], return_inverse=True)
        b = part_box[pieces]
        geom[owners] = shapely.multipolygons(
            shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), indices=owner_of_piece
        )
    return part_item, part_box, area, usable


def _polygon_parts(
    geom: np.ndarray, rect: np.ndarray, area: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parts of the polygon items: the envelope, or each piece's envelope when split at 180
    (an upper bound of the overlap is all the join needs) -> (part item, part box, item rows).
    Sets ``area`` of those items."""
    rows = np.flatnonzero(~shapely.is_missing(geom) & ~rect)
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros((0, 4)), rows
    pieces, owner = shapely.get_parts(geom[rows], return_index=True)
    multi = np.bincount(owner, minlength=len(rows))[owner] > 1
    piece_bounds = shapely.bounds(pieces)
    envelope = shapely.bounds(geom[rows])
    split_owner = (envelope[:, 0] <= -180.0) & (envelope[:, 2] >= 180.0)  # pieces on both sides of 180
    use_piece = multi & split_owner[owner]
    part_item = np.concatenate([rows[owner[use_piece]], rows[~split_owner]])
    part_box = np.concatenate([piece_bounds[use_piece], envelope[~split_owner]])
    area[rows] = shapely.area(geom[rows])
    return part_item, part_box, rows


def normalise_footprints(
    geoms: np.ndarray | None, boxes: np.ndarray | None, n: int, source: str, ids: pa.Array | None = None
) -> Footprints:
    """Polygons (shapely, ``None`` where missing) and/or boxes ``(n, 4)`` (NaN where missing) of
    ``n`` items -> :class:`Footprints`. A polygon wins over a box where both are given.

    Raises:
        ValueError: a footprint that is not polygonal (names ``source``, the row and the id).
    """
    has_poly = np.zeros(n, bool) if geoms is None else ~shapely.is_missing(geoms)
    bbox = np.full((n, 4), np.nan) if boxes is None else np.asarray(boxes, float).copy()
    is_box = np.isfinite(bbox).all(axis=1) & ~has_poly
    geom = np.full(n, None, dtype=object)
    if has_poly.any():
        rows = np.flatnonzero(has_poly)
        g, bounds, poly_is_box, usable = _normalise_polygons(
            np.asarray(geoms, dtype=object)[rows], rows, source, ids
        )
        bbox[rows[poly_is_box]] = bounds[poly_is_box]  # box-shaped polygons become plain boxes
        is_box[rows[poly_is_box]] = True
        keep = usable & ~poly_is_box
        geom[rows[keep]] = g[keep]
    bbox[~is_box] = np.nan
    box_item, box_part, area, rect = _box_parts(bbox, np.flatnonzero(is_box), geom)
    poly_item, poly_part, poly_rows = _polygon_parts(geom, rect, area)
    has_geom = rect.copy()
    has_geom[poly_rows] = True
    part_item = np.concatenate([box_item, poly_item]).astype(np.int64)
    return Footprints(
        has_geom=has_geom,
        rect=rect,
        area=area,
        geom=geom,
        part_item=part_item,
        part_box=np.concatenate([box_part, poly_part]).reshape(-1, 4),
        bbox=bbox,
        single=np.bincount(part_item, minlength=n) == 1,
    )


def as_geometries(footprints: Footprints, rows: np.ndarray) -> np.ndarray:
    """Shapely geometries of items ``rows`` (boxes built from ``bbox`` where no geometry is kept)."""
    g = footprints.geom[rows].copy()
    box = shapely.is_missing(g)
    if box.any():
        b = footprints.bbox[rows[box]]
        g[box] = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    return g
