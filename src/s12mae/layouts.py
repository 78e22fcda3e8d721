"""Dataset layouts by name: one call from a folder or index on disk to reader-format samples.

:func:`open_layout` turns ``(layout, data)`` into a lazy :class:`~collections.abc.Sequence` of
sample dicts in the reader format (``{"id", <sensor>: (C, H, W) file units, "valid.<sensor>",
"label.*", "meta"}``, see :mod:`s12mae.readers.base`): ``len`` is known up front and indexing
loads one sample, so :func:`s12mae.shards.write_shards` can resume, ``s12mae stats`` can stream.
Adding a layout is one entry in :data:`LAYOUTS`.

Layouts:

- ``simulated``: a folder written by ``s12mae simulate``.
- ``terramesh``, ``sen1floods11``, ``bigearthnet-v1``, ``bigearthnet-v2``: the folder layouts of
  :mod:`s12mae.readers`; ``generic``: a CSV/parquet index of GeoTIFF stacks (:class:`GenericReader`).
- ``pairs``: a folder written by ``s12mae pair`` (``pairs.parquet``): one sample per row, the S2
  item with its S1 partner warped onto the S2 grid, ``meta["gap_hours"]`` (S1 minus S2) from the
  parquet. Rows over an SSL4EO-S12 root (``s2_path``/``s1_path`` are acquisition folders
  ``<root>/<s2c|s2a|s1>/<location>/<acquisition>``) load with :meth:`SSL4EOReader.load_pair`;
  rows over an index of GeoTIFF stacks load as :class:`GenericReader` does (S2 grid, S1 warped).
- ``s2-all``: the same folder, S2 only: every S2 item of ``pairs.parquet`` and of
  ``s2_only.parquet`` (the MAE task's dataset under alternating gradient descent).

Rows written by ``s12mae pair --stac`` carry the items' COG hrefs (``s2_assets``/``s1_assets``,
``s3://`` or ``https://``): their bands are read from those hrefs by byte ranges
(:func:`s12mae.storage.rasterio_env`: credentials, retries with backoff), the S2 sensor is the
one of the item's collection (``sentinel-2-l2a`` -> ``s2_l2a``) unless ``sensors`` names one, and
the S2 DN offset is the one decided from the item's properties (``s2_dn_offset``; recorded in
``meta["dn_offset"]`` with rule ``override`` and in ``meta["stac"]`` with the item's rule and
processing baseline). Opened with ``chip_size`` (``s12mae shards --crop grid`` does that), such
a row gives one sample per grid chip, each read by a windowed read of only that chip
(:class:`PairFolder`). A pairs folder may be a URL (``s3://``, ``gs://``, ``https://``).

Paths in ``pairs``/``s2-all`` folders follow :mod:`s12mae.paths`: ``s12mae pair`` writes them
absolute, and a relative one (a hand-made table) is relative to the folder itself, never to the
working directory. The S2 sensor of a row is its SSL4EO product (``s2c`` -> ``s2_l1c``, ``s2a`` ->
``s2_l2a``, where both exist for the acquisition ``sensors`` may ask for either or both); for
GeoTIFF stacks it is the S2 key in ``sensors`` (default: the first S2 sensor of ``sensors.yaml``,
``s2_l1c``), likewise the S1 key (default ``s1_grd``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from s12mae import storage
from s12mae.paths import is_url, resolve
from s12mae.readers import (
    BigEarthNetV1Reader,
    BigEarthNetV2Reader,
    GenericReader,
    Grid,
    Item,
    RasterReader,
    Sen1Floods11Reader,
    SensorLayer,
    TerraMeshReader,
)
from s12mae.readers.ssl4eo import (
    FOLDER_PATTERN,
    ListedSSL4EOReader,
    is_acquisition_folder,
    s2_product_folders,
    sensor_of,
)
from s12mae.readers.windows import grid_from_json, scene_chips
from s12mae.sensors import get_sensor, list_sensors, sensors_of_family
from s12mae.stac import COLLECTION_SENSORS
from s12mae.times import parse_time

__all__ = ["LAYOUTS", "PairFolder", "open_layout", "train_split"]

log = logging.getLogger(__name__)

_STACK_SUFFIXES = (".tif", ".tiff")
Chip = tuple[int, int, Grid]
"""A windowed chip of a scene: its top-left ``(y, x)`` on the scene's 10 m S2 grid and its grid."""
_STAC_COLUMNS = ("s2_assets", "s1_assets", "s2_collection", "s1_collection", "s2_dn_offset", "s2_dn_rule",
                 "s2_processing_baseline", "s2_grid")
"""Columns that ``s12mae pair --stac`` adds (:mod:`s12mae.stac_items`): rows with ``s2_assets`` load
their bands from the items' COG hrefs."""


# -- the simulated folder -----------------------------------------------------------------------


class _KeepKeys(Sequence):
    """``samples`` with only the sensor keys in ``keys`` (labels, ``id`` and ``meta`` stay)."""

    def __init__(self, samples: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
        self.samples = samples
        self.drop = set(list_sensors()) - set(keys)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        sample = self.samples[i]
        return {k: v for k, v in sample.items() if k.removeprefix("valid.") not in self.drop}


def _simulated(data: Path, sensors: list[str] | None, skip_bad: bool) -> Sequence[dict[str, Any]]:
    """A ``s12mae simulate`` folder (``s2_l1c``, ``s1_grd`` where simulated, labels)."""
    from s12mae.simulate import simulated_samples

    samples = simulated_samples(data)
    return samples if sensors is None else _KeepKeys(samples, sensors)


# -- pairs folders ------------------------------------------------------------------------------


class _ItemReader(RasterReader):
    """A reader over ready-made :class:`Item` records (GeoTIFF stacks listed in a pairs folder)."""

    def __init__(self, source: str, items: list[Item], sensors: Sequence[str] | None,
                 s2_offset: int | None = None) -> None:
        self.source, self._given = source, items  # type: ignore[misc]
        super().__init__(sensors=sensors, s2_offset=s2_offset)

    def _discover(self) -> list[Item]:
        return self._given


def _stack_item(
    item_id: str, sources: list[tuple[str, Path, Any]], keys: list[str], source: str
) -> dict[str, Any]:
    """One sample of GeoTIFF stacks ``(family, path, time)``: each sensor key is the first key of
    ``keys`` in that family (else the family's first sensor); the first stack gives the grid."""
    layers = []
    for family, path, time in sources:
        options = sensors_of_family(family)
        key = next((k for k in keys if k in options), options[0])
        layers.append(SensorLayer.stack(key, path, parse_time(time)))
    return _ItemReader(source, [Item(item_id, layers)], keys)[0]


class PairFolder(Sequence):
    """The rows of a ``s12mae pair`` output folder as reader-format samples (layouts ``pairs`` and
    ``s2-all``, see the module docstring). Nothing is read until a sample is indexed.

    Paths in the tables are read by the rule of :mod:`s12mae.paths` (absolute as written by
    ``s12mae pair``; a relative one is relative to ``folder``), so the folder can be opened from
    any working directory.

    Args:
        folder: folder holding ``pairs.parquet`` (and, for ``s2_all``, ``s2_only.parquet``): a
            local path or a URL (``s3://``, ``gs://``, ``https://``; read through :mod:`s12mae.storage`).
        s2_all: every S2 item, S2 only (else: one paired S2 + S1 sample per pair).
        sensors: keys to load; default the row's S2 product (and ``s1_grd`` for pairs).
        skip_bad: iterating skips (logs, records in :attr:`skipped`) samples that fail to load;
            indexing a bad sample always raises.
        chip_size: windowed chips: a row with asset hrefs gives one sample per grid chip of this
            side (px at 10 m) of its S2 grid (row by row from the top left, the remainder dropped,
            :func:`s12mae.readers.windows.grid_positions`), each read by a windowed read of only that
            chip (:mod:`s12mae.readers.windows`); ``meta["window"]`` names the scene and the chip's
            offset there. The S2 grid is the row's ``s2_grid`` (the items' projection extension),
            else the header of its finest S2 band. Rows without hrefs stay whole scenes.

    Attributes:
        skipped: ``(id, reason)`` of the samples skipped by the last iteration (and, under
            ``chip_size``, rows whose S2 grid could not be read).
    """

    def __init__(self, folder: str | Path, *, s2_all: bool = False, sensors: Sequence[str] | None = None,
                 skip_bad: bool = False, chip_size: int | None = None) -> None:
        self.folder: str | Path = str(folder) if is_url(folder) else Path(folder)
        self.s2_all, self.skip_bad, self.chip_size = s2_all, skip_bad, chip_size
        self.sensors = None if sensors is None else list(sensors)
        self.skipped: list[tuple[str, str]] = []
        known = [*sensors_of_family("s2"), *([] if s2_all else sensors_of_family("s1"))]
        bad = [k for k in self.sensors or [] if k not in known]
        if bad:
            raise ValueError(f"{self.folder}: layout {'s2-all' if s2_all else 'pairs'} holds only "
                             f"{sorted(known)}, not {bad}")
        files = ["pairs.parquet", "s2_only.parquet"] if s2_all else ["pairs.parquet"]
        need = ["s2_id", "s2_path", "s2_time"]
        need += [] if s2_all else ["s1_id", "s1_path", "s1_time", "gap_hours"]
        self._optional = [c for c in _STAC_COLUMNS if s2_all is False or c.startswith("s2_")]
        self.rows: list[tuple[str, dict[str, Any]]] = []
        for name in files:
            table = self._read(storage.join(self.folder, name), need)
            self.rows += [(f"{name} row {r}", row) for r, row in enumerate(table.to_pylist())]
        self._listing_skips: list[tuple[str, str]] = []
        self._bad_scenes: dict[int, str] = {}  # row -> a lasting asset error (404, 403) met by one chip
        self.samples = self._samples()
        self.skipped = list(self._listing_skips)

    def _read(self, path: str, need: list[str]) -> Any:
        import pyarrow.parquet as pq

        if not storage.exists(path):
            raise ValueError(f"{storage.redact(path)}: not found; is {storage.redact(str(self.folder))} a folder "
                             "written by `s12mae pair`?")
        try:
            with storage.open_input(path) as f:
                table = pq.read_table(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{storage.redact(path)}: cannot read it ({storage.redact(str(err))})") from None
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise ValueError(f"{storage.redact(path)}: lacks column(s) {missing}; it has {table.column_names}")
        return table.select(need + [c for c in self._optional if c in table.column_names])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        r, chip = self.samples[i]
        if chip is not None and r in self._bad_scenes:  # one missing or refused asset: every chip of it fails
            raise storage.StorageError(self._bad_scenes[r])
        row = self.rows[r][1]
        where = self._where(r)
        try:
            return self._load_s2(row, where, chip) if self.s2_all else self._load_pair(row, where, chip)
        except storage.StorageError as err:
            lasting = ": not found (" in str(err) or ": access denied (" in str(err)  # not throttling
            if chip is not None and lasting:  # so a 10980 px scene's ~1,800 chips do not each ask again
                self._bad_scenes[r] = f"{err} (remembered for this scene's other chips)"
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = list(self._listing_skips)
        for i in range(len(self)):
            try:
                yield self[i]
            except ValueError as err:
                if not self.skip_bad:
                    raise
                s2_id = self.rows[self.samples[i][0]][1]["s2_id"]
                self.skipped.append((str(s2_id), str(err)))
                log.warning("%s: skipping %s: %s", storage.redact(str(self.folder)), s2_id, err)

    def _where(self, r: int) -> str:
        name, row = self.rows[r]
        return f"{storage.redact(storage.join(self.folder, name))} (s2_id {row['s2_id']})"

    # -- windowed chips: the samples of the rows ----------------------------------------------
    def _samples(self) -> list[tuple[int, Chip | None]]:
        """``(row, chip)`` per sample: every row whole, or under ``chip_size`` each grid chip of the
        rows with asset hrefs (their S2 grids found in parallel: header reads, never pixels)."""
        if self.chip_size is None:
            return [(r, None) for r in range(len(self.rows))]
        chipped = [r for r, (_, row) in enumerate(self.rows) if row.get("s2_assets")]
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(chipped)))) as pool:
            grids = dict(zip(chipped, pool.map(self._scene_grid, chipped)))
        out: list[tuple[int, Chip | None]] = []
        for r in range(len(self.rows)):
            grid = grids.get(r)
            if isinstance(grid, ValueError):
                if not self.skip_bad:
                    raise grid
                self._listing_skips.append((str(self.rows[r][1]["s2_id"]), str(grid)))
                log.warning("%s: leaving out %s: %s", storage.redact(str(self.folder)), self.rows[r][1]["s2_id"], grid)
            elif grid is None:
                out.append((r, None))
            else:
                out += [(r, chip) for chip in scene_chips(grid, self.chip_size)]
        return out

    def _scene_grid(self, r: int) -> Grid | ValueError:
        """Row ``r``'s S2 grid at 10 m: its ``s2_grid`` column, else the header of its finest band."""
        row, where = self.rows[r][1], self._where(r)
        try:
            if row.get("s2_grid"):
                return grid_from_json(row["s2_grid"], where).at_gsd(RasterReader.gsd_m)
            layer = self._asset_layer(row, "s2", where)
            spec = get_sensor(layer.sensor)
            finest = min(range(spec.num_channels), key=lambda k: spec.bands[k].resolution_m)
            href = str(layer.bands[finest].path)
            with storage.open_raster(href) as ds:
                return Grid.of(ds).at_gsd(RasterReader.gsd_m)
        except ValueError as err:
            return ValueError(f"{where}: {err}" if where not in str(err) else str(err))

    # -- one row ---------------------------------------------------------------------------------
    def _path(self, value: Any, column: str, where: str) -> Path:
        if not value:
            raise ValueError(f"{where}: {column} is empty")
        located = resolve(value, self.folder)
        if is_url(located):
            raise ValueError(f"{where}: {column} {storage.redact(located)} is a URL; the {column[:2]} files "
                             "must be local (or the row must carry the items' asset hrefs)")
        path = Path(located)
        if not path.exists():
            raise ValueError(f"{where}: {column} {path} does not exist")
        return path

    def _kind(self, path: Path, column: str, where: str) -> str:
        """``ssl4eo`` (an acquisition folder) or ``stack`` (a GeoTIFF)."""
        if is_acquisition_folder(path):
            return "ssl4eo"
        if path.is_file() and path.suffix.lower() in _STACK_SUFFIXES:
            return "stack"
        raise ValueError(f"{where}: {column} {path} is neither an SSL4EO-S12 acquisition folder "
                         f"({FOLDER_PATTERN}) nor a GeoTIFF")

    def _keys(self, s2_default: str, with_s1: bool) -> list[str]:
        """Keys to load: ``sensors``, or the row's S2 and the first S1 sensor; always an S2 key,
        whose grid is the sample grid (an S2 key that ``sensors`` does not name is dropped after)."""
        keys = list(self.sensors or [s2_default, *(sensors_of_family("s1")[:1] if with_s1 else [])])
        return keys if any(k in sensors_of_family("s2") for k in keys) else [s2_default, *keys]

    def _drop_unasked(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.sensors is None:
            return sample
        extra = [k for k in sensors_of_family("s2") if k in sample and k not in self.sensors]
        return {k: v for k, v in sample.items() if k not in extra and k.removeprefix("valid.") not in extra}

    def _load_pair(self, row: dict[str, Any], where: str, chip: Chip | None = None) -> dict[str, Any]:
        if row.get("s2_assets"):
            sample = self._load_assets(row, where, f"pairs/{row['s2_id']}+{row['s1_id']}", True, chip)
            sample["meta"]["gap_hours"] = row["gap_hours"]
            sample["meta"]["pair"] = {"s2_id": row["s2_id"], "s1_id": row["s1_id"]}
            return sample
        s2 = self._path(row["s2_path"], "s2_path", where)
        s1 = self._path(row["s1_path"], "s1_path", where)
        kinds = {self._kind(s2, "s2_path", where), self._kind(s1, "s1_path", where)}
        if kinds == {"ssl4eo"}:
            keys = self._keys(sensor_of(s2), True)
            folders = [*self._s2_folders(s2, keys, where), s1]
            sample = ListedSSL4EOReader(folders, keys).load_pair(s2.name, s1.name)
        elif kinds == {"stack"}:
            sample = _stack_item(f"pairs/{row['s2_id']}+{row['s1_id']}",
                                 [("s2", s2, row["s2_time"]), ("s1", s1, row["s1_time"])],
                                 self._keys(sensors_of_family("s2")[0], True), "pairs")
        else:
            raise ValueError(f"{where}: s2_path {s2} and s1_path {s1} are of different layouts")
        sample["meta"]["gap_hours"] = row["gap_hours"]
        sample["meta"]["pair"] = {"s2_id": row["s2_id"], "s1_id": row["s1_id"]}
        return self._drop_unasked(sample)

    def _s2_folders(self, s2: Path, keys: Sequence[str], where: str) -> list[Path]:
        try:
            return s2_product_folders(s2, keys)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    # -- rows found by `s12mae pair --stac`: bands from the items' asset hrefs -------------------
    def _asset_layer(self, row: dict[str, Any], family: str, where: str) -> SensorLayer:
        try:
            hrefs = json.loads(row.get(f"{family}_assets") or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: {family}_assets is not a JSON object of band hrefs ({err})") from None
        options = sensors_of_family(family)
        asked = [k for k in self.sensors or [] if k in options]
        key = asked[0] if asked else COLLECTION_SENSORS.get(row.get(f"{family}_collection") or "", options[0])
        hrefs = {b: h for b, h in hrefs.items() if h}
        return SensorLayer.per_band(key, hrefs, parse_time(row[f"{family}_time"]),
                                    where=f"{where}: {family}_assets of item {row[f'{family}_id']!r}")

    def _load_assets(self, row: dict[str, Any], where: str, sample_id: str, with_s1: bool,
                     chip: Chip | None = None) -> dict[str, Any]:
        """One row's sample from its COG hrefs (``s2_assets``/``s1_assets``, s3:// or https://, read
        by byte ranges), or only ``chip`` of it (a windowed read; the id ends in ``@y_x``); the S2 DN
        offset is the one decided from the item's properties (``s2_dn_offset``), recorded with its
        rule and baseline in ``meta["stac"]``."""
        layers = [self._asset_layer(row, "s2", where)]
        if with_s1:
            layers.append(self._asset_layer(row, "s1", where))
        offset = row.get("s2_dn_offset")
        item = Item(sample_id, layers)
        if chip is not None:
            y, x, item.region = chip
            item.id = f"{sample_id}@{y}_{x}"
            where = f"{where}, chip at y {y} x {x}"
            item.meta["window"] = {"scene": sample_id, "y": y, "x": x, "size": item.region.width}
        reader = _ItemReader("pairs", [item], [layer.sensor for layer in layers],
                             s2_offset=None if offset is None else int(offset))
        try:
            sample = reader[0]
        except storage.StorageError as err:  # kept apart: a missing or refused asset fails the whole scene
            raise storage.StorageError(f"{where}: {err}") from None
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        recorded = ("s2_dn_offset", "s2_dn_rule", "s2_processing_baseline")
        sample["meta"]["stac"] = {k: row.get(k) for k in recorded if k in row}
        return self._drop_unasked(sample)

    def _load_s2(self, row: dict[str, Any], where: str, chip: Chip | None = None) -> dict[str, Any]:
        if row.get("s2_assets"):
            sample = self._load_assets(row, where, f"s2-all/{row['s2_id']}", False, chip)
            sample["meta"]["s2_item"] = row["s2_id"]
            return sample
        s2 = self._path(row["s2_path"], "s2_path", where)
        if self._kind(s2, "s2_path", where) == "ssl4eo":
            keys = self._keys(sensor_of(s2), False)
            sample = ListedSSL4EOReader(self._s2_folders(s2, keys, where), keys)[0]
        else:
            sample = _stack_item(f"s2-all/{row['s2_id']}", [("s2", s2, row["s2_time"])],
                                 self._keys(sensors_of_family("s2")[0], False), "s2-all")
        sample["meta"]["s2_item"] = row["s2_id"]
        return sample


# -- the registry -------------------------------------------------------------------------------

Opener = Callable[[Path, "list[str] | None", bool], Sequence[dict[str, Any]]]


def _reader(cls: type[RasterReader]) -> Opener:
    def open_reader(data: Path, sensors: list[str] | None, skip_bad: bool) -> Sequence[dict[str, Any]]:
        return cls(data, sensors, skip_bad=skip_bad)  # type: ignore[call-arg]

    open_reader.__doc__ = cls.__doc__
    return open_reader


_READERS: dict[str, type[RasterReader]] = {
    "terramesh": TerraMeshReader,
    "sen1floods11": Sen1Floods11Reader,
    "bigearthnet-v1": BigEarthNetV1Reader,
    "bigearthnet-v2": BigEarthNetV2Reader,
    "generic": GenericReader,
}

_PAIR_LAYOUTS = {"pairs": False, "s2-all": True}
"""The layouts of :class:`PairFolder` (value: ``s2_all``)."""

LAYOUTS: dict[str, Opener] = {
    "simulated": _simulated,
    **{name: _reader(cls) for name, cls in _READERS.items()},
    "pairs": lambda data, sensors, skip_bad: PairFolder(data, sensors=sensors, skip_bad=skip_bad),
    "s2-all": lambda data, sensors, skip_bad: PairFolder(data, s2_all=True, sensors=sensors,
                                                         skip_bad=skip_bad),
}
"""Layout name -> ``opener(data, sensors, skip_bad)`` giving a lazy sample sequence."""


def train_split(layout: str) -> str | None:
    """The name of the training split of ``layout``, or ``None`` for layouts without splits."""
    cls = _READERS.get(layout)
    return None if cls is None else cls.train_split


_URL_LAYOUTS = {"generic", *_PAIR_LAYOUTS}
"""Layouts whose ``data`` may be a URL: an index file or a pairs folder read through fsspec."""


def open_layout(layout: str, data: str | Path, sensors: list[str] | None = None,
                skip_bad: bool = False, split: str | Sequence[str] | None = None,
                chip_size: int | None = None) -> Sequence[dict[str, Any]]:
    """The samples of dataset ``data`` laid out as ``layout``, as a lazy sequence.

    Args:
        layout: a key of :data:`LAYOUTS`.
        data: the dataset folder (an index file for ``generic``; the output folder of
            ``s12mae pair`` for ``pairs`` and ``s2-all``).
        sensors: keys to load (sensor keys, and for the readers label keys ``label.*``);
            ``None`` loads what the layout has (``pairs``: the row's S2 product and ``s1_grd``).
        skip_bad: readers leave out (and record in ``.skipped``) samples found bad while listing
            them, and skip samples that fail to load when iterated; indexing always raises.
        split: keep only this split or these splits, in layouts that have splits (``bigearthnet-v2``:
            ``train``, ``validation``, ``test``; see :func:`train_split`); ``None``: every sample.
        chip_size: ``pairs``/``s2-all`` only: rows with asset hrefs give one sample per grid chip of
            this side, each read by a windowed read (see :class:`PairFolder`); other layouts read
            whole scenes.

    Returns:
        A sequence of ``{"id", <sensor>: (C, H, W), "valid.<sensor>": (C, H, W) bool, "label.*",
        "meta"}``; sensors in file units (S2 int16 DN, S1 float32 dB).

    Raises:
        ValueError: an unknown layout (the message lists the known ones), data that is not in
            that layout, a split for a layout without splits, or a split the data does not hold.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {sorted(LAYOUTS)}")
    if sensors is not None:
        unknown = [k for k in sensors if k not in list_sensors() and not k.startswith("label.")]
        if unknown:
            raise ValueError(f"unknown sensor key(s) {unknown}; known: {list_sensors()}")
    keys = None if sensors is None else list(sensors)
    if split is not None and train_split(layout) is None:
        with_splits = sorted(name for name in _READERS if train_split(name))
        raise ValueError(f"layout {layout!r} has no splits (asked for split {split!r}); layouts with "
                         f"splits: {with_splits}")
    if layout in _PAIR_LAYOUTS:  # a pairs folder may be a URL (object storage)
        return PairFolder(data, s2_all=_PAIR_LAYOUTS[layout], sensors=keys, skip_bad=skip_bad, chip_size=chip_size)
    if is_url(data) and layout not in _URL_LAYOUTS:
        raise ValueError(f"{storage.redact(str(data))}: layout {layout!r} reads a local folder; copy it to a local disk, "
                         f"or list its files (URLs work) in a 'generic' index. Layouts read at a URL: "
                         f"{sorted(_URL_LAYOUTS)}")
    where = str(data) if is_url(data) else Path(data)  # Path would fold '//'
    if split is None:
        return LAYOUTS[layout](where, keys, skip_bad)  # type: ignore[arg-type]
    return _READERS[layout](where, keys, skip_bad=skip_bad, split=split)  # type: ignore[call-arg]
