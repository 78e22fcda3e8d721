"""SSL4EO-S12 (original GeoTIFF layout): per location, per acquisition, one file per band."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from s12mae.readers.base import FolderReader, Item, SensorLayer, parse_time, read_json

__all__ = ["Acquisition", "SSL4EOReader"]


@dataclass(frozen=True)
class Acquisition:
    """One acquisition folder: ``root/<product>/<location>/<name>/``."""

    location: str
    sensor: str
    name: str
    time: datetime | None
    folder: Path

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
    products: ClassVar[dict[str, str]] = {"s2c": "s2_l1c", "s2a": "s2_l2a", "s1": "s1_grd"}

    def _scan(self) -> list[Acquisition]:
        out = []
        for product, sensor in self.products.items():
            for folder in sorted((self.root / product).glob("*/*/")):
                time = parse_time(folder.name) or parse_time(self._metadata(folder).get("system:time_start"))
                out.append(Acquisition(folder.parent.name, sensor, folder.name, time, folder))
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

    @staticmethod
    def _metadata(folder: Path) -> dict[str, Any]:
        path = folder / "metadata.json"
        return read_json(path) if path.is_file() else {}

    def _layer(self, acq: Acquisition) -> SensorLayer:
        files = {p.stem: p for p in acq.folder.glob("*.tif")}
        layer = SensorLayer.per_band(acq.sensor, files, acq.time, where=str(acq.folder))
        layer.sidecar = acq.folder / "metadata.json" if (acq.folder / "metadata.json").is_file() else None
        return layer

    def _discover(self) -> list[Item]:
        self._acquisitions = self._scan()
        items: dict[str, Item] = {}
        bad: set[str] = set()
        for acq in self._acquisitions:
            s1 = acq.sensor == "s1_grd"
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
        s2_acqs = self._find(s2, ("s2_l1c", "s2_l2a"))
        s1_acq = self._find(s1, ("s1_grd",))[0]
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


def _hours(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds() / 3600
