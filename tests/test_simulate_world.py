"""The simulated world's structure: objects larger than a patch, classes that one S2 pixel cannot
tell apart but S1 helps with, cloud shadows on S2 only (s12mae.simulate_landscape)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from s12mae.sensors import get_sensor
from s12mae.simulate import LAND_COVER_CLASSES, SimulationConfig, simulate, simulate_scene
from s12mae.simulate_landscape import ENDMEMBERS, landscape

CROP, GRASS = LAND_COVER_CLASSES.index("cropland"), LAND_COVER_CLASSES.index("grassland")
WORLD = SimulationConfig(num_samples=12, img_size=64, seed=1, cloud_probability=0.0)  # the demo's size
PATCH = 8  # the demo encoder's patch, in image pixels


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    return simulate(WORLD)


def _pure(hr: np.ndarray, s: int) -> np.ndarray:
    """``(N, Hf, Wf)`` classes -> ``(N, H, W)`` class of image pixels with one class, else -1."""
    n, hf, wf = hr.shape
    blocks = hr.reshape(n, hf // s, s, wf // s, s).astype(int)
    first = blocks[:, :, :1, :, :1]
    return np.where((blocks == first).all(axis=(2, 4)), first[:, :, 0, :, 0], -1)


def _fisher_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Held-out accuracy of a two-class Fisher discriminant (fit on one half, best threshold)."""
    idx = np.random.default_rng(0).permutation(len(y))
    fit, held = idx[: len(y) // 2], idx[len(y) // 2 :]
    a, b = x[fit][y[fit]], x[fit][~y[fit]]
    scatter = np.cov(a.T) + np.cov(b.T) + 1e-6 * np.eye(x.shape[1])
    score = x @ np.linalg.solve(scatter, a.mean(0) - b.mean(0))
    cuts = np.quantile(score[fit], np.linspace(0.005, 0.995, 199))
    cut = cuts[np.argmax([((score[fit] > c) == y[fit]).mean() for c in cuts])]
    return float(((score[held] > cut) == y[held]).mean())


def test_objects_span_several_patches(world: dict[str, np.ndarray]) -> None:
    hr, s = world["landcover_hr"], WORLD.label_scale
    n, side = len(hr), PATCH * s
    patches = hr.reshape(n, 64 // PATCH, side, 64 // PATCH, side).transpose(0, 1, 3, 2, 4).reshape(n, -1, side**2)
    majority = np.array([[np.bincount(p, minlength=6).max() for p in scene] for scene in patches]) / side**2
    assert (majority >= 0.9).mean() > 0.3  # a third of the patches lie (almost) inside one object
    assert (hr[:, :, side:] == hr[:, :, :-side]).mean() > 0.48  # same class one patch further on


def test_crop_and_grass_need_more_than_one_s2_pixel(world: dict[str, np.ndarray]) -> None:
    pure = _pure(world["landcover_hr"], WORLD.label_scale)
    where = (pure == CROP) | (pure == GRASS)
    is_crop = pure[where] == CROP
    s2 = np.log(world["s2_l1c"].transpose(0, 2, 3, 1)[where].astype(float))
    s1 = world["s1_grd"].transpose(0, 2, 3, 1)[where]
    assert where.sum() > 5000
    majority = max(is_crop.mean(), 1 - is_crop.mean())
    s2_only = _fisher_accuracy(s2, is_crop)
    assert s2_only < majority + 0.1  # one spectral family: a pixel's spectrum says little
    assert _fisher_accuracy(np.concatenate([s2, s1], 1), is_crop) > s2_only + 0.04  # S1 VH does


def test_cloud_shadows_darken_clear_pixels_in_s2() -> None:
    cloudy = replace(WORLD, num_samples=4, cloud_probability=1.0)
    b08 = get_sensor("s2_l1c").band_index(["B08"])[0]
    for i in range(4):
        a, b = simulate_scene(i, cloudy), simulate_scene(i, WORLD)
        clear = a["cloud"] == 0
        ratio = a["s2_l1c"][b08][clear] / b["s2_l1c"][b08][clear]
        assert (ratio < 0.75).mean() > 0.02  # shadowed: 30-60 % of the light reaches the ground
        np.testing.assert_array_equal(a["s1_grd"], b["s1_grd"])


def test_landscape_layers_agree() -> None:
    land = landscape(np.random.default_rng(7), 32, 4)
    n = 32 * 4
    assert land.classes.shape == (n, n) and land.abundance.shape == (len(ENDMEMBERS), n, n)
    assert land.sigma0_db.shape == (2, n, n) and np.isfinite(land.sigma0_db).all()
    total = land.abundance.sum(0)
    assert total.min() >= 0 and total.max() <= 1.2 + 1e-6  # bright crowns reach 1.2, shade < 1
    water = land.classes == LAND_COVER_CLASSES.index("water")
    wet = land.abundance[ENDMEMBERS.index("water_clear")] + land.abundance[ENDMEMBERS.index("water_turbid")]
    np.testing.assert_allclose(wet[water], 1.0, atol=1e-6)
    assert (wet[~water] == 0).all()
    if water.any() and (~water).any():
        assert np.median(land.sigma0_db[0][water]) + 5 < np.median(land.sigma0_db[0][~water])
