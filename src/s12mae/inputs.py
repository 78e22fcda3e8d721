"""Raw sensor values to model inputs: the one home of units, standardisation and the nodata policy.

Every path from stored pixels to the encoder goes through :func:`model_inputs`: the array
dataset (:class:`s12mae.data.ArrayDataset`), the shard stream (:class:`s12mae.shards.ShardStream`)
and the downstream datasets of :mod:`s12mae.evaluation`. It is one torch function on any device
and on one sample ``(C, H, W)`` or a batch ``(N, C, H, W)`` alike, so it can run in a data worker
on a decoded sample or on the training device on a whole batch of stored dtypes.

Steps: file values -> physical units (:meth:`SensorSpec.to_units`; the nodata value becomes NaN)
-> standardised (:meth:`SensorSpec.normalize`, the spec's band statistics) -> valid mask (finite
and, where the source has one, its own valid mask) -> nodata policy:

* ``error``: any invalid value is a ``ValueError`` naming the sample (or the batch rows), the
  sensor and the count;
* ``mask``: invalid values become 0 and the caller keeps the mask (``valid.<sensor>``) so the loss
  leaves them out.

:class:`SensorSpec`'s methods define the arithmetic; :func:`model_inputs` runs the same float32
ops, in place, a cache-sized chunk at a time (:class:`_Standardiser`), and gives their bits
(``tests/test_inputs_fused.py`` holds the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from s12mae.sensors import SensorSpec

__all__ = ["NodataPolicy", "model_inputs"]

NodataPolicy = Literal["error", "mask"]
"""What to do with nodata and non-finite values: stop (``error``) or fill and mask (``mask``)."""


def model_inputs(spec: SensorSpec, raw: torch.Tensor, valid: torch.Tensor | None = None, *,
                 nodata: NodataPolicy = "error", where: str = "sample",
                 names: Sequence[object] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """File values of one sensor to standardised model inputs and their valid mask.

    Args:
        spec: the sensor: band order, file units -> physical units, band statistics.
        raw: ``(C, H, W)`` or ``(N, C, H, W)`` file values in their stored dtype (int16/uint16 DN,
            float32/float16 dB, ...), on any device; channels in ``spec`` band order.
        valid: bool mask of the same shape from the source (a reader's or a shard's stored mask:
            it may know more than the nodata value, e.g. pixels outside a warped footprint);
            ``None`` trusts every finite value.
        nodata: ``error`` raises on any invalid value; ``mask`` fills invalid values with 0.
        where: names the sample (or batch) in error messages, e.g. ``"<file>: sample 5"``.
        names: for a batch, the ``N`` sample names (e.g. global indices) that an error lists;
            default: the row numbers.

    Returns:
        ``(x, ok)``: ``x`` float32 of ``raw``'s shape, standardised (0 where not ``ok`` under
        ``mask``); ``ok`` bool of the same shape, the pixels that count (finite and ``valid``).

    Raises:
        ValueError: ``raw`` is not ``(C, H, W)``/``(N, C, H, W)`` with the spec's channels,
            ``valid`` has another shape, or (under ``error``) a value is nodata or non-finite.
    """
    if raw.ndim not in (3, 4) or raw.shape[-3] != spec.num_channels:
        raise ValueError(f"{where}: {spec.key} has shape {tuple(raw.shape)}, the sensor spec expects "
                         f"([N,] {spec.num_channels}, H, W) with bands {spec.band_names}")
    if valid is not None and valid.shape != raw.shape:
        raise ValueError(f"{where}: valid.{spec.key} has shape {tuple(valid.shape)}, not {tuple(raw.shape)}")
    if nodata not in ("error", "mask"):
        raise ValueError(f"nodata policy {nodata!r}: choose 'error' or 'mask'")
    x = torch.empty(raw.shape, dtype=torch.float32, device=raw.device)
    ok = torch.empty(raw.shape, dtype=torch.bool, device=raw.device)
    if raw.numel():
        _Standardiser(spec, raw, nodata == "mask").run(raw, valid, x, ok)
    # ``all`` on bool runs ~10x slower on a CPU than the byte minimum (ours, measured)
    if nodata == "error" and ok.numel() and not bool(ok.view(torch.uint8).amin()):
        raise ValueError(_nodata_message(spec.key, ok, where, names))
    return x, ok


class _Standardiser:
    """:func:`model_inputs`'s arithmetic, a chunk at a time, with only fast kernels.

    The float32 values are those of ``spec.normalize(spec.to_units(raw))`` bit for bit: the same
    ops in the same order (``* dn_scale``, ``+ dn_offset``, ``- mean``, ``/ std``), in place on a
    chunk that stays in cache. The mask avoids torch's slow CPU kernels (bool-valued comparisons,
    ``where``, ``isfinite``: 0.5-1.5 ns an element against 0.03-0.1 for arithmetic and casts;
    ours, measured): the nodata value 0 of integer DN is a cast to bool, non-finite values are
    where ``x - x`` is nonzero, and ``mask`` zeroes invalid values by a bitwise and of the float
    bits with 0 / ~0 (exactly ``torch.where(ok, x, 0.0)``).
    """

    def __init__(self, spec: SensorSpec, raw: torch.Tensor, fill: bool) -> None:
        self.spec, self.fill = spec, fill
        self.size = raw.shape[-1] * raw.shape[-2]
        rows = raw.numel() // max(self.size, 1)
        if not spec.stats:
            raise ValueError(f"sensor {spec.key!r} has no band statistics loaded")
        stats = [spec.stats[b] for b in spec.band_names]
        # per row of the (N * C, H * W) view; float32 like SensorSpec.normalize's statistics
        self.mean = torch.tensor([s.mean for s in stats], device=raw.device).repeat(rows // spec.num_channels)
        self.std = torch.tensor([s.std for s in stats], device=raw.device).repeat(rows // spec.num_channels)
        self.equals_nodata = _nodata_test(raw.dtype, spec.nodata)
        self.check_finite = raw.is_floating_point() or not _finite_for(raw.dtype, spec)
        # a GPU takes the tensor whole; a CPU a chunk that fits in its L2 cache with the scratch
        chunk = raw.numel() if raw.device.type != "cpu" else _CPU_CHUNK
        self.cols = max(1, min(self.size, chunk))
        self.rows = max(1, chunk // self.cols)
        shape, dev = (min(self.rows, rows), self.cols), raw.device
        self.tmp = torch.empty(shape, device=dev) if self.check_finite else None
        self.bad = torch.empty(shape, dtype=torch.bool, device=dev) if self.check_finite else None
        self.bits = torch.empty(shape, dtype=torch.int32, device=dev) if fill else None

    def run(self, raw: torch.Tensor, valid: torch.Tensor | None, x: torch.Tensor, ok: torch.Tensor) -> None:
        """Fill ``x`` and ``ok`` (``raw``'s shape, float32 / bool) from ``raw`` and ``valid``."""
        raw2, x2, ok2 = raw.reshape(-1, self.size), x.view(-1, self.size), ok.view(-1, self.size)
        valid2 = None if valid is None else valid.reshape(-1, self.size)
        for r in range(0, raw2.shape[0], self.rows):
            for c in range(0, self.size, self.cols):
                at = (slice(r, r + self.rows), slice(c, c + self.cols))
                self._chunk(raw2[at], None if valid2 is None else valid2[at], x2[at], ok2[at], at[0])

    def _chunk(self, raw: torch.Tensor, valid: torch.Tensor | None, x: torch.Tensor, ok: torch.Tensor,
               rows: slice) -> None:
        spec = self.spec
        x.copy_(raw)  # = raw.float()
        x.mul_(spec.dn_scale).add_(spec.dn_offset)  # SensorSpec.to_units
        x.sub_(self.mean[rows, None]).div_(self.std[rows, None])  # SensorSpec.normalize
        if self.equals_nodata is None:
            ok.fill_(True)
        elif self.equals_nodata == 0 and not raw.is_floating_point():
            ok.copy_(raw)  # integer DN: nonzero <=> not the nodata value 0
        else:
            torch.ne(raw, self.equals_nodata, out=ok)
        if self.check_finite:
            tmp, bad = self.tmp[: x.shape[0], : x.shape[1]], self.bad[: x.shape[0], : x.shape[1]]
            bad.copy_(torch.sub(x, x, out=tmp))  # x - x: 0 where finite, NaN where NaN or +-inf
            ok &= bad.bitwise_not_()
        if valid is not None:
            ok &= valid.to(device=ok.device, dtype=torch.bool)
        if self.fill:
            bits = self.bits[: x.shape[0], : x.shape[1]]
            x.view(torch.int32).bitwise_and_(bits.copy_(ok).neg_())  # ok: all bits kept; else +0.0


def _nodata_test(dtype: torch.dtype, nodata: float) -> float | int | None:
    """The value to compare stored values with, or ``None`` where none can equal ``nodata``.

    A NaN nodata value is left to the finite check; integer DN are compared as integers
    (exact for every integer dtype, where a float32 comparison rounds int32/int64 values).
    """
    if math.isnan(nodata):
        return None
    if dtype.is_floating_point:
        return nodata
    info = torch.iinfo(dtype) if dtype != torch.bool else None
    lo, hi = (info.min, info.max) if info else (0, 1)
    return int(nodata) if nodata.is_integer() and lo <= nodata <= hi else None


def _finite_for(dtype: torch.dtype, spec: SensorSpec) -> bool:
    """Whether every integer of ``dtype`` standardises to a finite float32 (no check needed)."""
    if dtype.is_floating_point:
        return False
    big = 1.0 if dtype == torch.bool else float(max(-torch.iinfo(dtype).min, torch.iinfo(dtype).max))
    units = big * abs(spec.dn_scale) + abs(spec.dn_offset)
    worst = max((units + abs(s.mean)) / s.std for s in spec.stats.values())
    return worst < torch.finfo(torch.float32).max / 2  # margin for float32 rounding on the way


_CPU_CHUNK = 1 << 17
"""Elements per chunk on a CPU (ours, measured on a 2-core EPYC, 1 MB L2 a core: 2^17-2^18 run
alike, 2^15 ~1.5x and a whole 32-sample batch ~2.5x slower)."""


def _nodata_message(key: str, ok: torch.Tensor, where: str,
                    names: Sequence[object] | torch.Tensor | None) -> str:
    count = int((~ok).sum())
    fix = "set data.nodata=mask to leave them out of the loss"
    if ok.ndim == 3:
        return f"{where} has {count} nodata/non-finite value(s) in {key}; {fix}"
    rows = (~ok).flatten(1).any(1).nonzero().flatten().tolist()
    if isinstance(names, torch.Tensor):
        names = names.tolist()
    bad = [names[r] for r in rows] if names is not None else rows
    return f"{where}: sample(s) {bad[:10]} have {count} nodata/non-finite value(s) in {key}; {fix}"
