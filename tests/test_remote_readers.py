"""A generic index of GeoTIFF stacks on object storage (a local S3 endpoint), read in place."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from conftest import shared

from s12mae import storage
from s12mae.layouts import open_layout
from s12mae.readers import GenericReader

pytest_plugins = ["fixtures_servers"]  # the s3 fixture
pytestmark = pytest.mark.usefixtures("one_thread")


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_generic_index_on_s3_reads_like_the_local_one(s3, tmp_path):
    root = shared("sen1floods11-sample")
    s2, s1 = root / "S2" / "Spain_7370579_S2Hand.tif", root / "S1" / "Spain_7370579_S1Hand.tif"
    for path, key in ((s2, "data/S2/spain.tif"), (s1, "data/S1/spain.tif")):
        storage.write_bytes(s3.url(key), path.read_bytes())
    row = {"id": "spain", "s2_path": "S2/spain.tif", "s1_path": "S1/spain.tif", "s2_time": "2019-09-18T10:50:00Z"}
    storage.write_bytes(s3.url("data/index.csv"), _csv([row]))  # paths relative to the index's folder there
    local = tmp_path / "index.csv"
    local.write_bytes(_csv([{**row, "s2_path": str(s2), "s1_path": str(s1)}]))

    there, here = open_layout("generic", s3.url("data/index.csv")), GenericReader(local)
    assert len(there) == 1
    a, b = there[0], here[0]
    assert a["id"] == b["id"] == "generic/spain"
    assert a["meta"]["files"]["s2_l1c"] == [s3.url("data/S2/spain.tif")]
    for key in ("s2_l1c", "s1_grd", "valid.s2_l1c", "valid.s1_grd"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["meta"]["dn_offset"] == b["meta"]["dn_offset"]

    storage.write_bytes(s3.url("data/bad.csv"), _csv([{**row, "s1_path": "S1/gone.tif"}]))
    with pytest.raises(ValueError, match=r"gone\.tif"):  # a missing stack: one error naming it
        open_layout("generic", s3.url("data/bad.csv"))[0]
    with pytest.raises(ValueError, match=r"data/none\.csv: index file not found"):
        open_layout("generic", s3.url("data/none.csv"))


def test_a_folder_layout_at_a_url_is_one_clear_error():
    with pytest.raises(ValueError, match=r"s3://bucket/sen1floods11: layout 'sen1floods11' reads a local folder"):
        open_layout("sen1floods11", "s3://bucket/sen1floods11")
