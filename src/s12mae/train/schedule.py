"""Task schedules: which task each optimizer step trains.

Alternating gradient descent (AGD) trains exactly one task per optimizer step. The schedule is a
pure function of (seed, step), so every DDP rank picks the same task and a resumed run continues
the same sequence. Each task also keeps its own step counter (how many earlier steps trained it),
which keys that task's data order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from s12mae.rng import keyed_uniform

__all__ = ["TaskSchedule"]

STREAM_SCHEDULE = 3


class TaskSchedule:
    """Task of every step.

    Args:
        tasks: the method's tasks.
        sequence: repeating explicit sequence (e.g. ``["mae", "mae", "aux"]``).
        weights: relative frequencies; each step draws its task from keyed noise.
        seed: run seed (used by ``weights``).

    With neither ``sequence`` nor ``weights`` the tasks strictly alternate in ``tasks`` order.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        sequence: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.tasks = list(tasks)
        named = list(sequence or []) + list(weights or {})
        unknown = sorted(set(named) - set(self.tasks))
        if unknown:
            raise ValueError(f"schedule names unknown task(s) {unknown}; this method's tasks are {self.tasks}")
        if sequence is not None and not sequence:
            raise ValueError("schedule.sequence is empty")
        if weights is not None and (any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
            raise ValueError(f"schedule.weights must be >= 0 with a positive sum, got {dict(weights)}")
        self.sequence = list(sequence) if sequence else None
        self.weights = dict(weights) if weights and not sequence else None
        self.seed = seed
        self._cache = np.zeros(0, dtype=np.int64)

    def assignments(self, stop: int) -> np.ndarray:
        """Task ids (positions in ``tasks``) of steps ``0 .. stop-1``."""
        steps = np.arange(stop)
        if self.sequence is not None:
            ids = np.array([self.tasks.index(t) for t in self.sequence])
            return ids[steps % len(ids)]
        if self.weights is None:
            return steps % len(self.tasks)
        w = np.array([self.weights.get(t, 0.0) for t in self.tasks], dtype=np.float64)
        edges = np.cumsum(w / w.sum())
        u = keyed_uniform(self.seed, STREAM_SCHEDULE, 0, torch.arange(stop), 1)[:, 0].double().numpy()
        return np.minimum(np.searchsorted(edges, u, side="right"), len(self.tasks) - 1)

    def task_at(self, step: int) -> str:
        if step >= len(self._cache):  # grow geometrically: O(1) amortised per step
            self._cache = self.assignments(max(step + 1, 2 * len(self._cache), 1024))
        return self.tasks[int(self._cache[step])]

    def task_steps(self, start: int, stop: int) -> dict[str, list[int]]:
        """For each task, its task-local step numbers for the global steps in ``[start, stop)``."""
        ids = self.assignments(stop)
        out: dict[str, list[int]] = {}
        for i, task in enumerate(self.tasks):
            local = np.cumsum(ids == i) - 1  # task-local index at each step where it runs
            out[task] = local[start:][ids[start:] == i].tolist()
        return out
