"""The one raw-sample -> model-input function: units, standardisation, nodata policy, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s12mae.inputs import model_inputs
from s12mae.sensors import get_sensor

S2, S1 = get_sensor("s2_l1c"), get_sensor("s1_grd")


def s2_scene(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 12000, (S2.num_channels, size, size)).astype(np.int16)


def reference(spec, dn: np.ndarray) -> np.ndarray:
    """Independent formulation in float64 NumPy: nodata -> NaN, DN * scale + offset, standardise."""
    x = dn.astype(np.float64)
    if not np.isnan(spec.nodata):
        x[dn == spec.nodata] = np.nan
    x = x * spec.dn_scale + spec.dn_offset
    mean = np.array([spec.stats[b].mean for b in spec.band_names])[:, None, None]
    std = np.array([spec.stats[b].std for b in spec.band_names])[:, None, None]
    return (x - mean) / std


@pytest.mark.parametrize("spec, dtype", [(S2, np.int16), (S2, np.uint16), (S1, np.float32), (S1, np.float16)])
def test_values_match_an_independent_formulation(spec, dtype):
    rng = np.random.default_rng(0)
    if spec is S2:
        raw = rng.integers(1, 12000, (13, 6, 6)).astype(dtype)
    else:
        raw = rng.uniform(-30, 5, (2, 6, 6)).astype(dtype)
    x, ok = model_inputs(spec, torch.from_numpy(raw))
    assert x.dtype == torch.float32 and x.shape == raw.shape and bool(ok.all())
    np.testing.assert_allclose(x.numpy(), reference(spec, raw), rtol=1e-5, atol=1e-5)


def test_nodata_policy_error_and_mask():
    dn = s2_scene(1)
    dn[3, 2, 2] = 0  # the S2 nodata value
    stored = np.ones(dn.shape, bool)
    stored[0, 0, 0] = False  # only the source's mask knows (e.g. outside a warped footprint)
    raw, valid = torch.from_numpy(dn), torch.from_numpy(stored)
    with pytest.raises(ValueError, match=r"^shard-000001\.tar: sample 'a' has 2 nodata/non-finite value\(s\) "
                                         r"in s2_l1c; set data.nodata=mask"):
        model_inputs(S2, raw, valid, where="shard-000001.tar: sample 'a'")
    x, ok = model_inputs(S2, raw, valid, nodata="mask")
    want_ok = stored & (dn != 0)
    assert torch.equal(ok, torch.from_numpy(want_ok))
    assert bool((x[~ok] == 0).all()) and bool(torch.isfinite(x).all())
    np.testing.assert_allclose(x.numpy()[want_ok], reference(S2, dn)[want_ok], rtol=1e-5, atol=1e-5)
    x_all, ok_all = model_inputs(S2, raw, nodata="mask")  # no source mask: the nodata value alone
    assert int((~ok_all).sum()) == 1 and torch.equal(x_all[ok], x[ok])


def test_s1_nan_and_inf_are_invalid():
    db = np.full((2, 4, 4), -12.0, np.float32)
    db[0, 1, 1], db[1, 2, 3] = np.nan, np.inf
    x, ok = model_inputs(S1, torch.from_numpy(db), nodata="mask")
    assert int((~ok).sum()) == 2 and not bool(ok[0, 1, 1]) and not bool(ok[1, 2, 3])
    assert bool(torch.isfinite(x).all())


def test_a_batch_gives_what_its_samples_give_and_names_bad_samples():
    scenes = [s2_scene(i) for i in range(3)]
    scenes[1][5, 0, 0] = 0
    batch = torch.from_numpy(np.stack(scenes))
    x, ok = model_inputs(S2, batch, nodata="mask")
    for row, dn in enumerate(scenes):
        xs, oks = model_inputs(S2, torch.from_numpy(dn), nodata="mask")
        assert torch.equal(x[row], xs) and torch.equal(ok[row], oks)
    with pytest.raises(ValueError, match=r"^batch: sample\(s\) \[11\] have 1 nodata/non-finite value"):
        model_inputs(S2, batch, where="batch", names=torch.tensor([10, 11, 12]))
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] have 1"):  # rows, without names
        model_inputs(S2, batch)


def test_bad_shapes_and_policy_are_named():
    dn = torch.from_numpy(s2_scene(0))
    with pytest.raises(ValueError, match=r"^f.tif: s2_l1c has shape \(12, 8, 8\), the sensor spec expects"):
        model_inputs(S2, dn[:12], where="f.tif")
    with pytest.raises(ValueError, match=r"s2_l1c has shape \(8, 8\)"):
        model_inputs(S2, dn[0], where="f.tif")
    with pytest.raises(ValueError, match=r"^f.tif: valid.s2_l1c has shape \(13, 8, 4\), not \(13, 8, 8\)"):
        model_inputs(S2, dn, torch.ones(13, 8, 4, dtype=torch.bool), where="f.tif")
    with pytest.raises(ValueError, match="nodata policy 'drop'"):
        model_inputs(S2, dn, nodata="drop")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_runs_on_the_training_device_with_stored_dtypes():
    dn = np.stack([s2_scene(i, 32) for i in range(4)])
    dn[2, 0, :3, :3] = 0
    valid = torch.rand(dn.shape, generator=torch.Generator().manual_seed(0)) > 0.01
    cpu_x, cpu_ok = model_inputs(S2, torch.from_numpy(dn), valid, nodata="mask")
    gpu_x, gpu_ok = model_inputs(S2, torch.from_numpy(dn).cuda(), valid.cuda(), nodata="mask")
    assert gpu_x.device.type == "cuda" and gpu_x.dtype == torch.float32
    assert torch.equal(gpu_ok.cpu(), cpu_ok)
    torch.testing.assert_close(gpu_x.cpu(), cpu_x, rtol=1e-6, atol=1e-6)
