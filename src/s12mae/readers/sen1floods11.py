"""Sen1Floods11 hand-labelled chips: S2Hand, S1Hand and LabelHand GeoTIFFs per chip."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from s12mae.readers.base import FolderReader, Item, LabelLayer, SensorLayer
from s12mae.sensors import layout_sensors

__all__ = ["Sen1Floods11Reader"]


class Sen1Floods11Reader(FolderReader):
    """Chips ``<chip>_S2Hand.tif`` (13-band L1C, int16, nodata 0), ``<chip>_S1Hand.tif`` (VV, VH
    dB float32, NaN nodata) and ``<chip>_LabelHand.tif`` (-1 ignore, 0 land, 1 water), found
    anywhere under ``root``.

    The chips are in EPSG:4326 (about 8.98e-5 degrees a pixel, 512 x 512): the sample grid is the
    S2 file's own geographic grid ("10 m" in degrees), not a UTM 10 m grid; S1 and labels share it.
    The chips carry no acquisition time, so ``meta["times"]`` is ``None`` and no baseline offset is
    removed (the dataset predates 2022) unless ``s2_offset`` says so.

    Args:
        root: folder searched recursively for the three kinds of files.
        sensors: subset of ``s2_l1c``, ``s1_grd``, ``label.water``.
        skip_bad, s2_offset: see :class:`RasterReader`.
    """

    source = "sen1floods11"
    suffixes: ClassVar[dict[str, str]] = layout_sensors("sen1floods11")  # {"_S2Hand": "s2_l1c", ...}
    label_suffixes: ClassVar[dict[str, tuple[str, str, int]]] = {"_LabelHand": ("label.water", "int16", -1)}

    def _discover(self) -> list[Item]:
        found: dict[str, dict[str, Path]] = {}
        for suffix in [*self.suffixes, *self.label_suffixes]:
            for path in self.root.rglob(f"*{suffix}.tif"):
                found.setdefault(path.name[: -len(suffix) - 4], {})[suffix] = path
        if not found:
            raise ValueError(f"{self.root}: no *_S2Hand.tif, *_S1Hand.tif or *_LabelHand.tif files")
        items = []
        for chip, files in sorted(found.items()):
            item = Item(id=f"{self.source}/{chip}")
            item.layers = [SensorLayer.stack(key, files[s]) for s, key in self.suffixes.items() if s in files]
            item.labels = [
                LabelLayer(key, files[s], dtype, fill)
                for s, (key, dtype, fill) in self.label_suffixes.items()
                if s in files
            ]
            items.append(item)
        return items
