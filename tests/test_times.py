"""The one time rule: the scalar form (readers) and the column form (pairing) agree value by value."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from s12mae.times import epoch_to_us, parse_time, times_to_us, to_us

T = datetime(2020, 6, 7, 1, 8, 0, tzinfo=UTC)
T_US = to_us(T)

TEXTS = [
    "2020-06-07T01:08:00Z",
    "2020-06-07T03:08:00+02:00",  # an offset is honoured
    "2020-06-07 01:08:00",  # naive: UTC
    "2020-06-07T01:08:00.000000000",  # fraction beyond microseconds
    "20200607T010800",
    "S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457",  # a date inside a name
    "1591492080000",  # epoch milliseconds as text
    "1591492080",  # epoch seconds as text
    "  2020-06-07T01:08:00z ",
]
NUMBERS = [1591492080, 1591492080.0, 1591492080000, 1591492080000000, 1591492080000000000]


@pytest.mark.parametrize("value", TEXTS + NUMBERS)
def test_every_form_reads_the_same_instant_in_both_forms(value):
    assert parse_time(value) == T
    kind = pa.string() if isinstance(value, str) else pa.float64() if isinstance(value, float) else pa.int64()
    assert times_to_us(pa.array([value], kind), "t").tolist() == [T_US]


def test_columns_agree_with_the_scalar_rule_value_by_value():
    """Whole columns (Arrow's ISO cast where it applies, value by value where not) against the
    scalar rule on the same values, including mixed units and fractions."""
    iso = [
        "2021-03-01",
        "2021-03-01 12:00",
        "2021-03-01T12:00:00.5Z",
        "2021-03-01T14:00:00+02:00",
        "2021-03-01T12:00:00.123456Z",
        "1999-12-31T23:59:59",
    ]
    mixed = [*iso, "20210301", "S2B_MSIL2A_20170924T93020_69_24", "1614600000", "1614600000000"]
    numbers = np.array([1.5e9, 1.5e12 + 0.4, 1.5e15, -86_400.0, 0.25])
    ints = np.array([1_500_000_000, 1_500_000_000_123, 1_500_000_000_123_456, 1_500_000_000_123_456_789])
    for column in (pa.array(iso), pa.array(mixed), pa.array(numbers), pa.array(ints)):
        want = [to_us(parse_time(v)) for v in column.to_pylist()]
        assert times_to_us(column, "t").tolist() == want, column.type
    zoned = pa.array([T, T + timedelta(seconds=1)], pa.timestamp("ns", tz="Europe/Paris"))
    assert times_to_us(zoned, "t").tolist() == [T_US, T_US + 1_000_000]
    assert times_to_us(pa.array([date(2020, 6, 7)]), "t").tolist() == [to_us(parse_time(date(2020, 6, 7)))]


def test_epoch_units_come_from_each_numbers_magnitude():
    below_ms = 1e11 - 1  # seconds (year 5138)
    assert epoch_to_us(np.array([below_ms])).tolist() == [int(below_ms * 1e6)]
    assert epoch_to_us(np.array([10**11, 10**14, 10**17])).tolist() == [10**14, 10**14, 10**14]
    ns = 1_500_000_000_000_000_500  # nanoseconds, rounded half up to microseconds
    assert epoch_to_us(np.array([1_500, ns])).tolist() == [1_500_000_000, 1_500_000_000_000_001]
    # one column may mix units: each number decides for itself
    assert epoch_to_us(np.array([1591492080, 1591492080000])).tolist() == [T_US, T_US]


def test_no_time_and_errors():
    assert parse_time(20200607) == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=20200607)  # epoch
    assert parse_time("20200607") == datetime(2020, 6, 7, tzinfo=UTC)  # text that is a date is a date
    for nothing in (None, "", "no date", True, float("nan"), "2020-13-45"):
        assert parse_time(nothing) is None, nothing
    naive = datetime(2020, 6, 7, 1, 8)
    assert parse_time(naive) == T
    assert parse_time(naive.replace(tzinfo=timezone(timedelta(hours=2)))) == T - timedelta(hours=2)
    ids = pa.array(["a", "b"])
    with pytest.raises(ValueError, match=r"f\.csv: cannot parse time 'next tuesday' in row 1 \(id 'b'\)"):
        times_to_us(pa.array(["2020-06-07", "next tuesday"]), "f.csv", ids)
    with pytest.raises(ValueError, match=r"f\.csv: time is missing in row 0 \(id 'a'\)"):
        times_to_us(pa.array([None, "2020-06-07"], pa.string()), "f.csv", ids)
    with pytest.raises(ValueError, match=r"time nan in row 1"):
        times_to_us(pa.array([1.0, np.nan], from_pandas=False), "f.csv")
    with pytest.raises(ValueError, match="time column has type bool"):
        times_to_us(pa.array([True]), "f.csv")
