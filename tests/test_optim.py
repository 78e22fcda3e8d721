"""Optimizer construction: weight-decay groups and the fused AdamW kernel."""

from __future__ import annotations

import torch

from s12mae.config import OptimConfig
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.train.adafactor import Adafactor
from s12mae.train.optim import build_optimizer


def _model() -> MAE:
    torch.manual_seed(0)
    return MAE(build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32), "s2_l1c", "vitlite_128d2b")


def test_adamw_is_fused_on_cpu_and_steps_like_the_plain_loop():
    cfg = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.05)
    model, twin = _model(), _model()
    twin.load_state_dict(model.state_dict())
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and not any(p is model.encoder.cls_token for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and any(p is model.encoder.cls_token for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    twin_params = dict(twin.named_parameters())
    plain = torch.optim.AdamW(
        [{"params": [twin_params[names[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
         for g in opt.param_groups],
        lr=cfg.lr, betas=cfg.betas, foreach=False,
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same gradients for both (a forward would amplify rounding noise)
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), _model().parameters())]
    assert all(moved)


def test_adafactor_is_ours_with_decay_groups():
    opt = build_optimizer(_model(), OptimConfig(name="adafactor"))
    assert isinstance(opt, Adafactor) and isinstance(opt, torch.optim.Adafactor)  # torch's, faster on CPU
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
