"""TerraMesh examples: one folder per modality, the same file name per scene, one UTM grid."""

from __future__ import annotations

from typing import ClassVar

from s12mae.readers.base import FolderReader, Item, LabelLayer, SensorLayer
from s12mae.sensors import layout_sensors

__all__ = ["TerraMeshReader"]


class TerraMeshReader(FolderReader):
    """Scenes of ``root/<MODALITY>/<scene>.tif`` (S2L1C, S2L2A, S1RTC, S1GRD, DEM, LULC).

    Every modality is a multi-band stack on the scene's 10 m UTM grid (224 x 224 in the examples).
    S2 files carry no metadata, so the baseline-04.00 offset cannot be decided from them: the data
    is checked instead (a layer whose darkest band floor is near 1000 DN is flagged in
    ``meta["offset_suspected"]`` with a warning; three of the five example scenes' L1C are) and
    values are kept unless ``s2_offset`` says otherwise (see :class:`RasterReader`). S1 and LULC files
    carry a ``datetime`` tag, which becomes ``meta["times"]``.

    Args:
        root: folder holding the modality folders.
        sensors: keys to load (``s2_l1c``, ``s2_l2a``, ``s1_rtc``, ``s1_grd``, ``dem``,
            ``label.landcover``); default all present.
        skip_bad, s2_offset: see :class:`RasterReader`.
    """

    source = "terramesh"
    # Folder -> key from sensors.yaml, in spec order (S2L1C, S2L2A, S1GRD, S1RTC, DEM); the first
    # present gives the reference grid, which does not depend on the order: TerraMesh stores every
    # modality of a scene on one grid.
    folders: ClassVar[dict[str, str]] = layout_sensors("terramesh")
    label_folders: ClassVar[dict[str, tuple[str, str, int]]] = {"LULC": ("label.landcover", "uint8", 0)}

    def _discover(self) -> list[Item]:
        present = [f for f in [*self.folders, *self.label_folders] if (self.root / f).is_dir()]
        if not present:
            raise ValueError(f"{self.root}: no TerraMesh modality folder ({sorted(self.folders)} or LULC)")
        scenes = sorted({p.stem for f in present for p in (self.root / f).glob("*.tif")})
        items = []
        for scene in scenes:
            item = Item(id=f"{self.source}/{scene}")
            for folder, key in self.folders.items():
                path = self.root / folder / f"{scene}.tif"
                if path.is_file():
                    item.layers.append(SensorLayer.stack(key, path))
            for folder, (key, dtype, fill) in self.label_folders.items():
                path = self.root / folder / f"{scene}.tif"
                if path.is_file():
                    item.labels.append(LabelLayer(key, path, dtype, fill))
            items.append(item)
        return items
