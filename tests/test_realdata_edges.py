"""Real-data edge cases (issue 13, items 11-15): BigEarthNet without georeferencing, pairing across
sensor families only, the baseline-04.00 offset suspected from the data, split selection, and the
statistics an evaluation records per sensor."""

from __future__ import annotations

import json
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from conftest import shared


def _strip_georeferencing(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose GeoTIFFs have no CRS and no transform (pixels and dtype unchanged)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("*.tif"):
        with rasterio.open(path) as ds:
            data, profile = ds.read(), ds.profile
        profile.pop("crs", None)
        profile.pop("transform", None)
        path.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path, "w", **profile) as out:
                out.write(data)
    return dst


# --- item 11: BigEarthNet patches without georeferencing ----------------------------------------


@pytest.fixture
def stripped_ben(tmp_path):
    return _strip_georeferencing(shared("bigearthnet-v1-example"), tmp_path / "ben")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bigearthnet_without_georeferencing_reads_as_the_original(stripped_ben):
    from s12mae.readers import BigEarthNetV1Reader

    with rasterio.open(next(stripped_ben.rglob("*_B01.tif"))) as ds:
        assert ds.crs is None and ds.transform.is_identity  # really stripped
    bare = BigEarthNetV1Reader(stripped_ben)
    geo = BigEarthNetV1Reader(shared("bigearthnet-v1-example"))
    assert len(bare) == len(geo) == 6
    for a, b in zip(bare, geo, strict=True):
        for key in ("s2_l2a", "s1_grd"):
            assert a[key].shape == b[key].shape == (get_channels(key), 120, 120)
            np.testing.assert_array_equal(a[key], b[key])  # fixed co-registration = the real grids
            np.testing.assert_array_equal(a[f"valid.{key}"], b[f"valid.{key}"])
        assert a["meta"]["crs"] is None and a["meta"]["transform"] == [10.0, 0.0, 0.0, 0.0, -10.0, 1200.0]


def get_channels(key: str) -> int:
    from s12mae.sensors import get_sensor

    return get_sensor(key).num_channels


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bigearthnet_without_georeferencing_goes_through_evaluate(tmp_path, stripped_ben):
    from s12mae.cli import main
    from s12mae.export import save_encoder
    from s12mae.models.vit import build_encoder

    enc = tmp_path / "enc.safetensors"
    cfg = SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch16", img_size=128), method="mae")
    save_encoder(build_encoder("vit_nano_patch16", {"s2_l1c": 13}, 128), enc, cfg)
    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "bigearthnet", "--checkpoint", str(enc), "--out_dir", str(out),
                 "--fit.steps", "1", "--fit.batch_size", "2", "--num_plot", "0",
                 "--data.source", "real", "--data.path", str(stripped_ben), "--progress", "false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["train_samples"] + metrics["task"]["val_samples"] == 6  # every patch read, 1 held out
    assert metrics["headline"]["value"] is not None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bigearthnet_file_of_a_foreign_size_without_georeferencing_is_named(stripped_ben):
    from s12mae.readers import BigEarthNetV1Reader

    path = next(stripped_ben.rglob("*_B02.tif"))
    with rasterio.open(path) as ds:
        profile = ds.profile
    profile.update(width=100, height=100)
    path.unlink()
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.ones((1, 100, 100), dtype=profile["dtype"]))
    reader = BigEarthNetV1Reader(stripped_ben)
    bad = next(i for i, it in enumerate(reader.items()) if path.parent.name in it.id)
    with pytest.raises(ValueError, match=rf"{path.name}: has no georeferencing and is 100x100 px"):
        reader[bad]


# --- item 13: the +1000 DN offset suspected from the data ---------------------------------------

# The shared TerraMesh scenes carry no baseline, date or offset tag. L1C B10 (cirrus) 1st percentiles:
# 282D 1005, 433D 1012, 609U 1042 DN (offset) against 55 (38D) and 10 (637U); the L2A of 433D has
# every band's 1st percentile above 1100 DN (its L1C - L2A SWIR medians are about -190 DN, both
# offset), while 282D and 609U L2A are not (L1C - L2A SWIR medians about +930 DN).
SUSPECTED = {
    "terramesh/282D_485L_3_3": ["s2_l1c"],
    "terramesh/38D_378R_2_3": [],
    "terramesh/433D_629L_3_1": ["s2_l1c", "s2_l2a"],
    "terramesh/609U_541L_3_0": ["s2_l1c"],
    "terramesh/637U_59R_1_3": [],
}


def _read_terramesh(s2_offset):
    from s12mae.readers import TerraMeshReader
    from s12mae.readers.base import OffsetSuspectedWarning

    reader = TerraMeshReader(shared("terramesh-examples"), ["s2_l1c", "s2_l2a"], s2_offset=s2_offset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = {s["id"]: s for s in reader}
    return samples, [str(w.message) for w in caught if issubclass(w.category, OffsetSuspectedWarning)]


def test_terramesh_scenes_with_the_offset_are_flagged_warned_and_kept():
    samples, warned = _read_terramesh(None)
    assert {k: sorted(s["meta"]["offset_suspected"]) for k, s in samples.items()} == SUSPECTED
    assert len(warned) == 4 and all("kept the values" in w for w in warned)
    assert any("S2L1C/609U_541L_3_0.tif: s2_l1c" in w and "B10" in w for w in warned)
    l1c = samples["terramesh/282D_485L_3_3"]["meta"]["offset_suspected"]["s2_l1c"]
    assert l1c["band"] == "B10" and l1c["floor_dn"] >= 1000 and l1c["applied"] is False
    clean = samples["terramesh/637U_59R_1_3"]["meta"]["dn_offset"]["s2_l1c"]
    assert clean["rule"] == "unknown" and clean["check"]["floor_dn"] < 100 and not clean["check"]["suspected"]
    with rasterio.open(shared("terramesh-examples") / "S2L1C" / "282D_485L_3_3.tif") as ds:
        b10 = ds.read(11)
    np.testing.assert_array_equal(samples["terramesh/282D_485L_3_3"]["s2_l1c"][10], b10)  # never guessed


def test_terramesh_offset_auto_removes_it_only_where_suspected():
    kept, _ = _read_terramesh(None)
    removed, warned = _read_terramesh("auto")
    assert len(warned) == 4 and all("removed it" in w for w in warned)
    for sid, sensors in SUSPECTED.items():
        for key in ("s2_l1c", "s2_l2a"):
            record = removed[sid]["meta"]["dn_offset"][key]
            diff = kept[sid][key].astype(np.int32) - removed[sid][key].astype(np.int32)
            if key in sensors:
                assert record["rule"] == "suspected" and record["dn"] == [1000] * len(record["dn"])
                assert removed[sid]["meta"]["offset_suspected"][key]["applied"] is True
                # 1000 DN less, but valid pixels stay off the nodata value 0 (clipped to 1 DN)
                assert np.all((diff == 1000) | (removed[sid][key] == 1))
            else:
                assert record["rule"] == "unknown" and not diff.any()


def test_an_explicit_offset_skips_the_check_and_a_bad_option_is_refused():
    from s12mae.readers import TerraMeshReader

    samples, warned = _read_terramesh(0)
    assert warned == [] and all(not s["meta"]["offset_suspected"] for s in samples.values())
    assert samples["terramesh/282D_485L_3_3"]["meta"]["dn_offset"]["s2_l1c"]["rule"] == "override"
    with pytest.raises(ValueError, match="s2_offset must be a number of DN, None or 'auto', not 'yes'"):
        TerraMeshReader(shared("terramesh-examples"), s2_offset="yes")


# --- item 14: splits ------------------------------------------------------------------------------


@pytest.fixture
def reben(tmp_path):
    from test_readers import build_reben  # a reBEN copy of the v1 example: 3 train, 3 test patches

    return build_reben(shared("bigearthnet-v1-example"), tmp_path / "reben")


def test_a_split_the_metadata_does_not_hold_is_named_with_the_ones_it_does(reben):
    from s12mae.layouts import open_layout
    from s12mae.readers import BigEarthNetV2Reader

    for sensors in (None, ["s2_l2a"]):  # with sensors it once said "found only []"
        with pytest.raises(ValueError, match=r"metadata\.parquet: no split \['val'\] in column 'split'; "
                                             r"it holds \['test', 'train'\]"):
            BigEarthNetV2Reader(reben, sensors, split="val")
    assert len(BigEarthNetV2Reader(reben, split=["train", "test"])) == 6
    assert len(open_layout("bigearthnet-v2", reben, split=["test"])) == 3
    with pytest.raises(ValueError, match=r"layout 'terramesh' has no splits.*\['bigearthnet-v2'\]"):
        open_layout("terramesh", shared("terramesh-examples"), split=["train"])


def test_stats_default_to_the_training_split_and_shards_choose_splits(tmp_path, reben, capsys):
    import pyarrow.parquet as pq

    from s12mae.cli import main
    from s12mae.shards import read_manifest

    assert main(["stats", "--data", str(reben), "--out", str(tmp_path / "default.json"), "--layout", "bigearthnet-v2",
                 "--sensors", "[s2_l2a]"]) == 0
    assert "over the 'train' split only (the default" in capsys.readouterr().out
    assert main(["stats", "--data", str(reben), "--out", str(tmp_path / "train.json"), "--layout", "bigearthnet-v2",
                 "--sensors", "[s2_l2a]", "--split", "[train]"]) == 0
    assert main(["stats", "--data", str(reben), "--out", str(tmp_path / "all.json"), "--layout", "bigearthnet-v2",
                 "--sensors", "[s2_l2a]", "--split", "[train, test]"]) == 0
    default, train, every = (json.loads((tmp_path / f"{n}.json").read_text())["s2_l2a"]
                             for n in ("default", "train", "all"))
    assert default["bands"] == train["bands"] and "split ['train']" in default["source"]
    count = {n: s["bands"]["B02"]["count"] for n, s in (("train", train), ("all", every))}
    assert count == {"train": 3 * 120 * 120, "all": 6 * 120 * 120}
    test_ids = {r["patch_id"] for r in pq.read_table(reben / "metadata.parquet").to_pylist() if r["split"] == "test"}
    assert main(["shards", "--data", str(reben), "--out", str(tmp_path / "set"), "--layout", "bigearthnet-v2",
                 "--split", "[test]", "--shards.sensors", "[s2_l2a]"]) == 0
    assert read_manifest(tmp_path / "set")["scenes"]["scenes"] == len(test_ids) == 3


# --- item 15: the statistics an evaluation used, per sensor ---------------------------------------


def test_evaluation_records_the_statistics_each_input_sensor_used(tmp_path):
    from s12mae.evaluation import EvalConfig, EvalDataConfig, FitConfig, run_evaluation
    from s12mae.export import save_encoder
    from s12mae.models.vit import build_encoder
    from s12mae.sensors import get_sensor, write_stats

    stats = tmp_path / "l1c-stats.json"
    write_stats(stats, {"s2_l1c": {"bands": {b: {"mean": 0.2, "std": 0.1} for b in get_sensor("s2_l1c").band_names}}})
    enc = tmp_path / "enc.safetensors"
    cfg = SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch16", img_size=128), method="mae",
                          data=SimpleNamespace(stats=str(stats)))
    save_encoder(build_encoder("vit_nano_patch16", {"s2_l1c": 13}, 128), enc, cfg)
    common = {"scenario": "frozen", "checkpoint": str(enc), "fit": FitConfig(steps=1, batch_size=2),
              "threads": 1, "progress": False, "num_plot": 0, "device": "cpu"}
    # L1C-pretrained encoder on the L2A task: the encoder's file has no s2_l2a, L2A falls back
    l2a = run_evaluation(EvalConfig(task="bigearthnet", out_dir=str(tmp_path / "l2a"), **common,
                                    data=EvalDataConfig(source="real", path=str(shared("bigearthnet-v1-example")))))
    assert l2a["config"]["data"]["stats"].endswith("encoder_stats.json")  # what was recorded before
    assert l2a["stats"] == {"s2_l2a": {"file": "shipped defaults", "sensor": "s2_l2a"}}
    saved = json.loads((tmp_path / "l2a" / "metrics.json").read_text())
    assert saved["stats"] == l2a["stats"]
    # the L1C task does use the encoder's statistics
    l1c = run_evaluation(EvalConfig(task="srseg", out_dir=str(tmp_path / "l1c"), **common,
                                    data=EvalDataConfig(img_size=32, num_train=4, num_val=2, num_test=2)))
    assert l1c["stats"] == {"s2_l1c": {"file": str(tmp_path / "l1c" / "encoder_stats.json"), "sensor": "s2_l1c"}}


# --- item 12: pairing across sensor families only -------------------------------------------------

_INDEX = """id,time,minlon,minlat,maxlon,maxlat,sensor
a,2021-03-01T10:00:00Z,10,40,11,41,s2_l1c
b,2021-03-05T10:00:00Z,10,40,11,41,s2_l2a
x,2021-03-02T06:00:00Z,10,40,11,41,s1_grd
"""


def test_an_index_listing_both_sensors_pairs_across_families_only(tmp_path):
    import pyarrow.parquet as pq

    from s12mae.pairing import pair_cli

    index = tmp_path / "both.csv"
    index.write_text(_INDEX)
    stats = pair_cli(str(index), None, out=str(tmp_path / "out"), threads=1, quiet=True)
    rows = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert stats["s2"] == 2 and stats["s1"] == 1  # once: every row was on both sides
    assert sorted((r["s2_id"], r["s1_id"]) for r in rows) == [("a", "x"), ("b", "x")]
    assert all(r["gap_hours"] != 0 for r in rows)


def test_no_s1_items_or_no_way_to_tell_them_apart_is_a_clear_error(tmp_path):
    from s12mae.pairing import pair, pair_cli

    plain = tmp_path / "plain.csv"  # no sensor column: every row once paired with itself
    plain.write_text("\n".join(line.rsplit(",", 1)[0] for line in _INDEX.splitlines()) + "\n")
    with pytest.raises(ValueError, match=r"plain\.csv: serves as both the S2 and the S1 input, but 3 item\(s\) "
                                         r"name no sensor \(e\.g\. id 'a'\).*--s1.*'sensor' column"):
        pair_cli(str(plain), None, out=str(tmp_path / "out"), threads=1, quiet=True)
    assert not (tmp_path / "out").exists()
    s2_only = tmp_path / "s2.csv"
    s2_only.write_text("".join(line + "\n" for line in _INDEX.splitlines() if not line.endswith("s1_grd")))
    with pytest.raises(ValueError, match=r"s2\.csv: holds no S1 items"):
        pair(str(s2_only), str(s2_only), threads=1)
    with pytest.raises(ValueError, match=r"s2\.csv: holds no S1 items"):
        pair(str(plain), str(s2_only), threads=1)  # an S1 input whose rows are all S2
    bad = tmp_path / "bad.csv"
    bad.write_text(_INDEX.replace("s1_grd", "landsat"))
    with pytest.raises(ValueError, match=r"bad\.csv: sensor 'landsat' in row 2 \(id 'x'\) is not a sensor key"):
        pair(str(bad), str(bad), threads=1)
    # separate inputs without a sensor column are taken as given (S2 input, S1 input)
    s1 = tmp_path / "s1.csv"
    s1.write_text("id,time,minlon,minlat,maxlon,maxlat\ny,2021-03-02T06:00:00Z,10,40,11,41\n")
    assert pair(str(plain), str(s1), threads=1).pairs.num_rows == 3


def test_stac_items_of_both_constellations_pair_across(tmp_path):
    import pystac
    import shapely.geometry

    from s12mae.pairing import pair

    geom = shapely.geometry.mapping(shapely.geometry.box(10, 40, 11, 41))
    items = [pystac.Item(id=i, geometry=geom, bbox=[10, 40, 11, 41], datetime=t, properties=p)
             for i, t, p in (("s2-a", datetime(2021, 3, 1, 10, tzinfo=UTC), {"constellation": "sentinel-2"}),
                             ("s1-x", datetime(2021, 3, 2, 6, tzinfo=UTC), {"platform": "sentinel-1a"}))]
    res = pair(items, items, threads=1)
    assert [(r["s2_id"], r["s1_id"]) for r in res.pairs.to_pylist()] == [("s2-a", "s1-x")]
