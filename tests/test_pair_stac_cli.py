"""``s12mae pair --stac URL ...``: the command line over a STAC API served on localhost."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from s12mae.cli import main

pytest_plugins = ["fixtures_servers"]  # the stac_server fixture
pytest.importorskip("pystac_client", reason="pystac-client is not installed (pip install pystac-client)")

from test_stac import AOI, archive


def test_pair_stac_from_the_command_line(stac_server, tmp_path, capsys):
    api = stac_server(archive(), page_cap=2)  # several pages per collection
    out = tmp_path / "pairs"
    assert main(["pair", "--stac", api.url, "--collections", "sentinel-2-l1c,sentinel-1-grd",
                 "--bbox", ",".join(str(v) for v in AOI), "--datetime", "2022-03-01/2022-03-31",
                 "--max_cloud", "20", "--out", str(out)]) == 0
    rows = {r["s2_id"]: r["s1_id"] for r in pq.read_table(out / "pairs.parquet").to_pylist()}
    assert rows == {"S2A_01": "S1A_02", "S2A_04": "S1A_05", "S2A_12": "S1A_13"}
    assert "sentinel-2-l1c: kept 3 of" in capsys.readouterr().out
    searches = [r for r in api.searches() if r["params"].get("collections") == ["sentinel-2-l1c"]]
    assert len(searches) >= 2  # it paged


def test_pair_stac_intersects_and_orbit_filter(stac_server, tmp_path):
    api = stac_server(archive())
    x0, y0, x1, y1 = AOI
    area = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    (tmp_path / "aoi.geojson").write_text(json.dumps({"type": "Feature", "geometry": area, "properties": {}}))
    assert main(["pair", "--stac", api.url, "--intersects", str(tmp_path / "aoi.geojson"),
                 "--datetime", "2022-03-01/2022-03-31", "--max_cloud", "20", "--orbit_state", "ascending",
                 "--out", str(tmp_path / "out"), "--quiet", "true"]) == 0
    rows = {r["s2_id"]: r["s1_id"] for r in pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()}
    assert "S1A_05" not in rows.values() and rows["S2A_01"] == "S1A_02"  # S1A_05 is descending


@pytest.mark.parametrize("args, message", [
    (["--bbox", "10,45,eleven,46"], "--bbox"),
    (["--bbox", "10,45,11,46", "--intersects", "{}"], "not both"),
    (["--collections", "sentinel-2-l1c"], "two names"),
    (["some/folder"], "leave out s2"),
])
def test_pair_stac_bad_options_are_one_clear_error(stac_server, tmp_path, capsys, args, message):
    api = stac_server(archive())
    assert main(["pair", "--stac", api.url, "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert main(["pair", "--out", str(tmp_path / "o")]) == 2
    assert "--stac" in capsys.readouterr().err
