"""Datasets, the step-keyed batch order of pretraining and the batch's way to the device.

A sample is a ``dict[str, Tensor]`` keyed by sensor (standardised ``(C, H, W)`` float32), plus
``"index"`` (its global index in the dataset) and, under the ``mask`` nodata policy,
``"valid.<sensor>"`` bool maps. Training asks for *stored* samples instead (``standardise=False``:
file values in their stored dtype, int16/uint16/float16/float32, and the source's valid mask
where it has one) and standardises whole batches on the training device after the copy
(:func:`to_device`, :func:`model_batch`): a data worker then only reads and decodes, and the
host-to-device copy moves half the bytes of float32. The batch order is a pure function of (seed, task step): the
global batch of a step is a slice of a per-epoch permutation, each rank takes its contiguous
share and each micro-batch a slice of that, so resuming at step ``s`` needs nothing but ``s`` and
1 process or N ranks see the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from s12mae.inputs import NodataPolicy, model_inputs
from s12mae.sensors import SensorSpec, get_sensor
from s12mae.simulate import load_simulated

__all__ = ["ArrayDataset", "StepOrder", "available_rows", "load_arrays", "model_batch", "task_loader",
           "to_device"]


class ArrayDataset(Dataset):
    """Samples from arrays with a leading sample axis (in memory or memory-mapped).

    Args:
        arrays: ``{key: (N, ...)}``; sensor keys hold file values (DN), other keys (labels) are
            passed through as tensors.
        sensors: specs of the sensor keys to serve (others in ``arrays`` are served as-is only if
            listed in ``extra_keys``).
        nodata: ``error`` raises on nodata/non-finite values naming the sample; ``mask`` fills
            them with 0 and adds ``valid.<sensor>`` (see :func:`s12mae.inputs.model_inputs`).
        extra_keys: non-sensor arrays to include (labels).
        source: name of the data source for error messages.
        indices: the rows of ``arrays`` this dataset serves (default: all); ``"index"`` stays the
            row number, so masks keyed by it do not depend on the subset.
        standardise: serve model inputs (default); ``False`` serves the stored values
            ``(C, H, W)`` in the arrays' dtype, to be standardised per batch by
            :func:`model_batch` (``nodata`` then applies there).
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        sensors: Sequence[SensorSpec],
        nodata: NodataPolicy = "error",
        extra_keys: Sequence[str] = (),
        source: str = "dataset",
        indices: Sequence[int] | np.ndarray | None = None,
        standardise: bool = True,
    ) -> None:
        missing = [s.key for s in sensors if s.key not in arrays] + [k for k in extra_keys if k not in arrays]
        if missing:
            raise ValueError(f"{source}: has no array(s) {missing}; it holds {sorted(arrays)}")
        lengths = {k: len(arrays[k]) for k in [s.key for s in sensors] + list(extra_keys)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{source}: arrays disagree on the number of samples: {lengths}")
        for spec in sensors:
            shape = arrays[spec.key].shape
            if len(shape) != 4 or shape[1] != spec.num_channels:
                raise ValueError(
                    f"{source}: {spec.key} has shape {shape}, expected (N, {spec.num_channels}, H, W) "
                    f"with bands {spec.band_names}"
                )
        self.arrays = arrays
        self.sensors = list(sensors)
        self.nodata = nodata
        self.extra_keys = list(extra_keys)
        self.source = source
        self.standardise = standardise
        rows = next(iter(lengths.values()))
        self.indices = np.arange(rows) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = int(self.indices[position])
        sample: dict[str, torch.Tensor] = {"index": torch.tensor(index, dtype=torch.int64)}
        for spec in self.sensors:
            raw = torch.from_numpy(np.array(self.arrays[spec.key][index]))
            if not self.standardise:
                sample[spec.key] = raw
                continue
            x, ok = model_inputs(spec, raw, nodata=self.nodata, where=f"{self.source}: sample {index}")
            if self.nodata == "mask":
                sample[f"valid.{spec.key}"] = ok
            sample[spec.key] = x
        for key in self.extra_keys:
            sample[key] = torch.from_numpy(np.array(self.arrays[key][index]))
        return sample


def available_rows(arrays: dict[str, np.ndarray], sensors: Sequence[str]) -> np.ndarray:
    """Rows where every sensor in ``sensors`` is present (``available.<sensor>`` arrays, if any).

    This is how each task gets its own dataset: the MAE task takes every S2 image, a paired
    task only the rows that also have S1.
    """
    rows = len(next(iter(arrays.values())))
    ok = np.ones(rows, dtype=bool)
    for key in sensors:
        flag = arrays.get(f"available.{key}")
        if flag is not None:
            ok &= np.asarray(flag).astype(bool)
    return np.flatnonzero(ok)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map a dataset folder written by ``s12mae simulate``."""
    arrays, _ = load_simulated(path)
    return arrays


class StepOrder:
    """Global batch of every step: slices of per-epoch permutations of ``range(num_samples)``.

    Args:
        num_samples: dataset size.
        batch_size: global batch per step.
        seed: run seed; the permutation of epoch ``e`` is seeded by ``(seed, e)``.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._perms[epoch]

    def global_batch(self, step: int) -> np.ndarray:
        """Dataset indices of the whole batch of (task) step ``step``."""
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.num_samples)
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[list[int]]:
        """This rank's micro-batches of step ``step``."""
        share = self.batch_size // world
        mine = self.global_batch(step)[rank * share : (rank + 1) * share]
        return [mine[i : i + micro].tolist() for i in range(0, share, micro)]


class _StepBatchSampler:
    """Yields this rank's micro-batches for the given (task-local) steps, in order."""

    def __init__(self, order: StepOrder, steps: Sequence[int], rank: int, world: int, micro: int) -> None:
        self.order, self.steps, self.rank, self.world, self.micro = order, steps, rank, world, micro

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            yield from self.order.micro_batches(step, self.rank, self.world, self.micro)

    def __len__(self) -> int:
        return len(self.steps) * (self.order.batch_size // self.world // self.micro)


def task_loader(
    dataset: Dataset,
    task_steps: Sequence[int],
    batch_size: int,
    micro_batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Loader of one task's micro-batches for its task-local steps ``task_steps``.

    ``pin_memory``: page-locked batches, so that a ``non_blocking`` copy to a GPU overlaps the
    step (default: when CUDA is available). Workers are persistent: the loader is iterated once,
    over the whole run, and its workers keep their prefetch queues between tasks' turns.
    """
    order = StepOrder(len(dataset), batch_size, seed)
    sampler = _StepBatchSampler(order, task_steps, rank, world, micro_batch_size)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


def sensor_specs(keys: Sequence[str], stats: str | None) -> list[SensorSpec]:
    """Specs of ``keys`` with statistics from ``stats`` (or the shipped defaults)."""
    return [get_sensor(k, stats) for k in keys]


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on ``device``; asynchronous from pinned memory to a GPU."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_batch(batch: Mapping[str, torch.Tensor], sensors: Sequence[SensorSpec], nodata: NodataPolicy,
                where: str) -> dict[str, torch.Tensor]:
    """A batch of stored values to model inputs, on the batch's device: one
    :func:`s12mae.inputs.model_inputs` call per sensor over the whole batch.

    Args:
        batch: ``{sensor: (N, C, H, W) stored dtype, ["valid.<sensor>": (N, C, H, W) bool],
            "index": (N,), labels...}`` as served with ``standardise=False``.
        sensors: specs of the sensor keys to standardise.
        nodata: ``error`` raises naming the samples (their ``index``); ``mask`` fills invalid
            values with 0 and sets ``valid.<sensor>`` to the pixels that count.
        where: names the data source in an error, e.g. ``"<path>: task 'mae'"``.

    Returns:
        The batch with standardised float32 sensors; ``valid.<sensor>`` only under ``mask``;
        other keys unchanged.
    """
    out = dict(batch)
    for spec in sensors:
        valid = out.pop(f"valid.{spec.key}", None)
        x, ok = model_inputs(spec, batch[spec.key], valid, nodata=nodata, where=where, names=batch["index"])
        out[spec.key] = x
        if nodata == "mask":
            out[f"valid.{spec.key}"] = ok
    return out
