"""Layouts by name on the shared real samples: open, shard, read back; the SSL4EO-S12 walk from
acquisition folders to pairs, shard sets, statistics and a training run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import shared, tiny_config
from test_readers import build_reben

from s12mae.config import DataConfig
from s12mae.layouts import LAYOUTS, open_layout
from s12mae.pairing import pair_cli
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, read_manifest, read_samples, shard_loader, write_shard_set
from s12mae.stats import band_statistics, compute_stats_file



pytestmark = pytest.mark.usefixtures("one_thread")


def keys_of(sample: dict) -> set[str]:
    return {k for k in sample if k not in ("id", "meta") and not k.startswith("valid.")}


def assert_chip_is_crop(chip: dict, scene: dict, sensors: list[str]) -> None:
    """A chip read back from a shard equals its window of the reader's scene, masks included."""
    y, x, s = (chip["crop"]["y"], chip["crop"]["x"], chip["crop"]["size"]) if chip["crop"] else (0, 0, None)
    assert chip["scene_id"] == scene["id"]
    for key in sensors:
        want = scene[key][:, y : y + s, x : x + s] if s else scene[key]
        np.testing.assert_array_equal(chip[key], want)  # NaN compares equal here
        valid = scene[f"valid.{key}"][:, y : y + s, x : x + s] if s else scene[f"valid.{key}"]
        assert chip[f"valid.{key}"].dtype == bool and np.array_equal(chip[f"valid.{key}"], valid)


def test_unknown_layout_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown layout 'ssl4eo'; known layouts: \['bigearthnet-v1'"):
        open_layout("ssl4eo", "anywhere")
    assert set(LAYOUTS) == {"simulated", "terramesh", "sen1floods11", "bigearthnet-v1", "bigearthnet-v2",
                            "generic", "pairs", "s2-all"}
    with pytest.raises(ValueError, match="unknown sensor key"):
        open_layout("terramesh", "anywhere", ["s3_olci"])


# -- reader layouts: open, shard, read back -------------------------------------------------------

GRID64 = dict(crop="grid", chip_size=64, chips_per_shard=16)
READER_CASES = {
    # layout: (folder, keys of every sample, scenes, shard config, chips)
    "terramesh": ("terramesh-examples", {"s2_l1c", "s2_l2a", "s1_rtc", "dem", "label.landcover"}, 5,
                  ShardConfig(sensors=["s2_l2a", "s1_rtc"], labels=["label.landcover"], **GRID64), 5 * 9),
    "sen1floods11": ("sen1floods11-sample", {"s2_l1c", "s1_grd", "label.water"}, 1,
                     ShardConfig(sensors=["s2_l1c", "s1_grd"], **GRID64), 8 * 8),
    "bigearthnet-v1": ("bigearthnet-v1-example", {"s2_l2a", "s1_grd", "label.multilabel"}, 6,
                       ShardConfig(sensors=["s2_l2a", "s1_grd"], chips_per_shard=4), 6),
}


@pytest.mark.parametrize("layout", sorted(READER_CASES))
def test_reader_layout_to_shards_and_back(layout, tmp_path):
    folder, keys, scenes, cfg, chips = READER_CASES[layout]
    root = shared(folder)
    samples = open_layout(layout, root)
    assert len(samples) == scenes and keys_of(samples[0]) == keys
    manifest = write_shard_set(str(root), str(tmp_path / "set"), cfg, layout)
    assert manifest["num_samples"] == chips and manifest["scenes"]["used"] == scenes
    got = list(read_samples(tmp_path / "set"))
    assert len(got) == chips and [g["index"] for g in got] == list(range(chips))
    first = open_layout(layout, root, cfg.sensors)[0]
    assert keys_of(first) >= set(cfg.sensors)
    assert_chip_is_crop(got[0], first, cfg.sensors)
    size = cfg.chip_size or first[cfg.sensors[0]].shape[-1]
    for key in cfg.sensors:
        assert got[-1][key].shape == (get_sensor(key).num_channels, size, size)
    for key in cfg.labels or []:
        assert got[0][key].shape == (size, size)


def test_bigearthnet_v2_layout(tmp_path):
    root = build_reben(shared("bigearthnet-v1-example"), tmp_path / "reben")
    samples = open_layout("bigearthnet-v2", root)
    assert len(samples) == 6 and keys_of(samples[0]) == {"s2_l2a", "s1_grd", "label.multilabel"}
    cfg = ShardConfig(sensors=["s2_l2a", "s1_grd"], labels=["label.multilabel"], crop="grid", chip_size=120)
    manifest = write_shard_set(str(root), str(tmp_path / "set"), cfg, "bigearthnet-v2")
    got = list(read_samples(tmp_path / "set"))
    assert manifest["num_samples"] == 6 and got[0]["s2_l2a"].shape == (12, 120, 120)
    assert got[0]["label.multilabel"].shape == (19,) and got[0]["label.multilabel"].sum() >= 1


def test_generic_index_layout(tmp_path):
    root = shared("eurosat-ms-sample")
    index = tmp_path / "index.csv"
    with index.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "s2_path", "s2_sensor"])
        for tif in sorted(root.glob("*/*.tif")):
            w.writerow([tif.stem, tif, "s2_l1c"])
    samples = open_layout("generic", index)
    assert len(samples) == 3 and keys_of(samples[0]) == {"s2_l1c"}
    assert samples[0]["s2_l1c"].shape == (13, 64, 64) and samples[0]["s2_l1c"].dtype == np.int16
    manifest = write_shard_set(str(index), str(tmp_path / "set"), ShardConfig(sensors=["s2_l1c"]), "generic")
    got = list(read_samples(tmp_path / "set"))
    assert manifest["num_samples"] == 3
    assert_chip_is_crop(got[1], samples[1], ["s2_l1c"])


# -- pairs and s2-all over an index of GeoTIFF stacks ---------------------------------------------


def test_pairs_over_a_stack_index(tmp_path):
    """Sen1Floods11 stacks in pairing indexes (the chips carry no times: the fixture gives them)."""
    root = shared("sen1floods11-sample")
    s2_tif, s1_tif = next(root.glob("S2/*.tif")), next(root.glob("S1/*.tif"))
    for name, tif, time in (("s2", s2_tif, "2019-05-01T10:00:00Z"), ("s1", s1_tif, "2019-05-03T18:00:00Z")):
        with rasterio.open(tif) as ds:  # EPSG:4326: the bounds are the footprint
            left, bottom, right, top = ds.bounds
        with (tmp_path / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "time", "path", "minlon", "minlat", "maxlon", "maxlat"])
            w.writerow([f"{name}-chip", time, tif, left, bottom, right, top])
    pair_cli(str(tmp_path / "s2.csv"), str(tmp_path / "s1.csv"), out=str(tmp_path / "pairs"), quiet=True)
    pairs = open_layout("pairs", tmp_path / "pairs")
    assert len(pairs) == 1
    sample = pairs[0]
    assert keys_of(sample) == {"s2_l1c", "s1_grd"} and sample["meta"]["gap_hours"] == pytest.approx(56.0)
    with rasterio.open(s1_tif) as ds:  # same grid: S1 is read as it is
        np.testing.assert_array_equal(sample["s1_grd"], ds.read())
    assert sample["meta"]["times"]["s1_grd"] == "2019-05-03T18:00:00Z"
    s2_only = open_layout("s2-all", tmp_path / "pairs")
    assert len(s2_only) == 1 and keys_of(s2_only[0]) == {"s2_l1c"}
    np.testing.assert_array_equal(s2_only[0]["s2_l1c"], sample["s2_l1c"])
    with pytest.raises(ValueError, match="s2-all holds only"):
        open_layout("s2-all", tmp_path / "pairs", ["s2_l1c", "s1_grd"])


def test_pairs_folder_errors_name_the_row(tmp_path):
    with pytest.raises(ValueError, match="pairs.parquet: not found"):
        open_layout("pairs", tmp_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"s2_id": ["a"], "s2_path": ["gone/s2.tif"], "s2_time": ["2020-01-01"],
                             "s1_id": ["b"], "s1_path": ["gone/s1.tif"], "s1_time": ["2020-01-02"],
                             "gap_hours": [24.0]}), tmp_path / "pairs.parquet")
    pairs = open_layout("pairs", tmp_path, skip_bad=True)
    with pytest.raises(ValueError, match=r"pairs.parquet row 0 \(s2_id a\): s2_path .*gone/s2.tif does not"):
        pairs[0]
    assert list(pairs) == [] and pairs.skipped[0][0] == "a"


# -- the SSL4EO-S12 walk: pair -> pairs / s2-all shard sets -> stats -> training -----------------

CHIP = 88  # 264 = 3 x 88: the grid reaches the border, where the warped S1 has its nodata


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """``s12mae pair`` on the SSL4EO-S12 sample, then the pairs and the s2-all shard sets."""
    root = shared("ssl4eo-s12-sample")
    tmp = tmp_path_factory.mktemp("ssl4eo")
    pair_cli(str(root), out=str(tmp / "pairs"), quiet=True)
    grid = dict(crop="grid", chip_size=CHIP)
    pairs = write_shard_set(str(tmp / "pairs"), str(tmp / "sh-pairs"),
                       ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=4, **grid), "pairs")
    s2_all = write_shard_set(str(tmp / "pairs"), str(tmp / "sh-s2"),
                        ShardConfig(sensors=["s2_l1c"], chips_per_shard=8, **grid), "s2-all")
    return {"root": root, "tmp": tmp, "pairs": pairs, "s2_all": s2_all}


def test_ssl4eo_pairs_layout_gives_the_one_pair_on_the_s2_grid(walk):
    pairs = open_layout("pairs", walk["tmp"] / "pairs")
    assert len(pairs) == 1
    sample = pairs[0]
    assert sample["id"] == "ssl4eo-s12/0000200/20200604+s1-20200607"
    assert keys_of(sample) == {"s2_l1c", "s1_grd"}
    assert sample["meta"]["times"]["s2_l1c"][:10] == "2020-06-04"
    assert sample["meta"]["times"]["s1_grd"][:10] == "2020-06-07"
    assert sample["meta"]["gap_hours"] == pytest.approx(67.1, abs=0.5)  # from pairs.parquet
    b2 = next((walk["root"] / "s2c" / "0000200").glob("20200604*/B2.tif"))
    with rasterio.open(b2) as ds:
        assert sample["meta"]["crs"] == ds.crs.to_string()
        assert sample["meta"]["transform"] == pytest.approx(list(ds.transform)[:6])
        assert sample["s1_grd"].shape == (2, ds.height, ds.width) == (2, 264, 264)
    assert 0.95 < sample["valid.s1_grd"].mean() < 1.0  # warped S1: nodata at the border only
    assert np.isnan(sample["s1_grd"][~sample["valid.s1_grd"]]).all()


def test_ssl4eo_shard_sets_pairs_and_s2_all(walk):
    assert walk["pairs"]["num_samples"] == 9 and walk["pairs"]["scenes"]["used"] == 1
    chips = list(read_samples(walk["tmp"] / "sh-pairs"))
    assert all(c["meta"]["gap_hours"] == pytest.approx(67.12, abs=0.01) for c in chips)
    scene = open_layout("pairs", walk["tmp"] / "pairs", ["s2_l1c", "s1_grd"])[0]
    for chip in (chips[0], chips[-1]):
        assert_chip_is_crop(chip, scene, ["s2_l1c", "s1_grd"])
    assert not chips[-1]["valid.s1_grd"].all()  # the bottom-right chip holds the S1 border
    s2 = walk["s2_all"]
    assert s2["scenes"]["scenes"] == 2 and s2["num_samples"] == 18
    assert set(read_manifest(walk["tmp"] / "sh-s2")["sensors"]) == {"s2_l1c"}
    assert {c["scene_id"] for c in read_samples(walk["tmp"] / "sh-s2")} == {
        "ssl4eo-s12/0000200/20200604", "ssl4eo-s12/0000200/20200823"}


def test_ssl4eo_stats_of_the_shard_set(walk):
    out = walk["tmp"] / "stats.json"
    entries = compute_stats_file(walk["tmp"] / "sh-pairs", out)
    assert set(entries) == {"s2_l1c", "s1_grd"}
    s2 = entries["s2_l1c"]["bands"]
    s1 = entries["s1_grd"]["bands"]
    assert all(0.0 < b["mean"] < 0.5 for b in s2.values()), s2
    assert all(-30.0 < b["mean"] < 0.0 for b in s1.values()), s1
    chips = list(read_samples(walk["tmp"] / "sh-pairs"))
    n_valid = sum(int(c["valid.s1_grd"][0].sum()) for c in chips)
    assert s1["VV"]["count"] == n_valid < len(chips) * CHIP * CHIP  # nodata left out
    vv = np.concatenate([c["s1_grd"][0][c["valid.s1_grd"][0]] for c in chips]).astype(np.float64)
    assert s1["VV"]["mean"] == pytest.approx(vv.mean(), rel=1e-9)
    assert s1["VV"]["std"] == pytest.approx(vv.std(), rel=1e-9)
    assert s1["VV"]["p1"] < s1["VV"]["p50"] < s1["VV"]["p99"]
    assert get_sensor("s1_grd", out).stats["VV"].mean == pytest.approx(s1["VV"]["mean"])
    # the same pixels read through the reader layout directly (the grid covers the whole scene)
    direct = compute_stats_file(walk["tmp"] / "pairs", walk["tmp"] / "direct.json", ["s1_grd"],
                                layout="pairs")
    assert direct["s1_grd"]["bands"]["VV"]["count"] == s1["VV"]["count"]
    assert direct["s1_grd"]["bands"]["VV"]["mean"] == pytest.approx(s1["VV"]["mean"], rel=1e-9)


def test_band_statistics_reservoir_percentiles_and_exact_moments():
    spec = get_sensor("s1_grd")
    x = np.random.default_rng(0).normal(-12.0, 4.0, (40, 2, 32, 32)).astype(np.float32)
    x[0, 0, :4] = np.nan
    got = band_statistics(x, spec, chunk=7, max_sample=4000)
    for b, name in enumerate(spec.band_names):
        v = x[:, b].astype(np.float64)
        v = v[np.isfinite(v)]
        assert got[name]["count"] == v.size
        assert got[name]["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert got[name]["std"] == pytest.approx(v.std(), rel=1e-12)
        assert got[name]["p50"] == pytest.approx(np.median(v), abs=0.3)  # 4000 of 40960 values
    assert band_statistics(x, spec, chunk=7, max_sample=4000) == got  # fixed seed


def test_ssl4eo_nodata_policy_through_shard_loader(walk):
    specs = [get_sensor("s2_l1c"), get_sensor("s1_grd")]
    path = walk["tmp"] / "sh-pairs"
    chip_id = r"'ssl4eo-s12/0000200/20200604\+s1-20200607/\d+_\d+'"
    with pytest.raises(ValueError, match=rf"sample {chip_id} .*nodata"):
        next(iter(shard_loader(path, specs, 9, seed=0, shuffle_buffer=0)))  # all 9 chips, 5 at the border
    batch = next(iter(shard_loader(path, specs, 9, seed=0, shuffle_buffer=0, nodata="mask")))
    assert batch["s1_grd"].shape == (9, 2, CHIP, CHIP) and torch.isfinite(batch["s1_grd"]).all()
    valid = batch["valid.s1_grd"]
    assert 0.95 < valid.float().mean() < 1.0 and (batch["s1_grd"][~valid] == 0).all()


def _ssl4eo_config(walk, out_dir: Path, nodata: str):
    cfg = tiny_config(str(out_dir), steps=2, batch_size=4, checkpoint_every=2)
    cfg.method = "auxmae"  # MAE task on every S2 image, the S2 -> S1 task on the pairs (AGD)
    cfg.model.img_size = CHIP
    cfg.data = DataConfig(path=str(walk["tmp"] / "sh-pairs"), task_paths={"mae": str(walk["tmp"] / "sh-s2")},
                          nodata=nodata, shuffle_buffer=4)
    return cfg


def test_ssl4eo_pretrain_two_steps_on_the_shard_sets(walk, tmp_path):
    from s12mae.train.loop import pretrain

    with pytest.raises(ValueError, match=r"sh-s2: task 'mae': sample\(s\) \[\d+\] have \d+ nodata"):
        pretrain(_ssl4eo_config(walk, tmp_path / "error", "error"))
    res = pretrain(_ssl4eo_config(walk, tmp_path / "mask", "mask"))
    assert [r["task"] for r in res.history] == ["mae", "aux"]
    assert all(np.isfinite(r["loss"]) for r in res.history)
