"""What every pretraining method gives the training loop.

A method is an ``nn.Module`` with an ``encoder`` and one or more named *tasks* (MAE has one;
AuxMAE two, trained by alternating gradient descent). The loop never knows which method it
trains. For each optimizer step it asks the schedule for a task, then per micro-batch:

1. ``denominators(batch, task, step)``: the number of target elements each loss term counts
   (masked, valid pixels), computed without running the model;
2. ``forward(batch, task, step)``: the *sums* of squared errors per loss term.

Optionally, ``prepare_export()`` readies ``encoder`` for export at the end of a run.

The loop all-reduces the denominators over micro-batches and ranks first, so the loss of a step
is ``sum_j w_j * sum(num_j) / sum(den_j)`` over the whole global batch: the same number, and the
same gradient, for 1 process or N ranks and for any accumulation, with or without nodata.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from s12mae.models.vit import ViTEncoder

__all__ = ["Batch", "PretrainMethod", "masked_sq_error"]

Batch = dict[str, torch.Tensor]
"""A sample batch: sensor key -> ``(N, C, H, W)`` standardised image, ``"index"`` -> ``(N,)``
global sample indices, and optionally ``"valid.<sensor>"`` -> ``(N, C, H, W)`` bool nodata masks."""


class PretrainMethod(Protocol):
    """Interface of a pretraining method (see the module docstring)."""

    encoder: ViTEncoder
    tasks: tuple[str, ...]

    def term_weights(self, task: str) -> dict[str, float]:
        """Loss terms of ``task`` and their weights ``w_j``."""
        ...

    def denominators(self, batch: Batch, task: str, step: int) -> dict[str, torch.Tensor]:
        """Scalar element count per loss term of this batch."""
        ...

    def forward(self, batch: Batch, task: str, step: int) -> dict[str, torch.Tensor]:
        """Scalar sum of squared errors per loss term of this batch."""
        ...

    def task_sensors(self, task: str) -> list[str]:
        """Sensor keys a batch of ``task`` must hold."""
        ...

    def visualize(self, batch: Batch, task: str, step: int) -> dict[str, Any]:
        """Title and ``(label, sensor, (N, C, H, W))`` panels for a picture (see ``s12mae.viz``)."""
        ...

    def parameters(self, recurse: bool = True) -> Any: ...

    def named_parameters(self, *args: Any, **kwargs: Any) -> Any: ...


def masked_sq_error(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors and element count where ``weight`` is 1.

    Args:
        pred: ``(N, L, K)`` predictions.
        target: ``(N, L, K)`` targets (non-finite where invalid is fine if weight is 0 there).
        weight: ``(N, L, K)`` 0/1 weights (masked patch x valid pixel).

    Returns:
        ``(sum, count)`` scalars, float32.
    """
    diff = (pred.float() - torch.nan_to_num(target.float())) ** 2
    return (diff * weight).sum(), weight.sum(dtype=torch.float32)


def check_sensor_input(module: nn.Module, batch: Batch, key: str) -> torch.Tensor:
    """The batch's tensor for sensor ``key``, with a clear error if it is absent."""
    if key not in batch:
        raise KeyError(
            f"{type(module).__name__} needs sensor {key!r} in the batch; it holds {sorted(batch)}"
        )
    return batch[key]
