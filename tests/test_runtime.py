"""The runtime module both loops share: device, autocast, lr and no-decay parameters."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from s12mae.methods.mixmae import MixMAE
from s12mae.models.vit import build_encoder
from s12mae.runtime import autocast_context, no_decay_names, resolve_device, set_lr


def test_device_resolution():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")  # a rank's GPU on its node


def test_autocast_is_bf16_only_where_asked_or_auto_on_cuda():
    cpu = torch.device("cpu")
    assert isinstance(autocast_context(cpu, "auto"), nullcontext)
    assert isinstance(autocast_context(cpu, "fp32"), nullcontext)
    with autocast_context(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_set_lr_scales_by_each_groups_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.25}], lr=1.0)
    set_lr(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1 * 0.25]


def test_no_decay_names_are_biases_norms_and_the_modules_tokens():
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13, "s1_grd": 2}, 32)
    mix = MixMAE(enc, ["s2_l1c", "s1_grd"], "vitlite_128d2b", sensor_embedding=True)
    names = no_decay_names(mix)
    params = dict(mix.named_parameters())
    assert {"encoder.cls_token", "sensor_embed.s2_l1c", "sensor_embed.s1_grd"} <= names
    assert any(n.endswith("mask_token") for n in names)  # the decoders' own hook
    assert all(n in names for n, p in params.items() if p.ndim < 2)  # biases and norms
    assert not [n for n in names if params[n].ndim >= 2 and n.endswith(".weight")]  # matrices decay
    assert "encoder.blocks.0.attn.qkv.weight" not in names and "encoder.blocks.0.attn.qkv.bias" in names
