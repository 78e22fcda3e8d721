"""Real-data readers on the shared samples (../shared/data) and on tiny fixtures built in tmp."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine

from s12mae.readers import (
    BigEarthNetV1Reader,
    BigEarthNetV2Reader,
    GenericReader,
    Sen1Floods11Reader,
    SSL4EOReader,
    TerraMeshReader,
    baseline_offset,
    bigearthnet_labels,
    canonical_band,
    parse_time,
)
from conftest import shared


def write_tif(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32630",
    res: float = 10.0,
    origin: tuple[float, float] = (500000.0, 4000000.0),
    nodata: float | None = None,
    tags: dict | None = None,
) -> Path:
    """Tiny GeoTIFF fixture: ``data`` (C, H, W) on a north-up grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    transform = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as ds:
        ds.write(data)
        if tags:
            ds.update_tags(**tags)
    return path


def file_grid(path: Path) -> tuple[str, list[float], tuple[int, int]]:
    with rasterio.open(path) as ds:
        return ds.crs.to_string(), list(ds.transform)[:6], (ds.height, ds.width)


def valid_median(sample: dict, key: str) -> float:
    return float(np.median(sample[key][sample[f"valid.{key}"]]))


# -- TerraMesh -----------------------------------------------------------------------------------


def test_terramesh_reads_every_modality_on_the_file_grid():
    root = shared("terramesh-examples")
    reader = TerraMeshReader(root)
    assert len(reader) == 5
    medians = []
    for sample in reader:
        scene = sample["id"].split("/")[1]
        assert sample["s2_l1c"].shape == (13, 224, 224) and sample["s2_l1c"].dtype == np.int16
        assert sample["s2_l2a"].shape == (12, 224, 224) and sample["s2_l2a"].dtype == np.int16
        assert sample["s1_rtc"].shape == (2, 224, 224) and sample["s1_rtc"].dtype == np.float32
        assert sample["dem"].shape == (1, 224, 224) and sample["dem"].dtype == np.float32
        assert sample["label.landcover"].shape == (224, 224) and sample["label.landcover"].dtype == np.uint8
        assert -30 < valid_median(sample, "s1_rtc") < 5
        medians.append(valid_median(sample, "s2_l2a"))
        crs, transform, _ = file_grid(root / "S2L1C" / f"{scene}.tif")
        assert sample["meta"]["crs"] == crs and sample["meta"]["transform"] == pytest.approx(transform)
        with rasterio.open(root / "S1RTC" / f"{scene}.tif") as ds:
            np.testing.assert_array_equal(sample["s1_rtc"], ds.read().astype(np.float32))
            assert sample["meta"]["times"]["s1_rtc"].startswith(ds.tags()["datetime"][:19])
        assert (
            sample["meta"]["bands"]["s2_l1c"][10] == "B10" and "B10" not in sample["meta"]["bands"]["s2_l2a"]
        )
    assert 100 < np.median(medians) < 5000
    only = TerraMeshReader(root, sensors=["s1_rtc", "label.landcover"])[0]
    assert {k for k in only if not k.startswith("valid")} == {"id", "s1_rtc", "label.landcover", "meta"}
    assert set(TerraMeshReader(root, sensors=["dem"])[0]) == {
        "id",
        "dem",
        "valid.dem",
        "label.landcover",
        "meta",
    }
    with pytest.raises(ValueError, match="unknown sensor"):
        TerraMeshReader(root, sensors=["s2_l9"])


# -- Sen1Floods11 -------------------------------------------------------------------------------


def test_sen1floods11_keeps_the_geographic_grid_and_labels():
    root = shared("sen1floods11-sample")
    sample = Sen1Floods11Reader(root)[0]
    assert sample["id"] == "sen1floods11/Spain_7370579"
    assert sample["s2_l1c"].shape == (13, 512, 512) and sample["s2_l1c"].dtype == np.int16
    assert sample["s1_grd"].shape == (2, 512, 512) and sample["s1_grd"].dtype == np.float32
    assert 100 < valid_median(sample, "s2_l1c") < 5000 and -30 < valid_median(sample, "s1_grd") < 5
    crs, transform, _ = file_grid(root / "S2" / "Spain_7370579_S2Hand.tif")
    assert sample["meta"]["crs"] == crs == "EPSG:4326"
    assert sample["meta"]["transform"] == pytest.approx(transform)
    with rasterio.open(root / "Labels" / "Spain_7370579_LabelHand.tif") as ds:
        np.testing.assert_array_equal(sample["label.water"], ds.read(1))
    assert sample["label.water"].dtype == np.int16 and set(np.unique(sample["label.water"])) == {-1, 0, 1}
    with rasterio.open(root / "S1" / "Spain_7370579_S1Hand.tif") as ds:  # dB kept as float
        np.testing.assert_array_equal(sample["s1_grd"], ds.read())


def test_sen1floods11_valid_masks_follow_nan_and_zero(tmp_path):
    root = shared("sen1floods11-sample")
    for kind, folder in [("S2Hand", "S2"), ("S1Hand", "S1"), ("LabelHand", "Labels")]:
        src = root / folder / f"Spain_7370579_{kind}.tif"
        with rasterio.open(src) as ds:
            data, profile = ds.read(), ds.profile
        if kind == "S1Hand":
            data[:, :3, :] = np.nan  # the sample chip has none; real chips have NaN borders
        if kind == "S2Hand":
            data[:, :, :2] = 0
        (tmp_path / folder).mkdir()
        with rasterio.open(tmp_path / folder / src.name, "w", **profile) as out:
            out.write(data)
    sample = Sen1Floods11Reader(tmp_path)[0]
    assert not sample["valid.s1_grd"][:, :3, :].any() and sample["valid.s1_grd"][:, 3:, :].all()
    assert np.isnan(sample["s1_grd"][:, :3, :]).all()
    assert not sample["valid.s2_l1c"][:, :, :2].any() and sample["valid.s2_l1c"][:, :, 2:].all()


# -- SSL4EO-S12 ----------------------------------------------------------------------------------


def test_ssl4eo_resamples_bands_and_warps_s1_onto_s2():
    root = shared("ssl4eo-s12-sample")
    reader = SSL4EOReader(root)
    assert [it.id for it in reader.items()][:1] == ["ssl4eo-s12/0000200/20200604"]
    s1 = reader.acquisitions(sensor="s1_grd")
    assert [a.time.date().isoformat() for a in s1] == ["2020-06-07", "2020-09-03"]
    assert [a.time.date().isoformat() for a in reader.acquisitions(sensor="s2_l1c")] == [
        "2020-06-04",
        "2020-08-23",
    ]
    s2_name = reader.acquisitions(sensor="s2_l1c")[0].name
    sample = reader.load_pair(s2_name, s1[0])
    b2 = next((root / "s2c" / "0000200" / s2_name).glob("B2.tif"))
    crs, transform, shape = file_grid(b2)
    assert shape == (264, 264) and sample["meta"]["crs"] == crs
    assert sample["meta"]["transform"] == pytest.approx(transform)
    assert sample["s2_l1c"].shape == (13, 264, 264) and sample["s2_l2a"].shape == (12, 264, 264)
    assert sample["s1_grd"].shape == (2, 264, 264) and sample["s1_grd"].dtype == np.float32
    with rasterio.open(b2) as ds:  # the 10 m band defines the grid: read as is (uint16 file -> int16)
        np.testing.assert_array_equal(sample["s2_l1c"][1], ds.read(1).astype(np.int16))
    assert 100 < valid_median(sample, "s2_l1c") < 5000 and -30 < valid_median(sample, "s1_grd") < 5
    assert sample["valid.s1_grd"].mean() > 0.95  # S1 covers all but a few edge columns of the S2 grid
    assert sample["meta"]["times"]["s1_grd"] == "2020-06-07T01:08:00Z"
    assert sample["meta"]["dn_offset"]["s2_l1c"] == {"dn": [0] * 13, "rule": "baseline"}  # baseline 02.09
    assert 0 < sample["meta"]["time_difference_h"] < 7 * 24


# -- BigEarthNet ---------------------------------------------------------------------------------


def expected_19(labels43: list[str]) -> set[str]:
    table = bigearthnet_labels()
    return {table["map43to19"][n] for n in labels43} - {None}


def test_bigearthnet_v1_bands_labels_and_s1_partner():
    root = shared("bigearthnet-v1-example")
    reader = BigEarthNetV1Reader(root)
    assert len(reader) == 6
    names19 = bigearthnet_labels()["labels19"]
    for sample in reader:
        patch = sample["id"].split("/")[1]
        assert sample["s2_l2a"].shape == (12, 120, 120) and sample["s2_l2a"].dtype == np.int16
        assert sample["s1_grd"].shape == (2, 120, 120) and sample["s1_grd"].dtype == np.float32
        assert sample["valid.s2_l2a"].all()
        assert 100 < valid_median(sample, "s2_l2a") < 5000 and -30 < valid_median(sample, "s1_grd") < 5
        labels43 = json.loads(
            next((root / "BigEarthNet-S2-Example" / patch).glob("*_labels_metadata.json")).read_text()
        )["labels"]
        hot = sample["label.multilabel"]
        assert hot.shape == (19,) and hot.dtype == np.uint8 and sample["meta"]["labels43"] == labels43
        assert {names19[i] for i in np.flatnonzero(hot)} == expected_19(labels43)
        assert sample["meta"]["s1_patch"].split("_")[-2:] == patch.split("_")[-2:]
        crs, transform, _ = file_grid(root / "BigEarthNet-S2-Example" / patch / f"{patch}_B02.tif")
        assert sample["meta"]["crs"] == crs and sample["meta"]["transform"] == pytest.approx(transform)
    first = reader[0]
    assert first["meta"]["labels19"] == [
        "Arable land",
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    ]
    assert first["meta"]["times"] == {"s2_l2a": "2017-06-13T10:10:31Z", "s1_grd": "2017-06-13T16:50:43Z"}


def build_reben(v1: Path, out: Path) -> Path:
    """A reBEN-layout copy of the v1 example: tile folders, renamed patches, metadata.parquet."""
    rows = []
    for s2_dir in sorted((v1 / "BigEarthNet-S2-Example").iterdir()):
        s1_dir = next(
            p
            for p in (v1 / "BigEarthNet-S1-Example").iterdir()
            if json.loads(next(p.glob("*.json")).read_text())["corresponding_s2_patch"] == s2_dir.name
        )
        md = json.loads(next(s2_dir.glob("*.json")).read_text())
        date = md["acquisition_date"].replace("-", "").replace(" ", "T").replace(":", "")
        tile = f"{s2_dir.name[:10]}_{date}_N9999_R022_T33UUP"
        patch = f"{tile}_{'_'.join(s2_dir.name.split('_')[-2:])}"
        for f in s2_dir.glob("*.tif"):
            dest = out / "BigEarthNet-S2" / tile / patch / f"{patch}_{f.stem.rsplit('_', 1)[1]}.tif"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
        s1_tile = s1_dir.name.rsplit("_", 3)[0]
        for f in s1_dir.glob("*.tif"):
            dest = out / "BigEarthNet-S1" / s1_tile / s1_dir.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
        rows.append(
            {
                "patch_id": patch,
                "labels": sorted(expected_19(md["labels"])),
                "split": "train" if len(rows) % 2 else "test",
                "s1_name": s1_dir.name,
                "v1": s2_dir.name,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), out / "metadata.parquet")
    return out


def test_bigearthnet_v2_matches_v1(tmp_path):
    v1 = shared("bigearthnet-v1-example")
    root = build_reben(v1, tmp_path / "reben")
    v1_samples = {s["id"].split("/")[1]: s for s in BigEarthNetV1Reader(v1)}
    reader = BigEarthNetV2Reader(root)
    assert len(reader) == 6 and len(BigEarthNetV2Reader(root, split="train")) == 3
    rows = {r["patch_id"]: r["v1"] for r in pq.read_table(root / "metadata.parquet").to_pylist()}
    for sample in reader:
        ref = v1_samples[rows[sample["id"].split("/")[1]]]
        for key in ("s2_l2a", "s1_grd", "valid.s2_l2a", "label.multilabel"):
            np.testing.assert_array_equal(sample[key], ref[key])
        assert sample["meta"]["crs"] == ref["meta"]["crs"] and sample["meta"]["times"]["s2_l2a"] is not None
        assert sample["meta"]["dn_offset"]["s2_l2a"]["rule"] == "date"  # N9999 is not a baseline


def test_bigearthnet_v2_missing_patch_folder(tmp_path):
    root = build_reben(shared("bigearthnet-v1-example"), tmp_path / "reben")
    gone = next((root / "BigEarthNet-S2").glob("*/*"))
    shutil.rmtree(gone)
    with pytest.raises(ValueError, match=r"metadata\.parquet: row \d+ \(patch_id .*no folder"):
        BigEarthNetV2Reader(root)
    reader = BigEarthNetV2Reader(root, skip_bad=True)
    assert len(reader) == 5 and [s[0] for s in reader.skipped] == [f"bigearthnet-v2/{gone.name}"]


# -- Generic index -------------------------------------------------------------------------------


def test_generic_index_csv_and_parquet(tmp_path):
    root = shared("sen1floods11-sample")
    row = {
        "id": "spain",
        "s2_path": str(root / "S2" / "Spain_7370579_S2Hand.tif"),
        "s1_path": str(root / "S1" / "Spain_7370579_S1Hand.tif"),
        "s2_time": "2019-09-18T10:50:00Z",
    }
    with (tmp_path / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "index.parquet")
    ref = Sen1Floods11Reader(root)[0]
    for index in ("index.csv", "index.parquet"):
        sample = GenericReader(tmp_path / index)[0]
        assert sample["id"] == "generic/spain" and sample["meta"]["times"]["s2_l1c"] == "2019-09-18T10:50:00Z"
        for key in ("s2_l1c", "s1_grd", "valid.s2_l1c", "valid.s1_grd"):
            np.testing.assert_array_equal(sample[key], ref[key])
        assert sample["meta"]["dn_offset"]["s2_l1c"]["rule"] == "date"
    missing = {**row, "id": "gone", "s1_path": str(tmp_path / "nope.tif")}
    with (tmp_path / "bad.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerows([row, missing])
    with pytest.raises(ValueError, match=r"bad\.csv: row 1 \(id gone\): s1_path .*nope\.tif does not exist"):
        GenericReader(tmp_path / "bad.csv")
    reader = GenericReader(tmp_path / "bad.csv", skip_bad=True)
    assert len(reader) == 1 and reader.skipped[0][0] == "generic/gone"


# -- Offset removal (processing baseline 04.00) ----------------------------------------------------


def index_for(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "index.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_baseline_offset_removed_by_date_and_metadata(tmp_path):
    dn = np.full((13, 4, 4), 1500, dtype=np.uint16)
    dn[:, 0, 0] = 0  # nodata stays nodata
    dn[:, 0, 1] = 990  # below the offset: negative reflectance, kept valid at 1 DN
    files = {
        "after": write_tif(tmp_path / "after.tif", dn),
        "before": write_tif(tmp_path / "before.tif", dn),
        "tag_date": write_tif(tmp_path / "tag_date.tif", dn, tags={"datetime": "2023-03-01T10:00:00"}),
        "baseline": write_tif(tmp_path / "baseline.tif", dn, tags={"PROCESSING_BASELINE": "04.00"}),
        "old_baseline": write_tif(
            tmp_path / "old.tif", dn, tags={"PROCESSING_BASELINE": "02.09", "datetime": "2023-03-01"}
        ),
        "boa": write_tif(tmp_path / "boa.tif", dn, tags={"BOA_ADD_OFFSET": "-1000"}),
    }
    times = {"after": "2022-01-25T10:00:00Z", "before": "2022-01-24T10:00:00Z"}
    rows = [{"id": k, "s2_path": str(p), "s2_time": times.get(k, "")} for k, p in files.items()]
    samples = {s["id"].split("/")[1]: s for s in GenericReader(index_for(tmp_path, rows))}
    expect = {
        "after": 500,
        "before": 1500,
        "tag_date": 500,
        "baseline": 500,
        "old_baseline": 1500,
        "boa": 500,
    }
    for name, value in expect.items():
        s = samples[name]
        assert s["s2_l1c"].dtype == np.int16 and (s["s2_l1c"][:, 1:, :] == value).all(), name
        assert (s["s2_l1c"][:, 0, 0] == 0).all() and not s["valid.s2_l1c"][:, 0, 0].any()
        assert s["valid.s2_l1c"][:, 0, 1].all()
    assert (samples["after"]["s2_l1c"][:, 0, 1] == 1).all() and (
        samples["before"]["s2_l1c"][:, 0, 1] == 990
    ).all()
    assert samples["boa"]["meta"]["dn_offset"]["s2_l1c"]["rule"] == "metadata"
    assert baseline_offset({"BOA_ADD_OFFSET_B2": -1000}, "B02", None) == (1000, "metadata")
    assert baseline_offset({"PRODUCT_ID": "S2B_MSIL1C_20200823T054639_N0209_R048"}, "B02", None) == (
        0,
        "baseline",
    )
    assert baseline_offset({}, "B02", None) == (0, "unknown")
    forced = GenericReader(index_for(tmp_path, rows[:1]), s2_offset=0)[0]
    assert (forced["s2_l1c"][:, 1:, :] == 1500).all() and forced["meta"]["dn_offset"]["s2_l1c"][
        "rule"
    ] == "override"


# -- Bad input -----------------------------------------------------------------------------------


def terramesh_copy(tmp_path: Path) -> Path:
    src = shared("terramesh-examples")
    for scene in ("637U_59R_1_3", "282D_485L_3_3", "38D_378R_2_3"):
        for folder in ("S2L1C", "S1RTC"):
            (tmp_path / folder).mkdir(exist_ok=True)
            shutil.copy(src / folder / f"{scene}.tif", tmp_path / folder / f"{scene}.tif")
    return tmp_path


def test_truncated_and_wrong_band_count_name_the_file(tmp_path, caplog):
    root = terramesh_copy(tmp_path)
    truncated = root / "S2L1C" / "282D_485L_3_3.tif"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    wrong = root / "S2L1C" / "38D_378R_2_3.tif"
    shutil.copy(shared("terramesh-examples") / "S2L2A" / "38D_378R_2_3.tif", wrong)  # 12 bands, not 13
    reader = TerraMeshReader(root)
    with pytest.raises(
        ValueError, match=rf"{truncated}: cannot read band \d+; the file is corrupt or truncated"
    ):
        reader[0]
    with pytest.raises(ValueError, match=rf"{wrong}: has 12 band\(s\), but s2_l1c expects 13"):
        reader[1]
    garbage = root / "S2L1C" / "637U_59R_1_3.tif"
    garbage.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=rf"{garbage}: not a readable GeoTIFF"):
        reader[2]
    with pytest.raises(ValueError):
        list(reader)
    skipping = TerraMeshReader(root, skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="s12mae.readers.base"):
        assert list(skipping) == []
    assert [s[0] for s in skipping.skipped] == [it.id for it in skipping.items()]
    assert "truncated" in skipping.skipped[0][1] and len(caplog.records) == 3
    assert len(TerraMeshReader(root, sensors=["s1_rtc"], skip_bad=True)) == 3


def test_unwarpable_and_wrong_dtype_inputs(tmp_path):
    s2 = write_tif(tmp_path / "s2.tif", np.full((13, 8, 8), 1200, dtype=np.int16))
    far = write_tif(tmp_path / "far.tif", np.zeros((2, 8, 8), np.float32), origin=(100000.0, 1000000.0))
    no_crs = write_tif(tmp_path / "nocrs.tif", np.zeros((2, 8, 8), np.float32), crs=None)
    int_db = write_tif(tmp_path / "intdb.tif", np.full((2, 8, 8), -12, np.int32))
    float_s2 = write_tif(tmp_path / "floats2.tif", np.full((13, 8, 8), 0.12, np.float32))
    cases = [
        ({"s1_path": far}, "does not overlap the sample grid"),
        ({"s1_path": no_crs}, "has no CRS"),
        ({"s1_path": int_db}, "holds int32, but s1_grd is float dB"),
        ({"s2_path": float_s2}, "holds float32, but s2_l1c files hold integer DN"),
    ]
    for i, (paths, message) in enumerate(cases):
        row = {"id": f"c{i}", "s2_path": str(s2), **{k: str(v) for k, v in paths.items()}}
        bad = next(iter(paths.values()))
        with pytest.raises(ValueError, match=rf"{bad}: .*{message}"):
            GenericReader(index_for(tmp_path, [row]))[0]
    shifted = write_tif(
        tmp_path / "shifted.tif", np.full((2, 8, 8), -10.0, np.float32), origin=(500015.0, 4000000.0)
    )
    sample = GenericReader(index_for(tmp_path, [{"id": "s", "s2_path": str(s2), "s1_path": str(shifted)}]))[0]
    assert sample["s1_grd"].shape == (2, 8, 8) and not sample["valid.s1_grd"][:, :, 0].any()
    assert sample["valid.s1_grd"][:, :, 2:].all() and np.allclose(sample["s1_grd"][:, :, 2:], -10.0)


def test_band_names_and_times():
    assert [canonical_band(n) for n in ("B1", "b8a", "B08", "B10", "vv")] == [
        "B01",
        "B8A",
        "B08",
        "B10",
        "VV",
    ]
    assert (
        parse_time("S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825").isoformat()
        == "2020-06-07T01:08:00+00:00"
    )
    assert parse_time("2021-07-23T13:22:41.000000000").hour == 13
    assert parse_time(1591492080000).isoformat() == "2020-06-07T01:08:00+00:00"
    assert parse_time("S2B_MSIL2A_20170924T93020_69_24").date().isoformat() == "2017-09-24"
    assert parse_time("no date") is None
