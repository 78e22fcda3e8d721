"""AuxMAE: both tasks, the auxiliary loss against an independent MSE, AGD gradients, target
resolution, and end-to-end training with resume."""

from __future__ import annotations

import pytest
import torch

import numpy as np

from conftest import run_ddp, tiny_config
from s12mae.methods import AuxMAE, build_method
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.train.loop import _task_datasets, pretrain


def _aux(scale: int = 1) -> AuxMAE:
    torch.manual_seed(0)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    mae = MAE(enc, "s2_l1c", "vitlite_128d2b", mask_ratio=0.75, seed=7)
    return AuxMAE(mae, "vitlite_128d2b", aux_sensor="s1_grd", aux_channels=2, target_scale=scale)


def _batch(scale: int = 1, n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "s2_l1c": torch.randn(n, 13, 32, 32, generator=g),
        "s1_grd": torch.randn(n, 2, 32 * scale, 32 * scale, generator=g),
        "index": torch.arange(5, 5 + n),
    }


def _full_mse(pred: torch.Tensor, target: torch.Tensor, p: int, valid: torch.Tensor | None = None):
    """Independent reference: predictions as images, MSE over all (valid) pixels."""
    n, c, h, w = target.shape
    img = pred.reshape(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
    err = (img - target) ** 2
    if valid is None:
        return err.mean()
    return (err * valid).sum() / valid.sum()


def test_interface_and_shared_encoder():
    m = _aux()
    assert m.tasks == ("mae", "aux")
    assert m.term_weights("mae") == {"s2_l1c": 1.0} and m.term_weights("aux") == {"s1_grd": 1.0}
    assert m.task_sensors("mae") == ["s2_l1c"] and m.task_sensors("aux") == ["s2_l1c", "s1_grd"]
    assert m.encoder is m.mae.encoder and m.encoder.sensors == ["s2_l1c"]  # S1 is only a target
    keys = m.state_dict().keys()
    assert not any(k.startswith("encoder.") for k in keys)  # each shared weight saved once
    with pytest.raises(KeyError, match="tasks"):
        m.term_weights("mix")


def test_forward_and_denominators_of_both_tasks():
    m, batch = _aux(), _batch()
    num = m(batch, "mae", 3)
    assert set(num) == {"s2_l1c"} and torch.isfinite(num["s2_l1c"])
    torch.testing.assert_close(num["s2_l1c"], m.mae(batch, "mae", 3)["s2_l1c"])
    assert m.denominators(batch, "mae", 3)["s2_l1c"] == 2 * 12 * 8 * 8 * 13  # 12 of 16 hidden
    num = m(batch, "aux", 3)
    assert set(num) == {"s1_grd"} and torch.isfinite(num["s1_grd"])
    assert m.denominators(batch, "aux", 3)["s1_grd"] == 2 * 2 * 32 * 32  # whole S1 image


def test_aux_loss_is_the_full_image_mse():
    m, batch = _aux(), _batch()
    pred = m.forward_decoder(m.encoder.forward_features(batch["s2_l1c"], "s2_l1c"), (4, 4))
    ref = _full_mse(pred, batch["s1_grd"], 8)
    got = m(batch, "aux", 0)["s1_grd"] / m.denominators(batch, "aux", 0)["s1_grd"]
    torch.testing.assert_close(got, ref)
    # with nodata: invalid values are left out of sum and count
    valid = torch.rand(2, 2, 32, 32, generator=torch.Generator().manual_seed(2)) > 0.3
    batch["valid.s1_grd"] = valid
    batch["s1_grd"] = torch.where(valid, batch["s1_grd"], torch.nan)
    den = m.denominators(batch, "aux", 0)["s1_grd"]
    assert den == valid.sum()
    ref = _full_mse(pred, torch.nan_to_num(batch["s1_grd"]), 8, valid.float())
    torch.testing.assert_close(m(batch, "aux", 0)["s1_grd"] / den, ref)


@pytest.mark.parametrize(("task", "busy", "idle"), [("aux", "aux_decoder", "mae.decoder"),
                                                     ("mae", "mae.decoder", "aux_decoder")])
def test_a_step_of_one_task_leaves_the_other_decoder_without_grads(task, busy, idle):
    m, batch = _aux(), _batch()
    m(batch, task, 0)[m.term_weights(task).popitem()[0]].backward()
    grads = {name: p.grad for name, p in m.named_parameters()}
    enc = [g for k, g in grads.items() if k.startswith("mae.encoder.")]
    assert enc and any(g is not None and g.abs().sum() > 0 for g in enc)
    # every weight of the busy decoder learns (the aux decoder sees no mask tokens)
    on = [g for k, g in grads.items() if k.startswith(busy + ".") and k != "aux_decoder.mask_token"]
    assert on and all(g is not None for g in on)
    off = [g for k, g in grads.items() if k.startswith(idle + ".")]
    assert off and all(g is None for g in off)


@pytest.mark.parametrize("scale", [2, 4])
def test_target_at_a_finer_resolution(scale):
    m, batch = _aux(scale), _batch(scale)
    p = 8 * scale
    pred = m.forward_decoder(m.encoder.forward_features(batch["s2_l1c"], "s2_l1c"), (4, 4))
    assert pred.shape == (2, 16, p * p * 2)
    got = m(batch, "aux", 0)["s1_grd"] / m.denominators(batch, "aux", 0)["s1_grd"]
    torch.testing.assert_close(got, _full_mse(pred, batch["s1_grd"], p))
    vis = m.visualize(batch, "aux", 0)
    assert [x[0] for x in vis["panels"]] == ["S2 input", "predicted S1", "true S1"]
    assert vis["panels"][1][2].shape == (2, 2, 32 * scale, 32 * scale)


def test_wrong_target_shape_names_samples_and_shapes():
    m, batch = _aux(2), _batch(1)
    with pytest.raises(ValueError, match=r"samples \[5, 6\].*\(2, 2, 32, 32\).*\(2, 13, 32, 32\)"):
        m(batch, "aux", 0)
    with pytest.raises(ValueError, match=r"\(2, 2, 32, 32\)"):
        m.denominators(batch, "aux", 0)


def test_visualize_mae_task_delegates():
    m, batch = _aux(), _batch()
    labels = [x[0] for x in m.visualize(batch, "mae", 0)["panels"]]
    assert labels == ["input", "masked input", "reconstruction", "reconstruction + visible"]


def _auxmae_config(out_dir: str, **train: object):
    cfg = tiny_config(out_dir, **train)
    cfg.method = "auxmae"
    return cfg


def test_builder_uses_the_config():
    m = build_method(_auxmae_config("unused"))
    assert isinstance(m, AuxMAE) and m.aux_sensor == "s1_grd" and m.aux_channels == 2


def test_pretrain_alternates_tasks_and_draws_both_pictures(tmp_path):
    res = pretrain(_auxmae_config(str(tmp_path / "r"), steps=4, checkpoint_every=2))
    assert [r["task"] for r in res.history] == ["mae", "aux", "mae", "aux"]
    assert all("loss/s2_l1c" in r for r in res.history[::2])
    assert all("loss/s1_grd" in r for r in res.history[1::2])
    for name in ("reconstruction_mae.png", "reconstruction_aux.png", "encoder.safetensors"):
        assert (tmp_path / "r" / name).stat().st_size > 0


class _Crash(RuntimeError):
    pass


def test_resume_mid_schedule_repeats_the_losses(tmp_path):
    full = pretrain(_auxmae_config(str(tmp_path / "a")))

    def crash(step, record):
        if step == 4:
            raise _Crash

    cfg = _auxmae_config(str(tmp_path / "b"))
    with pytest.raises(_Crash):
        pretrain(cfg, callbacks=[crash])
    resumed = pretrain(cfg, resume=True)  # resumes at step 3, an "aux" step
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert [r["task"] for r in resumed.history] == ["mae", "aux"] * 3


def test_each_task_draws_from_its_own_dataset(tmp_path):
    cfg = _auxmae_config(str(tmp_path / "r"), steps=4)
    cfg.data.simulated.s1_fraction = 0.5
    datasets = _task_datasets(cfg, build_method(cfg))
    from s12mae.simulate import simulate

    avail = simulate(cfg.data.simulated)["available.s1_grd"].astype(bool)
    assert list(datasets["mae"].indices) == list(range(len(avail)))  # all S2, S2-only included
    assert not avail.all() and list(datasets["aux"].indices) == list(np.flatnonzero(avail))
    # nodata=error: an aux batch holding an S2-only scene (NaN S1) would stop the run
    assert len(pretrain(cfg).history) == 4


def test_an_empty_task_dataset_is_an_error_at_start(tmp_path):
    cfg = _auxmae_config(str(tmp_path / "r"))
    cfg.data.simulated.s1_fraction = 0.0
    with pytest.raises(ValueError, match="task 'aux' has an empty dataset"):
        pretrain(cfg)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_two_ranks_run_the_same_task_each_step_and_match_one_process(tmp_path):
    one = pretrain(_auxmae_config(str(tmp_path / "one"), steps=4)).history
    ranks = run_ddp(_auxmae_config(str(tmp_path / "two"), steps=4, micro_batch_size=2), tmp_path)
    for hist in ranks:
        assert [r["task"] for r in hist] == [r["task"] for r in one] == ["mae", "aux", "mae", "aux"]
        np.testing.assert_allclose([r["loss"] for r in hist], [r["loss"] for r in one], rtol=1e-5)
