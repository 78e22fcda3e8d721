"""Counter-based random numbers keyed by (seed, stream, step, sample index).

Masks and mixes are drawn from a hash of the key rather than from a process's generator, so a
sample gets the same mask at the same step whether it is trained in one process, in N DDP
ranks, in another micro-batch, or after a resume. The hash is SplitMix64 (Steele et al. 2014)
computed with int64 tensor ops, so it runs on any device and gives identical bits on each.
"""

from __future__ import annotations

import torch

__all__ = ["keyed_uniform"]

_M64 = 1 << 64


def _i64(v: int) -> int:
    """Two's-complement int64 view of an unsigned 64-bit constant."""
    return v - _M64 if v >= 1 << 63 else v


_GAMMA = _i64(0x9E3779B97F4A7C15)
_MUL1 = _i64(0xBF58476D1CE4E5B9)
_MUL2 = _i64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x + _GAMMA
    x = (x ^ _srl(x, 30)) * _MUL1
    x = (x ^ _srl(x, 27)) * _MUL2
    return x ^ _srl(x, 31)


def keyed_uniform(seed: int, stream: int, step: int, index: torch.Tensor, n: int) -> torch.Tensor:
    """Uniform floats in [0, 1) that depend only on the key.

    Args:
        seed: run seed.
        stream: purpose of the numbers (one per mask/mix kind), so purposes never share bits.
        step: optimizer step.
        index: ``(N,)`` global sample indices (int64), on the device the result should be on.
        n: numbers per sample.

    Returns:
        ``(N, n)`` float32 with 24 random bits each.
    """
    index = index.to(torch.int64)
    key = torch.full_like(index, _i64(seed % _M64))
    for part in (stream, step):
        key = _mix(key ^ _i64(part % _M64))
    key = _mix(key ^ index).unsqueeze(1)
    counters = torch.arange(n, device=index.device, dtype=torch.int64).unsqueeze(0)
    bits = _mix(key + counters * _GAMMA)
    return _srl(bits, 40).to(torch.float32) * (1.0 / (1 << 24))
