"""STAC items found by a search -> pairing input tables, and their metadata -> pairs columns.

Three jobs, each in one place:

- :func:`band_assets`: the COG of every band of a sensor in an item's ``assets``, following the
  public catalogs' conventions: asset keys that are band names (Planetary Computer ``B02``,
  ``vv``; Copernicus Data Space ``B02_10m``, the finest resolution wins), single-band
  ``eo:bands``/``bands`` names, or the EO extension's common names that Earth Search v1 uses as
  keys (``blue``, ``nir08``, ``swir16``, ...). A GeoTIFF asset wins over a JPEG 2000 one
  (Earth Search's ``blue`` over ``blue-jp2``). Hrefs (``https://`` or ``s3://``) are kept as given.
- :func:`s2_offset`: the S2 processing baseline (``s2:processing_baseline`` on Earth Search and
  Planetary Computer, ``processing:version`` on Copernicus Data Space, ``processing:baseline``,
  Earth Search v0's ``sentinel:processing_baseline``; else the ``_Nxxyy_`` token of
  ``s2:product_uri`` or the id) and the +1000 DN offset that the readers' rule
  (:func:`s12mae.readers.base.baseline_offset`, design note 9) decides from it. Earth Search's
  ``earthsearch:boa_offset_applied: true`` means its COGs already had the offset removed: 0 DN,
  rule ``offset_applied`` (that flag is known to be wrong on some 2022 scenes, Element84/earth-search#66;
  the baseline travels too, so a user can decide otherwise).
- :func:`item_table` turns items into the index table that :func:`s12mae.pairing.load_items`
  reads (``id``, ``time``, ``footprint`` as WKB, ``minlon..maxlat``, ``path`` = the item's self
  href) plus the metadata columns below; :func:`add_item_columns` copies those columns, prefixed
  ``s2_``/``s1_``, onto the rows of ``pairs.parquet`` and ``s2_only.parquet`` (matched by id), so
  that shard writing can remove the offset and export chips from the assets.

Metadata columns: ``collection``; ``assets`` (JSON object band name -> href, in the sensor's band
order); S2: ``cloud_cover`` (percent), ``processing_baseline`` (string as given, e.g. ``"04.00"``),
``dn_offset`` (DN to subtract), ``dn_rule`` (``metadata``/``baseline``/``date``/``unknown``/
``offset_applied``) and ``grid`` (:func:`proj_grid`: the grid of the finest band from the projection
extension, so that windowed chip reads know a scene's chips without reading it); S1: ``instrument_mode``, ``polarizations`` (``"VV+VH"``), ``orbit_state``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry import shape

from s12mae.readers.base import baseline_offset, canonical_band, parse_time
from s12mae.sensors import SensorSpec, get_sensor

__all__ = [
    "BASELINE_PROPERTIES",
    "COMMON_NAMES",
    "INDEX_COLUMNS",
    "add_item_columns",
    "band_assets",
    "item_table",
    "item_time",
    "proj_grid",
    "s2_offset",
    "self_href",
]

COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
    "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}
"""EO extension common names of the Sentinel-2 bands (Earth Search v1 asset keys)."""
BASELINE_PROPERTIES = ("s2:processing_baseline", "processing:baseline", "processing:version",
                       "sentinel:processing_baseline")
"""Item properties that carry the S2 processing baseline, in the order they are consulted."""
INDEX_COLUMNS = ("id", "time", "footprint", "minlon", "minlat", "maxlon", "maxlat", "path")
"""The columns that :func:`s12mae.pairing.load_items` reads; the others are metadata."""
_OFFSET_APPLIED = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_RESOLUTION = re.compile(r"^(.*?)[_-](\d+)m$", re.IGNORECASE)
_JP2 = ("image/jp2", ".jp2")


def self_href(item: Mapping[str, Any]) -> str | None:
    """The item's ``self`` link (where the API serves it), if it has one."""
    return next((link.get("href") for link in item.get("links", []) if link.get("rel") == "self"), None)


def item_time(item: Mapping[str, Any]) -> str | None:
    """``datetime``, else ``start_datetime`` (ISO 8601, as the item gives it)."""
    props = item.get("properties") or {}
    return props.get("datetime") or props.get("start_datetime")


def _asset_bands(key: str, asset: Mapping[str, Any]) -> tuple[str | None, int]:
    """(canonical band name, resolution in m or 0) that an asset holds, if it holds one band."""
    listed = asset.get("eo:bands") or asset.get("bands") or []
    m = _RESOLUTION.match(key)
    stem, res = (m.group(1), int(m.group(2))) if m else (key, 0)
    stem = stem.removesuffix("-jp2").removesuffix("_jp2")
    if stem.lower() in COMMON_NAMES:
        return COMMON_NAMES[stem.lower()], res
    if len(listed) == 1 and listed[0].get("name"):
        name = str(listed[0]["name"])
        return COMMON_NAMES.get(name.lower(), canonical_band(name)), res
    return canonical_band(stem), res


def band_assets(item: Mapping[str, Any], spec: SensorSpec) -> dict[str, str]:
    """Band name -> asset href for the bands of ``spec`` that the item has (see the module doc)."""
    best: dict[str, tuple[tuple[int, int], str]] = {}
    wanted = set(spec.band_names)
    for key, asset in (item.get("assets") or {}).items():
        href = asset.get("href")
        band, res = _asset_bands(key, asset)
        if not href or band not in wanted:
            continue
        jp2 = str(asset.get("type", "")).startswith(_JP2[0]) or href.lower().endswith(_JP2[1])
        rank = (int(jp2), res)  # GeoTIFF before JPEG 2000, then the finest resolution
        if band not in best or rank < best[band][0]:
            best[band] = (rank, href)
    return {b: best[b][1] for b in spec.band_names if b in best}


def _proj(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The projection extension's ``crs`` (from ``proj:code`` or ``proj:epsg``), ``transform``
    and ``shape`` found in ``fields`` (an item's properties or one asset)."""
    out: dict[str, Any] = {}
    code = fields.get("proj:code") or (f"EPSG:{fields['proj:epsg']}" if fields.get("proj:epsg") else None)
    if code:
        out["crs"] = str(code)
    if isinstance(fields.get("proj:transform"), list) and len(fields["proj:transform"]) in (6, 9):
        out["transform"] = [float(v) for v in fields["proj:transform"][:6]]
    if isinstance(fields.get("proj:shape"), list) and len(fields["proj:shape"]) == 2:
        out["shape"] = [int(v) for v in fields["proj:shape"]]
    return out


def proj_grid(item: Mapping[str, Any], spec: SensorSpec) -> str | None:
    """The grid of the item's finest band COG from the projection extension (``proj:code`` or
    ``proj:epsg``, ``proj:transform``, ``proj:shape``, each on the asset or else on the item) as
    :func:`s12mae.readers.windows.grid_to_json` stores it, or ``None`` where they are incomplete."""
    from s12mae.readers.windows import grid_to_json

    props, hrefs = _proj(item.get("properties") or {}), set(band_assets(item, spec).values())
    best: dict[str, Any] | None = None
    for asset in (item.get("assets") or {}).values():
        if asset.get("href") not in hrefs:
            continue
        grid = {**props, **_proj(asset)}
        if len(grid) == 3 and (best is None or _pixel_area(grid) < _pixel_area(best)):
            best = grid
    return None if best is None else grid_to_json(best["crs"], best["transform"], best["shape"])


def _pixel_area(grid: Mapping[str, Any]) -> float:
    a, b, _, d, e, _ = grid["transform"]
    return abs(a * e - b * d)


def _baseline(props: Mapping[str, Any]) -> str | None:
    for key in BASELINE_PROPERTIES:
        value = props.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def s2_offset(item: Mapping[str, Any]) -> tuple[str | None, int, str]:
    """(processing baseline as given, DN offset to remove, rule) of one S2 item."""
    props = item.get("properties") or {}
    baseline = _baseline(props)
    if any(props.get(k) is True for k in _OFFSET_APPLIED):
        return baseline, 0, "offset_applied"
    metadata = {"PRODUCT_ID": props.get("s2:product_uri") or item.get("id", "")}
    if baseline is not None:
        metadata["PROCESSING_BASELINE"] = baseline
    dn, rule = baseline_offset(metadata, "B02", parse_time(item_time(item)))
    return baseline, dn, rule


def _footprints(items: Sequence[Mapping[str, Any]]) -> tuple[pa.Array, np.ndarray]:
    """(WKB footprints, (N, 4) bboxes with NaN where absent)."""
    geoms = np.array([None if it.get("geometry") is None else shape(it["geometry"]) for it in items],
                     dtype=object)
    boxes = np.full((len(items), 4), np.nan)
    for i, it in enumerate(items):
        bb = it.get("bbox") or []
        if len(bb) in (4, 6):
            boxes[i] = [bb[0], bb[1], bb[2], bb[3]] if len(bb) == 4 else [bb[0], bb[1], bb[3], bb[4]]
    wkb = shapely.to_wkb(geoms)  # None stays None
    return pa.array(list(wkb), pa.binary()), boxes


def item_table(items: Sequence[Mapping[str, Any]], sensor: str) -> pa.Table:
    """STAC item dicts of one sensor -> the pairing index table plus metadata columns."""
    spec = get_sensor(sensor)
    wkb, boxes = _footprints(items)
    props = [it.get("properties") or {} for it in items]
    cols: dict[str, Any] = {
        "id": pa.array([it.get("id") for it in items], pa.string()),
        "time": pa.array([item_time(it) for it in items], pa.string()),
        "footprint": wkb,
        **{name: pa.array(boxes[:, k]) for k, name in enumerate(("minlon", "minlat", "maxlon", "maxlat"))},
        "path": pa.array([self_href(it) for it in items], pa.string()),
        "collection": pa.array([it.get("collection") for it in items], pa.string()),
        "assets": pa.array([json.dumps(band_assets(it, spec)) for it in items], pa.string()),
    }
    if spec.family == "s2":
        offsets = [s2_offset(it) for it in items]
        cols["cloud_cover"] = pa.array([p.get("eo:cloud_cover") for p in props], pa.float64())
        cols["processing_baseline"] = pa.array([o[0] for o in offsets], pa.string())
        cols["dn_offset"] = pa.array([o[1] for o in offsets], pa.int16())
        cols["dn_rule"] = pa.array([o[2] for o in offsets], pa.string())
        cols["grid"] = pa.array([proj_grid(it, spec) for it in items], pa.string())
    else:
        cols["instrument_mode"] = pa.array([p.get("sar:instrument_mode") for p in props], pa.string())
        cols["polarizations"] = pa.array(
            ["+".join(p.get("sar:polarizations") or p.get("sar:polarization") or []) or None for p in props],
            pa.string())
        cols["orbit_state"] = pa.array([p.get("sat:orbit_state") for p in props], pa.string())
    return pa.table(cols)


def add_item_columns(table: pa.Table, items: pa.Table, prefix: str) -> pa.Table:
    """``table`` (pairs or S2-only rows) with the metadata columns of ``items`` appended as
    ``<prefix>_<column>``, matched on ``<prefix>_id``; row order is kept."""
    extra = [c for c in items.column_names if c not in INDEX_COLUMNS]
    where = pc.index_in(table.column(f"{prefix}_id"), value_set=items.column("id"))
    if where.null_count:
        raise ValueError(f"{prefix}_id values missing from the searched items (an internal mismatch)")
    for name in extra:
        table = table.append_column(f"{prefix}_{name}", items.column(name).take(where))
    return table
