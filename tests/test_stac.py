"""STAC in (s12mae.stac, s12mae.stac_items): a STAC API served by the test on localhost answers
with crafted pages (pagination through next links, empty results, error and throttling pages);
filters, asset and baseline conventions, pairing and the written tables are checked. No network."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from fixtures_servers import s1_item, s2_item

from s12mae import storage
from s12mae.pairing import load_items, pair
from s12mae.sensors import get_sensor
from s12mae.stac import StacError, StacSearchConfig, pair_stac, search_stac
from s12mae.stac_items import band_assets, item_table, s2_offset

pytest_plugins = ["fixtures_servers"]  # the s3 and stac_server fixtures

pytest.importorskip("pystac_client", reason="pystac-client is not installed (pip install pystac-client)")

AOI = (10.0, 45.0, 11.0, 46.0)
FAR = (100.0, 10.0, 101.0, 11.0)


def archive() -> list[dict]:
    """7 S2 scenes (one cloudy, one without cloud cover, one far away, one outside the dates) and
    6 S1 scenes (one EW, one VV only, one descending), in the conventions of Earth Search."""
    s2 = [s2_item(f"S2A_{d:02d}", f"2022-03-{d:02d}T10:10:21Z", AOI, cloud=c)
          for d, c in ((1, 5.0), (4, 12.0), (8, 80.0), (12, 3.0))]
    s2 += [s2_item("S2A_nocloud", "2022-03-06T10:10:21Z", AOI, cloud=None),
           s2_item("S2A_far", "2022-03-02T10:10:21Z", FAR),
           s2_item("S2A_april", "2022-04-20T10:10:21Z", AOI)]
    s1 = [s1_item("S1A_02", "2022-03-02T05:00:00Z", (9.5, 44.5, 11.5, 46.5)),
          s1_item("S1A_05", "2022-03-05T05:00:00Z", (9.5, 44.5, 11.5, 46.5), orbit="descending"),
          s1_item("S1A_07", "2022-03-07T05:00:00Z", (9.5, 44.5, 11.5, 46.5), mode="EW"),
          s1_item("S1A_09", "2022-03-09T05:00:00Z", (9.5, 44.5, 11.5, 46.5), pols=("VV",)),
          s1_item("S1A_13", "2022-03-13T05:00:00Z", (9.5, 44.5, 11.5, 46.5)),
          s1_item("S1A_far", "2022-03-02T05:00:00Z", FAR)]
    return s2 + s1


def config(url: str = "http://127.0.0.1:1", **kw) -> StacSearchConfig:
    return StacSearchConfig(**{"url": url, "bbox": AOI, "datetime": "2022-03-01/2022-03-31", "max_cloud": 20.0,
                               "retries": 2, "backoff_s": 0.0, "timeout_s": 10.0, **kw})


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    ({"url": "earth-search.aws.element84.com/v1"}, "stac.url"),
    ({"collections": ("sentinel-2-l1c",)}, "two names"),
    ({"intersects": {"type": "Point", "coordinates": [10, 45]}}, "not both"),
    ({"bbox": (10.0, 46.0, 11.0, 45.0)}, "minlat <= maxlat"),
    ({"datetime": "March 2022"}, "RFC 3339"),
    ({"max_cloud": 150.0}, "percentage"),
    ({"orbit_state": "up"}, "orbit_state"),
    ({"collections": ("my-s2", "sentinel-1-grd")}, "s2_sensor"),
    ({"collections": ("sentinel-1-grd", "sentinel-2-l1c")}, "not a S2 sensor"),
])
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        config(**kw)


def test_config_defaults_follow_the_paper_and_public_catalogs():
    cfg = StacSearchConfig(url="https://earth-search.aws.element84.com/v1", s1_polarizations=("vv", "vh"))
    assert cfg.sensor("s2") == "s2_l1c" and cfg.sensor("s1") == "s1_grd"
    assert cfg.s1_modes == ("IW",) and cfg.s1_polarizations == ("VV", "VH")
    assert StacSearchConfig(url="https://x.org", collections=("sentinel-2-l2a", "sentinel-1-rtc")).sensor("s2") == "s2_l2a"


# -- item conventions -----------------------------------------------------------------------


def test_band_assets_follow_each_catalog_convention():
    l1c, l2a, s1 = get_sensor("s2_l1c"), get_sensor("s2_l2a"), get_sensor("s1_grd")
    es = band_assets(s2_item("a", "2022-03-01T10:00:00Z", AOI), l1c)  # Earth Search: common names, -jp2 twins
    assert list(es) == l1c.band_names
    assert es["B8A"].endswith("/B8A.tif") and es["B02"].endswith("/B02.tif")  # the COG, not the JPEG 2000
    pc = band_assets(s2_item("b", "2022-03-01T10:00:00Z", AOI, convention="planetary-computer"), l2a)
    assert list(pc) == l2a.band_names and pc["B11"].startswith("https://")
    cdse = {"assets": {"B02_20m": {"href": "s3://eodata/B02_20m.jp2", "type": "image/jp2"},
                       "B02_10m": {"href": "s3://eodata/B02_10m.jp2", "type": "image/jp2"},
                       "B02_60m": {"href": "s3://eodata/B02_60m.jp2", "type": "image/jp2"}}}
    assert band_assets(cdse, l1c) == {"B02": "s3://eodata/B02_10m.jp2"}  # the finest resolution
    assert band_assets(s1_item("c", "2022-03-01T05:00:00Z", AOI), s1)["VH"].endswith("iw-vh.tiff")


@pytest.mark.parametrize("props, when, expect", [
    ({"s2:processing_baseline": "04.00"}, "2022-03-01", ("04.00", 1000, "baseline")),
    ({"s2:processing_baseline": "03.01"}, "2021-06-01", ("03.01", 0, "baseline")),
    ({"processing:version": "05.09"}, "2019-06-01", ("05.09", 1000, "baseline")),  # CDSE, collection 1
    ({"s2:processing_baseline": "04.00", "earthsearch:boa_offset_applied": True}, "2022-03-01",
     ("04.00", 0, "offset_applied")),
    ({"s2:product_uri": "S2B_MSIL1C_20220301T101021_N0400_R022_T32TQM_20220301T121008.SAFE"}, "2022-03-01",
     (None, 1000, "baseline")),
    ({}, "2022-03-01", (None, 1000, "date")),
    ({}, "2021-12-31", (None, 0, "date")),
])
def test_s2_offset_from_item_properties(props, when, expect):
    item = {"id": "x", "properties": {"datetime": f"{when}T10:00:00Z", **props}}
    assert s2_offset(item) == expect


# -- searching the served API -------------------------------------------------------------------


@pytest.mark.parametrize("query, methods", [(True, ("GET", "POST")), (False, ("GET",))])
def test_search_pages_and_filters(stac_server, query, methods):
    api = stac_server(archive(), page_cap=2, query=query, methods=methods)
    s2, s1 = search_stac(config(api.url))
    assert sorted(i["id"] for i in s2) == ["S2A_01", "S2A_04", "S2A_12"]  # cloudy, no cloud cover, far, April out
    assert sorted(i["id"] for i in s1) == ["S1A_02", "S1A_05", "S1A_13"]  # EW and VV-only out
    searches = api.searches()
    assert {r["method"] for r in searches} == {"POST" if "POST" in methods else "GET"}
    assert any(r["params"].get("token") for r in searches)  # next links were followed
    sent = [r["params"].get("query") for r in searches]
    assert any(sent) == query  # filters travel with the search only where the API conforms to query
    s2d, _ = search_stac(config(api.url, orbit_state="descending"))
    assert s2d == s2  # orbit direction filters S1 only
    assert [i["id"] for i in search_stac(config(api.url, orbit_state="descending"))[1]] == ["S1A_05"]


def test_duplicates_across_pages_are_kept_once(stac_server):
    items = archive()
    api = stac_server(items + [items[0]], page_cap=3)
    s2, _ = search_stac(config(api.url))
    assert [i["id"] for i in s2].count("S2A_01") == 1


def test_searched_items_feed_the_pairing(stac_server):
    api = stac_server(archive())
    s2, s1 = search_stac(config(api.url))
    assert len(load_items(s2)) == 3  # items_from_stac takes the item dicts
    res = pair(s2, s1)
    got = dict(zip(res.pairs["s2_id"].to_pylist(), res.pairs["s1_id"].to_pylist(), strict=True))
    assert got == {"S2A_01": "S1A_02", "S2A_04": "S1A_05", "S2A_12": "S1A_13"}
    assert res.pairs["s2_path"][0].as_py().startswith(api.url + "/collections/sentinel-2-l1c/items/")


def test_pair_stac_writes_baseline_and_assets_columns(stac_server, tmp_path):
    items = archive()
    items[0]["properties"]["s2:processing_baseline"] = "03.01"  # S2A_01: an old baseline, no offset
    api = stac_server(items, query=False)  # every filter runs here: the drops are counted
    stats = pair_stac(config(api.url), str(tmp_path / "out"), quiet=True)
    assert stats["pairs"] == 3 and stats["s2_only"] == 0
    assert stats["stac"]["s2"]["dropped"] == {"cloud_cover": 1, "no_cloud_cover": 1}
    assert stats["stac"]["s1"]["dropped"] == {"instrument_mode": 1, "polarizations": 1}
    rows = {r["s2_id"]: r for r in pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()}
    assert rows["S2A_01"]["s2_dn_offset"] == 0 and rows["S2A_01"]["s2_processing_baseline"] == "03.01"
    assert rows["S2A_04"]["s2_dn_offset"] == 1000 and rows["S2A_04"]["s2_dn_rule"] == "baseline"
    assets = json.loads(rows["S2A_04"]["s2_assets"])
    assert list(assets) == get_sensor("s2_l1c").band_names and assets["B04"].startswith("s3://")
    assert set(json.loads(rows["S2A_04"]["s1_assets"])) == {"VV", "VH"}
    assert rows["S2A_04"]["s1_orbit_state"] == "descending" and rows["S2A_04"]["s1_polarizations"] == "VV+VH"
    # the searched items are a pairing index: pairing them again gives the same pairs
    again = pair(str(tmp_path / "out" / "stac_s2_items.parquet"), str(tmp_path / "out" / "stac_s1_items.parquet"))
    assert again.pairs["s1_id"].to_pylist() == [rows[k]["s1_id"] for k in again.pairs["s2_id"].to_pylist()]


def test_pair_stac_writes_to_object_storage(stac_server, s3):
    api = stac_server(archive())
    pair_stac(config(api.url), s3.url("runs/pairs"), quiet=True)
    names = [u.rsplit("/", 1)[1] for u in storage.list_files(s3.url("runs/pairs"))]
    assert names == ["pairs.parquet", "s2_only.parquet", "stac_s1_items.parquet", "stac_s2_items.parquet"]
    last_put = [e["path"] for e in s3.server.log if e["method"] == "PUT"][-1]
    assert last_put.endswith("/runs/pairs/pairs.parquet")  # the pairs table marks a complete output
    table = pq.read_table(io.BytesIO(storage.read_bytes(s3.url("runs/pairs/pairs.parquet"))))
    assert table.num_rows == 3 and "s2_dn_offset" in table.column_names


def test_intersects_geojson_file(stac_server, tmp_path):
    api = stac_server(archive())
    aoi = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[99.5, 9.5], [101.5, 9.5], [101.5, 11.5], [99.5, 11.5], [99.5, 9.5]]]}}]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    s2, s1 = search_stac(config(api.url, bbox=None, intersects=str(tmp_path / "aoi.geojson")))
    assert [i["id"] for i in s2] == ["S2A_far"] and [i["id"] for i in s1] == ["S1A_far"]
    assert api.searches()[0]["params"]["intersects"]["type"] == "Polygon"


def test_item_table_keeps_items_without_geometry_through_bbox():
    item = s2_item("nogeom", "2022-03-01T10:00:00Z", AOI)
    item["geometry"] = None
    tab = item_table([item], "s2_l1c")
    assert tab["footprint"][0].as_py() is None and tab["minlon"][0].as_py() == AOI[0]
    assert load_items(tab).has_geom.tolist() == [True]


# -- empty results and failures --------------------------------------------------------------


def test_empty_result_is_a_clear_error(stac_server, tmp_path):
    api = stac_server(archive())
    cfg = config(api.url, datetime="2019-01-01/2019-01-31")
    assert search_stac(cfg) == ([], [])
    with pytest.raises(StacError, match=r"no usable S2 item in sentinel-2-l1c .*0 found"):
        pair_stac(cfg, str(tmp_path / "out"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_server_errors_are_retried_then_reported(stac_server):
    api = stac_server(archive())
    api.fail("/search", [500, 503])  # two failures, then answers: retried, the search succeeds
    s2, _ = search_stac(config(api.url))
    assert len(s2) == 3
    api.fail("/search", [500] * 3)  # 1 try + 2 retries, all failing
    with pytest.raises(StacError) as err:
        search_stac(config(api.url))
    msg = str(err.value)
    assert f"{api.url}/search" in msg and "HTTP 500 after 2 retries" in msg and "crafted failure 500" in msg


def test_throttling_is_retried_with_backoff_then_one_error(stac_server):
    api = stac_server(archive())
    api.fail("/search", [429, 429], {"Retry-After": "0"})
    assert len(search_stac(config(api.url))[0]) == 3
    api.fail("/search", [429] * 3, {"Retry-After": "0"})
    with pytest.raises(StacError, match=r"throttled \(HTTP 429\) after 2 retries with backoff"):
        search_stac(config(api.url))


def test_unreachable_api_and_non_stac_landing_page(stac_server):
    with pytest.raises(StacError, match=r"STAC API http://127.0.0.1:9.*unreachable"):
        search_stac(config("http://127.0.0.1:9/api"))
    api = stac_server(archive())
    api.landing_override = {"hello": "not a catalog"}
    with pytest.raises(StacError, match="not a STAC API"):
        search_stac(config(api.url))
    api.landing_override = None
    api.landing_override = dict(api.landing(), conformsTo=["https://api.stacspec.org/v1.0.0/core"])
    with pytest.raises(StacError, match="does not offer item search"):
        search_stac(config(api.url))
