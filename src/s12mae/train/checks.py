"""Steps that train on nothing: a loss term whose target has no valid element in the global batch.

With ``data.nodata: mask`` a batch whose every target pixel is nodata (all-nodata chips, an S1
swath gap under every pair) has loss 0 and gradient 0: the run would go on, "converge" at loss
0.0 and export an untrained encoder. The loop counts such steps over the global batch (the
denominators are all-reduced, so every rank sees the same count) and stops with an error once
there are more than ``data.max_empty_steps``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = ["EmptyTargets"]


class EmptyTargets:
    """Counts steps with an empty loss term and raises past ``limit`` of them.

    Args:
        limit: empty steps a run tolerates (``data.max_empty_steps``); each is warned about.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def check(self, step: int, task: str, terms: Sequence[str], counts: Sequence[float]) -> None:
        """Record step ``step``: ``counts`` are the global valid target elements of ``terms``."""
        empty = [t for t, n in zip(terms, counts) if n == 0]
        if not empty:
            return
        self.count += 1
        what = (f"step {step} (task {task!r}): no valid target element for {empty} in the whole batch "
                "(every sample is nodata where the loss counts)")
        if self.count > self.limit:
            raise ValueError(f"{what}; {self.count} such step(s), more than data.max_empty_steps="
                             f"{self.limit}. Drop all-nodata chips (shards.min_valid_per_sensor) or "
                             "raise data.max_empty_steps")
        warnings.warn(f"{what}; {self.count} of {self.limit} tolerated (data.max_empty_steps)", stacklevel=2)
