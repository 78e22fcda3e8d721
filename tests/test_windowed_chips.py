"""Windowed chip reads: `s12mae shards --crop grid` over pairs rows with COG asset hrefs reads each
chip by a windowed read (only that chip's tiles move), and gives the shard set that cutting the
whole-scene read gives; the scene's chip grid comes from the items' ``proj:`` properties without
touching the pixels; chips outside the S1 footprint are dropped by ``min_valid_per_sensor`` as
before; a missing asset is one error naming the item (``--skip_bad`` skips its chips); a pairs
folder on object storage works like a local one. All against the localhost S3 and STAC servers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures_servers import s1_item, s2_item

from s12mae import storage
from s12mae.cli import main
from s12mae.layouts import PairFolder
from s12mae.sensors import get_sensor
from s12mae.shards import read_samples, write_shards
from s12mae.shards.format import ShardConfig
from s12mae.stac import StacSearchConfig, pair_stac

pytest_plugins = ["fixtures_servers"]  # the s3 and stac_server fixtures
pytest.importorskip("pystac_client", reason="pystac-client is not installed (pip install pystac-client)")
rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

AOI = (10.0, 45.0, 11.0, 46.0)
SIZE = 128  # S2 side at 10 m (ours: tiny); 20 m bands 64 px, 60 m bands 21 px
CHIP = 64
ORIGIN = (600_000.0, 5_000_000.0)  # UTM 32N
SENSORS = ["s2_l1c", "s1_grd"]
SHARDS = ["--shards.sensors", "[s2_l1c, s1_grd]", "--shards.crop", "grid", "--shards.chip_size", str(CHIP),
          "--shards.chips_per_shard", "4"]


def _cog(path, data: np.ndarray, res: float, crs: str = "EPSG:32632", origin=ORIGIN) -> None:
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res), blocksize=64) as ds:
        ds.write(data[None])


def _key(href: str) -> str:
    return href.split("/", 3)[3]


def _rehome(item: dict, bucket: str) -> dict:
    for asset in item["assets"].values():
        if asset["href"].startswith("s3://"):
            asset["href"] = f"s3://{bucket}/" + _key(asset["href"])
    return item


def _s2_scene(s3, tmp_path, item: dict, size: int, rng, proj: bool) -> None:
    """Upload one COG per S2 band of ``item`` (10/20/60 m; ``size`` px at 10 m) and, with ``proj``,
    give its assets the projection extension (``proj:code`` on the item, shape/transform per asset)."""
    client = s3.client()
    for spec_band in get_sensor("s2_l1c").bands:
        name, res = spec_band.name, spec_band.resolution_m
        asset = next(a for a in item["assets"].values() if a["href"].endswith(f"/{name}.tif"))
        n = round(size * 10 / res)
        _cog(tmp_path / "c.tif", rng.integers(1100, 4000, (n, n)).astype("uint16"), res)
        client.upload_file(str(tmp_path / "c.tif"), s3.name, _key(asset["href"]))
        if proj:
            asset["proj:shape"] = [n, n]
            asset["proj:transform"] = [res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1], 0.0, 0.0, 1.0]
    if proj:
        item["properties"]["proj:code"] = "EPSG:32632"


@pytest.fixture
def archive(s3, tmp_path):
    """Two S2 scenes (one with ``proj:`` properties, one without) and one S1 scene in UTM 33N at
    20 m covering only the western part of the S2 scene; returns the items."""
    rng = np.random.default_rng(0)
    items = []
    for item_id, day, proj in (("S2A_new", 3, True), ("S2A_old", 5, False)):
        item = _rehome(s2_item(item_id, f"2022-03-{day:02d}T10:10:21Z", AOI, baseline="04.00"), s3.name)
        _s2_scene(s3, tmp_path, item, SIZE, rng, proj)
        items.append(item)
    s1 = _rehome(s1_item("S1A_04", "2022-03-04T05:00:00Z", (9.5, 44.5, 11.5, 46.5)), s3.name)
    left, bottom, right, top = transform_bounds("EPSG:32632", "EPSG:32633", ORIGIN[0], ORIGIN[1] - SIZE * 10,
                                                ORIGIN[0] + SIZE * 10, ORIGIN[1])
    width, height = round((right - left) * 0.45 / 20), round((top - bottom) / 20) + 4
    for asset in ("vv", "vh"):
        data = rng.uniform(-25, -5, (height, width)).astype("float32")
        _cog(tmp_path / "c.tif", data, 20.0, "EPSG:32633", (left - 40, top + 40))
        s3.client().upload_file(str(tmp_path / "c.tif"), s3.name, _key(s1["assets"][asset]["href"]))
    return [*items, s1]


def _config(url: str) -> StacSearchConfig:
    return StacSearchConfig(url=url, bbox=AOI, datetime="2022-03-01/2022-03-31", retries=0, backoff_s=0.0,
                            timeout_s=10.0)


def _cfg() -> ShardConfig:
    return ShardConfig(sensors=SENSORS, crop="grid", chip_size=CHIP, chips_per_shard=4)


def _chips(folder) -> dict[str, dict]:
    return {c["id"]: c for c in read_samples(folder)}


def _gets(s3, start: int, suffix: tuple[str, ...] = (".tif", ".tiff")) -> list[dict]:
    return [e for e in s3.server.log[start:] if e["method"] == "GET" and e["path"].endswith(suffix)]


def test_windowed_chips_equal_the_whole_scene_cut(archive, stac_server, s3, tmp_path):
    pair_stac(_config(stac_server(archive).url), str(tmp_path / "pairs"), quiet=True)
    whole = write_shards(PairFolder(tmp_path / "pairs", sensors=SENSORS), tmp_path / "whole", _cfg())
    start = len(s3.server.log)
    assert main(["shards", "--data", str(tmp_path / "pairs"), "--layout", "pairs", "--out",
                 str(tmp_path / "win"), *SHARDS]) == 0
    assert all(e["range"] for e in _gets(s3, start))  # byte ranges only
    windowed = json.loads((tmp_path / "win" / "shards.json").read_text())
    a, b = _chips(tmp_path / "whole"), _chips(tmp_path / "win")
    assert sorted(a) == sorted(b) and len(a) == windowed["num_samples"] == whole["num_samples"]
    # the chips wholly outside the S1 footprint (its eastern part) are dropped, as from whole scenes
    per_scene = (SIZE // CHIP) ** 2
    assert 0 < windowed["scenes"]["low_valid_chips"] == whole["scenes"]["low_valid_chips"] < 2 * per_scene
    assert windowed["scenes"]["low_valid_reasons"] == {"s1_grd valid < min_valid_per_sensor 0.01":
                                                       windowed["scenes"]["low_valid_chips"]}
    assert windowed["scenes"]["scenes"] == 2 * per_scene  # a windowed sample is one chip
    s2 = get_sensor("s2_l1c")
    native = [s2.band_names.index(b.name) for b in s2.bands if b.resolution_m == 10]
    for cid, w in b.items():
        c = a[cid]
        assert w["crop"] == c["crop"] and w["scene_id"] == c["scene_id"]
        assert w["meta"]["window"] == {"scene": c["scene_id"], "y": c["crop"]["y"], "x": c["crop"]["x"],
                                       "size": CHIP}
        np.testing.assert_allclose(w["meta"]["transform"], c["meta"]["transform"])
        np.testing.assert_array_equal(w["s2_l1c"][native], c["s2_l1c"][native])  # native 10 m: exact
        np.testing.assert_array_equal(w["s2_l1c"], c["s2_l1c"])  # 20 and 60 m, bilinear: exact as well
        np.testing.assert_array_equal(w["valid.s1_grd"], c["valid.s1_grd"])
        # S1 from another CRS: exact here too (measured); over bigger windows GDAL's approximate
        # transformer (error threshold 0.125 px) may interpolate differently per window
        np.testing.assert_array_equal(w["s1_grd"], c["s1_grd"])


def test_chip_grid_from_proj_properties_without_reading_pixels(archive, stac_server, s3, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsis3/{s3.name}")
    pair_stac(_config(stac_server(archive).url), str(tmp_path / "pairs"), quiet=True)
    import pyarrow.parquet as pq

    grids = {r["s2_id"]: r["s2_grid"] for r in pq.read_table(tmp_path / "pairs" / "pairs.parquet").to_pylist()}
    assert json.loads(grids["S2A_new"]) == {"crs": "EPSG:32632", "shape": [SIZE, SIZE],
                                            "transform": [10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]]}
    assert grids["S2A_old"] is None  # no proj: properties
    start = len(s3.server.log)
    folder = PairFolder(tmp_path / "pairs", sensors=SENSORS, chip_size=CHIP)
    per_scene = (SIZE // CHIP) ** 2
    assert len(folder) == 2 * per_scene
    reads = _gets(s3, start)
    # S2A_new: nothing read; S2A_old: one header of its finest band (B02), never the whole file
    assert {e["path"].rsplit("/", 2)[-2] for e in reads} == {"S2A_old"}
    assert {e["path"].rsplit("/", 1)[-1] for e in reads} == {"B02.tif"}
    b02 = storage.size(json.loads(folder.rows[1][1]["s2_assets"])["B02"])
    assert sum(e["bytes"] for e in reads) < b02 and all(e["range"] for e in reads)
    sample = folder[per_scene + 1]  # S2A_old's second chip
    assert sample["id"] == f"pairs/S2A_old+S1A_04@0_{CHIP}" and sample["s2_l1c"].shape == (13, CHIP, CHIP)
    assert sample["meta"]["window"] == {"scene": "pairs/S2A_old+S1A_04", "y": 0, "x": CHIP, "size": CHIP}


def test_one_chip_of_a_big_scene_moves_a_small_fraction(s3, tmp_path, monkeypatch):
    """One 64 px chip of a 1024 px scene (13 COGs): the bytes moved are a small part of the files."""
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsis3/{s3.name}")
    item = _rehome(s2_item("S2B_big", "2022-03-03T10:10:21Z", AOI), s3.name)
    _s2_scene(s3, tmp_path, item, 1024, np.random.default_rng(1), proj=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from s12mae.stac_items import band_assets, proj_grid

    spec = get_sensor("s2_l1c")
    row = {"s2_id": "S2B_big", "s2_path": "https://stac.example/items/S2B_big", "s2_time": "2022-03-03T10:10:21Z",
           "s2_assets": json.dumps(band_assets(item, spec)), "s2_collection": "sentinel-2-l1c",
           "s2_dn_offset": 1000, "s2_grid": proj_grid(item, spec)}
    (tmp_path / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "pairs" / "s2_only.parquet")
    empty = {"s2_id": pa.string(), "s2_path": pa.string(), "s2_time": pa.string()}
    pq.write_table(pa.table({k: pa.array([], t) for k, t in empty.items()}), tmp_path / "pairs" / "pairs.parquet")
    folder = PairFolder(tmp_path / "pairs", s2_all=True, chip_size=CHIP)
    assert len(folder) == (1024 // CHIP) ** 2
    files = sum(storage.size(h) for h in json.loads(row["s2_assets"]).values())
    start = len(s3.server.log)
    chip = folder[5 * 16 + 7]
    moved = sum(e["bytes"] for e in _gets(s3, start))
    assert chip["meta"]["window"] == {"scene": "s2-all/S2B_big", "y": 5 * CHIP, "x": 7 * CHIP, "size": CHIP}
    assert moved < files / 20, f"moved {moved} of {files} bytes for one {CHIP} px chip"


def test_a_missing_asset_names_the_item_and_skip_bad_skips_its_chips(archive, stac_server, s3, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsis3/{s3.name}")
    pair_stac(_config(stac_server(archive).url), str(tmp_path / "pairs"), quiet=True)
    folder = PairFolder(tmp_path / "pairs", sensors=SENSORS, chip_size=CHIP)
    new = next(r for r, (_, row) in enumerate(folder.rows) if row["s2_id"] == "S2A_new")
    b05 = _key(json.loads(folder.rows[new][1]["s2_assets"])["B05"])
    s3.client().delete_object(Bucket=s3.name, Key=b05)
    first = next(i for i, (r, _) in enumerate(folder.samples) if r == new)
    with pytest.raises(ValueError) as err:
        folder[first]
    msg = str(err.value)
    assert "s2_id S2A_new" in msg and "chip at y 0 x 0" in msg and f"{b05}: not found" in msg, msg
    second = next(i for i, (r, _) in enumerate(folder.samples) if r == new and i != first)
    before = len(s3.server.log)
    with pytest.raises(ValueError, match=r"not found.*remembered for this scene's other chips"):
        folder[second]
    assert len(s3.server.log) == before  # no request: the scene's missing asset is remembered
    out = tmp_path / "set"
    argv = ["shards", "--data", str(tmp_path / "pairs"), "--layout", "pairs", "--out", str(out), *SHARDS]
    assert main(argv) != 0
    assert "(s2_id S2A_new), chip at y 0 x 0" in capsys.readouterr().err
    assert main([*argv, "--skip_bad", "true"]) == 0
    manifest = json.loads((out / "shards.json").read_text())
    assert len(manifest["scenes"]["skipped"]) == (SIZE // CHIP) ** 2  # every chip of S2A_new
    assert {c["meta"]["pair"]["s2_id"] for c in read_samples(out)} == {"S2A_old"}


def test_a_pairs_folder_on_object_storage(archive, stac_server, s3, tmp_path):
    url = s3.url("archive/pairs")
    api = stac_server(archive)
    pair_stac(_config(api.url), url, quiet=True)
    pair_stac(_config(api.url), str(tmp_path / "pairs"), quiet=True)
    assert storage.exists(storage.join(url, "pairs.parquet"))
    for data, out in ((url, "remote"), (str(tmp_path / "pairs"), "local")):
        assert main(["shards", "--data", data, "--layout", "pairs", "--out", str(tmp_path / out), *SHARDS]) == 0
    remote, local = _chips(tmp_path / "remote"), _chips(tmp_path / "local")
    assert sorted(remote) == sorted(local) and remote
    for cid, chip in remote.items():
        np.testing.assert_array_equal(chip["s2_l1c"], local[cid]["s2_l1c"])
        np.testing.assert_array_equal(chip["s1_grd"], local[cid]["s1_grd"])
    # `s12mae stats` streams the same folder; a URL without a pairs table is one clear error
    assert main(["stats", "--data", url, "--layout", "pairs", "--out", str(tmp_path / "stats.json")]) == 0
    with pytest.raises(ValueError, match=r"s3://.*/nowhere/pairs.parquet: not found"):
        PairFolder(s3.url("nowhere"))


def test_windowed_chips_on_a_dask_cluster_are_the_same_bytes(archive, stac_server, tmp_path):
    distributed = pytest.importorskip("distributed", reason="Dask is not installed (pip install 's12mae[dask]')")
    from test_shards import files

    pair_stac(_config(stac_server(archive).url), str(tmp_path / "pairs"), quiet=True)
    argv = ["shards", "--data", str(tmp_path / "pairs"), "--layout", "pairs", *SHARDS]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster):
        assert main([*argv, "--out", str(tmp_path / "dask"), "--cluster", cluster.scheduler_address,
                     "--progress", "false"]) == 0
    assert files(tmp_path / "one") == files(tmp_path / "dask")


def test_an_unreadable_scene_grid_names_the_item_and_skip_bad_leaves_it_out(archive, stac_server, s3, tmp_path,
                                                                           monkeypatch):
    """S2A_old has no ``proj:`` grid, so its finest band's header is read to list its chips: a 404
    there is one error naming the item when the folder is opened; ``skip_bad`` leaves the row out."""
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsis3/{s3.name}")
    pair_stac(_config(stac_server(archive).url), str(tmp_path / "pairs"), quiet=True)
    rows = PairFolder(tmp_path / "pairs").rows
    b02 = _key(json.loads(next(row for _, row in rows if row["s2_id"] == "S2A_old")["s2_assets"])["B02"])
    s3.client().delete_object(Bucket=s3.name, Key=b02)
    with pytest.raises(ValueError, match=rf"\(s2_id S2A_old\): .*{b02}: not found"):
        PairFolder(tmp_path / "pairs", sensors=SENSORS, chip_size=CHIP)
    folder = PairFolder(tmp_path / "pairs", sensors=SENSORS, chip_size=CHIP, skip_bad=True)
    assert len(folder) == (SIZE // CHIP) ** 2 and [s for s, _ in folder.skipped] == ["S2A_old"]
    assert {folder[i]["meta"]["pair"]["s2_id"] for i in range(len(folder))} == {"S2A_new"}


def test_a_file_in_another_crs_that_touches_only_the_chips_box_does_not_reach_it():
    """A chip's box in another CRS is rotated, so larger than the chip: a file in one corner of it
    misses the chip; its window is None (the chip's pixels stay nodata), not one the warp refuses."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import transform_bounds

    from s12mae.readers.grid import Grid
    from s12mae.readers.warp import warp
    from s12mae.readers.windows import covering_window, window_grid

    chip = Grid(CRS.from_epsg(32631), Affine(10, 0, 700000, 0, -10, 5002560), 256, 256)
    left, bottom, right, top = transform_bounds(chip.crs, CRS.from_epsg(32632), *chip.bounds, densify_pts=21)
    for x0, y0 in ((left, top), (right - 40, top), (left, bottom + 40), (right - 40, bottom + 40)):
        corner = Grid(CRS.from_epsg(32632), Affine(10, 0, x0, 0, -10, y0), 4, 4)
        assert covering_window(corner, chip) is None
        with pytest.raises(ValueError, match="does not overlap"):  # what a window there would have met
            warp(np.zeros((4, 4), np.float32), corner, chip, Resampling.bilinear, "corner.tif")
    middle = Grid(CRS.from_epsg(32632), Affine(10, 0, (left + right) / 2, 0, -10, (top + bottom) / 2), 64, 64)
    win = covering_window(middle, chip)
    assert win is not None and window_grid(middle, win).width > 0
