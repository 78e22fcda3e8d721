"""Real-data downstream tasks (``data.source="real"``): Sen1Floods11 and BigEarthNet.

Both read their original layouts through :mod:`s12mae.readers`:

* ``sen1floods11``: hand-labelled chips (``S2Hand``, ``LabelHand``); S2 L1C, 13 bands; labels
  -1 (ignored), 0 land, 1 water; S2 nodata pixels are ignored too. Splits from the dataset's
  ``flood_{train,valid,test}_data.csv`` when present anywhere under ``data.path`` (without the
  ``valid`` list, part of train is held out for validation), else every chip is in both splits
  (a smoke check, said in the task notes).
* ``bigearthnet``: v1 (a folder per patch) or v2 / reBEN (``metadata.parquet`` with ``split``);
  S2 L2A, 12 bands (the encoder's B10 is filled, see ``data.missing_bands``), 19 classes.
  v2 uses its ``validation`` split for validation. v1 has no split column: every patch is in
  both splits unless ``data.path`` holds the official ``train.csv`` / ``test.csv`` (and
  ``val.csv``) patch lists.

Inputs are standardised with ``data.stats`` (or the shipped statistics); nodata pixels become 0.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from s12mae.evaluation.config import EvalDataConfig
from s12mae.evaluation.tasks import EvalTask, register_task
from s12mae.inputs import model_inputs
from s12mae.sensors import SensorSpec, get_sensor

__all__ = ["ReaderTaskDataset"]


class ReaderTaskDataset(Dataset):
    """Samples ``{sensor, "label", "index"}`` from reader samples.

    Args:
        reader: a sequence of reader-format samples (see :mod:`s12mae.readers.base`).
        positions: which of the reader's samples this split holds.
        spec: the input sensor's spec (with the statistics to standardise with).
        label_fn: reader sample -> label tensor.
        extra: further inputs each sample holds (e.g. S1 GRD for the robustness evaluation), key ->
            spec; the reader must load them.
    """

    def __init__(self, reader: Sequence[dict[str, Any]], positions: Sequence[int], spec: SensorSpec,
                 label_fn: Callable[[dict[str, Any]], torch.Tensor], extra: dict[str, SensorSpec] | None = None) -> None:
        self.reader, self.positions, self.spec, self.label_fn = reader, list(positions), spec, label_fn
        self.extra = dict(extra or {})

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        position = self.positions[i]
        sample = self.reader[position]
        where = f"sample {sample.get('id', position)!r}"
        out = {}
        for spec in (self.spec, *self.extra.values()):
            if spec.key not in sample:
                raise ValueError(f"{where}: has no {spec.key!r} input (the robustness evaluation needs every "
                                 f"sample's {spec.key}); it holds {sorted(sample)}")
            raw, valid = (torch.from_numpy(np.asarray(sample[k])) for k in (spec.key, f"valid.{spec.key}"))
            out[spec.key] = model_inputs(spec, raw, valid, nodata="mask", where=where)[0]
        return {**out, "label": self.label_fn(sample), "index": torch.tensor(position, dtype=torch.int64)}


def _split_lists(root: Path, names: tuple[str, str]) -> tuple[set[str], set[str]] | None:
    """Ids listed in the first CSV column of two split files found under ``root``, if both exist."""
    found = [next(iter(sorted(root.rglob(n))), None) for n in names]
    if None in found:
        return None
    lists = []
    for path in found:
        with open(path, newline="") as f:  # type: ignore[arg-type]
            lists.append({Path(row[0]).name for row in csv.reader(f) if row})
    return lists[0], lists[1]


def _val_list(root: Path, name: str) -> set[str] | None:
    """Ids of an optional validation list (first CSV column) found under ``root``."""
    found = next(iter(sorted(root.rglob(name))), None)
    if found is None:
        return None
    with open(found, newline="") as f:
        return {Path(row[0]).name for row in csv.reader(f) if row}


def _positions(ids: list[str], splits: tuple[set[str], set[str]] | None, match: Callable[[str, set[str]], bool],
               val: set[str] | None = None):
    """Train, test and validation positions (validation ``None`` without a list) and a note."""
    if splits is None:
        every = list(range(len(ids)))
        return every, every, None, "no split files found: every sample is in both splits (a smoke check, not a result)"
    train = [i for i, s in enumerate(ids) if match(s, splits[0])]
    test = [i for i, s in enumerate(ids) if match(s, splits[1])]
    valid = None if val is None else [i for i, s in enumerate(ids) if match(s, val)]
    return train, test, valid, "official split files"


def _require_path(data: EvalDataConfig, task: str) -> Path:
    if data.path is None:
        raise ValueError(f"task {task} with data.source=real needs data.path (the dataset folder)")
    return Path(data.path)


def _sen1floods11(data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    from s12mae.readers import Sen1Floods11Reader

    root = _require_path(data, "sen1floods11")
    reader = Sen1Floods11Reader(root, sensors=["s2_l1c", *extra, "label.water"])
    spec = get_sensor("s2_l1c", data.stats)
    more = {key: get_sensor(key, data.stats) for key in extra}
    ids = [item.id for item in reader.items()]
    splits = _split_lists(root, ("flood_train_data.csv", "flood_test_data.csv"))
    train, test, val, how = _positions(ids, splits, lambda sid, names: any(sid.split("/")[-1] in n for n in names),
                                       _val_list(root, "flood_valid_data.csv"))

    def label(sample: dict[str, Any]) -> torch.Tensor:
        y = torch.from_numpy(np.asarray(sample["label.water"]).astype(np.int64))
        ok = torch.from_numpy(np.asarray(sample["valid.s2_l1c"]).all(0))
        return torch.where(ok, y, -1)

    make = lambda positions: ReaderTaskDataset(reader, positions, spec, label, more)
    inputs = "S2 only" if not extra else f"S2 + {', '.join(extra)}"
    return EvalTask("sen1floods11", "segmentation", spec.key, spec, ("background", "water"), make(train), make(test),
                    "iou_water", source=str(root), notes=f"Sen1Floods11 hand labels, {inputs}; {how}",
                    val=None if val is None else make(val), extra=more)


def _bigearthnet(data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    from s12mae.readers import BigEarthNetV1Reader, BigEarthNetV2Reader, bigearthnet_labels

    root = _require_path(data, "bigearthnet")
    classes = tuple(bigearthnet_labels()["labels19"])
    spec = get_sensor("s2_l2a", data.stats)
    more = {key: get_sensor(key, data.stats) for key in extra}
    sensors = ["s2_l2a", *extra, "label.multilabel"]

    def label(sample: dict[str, Any]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(sample["label.multilabel"]).astype(np.int64))

    if (root / "metadata.parquet").is_file():
        train_r = BigEarthNetV2Reader(root, split="train", sensors=sensors)
        test_r = BigEarthNetV2Reader(root, split="test", sensors=sensors)
        val_r = BigEarthNetV2Reader(root, split="validation", sensors=sensors)
        train = ReaderTaskDataset(train_r, range(len(train_r)), spec, label, more)
        test = ReaderTaskDataset(test_r, range(len(test_r)), spec, label, more)
        val = ReaderTaskDataset(val_r, range(len(val_r)), spec, label, more) if len(val_r) else None
        how = "reBEN split column"
    else:
        reader = BigEarthNetV1Reader(root, sensors=sensors)
        ids = [item.id for item in reader.items()]
        splits = _split_lists(root, ("train.csv", "test.csv"))
        tr, te, va, how = _positions(ids, splits, lambda sid, n: sid.split("/")[-1] in n, _val_list(root, "val.csv"))
        train, test = ReaderTaskDataset(reader, tr, spec, label, more), ReaderTaskDataset(reader, te, spec, label, more)
        val = None if va is None else ReaderTaskDataset(reader, va, spec, label, more)
    return EvalTask("bigearthnet", "multilabel", spec.key, spec, classes, train, test, "map_micro",
                    source=str(root), notes=f"BigEarthNet S2 L2A, 19 classes; {how}", val=val, extra=more)


register_task("sen1floods11", "real", _sen1floods11, ("s1_grd",))
register_task("bigearthnet", "real", _bigearthnet, ("s1_grd",))
