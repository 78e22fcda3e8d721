"""Paths held in files (issue 16): written in one form, read the same way from any working directory."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared

from s12mae.layouts import open_layout
from s12mae.pairing import load_items, pair_cli
from s12mae.paths import absolute, is_url, resolve, resolve_column
from s12mae.shards import ShardConfig, read_samples, write_shard_set

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_rule_and_its_column_form_agree(tmp_path):
    folder = tmp_path / "archive" / "pairs"
    values = ["a/b.tif", "../data/x", "/abs/./y/../z", "s3://bucket/k/../k", "https://h/p", "./c", None]
    want = [None if v is None else resolve(v, folder) for v in values]
    assert want[:5] == [
        f"{folder}/a/b.tif",
        f"{tmp_path}/archive/data/x",
        "/abs/z",
        "s3://bucket/k/../k",
        "https://h/p",
    ]
    assert resolve_column(pa.array(values), folder).to_pylist() == want
    assert is_url("gs://b/o") and not is_url("C-band/x") and not is_url("/tmp/a")
    assert absolute("x/../y") == os.path.join(os.getcwd(), "y")


def test_pair_relative_input_then_read_and_shard_from_another_directory(tmp_path, monkeypatch):
    """The README walk: ``pair`` with a relative input in one working directory, then the pairs
    reader and ``shards`` (with relative arguments) in another."""
    data = shared("ssl4eo-s12-sample")
    first, second = tmp_path / "checkout", tmp_path / "elsewhere" / "deeper"
    first.mkdir()
    second.mkdir(parents=True)
    monkeypatch.chdir(first)
    pair_cli(os.path.relpath(data, first), out="archive/pairs", threads=1, quiet=True)
    table = pq.read_table(first / "archive" / "pairs" / "pairs.parquet").to_pylist()
    assert [Path(row["s2_path"]).is_absolute() and Path(row["s1_path"]).is_absolute() for row in table] == [
        True
    ]
    assert str(data) in table[0]["s2_path"] and ".." not in table[0]["s2_path"]

    monkeypatch.chdir(second)
    pairs = os.path.relpath(first / "archive" / "pairs", second)
    sample = open_layout("pairs", pairs)[0]
    assert sample["s1_grd"].shape == (2, 264, 264)
    assert all(Path(f).is_absolute() for files in sample["meta"]["files"].values() for f in files)
    cfg = ShardConfig(sensors=["s2_l1c", "s1_grd"], crop="grid", chip_size=132, chips_per_shard=8)
    manifest = write_shard_set(pairs, "set", cfg, "pairs")
    assert manifest["num_samples"] == 4 and len(list(read_samples(second / "set"))) == 4
    s2_all = open_layout("s2-all", pairs)
    assert len(s2_all) == 2


def test_relative_paths_in_tables_are_relative_to_the_table_file(tmp_path, monkeypatch):
    tif = next(shared("eurosat-ms-sample").glob("*/*.tif"))
    (tmp_path / "index" / "tiles").mkdir(parents=True)
    (tmp_path / "index" / "tiles" / "a.tif").symlink_to(tif)
    with (tmp_path / "index" / "s2.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "time", "path", "minlon", "minlat", "maxlon", "maxlat", "s2_path"])
        w.writerow(["a", "2021-03-01T00:00:00Z", "tiles/a.tif", 0, 0, 1, 1, "tiles/a.tif"])
    monkeypatch.chdir(tmp_path)
    # pairing's item table and the generic layout both read 'tiles/a.tif' next to the CSV
    items = load_items("index/s2.csv")
    assert items.path.to_pylist() == [str(tmp_path / "index" / "tiles" / "a.tif")]
    sample = open_layout("generic", "index/s2.csv")[0]
    assert sample["s2_l1c"].shape[0] == 13
    assert sample["meta"]["files"]["s2_l1c"] == [str(tmp_path / "index" / "tiles" / "a.tif")]


def test_errors_name_the_absolute_path_never_a_mix(tmp_path, monkeypatch):
    (tmp_path / "archive" / "pairs").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "s2_id": ["a"],
                "s2_path": ["../shared/s2"],
                "s2_time": ["2020-01-01"],
                "s1_id": ["b"],
                "s1_path": ["s3://bucket/s1"],
                "s1_time": ["2020-01-02"],
                "gap_hours": [24.0],
            }
        ),
        tmp_path / "archive" / "pairs" / "pairs.parquet",
    )
    monkeypatch.chdir(tmp_path)
    pairs = open_layout("pairs", "archive/pairs")
    with pytest.raises(ValueError) as err:
        pairs[0]
    message = str(err.value)
    assert message.startswith("archive/pairs/pairs.parquet row 0 (s2_id a): s2_path ")
    assert f"{tmp_path}/archive/shared/s2 does not exist" in message and "/../" not in message
