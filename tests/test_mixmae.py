"""MixMAE mixing and losses, checked against independent computations, and a run end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from s12mae.config import MixConfig, ModelConfig
from s12mae.methods import build_method
from s12mae.methods.mixmae import MixMAE, random_mixing, split_counts
from s12mae.models.vit import build_encoder
from s12mae.train.loop import pretrain

CHANNELS = {"s2_l1c": 13, "s1_grd": 2, "dem": 1}


def _mix(sensors=("s2_l1c", "s1_grd"), **kw) -> MixMAE:
    torch.manual_seed(0)
    enc = build_encoder("vit_nano_patch8", {s: CHANNELS[s] for s in sensors}, 32)
    return MixMAE(enc, sensors, "vitlite_128d2b", seed=7, **kw)


def _batch(sensors=("s2_l1c", "s1_grd"), n=4, start=10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {**{s: torch.randn(n, CHANNELS[s], 32, 32, generator=g) for s in sensors},
            "index": torch.arange(start, start + n)}


def _patches(imgs: torch.Tensor) -> torch.Tensor:  # independent (N, C, H, W) -> (N, L, p*p*C), p = 8
    n, c = imgs.shape[:2]
    return imgs.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 4, 5, 1).reshape(n, 16, 64 * c)


def test_split_is_complementary_exact_and_keyed_by_seed_step_and_index():
    length = 196
    source, ids_keep, ids_restore = random_mixing(0, 3, torch.arange(64), length, [98, 98])
    assert torch.all((source == 0).sum(1) == 98) and torch.all((source == 1).sum(1) == 98)
    assert torch.equal(ids_keep, torch.arange(length).expand(64, -1))  # nothing dropped
    assert torch.equal(ids_restore, ids_keep)
    assert len({tuple(s.tolist()) for s in source}) == 64
    a = random_mixing(0, 5, torch.tensor([3, 9, 11]), 16, [8, 8])[0]
    b = random_mixing(0, 5, torch.tensor([11, 42, 3]), 16, [8, 8])[0]
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], random_mixing(0, 6, torch.tensor([3]), 16, [8, 8])[0][0])
    assert not torch.equal(a[0], random_mixing(1, 5, torch.tensor([3]), 16, [8, 8])[0][0])
    assert split_counts(15, [1, 1]) == [8, 7] and split_counts(16, [2, 1, 1]) == [8, 4, 4]
    assert split_counts(10, [1, 1, 1]) == [4, 3, 3] and sum(split_counts(13, [0.5, 0.3, 0.2])) == 13


def test_each_sensor_loss_covers_exactly_its_unseen_patches():
    mix = _mix()
    batch = _batch()
    imgs = {s: batch[s] for s in mix.sensors}
    latent, source, ids_restore = mix.forward_encoder(imgs, 2, batch["index"])
    assert latent.shape == (4, 17, 128)
    preds = mix.forward_decoder(latent, ids_restore, (4, 4))
    losses = mix.forward_loss(imgs, preds, source, {s: None for s in mix.sensors})
    dens = mix.denominators(batch, "mix", 2)
    for i, s in enumerate(mix.sensors):
        unseen = (source != i).float()
        assert torch.all(unseen.sum(1) == 8)
        per_patch = ((preds[s] - _patches(batch[s])) ** 2).mean(-1)  # MAE's formula
        num, den = losses[s]
        torch.testing.assert_close(num / den, (per_patch * unseen).sum() / unseen.sum())
        assert den == unseen.sum() * 64 * CHANNELS[s] and torch.equal(dens[s], den)
        moved = preds[s].clone()
        moved[source == i] += 100.0  # predictions of the patches it contributed do not count
        no_nodata = {k: None for k in mix.sensors}
        torch.testing.assert_close(mix.forward_loss(imgs, {**preds, s: moved}, source, no_nodata)[s][0], num)
    out = mix(batch, "mix", 2)
    torch.testing.assert_close(out["s1_grd"], losses["s1_grd"][0])


def test_lambda_weights_the_losses_and_gradients_reach_both_patch_embeddings():
    cfg = tiny_config("unused")
    cfg.method, cfg.model.mix.lam = "mixmae", 0.3
    mix = build_method(cfg)
    assert isinstance(mix, MixMAE)
    assert mix.term_weights("mix") == pytest.approx({"s2_l1c": 0.7, "s1_grd": 0.3})
    assert mix.tasks == ("mix",) and mix.task_sensors("mix") == ["s2_l1c", "s1_grd"]
    batch = _batch()
    nums, dens = mix(batch, "mix", 0), mix.denominators(batch, "mix", 0)
    loss = sum(w * nums[t] / dens[t] for t, w in mix.term_weights("mix").items())
    loss.backward()
    for s in mix.sensors:
        assert mix.encoder.patch_embed[s].proj.weight.grad.abs().sum() > 0
        assert mix.decoders[s].pred.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.mix.proportions"):
        MixConfig(proportions=[1.0, 0.0])
    assert MixConfig(sensors=["s2_l1c", "s1_grd", "dem"], lam=0.4).loss_weights() == pytest.approx([0.3, 0.4, 0.3])
    cfg.model.mix.sensors = ["s2_l1c", "radar"]
    with pytest.raises(KeyError, match="unknown sensor"):
        build_method(cfg)


def test_three_sensor_split_respects_its_proportions():
    sensors = ("s2_l1c", "s1_grd", "dem")
    mix = _mix(sensors, proportions=[2, 1, 1], loss_weights=[0.5, 0.25, 0.25])
    batch = _batch(sensors, n=6)
    source, _, _ = mix.mixing(0, batch["index"], 16)
    assert [int((source == i).sum(1).unique()) for i in range(3)] == [8, 4, 4]
    nums, dens = mix(batch, "mix", 0), mix.denominators(batch, "mix", 0)
    assert set(nums) == set(sensors) and all(torch.isfinite(v) for v in nums.values())
    assert [float(dens[s]) for s in sensors] == [6 * 8 * 64 * 13, 6 * 12 * 64 * 2, 6 * 12 * 64 * 1]
    vis = mix.visualize(batch, "mix", 0)
    assert [p[0] for p in vis["panels"]].count("reconstruction") == 3


def test_dropped_positions_count_in_every_loss_and_leave_the_encoder():
    mix = _mix(drop_ratio=0.5)
    batch = _batch()
    imgs = {s: batch[s] for s in mix.sensors}
    latent, source, ids_restore = mix.forward_encoder(imgs, 1, batch["index"])
    assert latent.shape == (4, 1 + 8, 128)  # L - dropped tokens (+ class token)
    assert torch.all((source == -1).sum(1) == 8) and torch.all((source == 0).sum(1) == 4)
    dens = mix.denominators(batch, "mix", 1)
    for i, s in enumerate(mix.sensors):
        assert dens[s] == 4 * 12 * 64 * CHANNELS[s]  # 8 dropped + 4 of the other sensor
    # the encoder's input is the kept tokens only: dropped pixels do not change the loss terms' inputs
    changed = {k: v.clone() for k, v in batch.items()}
    hide = torch.nn.functional.interpolate((source == -1).float().view(4, 1, 4, 4), scale_factor=8).bool()
    for s in mix.sensors:
        changed[s] = torch.where(hide, 50.0, changed[s])
    latent2, _, _ = mix.forward_encoder({s: changed[s] for s in mix.sensors}, 1, batch["index"])
    torch.testing.assert_close(latent2, latent)


def test_sensor_embedding_is_off_by_default_changes_outputs_and_folds_into_the_encoder():
    assert _mix().sensor_embed is None and ModelConfig().mix.sensor_embedding is False
    batch = _batch()
    plain, emb = _mix(), _mix(sensor_embedding=True)
    emb.load_state_dict(plain.state_dict(), strict=False)
    a, b = plain(batch, "mix", 0), emb(batch, "mix", 0)
    assert not torch.allclose(a["s2_l1c"], b["s2_l1c"])
    assert emb.no_weight_decay() == {"sensor_embed.s2_l1c", "sensor_embed.s1_grd"}
    emb.fold_sensor_embedding()
    torch.testing.assert_close(emb(batch, "mix", 0)["s2_l1c"], b["s2_l1c"])


def test_pretrain_end_to_end_writes_pictures_and_resume_repeats_losses(tmp_path):
    def cfg(name):
        c = tiny_config(str(tmp_path / name), steps=3, checkpoint_every=2)
        c.method = "mixmae"
        return c

    full = pretrain(cfg("a"))
    assert len(full.history) == 3 and all(set(r) >= {"loss/s2_l1c", "loss/s1_grd"} for r in full.history)
    for name in ("reconstruction_mix.png", "loss_curve.png", "encoder.safetensors"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    feats = full.model.encoder.forward_features(torch.randn(1, 13, 32, 32), "s2_l1c")
    assert feats.shape == (1, 17, 128)

    def crash(step, record):
        if step == 2:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        pretrain(cfg("b"), callbacks=[crash])
    resumed = pretrain(cfg("b"), resume=True)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def _straightforward_mix_losses(mix: MixMAE, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """MixMAE's loss sums the plain way: embed every patch of every sensor, pick per position,
    decode every patch, score each sensor's unseen ones (``forward`` before it skipped work)."""
    tokens = {s: mix.encoder.embed(batch[s], s) for s in mix.sensors}
    source, ids_keep, ids_restore = mix.mixing(step, batch["index"], 16)
    mixed = torch.zeros_like(tokens[mix.sensors[0]])
    for i, s in enumerate(mix.sensors):
        tok = tokens[s] if mix.sensor_embed is None else tokens[s] + mix.sensor_embed[s]
        mixed = torch.where((source == i).unsqueeze(-1), tok, mixed)
    kept = torch.stack([m[k] for m, k in zip(mixed, ids_keep)])
    latent = mix.encoder.forward_tokens(kept)
    out = {}
    for i, s in enumerate(mix.sensors):
        pred = mix.decoders[s](latent, (4, 4), ids_restore)
        out[s] = (((pred - _patches(batch[s])) ** 2) * (source != i).unsqueeze(-1)).sum()
    return out


@pytest.mark.parametrize("kw", [{}, {"drop_ratio": 0.25, "sensor_embedding": True}])
def test_training_losses_and_gradients_equal_the_straightforward_formulation(kw):
    mix = _mix(**kw)
    if mix.sensor_embed is not None:
        torch.nn.init.normal_(mix.sensor_embed["s1_grd"], std=0.5)
    batch = _batch()
    nums = mix(batch, "mix", 3)
    sum(nums.values()).backward()
    grads = {k: p.grad.clone() for k, p in mix.named_parameters() if p.grad is not None}
    mix.zero_grad(set_to_none=True)
    ref = _straightforward_mix_losses(mix, batch, 3)
    sum(ref.values()).backward()
    for s in mix.sensors:  # float32 rounding only: sums over fewer rows, matmul patch embedding
        torch.testing.assert_close(nums[s], ref[s], rtol=1e-6, atol=0)
    assert set(grads) == {k for k, p in mix.named_parameters() if p.grad is not None}
    for k, p in mix.named_parameters():
        if p.grad is not None:
            assert float((grads[k] - p.grad).norm()) <= 1e-5 * float(p.grad.norm()), k
