"""Every rank stops with the same error when one rank fails.

Under data parallelism a rank that raises (a nodata error in its share of the batch, a bad
sample, a full disk on rank 0) would leave the others waiting in their next collective until the
backend's timeout. The loop therefore runs the parts that may fail on one rank only inside
:meth:`RankErrors.caught` and then calls :meth:`RankErrors.raise_if_any`, a collective that every
rank reaches: a one-element all-reduce of a failure flag, and, only when some rank failed, an
all-gather of the messages. Every rank then raises the same error (the type and message of the
lowest failing rank, naming it). In one process both are no-ops and errors propagate as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = ["RankErrors"]

# error types re-raised as themselves on every rank (the CLI turns them into one-line messages)
_KNOWN = {t.__name__: t for t in (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError, OSError)}


class RankErrors:
    """Collects this rank's error and agrees on failure with the other ranks.

    Args:
        world: number of ranks.
        device: device of the flag tensor (the backend's: CUDA for NCCL, CPU for gloo).
    """

    def __init__(self, world: int, device: torch.device | str = "cpu") -> None:
        self.world, self.device = world, torch.device(device)
        self.error: BaseException | None = None

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        """Hold an exception raised in the block until :meth:`raise_if_any` (several ranks only)."""
        if self.world == 1:
            yield
            return
        try:
            yield
        except Exception as err:  # noqa: BLE001 - re-raised by raise_if_any on every rank
            if self.error is None:
                self.error = err

    def raise_if_any(self) -> None:
        """Collective: raise the same error on every rank if any rank caught one."""
        if self.world == 1:
            return
        flag = torch.tensor([0.0 if self.error is None else 1.0], device=self.device)
        dist.all_reduce(flag)
        if flag.item() == 0:
            return
        mine = None if self.error is None else (type(self.error).__name__, str(self.error))
        gathered: list[tuple[str, str] | None] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        rank, (kind, message) = next((r, m) for r, m in enumerate(gathered) if m is not None)
        own, self.error = self.error, None
        error_type = _KNOWN.get(kind, RuntimeError)
        raise error_type(f"{message} (on rank {rank} of {self.world}; every rank stopped)") from own
