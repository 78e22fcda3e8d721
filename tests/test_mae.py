"""MAE masking and loss, checked against independent computations."""

from __future__ import annotations

import torch

from s12mae.methods.mae import MAE, hidden_ids, patch_targets, random_masking
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


def _unfold_patches(x: torch.Tensor, p: int) -> torch.Tensor:  # independent (N, C, H, W) -> (N, L, p*p*C)
    n, c = x.shape[:2]
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(n, -1, p * p * c)


def _straightforward_loss(mae: MAE, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    """MAE's loss the plain way: embed every patch, keep the visible ones, decode every patch,
    score the hidden ones (what ``forward`` computed before it learnt to skip work)."""
    imgs, valid = batch["s2_l1c"], batch.get("valid.s2_l1c")
    tokens = mae.encoder.embed(imgs, "s2_l1c")  # timm's patch convolution over the whole grid
    ids_keep, mask, ids_restore = random_masking(mae.seed, step, batch["index"], tokens.shape[1], mae.mask_ratio)
    visible = torch.stack([t[k] for t, k in zip(tokens, ids_keep)])
    pred = mae.decoder(mae.encoder.forward_tokens(visible), (4, 4), ids_restore)
    target = _unfold_patches(imgs, 8)
    ok = torch.ones_like(target) if valid is None else _unfold_patches(valid.float(), 8)
    if mae.norm_pix_loss:
        count = ok.sum(-1, keepdim=True)
        mean = (target * ok).sum(-1, keepdim=True) / count
        var = (((target - mean) * ok) ** 2).sum(-1, keepdim=True) / (count - 1)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return (((pred - target) ** 2) * ok * mask.unsqueeze(-1)).sum()


def test_training_loss_and_gradients_equal_the_straightforward_formulation():
    for norm_pix in (False, True):
        for with_nodata in (False, True):
            mae = _mae(norm_pix=norm_pix)
            g = torch.Generator().manual_seed(5)
            imgs = torch.randn(4, 13, 32, 32, generator=g)
            batch = {"s2_l1c": imgs, "index": torch.arange(20, 24)}
            if with_nodata:
                valid = torch.rand(4, 13, 32, 32, generator=g) > 0.3
                batch |= {"s2_l1c": torch.where(valid, imgs, 0.0), "valid.s2_l1c": valid}  # as the loader fills
            num = mae(batch, "mae", 4)["s2_l1c"]
            num.backward()
            grads = {k: p.grad.clone() for k, p in mae.named_parameters() if p.grad is not None}
            mae.zero_grad(set_to_none=True)
            ref = _straightforward_loss(mae, batch, 4)
            ref.backward()
            # float32 rounding only: sums over fewer rows and a matmul patch embedding
            torch.testing.assert_close(num, ref, rtol=1e-6, atol=0)
            assert set(grads) == {k for k, p in mae.named_parameters() if p.grad is not None}
            for k, p in mae.named_parameters():
                if p.grad is not None:  # relative to the gradient's scale: sums of many terms
                    assert float((grads[k] - p.grad).norm()) <= 1e-5 * float(p.grad.norm()), k


def test_forward_loss_on_all_rows_is_bit_identical_to_the_full_weight_formulation():
    mae = _mae()
    imgs = torch.randn(3, 13, 32, 32)
    latent, mask, ids_restore = mae.forward_encoder(imgs, 0, torch.arange(3))
    pred = mae.forward_decoder(latent, ids_restore, (4, 4))
    num, den = mae.forward_loss(imgs, pred, mask, None)
    target = patch_targets(imgs, None, 8, False)[0]
    assert torch.equal(num, (((pred - target) ** 2) * (torch.ones_like(target) * mask.unsqueeze(-1))).sum())
    assert den == mask.sum() * 8 * 8 * 13
    hidden = hidden_ids(mask, 12)
    assert torch.equal(mask.gather(1, hidden), torch.ones(3, 12))
    assert torch.all(hidden.diff(dim=1) > 0)  # grid order
    rows = mae.forward_decoder(latent, ids_restore, (4, 4), hidden)
    torch.testing.assert_close(rows, pred.gather(1, hidden.unsqueeze(-1).expand(-1, -1, pred.shape[-1])))
    torch.testing.assert_close(mae.forward_loss(imgs, rows, mask, None, hidden)[0], num, rtol=1e-6, atol=0)
    # nodata may hold NaN in the targets: it counts nothing and poisons nothing
    valid = torch.rand(3, 13, 32, 32) > 0.2
    holes = torch.where(valid, imgs, torch.nan)
    a = mae.forward_loss(holes, rows, mask, valid, hidden)
    b = mae.forward_loss(torch.where(valid, imgs, 0.0), rows, mask, valid, hidden)
    assert torch.isfinite(a[0]) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1] == mae.denominators({"s2_l1c": holes, "valid.s2_l1c": valid, "index": torch.arange(3)}, "mae", 0)["s2_l1c"]
