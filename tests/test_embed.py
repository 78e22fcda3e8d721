"""``s12mae embed``: patch embeddings of whole scenes (sliding windows, nodata, offsets, outputs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from affine import Affine
from conftest import shared
from shapely import wkb

from s12mae.export import encoder_info, save_encoder
from s12mae.inference.embed import EmbedConfig, embed_scene
from s12mae.inference.scene import open_scene
from s12mae.inference.tiling import Blender, border_weights, tile_starts, tiles_by_strip
from s12mae.models.vit import build_encoder
from s12mae.readers import Sen1Floods11Reader
from s12mae.sensors import get_sensor

S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def _encoder(path, sensors, seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("vit_nano_patch8", sensors, 32).eval()
    save_encoder(enc, path, SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch8", img_size=32),
                                            method="mae"))
    return enc


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    return path, _encoder(path, {"s2_l1c": 13, "s1_grd": 2})


def _write(path, data, transform=None, crs="EPSG:32633", nodata=0, descriptions=None, tags=None):
    count, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=data.dtype, crs=crs,
                       transform=transform or Affine(10, 0, 500000, 0, -10, 4500000), nodata=nodata) as ds:
        ds.write(data)
        if descriptions:
            ds.descriptions = tuple(descriptions)
        if tags:
            ds.update_tags(**tags)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 45 x 37 px crop of the real Sen1Floods11 S2 chip with a nodata corner (rows 0-15, cols 0-23)."""
    src = shared("sen1floods11-sample") / "S2" / "Spain_7370579_S2Hand.tif"
    with rasterio.open(src) as ds:
        data = ds.read(window=rasterio.windows.Window(100, 200, 37, 45))
    data[:, :16, :24] = 0
    return _write(tmp_path_factory.mktemp("scene") / "scene.tif", data, descriptions=S2_BANDS)


def test_tiles_cover_and_blending_keeps_constants():
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68] and tile_starts(20, 32, 24) == [0]
    strips = list(tiles_by_strip(40, 56, (32, 32), (24, 24)))
    assert [s[0].row for s in strips] == [0, 8] and [t.col for t in strips[0]] == [0, 24]
    got = {}
    blender = Blender(5, 7, 2, lambda r0, v, ok: got.update({r0: (v, ok)}))
    w = border_weights(4, 4)
    assert w.min() > 0 and w[1:3, 1:3].min() == w.max()
    for r, c in ((0, 0), (0, 3), (1, 0), (1, 3)):
        blender.add(r, c, np.full((2, 4, 4), 3.0), w, np.ones((4, 4), bool))
    blender.flush(1)
    blender.flush()
    assert sorted(got) == [0, 1]
    assert np.allclose(got[0][0], 3.0) and np.allclose(got[1][0], 3.0) and got[1][1].all()
    with pytest.raises(ValueError, match="after rows up to 5"):
        blender.add(0, 0, np.ones((2, 1, 1)), np.ones((1, 1)), np.ones((1, 1), bool))


def test_dense_embeddings_are_georeferenced_and_keep_nodata(enc, scene, tmp_path, one_thread):
    path, _ = enc
    out = tmp_path / "emb.tif"
    summary = embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(path), out=str(out), progress=False))
    assert summary["grid"] == [6, 5] and summary["tiles"] == 4  # 45 x 37 px -> 6 x 5 patches of 8 px
    with rasterio.open(out) as ds, rasterio.open(scene) as src:
        assert ds.count == 128 and ds.crs == src.crs and ds.transform == src.transform @ Affine.scale(8)
        emb = ds.read()
    assert np.isnan(emb[:, :2, :3]).all()  # patches wholly inside the nodata corner
    assert np.isfinite(emb[:, 2:, :]).all() and np.isfinite(emb[:, :, 3:]).all()


def test_one_tile_scene_equals_the_encoder(enc, tmp_path, one_thread):
    """A scene of exactly one tile: the output is the encoder's tokens on reader-standardised input."""
    path, model = enc
    src = shared("sen1floods11-sample") / "S2" / "Spain_7370579_S2Hand.tif"
    with rasterio.open(src) as ds:
        data = ds.read(window=rasterio.windows.Window(300, 64, 32, 32))
    scene = _write(tmp_path / "one.tif", data)
    out = tmp_path / "one.tif.emb.tif"
    for overlap in (0, 8):
        embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(path), out=str(out), overlap=overlap,
                                overwrite=True, progress=False))
        with rasterio.open(out) as ds:
            got = ds.read()
        spec = get_sensor("s2_l1c")
        x = spec.normalize(spec.to_units(torch.from_numpy(data.astype(np.int16))))[None]
        with torch.no_grad():
            want = model.forward_features(x)[0, 1:].T.reshape(128, 4, 4).numpy()
        assert np.abs(got - want).max() < 1e-5


def test_window_reads_match_the_reader(enc, one_thread):
    """Layout mode (the Sen1Floods11 reader's item) and the bare stack read what the reader loads."""
    path, _ = enc
    folder = shared("sen1floods11-sample")
    info = encoder_info(path).sensors["s2_l1c"]
    sample = Sen1Floods11Reader(folder, sensors=["s2_l1c"])[0]
    spec = get_sensor("s2_l1c")
    want = spec.to_units(torch.from_numpy(sample["s2_l1c"])).numpy()
    with open_scene(folder, info, layout="sen1floods11") as sc:
        assert (sc.grid.height, sc.grid.width) == want.shape[1:]
        got = sc.read(0, 0, sc.grid.height, sc.grid.width)
    np.testing.assert_array_equal(got, want)
    with open_scene(folder / "S2" / "Spain_7370579_S2Hand.tif", info) as sc:
        np.testing.assert_array_equal(sc.read(-3, 500, 8, 16)[:, 3:, :12], want[:, :5, 500:])
        assert np.isnan(sc.read(-3, 500, 8, 16)[:, :3]).all() and np.isnan(sc.read(0, 500, 8, 16)[:, :, 12:]).all()


def test_per_band_files_are_warped_onto_the_10m_grid(tmp_path, one_thread):
    """BigEarthNet v1 (per-band files at 10/20/60 m) through its layout: close to the reader's warp."""
    folder = shared("bigearthnet-v1-example")
    path = tmp_path / "l2a.safetensors"
    _encoder(path, {"s2_l2a": 12})
    info = encoder_info(path).sensors["s2_l2a"]
    from s12mae.readers import BigEarthNetV1Reader

    reader = BigEarthNetV1Reader(folder, sensors=["s2_l2a"])
    item = reader.items()[0].id
    want = get_sensor("s2_l2a").to_units(torch.from_numpy(reader[0]["s2_l2a"])).numpy()
    with open_scene(folder, info, layout="bigearthnet-v1", item=item) as sc:
        got = sc.read(0, 0, 120, 120)
    assert got.shape == want.shape == (12, 120, 120)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(got[inner] - want[inner]).mean() < 2e-3  # the same bilinear warp, up to DN rounding
    with pytest.raises(ValueError, match="holds 6 items; choose one with --item"):
        open_scene(folder, info, layout="bigearthnet-v1")


def test_baseline_offset_is_removed_through_the_readers_rule(enc, tmp_path):
    path, _ = enc
    info = encoder_info(path).sensors["s2_l1c"]
    data = np.full((13, 16, 16), 1500, np.int16)
    new = _write(tmp_path / "new.tif", data, tags={"PRODUCT_ID": "S2B_MSIL1C_20230601T101559_N0509_R065_T32TQM"})
    old = _write(tmp_path / "old.tif", data, tags={"DATETIME": "2019-05-01T10:00:00Z"})
    with open_scene(new, info) as sc:
        assert sc.offsets["rule"] == "baseline" and np.allclose(sc.read(0, 0, 4, 4), 0.05)
    with open_scene(old, info) as sc:
        assert sc.offsets["rule"] == "date" and np.allclose(sc.read(0, 0, 4, 4), 0.15)
    with open_scene(old, info, s2_offset=1000) as sc:
        assert np.allclose(sc.read(0, 0, 4, 4), 0.05)


def test_pooled_vectors_go_to_geoparquet_with_footprints(enc, scene, tmp_path, one_thread):
    path, _ = enc
    out = tmp_path / "tiles.parquet"
    summary = embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(path), out=str(out), pool=True, tile=16,
                                      progress=False))
    table = pq.read_table(out)
    assert table.num_rows == summary["tiles"] == 9  # 48 x 40 padded px in 16 px tiles, no overlap
    assert b"geo" in table.schema.metadata
    rows = table.to_pylist()
    first = rows[0]
    assert first["valid_fraction"] == 0.0 and first["embedding"] is None  # inside the nodata corner
    assert all(len(r["embedding"]) == 128 for r in rows[1:])
    with rasterio.open(scene) as ds:
        lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [ds.bounds.left], [ds.bounds.top])
    poly = wkb.loads(first["footprint"])
    assert poly.bounds[0] == pytest.approx(lon[0], abs=1e-6) and poly.bounds[3] == pytest.approx(lat[0], abs=1e-6)
    last = rows[-1]  # the last column of tiles moves back to end at the padded edge (40 px)
    assert (last["row"], last["col"], last["height"], last["width"]) == (32, 24, 45 - 32, 37 - 24)


def test_zarr_output_matches_geotiff(enc, scene, tmp_path, one_thread):
    zarr = pytest.importorskip("zarr", reason="the [zarr] extra is not installed")
    path, _ = enc
    embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(path), out=str(tmp_path / "e.tif"), progress=False))
    embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(path), out=str(tmp_path / "e.zarr"), progress=False))
    arr = zarr.open_array(str(tmp_path / "e.zarr"), mode="r")
    with rasterio.open(tmp_path / "e.tif") as ds:
        np.testing.assert_array_equal(arr[:], ds.read())
        assert arr.attrs["transform"] == list(ds.transform)[:6] and "PROJCS" in arr.attrs["crs"]


def test_s1_scene_uses_the_s1_patch_embedding(enc, tmp_path, one_thread):
    path, _ = enc
    src = shared("sen1floods11-sample") / "S1" / "Spain_7370579_S1Hand.tif"
    out = tmp_path / "s1.tif"
    summary = embed_scene(EmbedConfig(scene=str(src), checkpoint=str(path), out=str(out), sensor="s1_grd", tile=64,
                                      overlap=0, progress=False))
    assert summary["sensor"] == "s1_grd" and summary["grid"] == [64, 64]


def test_bad_inputs_are_one_clear_error_and_leave_nothing(enc, scene, tmp_path):
    path, _ = enc
    run = lambda **kw: embed_scene(EmbedConfig(**{"scene": str(scene), "checkpoint": str(path),
                                                  "out": str(tmp_path / "o.tif"), "progress": False, **kw}))
    twelve = _write(tmp_path / "twelve.tif", np.ones((12, 16, 16), np.int16))
    with pytest.raises(ValueError, match=r"twelve.tif: has 12 band\(s\), but the s2_l1c encoder expects 13"):
        run(scene=str(twelve))
    renamed = _write(tmp_path / "renamed.tif", np.ones((13, 16, 16), np.int16),
                     descriptions=["B2", "B1", *S2_BANDS[2:-1], "B13"])
    with pytest.raises(ValueError, match=r"input has bands \['B2', 'B1'.*expects \['B01', 'B02'"):
        run(scene=str(renamed))
    tiny = _write(tmp_path / "tiny.tif", np.ones((13, 5, 40), np.int16))
    with pytest.raises(ValueError, match="the scene is 5 x 40 px, smaller than one 8 x 8 patch"):
        run(scene=str(tiny))
    with pytest.raises(ValueError, match=r"no patch embedding for sensor 's2_l2a'; it has \['s2_l1c', 's1_grd'\]"):
        run(sensor="s2_l2a")
    with pytest.raises(ValueError, match="tile: 20 px is not a multiple of the encoder's patch size 8"):
        run(tile=20)
    with pytest.raises(ValueError, match="patch embeddings are written as .tif/.tiff/.zarr"):
        EmbedConfig(scene="s.tif", checkpoint="c", out="o.png")
    with pytest.raises(ValueError, match="scene.tif: scene file not found"):
        run(scene=str(tmp_path / "scene.tif"))
    made = [p.name for p in tmp_path.iterdir()]
    assert "o.tif" not in made and not any(".tmp" in n for n in made)
    (tmp_path / "o.tif").write_text("taken")
    with pytest.raises(FileExistsError, match="o.tif already exists"):
        run()
    assert math.isfinite(encoder_info(path).sensors["s2_l1c"].mean[0])
