"""Real-data edge cases (issue 13, items 11-15): BigEarthNet without georeferencing, pairing across
sensor families only, the baseline-04.00 offset suspected from the data, split selection, and the
statistics an evaluation records per sensor."""

from __future__ import annotations

import json
import shutil
import warnings
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
                 "--steps", "1", "--batch_size", "2", "--num_plot", "0", "--head.decoder", "vitlite_128d2b",
                 "--data.source", "real", "--data.path", str(stripped_ben), "--progress", "false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["train_samples"] == 6 and metrics["headline"]["value"] is not None


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
