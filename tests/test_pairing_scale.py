"""Pairing with bounded memory: time-window partitions and DuckDB limits give the same outputs."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from s12mae import pairing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_pairing import generate
from test_pairing import item, table


def same(a: pairing.PairResult, b: pairing.PairResult) -> None:
    assert a.pairs.num_rows > 0
    assert a.pairs.equals(b.pairs) and a.s2_only.equals(b.s2_only)
    for key in ("pairs", "s2_only", "s1_used", "s1_ignored"):
        assert a.stats[key] == b.stats[key]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """The benchmark's generator at 2,000 S2 x 6,000 S1 rows (rotated polygons, the antimeridian)."""
    return generate(2000, 6000, 3, tmp_path_factory.mktemp("cat"))


@pytest.mark.parametrize("days", [7.0, 45.0, 10_000.0])
def test_time_partitions_give_the_unpartitioned_result(catalogue, days, tmp_path):
    s2, s1 = (str(p) for p in catalogue)
    whole = pairing.pair(s2, s1, threads=1)
    assert whole.stats["s2_only"] > 0  # the nearest-S1 search of S2-only rows is exercised too
    parts = pairing.pair(s2, s1, threads=1, partition_days=days, memory_limit="200MB",
                         temp_directory=str(tmp_path / "spill"))
    same(whole, parts)


def test_partitions_keep_ties_locations_and_window_edges():
    t0 = datetime(2021, 3, 1, tzinfo=UTC)
    d = timedelta(days=1)
    s2 = [item("edge", t0 + 9.999 * d), item("tie", t0 + 20 * d), item("loc", t0 + 31 * d, box=None, location="L1"),
          item("lone", t0 + 60 * d, box=(50.0, 0.0, 51.0, 1.0))]
    s1 = [item("early", t0 + 19 * d), item("late", t0 + 21 * d),
          item("far-edge", t0 + 16.999 * d),  # 7 days after "edge", in the next partition's range
          item("by-loc", t0 + 29 * d, box=(60.0, 0.0, 61.0, 1.0), location="L1"),
          item("near-lone", t0 + 80 * d, box=(50.0, 0.0, 51.0, 1.0))]
    whole = pairing.pair(table(s2), table(s1), threads=1)
    for days in (0.5, 10.0, 11.0):
        parts = pairing.pair(table(s2), table(s1), threads=1, partition_days=days)
        same(whole, parts)
    got = dict(zip(whole.pairs["s2_id"].to_pylist(), whole.pairs["s1_id"].to_pylist(), strict=True))
    assert got == {"edge": "far-edge", "tie": "early", "loc": "by-loc"}
    assert whole.s2_only["nearest_s1_id"].to_pylist() == ["near-lone"]


def test_bad_resource_options_are_clear_errors(catalogue):
    s2, s1 = (str(p) for p in catalogue)
    with pytest.raises(ValueError, match="partition_days"):
        pairing.pair(s2, s1, partition_days=0.0)
    with pytest.raises(ValueError, match="memory_limit"):
        pairing.pair(s2, s1, memory_limit="lots")
