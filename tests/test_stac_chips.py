"""Chips from STAC asset hrefs: `s12mae pair --stac` on a localhost STAC API whose items point at
COGs in a localhost S3 endpoint, then `s12mae shards --layout pairs` reads the chips from those
hrefs; the S2 offset decided from the item properties travels into the shards. Also the asset
failures: a missing COG (404), throttling (retried with backoff, then one error naming the item),
an unreachable endpoint. No network."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures_servers import s1_item, s2_item
from throttling import Throttle

from s12mae.cli import main
from s12mae.layouts import PairFolder
from s12mae.sensors import get_sensor
from s12mae.shards import read_samples
from s12mae.stac import StacSearchConfig, pair_stac

pytest_plugins = ["fixtures_servers"]  # the s3 and stac_server fixtures
pytest.importorskip("pystac_client", reason="pystac-client is not installed (pip install pystac-client)")
rasterio = pytest.importorskip("rasterio")

AOI = (10.0, 45.0, 11.0, 46.0)
SIZE = 64  # S2 COG side, px at 10 m (ours: tiny); S1 at 20 m, half that
ORIGIN = (600_000.0, 5_000_000.0)  # UTM 32N
SHARDS = [
    "--shards.sensors",
    "[s2_l1c, s1_grd]",
    "--shards.crop",
    "grid",
    "--shards.chip_size",
    "32",
    "--shards.chips_per_shard",
    "4",
]


def _cog(path, data: np.ndarray, res: float) -> None:
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs="EPSG:32632",
        transform=from_origin(*ORIGIN, res, res),
    ) as ds:
        ds.write(data[None])


def _rehome(item: dict, bucket: str) -> dict:
    """Point the item's COG assets into the test bucket (same keys as the public catalogs)."""
    for asset in item["assets"].values():
        href = asset["href"]
        if href.startswith("s3://"):
            asset["href"] = f"s3://{bucket}/" + href.split("/", 3)[3]
    return item


@pytest.fixture
def archive(s3, tmp_path):
    """Two S2 scenes (baseline 04.00: +1000 DN; 02.09: none) and one S1 scene, as items whose COGs
    are in the bucket: (items, {s2 id: {band: DN array}}, S1 {band: dB array})."""
    rng = np.random.default_rng(0)
    client = s3.client()
    items, s2_values = [], {}
    for item_id, day, baseline in (("S2A_new", 3, "04.00"), ("S2A_old", 5, "02.09")):
        item = _rehome(s2_item(item_id, f"2022-03-{day:02d}T10:10:21Z", AOI, baseline=baseline), s3.name)
        s2_values[item_id] = {}
        for band in get_sensor("s2_l1c").band_names:
            key_for = next(a["href"] for k, a in item["assets"].items() if a["href"].endswith(f"/{band}.tif"))
            data = rng.integers(1100, 4000, (SIZE, SIZE)).astype("uint16")
            _cog(tmp_path / "c.tif", data, 10.0)
            client.upload_file(str(tmp_path / "c.tif"), s3.name, key_for.split("/", 3)[3])
            s2_values[item_id][band] = data
        items.append(item)
    s1 = _rehome(s1_item("S1A_04", "2022-03-04T05:00:00Z", (9.5, 44.5, 11.5, 46.5)), s3.name)
    s1_values = {}
    for band, asset in (("VV", "vv"), ("VH", "vh")):
        data = rng.uniform(-25, -5, (SIZE // 2, SIZE // 2)).astype("float32")
        _cog(tmp_path / "c.tif", data, 20.0)
        client.upload_file(str(tmp_path / "c.tif"), s3.name, s1["assets"][asset]["href"].split("/", 3)[3])
        s1_values[band] = data
    return [*items, s1], s2_values, s1_values


def config(url: str) -> StacSearchConfig:
    return StacSearchConfig(
        url=url, bbox=AOI, datetime="2022-03-01/2022-03-31", retries=0, backoff_s=0.0, timeout_s=10.0
    )


def shards_of_pairs(tmp_path, *extra: str) -> int:
    """``s12mae shards`` of the pairs in ``tmp_path/pairs`` into ``tmp_path/set``."""
    return main(["shards", "--data", str(tmp_path / "pairs"), "--layout", "pairs", "--out", str(tmp_path / "set"),
                 *SHARDS, *extra])


def test_shards_read_chips_from_stac_asset_hrefs(archive, stac_server, s3, tmp_path, monkeypatch):
    items, s2_values, _ = archive
    api = stac_server(items)
    stats = pair_stac(config(api.url), str(tmp_path / "pairs"), quiet=True)
    assert stats["pairs"] == 2
    rows = {r["s2_id"]: r for r in pq.read_table(tmp_path / "pairs" / "pairs.parquet").to_pylist()}
    assert json.loads(rows["S2A_new"]["s2_assets"])["B04"].startswith(f"s3://{s3.name}/")
    start = len(s3.server.log)
    assert shards_of_pairs(tmp_path) == 0
    cogs = [
        e for e in s3.server.log[start:] if e["method"] == "GET" and e["path"].endswith((".tif", ".tiff"))
    ]
    assert cogs and all(e["range"] for e in cogs)  # GDAL's byte-range reads of the COGs
    chips = list(read_samples(tmp_path / "set"))
    assert len(chips) == 2 * (SIZE // 32) ** 2
    b04 = get_sensor("s2_l1c").band_names.index("B04")
    for chip in chips:
        s2_id = chip["meta"]["pair"]["s2_id"]
        offset = 1000 if s2_id == "S2A_new" else 0  # decided from s2:processing_baseline
        assert chip["meta"]["stac"]["s2_dn_offset"] == offset
        assert chip["meta"]["dn_offset"]["s2_l1c"]["dn"] == [offset] * 13
        y, x = chip["crop"]["y"], chip["crop"]["x"]
        want = s2_values[s2_id]["B04"][y : y + 32, x : x + 32].astype(np.int64) - offset
        np.testing.assert_array_equal(chip["s2_l1c"][b04].astype(np.int64), want)
        vv = chip["s1_grd"][0]
        assert np.isfinite(vv).mean() > 0.9 and -25 <= np.nanmin(vv) and np.nanmax(vv) <= -5


def test_missing_throttled_and_unreachable_assets_name_the_item(
    archive, stac_server, s3, tmp_path, monkeypatch
):
    items, _, _ = archive
    api = stac_server(items)
    pair_stac(config(api.url), str(tmp_path / "pairs"), quiet=True)
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", f"/vsis3/{s3.name}")  # GDAL would keep the bytes it read
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")
    folder = PairFolder(tmp_path / "pairs", sensors=["s2_l1c", "s1_grd"])
    order = [row["s2_id"] for _, row in folder.rows]
    new = order.index("S2A_new")
    b03 = json.loads(folder.rows[new][1]["s2_assets"])["B03"].split("/", 3)[3]

    # throttled twice, then served: the retries absorb it
    throttle = Throttle(s3.server, f"/{s3.name}/{b03}", times=2)
    with throttle:
        assert folder[new]["s2_l1c"].shape == (13, SIZE, SIZE)
    assert throttle.refused == 2
    # throttled for good: one error naming the item, the file and the retries
    with Throttle(s3.server, f"/{s3.name}/{b03}", times=100), pytest.raises(ValueError) as err:
        folder[new]
    msg = str(err.value)
    assert "s2_id S2A_new" in msg and b03 in msg and "throttling after 2 retries with backoff" in msg, msg
    # a missing asset (404)
    s3.client().delete_object(Bucket=s3.name, Key=b03)
    with pytest.raises(ValueError, match=rf"s2_id S2A_new.*{b03}: not found"):
        folder[new]
    # --skip_bad skips it with the reason, and the other scene's chips are written
    assert shards_of_pairs(tmp_path, "--skip_bad", "true") == 0
    chips = list(read_samples(tmp_path / "set"))
    assert {c["meta"]["pair"]["s2_id"] for c in chips} == {"S2A_old"}
    # refused credentials: access denied, naming the item, never the secret
    old = order.index("S2A_old")
    s3.server.enforce_auth(True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "refused-secret-Wq7/never-printed")
    with pytest.raises(ValueError) as err:
        folder[old]
    msg = str(err.value)
    assert "s2_id S2A_old" in msg and "access denied" in msg and "never-printed" not in msg, msg
    s3.server.enforce_auth(False)
    # an unreachable endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"s2_id S2A_old.*s3://"):
        folder[old]


def test_refused_stac_credentials_are_one_clear_error(stac_server):
    from s12mae.stac import StacError, search_stac

    api = stac_server([])
    api.fail("/search", [403])
    with pytest.raises(StacError, match=r"STAC API http://127.0.0.1:\d+/search: access refused \(HTTP 403\)"):
        search_stac(config(api.url))
    assert len(api.searches()) == 1  # refused is not retried
