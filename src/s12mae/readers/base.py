"""The shared machinery of the real-data readers: one base class, layouts are thin subclasses.

A layout subclass only *finds* samples: it turns folders, file names and metadata into
:class:`Item` records (which file holds which canonical band of which sensor, acquisition times,
labels). :class:`RasterReader` does everything else, identically for every layout: opening files
with clear errors, band-count and dtype checks, mapping layout band names (``B1``, ``B8A``) to
canonical ones (``B01``, ``B8A``), resampling every band to the 10 m grid of the sample's reference
sensor (bilinear for reflectance and dB, nearest for labels) with :func:`rasterio.warp.reproject`,
removing the +1000 DN offset of Sentinel-2 processing baseline 04.00, and building valid masks.

Sample format (plain numpy): ``{"id": str, <sensor>: (C, H, W), "valid.<sensor>": (C, H, W) bool,
"label.<name>": ..., "meta": {...}}``; S2 stays int16 DN (reflectance x 10000, 0 = nodata), S1 and
DEM float32 (NaN = nodata). See :meth:`RasterReader.load`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from s12mae.paths import absolute, is_url
from s12mae.readers.baseline import (
    BASELINE_04_DATE,
    BASELINE_OFFSET_DN,
    OFFSET_FLOOR_DN,
    OffsetSuspectedWarning,
    baseline_offset,
    canonical_band,
    is_band_name,
    offset_evidence,
    time_from_tags,
)
from s12mae.readers.grid import Grid
from s12mae.readers.warp import warp as _warp
from s12mae.readers.windows import covering_window, window_grid
from s12mae.sensors import SensorSpec, get_sensor, list_sensors
from s12mae.times import iso_utc, parse_time

__all__ = [
    "BASELINE_04_DATE",
    "OFFSET_FLOOR_DN",
    "BandRef",
    "Grid",
    "Item",
    "LabelLayer",
    "OffsetSuspectedWarning",
    "RasterReader",
    "SensorLayer",
    "baseline_offset",
    "canonical_band",
    "iso_utc",
    "offset_evidence",
    "parse_time",
    "read_json",
]

log = logging.getLogger(__name__)

_INT16_MAX = np.iinfo(np.int16).max
S2Offset = int | Literal["auto"] | None
"""A reader's ``s2_offset`` option (see :class:`RasterReader`)."""


@dataclass(frozen=True)
class BandRef:
    """One band of one file: ``index`` is 1-based, ``name`` the layout's name for it (``B1``);
    ``path`` is a local path or a URL string (``s3://``, ``https://``)."""

    path: Path
    index: int = 1
    name: str = ""


@dataclass
class SensorLayer:
    """Where one sensor's channels live, in the sensor spec's band order."""

    sensor: str
    bands: list[BandRef]
    time: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sidecar: Path | None = None  # JSON metadata read at load time (merged under ``metadata``)

    @classmethod
    def stack(
        cls, sensor: str, path: Path, time: datetime | None = None, metadata: Mapping[str, Any] | None = None
    ) -> SensorLayer:
        """All channels in one file, in spec order (band descriptions, when they are band names,
        are checked and used to reorder)."""
        names = get_sensor(sensor).band_names
        return cls(sensor, [BandRef(_location(path), i + 1, n) for i, n in enumerate(names)], time, metadata or {})

    @classmethod
    def per_band(
        cls,
        sensor: str,
        files: Mapping[str, Path],
        time: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        where: str = "",
    ) -> SensorLayer:
        """One single-band file per channel; ``files`` maps layout band names to paths (extra files
        that are no band of ``sensor`` are ignored; a missing band is a ValueError)."""
        by_name = {canonical_band(k): (k, _location(p)) for k, p in files.items()}
        names = get_sensor(sensor).band_names
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(
                f"{where or 'layout'}: no file for band(s) {missing} of {sensor} (found {sorted(by_name)})"
            )
        return cls(sensor, [BandRef(by_name[n][1], 1, by_name[n][0]) for n in names], time, metadata or {})

    @property
    def files(self) -> list[Path]:
        return list(dict.fromkeys(b.path for b in self.bands))


@dataclass(frozen=True)
class LabelLayer:
    """A per-pixel label file (band 1), resampled with nearest; ``fill`` marks ignore/outside."""

    key: str
    path: Path
    dtype: str
    fill: int


@dataclass
class Item:
    """One sample as found on disk. The first layer (or label, if none) defines the grid, unless
    ``region`` gives it: then only the window of each file that covers ``region`` is read
    (:mod:`s12mae.readers.windows`; one chip of a bigger scene)."""

    id: str
    layers: list[SensorLayer] = field(default_factory=list)
    labels: list[LabelLayer] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    region: Grid | None = None

    @property
    def keys(self) -> list[str]:
        return [layer.sensor for layer in self.layers] + [lab.key for lab in self.labels] + list(self.arrays)


def _location(p: str | Path) -> Any:
    """A band file: a local :class:`Path`, or a URL kept as its string (``Path`` would fold ``//``)."""
    return str(p) if is_url(p) else Path(p)


def _remote(item: Item) -> str | None:
    """The first URL among the item's files (the location whose GDAL environment the load uses)."""
    files = [b.path for layer in item.layers for b in layer.bands] + [lab.path for lab in item.labels]
    return next((str(f) for f in files if is_url(f)), None)


def read_json(path: Path) -> Any:
    """A JSON file, or a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _open(path: Path) -> rasterio.io.DatasetReader:
    if is_url(path):  # a COG on object storage or a web server, read by byte ranges (s12mae.storage)
        from s12mae import storage

        return storage.open_dataset(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return rasterio.open(path)
    except RasterioError as err:
        raise ValueError(f"{path}: not a readable GeoTIFF ({err})") from None


def _read_band(ds: rasterio.io.DatasetReader, path: Path, index: int, window: Window | None = None) -> np.ndarray:
    try:
        return ds.read(index, window=window)
    except RasterioError as err:
        detail = f"{err}; {err.__cause__}" if err.__cause__ else str(err)
        if is_url(path):
            from s12mae import storage

            raise storage.raster_error(path, RasterioError(detail), f"band {index}: ") from None
        raise ValueError(
            f"{path}: cannot read band {index}; the file is corrupt or truncated ({detail})"
        ) from None


def _stack_order(ds: rasterio.io.DatasetReader, path: Path, spec: SensorSpec) -> dict[str, int] | None:
    """Band name -> index from the file's band descriptions, if they are band names."""
    desc = [d for d in ds.descriptions if d]
    if len(desc) != ds.count:
        return None
    names = [canonical_band(d) for d in desc]
    if not all(is_band_name(n) or n in spec.band_names for n in names):
        return None  # descriptions are not band names (TerraMesh writes "bands")
    if sorted(names) != sorted(spec.band_names):
        raise ValueError(f"{path}: its bands are {desc}, but {spec.key} needs {spec.band_names}")
    return {n: i + 1 for i, n in enumerate(names)}


class RasterReader:
    """Base of all layout readers: a sequence of sample dicts read from GeoTIFFs.

    Subclasses implement :meth:`_discover` (the layout) and set :attr:`source`; everything else is
    shared. Iterating yields :meth:`load` of every item; indexing loads one.

    Args:
        sensors: keys to load: sensor keys such as ``s2_l1c``, and label keys such as
            ``label.landcover`` (if no label key is named, all labels are kept); ``None`` loads
            everything the layout has.
        skip_bad: when iterating, a sample whose files are bad (corrupt, wrong band count, wrong
            dtype, cannot be warped, missing) is skipped, logged, and recorded in :attr:`skipped` as
            ``(id, reason)`` instead of raising. Indexing a bad sample always raises.
        s2_offset: DN to subtract from every S2 band regardless of metadata (e.g. 1000 for a
            collection known to be offset, 0 to keep file values); ``None`` decides per band by
            :func:`baseline_offset`, and where nothing decides (no offset tag, baseline or time)
            checks the data (:func:`offset_evidence`): a layer that looks offset is kept as it is,
            with an :class:`OffsetSuspectedWarning` and the evidence in ``meta["offset_suspected"]``;
            ``"auto"`` does the same but removes 1000 DN from such a layer (rule ``"suspected"``).

    Attributes:
        skipped: ``(id, reason)`` of the samples skipped during discovery or the last iteration.
    """

    source: ClassVar[str] = "raster"
    gsd_m: ClassVar[float] = 10.0
    train_split: ClassVar[str | None] = None
    """The training split's name in layouts that have splits (their constructor takes ``split``)."""

    def __init__(
        self, *, sensors: Sequence[str] | None = None, skip_bad: bool = False, s2_offset: S2Offset = None
    ) -> None:
        if isinstance(s2_offset, str) and s2_offset != "auto":
            raise ValueError(f"{self.source}: s2_offset must be a number of DN, None or 'auto', not {s2_offset!r}")
        known = set(list_sensors())
        if sensors is not None:
            unknown = [k for k in sensors if k not in known and not k.startswith("label.")]
            if unknown:
                raise ValueError(f"{self.source}: unknown sensor key(s) {unknown}; known: {sorted(known)}")
        self.sensors = None if sensors is None else tuple(sensors)
        self.skip_bad = skip_bad
        self.s2_offset = s2_offset
        self.skipped: list[tuple[str, str]] = []
        self._items = self._select(self._discover())
        self._discovery_skips = list(self.skipped)

    # -- what subclasses provide -------------------------------------------------------------
    def _discover(self) -> list[Item]:
        """The samples of this layout, in a stable order."""
        raise NotImplementedError

    # -- sequence protocol ---------------------------------------------------------------------
    def items(self) -> list[Item]:
        """What the reader found: one :class:`Item` per sample (files, times, labels)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.load(self._items[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = list(self._discovery_skips)
        for item in self._items:
            try:
                sample = self.load(item)
            except ValueError as err:
                if not self.skip_bad:
                    raise
                self._skip(item.id, str(err))
                continue
            yield sample

    def _bad(self, sample_id: str, err: ValueError) -> None:
        """A bad sample found during discovery: raise, or record it under ``skip_bad``."""
        if not self.skip_bad:
            raise err
        self._skip(sample_id, str(err))

    def _skip(self, sample_id: str, reason: str) -> None:
        self.skipped.append((sample_id, reason))
        log.warning("%s: skipping %s: %s", self.source, sample_id, reason)

    def _select(self, items: list[Item]) -> list[Item]:
        if self.sensors is None:
            return items
        present = {k for it in items for k in it.keys}
        absent = [k for k in self.sensors if k not in present]
        if absent:
            raise ValueError(f"{self.source}: requested {absent} but found only {sorted(present)}")
        keep = set(self.sensors)
        any_label = any(k.startswith("label.") for k in keep)  # no label key named: keep all labels
        out = []
        for it in items:
            it.layers = [layer for layer in it.layers if layer.sensor in keep]
            it.labels = [lab for lab in it.labels if lab.key in keep or not any_label]
            it.arrays = {k: v for k, v in it.arrays.items() if k in keep or not any_label}
            if it.layers or any(lab.key in keep for lab in it.labels):
                out.append(it)
        return out

    # -- loading --------------------------------------------------------------------------------
    def load(self, item: Item) -> dict[str, Any]:
        """Read one item into a sample dict.

        Returns:
            ``{"id", <sensor>: (C, H, W), "valid.<sensor>": (C, H, W) bool, label keys, "meta"}``
            where ``meta`` holds ``source``, ``crs``, ``transform`` (6 floats), ``bounds``,
            ``footprint_wgs84``, ``times``, ``files``, ``bands``, ``dn_offset`` (per S2 sensor:
            ``{"dn": per-band DN removed, "rule": ..., "check": ...}``, ``check`` where the data
            was checked for the offset, see ``s2_offset``) and ``offset_suspected`` (per S2
            sensor that looks offset: the evidence of :func:`offset_evidence` and ``applied``).

        Raises:
            ValueError: a file is missing, unreadable, truncated, has the wrong band count or
                dtype, or cannot be warped onto the sample grid; the message names the file.
                Band files may be URLs (``s3://``, ``gs://``, ``https://`` COGs): they are read
                through :func:`s12mae.storage.rasterio_env` (credentials, retries with backoff),
                and a missing, refused or throttled one is a :class:`s12mae.storage.StorageError`.
        """
        remote = _remote(item)
        if remote is None:
            return self._load(item)
        from s12mae import storage

        with storage.rasterio_env(remote):
            return self._load(item)

    def _load(self, item: Item) -> dict[str, Any]:
        grid = self.reference_grid(item)
        meta: dict[str, Any] = {
            "source": self.source,
            "crs": grid.crs.to_string() if grid.crs is not None else None,
            "transform": [float(v) for v in tuple(grid.transform)[:6]],
            "bounds": list(grid.bounds),
            "footprint_wgs84": grid.footprint_wgs84(),
            "times": {},
            "files": {},
            "bands": {},
            "dn_offset": {},
            "offset_suspected": {},
        }
        sample: dict[str, Any] = {"id": item.id}
        for layer in item.layers:
            spec = get_sensor(layer.sensor)
            data, valid, time, offset = self._read_layer(layer, spec, grid, item.region is not None)
            sample[layer.sensor], sample[f"valid.{layer.sensor}"] = data, valid
            meta["times"][layer.sensor] = iso_utc(time)
            meta["files"][layer.sensor] = [str(p) for p in layer.files]
            meta["bands"][layer.sensor] = spec.band_names
            if offset is not None:
                meta["dn_offset"][layer.sensor] = offset
                if offset.get("check", {}).get("suspected"):
                    meta["offset_suspected"][layer.sensor] = offset["check"]
        for lab in item.labels:
            sample[lab.key] = self._read_label(lab, grid, item.region is not None)
            meta["files"][lab.key] = [str(lab.path)]
        sample.update(item.arrays)
        meta.update(item.meta)
        sample["meta"] = meta
        return sample

    def reference_grid(self, item: Item) -> Grid:
        """The item's ``region`` if it has one, else the grid of the finest file of the item's first
        layer, at ``gsd_m`` where projected."""
        if item.region is not None:
            return item.region
        if item.layers:
            paths = item.layers[0].files
        elif item.labels:
            paths = [item.labels[0].path]
        else:
            raise ValueError(f"{self.source}: sample {item.id} has nothing to read")
        grids = []
        for path in paths:
            with _open(path) as ds:
                grids.append(self.file_grid(ds, path))
        return min(grids, key=lambda g: g.pixel_area).at_gsd(self.gsd_m)

    def file_grid(self, ds: rasterio.io.DatasetReader, path: Path) -> Grid:
        """The grid of one open file. Layouts whose files may lack georeferencing but have a
        fixed geometry (BigEarthNet) override this to place such files in a local frame."""
        return Grid.of(ds)

    def _read_layer(
        self, layer: SensorLayer, spec: SensorSpec, grid: Grid, windowed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, datetime | None, dict[str, Any] | None]:
        """One sensor on ``grid``: (data in file units, valid mask, time, offset record); ``windowed``
        reads only the part of each file that covers ``grid`` (a file that misses it stays NaN)."""
        out = np.full((spec.num_channels, grid.height, grid.width), np.nan, dtype=np.float32)
        band_tags: list[dict[str, Any]] = [{} for _ in spec.band_names]
        metadata = {**(read_json(layer.sidecar) if layer.sidecar else {}), **layer.metadata}
        positions: dict[Path, list[int]] = {}
        for pos, ref in enumerate(layer.bands):
            positions.setdefault(ref.path, []).append(pos)
        resampling = Resampling.bilinear
        batched: dict[Grid, tuple[Path, list[int], list[np.ndarray]]] = {}  # windowed: one warp per source grid
        for path, poss in positions.items():
            with _open(path) as ds:
                self._check_file(ds, path, spec, len(poss))
                order = _stack_order(ds, path, spec) if len(poss) > 1 else None
                src, window = self._source(ds, path, grid, windowed)
                for pos in poss:
                    index = order[spec.band_names[pos]] if order else layer.bands[pos].index
                    band_tags[pos] = {**metadata, **ds.tags(), **ds.tags(index)}
                    if src is None:
                        continue
                    raw = _read_band(ds, path, index, window)
                    x = raw.astype(np.float32)
                    bad = ~np.isfinite(x)
                    file_nodata = ds.nodatavals[index - 1]
                    if file_nodata is not None and not math.isnan(file_nodata):
                        bad |= raw == file_nodata
                    if not math.isnan(spec.nodata):
                        bad |= raw == spec.nodata
                    x[bad] = np.nan
                    if windowed:  # rasterio's fixed cost per warp call dwarfs a chip's pixels
                        batched.setdefault(src, (path, [], []))[1].append(pos)
                        batched[src][2].append(x)
                    else:
                        out[pos] = _warp(x, src, grid, resampling, path)
        for src, (path, poss, xs) in batched.items():
            out[poss] = _warp(np.stack(xs), src, grid, resampling, path)
        all_tags = {k: v for tags in band_tags for k, v in tags.items()}
        time = layer.time or time_from_tags(all_tags)
        valid = np.isfinite(out)
        offset = self._remove_offset(out, layer, spec, band_tags, time) if spec.baseline_offset else None
        if math.isnan(spec.nodata):
            return out, valid, time, offset
        # Integer DN sensors: round, keep valid pixels off the nodata value (dark pixels of
        # offset products can go below 0 reflectance: clipped to 1 DN), saturate at int16.
        data = np.where(valid, np.clip(np.rint(out), 1, _INT16_MAX), spec.nodata)
        return data.astype(spec.file_dtype), valid, time, offset

    def _remove_offset(
        self, out: np.ndarray, layer: SensorLayer, spec: SensorSpec, band_tags: list[dict[str, Any]],
        time: datetime | None,
    ) -> dict[str, Any]:
        """Subtract the baseline-04.00 offset from ``out`` (``(C, H, W)`` DN, in place); the record
        ``{"dn": per band, "rule", "check"?}`` (``check``: :func:`offset_evidence`, where it ran)."""
        if isinstance(self.s2_offset, int):
            decided = [(self.s2_offset, "override")] * spec.num_channels
        else:
            decided = [baseline_offset(band_tags[i], n, time) for i, n in enumerate(spec.band_names)]
        record: dict[str, Any] = {}
        if all(rule == "unknown" for _, rule in decided):
            check = record["check"] = offset_evidence(out, spec.band_names)
            if check["suspected"]:
                check["applied"] = self.s2_offset == "auto"
                if check["applied"]:
                    decided = [(BASELINE_OFFSET_DN, "suspected")] * spec.num_channels
                files = ", ".join(str(p) for p in layer.files)
                warnings.warn(
                    f"{files}: {spec.key} looks offset by +{BASELINE_OFFSET_DN} DN (processing baseline "
                    f">= 04.00): its darkest band {check['band']} has a {check['percentile']:g}st percentile "
                    f"of {check['floor_dn']:g} DN (>= {check['threshold_dn']:g}), and no metadata or date "
                    "decides; "
                    + ("removed it (s2_offset='auto')" if check["applied"] else
                       "kept the values as they are (s2_offset='auto' or 1000 removes it, 0 keeps it quietly)"),
                    OffsetSuspectedWarning,
                    stacklevel=2,
                )
        dn = np.array([d for d, _ in decided], dtype=np.float32)
        out -= dn[:, None, None]
        return {"dn": [int(d) for d in dn], "rule": decided[0][1], **record}

    def _check_file(self, ds: rasterio.io.DatasetReader, path: Path, spec: SensorSpec, bands: int) -> None:
        if ds.count != bands:
            raise ValueError(
                f"{path}: has {ds.count} band(s), but {spec.key} expects {bands} here "
                f"({spec.num_channels} in all: {spec.band_names})"
            )
        kind = np.dtype(ds.dtypes[0]).kind
        if np.dtype(spec.file_dtype).kind in "iu" and kind not in "iu":
            raise ValueError(
                f"{path}: holds {ds.dtypes[0]}, but {spec.key} files hold integer DN "
                f"({spec.units} x {round(1 / spec.dn_scale)})"
            )
        if spec.units == "dB" and kind != "f":
            raise ValueError(
                f"{path}: holds {ds.dtypes[0]}, but {spec.key} is float dB; integer dB "
                "files have lost their fractional part"
            )

    def _source(self, ds: rasterio.io.DatasetReader, path: Path, grid: Grid,
                windowed: bool) -> tuple[Grid | None, Window | None]:
        """(grid of what to read, window): the whole file, or under ``windowed`` the window that
        covers ``grid`` (``(None, None)`` where the file does not reach it)."""
        src = self.file_grid(ds, path)
        if not windowed:
            return src, None
        window = covering_window(src, grid)
        return (None, None) if window is None else (window_grid(src, window), window)

    def _read_label(self, lab: LabelLayer, grid: Grid, windowed: bool = False) -> np.ndarray:
        with _open(lab.path) as ds:
            if ds.count != 1 or np.dtype(ds.dtypes[0]).kind not in "iu":
                raise ValueError(
                    f"{lab.path}: a label file must have 1 integer band, it has {ds.count} of {ds.dtypes[0]}"
                )
            src, window = self._source(ds, lab.path, grid, windowed)
            if src is None:
                return np.full((grid.height, grid.width), lab.fill, dtype=lab.dtype)
            raw = _read_band(ds, lab.path, 1, window)
            x = raw.astype(np.float32)
            x[raw == lab.fill] = np.nan
            x = _warp(x, src, grid, Resampling.nearest, lab.path)
        return np.where(np.isfinite(x), x, lab.fill).astype(lab.dtype)


class FolderReader(RasterReader):
    """A reader of one dataset folder or index file ``root`` (the layouts' shared constructor).

    ``root`` is kept in its absolute form (:func:`s12mae.paths.absolute`), so the file paths a
    sample's ``meta["files"]`` records (and shard sets store) do not depend on the working directory.

    Args:
        root: the dataset folder (an index file for :class:`~s12mae.readers.GenericReader`).
        sensors: sensor (and ``label.*``) keys to load; ``None`` loads every one present.
        skip_bad, s2_offset: see :class:`RasterReader`.
    """

    def __init__(
        self,
        root: str | Path,
        sensors: Sequence[str] | None = None,
        *,
        skip_bad: bool = False,
        s2_offset: S2Offset = None,
    ) -> None:
        self.root = Path(absolute(root))
        super().__init__(sensors=sensors, skip_bad=skip_bad, s2_offset=s2_offset)
