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
"""

from __future__ import annotations

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
    x = spec.normalize(spec.to_units(raw))
    ok = torch.isfinite(x)
    if valid is not None:
        if valid.shape != raw.shape:
            raise ValueError(f"{where}: valid.{spec.key} has shape {tuple(valid.shape)}, "
                             f"not {tuple(raw.shape)}")
        ok &= valid.to(device=ok.device, dtype=torch.bool)
    if nodata == "mask":
        return torch.where(ok, x, 0.0), ok
    if nodata != "error":
        raise ValueError(f"nodata policy {nodata!r}: choose 'error' or 'mask'")
    if not bool(ok.all()):
        raise ValueError(_nodata_message(spec.key, ok, where, names))
    return x, ok


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
