"""Tests of the simulated Sentinel-1/2 dataset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from s12mae.sensors import get_sensor
from s12mae.simulate import (
    LAND_COVER_CLASSES,
    SimulationConfig,
    load_simulated,
    simulate,
    simulate_scene,
    simulated_samples,
    write_simulated,
)

CFG = SimulationConfig(num_samples=8, img_size=32, seed=3, label_scale=4)
WATER, URBAN = LAND_COVER_CLASSES.index("water"), LAND_COVER_CLASSES.index("urban")
VEGETATION = [LAND_COVER_CLASSES.index(c) for c in ("forest", "cropland", "grassland")]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return simulate(CFG)


def _pure(landcover_hr: np.ndarray, label_scale: int) -> np.ndarray:
    """``(..., Hf, Wf)`` class map -> ``(..., H, W)`` class of pure blocks, -1 for mixed ones."""
    *lead, hf, wf = landcover_hr.shape
    s = label_scale
    blocks = landcover_hr.reshape(*lead, hf // s, s, wf // s, s).astype(int)
    first = blocks[..., :1, :, :1]
    pure = (blocks == first).all(axis=(-3, -1))
    return np.where(pure, first[..., 0, :, 0], -1)


def _assert_equal_scenes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def test_deterministic_per_index() -> None:
    _assert_equal_scenes(simulate_scene(5, CFG), simulate_scene(5, CFG))
    assert not np.array_equal(simulate_scene(5, CFG)["s2_l1c"], simulate_scene(6, CFG)["s2_l1c"])
    other_seed = replace(CFG, seed=4)
    assert not np.array_equal(simulate_scene(5, CFG)["s1_grd"], simulate_scene(5, other_seed)["s1_grd"])


def test_scene_equals_slice_of_dataset(data: dict[str, np.ndarray]) -> None:
    for i in (0, 5, 7):
        _assert_equal_scenes(simulate_scene(i, CFG), {k: v[i] for k, v in data.items()})


def test_shapes_and_dtypes(data: dict[str, np.ndarray]) -> None:
    n, h, hf = CFG.num_samples, CFG.img_size, CFG.img_size * CFG.label_scale
    expected = {
        "s2_l1c": ((n, 13, h, h), np.int16),
        "s1_grd": ((n, 2, h, h), np.float32),
        "available.s1_grd": ((n,), np.uint8),
        "cloud": ((n, h, h), np.uint8),
        "water": ((n, h, h), np.uint8),
        "landcover_presence": ((n, len(LAND_COVER_CLASSES)), np.uint8),
        "landcover_hr": ((n, hf, hf), np.uint8),
    }
    assert data.keys() == expected.keys()
    for key, (shape, dtype) in expected.items():
        assert data[key].shape == shape and data[key].dtype == dtype, key
    assert get_sensor("s2_l1c").num_channels == 13 and get_sensor("s1_grd").num_channels == 2


def test_value_ranges(data: dict[str, np.ndarray]) -> None:
    assert data["s2_l1c"].min() >= 1  # 0 is nodata
    assert np.isfinite(data["s1_grd"]).all()
    assert set(np.unique(data["cloud"])) <= {0, 1} and set(np.unique(data["water"])) <= {0, 1}
    assert data["landcover_hr"].max() < len(LAND_COVER_CLASSES)


def test_water_darker_than_vegetation_in_nir(data: dict[str, np.ndarray]) -> None:
    b08 = get_sensor("s2_l1c").band_index(["B08"])[0]
    pure = _pure(data["landcover_hr"], CFG.label_scale)
    clear = data["cloud"] == 0
    nir = data["s2_l1c"][:, b08]
    water, vegetation = nir[(pure == WATER) & clear], nir[np.isin(pure, VEGETATION) & clear]
    assert water.size > 50 and vegetation.size > 50
    assert np.median(water) * 5 < np.median(vegetation)


def test_clouds_brighten_b10_and_leave_s1_alone() -> None:
    cloudy, clear = replace(CFG, cloud_probability=1.0), replace(CFG, cloud_probability=0.0)
    b10 = get_sensor("s2_l1c").band_index(["B10"])[0]
    for i in range(3):
        a, b = simulate_scene(i, cloudy), simulate_scene(i, clear)
        assert a["cloud"].any() and not b["cloud"].any()
        mask = a["cloud"] == 1
        assert a["s2_l1c"][b10][mask].mean() > 10 * b["s2_l1c"][b10][mask].mean() + 1000
        np.testing.assert_array_equal(a["s1_grd"], b["s1_grd"])
        np.testing.assert_array_equal(a["landcover_hr"], b["landcover_hr"])


def test_s1_water_darker_than_urban(data: dict[str, np.ndarray]) -> None:
    pure = _pure(data["landcover_hr"], CFG.label_scale)
    vv = data["s1_grd"][:, 0]
    assert np.median(vv[pure == WATER]) + 10 < np.median(vv[pure == URBAN])


def test_speckle_coefficient_of_variation(data: dict[str, np.ndarray]) -> None:
    # Objects have their own backscatter texture, so compare against the same scenes with almost
    # no speckle (ENL 1000): the ratio is the speckle alone, std sqrt(1/4.4 + 1/1000).
    smooth = simulate(replace(CFG, enl=1000.0))
    ratio = 10.0 ** ((data["s1_grd"].astype(np.float64) - smooth["s1_grd"]) / 10.0)
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    assert ratio.std() == pytest.approx(np.sqrt(1.0 / CFG.enl + 1.0 / 1000.0), rel=0.05)


def test_water_mask_matches_label_map(data: dict[str, np.ndarray]) -> None:
    s, k = CFG.label_scale, len(LAND_COVER_CLASSES)
    hr = data["landcover_hr"]
    n, hf, wf = hr.shape
    onehot = np.eye(k, dtype=np.int64)[hr]  # (N, Hf, Wf, K)
    counts = onehot.reshape(n, hf // s, s, wf // s, s, k).sum(axis=(2, 4))
    np.testing.assert_array_equal(data["water"], counts.argmax(axis=-1) == WATER)
    fraction = counts.sum(axis=(1, 2)) / (hf * wf)
    np.testing.assert_array_equal(data["landcover_presence"], fraction >= 0.01)


def test_misalignment_shifts_s1_only() -> None:
    shifted = replace(CFG, misalignment_px=2.5)
    moved = 0
    for i in range(4):
        a, b = simulate_scene(i, shifted), simulate_scene(i, CFG)
        np.testing.assert_array_equal(a["s2_l1c"], b["s2_l1c"])
        moved += not np.array_equal(a["s1_grd"], b["s1_grd"])
    assert moved >= 3


def test_write_load_round_trip(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    out = write_simulated(tmp_path / "sim", CFG)
    arrays, meta = load_simulated(out)
    _assert_equal_scenes(arrays, data)
    assert isinstance(arrays["s2_l1c"], np.memmap)
    assert meta["simulated"] is True and meta["classes"] == list(LAND_COVER_CLASSES)
    assert SimulationConfig(**meta["config"]) == CFG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]  # no temporary folders left


def test_overwrite(tmp_path: Path) -> None:
    small = replace(CFG, num_samples=2)
    out = write_simulated(tmp_path / "sim", small)
    with pytest.raises(FileExistsError, match="sim"):
        write_simulated(out, small)
    write_simulated(out, replace(small, num_samples=3), overwrite=True)
    assert load_simulated(out)[0]["cloud"].shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]


def test_corrupt_or_missing_files(tmp_path: Path) -> None:
    out = write_simulated(tmp_path / "sim", replace(CFG, num_samples=2))
    (out / "water.npy").unlink()
    with pytest.raises(ValueError, match="water.npy"):
        load_simulated(out)
    (out / "cloud.npy").write_bytes(b"not an npy file")
    (out / "meta.json").write_text("{broken")
    with pytest.raises(ValueError, match="meta.json"):
        load_simulated(out)
    (out / "meta.json").write_text(json.dumps({"format_version": 1, "arrays": {"cloud": {}}}))
    with pytest.raises(ValueError, match="cloud.npy"):
        load_simulated(out)
    with pytest.raises(ValueError, match="nowhere"):
        load_simulated(tmp_path / "nowhere")


def test_scene_count_mismatch(tmp_path: Path) -> None:
    out = write_simulated(tmp_path / "sim", replace(CFG, num_samples=2))
    np.save(out / "water.npy", np.zeros((3, CFG.img_size, CFG.img_size), np.uint8))
    meta = json.loads((out / "meta.json").read_text())
    meta["arrays"]["water"]["shape"][0] = 3
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="number of scenes"):
        load_simulated(out)


def test_negative_index_rejected() -> None:
    with pytest.raises(ValueError, match="index"):
        simulate_scene(-1, CFG)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 0),
        ("img_size", 2),
        ("seed", -1),
        ("label_scale", 1.5),
        ("cloud_probability", 1.2),
        ("max_cloud_cover", -0.1),
        ("misalignment_px", -1.0),
        ("enl", 0.0),
        ("pixel_variation", 2.0),
    ],
)
def test_config_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**{field: value})


def test_s2_only_scenes_have_no_s1_and_leave_the_rest_unchanged():
    cfg = SimulationConfig(num_samples=40, img_size=16, s1_fraction=0.5)
    data = simulate(cfg)
    avail = data["available.s1_grd"].astype(bool)
    assert 5 < avail.sum() < 35
    assert np.isnan(data["s1_grd"][~avail]).all() and np.isfinite(data["s1_grd"][avail]).all()
    full = simulate(SimulationConfig(num_samples=40, img_size=16))
    np.testing.assert_array_equal(data["s2_l1c"], full["s2_l1c"])
    np.testing.assert_array_equal(data["s1_grd"][avail], full["s1_grd"][avail])


def test_simulated_samples_are_reader_samples(tmp_path: Path) -> None:
    cfg = replace(CFG, num_samples=10, img_size=16, s1_fraction=0.5)
    out = write_simulated(tmp_path / "sim", cfg)
    arrays, _ = load_simulated(out)
    samples = simulated_samples(out)
    assert len(samples) == 10
    avail = arrays["available.s1_grd"].astype(bool)
    for i, sample in enumerate(samples):
        assert sample["id"] == f"sim-{i:06d}" and sample["meta"]["source"] == "simulated"
        np.testing.assert_array_equal(sample["s2_l1c"], arrays["s2_l1c"][i])
        assert sample["valid.s2_l1c"].dtype == bool and sample["valid.s2_l1c"].all()  # DN >= 1
        assert ("s1_grd" in sample) == avail[i] == ("gap_hours" in sample["meta"])
        if avail[i]:
            np.testing.assert_array_equal(sample["s1_grd"], arrays["s1_grd"][i])
            assert sample["valid.s1_grd"].all()
        labels = {"label.cloud", "label.water", "label.landcover_presence", "label.landcover_hr"}
        assert labels <= set(sample)
    with pytest.raises(IndexError):
        samples[10]
