"""A whole scene read window by window, through the readers' rules.

:func:`open_scene` finds the scene the way the readers do: a GeoTIFF stack of one sensor (band
descriptions, when they are band names, are checked and used to reorder), or one item of a reader
layout (``layout="bigearthnet-v1"`` ... for per-band files). The scene grid is the reader's
reference grid (its finest file, at 10 m where projected). :meth:`Scene.read` then reads any
window of it, so memory stays bounded by a batch of tiles however big the scene is: bands on
another grid are warped on the fly (bilinear, as the readers do), nodata (the file's, the sensor's,
non-finite values) becomes NaN, and Sentinel-2's processing-baseline-04.00 offset is removed per
band by :func:`s12mae.readers.baseline_offset`, with the readers' inputs (tags, sidecar, time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from s12mae.export.encoder_file import SensorInfo, check_inputs
from s12mae.readers import (
    BandRef,
    Grid,
    Item,
    RasterReader,
    SensorLayer,
    baseline_offset,
    canonical_band,
)
from s12mae.readers.base import read_json, time_from_tags
from s12mae.sensors import get_sensor

__all__ = ["Scene", "open_scene"]


class _OneItem(RasterReader):
    """A reader over one ready-made item (a bare GeoTIFF stack)."""

    source = "scene"

    def __init__(self, item: Item) -> None:
        self._item = item
        super().__init__()

    def _discover(self) -> list[Item]:
        return [self._item]


@dataclass
class _Band:
    """One channel: where it lives and how its values become units."""

    path: Path
    index: int
    nodata: float | None  # the file's nodata value (None: none declared)
    offset_dn: float  # baseline-04.00 DN offset removed before scaling


class Scene:
    """An open scene of one sensor on the reader's grid; use as a context manager.

    Attributes:
        id: the scene (item) id.
        grid: CRS, transform and size of the scene.
        sensor: what the encoder expects (bands, units, statistics, DN scaling).
        offsets: per-band DN offset removed, and the rule that decided it.
    """

    def __init__(self, scene_id: str, grid: Grid, sensor: SensorInfo, bands: list[_Band], rule: str) -> None:
        self.id, self.grid, self.sensor, self.bands = scene_id, grid, sensor, bands
        self.offsets = {"dn": [b.offset_dn for b in bands], "rule": rule}
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            for h in handle:
                h.close()
        self._handles.clear()

    def _source(self, path: Path) -> Any:
        """The dataset (or a warped view onto the scene grid) of ``path``, opened once."""
        if path not in self._handles:
            ds = rasterio.open(path)
            handles = [ds]
            if not Grid.of(ds).same_as(self.grid):
                nodata = ds.nodata if ds.nodata is not None else (np.nan if ds.dtypes[0].startswith("float") else None)
                handles.append(WarpedVRT(ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                                         height=self.grid.height, resampling=Resampling.bilinear, src_nodata=nodata,
                                         nodata=nodata, dtype="float32"))
            self._handles[path] = handles
        return self._handles[path][-1]

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Window ``(row, col, height, width)`` in physical units, ``(C, height, width)`` float32.

        Pixels outside the scene or without data are NaN.
        """
        g = self.grid
        out = np.full((len(self.bands), height, width), np.nan, dtype=np.float32)
        r0, c0, r1, c1 = max(row, 0), max(col, 0), min(row + height, g.height), min(col + width, g.width)
        if r1 <= r0 or c1 <= c0:
            return out
        window = Window(c0, r0, c1 - c0, r1 - r0)
        s = self.sensor
        by_file: dict[Path, list[int]] = {}
        for i, band in enumerate(self.bands):
            by_file.setdefault(band.path, []).append(i)
        for path, positions in by_file.items():  # one read per file
            indexes = [self.bands[i].index for i in positions]
            try:
                raw = self._source(path).read(indexes, window=window)  # (len(positions), h, w)
            except RasterioError as err:
                raise ValueError(f"{path}: cannot read band(s) {indexes} ({err})") from None
            for j, i in enumerate(positions):
                band = self.bands[i]
                x = raw[j].astype(np.float32)
                bad = ~np.isfinite(x)
                if band.nodata is not None and not math.isnan(band.nodata):
                    bad |= raw[j] == band.nodata
                if not math.isnan(s.nodata):
                    bad |= raw[j] == s.nodata
                x = (x - band.offset_dn) * s.dn_scale + s.dn_offset
                x[bad] = np.nan
                out[i, r0 - row : r1 - row, c0 - col : c1 - col] = x
        return out

    def read_standardised(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Window as model input: standardised ``(C, h, w)`` with nodata 0 (the band mean, as in
        training and evaluation), and ``(C, h, w)`` True where a band has data."""
        x = self.sensor.standardise(torch.from_numpy(self.read(row, col, height, width))).numpy()
        finite = np.isfinite(x)
        return np.where(finite, x, 0.0).astype(np.float32), finite


def _stack_bands(ds: rasterio.io.DatasetReader, path: Path, sensor: SensorInfo) -> list[int]:
    """1-based file band of each encoder band; descriptions that are band names must be the encoder's."""
    if ds.count != len(sensor.bands):
        raise ValueError(f"{path}: has {ds.count} band(s), but the {sensor.key} encoder expects "
                         f"{len(sensor.bands)}: {list(sensor.bands)}")
    desc = [canonical_band(d) for d in ds.descriptions if d]
    if len(desc) != ds.count or not set(desc) & set(sensor.bands):
        return list(range(1, ds.count + 1))  # no band names in the file: spec order assumed
    if sorted(desc) != sorted(sensor.bands):
        check_inputs(sensor, list(ds.descriptions), where=str(path))  # raises, naming both lists
    return [desc.index(b) + 1 for b in sensor.bands]


def _find_item(scene: Path, sensor: SensorInfo, layout: str | None, item_id: str | None) -> tuple[RasterReader, Item]:
    if layout is None:
        if not scene.is_file():
            raise ValueError(f"{scene}: scene file not found (give a GeoTIFF stack, or a dataset folder with --layout)")
        with _open(scene) as ds:
            refs = [BandRef(scene, i, b) for i, b in zip(_stack_bands(ds, scene, sensor), sensor.bands)]
        one = _OneItem(Item(scene.stem, [SensorLayer(sensor.key, refs)]))
        return one, one.items()[0]
    from s12mae.layouts import open_layout

    reader = open_layout(layout, scene, sensors=[sensor.key])
    if not isinstance(reader, RasterReader):
        raise ValueError(  # noqa: TRY004  (a bad option value, reported like every other one)
            f"layout {layout!r} has no scene files to read window by window; use a reader layout")
    items = reader.items()
    if item_id is not None:
        items = [it for it in items if it.id == item_id or it.id.split("/")[-1] == item_id]
        if not items:
            ids = [it.id for it in reader.items()][:5]
            raise ValueError(f"{scene}: no item {item_id!r} in layout {layout} (ids like {ids})")
    if len(items) != 1:
        raise ValueError(f"{scene}: layout {layout} holds {len(items)} items; choose one with --item "
                         f"(ids like {[it.id for it in items[:5]]})")
    return reader, items[0]


def open_scene(scene: str | Path, sensor: SensorInfo, layout: str | None = None, item: str | None = None,
               s2_offset: int | None = None) -> Scene:
    """Open a scene for window reads in the encoder's band order.

    Args:
        scene: a GeoTIFF stack of ``sensor`` (all bands, spec order or named by descriptions), or a
            dataset folder / index read with ``layout``.
        sensor: the encoder's sensor (bands, units, nodata, DN scaling).
        layout: a reader layout (``sen1floods11``, ``bigearthnet-v1``, ``generic`` ...), for
            per-band files and layout metadata.
        item: the item id within ``layout`` (needed when it holds several).
        s2_offset: DN removed from every S2 band regardless of metadata; ``None``: by metadata.

    Raises:
        ValueError: missing or unreadable files, a band count or band names that do not match the
            encoder's, a scene smaller than nothing; the message names the file.
    """
    scene = Path(scene)
    reader, it = _find_item(scene, sensor, layout, item)
    layer = next((la for la in it.layers if la.sensor == sensor.key), None)
    if layer is None:
        raise ValueError(f"{scene}: item {it.id} has no {sensor.key} files; it has {[la.sensor for la in it.layers]}")
    if layout is not None:
        check_inputs(sensor, [canonical_band(b.name) for b in layer.bands], where=str(scene))
    grid = reader.reference_grid(it)  # the readers' rule: finest file, at 10 m where projected
    bands, rule = _bands_with_offsets(layer, sensor, s2_offset)
    return Scene(it.id, grid, sensor, bands, rule)


def _open(path: Path) -> rasterio.io.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as err:
        raise ValueError(f"{path}: not a readable GeoTIFF ({err})") from None


def _bands_with_offsets(layer: SensorLayer, sensor: SensorInfo, s2_offset: int | None) -> tuple[list[_Band], str]:
    """Per-band file, nodata and baseline-04.00 DN offset (the readers' rule and inputs)."""
    metadata = {**(read_json(layer.sidecar) if layer.sidecar else {}), **layer.metadata}
    refs = layer.bands
    if len({r.path for r in refs}) == 1 and len(refs) > 1:  # a stack: its band names decide the order
        with _open(refs[0].path) as ds:
            refs = [BandRef(refs[0].path, i, b) for i, b in zip(_stack_bands(ds, refs[0].path, sensor), sensor.bands)]
    out, tags = [], []
    for ref in refs:
        with _open(ref.path) as ds:
            if ref.index > ds.count:
                raise ValueError(f"{ref.path}: has {ds.count} band(s), no band {ref.index}")
            tags.append({**metadata, **ds.tags(), **ds.tags(ref.index)})
            out.append(_Band(ref.path, ref.index, ds.nodatavals[ref.index - 1], 0.0))
    if not get_sensor(sensor.key).baseline_offset:
        return out, "none"
    every = {k: v for t in tags for k, v in t.items()}
    time = layer.time or time_from_tags(every)
    rule = "override"
    for band, t, name in zip(out, tags, sensor.bands):
        if s2_offset is not None:
            band.offset_dn = float(s2_offset)
        else:
            dn, rule = baseline_offset(t, name, time)
            band.offset_dn = float(dn)
    return out, rule
