"""Outputs of scene inference, each written under a temporary name and renamed when complete.

* :func:`raster_writer`: a georeferenced GeoTIFF (or a Zarr array with the georeference in its
  attributes) written strip by strip;
* :func:`write_tile_table`: one row per tile with its footprint (GeoParquet, WKB polygons in
  lon/lat) for retrieval.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, shape

from s12mae.files import atomic_dir, atomic_path

__all__ = ["RASTER_SUFFIXES", "check_out_path", "raster_writer", "write_tile_table"]

RASTER_SUFFIXES = (".tif", ".tiff", ".zarr")
Writer = Callable[[int, np.ndarray], None]


def check_out_path(out: str, allowed: Sequence[str], overwrite: bool, what: str) -> Path:
    """``out`` as a path whose suffix is one of ``allowed``; an existing one needs ``overwrite``."""
    path = Path(out)
    if path.suffix.lower() not in allowed:
        raise ValueError(f"out: {what} is written as {'/'.join(allowed)}, not {path.name!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (set overwrite to replace it)")
    return path


@contextlib.contextmanager
def raster_writer(path: Path, crs: CRS | None, transform: Affine, height: int, width: int, count: int,
                  dtype: str, nodata: float, descriptions: Sequence[str] | None = None,
                  tags: dict[str, Any] | None = None) -> Iterator[Writer]:
    """Yield ``write(row0, data (count, rows, width))``; the file appears only if the block succeeds.

    ``.tif``/``.tiff``: a GeoTIFF (BigTIFF when needed); ``.zarr``: a Zarr v3 array
    ``(count, height, width)`` whose attributes hold ``crs`` (WKT), ``transform`` (6 floats),
    ``nodata``, ``band_names`` and ``tags``.
    """
    if path.suffix.lower() == ".zarr":
        with _zarr_writer(path, crs, transform, height, width, count, dtype, nodata, descriptions, tags) as w:
            yield w
        return
    with atomic_path(path) as tmp:
        profile = {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": dtype, "crs": crs,
                   "transform": transform, "nodata": nodata, "BIGTIFF": "IF_SAFER"}
        with rasterio.open(tmp, "w", **profile) as ds:
            if descriptions:
                ds.descriptions = tuple(descriptions)
            if tags:
                ds.update_tags(**{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})
            yield lambda row0, data: ds.write(data.astype(dtype, copy=False),
                                              window=Window(0, row0, width, data.shape[1]))


@contextlib.contextmanager
def _zarr_writer(path: Path, crs: CRS | None, transform: Affine, height: int, width: int, count: int,
                 dtype: str, nodata: float, descriptions: Sequence[str] | None,
                 tags: dict[str, Any] | None) -> Iterator[Writer]:
    try:
        import zarr
    except ImportError:
        raise ValueError(f"out: writing {path.name} needs the [zarr] extra (pip install zarr)") from None
    with atomic_dir(path, replace=True) as tmp:
        arr = zarr.create_array(store=str(tmp), shape=(count, height, width), dtype=dtype, fill_value=nodata,
                                chunks=(count, min(256, height), min(256, width)))
        arr.attrs.update({"crs": crs.to_wkt() if crs else None, "transform": list(transform)[:6],
                          "nodata": None if isinstance(nodata, float) and np.isnan(nodata) else nodata,
                          "band_names": list(descriptions or []), "tags": tags or {}})

        def write(row0: int, data: np.ndarray) -> None:
            arr[:, row0 : row0 + data.shape[1], :] = data.astype(dtype, copy=False)

        yield write


def _footprint(crs: CRS | None, transform: Affine, row: int, col: int, height: int, width: int) -> bytes | None:
    """The window's polygon in lon/lat (GeoParquet's default CRS, OGC:CRS84), as WKB."""
    if crs is None:
        return None
    x0, y0 = transform @ (col, row)
    x1, y1 = transform @ (col + width, row + height)
    poly = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    return shape(transform_geom(crs, "EPSG:4326", poly.__geo_interface__)).wkb


def write_tile_table(path: Path, rows: list[dict[str, Any]], crs: CRS | None, transform: Affine,
                     vector_column: str, vector_width: int, metadata: dict[str, Any]) -> None:
    """Write one row per tile: ``tile``, window (``row``, ``col``, ``height``, ``width`` in scene
    pixels), ``footprint`` (WKB, lon/lat), ``valid_fraction`` and ``vector_column`` (a fixed-size
    float32 list, null for tiles without valid pixels), as GeoParquet, atomically.

    Args:
        rows: dicts with ``row``, ``col``, ``height``, ``width``, ``valid_fraction`` and ``vector_column``
            (``None`` or a float sequence).
        metadata: stored as JSON under the schema key ``s12mae``.
    """
    footprints = [_footprint(crs, transform, r["row"], r["col"], r["height"], r["width"]) for r in rows]
    vectors = [None if r[vector_column] is None else np.asarray(r[vector_column], np.float32) for r in rows]
    table = pa.table({
        "tile": pa.array(range(len(rows)), pa.int32()),
        **{k: pa.array([r[k] for r in rows], pa.int32()) for k in ("row", "col", "height", "width")},
        "footprint": pa.array(footprints, pa.binary()),
        "valid_fraction": pa.array([r["valid_fraction"] for r in rows], pa.float32()),
        vector_column: pa.array(vectors, pa.list_(pa.float32(), vector_width)),
    })
    geo = {"version": "1.1.0", "primary_column": "footprint",
           "columns": {"footprint": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    meta = {b"geo": json.dumps(geo).encode(), b"s12mae": json.dumps(metadata).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
