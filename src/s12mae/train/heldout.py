"""The held-out reconstruction loss: a fixed validation set per task, kept out of training.

``data.val_samples`` rows of each array dataset are drawn once with a fixed seed (the same rows
whatever the run seed, so runs of different seeds are compared on the same samples) and removed
from every task's training rows; each task's validation set is its held-out rows. Every
``train.eval_every`` steps the loop asks :func:`held_out_losses` for each task's loss on them,
with masks keyed by a fixed step, so that successive evaluations differ only by the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from s12mae.data import ArrayDataset

__all__ = ["MASK_STEP", "VAL_SEED", "held_out_losses", "held_out_rows", "split_held_out"]

VAL_SEED = 0
"""Seed of the draw of the held-out rows (ours), independent of ``train.seed``."""
MASK_STEP = 0
"""Step that keys the masks of the held-out samples at every evaluation (ours)."""


def held_out_rows(num_rows: int, k: int) -> np.ndarray:
    """The ``k`` held-out rows of a dataset of ``num_rows`` samples, sorted."""
    return np.sort(np.random.default_rng(VAL_SEED).permutation(num_rows)[:k])


def _subset(ds: ArrayDataset, rows: np.ndarray) -> ArrayDataset:
    return ArrayDataset(ds.arrays, ds.sensors, ds.nodata, ds.extra_keys, ds.source, indices=rows,
                        standardise=ds.standardise)


def split_held_out(datasets: dict[str, ArrayDataset], tasks: Sequence[str], val_samples: int,
                   eval_every: int) -> tuple[dict[str, ArrayDataset], dict[str, ArrayDataset]]:
    """Each task's training dataset without the held-out rows, and its validation dataset.

    Args:
        datasets: the array datasets by task (tasks read from shard sets are absent).
        tasks: all tasks of the method.
        val_samples: ``data.val_samples``; 0 returns ``datasets`` unchanged and no validation sets.
        eval_every: ``train.eval_every`` (checked against ``val_samples``).

    Raises:
        ValueError: naming the data source or setting when a split is impossible.
    """
    if eval_every and not val_samples:
        raise ValueError("train.eval_every: the held-out loss needs held-out samples; set data.val_samples > 0")
    if not val_samples:
        return datasets, {}
    shards = [t for t in tasks if t not in datasets]
    if shards:
        raise ValueError(f"data.val_samples: task(s) {shards} read shard sets, which have no held-out split "
                         "(not supported yet); set data.val_samples: 0")
    train, val = {}, {}
    for task, ds in datasets.items():
        num_rows = len(next(iter(ds.arrays.values())))
        held = held_out_rows(num_rows, val_samples)
        is_held = np.isin(ds.indices, held)
        if is_held.all() or not is_held.any():
            what = "no training sample" if is_held.all() else "no held-out sample"
            raise ValueError(f"{ds.source}: data.val_samples={val_samples} leaves task {task!r} {what} "
                             f"({len(ds)} of its {num_rows} samples)")
        train[task], val[task] = _subset(ds, ds.indices[~is_held]), _subset(ds, ds.indices[is_held])
    return train, val


@torch.no_grad()
def held_out_losses(method: Any, val: dict[str, ArrayDataset], batch_size: int, device: torch.device,
                    autocast: AbstractContextManager, step: int,
                    cache: dict[str, list[dict[str, torch.Tensor]]],
                    prepare: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per task: ``{"step", "task", "val_loss", "val_loss/<term>"...}``.

    The loss is normalised and weighted as in training (sums over the whole validation set
    divided by its element counts). ``cache`` keeps the collated CPU batches between calls.
    ``prepare`` maps a task to the loop's ``(cpu_batch, device) -> model batch`` (stored values
    standardised on the device); without it the batches are model inputs already.
    """
    was_training = method.training
    method.eval()
    records = []
    for task, ds in val.items():
        if task not in cache:
            cache[task] = [default_collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))])
                           for s in range(0, len(ds), batch_size)]
        weights = method.term_weights(task)
        sums = torch.zeros(len(weights), device=device)
        dens = torch.zeros(len(weights))
        for cpu_batch in cache[task]:
            if prepare is not None:
                batch = prepare[task](cpu_batch, device)
            else:
                batch = {k: v.to(device) for k, v in cpu_batch.items()}
            counts = method.denominators(batch, task, MASK_STEP)
            dens += torch.stack([counts[t].float().cpu() for t in weights])
            with autocast:
                nums = method(batch, task, MASK_STEP)
            sums += torch.stack([nums[t].float() for t in weights])
        terms = (sums.cpu() / dens.clamp_min(1.0)).tolist()
        records.append({"step": step, "task": task,
                        "val_loss": sum(w * v for w, v in zip(weights.values(), terms)),
                        **{f"val_loss/{t}": v for t, v in zip(weights, terms)}})
    method.train(was_training)
    return records
