"""Sentinel-2 metadata the readers share: the +1000 DN offset of processing baseline 04.00 (from
metadata, the baseline, the date, or the data's own floor as evidence), canonical band names, and
acquisition times from file tags (design note 9)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from s12mae.times import parse_time

__all__ = ["BASELINE_04_DATE", "BASELINE_OFFSET_DN", "OFFSET_FLOOR_DN", "OffsetSuspectedWarning", "baseline_offset",
           "canonical_band", "is_band_name", "offset_evidence", "time_from_tags"]

BASELINE_04_DATE = datetime(2022, 1, 25, tzinfo=UTC)
"""First day of Sentinel-2 processing baseline 04.00, which adds +1000 DN to L1C and L2A."""
BASELINE_OFFSET_DN = 1000
OFFSET_FLOOR_DN = 950.0
"""(ours) A Sentinel-2 layer whose darkest band has its 1st percentile at or above this many DN is
suspected of carrying the +1000 DN offset: reflectance x 10000 + 1000 can only go below 1000 for
negative reflectance, while without the offset the darkest band (B10 cirrus for L1C, about 10-60
DN on the shared TerraMesh scenes; blue, SWIR or water for L2A) sits far lower."""
OFFSET_FLOOR_PERCENTILE = 1.0  # (ours) a low percentile, not the minimum: robust to a few dark pixels
_OFFSET_CHECK_PIXELS = 1 << 20  # (ours) a larger layer is checked on a regular subsample of about this size
_OFFSET_KEYS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
_BASELINE_KEYS = ("PROCESSING_BASELINE", "S2:PROCESSING_BASELINE")
_PRODUCT_KEYS = ("PRODUCT_ID", "TILE_SOURCE", "S2:PRODUCT_URI")
_TIME_KEYS = ("DATETIME", "ACQUISITION_TIME", "ACQUISITION_DATE", "SENSING_TIME", "SYSTEM:TIME_START")
_BAND_RE = re.compile(r"^B0?(\d{1,2})(A?)$", re.IGNORECASE)


def time_from_tags(tags: Mapping[str, Any]) -> datetime | None:
    """The acquisition time named by the first time-like tag (``DATETIME``, ``SENSING_TIME``, ...)."""
    return next((t for k, v in tags.items() if str(k).upper() in _TIME_KEYS and (t := parse_time(v))), None)


class OffsetSuspectedWarning(UserWarning):
    """A Sentinel-2 layer looks offset by +1000 DN although no metadata or date says so."""


def offset_evidence(dn: np.ndarray, bands: Sequence[str]) -> dict[str, Any]:
    """The data's case for the baseline-04.00 offset: the floor of the darkest band.

    Args:
        dn: ``(C, H, W)`` S2 DN as stored (no offset removed), NaN where not valid.
        bands: the ``C`` band names.

    Returns:
        ``{"suspected", "floor_dn", "band", "percentile", "threshold_dn"}``: ``floor_dn`` is the
        smallest per-band ``percentile`` over valid pixels (``None`` without valid pixels), and
        ``suspected`` says whether it reaches :data:`OFFSET_FLOOR_DN`.
    """
    step = max(1, math.ceil(math.sqrt(dn.shape[-1] * dn.shape[-2] / _OFFSET_CHECK_PIXELS)))
    floors = {
        name: float(np.percentile(v, OFFSET_FLOOR_PERCENTILE))
        for name, band in zip(bands, dn[:, ::step, ::step], strict=True)
        if (v := band[np.isfinite(band)]).size
    }
    band = min(floors, key=floors.__getitem__) if floors else None
    floor = None if band is None else round(floors[band], 1)
    return {
        "suspected": floor is not None and floor >= OFFSET_FLOOR_DN,
        "floor_dn": floor,
        "band": band,
        "percentile": OFFSET_FLOOR_PERCENTILE,
        "threshold_dn": OFFSET_FLOOR_DN,
    }


def is_band_name(name: str) -> bool:
    """Whether ``name`` is a Sentinel-2 band name (``B1``, ``B01``, ``b8a``)."""
    return _BAND_RE.match(name) is not None


def canonical_band(name: str) -> str:
    """Layout band name to the canonical one: ``B1`` -> ``B01``, ``b8a`` -> ``B8A``, ``vv`` -> ``VV``."""
    name = name.strip()
    m = _BAND_RE.match(name)
    if m is None:
        return name.upper()
    number, suffix = int(m.group(1)), m.group(2).upper()
    return f"B{number}A" if suffix else f"B{number:02d}"


def baseline_offset(metadata: Mapping[str, Any], band: str, time: datetime | None) -> tuple[int, str]:
    """DN offset to remove from one Sentinel-2 band, and the rule that decided it.

    In order: an explicit ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` (scalar or per band, e.g.
    ``BOA_ADD_OFFSET_B2``; ESA writes -1000, we remove 1000) -> rule ``"metadata"``; a processing
    baseline (``PROCESSING_BASELINE`` or ``_Nxxyy_`` in ``PRODUCT_ID``/``tile_source``) >= 04.00
    -> ``"baseline"``; an acquisition on or after 2022-01-25 -> ``"date"``; else 0 with
    ``"unknown"`` (no time, no metadata: files are taken as they are).

    Args:
        metadata: key/values from GeoTIFF tags and sidecar files (keys compared case-insensitively).
        band: canonical band name (``B02``).
        time: acquisition time, if known.
    """
    md = {str(k).upper(): v for k, v in metadata.items()}
    for key in _OFFSET_KEYS:
        per_band = {
            canonical_band(k[len(key) :].lstrip("_")): v
            for k, v in md.items()
            if k.startswith(key) and k != key
        }
        value = per_band.get(band, md.get(key))
        if value is not None:
            return int(round(abs(float(value)))), "metadata"
    baseline: float | None = None
    for key in _BASELINE_KEYS:
        if md.get(key) not in (None, ""):
            baseline = float(md[key])
            break
    if baseline is None:
        for key in _PRODUCT_KEYS:
            m = re.search(r"_N(\d{2})(\d{2})_", str(md.get(key, "")))
            if m and m.group(1) != "99":  # N9999 marks reprocessed/fake baselines (reBEN)
                baseline = int(m.group(1)) + int(m.group(2)) / 100
                break
    if baseline is not None:
        return (BASELINE_OFFSET_DN if baseline >= 4.0 else 0), "baseline"
    if time is not None:
        return (BASELINE_OFFSET_DN if time >= BASELINE_04_DATE else 0), "date"
    return 0, "unknown"
