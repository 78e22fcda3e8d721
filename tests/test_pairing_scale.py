"""Pairing with bounded memory: time-window partitions and DuckDB limits give the same outputs."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from s12mae import pairing
from s12mae.pairing.windows import pair_files

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


# -- reading the item tables window by window (pairing.windows) ---------------------------------

def _files(result: pairing.PairResult, out: Path, stats: dict) -> None:
    """The files written window by window equal the in-memory result, and so do the counts."""
    assert pq.read_table(out / "pairs.parquet").equals(result.pairs)
    assert pq.read_table(out / "s2_only.parquet").equals(result.s2_only)
    for key, value in result.stats.items():
        if key not in ("seconds", "outputs"):
            assert stats[key] == value, key


@pytest.mark.parametrize(("days", "batch_rows"), [(7.0, 2500), (45.0, 1_000_000)])
def test_windowed_reading_gives_the_whole_result(catalogue, days, batch_rows, tmp_path):
    s2, s1 = (str(p) for p in catalogue)
    whole = pairing.pair(s2, s1, threads=1)
    rule = pairing._Rule(7.0, 0.5, "auto", 30.0, 1.0)
    seen = []
    stats = pair_files(s2, s1, tmp_path / "out", rule, pairing.Resources(1, days, "200MB", str(tmp_path / "spill")),
                       batch_rows=batch_rows, on_window=lambda done, total: seen.append((done, total)))
    assert stats["windows"] > 1 and seen[-1] == (stats["windows"], stats["windows"])
    _files(whole, tmp_path / "out", stats)
    assert not list((tmp_path / "spill").iterdir())  # the scratch window files are gone


def test_pair_cli_reads_parquet_window_by_window(tmp_path):
    """Hand-made edges (a 7-day gap across a window border, ties, locations, a nearest S1 60 days
    on, S1 items of no S2 window, a footprint-less S1) through the CLI path, against the whole."""
    t0 = datetime(2021, 3, 1, tzinfo=UTC)
    d = timedelta(days=1)
    s2 = [item("edge", t0 + 9.999 * d), item("tie", t0 + 20 * d), item("loc", t0 + 31 * d, box=None, location="L1"),
          item("lone", t0 + 60 * d, box=(50.0, 0.0, 51.0, 1.0)), item("blank", t0 + 61 * d, box=None)]
    s1 = [item("early", t0 + 19 * d), item("late", t0 + 21 * d), item("far-edge", t0 + 16.999 * d),
          item("by-loc", t0 + 29 * d, box=(60.0, 0.0, 61.0, 1.0), location="L1"),
          item("near-lone", t0 + 80 * d, box=(50.0, 0.0, 51.0, 1.0)), item("none", t0 + 200 * d, box=None),
          item("before", t0 - 100 * d)]
    pq.write_table(table(s2), tmp_path / "s2.parquet")
    pq.write_table(table(s1), tmp_path / "s1.parquet")
    whole = pairing.pair(str(tmp_path / "s2.parquet"), str(tmp_path / "s1.parquet"), threads=1)
    assert whole.stats["s1_ignored"] == 1 and whole.stats["s2_only"] == 2
    for days in (0.5, 10.0, 11.0):
        out = tmp_path / f"out{days}"
        stats = pairing.pair_cli(str(tmp_path / "s2.parquet"), str(tmp_path / "s1.parquet"), out=str(out),
                                 threads=1, partition_days=days, quiet=True)
        assert stats["windows"] > 1
        _files(whole, out, stats)


def test_windowed_reading_finds_duplicate_ids_across_windows(tmp_path):
    t0 = datetime(2021, 3, 1, tzinfo=UTC)
    s2 = [item("a", t0), item("a", t0 + timedelta(days=40))]  # the same id in two windows
    pq.write_table(table(s2), tmp_path / "s2.parquet")
    pq.write_table(table([item("b", t0)]), tmp_path / "s1.parquet")
    with pytest.raises(ValueError, match=r"s2\.parquet: ids are not unique, e.g. \['a'\]"):
        pairing.pair_cli(str(tmp_path / "s2.parquet"), str(tmp_path / "s1.parquet"), out=str(tmp_path / "out"),
                         partition_days=10.0, quiet=True)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# -- running out of memory while loading items --------------------------------------------------

def test_out_of_memory_while_loading_is_reported_as_such(catalogue, monkeypatch):
    """GEOS's failed allocations come back as unparsed geometries; a footprint that parses alone
    was lost to memory, not to its text (the message says so, names the file and the options)."""
    s2, s1 = (str(p) for p in catalogue)
    real = shapely.from_wkt

    def starved(values, **kw):
        got = real(values, **kw)
        if isinstance(values, np.ndarray) and values.size > 1:  # the bulk parse "runs out of memory"
            got = got.copy()
            got[np.flatnonzero(~shapely.is_missing(got))[-1]] = None
        return got

    monkeypatch.setattr(shapely, "from_wkt", starved)
    with pytest.raises(MemoryError, match=r"s2\.parquet: ran out of memory while loading the items .*partition_days"):
        pairing.pair(s2, s1, threads=1)


def test_memory_error_names_the_input(catalogue, monkeypatch):
    s2 = pairing.load_items(str(catalogue[0]), family="s2")

    def no_memory(*args, **kw):
        raise MemoryError

    monkeypatch.setattr(pairing.items, "normalise_footprints", no_memory)
    with pytest.raises(MemoryError, match=r"s1\.parquet: ran out of memory .*MemoryError.*--partition_days"):
        pairing.pair(s2, str(catalogue[1]), threads=1)


def test_a_bad_footprint_is_still_a_parse_error(tmp_path):
    t0 = datetime(2021, 3, 1, tzinfo=UTC)
    s2 = table([item("x", t0, box=None, footprint="POLYGON ((0 0, 1 0"), item("y", t0, box=None,
                                                                                 footprint="POINT (1 1)")])
    with pytest.raises(ValueError, match="cannot parse footprint 'POLYGON"):
        pairing.load_items(s2)
