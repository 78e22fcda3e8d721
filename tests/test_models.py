"""Encoders, decoders, patches and position tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s12mae.info import count_parameters
from s12mae.models.decoder import DECODERS, build_decoder
from s12mae.models.patches import patchify, sincos_pos_embed, unpatchify
from s12mae.models.vit import ENCODERS, build_encoder


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_forward_backward_with_2_and_13_channels(name):
    p = ENCODERS[name].patch_size
    enc = build_encoder(name, {"s1_grd": 2, "s2_l1c": 13}, img_size=2 * p)
    for sensor, c in (("s1_grd", 2), ("s2_l1c", 13)):
        x = torch.randn(2, c, 2 * p, 2 * p)
        out = enc.forward_features(x, sensor)
        assert out.shape == (2, 1 + 4, enc.embed_dim)
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        grad = enc.patch_embed[sensor].proj.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        enc.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_decoder_predicts_every_patch(name):
    dec = build_decoder(name, in_dim=64, grid=(2, 3), out_dim=8 * 8 * 2)
    tokens = torch.randn(2, 1 + 2, 64, requires_grad=True)
    ids_restore = torch.stack([torch.randperm(6) for _ in range(2)])
    pred = dec(tokens, (2, 3), ids_restore)
    assert pred.shape == (2, 6, 128)
    pred.sum().backward()
    assert torch.isfinite(tokens.grad).all()


def _vit_params(c: int, p: int, d: int, depth: int) -> int:
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    return (c * p * p * d + d) + d + depth * block + 2 * d  # patch embed, cls, blocks, norm


def test_base_encoder_and_paper_decoder_parameter_counts():
    enc = build_encoder("vit_base_patch16", {"s2_l1c": 13}, 224)
    assert count_parameters(enc) == _vit_params(13, 16, 768, 12)
    rgb = build_encoder("vit_base_patch16", {"rgb": 3}, 224)
    assert abs(count_parameters(rgb) - 85.65e6) < 0.05e6  # timm ViT-B/16 (86.57M) less head and position table
    dec = build_decoder("vitlite_512d6b", 768, (14, 14), 16 * 16 * 13)
    d = 512
    block = 12 * d * d + 13 * d
    expected = (768 * d + d) + d + 6 * block + 2 * d + (d * 16 * 16 * 13 + 16 * 16 * 13)
    assert count_parameters(dec) == expected
    assert abs(expected - 21.0e6) < 0.1e6  # the paper's "ViT-Lite, ~21M"


@pytest.mark.parametrize("c", [1, 2, 13])
def test_patchify_round_trip_and_layout(c):
    imgs = torch.randn(3, c, 16, 24)
    x = patchify(imgs, 8)
    assert x.shape == (3, 6, 64 * c)
    # patch (row 1, col 2) is the image block rows 8:16, cols 16:24, flattened as (p, p, C)
    assert torch.equal(x[:, 1 * 3 + 2], imgs[:, :, 8:16, 16:24].permute(0, 2, 3, 1).reshape(3, -1))
    assert torch.equal(unpatchify(x, 8, (2, 3), c), imgs)


def test_sizes_not_divisible_by_the_patch_are_errors():
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    with pytest.raises(ValueError, match="not divisible by the encoder's patch size 8"):
        enc(torch.randn(1, 13, 30, 32))
    with pytest.raises(ValueError, match="expects input"):
        enc(torch.randn(1, 12, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 2, 10, 16), 8)


def test_other_image_sizes_resample_the_position_table():
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    out = enc(torch.randn(2, 13, 48, 64))
    assert out.shape == (2, 1 + 6 * 8, 128)


def test_sincos_table_matches_the_mae_formula():
    dim, g = 16, 3
    # MAE: meshgrid(w, h); first half of the channels from grid[0] (columns), second from rows
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(g, dtype=float), np.arange(g, dtype=float))
    ref = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    table = sincos_pos_embed(dim, (g, g))
    assert table.shape == (1, 1 + g * g, dim)
    assert torch.all(table[0, 0] == 0)
    np.testing.assert_allclose(table[0, 1:].numpy(), ref, atol=1e-6)


def test_forward_intermediates_gives_feature_maps():
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    maps = enc.forward_intermediates(torch.randn(2, 13, 32, 32), indices=[0, -1])
    assert [m.shape for m in maps] == [(2, 128, 4, 4)] * 2
    last = enc.forward_intermediates(torch.randn(1, 13, 32, 32), norm=True)
    assert len(last) == 1


@pytest.mark.parametrize("c, size", [(2, 32), (13, 32), (13, 48)])
def test_embedding_chosen_patches_equals_embedding_all_then_choosing(c, size):
    enc = build_encoder("vit_nano_patch8", {"s": c}, 32)
    x = torch.randn(3, c, size, size)
    length = (size // 8) ** 2
    ids = torch.stack([torch.randperm(length)[:5] for _ in range(3)])
    full = enc.embed(x, "s")
    chosen = enc.embed(x, "s", ids)
    assert chosen.shape == (3, 5, 128)
    torch.testing.assert_close(chosen, full.gather(1, ids.unsqueeze(-1).expand(-1, -1, 128)), rtol=1e-5, atol=1e-5)
    assert torch.equal(patchify(x, 8, ids), patchify(x, 8).gather(1, ids.unsqueeze(-1).expand(-1, -1, 64 * c)))


def test_decoder_predicts_only_the_asked_positions():
    dec = build_decoder("vitlite_128d2b", in_dim=64, grid=(2, 3), out_dim=8 * 8 * 2)
    tokens = torch.randn(2, 1 + 2, 64)
    ids_restore = torch.stack([torch.randperm(6) for _ in range(2)])
    full = dec(tokens, (2, 3), ids_restore)
    ids = torch.tensor([[0, 4, 5], [1, 2, 3]])
    some = dec(tokens, (2, 3), ids_restore, ids)
    assert some.shape == (2, 3, 128)
    torch.testing.assert_close(some, full.gather(1, ids.unsqueeze(-1).expand(-1, -1, 128)))


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    x = torch.randn(2, 13, 32, 32)
    results = []
    for on in (False, True):
        enc.set_grad_checkpointing(on)
        out = enc(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
        enc.zero_grad(set_to_none=True)
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)
    assert build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32, grad_checkpointing=True).grad_checkpointing


def test_attention_uses_torch_scaled_dot_product_attention():
    # timm's blocks call F.scaled_dot_product_attention unless TIMM_FUSED_ATTN=0 turns it off
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    dec = build_decoder("vitlite_128d2b", 128, (4, 4), 64 * 13)
    blocks = [*enc.blocks, *dec.blocks]
    assert all(b.attn.fused_attn for b in blocks)
