"""Downstream tasks: the :class:`EvalTask` interface, its registry, and the simulated tasks.

A task is two torch ``Dataset`` splits of sample dicts plus metadata. Each sample holds

* ``task.sensor`` (``"s2_l1c"``, ``"s2_l2a"``, ...): float32 ``(C, H, W)``, standardised with
  ``task.spec`` (the spec's bands in its order);
* ``"label"``: segmentation: int64 ``(H * label_scale, W * label_scale)`` class indices with
  ``ignore_index`` (-1) for pixels that neither train nor count; multi-label: ``(K,)`` of 0/1;
* ``"index"``: int64 sample number, used in error messages;
* any of ``task.extra`` (e.g. ``"s1_grd"``, asked for with ``build_task(..., extra=("s1_grd",))``
  by the robustness evaluation): float32 ``(C, H, W)``, standardised with ``task.extra[key]``.

Real readers plug in with :func:`register_task` (``register_task("bigearthnet", "real", fn)``,
then ``data.source="real"``). The built-in ``simulated`` source derives every task from
:mod:`s12mae.simulate` (train and test from separate simulation seeds, or from index ranges of a
dataset folder), so the whole evaluation runs without downloads. Nothing simulated is a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from s12mae.evaluation.config import EvalDataConfig
from s12mae.inputs import model_inputs
from s12mae.sensors import SensorSpec, get_sensor
from s12mae.simulate import LAND_COVER_CLASSES, SimulationConfig, load_simulated, simulate

__all__ = ["TASKS", "EvalTask", "build_task", "register_task", "with_validation"]

TaskKind = Literal["segmentation", "multilabel"]


@dataclass
class EvalTask:
    """A downstream task: data splits and what to predict.

    Attributes:
        name: task name (``sen1floods11``, ``bigearthnet``, ``srseg``).
        kind: ``segmentation`` (per-pixel classes) or ``multilabel`` (scene classes).
        sensor: key of the input image in each sample and of its spec (``s2_l1c``, ``s2_l2a``).
        spec: sensor spec with the statistics the input was standardised with (band names for
            the mapping onto the encoder, ``to_display`` for pictures).
        class_names: one name per class / label.
        train: training split.
        test: test split.
        val: validation split (head selection and convergence); ``None``: the runner holds out
            ``data.val_fraction`` of ``train`` (:func:`with_validation`).
        headline: name of the metric of Table 2 (a key of the metrics dict).
        label_scale: label grid / input grid (4 for super-resolution segmentation).
        ignore_index: label value of pixels that neither train nor count (segmentation).
        source: where the data came from, for error messages and ``metrics.json``.
        notes: one line on choices a reader must know (e.g. how clouds are labelled).
        extra: further inputs every sample holds, key -> the spec they were standardised with
            (co-located S1 for the robustness evaluation); empty by default.
    """

    name: str
    kind: TaskKind
    sensor: str
    spec: SensorSpec
    class_names: tuple[str, ...]
    train: Dataset
    test: Dataset
    headline: str
    label_scale: int = 1
    ignore_index: int = -1
    source: str = "dataset"
    notes: str = ""
    val: Dataset | None = None
    extra: dict[str, SensorSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("segmentation", "multilabel"):
            raise ValueError(f"task {self.name}: kind must be 'segmentation' or 'multilabel', got {self.kind!r}")
        if self.spec.key != self.sensor:
            raise ValueError(f"task {self.name}: spec {self.spec.key!r} is not the input sensor {self.sensor!r}")
        if len(self.class_names) < 1 or self.label_scale < 1:
            raise ValueError(f"task {self.name}: needs >= 1 class and label_scale >= 1")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_batch(self, batch: dict[str, torch.Tensor], split: str) -> None:
        """Raise a ``ValueError`` naming the source and sample if the input or labels are unusable.

        Args:
            batch: collated samples (``(N, ...)`` tensors, ``index`` among them).
            split: ``train`` or ``test``, for the message.
        """
        where = f"{self.source} ({self.name}, {split} split)"
        for key in (self.sensor, "label"):
            if key not in batch:
                raise ValueError(f"{where}: samples have no {key!r} entry; they hold {sorted(batch)}")
        idx = batch.get("index", torch.arange(len(batch["label"])))
        x, y = batch[self.sensor], batch["label"]
        if x.ndim != 4 or x.shape[1] != self.spec.num_channels:
            raise ValueError(f"{where}: input {self.sensor} of shape {tuple(x.shape)}, expected "
                             f"(N, {self.spec.num_channels}, H, W) with bands {self.spec.band_names}")
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            raise ValueError(f"{where}: non-finite input in sample(s) {idx[~finite].tolist()[:10]}")
        if self.kind == "segmentation":
            want = (x.shape[-2] * self.label_scale, x.shape[-1] * self.label_scale)
            if y.ndim != 3 or tuple(y.shape[-2:]) != want:
                raise ValueError(f"{where}: labels of shape {tuple(y.shape)}, expected (N, {want[0]}, {want[1]}) "
                                 f"(input {tuple(x.shape[-2:])} x label_scale {self.label_scale})")
            bad = ((y < 0) & (y != self.ignore_index)) | (y >= self.num_classes)
            what = f"class indices 0..{self.num_classes - 1} or {self.ignore_index} (ignored)"
        else:
            if y.ndim != 2 or y.shape[1] != self.num_classes:
                raise ValueError(f"{where}: labels of shape {tuple(y.shape)}, expected (N, {self.num_classes})")
            bad = (y != 0) & (y != 1)
            what = "0/1 per class"
        rows = bad.flatten(1).any(1)
        if bool(rows.any()):
            values = sorted({float(v) for v in y[bad].flatten()[:20].tolist()})
            raise ValueError(f"{where}: labels out of range in sample(s) {idx[rows].tolist()[:10]}: "
                             f"values {values}, expected {what}")


TaskBuilder = Callable[..., EvalTask]
TASKS: dict[tuple[str, str], TaskBuilder] = {}
EXTRA_INPUTS: dict[tuple[str, str], tuple[str, ...]] = {}
"""Task and source -> the further inputs (sensor keys) its builder can add to every sample."""


def register_task(name: str, source: str, builder: TaskBuilder, extra: tuple[str, ...] = ()) -> None:
    """Make ``builder(data_cfg) -> EvalTask`` the task ``name`` for ``data.source == source``.

    A builder that can add further inputs to its samples lists their keys in ``extra``; it is
    then called as ``builder(data_cfg, extra=(...))`` when they are asked for.
    """
    TASKS[(name, source)] = builder
    EXTRA_INPUTS[(name, source)] = tuple(extra)


def build_task(name: str, data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    """The task ``name`` from the registered builder of ``data.source``, its samples holding the
    further inputs ``extra`` (sensor keys, e.g. ``("s1_grd",)``) too."""
    if (name, data.source) not in TASKS:
        known = sorted(f"{t} (source {s})" for t, s in TASKS)
        raise ValueError(f"unknown task {name!r} for data source {data.source!r}; registered: {known}")
    if not extra:
        return TASKS[(name, data.source)](data)
    offered = EXTRA_INPUTS[(name, data.source)]
    missing = [k for k in extra if k not in offered]
    if missing:
        raise ValueError(f"task {name!r} (data source {data.source!r}) cannot provide input(s) {missing}; "
                         f"it offers {list(offered) or 'none beyond its own'}")
    return TASKS[(name, data.source)](data, extra=tuple(extra))


# --- simulated tasks ---------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _simulated(num: int, img_size: int, seed: int) -> dict[str, np.ndarray]:
    return simulate(SimulationConfig(num_samples=num, img_size=img_size, seed=seed))


Arrays = dict[str, np.ndarray]


def _sim_splits(data: EvalDataConfig) -> tuple[Arrays, Arrays | None, Arrays, str]:
    """Train, validation and test arrays: separate seeds in memory, or head/tail index ranges of
    a folder (which has no validation split: the runner holds out part of train)."""
    if data.path is None:
        seeds = (data.sim_seed, data.sim_seed + 2, data.sim_seed + 1)
        return (_simulated(data.num_train, data.img_size, seeds[0]), _simulated(data.num_val, data.img_size, seeds[1]),
                _simulated(data.num_test, data.img_size, seeds[2]),
                f"simulated scenes (seeds train/val/test {seeds[0]}/{seeds[1]}/{seeds[2]}, {data.img_size} px)")
    arrays, _ = load_simulated(data.path)
    n = len(next(iter(arrays.values())))
    n_test = max(1, int(round(n * data.test_fraction)))
    if n - n_test < 1:
        raise ValueError(f"{data.path}: {n} scenes are too few to split off a test set")
    return ({k: a[: n - n_test] for k, a in arrays.items()}, None, {k: a[n - n_test :] for k, a in arrays.items()},
            f"{data.path} (simulated; test = last {n_test} of {n} scenes)")


def _sim_datasets(data: EvalDataConfig, spec: SensorSpec, band_index: list[int],
                  label_fn: Callable[[Arrays, int], torch.Tensor], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``train``, ``val`` (``None`` for a folder) and ``test`` datasets, the ``source`` line and the
    ``extra`` input specs (simulated arrays of those sensor keys, e.g. ``s1_grd``)."""
    train, val, test, source = _sim_splits(data)
    specs = {key: get_sensor(key, data.stats) for key in extra}
    make = lambda arrays: SimulatedTaskDataset(arrays, spec, band_index, label_fn, source, specs)
    return {"train": make(train), "val": None if val is None else make(val), "test": make(test), "source": source,
            "extra": specs}


class SimulatedTaskDataset(Dataset):
    """Samples of a simulated task: the standardised input and a label made from the arrays.

    Args:
        arrays: simulated arrays (``s2_l1c`` DN and the label arrays), ``N`` first.
        spec: spec the input is read and standardised with.
        band_index: channels of ``s2_l1c`` that make up the input, in ``spec`` order.
        label_fn: ``(arrays, i) -> label`` tensor of scene ``i``.
        source: name for error messages.
        extra: further inputs, array key -> spec (every channel, in spec order; nodata -> 0).
    """

    def __init__(self, arrays: dict[str, np.ndarray], spec: SensorSpec, band_index: list[int],
                 label_fn: Callable[[dict[str, np.ndarray], int], torch.Tensor], source: str,
                 extra: dict[str, SensorSpec] | None = None) -> None:
        self.extra = dict(extra or {})
        for key in (_SIM_INPUT, *self.extra):
            if key not in arrays:
                raise ValueError(f"{source}: has no array {key!r}; it holds {sorted(arrays)}")
        self.arrays, self.spec, self.band_index, self.label_fn, self.source = arrays, spec, band_index, label_fn, source
        self._inputs: dict[str, torch.Tensor | None] = {}

    def __len__(self) -> int:
        return len(self.arrays[_SIM_INPUT])

    def _read(self, key: str) -> tuple[str, SensorSpec, list[int] | slice]:
        """Array key, spec and channels of input ``key`` (the task's sensor or an extra one)."""
        if key == self.spec.key:
            return _SIM_INPUT, self.spec, self.band_index
        return key, self.extra[key], slice(None)

    def _standardised(self, key: str) -> torch.Tensor | None:
        """Every sample's input ``key``, standardised once in blocks and kept (a table evaluates
        many encoders on the same task); ``None`` where that would exceed :data:`INPUT_CACHE_BYTES`."""
        if key not in self._inputs:
            name, spec, channels = self._read(key)
            dn = self.arrays[name]
            if len(dn) * spec.num_channels * int(np.prod(dn.shape[2:])) * 4 > INPUT_CACHE_BYTES:
                self._inputs[key] = None
            else:
                blocks = [model_inputs(spec, torch.from_numpy(np.array(dn[i:i + 64][:, channels])), nodata="mask",
                                       where=f"{self.source}: {name} of samples {i}-{min(i + 64, len(dn)) - 1}")[0]
                          for i in range(0, len(dn), 64)]
                self._inputs[key] = torch.cat(blocks)
        return self._inputs[key]

    def _input(self, key: str, i: int) -> torch.Tensor:
        kept = self._standardised(key)
        if kept is not None:
            return kept[i]
        name, spec, channels = self._read(key)
        raw = torch.from_numpy(np.array(self.arrays[name][i][channels]))
        return model_inputs(spec, raw, nodata="mask", where=f"{self.source}: {name} of sample {i}")[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        try:
            label = self.label_fn(self.arrays, i)
        except KeyError as err:
            raise ValueError(f"{self.source}: sample {i} has no label array {err}; "
                             f"it holds {sorted(self.arrays)}") from None
        sample = {key: self._input(key, i) for key in (self.spec.key, *self.extra)}
        return {**sample, "label": label, "index": torch.tensor(i, dtype=torch.int64)}


INPUT_CACHE_BYTES = 1 << 30
"""Simulated task splits up to this size (float32 inputs) are standardised once and kept (ours)."""


_SIM_INPUT = "s2_l1c"
"""The simulator's optical array (L1C DN); every simulated task's input is made from it."""


def _l1c(data: EvalDataConfig) -> SensorSpec:
    return get_sensor(_SIM_INPUT, data.stats)


def _water_task(data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    """Sen1Floods11-style water segmentation on simulated S2 L1C (13 bands)."""
    spec = _l1c(data)
    classes = ("background", "water", "cloud") if data.cloud == "class" else ("background", "water")

    def label(arrays: dict[str, np.ndarray], i: int) -> torch.Tensor:
        y = torch.from_numpy(np.array(arrays["water"][i])).long()
        cloud = torch.from_numpy(np.array(arrays["cloud"][i])).bool()
        if data.cloud == "ignore":
            y[cloud] = -1
        elif data.cloud == "class":
            y[cloud] = 2
        return y

    return EvalTask(
        name="sen1floods11", kind="segmentation", sensor=spec.key, spec=spec, class_names=classes,
        **_sim_datasets(data, spec, list(range(spec.num_channels)), label, extra), headline="iou_water",
        notes=f"simulated: water = majority class water; cloud pixels: {data.cloud}",
    )


def _multilabel_task(data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    """BigEarthNet-style multi-label land cover on simulated S2 'L2A' (12 bands, no B10).

    The simulator writes L1C only and simulates no atmospheric correction: the L2A input is the
    L1C scene without B10, standardised with the L1C statistics of the same bands, so the task
    exercises the band mapping (B10 missing) but not an L1C/L2A domain gap.
    """
    l1c = _l1c(data)
    l2a = get_sensor("s2_l2a", data.stats)
    l2a = l2a.with_stats({b: l1c.stats[b] for b in l2a.band_names})
    index = l1c.band_index(l2a.band_names)

    def label(arrays: dict[str, np.ndarray], i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(arrays["landcover_presence"][i])).float()

    return EvalTask(
        name="bigearthnet", kind="multilabel", sensor=l2a.key, spec=l2a, class_names=LAND_COVER_CLASSES,
        **_sim_datasets(data, l2a, index, label, extra), headline="map_micro",
        notes="simulated: 6 land-cover presence labels (>= 1 % of the scene); L2A = L1C without B10",
    )


def _srseg_task(data: EvalDataConfig, extra: tuple[str, ...] = ()) -> EvalTask:
    """UrbanSRSeg8-style land cover at 4x the input resolution (simulated ``landcover_hr``)."""
    spec = _l1c(data)

    def label(arrays: dict[str, np.ndarray], i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(arrays["landcover_hr"][i])).long()

    splits = _sim_datasets(data, spec, list(range(spec.num_channels)), label, extra)
    arrays = splits["train"].arrays
    scale = arrays["landcover_hr"].shape[-1] // arrays[_SIM_INPUT].shape[-1]
    return EvalTask(
        name="srseg", kind="segmentation", sensor=spec.key, spec=spec, class_names=LAND_COVER_CLASSES,
        **splits, headline="miou", label_scale=scale,
        notes=f"simulated: 6 land-cover classes on a {scale}x finer grid",
    )


_SIM_EXTRA = ("s1_grd",)
"""Further inputs the simulated tasks can add: the simulator's co-located S1 GRD (dB; NaN in
scenes without S1, which become 0, the standardised mean)."""

register_task("sen1floods11", "simulated", _water_task, _SIM_EXTRA)
register_task("bigearthnet", "simulated", _multilabel_task, _SIM_EXTRA)
register_task("srseg", "simulated", _srseg_task, _SIM_EXTRA)


VAL_SPLIT_SEED = 12345
"""Seed of the permutation that holds out validation samples from a training split (ours; fixed,
so every seed and every encoder of a table sees the same split)."""


def with_validation(task: EvalTask, fraction: float) -> tuple[EvalTask, str]:
    """``task`` with a validation split, and a line saying where it came from.

    A task with its own ``val`` is returned as is. Otherwise ``fraction`` of the training
    samples (at least one), drawn with :data:`VAL_SPLIT_SEED`, become the validation split and
    the rest stay for training; a training split of one sample is used for both (said in the line).
    """
    if task.val is not None:
        return task, "the dataset's validation split"
    n = len(task.train)
    if n < 2:
        return replace(task, val=task.train), "no held-out validation: the training split has 1 sample, reused"
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    train, val = sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
    return (replace(task, train=Subset(task.train, train), val=Subset(task.train, val)),
            f"{n_val} of {n} training samples held out (seed {VAL_SPLIT_SEED})")


def describe(task: EvalTask) -> dict[str, Any]:
    """Task metadata for ``metrics.json``."""
    return {"name": task.name, "kind": task.kind, "sensor": task.sensor, "classes": list(task.class_names),
            "label_scale": task.label_scale, "headline": task.headline, "source": task.source,
            "train_samples": len(task.train), "val_samples": None if task.val is None else len(task.val),
            "test_samples": len(task.test), "notes": task.notes}
