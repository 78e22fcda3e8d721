"""Acquisition times: one rule for reading a time, used by the readers and by pairing.

The rule (:func:`parse_time` for one value, :func:`times_to_us` for a column; both give the same
instant, to the microsecond, for every value):

1. A ``datetime`` is taken as it is; a naive one (and a ``date``, at midnight) is UTC.
2. A number is an epoch time whose unit is read from its magnitude ``|v|``: seconds below
   ``1e11`` (up to year 5138), milliseconds below ``1e14`` (Earth Engine ``system:time_start``),
   microseconds below ``1e17``, nanoseconds from there on. So a millisecond or microsecond time
   before 1973-03-03 is misread as a later unit's: give such times as text. Each number decides
   its own unit (a column may mix units). Results are rounded to whole microseconds.
3. Text is, in order: ISO 8601 (``2020-06-04T05:47:21.044Z``, ``2020-06-04 05:47``,
   ``20200604``; an offset such as ``+02:00`` is honoured, none means UTC, fractions beyond
   microseconds are cut); else a plain number, read as in 2; else the first valid date-time
   inside the text (``S1A_IW_GRDH_1SDV_20200607T010800_...`` -> 2020-06-07T01:08:00Z, compact
   or dashed, seconds precision, UTC).
4. Anything else (``None``, empty text, booleans, text without a date) is no time:
   :func:`parse_time` returns ``None``; :func:`times_to_us` raises a ``ValueError`` naming the
   source, the row and (where given) the item id.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["EPOCH", "epoch_to_us", "iso_utc", "parse_time", "times_to_us", "to_us"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EMBEDDED = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ](\d{2}):?(\d{2}):?(\d{2}))?")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# |v| below each bound -> that many microseconds per unit (s, ms, us); ns above the last
_UNIT_BOUNDS = ((1e11, 1_000_000), (1e14, 1_000), (1e17, 1))
_EXPECTED = "expected ISO 8601, e.g. 2020-06-04T05:47:21Z, or epoch seconds/ms"


def epoch_to_us(values: np.ndarray) -> np.ndarray:
    """Epoch numbers -> int64 UTC microseconds, each number's unit from its magnitude (rule 2).

    Integer arrays are converted exactly (nanoseconds rounded half up); float arrays are
    rounded to the nearest microsecond.
    """
    v = np.asarray(values)
    mag = np.abs(v.astype(np.float64))
    scale = np.select([mag < b for b, _ in _UNIT_BOUNDS], [s for _, s in _UNIT_BOUNDS], 0)
    ns = scale == 0
    if v.dtype.kind in "iu":
        v = v.astype(np.int64)
        return np.where(ns, (v + 500) // 1000, v * np.maximum(scale, 1))
    v = v.astype(np.float64)
    return np.round(np.where(ns, v / 1000.0, v * scale)).astype(np.int64)


def to_us(t: datetime) -> int:
    """A datetime -> integer UTC microseconds since 1970 (naive = UTC)."""
    d = (t if t.tzinfo else t.replace(tzinfo=UTC)) - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def _parse_text(text: str) -> datetime | None:
    """Rule 3: ISO 8601, then a plain number, then a date-time inside the text."""
    s = text.strip()
    if not s:
        return None
    try:
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "Zz" else s)
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    except ValueError:
        pass
    if _NUMBER.fullmatch(s):
        return _from_us(epoch_to_us(np.array([int(s) if s.lstrip("+-").isdigit() else float(s)]))[0])
    for m in _EMBEDDED.finditer(s):
        try:
            return datetime(*[int(g) for g in m.groups() if g is not None], tzinfo=UTC)  # type: ignore[misc]
        except ValueError:
            continue
    return None


def parse_time(value: Any) -> datetime | None:
    """One value -> a UTC datetime, or ``None`` where it holds no time (module rule)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float | np.integer | np.floating):
        if not np.isfinite(value):
            return None
        try:
            return _from_us(epoch_to_us(np.array([value]))[0])
        except OverflowError:
            return None
    try:
        return _parse_text(str(value))
    except (OverflowError, ValueError):  # a date-like text out of range
        return None


def iso_utc(t: datetime | None) -> str | None:
    """``2020-06-04T05:46:39Z`` (seconds precision) or ``None``."""
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _note(ids: pa.Array | None, row: int) -> str:
    return "" if ids is None else f" (id {ids[row].as_py()!r})"


def _text_to_us(col: pa.Array, where: str, ids: pa.Array | None) -> np.ndarray:
    """Strings: Arrow's ISO 8601 cast where the whole column allows it, else value by value."""
    for tz in ("UTC", None):  # offsets or ``Z`` need a zoned cast; naive text a naive one (= UTC)
        try:
            return col.cast(pa.timestamp("us", tz=tz)).cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    out = np.empty(len(col), np.int64)
    for row, text in enumerate(col.to_pylist()):
        t = parse_time(text)
        if t is None:
            raise ValueError(
                f"{where}: cannot parse time {text!r} in row {row}{_note(ids, row)} ({_EXPECTED})"
            )
        out[row] = to_us(t)
    return out


def times_to_us(col: pa.Array | pa.ChunkedArray, where: str, ids: pa.Array | None = None) -> np.ndarray:
    """A column of times (timestamps, dates, epoch numbers or text) -> int64 UTC microseconds.

    Args:
        col: the column.
        where: the source named in errors (a file name).
        ids: item ids, named in errors beside the row number.

    Raises:
        ValueError: a missing value, a value that is no time, or a column of another type.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where}: time is missing in row {row}{_note(ids, row)}")
    kind = col.type
    if pa.types.is_timestamp(kind):
        return pc.cast(col, pa.timestamp("us", tz=kind.tz), safe=False).cast(pa.int64()).to_numpy()
    if pa.types.is_date(kind):
        return pc.cast(col, pa.timestamp("us")).cast(pa.int64()).to_numpy()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        v = col.to_numpy(zero_copy_only=False)
        if not np.isfinite(v).all():
            row = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(f"{where}: time {v[row].item()!r} in row {row}{_note(ids, row)} is not a time")
        return epoch_to_us(v)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _text_to_us(col, where, ids)
    raise ValueError(
        f"{where}: time column has type {kind}, expected timestamps, ISO 8601 strings or epoch numbers"
    )
