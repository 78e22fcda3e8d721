"""S2 and S1 item tables: every supported input -> :class:`Items` (ids, times, paths, footprints).

Inputs (:func:`load_items`): an SSL4EO-S12 folder (``<root>/s2c|s2a|s1/<location>/<acquisition>/
metadata.json``, or one product folder; the layout is :mod:`s12mae.readers.ssl4eo`'s), a parquet
or CSV index (columns ``id``, ``time`` (any form :mod:`s12mae.times` reads), ``footprint`` (WKT or
WKB) and/or ``minlon, minlat, maxlon, maxlat``, optional ``path`` and ``location``), or STAC (an
Item, an ItemCollection or a Catalog/Collection file or folder, read with pystac; or pystac
objects in memory).

Sensor families (:attr:`Items.family`, ``s2``/``s1``/... of ``sensors.yaml``): an SSL4EO-S12
product folder gives its family (``s2c`` -> ``s2``); an index may name each row's sensor in a
``sensor`` column (a sensor key such as ``s2_l1c``/``s1_grd``, a family ``s2``/``s1``, or an
SSL4EO-S12 product ``s2c``/``s2a``/``s1``); a STAC item's ``constellation``, ``platform`` or
collection id (``sentinel-2-l2a``, ``sentinel-1a``) gives it. :func:`load_items` with ``family``
keeps only the items of that family (and those whose family is unknown).

Paths (:mod:`s12mae.paths`): an item's ``path`` is made absolute when it is loaded; a relative
``path`` in an index file is relative to the index file's folder (in a table given in memory, to
the working directory); URLs are kept as they are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from s12mae.pairing.geometry import Footprints, geojson_geometry, id_note, normalise_footprints
from s12mae.paths import absolute, resolve_column
from s12mae.readers.ssl4eo import (
    FOOTPRINT_KEYS,
    METADATA,
    PRODUCTS,
    TIME_KEYS,
    is_product_folder,
    metadata_records,
    product_of,
)
from s12mae.sensors import get_sensor, list_sensors
from s12mae.times import parse_time, times_to_us, to_us

__all__ = ["Items", "items_from_ssl4eo", "items_from_stac", "items_from_table", "load_items", "loading",
           "out_of_memory"]

_TABLE_SUFFIXES = (".parquet", ".pq", ".geoparquet")
_TEXT_COLUMNS = ("id", "time", "datetime", "footprint", "geometry", "wkt", "path", "location", "sensor")
_SENTINEL_RE = re.compile(r"sentinel[-_ ]?([12])", re.IGNORECASE)
_BOX_COLUMNS = (("minlon", "xmin"), ("minlat", "ymin"), ("maxlon", "xmax"), ("maxlat", "ymax"))


@dataclass
class Items(Footprints):
    """One side (S2 or S1) in normalised, columnar form: :class:`Footprints` plus who and when.

    Attributes:
        source: where the items came from (named in errors).
        ids: ``(N,)`` unique item ids.
        t_us: ``(N,)`` int64 acquisition times, UTC microseconds.
        path: ``(N,)`` absolute paths or URLs (null where unknown).
        location: ``(N,)`` location keys (null where none; blank counts as none).
        loc_code: ``(N,)`` location codes shared with the other side (-1: none), set by ``pair``.
        family: ``(N,)`` sensor family (``s2``, ``s1``, ...; null where the input does not say).
    """

    source: str
    ids: pa.Array
    t_us: np.ndarray
    path: pa.Array
    location: pa.Array
    loc_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    family: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    def __len__(self) -> int:
        return len(self.t_us)


def concat_items(parts: Sequence[Items], source: str) -> Items:
    """Item tables one after the other (rows of ``parts[1]`` follow those of ``parts[0]``, ...);
    ids are not checked across parts and location codes are left to ``pair``."""
    offsets = np.cumsum([0, *(len(p) for p in parts[:-1])])
    return Items(
        has_geom=np.concatenate([p.has_geom for p in parts]),
        rect=np.concatenate([p.rect for p in parts]),
        area=np.concatenate([p.area for p in parts]),
        geom=np.concatenate([p.geom for p in parts]),
        part_item=np.concatenate([p.part_item + o for p, o in zip(parts, offsets, strict=True)]),
        part_box=np.concatenate([p.part_box for p in parts]).reshape(-1, 4),
        bbox=np.concatenate([p.bbox for p in parts]).reshape(-1, 4),
        single=np.concatenate([p.single for p in parts]),
        source=source,
        ids=pa.concat_arrays([p.ids for p in parts]),
        t_us=np.concatenate([p.t_us for p in parts]),
        path=pa.concat_arrays([p.path for p in parts]),
        location=pa.concat_arrays([p.location for p in parts]),
        family=pa.concat_arrays([p.family for p in parts]),
    )


def _build_items(
    source: str,
    ids: pa.Array,
    t_us: np.ndarray,
    path: pa.Array,
    location: pa.Array,
    geoms: np.ndarray | None,
    boxes: np.ndarray | None,
    folder: str | os.PathLike[str] = os.curdir,
    family: pa.Array | None = None,
) -> Items:
    ids = ids.cast(pa.string())
    if ids.null_count:
        row = int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{source}: id is missing in row {row}")
    if len(pc.unique(ids)) != len(ids):
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
        raise ValueError(f"{source}: ids are not unique, e.g. {dup}")
    footprints = normalise_footprints(geoms, boxes, len(ids), source, ids)
    location = location.cast(pa.string())
    blank = pc.equal(pc.utf8_trim_whitespace(location), "")  # an empty location is no location
    location = pc.if_else(pc.fill_null(blank, False), pa.scalar(None, pa.string()), location)
    return Items(
        **vars(footprints),
        source=source,
        ids=ids,
        t_us=np.asarray(t_us, np.int64),
        path=resolve_column(path, folder),
        location=location,
        family=pa.nulls(len(ids), pa.string()) if family is None else family.cast(pa.string()),
    )


def _read_table(p: Path) -> pa.Table:
    try:
        if p.name.lower().endswith(_TABLE_SUFFIXES):
            return pq.read_table(p)
        import pyarrow.csv as pacsv

        strings = {c: pa.string() for c in _TEXT_COLUMNS}
        return pacsv.read_csv(
            p, convert_options=pacsv.ConvertOptions(column_types=strings, strings_can_be_null=True)
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{p}: cannot read the table: {e}") from None


def _col(tab: pa.Table, names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in tab.column_names}
    return next((lower[n] for n in names if n in lower), None)


def _table_footprints(
    tab: pa.Table, source: str, ids: pa.Array
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ``footprint`` column (WKT or WKB) and/or the box columns -> (geometries, boxes)."""
    geo_col = _col(tab, ["footprint", "geometry", "wkt"])
    box_cols = [_col(tab, pair) for pair in _BOX_COLUMNS]
    if geo_col is None and not all(box_cols):
        if any(box_cols):
            raise ValueError(f"{source}: has only some of minlon, minlat, maxlon, maxlat")
        raise ValueError(
            f"{source}: has no footprint: neither a 'footprint' column (WKT) nor minlon, minlat, maxlon, "
            f"maxlat (columns: {tab.column_names})"
        )
    geoms = None if geo_col is None else _parse_footprints(tab.column(geo_col).combine_chunks(), source, ids)
    if not all(box_cols):
        return geoms, None
    try:
        boxes = [
            tab.column(c).combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False) for c in box_cols
        ]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{source}: minlon..maxlat are not numbers: {e}") from None
    return geoms, np.column_stack(boxes)


def _parse_footprints(column: pa.Array, source: str, ids: pa.Array) -> np.ndarray:
    """WKB (binary) or WKT (text) footprints -> shapely (``None`` where null or blank)."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        values = column.to_numpy(zero_copy_only=False)
        given = column.is_valid().to_numpy(zero_copy_only=False)
        geoms = shapely.from_wkb(np.where(given, values, None), on_invalid="ignore")
    else:
        column = column.cast(pa.string())
        values = column.to_numpy(zero_copy_only=False)
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), True)
        given = ~blank.to_numpy(zero_copy_only=False)
        geoms = shapely.from_wkt(np.where(given, values, None), on_invalid="ignore")
    bad = shapely.is_missing(geoms) & given
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        wkb = pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
        _raise_if_out_of_memory(values[row], wkb, source, len(values))
        raise ValueError(
            f"{source}: cannot parse footprint {str(values[row])[:60]!r} in row {row}{id_note(ids, row)}"
        )
    return geoms


def _raise_if_out_of_memory(value: Any, wkb: bool, source: str, rows: int) -> None:
    """GEOS reports a failed allocation as an unreadable geometry (``on_invalid="ignore"`` hides
    it): a footprint that parses on its own, or whose error is an allocation failure, was lost to
    memory, not to its text."""
    parse = shapely.from_wkb if wkb else shapely.from_wkt
    try:
        parse(value, on_invalid="raise")
    except MemoryError as err:
        raise out_of_memory(source, rows, err) from None
    except Exception as err:  # noqa: BLE001 (GEOS errors of many kinds)
        if "alloc" in str(err).lower():
            raise out_of_memory(source, rows, err) from None
        return
    raise out_of_memory(source, rows, "GEOS could not allocate the footprints' geometries")


def out_of_memory(source: Any, rows: int | None, err: BaseException | str) -> MemoryError:
    """The one error for running out of memory while reading items: names the input and the way out."""
    many = "" if rows is None else f" ({rows:,} rows at once)"
    return MemoryError(
        f"{source}: ran out of memory while loading the items{many}: {str(err) or type(err).__name__}. "
        "Pair in time windows (`s12mae pair --partition_days 30` reads parquet indexes window by "
        "window), lower --nearest_days (each window also reads the S1 items that far around it), or "
        "give the process more memory"
    )


def loading(src: Any, load: Callable[[], Items]) -> Items:
    """``load()`` (reading the items of ``src``), with running out of memory reported as
    :func:`out_of_memory` naming ``src``."""
    try:
        return load()
    except MemoryError as err:
        if str(err).startswith(f"{src}:"):
            raise
        raise out_of_memory(src, None, err) from None


def family_of(value: Any) -> str | None:
    """The sensor family a ``sensor`` value names: a sensor key (``s1_grd``), a family (``s1``),
    an SSL4EO-S12 product (``s2c``) or a Sentinel name (``sentinel-2a``, ``sentinel-1-grd``)."""
    text = str(value).strip().lower()
    families = {get_sensor(k).family for k in list_sensors()}
    if text in list_sensors():
        return get_sensor(text).family
    if text in PRODUCTS:
        return get_sensor(PRODUCTS[text]).family
    if text in families:
        return text
    m = _SENTINEL_RE.search(text)
    return f"s{m.group(1)}" if m else None


def _table_family(tab: pa.Table, source: str, ids: pa.Array) -> pa.Array | None:
    """The ``sensor`` column as families (``None`` without the column; null where blank)."""
    col = _col(tab, ["sensor"])
    if col is None:
        return None
    values = tab.column(col).combine_chunks().cast(pa.string()).to_pylist()
    out = []
    for row, value in enumerate(values):
        family = None if value is None or not value.strip() else family_of(value)
        if family is None and value is not None and value.strip():
            raise ValueError(
                f"{source}: sensor {value!r} in row {row}{id_note(ids, row)} is not a sensor key "
                f"({', '.join(list_sensors())}), a family (s2, s1) or a product ({', '.join(PRODUCTS)})"
            )
        out.append(family)
    return pa.array(out, pa.string())


def _keep_family(tab: pa.Table, families: pa.Array | None, family: str | None) -> tuple[pa.Table, pa.Array | None]:
    """Rows of ``family`` or of unknown family (all rows without ``family`` or families)."""
    if family is None or families is None:
        return tab, families
    keep = pc.fill_null(pc.equal(families, family), True)
    return tab.filter(keep), families.filter(keep)


def items_from_table(
    tab: pa.Table, source: str = "table", folder: str | os.PathLike[str] = os.curdir, family: str | None = None
) -> Items:
    """An index table (id, time, footprint WKT/WKB and/or minlon..maxlat, path, location, sensor).

    Args:
        tab: the table.
        source: its name in errors (the file).
        folder: relative paths in ``path`` are relative to this folder (the index file's).
        family: keep only rows whose ``sensor`` is of this family (or names none).
    """
    id_col = _col(tab, ["id"])
    families = _table_family(tab, source, tab.column(id_col).combine_chunks() if id_col else None)
    tab, families = _keep_family(tab, families, family)
    if tab.num_rows == 0 and family is not None:
        raise ValueError(f"{source}: holds no {family.upper()} items (no row's sensor is of family {family})")
    id_col, time_col = _col(tab, ["id"]), _col(tab, ["time", "datetime"])
    if id_col is None:
        raise ValueError(f"{source}: has no 'id' column (columns: {tab.column_names})")
    if time_col is None:
        raise ValueError(f"{source}: has no 'time' column (columns: {tab.column_names})")
    ids = tab.column(id_col).combine_chunks().cast(pa.string())
    t_us = times_to_us(tab.column(time_col), source, ids)
    path_col, loc_col = _col(tab, ["path"]), _col(tab, ["location"])
    path = tab.column(path_col).combine_chunks() if path_col else pa.nulls(tab.num_rows, pa.string())
    loc = tab.column(loc_col).combine_chunks() if loc_col else pa.nulls(tab.num_rows, pa.string())
    geoms, boxes = _table_footprints(tab, source, ids)
    return _build_items(source, ids, t_us, path, loc, geoms, boxes, folder, families)


def _first(metadata: dict[str, Any], keys: Sequence[str]) -> Any:
    return next((metadata[k] for k in keys if k in metadata), None)


def items_from_ssl4eo(folder: Path, source: str | None = None) -> Items:
    """One SSL4EO-S12 product folder: ``<folder>/<location>/<acquisition>/metadata.json``."""
    source = source or str(folder)
    ids, times, geoms, paths, locs = [], [], [], [], []
    for acquisition, location, metadata in metadata_records(Path(folder)):
        where = acquisition / METADATA
        t = _first(metadata, TIME_KEYS)
        if t is None:
            raise ValueError(f"{where}: has no time (system:time_start)")
        parsed = parse_time(t)
        if parsed is None:
            raise ValueError(f"{where}: cannot parse time {t!r}")
        times.append(to_us(parsed))
        try:
            geoms.append(geojson_geometry(_first(metadata, FOOTPRINT_KEYS)))
        except Exception as e:  # noqa: BLE001 (shapely/GeoJSON errors of many kinds)
            raise ValueError(f"{where}: cannot read footprint: {e}") from None
        ids.append(f"{location}/{acquisition.name}")
        paths.append(absolute(acquisition))
        locs.append(location)
    if not ids:
        raise ValueError(f"{source}: holds no <location>/<acquisition>/metadata.json")
    geoms_arr = np.array(geoms, dtype=object)
    family = family_of(Path(folder).name) if Path(folder).name in PRODUCTS else None
    return _build_items(
        source, pa.array(ids), np.array(times, np.int64), pa.array(paths), pa.array(locs), geoms_arr, None,
        family=pa.array([family] * len(ids), pa.string()),
    )


def _stac_box(bbox: Sequence[float] | None) -> list[float]:
    """A STAC bbox (2D or 3D) -> [minlon, minlat, maxlon, maxlat], NaN where absent."""
    if bbox and len(bbox) == 4:
        return [bbox[0], bbox[1], bbox[2], bbox[3]]
    if bbox and len(bbox) == 6:
        return [bbox[0], bbox[1], bbox[3], bbox[4]]
    return [np.nan] * 4


def _stac_family(it: Any) -> str | None:
    """The family named by a STAC item's ``constellation``, ``platform`` or collection id."""
    for value in (it.properties.get("constellation"), it.properties.get("platform"), it.collection_id):
        if value and (family := family_of(value)) is not None:
            return family
    return None


def items_from_stac(items: Iterable[Any], source: str = "STAC", family: str | None = None) -> Items:
    """pystac Items (or dicts): id, datetime (or start_datetime), geometry (or bbox), self href;
    with ``family``, only the items of that family (or of none the item names)."""
    import pystac

    ids, times, geoms, boxes, paths, locs, families = [], [], [], [], [], [], []
    for row, it in enumerate(items):
        if isinstance(it, dict):
            it = pystac.Item.from_dict(it)
        fam = _stac_family(it)
        if family is not None and fam not in (None, family):
            continue
        families.append(fam)
        ids.append(it.id)
        t = it.datetime or it.common_metadata.start_datetime
        if t is None:
            raise ValueError(f"{source}: item {it.id!r} (row {row}) has no datetime or start_datetime")
        times.append(to_us(t))
        try:
            geoms.append(geojson_geometry(it.geometry))
        except Exception as e:  # noqa: BLE001 (shapely/GeoJSON errors of many kinds)
            raise ValueError(f"{source}: item {it.id!r}: cannot read geometry: {e}") from None
        boxes.append(_stac_box(it.bbox))
        paths.append(it.get_self_href())
        loc = it.properties.get("location")
        locs.append(None if loc is None else str(loc))
    if not ids:
        raise ValueError(f"{source}: holds no {family.upper() + ' ' if family else ''}STAC items")
    return _build_items(
        source,
        pa.array(ids, pa.string()),
        np.array(times, np.int64),
        pa.array(paths, pa.string()),
        pa.array(locs, pa.string()),
        np.array(geoms, dtype=object),
        np.array(boxes, float),
        family=pa.array(families, pa.string()),
    )


def _stac_file_items(p: Path) -> list[Any]:
    import pystac

    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read JSON: {e}") from None
    kind = d.get("type")
    if kind == "Feature":
        return [pystac.Item.from_file(str(p))]
    if kind == "FeatureCollection":
        return list(pystac.ItemCollection.from_file(str(p)))
    if kind in ("Catalog", "Collection"):
        return list(pystac.read_file(str(p)).get_items(recursive=True))
    raise ValueError(f"{p}: is not a STAC Item, ItemCollection, Catalog or Collection (type {kind!r})")


def _items_from_folder(p: Path, product: str, source: str, family: str | None) -> Items:
    for catalog in ("catalog.json", "collection.json"):
        if (p / catalog).is_file():
            return items_from_stac(_stac_file_items(p / catalog), source, family)
    if (p / product).is_dir():
        return items_from_ssl4eo(p / product, str(p / product))
    if is_product_folder(p):
        return items_from_ssl4eo(p, source)
    raise ValueError(
        f"{source}: is neither an SSL4EO-S12 folder (no {product}/ nor <location>/<acquisition>/"
        "metadata.json) nor a STAC catalog folder"
    )


def load_items(src: Any, *, product: str | None = None, source: str | None = None,
               family: str | None = None) -> Items:
    """Any supported input -> ``Items``.

    ``src``: a path (SSL4EO-S12 root or product folder, ``.parquet``/``.csv`` index, STAC JSON
    file or folder holding ``catalog.json``/``collection.json``), a ``pyarrow.Table``, pystac
    Items / ItemCollection / Catalog, or an ``Items``. ``product`` picks the product folder when
    ``src`` is an SSL4EO-S12 root (``s2c``, ``s2a`` or ``s1``; default: the first S2 product, ``s2c``).
    ``family`` (``s2``, ``s1``) keeps only the items of that sensor family and those whose family
    the input does not say; none left is a ValueError.
    """
    items = _load_any(src, product, source, family)
    families = items.family.to_pylist()
    if family is not None and not any(f in (None, family) for f in families):
        raise ValueError(f"{items.source}: holds no {family.upper()} items (its items are {sorted(set(families))})")
    return items


def _load_any(src: Any, product: str | None, source: str | None, family: str | None) -> Items:
    if isinstance(src, Items):
        return src
    if isinstance(src, pa.Table):
        return items_from_table(src, source or "table", family=family)
    if not isinstance(src, str | os.PathLike):
        import pystac

        if isinstance(src, pystac.Catalog):
            return items_from_stac(src.get_items(recursive=True), source or f"STAC catalog {src.id}", family)
        return items_from_stac(src, source or "STAC items", family)
    p = Path(src)
    source = source or str(p)
    if not p.exists():
        raise ValueError(f"{source}: does not exist")
    if p.is_dir():
        return _items_from_folder(p, product or product_of("s2"), source, family)
    name = p.name.lower()
    if name.endswith((".json", ".geojson")):
        return items_from_stac(_stac_file_items(p), source, family)
    if name.endswith((*_TABLE_SUFFIXES, ".csv", ".csv.gz", ".tsv")):
        return items_from_table(_read_table(p), source, p.parent, family)
    raise ValueError(f"{source}: unknown input type (expected a folder, .parquet, .csv or STAC .json)")
