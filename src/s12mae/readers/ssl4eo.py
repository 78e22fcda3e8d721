"""SSL4EO-S12 (original GeoTIFF layout): per location, per acquisition, one file per band.

This module is the one home of the layout: ``<root>/<product>/<location>/<acquisition>/`` with
``<band>.tif`` files and a ``metadata.json`` (Earth Engine properties). Product folder names come
from ``sensors.yaml`` (``layout_names.ssl4eo``: ``s2c`` L1C, ``s2a`` L2A, ``s1`` GRD). Pairing
(:func:`metadata_records`) and the ``pairs`` layout (:func:`is_acquisition_folder`,
:func:`s2_product_folders`, :class:`ListedSSL4EOReader`) call the functions here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from s12mae.readers.base import FolderReader, Item, SensorLayer, read_json
from s12mae.sensors import layout_sensors, sensors_of_family
from s12mae.times import parse_time

__all__ = [
    "FOLDER_PATTERN",
    "FOOTPRINT_KEYS",
    "METADATA",
    "PRODUCTS",
    "TIME_KEYS",
    "Acquisition",
    "ListedSSL4EOReader",
    "SSL4EOReader",
    "acquisition_folders",
    "is_acquisition_folder",
    "is_product_folder",
    "metadata_records",
    "product_of",
    "s2_product_folders",
    "sensor_of",
]

PRODUCTS: dict[str, str] = layout_sensors("ssl4eo")
"""Product folder -> sensor key (``{"s2c": "s2_l1c", "s2a": "s2_l2a", "s1": "s1_grd"}``)."""
METADATA = "metadata.json"
TIME_KEYS = ("system:time_start", "datetime", "time")
"""``metadata.json`` keys of the acquisition time, first present wins (tile sensing time, ms)."""
FOOTPRINT_KEYS = ("system:footprint", "footprint", "geometry")
"""``metadata.json`` keys of the footprint (GeoJSON; the whole source product's, not the chip's)."""


def product_of(family: str) -> str:
    """The first product folder of a sensor family (``s1`` -> ``s1``, ``s2`` -> ``s2c``)."""
    return next(p for p, key in PRODUCTS.items() if key in sensors_of_family(family))


def acquisition_folders(product_dir: Path) -> list[Path]:
    """The ``<location>/<acquisition>/`` folders of one product folder, sorted."""
    return sorted(Path(product_dir).glob("*/*/"))


FOLDER_PATTERN = f"<root>/<{'|'.join(PRODUCTS)}>/<location>/<acquisition>"
"""An acquisition folder, as error messages describe it."""


def is_acquisition_folder(path: Path) -> bool:
    """``path`` is an existing ``<root>/<product>/<location>/<acquisition>`` folder."""
    return path.is_dir() and path.parent.parent.name in PRODUCTS


def sensor_of(folder: Path) -> str:
    """The sensor key of an acquisition folder, from its product folder (``s2c`` -> ``s2_l1c``)."""
    return PRODUCTS[folder.parent.parent.name]


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA
    return read_json(path) if path.is_file() else {}


def is_product_folder(folder: Path) -> bool:
    """``folder`` holds ``<location>/<acquisition>/metadata.json`` (a product folder such as ``s2c``)."""
    return any(Path(folder).glob(f"*/*/{METADATA}"))


def metadata_records(product_dir: Path) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """``(acquisition folder, location, metadata)`` of every acquisition with a ``metadata.json``.

    Raises:
        ValueError: a ``metadata.json`` that cannot be read (the message names it).
    """
    for folder in acquisition_folders(product_dir):
        if (folder / METADATA).is_file():
            yield folder, folder.parent.name, read_json(folder / METADATA)


def s2_product_folders(s2: Path, keys: Sequence[str]) -> list[Path]:
    """The S2 acquisition folder ``s2`` and, for each other S2 key in ``keys``, the folder of the
    same acquisition in that key's product folder (``s2c/<loc>/<acq>`` -> ``s2a/<loc>/<acq>``).

    Raises:
        ValueError: a folder that ``keys`` asks for does not exist.
    """
    own = sensor_of(s2)
    s2_keys = sensors_of_family("s2")
    folders = []
    for product, key in PRODUCTS.items():
        if key not in s2_keys or key not in keys:
            continue
        folder = s2 if key == own else s2.parents[2] / product / s2.parent.name / s2.name
        if not folder.is_dir():
            raise ValueError(f"{key} was asked for, but {folder} does not exist")
        folders.append(folder)
    return folders


@dataclass(frozen=True)
class Acquisition:
    """One acquisition folder: ``root/<product>/<location>/<name>/``."""

    location: str
    sensor: str
    name: str
    time: datetime | None
    folder: Path

    @classmethod
    def at(cls, folder: Path) -> Acquisition:
        """The acquisition in ``folder``; its time from the folder name (the datatake's sensing
        start), else from ``metadata.json``'s ``system:time_start``."""
        time = parse_time(folder.name) or parse_time(_metadata(folder).get(TIME_KEYS[0]))
        return cls(folder.parent.name, sensor_of(folder), folder.name, time, folder)

    @property
    def date(self) -> str:
        return self.time.strftime("%Y%m%d") if self.time else self.name


class SSL4EOReader(FolderReader):
    """SSL4EO-S12: ``root/{s1,s2c,s2a}/<location>/<acquisition>/<band>.tif`` + ``metadata.json``.

    Bands are stored at native resolution (S2: 10/20/60 m; the sample files are in EPSG:4326, so
    the grid of the 10 m bands, 264 x 264, is the sample grid) and resampled bilinearly onto the 10 m
    band grid. S1 is on a slightly different grid than S2 (as in the real dataset) and is warped
    onto the S2 grid when loaded with it (:meth:`load_pair`).

    Items: one per (location, S2 acquisition) holding ``s2_l1c`` (``s2c``) and ``s2_l2a`` (``s2a``)
    where both have the same acquisition folder, id ``ssl4eo-s12/<location>/<YYYYMMDD>``; and one
    per S1 acquisition, id ``ssl4eo-s12/<location>/s1-<YYYYMMDD>``, on its own grid. Pairing S1
    with S2 is left to the caller: :meth:`acquisitions` lists times (from folder names, which hold
    the sensing start; ``metadata.json`` ``system:time_start`` where the name has none), and
    :meth:`load_pair` loads one S2 acquisition with one S1 acquisition as one sample.
    ``metadata.json`` is read at load time (``PROCESSING_BASELINE`` decides the offset removal).

    Args:
        root: folder holding ``s1``, ``s2c`` and/or ``s2a``.
        sensors: subset of ``s2_l1c``, ``s2_l2a``, ``s1_grd``.
        skip_bad, s2_offset: see :class:`RasterReader`.
    """

    source = "ssl4eo-s12"
    products: ClassVar[dict[str, str]] = PRODUCTS

    def _scan(self) -> list[Acquisition]:
        folders = [f for product in self.products for f in acquisition_folders(self.root / product)]
        out = [Acquisition.at(folder) for folder in folders]
        if not out:
            raise ValueError(f"{self.root}: no acquisition folders under {sorted(self.products)}")
        return out

    def acquisitions(self, location: str | None = None, sensor: str | None = None) -> list[Acquisition]:
        """Acquisitions, optionally of one location and/or sensor key, sorted by (location, time)."""
        acqs = [
            a
            for a in self._acquisitions
            if (location is None or a.location == location) and (sensor is None or a.sensor == sensor)
        ]
        return sorted(acqs, key=lambda a: (a.location, a.time.timestamp() if a.time else math.inf, a.sensor))

    def _layer(self, acq: Acquisition) -> SensorLayer:
        files = {p.stem: p for p in acq.folder.glob("*.tif")}
        layer = SensorLayer.per_band(acq.sensor, files, acq.time, where=str(acq.folder))
        layer.sidecar = acq.folder / METADATA if (acq.folder / METADATA).is_file() else None
        return layer

    def _discover(self) -> list[Item]:
        self._acquisitions = self._scan()
        items: dict[str, Item] = {}
        bad: set[str] = set()
        s1_keys = sensors_of_family("s1")
        for acq in self._acquisitions:
            s1 = acq.sensor in s1_keys
            item_id = f"{self.source}/{acq.location}/{'s1-' if s1 else ''}{acq.date}"
            if item_id in items and acq.name not in items[item_id].meta["acquisitions"].values():
                item_id = f"{self.source}/{acq.location}/{acq.name}"  # two acquisitions on one day
            item = items.setdefault(item_id, Item(id=item_id, meta={"acquisitions": {}}))
            item.meta["acquisitions"][acq.sensor] = acq.name
            try:
                item.layers.append(self._layer(acq))
            except ValueError as err:
                self._bad(item_id, err)
                bad.add(item_id)
        return [it for key, it in items.items() if key not in bad]

    def load_pair(self, s2: Acquisition | str, s1: Acquisition | str) -> dict[str, Any]:
        """One sample of an S2 acquisition (L1C and/or L2A, as ``sensors`` allows) with an S1 one,
        S1 warped onto the S2 10 m grid. Acquisitions are given as objects, as
        ``"<location>/<folder>"`` or as a bare folder name (which must then be unique: one S2
        datatake name is shared by every location of its tile)."""
        s2_acqs = self._find(s2, tuple(sensors_of_family("s2")))
        s1_acq = self._find(s1, tuple(sensors_of_family("s1")))[0]
        if s1_acq.location != s2_acqs[0].location:
            raise ValueError(
                f"{self.source}: S2 {s2_acqs[0].name} is at location {s2_acqs[0].location}, "
                f"S1 {s1_acq.name} at {s1_acq.location}"
            )
        keep = self.sensors or tuple(self.products.values())
        layers = [self._layer(a) for a in [*s2_acqs, s1_acq] if a.sensor in keep]
        meta = {
            "acquisitions": {a.sensor: a.name for a in [*s2_acqs, s1_acq]},
            "time_difference_h": _hours(s2_acqs[0].time, s1_acq.time),
        }
        item_id = f"{self.source}/{s1_acq.location}/{s2_acqs[0].date}+s1-{s1_acq.date}"
        return self.load(Item(item_id, layers, meta=meta))

    def _find(self, acq: Acquisition | str, sensors: tuple[str, ...]) -> list[Acquisition]:
        if isinstance(acq, Acquisition):
            location, name = acq.location, acq.name
        else:
            location, _, name = acq.rpartition("/")
        found = [a for a in self._acquisitions
                 if a.name == name and a.sensor in sensors and (not location or a.location == location)]
        if not found:
            raise ValueError(f"{self.root}: no {'/'.join(sensors)} acquisition named {acq!r}")
        locations = sorted({a.location for a in found})
        if len(locations) > 1:
            raise ValueError(f"{self.root}: acquisition {name!r} exists at locations {locations[:5]}; "
                             "name it as '<location>/<folder>'")
        return found


class ListedSSL4EOReader(SSL4EOReader):
    """:class:`SSL4EOReader` over the given acquisition folders only: no scan of the whole root
    (millions of folders in the full dataset), and folder names are unambiguous (one S2 datatake
    name is shared by every location of its tile, which :meth:`load_pair` cannot tell apart)."""

    def __init__(self, folders: Sequence[Path], sensors: Sequence[str] | None) -> None:
        self._folders = list(dict.fromkeys(folders))
        super().__init__(self._folders[0].parents[2], sensors)

    def _scan(self) -> list[Acquisition]:
        return [Acquisition.at(folder) for folder in self._folders]


def _hours(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds() / 3600
