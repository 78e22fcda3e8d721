"""BigEarthNet v1 (original folders + JSON labels) and v2 (reBEN: tile folders + metadata.parquet)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
from affine import Affine

from s12mae.readers.base import FolderReader, Grid, Item, S2Offset, SensorLayer, read_json
from s12mae.sensors import layout_sensors
from s12mae.times import parse_time

__all__ = ["BigEarthNetV1Reader", "BigEarthNetV2Reader", "bigearthnet_labels", "multi_hot19"]

_SENSORS = layout_sensors("bigearthnet")
"""Folder token -> sensor key (``{"S2": "s2_l2a", "S1": "s1_grd"}``)."""
_S2_SENSOR, _S1_SENSOR = _SENSORS["S2"], _SENSORS["S1"]
PATCH_M = 1200.0
"""Side of a BigEarthNet patch in metres: 120 px of 10 m, 60 px of 20 m, 20 px of 60 m (S1: 120 px)."""


@cache
def bigearthnet_labels() -> dict[str, Any]:
    """``{"labels43": [...], "labels19": [...], "map43to19": {name43: name19 | None}}`` (data file)."""
    text = resources.files("s12mae.readers").joinpath("bigearthnet_labels.json").read_text()
    return dict(json.loads(text))


def multi_hot19(names: Sequence[str], where: str, nomenclature: str = "labels19") -> np.ndarray:
    """``(19,)`` uint8 multi-hot of 19-class names, or of 43-class names (``nomenclature="labels43"``,
    mapped by ``map43to19``; classes the 19-class nomenclature drops set nothing)."""
    table = bigearthnet_labels()
    unknown = [n for n in names if n not in table[nomenclature]]
    if unknown:
        raise ValueError(f"{where}: unknown BigEarthNet {nomenclature[-2:]}-class label(s) {unknown}")
    if nomenclature == "labels43":
        names = [table["map43to19"][n] for n in names if table["map43to19"][n] is not None]
    out = np.zeros(len(table["labels19"]), dtype=np.uint8)
    out[[table["labels19"].index(n) for n in names]] = 1
    return out


class _BigEarthNetReader(FolderReader):
    """Shared patch layout: ``<patch>/<patch>_<B01..B12,B8A>.tif`` (S2 L2A at 20/60/120 px for
    60/20/10 m) and ``<s1 patch>/<s1 patch>_<VV|VH>.tif`` (dB, 120 px). The sample grid is the
    10 m bands' 120 x 120 UTM grid; 20 m and 60 m bands are resampled to it bilinearly.

    Files without georeferencing (no CRS; some redistributions strip it) are placed by
    BigEarthNet's fixed co-registration: every file covers the same 1200 m x 1200 m patch, so a
    file of ``n`` px has ``1200 / n`` m pixels in a local frame (origin at the patch's top-left
    corner, ``meta["crs"]`` None). A sample must then lack georeferencing in all its files."""

    def file_grid(self, ds: rasterio.io.DatasetReader, path: Path) -> Grid:
        if ds.crs is not None:
            return Grid.of(ds)
        sizes = {round(PATCH_M / 10), round(PATCH_M / 20), round(PATCH_M / 60)}
        if ds.width != ds.height or ds.width not in sizes:
            raise ValueError(
                f"{path}: has no georeferencing and is {ds.width}x{ds.height} px; a BigEarthNet band "
                f"file is square with {sorted(sizes, reverse=True)} px (10, 20, 60 m over {PATCH_M:g} m)"
            )
        pixel = PATCH_M / ds.width
        return Grid(None, Affine(pixel, 0.0, 0.0, 0.0, -pixel, PATCH_M), ds.width, ds.height)

    def _patch_item(
        self,
        s2_dir: Path,
        s1_dir: Path | None,
        labels19: np.ndarray,
        meta: dict[str, Any],
        s2_time: Any = None,
        s1_time: Any = None,
        s2_metadata: dict[str, Any] | None = None,
    ) -> Item:
        s2_files = {p.stem[len(s2_dir.name) + 1 :]: p for p in s2_dir.glob(f"{s2_dir.name}_*.tif")}
        item = Item(id=f"{self.source}/{s2_dir.name}", arrays={"label.multilabel": labels19}, meta=meta)
        item.layers.append(
            SensorLayer.per_band(_S2_SENSOR, s2_files, parse_time(s2_time), s2_metadata, where=str(s2_dir))
        )
        if s1_dir is not None:
            s1_files = {p.stem[len(s1_dir.name) + 1 :]: p for p in s1_dir.glob(f"{s1_dir.name}_V?.tif")}
            item.layers.append(
                SensorLayer.per_band(_S1_SENSOR, s1_files, parse_time(s1_time), where=str(s1_dir))
            )
        return item


class BigEarthNetV1Reader(_BigEarthNetReader):
    """BigEarthNet v1.0: S2 and S1 patch folders (e.g. ``BigEarthNet-v1.0/`` and
    ``BigEarthNet-S1-v1.0/``, or the ``*-Example`` folders) anywhere one or two levels under ``root``,
    each with ``<patch>_labels_metadata.json``.

    Labels: the S2 JSON's 43 CORINE names -> ``label.multilabel`` (19,) uint8 by the 19-class
    nomenclature (mapping in ``bigearthnet_labels.json``); ``meta["labels43"]`` and
    ``meta["labels19"]`` hold the names. S1 partner: ``corresponding_s1_patch`` in the S2 JSON if
    present, else the S1 folder whose JSON names the S2 patch in ``corresponding_s2_patch``.
    Times come from the JSONs (S2 ``acquisition_date``, S1 ``acquisition_time``): S2 patch names
    are not reliable (``S2B_MSIL2A_20170924T93020`` has a 5-digit time). The processing baseline
    is read from the JSON's ``tile_source`` (``_N0205_``).
    """

    source = "bigearthnet-v1"

    def _discover(self) -> list[Item]:
        jsons = sorted(
            {*self.root.glob("*/*_labels_metadata.json"), *self.root.glob("*/*/*_labels_metadata.json")}
        )
        s2: dict[str, tuple[Path, Path]] = {}
        s1_by_s2: dict[str, Path] = {}
        for path in jsons:
            folder = path.parent
            if (folder / f"{folder.name}_VV.tif").exists():
                partner = read_json(path).get("corresponding_s2_patch")
                if partner:
                    s1_by_s2[partner] = folder
            else:
                s2[folder.name] = (folder, path)
        if not s2:
            raise ValueError(f"{self.root}: no BigEarthNet v1 S2 patch folder with *_labels_metadata.json")
        items = []
        for name, (folder, path) in sorted(s2.items()):
            try:
                md = read_json(path)
                s1_name = md.get("corresponding_s1_patch")
                s1_dir = next(iter(self.root.glob(f"*/{s1_name}")), None) if s1_name else s1_by_s2.get(name)
                s1_md = read_json(s1_dir / f"{s1_dir.name}_labels_metadata.json") if s1_dir else {}
                labels43 = list(md.get("labels", []))
                hot = multi_hot19(labels43, str(path), "labels43")
                meta = {
                    "labels43": labels43,
                    "labels19": [n for n, h in zip(bigearthnet_labels()["labels19"], hot, strict=True) if h],
                    "s1_patch": s1_dir.name if s1_dir else None,
                }
                items.append(
                    self._patch_item(
                        folder,
                        s1_dir,
                        hot,
                        meta,
                        md.get("acquisition_date"),
                        s1_md.get("acquisition_time"),
                        {"tile_source": md.get("tile_source", "")},
                    )
                )
            except ValueError as err:
                self._bad(f"{self.source}/{name}", err)
        return items


class BigEarthNetV2Reader(_BigEarthNetReader):
    """reBEN (BigEarthNet v2.0): ``BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif``,
    ``BigEarthNet-S1/<tile>/<patch>/<patch>_<VV|VH>.tif`` and ``metadata.parquet`` (``patch_id``,
    ``labels``: 19-class names, ``split``, ``s1_name``) under ``root``.

    Times come from the patch names (``S2A_MSIL2A_20170613T101031_...``, ``S1A_IW_GRDH_1SDV_
    20170613T165043_...``); their ``N9999`` baseline field is not a baseline, so the offset rule
    falls back to the acquisition date. A row whose patch folder is missing is a ValueError
    naming the parquet file, the row and the folder (or a skip under ``skip_bad``).

    Args:
        root: folder holding ``BigEarthNet-S2``, ``BigEarthNet-S1`` and the metadata file.
        split: keep only rows of this split or these splits (``train``, ``validation``, ``test``);
            a name the ``split`` column does not hold is a ValueError listing the ones it does.
        metadata: the metadata file name or path (relative to ``root``).
    """

    source = "bigearthnet-v2"
    columns = ("patch_id", "labels", "split", "s1_name")
    train_split: ClassVar[str | None] = "train"

    def __init__(
        self,
        root: str | Path,
        sensors: Sequence[str] | None = None,
        *,
        split: str | Sequence[str] | None = None,
        metadata: str | Path = "metadata.parquet",
        skip_bad: bool = False,
        s2_offset: S2Offset = None,
    ) -> None:
        self.split = [split] if isinstance(split, str) else None if split is None else list(split)
        self.metadata = Path(root) / metadata
        super().__init__(root, sensors, skip_bad=skip_bad, s2_offset=s2_offset)

    def _discover(self) -> list[Item]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.metadata)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.metadata}: cannot read the metadata parquet ({err})") from None
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.metadata}: lacks column(s) {missing}; it has {table.column_names}")
        self._check_split(table.column("split").to_pylist())
        s2_dirs = {p.name: p for p in (self.root / "BigEarthNet-S2").glob("*/*") if p.is_dir()}
        s1_dirs = {p.name: p for p in (self.root / "BigEarthNet-S1").glob("*/*") if p.is_dir()}
        items = []
        for row_number, row in enumerate(table.select(list(self.columns)).to_pylist()):
            if self.split is not None and row["split"] not in self.split:
                continue
            patch, s1_name = row["patch_id"], row["s1_name"]
            where = f"{self.metadata}: row {row_number} (patch_id {patch})"
            try:
                if patch not in s2_dirs:
                    raise ValueError(f"{where}: no folder {self.root / 'BigEarthNet-S2' / '<tile>' / patch}")
                if s1_name and s1_name not in s1_dirs:
                    raise ValueError(
                        f"{where}: no folder {self.root / 'BigEarthNet-S1' / '<tile>' / s1_name}"
                    )
                labels = list(row["labels"] or [])
                meta = {"labels19": labels, "split": row["split"], "s1_patch": s1_name}
                items.append(
                    self._patch_item(
                        s2_dirs[patch],
                        s1_dirs.get(s1_name) if s1_name else None,
                        multi_hot19(labels, where),
                        meta,
                        patch,
                        s1_name,
                    )
                )
            except ValueError as err:
                self._bad(f"{self.source}/{patch}", err)
        return items

    def _check_split(self, column: list[Any]) -> None:
        present = sorted({str(v) for v in column if v is not None})
        unknown = [name for name in self.split or [] if name not in present]
        if unknown:
            raise ValueError(f"{self.metadata}: no split {unknown} in column 'split'; it holds {present}")
