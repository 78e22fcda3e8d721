"""``s12mae predict``: the head saved by ``s12mae evaluate`` applied to whole scenes.

Tested on the shared Sen1Floods11 chip (water segmentation) and BigEarthNet v1 patches (multi-label).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from affine import Affine
from conftest import shared
from safetensors.torch import load_file

from s12mae.evaluation import EvalConfig, EvalDataConfig, FitConfig, run_evaluation
from s12mae.export import save_encoder
from s12mae.evaluation.saved_model import load_eval_model
from s12mae.inference.predict import NODATA_CLASS, PredictConfig, predict_scene
from s12mae.models.vit import build_encoder
from s12mae.readers import BigEarthNetV1Reader
from s12mae.sensors import get_sensor

S2 = "S2/Spain_7370579_S2Hand.tif"


def _encoder(path, seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("vit_nano_patch16", {"s2_l1c": 13}, 128)
    save_encoder(enc, path, SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch16", img_size=128),
                                            method="mae"))
    return str(path)


def _evaluate(ckpt, out, task, folder, scenario="frozen"):
    cfg = EvalConfig(task=task, scenario=scenario, checkpoint=ckpt, out_dir=str(out),
                     fit=FitConfig(steps=2, batch_size=2), seed=0, progress=False, num_plot=0,
                     data=EvalDataConfig(source="real", path=str(folder)))
    run_evaluation(cfg)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """One intra-op thread for the whole module (design note 12), the module-scoped ``one_thread``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def floods(tmp_path_factory):
    root = tmp_path_factory.mktemp("floods")
    ckpt = _encoder(root / "encoder.safetensors")
    folder = shared("sen1floods11-sample")
    return ckpt, _evaluate(ckpt, root / "eval", "sen1floods11", folder), folder


def test_evaluate_saves_the_head_with_its_encoder_reference(floods):
    _, run, _ = floods
    spec = json.loads((run / "eval_model.json").read_text())
    assert spec["encoder"]["weights"] == "reference" and spec["encoder"]["checkpoint"].endswith("encoder.safetensors")
    assert spec["task"]["classes"] == ["background", "water"] and spec["plan"]["task_size"] == [512, 512]
    assert spec["input"]["key"] == "s2_l1c" and len(spec["input"]["mean"]) == 13
    model, _ = load_eval_model(run)
    assert not any(k.startswith("encoder.") for k in load_file(str(run / "eval_model.safetensors")))
    assert model.out_size == (512, 512)


def test_water_mask_on_the_sen1floods11_scene(floods, tmp_path):
    """One tile: the mask is exactly the argmax of the evaluation model on the task's own input."""
    _, run, folder = floods
    out = tmp_path / "water.tif"
    summary = predict_scene(PredictConfig(scene=str(folder / S2), model=str(run), out=str(out), progress=False))
    with rasterio.open(out) as ds, rasterio.open(folder / S2) as src:
        assert (ds.crs, ds.transform, ds.shape, ds.nodata) == (src.crs, src.transform, src.shape, NODATA_CLASS)
        mask = ds.read(1)
        dn = torch.from_numpy(src.read().astype(np.int16))
    spec = get_sensor("s2_l1c")
    x = spec.normalize(spec.to_units(dn))[None]
    model, _ = load_eval_model(run)
    with torch.no_grad():
        want = model(x).argmax(1)[0].numpy()
    np.testing.assert_array_equal(mask, want)
    assert sum(summary["class_pixels"].values()) == 512 * 512 and summary["tiles"] == 1


def test_larger_scene_slides_and_keeps_nodata(floods, tmp_path):
    """A 600 x 530 scene (the chip, mirrored to pad) with a nodata band: 4 blended tiles, nodata stays 255."""
    _, run, folder = floods
    with rasterio.open(folder / S2) as src:
        data, profile = src.read(), src.profile
    big = np.pad(data, ((0, 0), (0, 88), (0, 18)), mode="reflect")
    big[:, 550:, :] = 0  # nodata rows
    profile.update(height=big.shape[1], width=big.shape[2])
    scene = tmp_path / "big.tif"
    with rasterio.open(scene, "w", **profile) as ds:
        ds.write(big)
    out = tmp_path / "big_water.tif"
    summary = predict_scene(PredictConfig(scene=str(scene), model=str(run), out=str(out), overlap=64,
                                          progress=False))
    assert summary["tiles"] == 4 and summary["grid"] == [600, 530]
    with rasterio.open(out) as ds:
        mask = ds.read(1)
        assert ds.transform == profile["transform"]
    assert (mask[550:] == NODATA_CLASS).all() and set(np.unique(mask[:550])) <= {0, 1}


def test_head_from_another_encoder_is_refused(floods, tmp_path):
    _, run, folder = floods
    other = _encoder(tmp_path / "other.safetensors", seed=5)
    with pytest.raises(ValueError, match=r"the head was trained on encoder .*encoder.safetensors \(sha256 .*other"):
        predict_scene(PredictConfig(scene=str(folder / S2), model=str(run), out=str(tmp_path / "o.tif"),
                                    checkpoint=other, progress=False))
    with pytest.raises(ValueError, match=r"S1Hand.tif: has 2 band\(s\), but the s2_l1c encoder expects 13"):
        predict_scene(PredictConfig(scene=str(folder / "S1" / "Spain_7370579_S1Hand.tif"), model=str(run),
                                    out=str(tmp_path / "o.tif"), progress=False))
    with pytest.raises(ValueError, match="eval_model.json: not found"):
        predict_scene(PredictConfig(scene=str(folder / S2), model=str(tmp_path), out=str(tmp_path / "o.tif")))
    with pytest.raises(ValueError, match="a segmentation prediction is written as .tif/.tiff"):
        predict_scene(PredictConfig(scene=str(folder / S2), model=str(run), out=str(tmp_path / "o.parquet")))
    assert not any(p.name.startswith("o.") or ".tmp" in p.name for p in tmp_path.iterdir())


def test_bigearthnet_head_gives_per_tile_probabilities(tmp_path):
    folder = shared("bigearthnet-v1-example")
    ckpt = _encoder(tmp_path / "encoder.safetensors")
    run = _evaluate(ckpt, tmp_path / "ben", "bigearthnet", folder, scenario="finetune")
    spec = json.loads((run / "eval_model.json").read_text())
    assert spec["encoder"]["weights"] == "included" and spec["plan"]["filled"] == ["B10"]
    reader = BigEarthNetV1Reader(folder, sensors=["s2_l2a"])
    item = reader.items()[0].id
    out = tmp_path / "tiles.parquet"
    predict_scene(PredictConfig(scene=str(folder), layout="bigearthnet-v1", item=item, model=str(run), out=str(out),
                                progress=False))
    (row,) = pq.read_table(out).to_pylist()
    l2a = get_sensor("s2_l2a")
    x = l2a.normalize(l2a.to_units(torch.from_numpy(reader[0]["s2_l2a"])))[None]
    model, _ = load_eval_model(run)
    with torch.no_grad():
        want = model(x).sigmoid()[0].numpy()
    assert np.abs(np.asarray(row["probabilities"]) - want).max() < 1e-5 and row["valid_fraction"] == 1.0

    # a 2 x 2 mosaic of the patch as a 12-band stack: a 2 x 2 raster of 19 class probabilities
    stack = tmp_path / "mosaic.tif"
    tile = reader[0]["s2_l2a"]
    mosaic = np.tile(tile, (1, 2, 2))
    with rasterio.open(stack, "w", driver="GTiff", height=240, width=240, count=12, dtype="int16", nodata=0,
                       crs=reader[0]["meta"]["crs"], transform=Affine(*reader[0]["meta"]["transform"])) as ds:
        ds.write(mosaic)
    out_tif = tmp_path / "probs.tif"
    summary = predict_scene(PredictConfig(scene=str(stack), model=str(run), out=str(out_tif), progress=False))
    with rasterio.open(out_tif) as ds:
        probs = ds.read()
        assert ds.count == 19 and ds.shape == (2, 2) and ds.descriptions[0] == spec["task"]["classes"][0]
        assert ds.transform == Affine(*reader[0]["meta"]["transform"]) @ Affine.scale(120, 120)
    assert summary["tiles"] == 4 and np.abs(probs - want[:, None, None]).max() < 1e-5
