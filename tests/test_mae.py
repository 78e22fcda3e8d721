"""MAE masking and loss, checked against independent computations."""

from __future__ import annotations

import torch

from s12mae.methods.mae import MAE, random_masking
from s12mae.models.vit import build_encoder
from s12mae.rng import keyed_uniform


def _mae(norm_pix: bool = False, ratio: float = 0.75) -> MAE:
    torch.manual_seed(0)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    return MAE(enc, "s2_l1c", "vitlite_128d2b", mask_ratio=ratio, norm_pix_loss=norm_pix, seed=7)


def test_mask_keeps_exactly_the_right_count_and_differs_between_samples():
    for length, ratio in ((16, 0.75), (196, 0.75), (49, 0.6), (10, 0.5)):
        ids_keep, mask, ids_restore = random_masking(0, 3, torch.arange(64), length, ratio)
        n_keep = int(length * (1 - ratio))
        assert ids_keep.shape == (64, n_keep)
        assert torch.all(mask.sum(1) == length - n_keep)
        # the kept ids are exactly the unmasked positions
        kept = torch.zeros_like(mask).scatter_(1, ids_keep, 1.0)
        assert torch.equal(kept, 1 - mask)
        assert len({tuple(m.tolist()) for m in mask}) > 48  # 64 samples; L=10 has only 252 masks


def test_mask_depends_on_seed_step_and_sample_index_only():
    _, a, _ = random_masking(0, 5, torch.tensor([3, 9, 11]), 16, 0.75)
    _, b, _ = random_masking(0, 5, torch.tensor([11, 42, 3]), 16, 0.75)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    _, c, _ = random_masking(0, 6, torch.tensor([3]), 16, 0.75)
    _, d, _ = random_masking(1, 5, torch.tensor([3]), 16, 0.75)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


def test_keyed_uniform_is_uniform_and_reproducible():
    u = keyed_uniform(1, 2, 3, torch.arange(1000), 100)
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12 ** -0.5) < 0.01
    assert torch.equal(u[17:18], keyed_uniform(1, 2, 3, torch.tensor([17]), 100))


def test_loss_covers_only_the_masked_patches():
    mae = _mae()
    imgs = torch.randn(4, 13, 32, 32)
    index = torch.arange(10, 14)
    latent, mask, ids_restore = mae.forward_encoder(imgs, 2, index)
    pred = mae.forward_decoder(latent, ids_restore, (4, 4))
    num, den = mae.forward_loss(imgs, pred, mask, None)
    # independent: MAE's formula, mean over each patch then mean over masked patches
    target = imgs.unfold(2, 8, 8).unfold(3, 8, 8)  # (N, C, 4, 4, 8, 8)
    target = target.permute(0, 2, 3, 4, 5, 1).reshape(4, 16, -1)
    per_patch = ((pred - target) ** 2).mean(-1)
    reference = (per_patch * mask).sum() / mask.sum()
    torch.testing.assert_close(num / den, reference)
    assert den == mask.sum() * 8 * 8 * 13
    # changing predictions of visible patches does not change the loss
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0
    torch.testing.assert_close(mae.forward_loss(imgs, pred2, mask, None)[0], num)


def test_nodata_pixels_are_left_out_of_loss_and_count():
    mae = _mae()
    imgs = torch.randn(2, 13, 32, 32)
    valid = torch.rand(2, 13, 32, 32) > 0.3
    batch = {"s2_l1c": torch.where(valid, imgs, 0.0), "valid.s2_l1c": valid, "index": torch.tensor([0, 1])}
    latent, mask, ids_restore = mae.forward_encoder(batch["s2_l1c"], 0, batch["index"])
    pred = mae.forward_decoder(latent, ids_restore, (4, 4))
    full_mask = mask.repeat_interleave(1, 1)[:, :, None].expand(-1, -1, 8 * 8 * 13)
    target = batch["s2_l1c"].unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 4, 5, 1).reshape(2, 16, -1)
    ok = valid.unfold(2, 8, 8).unfold(3, 8, 8).permute(0, 2, 3, 4, 5, 1).reshape(2, 16, -1).float()
    w = full_mask * ok
    ref_num = (((pred - target) ** 2) * w).sum()
    assert torch.equal(mae.denominators(batch, "mae", 0)["s2_l1c"], w.sum())
    torch.testing.assert_close(mae(batch, "mae", 0)["s2_l1c"], ref_num)


def test_norm_pix_targets_and_visualize():
    mae = _mae(norm_pix=True)
    batch = {"s2_l1c": torch.randn(2, 13, 32, 32) * 3 + 5, "index": torch.tensor([0, 1])}
    num = mae(batch, "mae", 0)["s2_l1c"]
    den = mae.denominators(batch, "mae", 0)["s2_l1c"]
    assert torch.isfinite(num) and 0.5 < float(num.detach() / den) < 5  # standardised targets
    vis = mae.visualize(batch, "mae", 0)
    labels = [p[0] for p in vis["panels"]]
    assert labels == ["input", "masked input", "reconstruction", "reconstruction + visible"]
    masked = vis["panels"][1][2]
    assert torch.isnan(masked).float().mean().item() == 0.75
