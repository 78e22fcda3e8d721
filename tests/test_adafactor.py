"""s12mae's Adafactor steps as torch.optim.Adafactor does, and their state dicts interchange.

Tolerance: the statistics are ``mean``s of ``grad**2`` (torch: ``vector_norm(...)**2 / n``) and
``1 / sqrt(V)`` is a product of two square roots (torch: one ``rsqrt``), so factored values
differ from torch's by float32 rounding; ``rtol=1e-5, atol=1e-7`` (observed: at most 2.4e-7
absolute, one ulp of the parameters near 3, 0.44 of the allowance; vectors and 0-D are bit for
bit equal, their arithmetic being torch's). A change to the algorithm (each clamp, weight
decay, rho, eps2, update clipping, the beta2 schedule, maximize's sign: all tried) moves
parameters by far more.
"""

from __future__ import annotations

import pytest
import torch

from s12mae.train.adafactor import Adafactor

SHAPES = [(), (7,), (5, 3), (4, 3, 5), (6, 2, 3, 3)]  # 0-D, vector, matrix, 3-D, conv weight
LRS = [1e-2, 3e-2, 5e-3, 2e-2, 1e-3, 0.8]  # up and down; at 0.8 rho = 1 / sqrt(step) < lr
TOL = {"rtol": 1e-5, "atol": 1e-7}


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    params[0] *= 1e-5  # RMS under eps2: alpha = eps2 * rho
    return [p.requires_grad_() for p in params]


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of widely varying size, with a tiny vector entry and 3-D slice and a zero
    matrix row and conv slice, so that the ``eps1`` clamps bite (``V`` under ``eps1**2``)."""
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) * 10.0 ** (-i) for i, p in enumerate(params)]
    grads[1][0] *= 1e-8
    grads[2][1] = 0.0
    grads[3][0] *= 1e-6
    grads[4][0, 1] = 0.0
    return grads


def _make(cls, params: list[torch.Tensor], **kw) -> torch.optim.Optimizer:
    groups = [{"params": params[::2], "weight_decay": kw.pop("weight_decay", 0.0)}, {"params": params[1::2]}]
    return cls(groups, lr=LRS[0], **kw)


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for p, g in zip(params, _grads(step, params)):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_steps_like_torch(weight_decay: float, maximize: bool):
    ours, ref = _params(), _params()
    opt = _make(Adafactor, ours, weight_decay=weight_decay, maximize=maximize)
    ref_opt = _make(torch.optim.Adafactor, ref, weight_decay=weight_decay, maximize=maximize)
    _run(opt, ours, range(len(LRS)))
    _run(ref_opt, ref, range(len(LRS)))
    for i, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, **TOL, msg=f"parameter {i} of shape {SHAPES[i]}")
        assert not torch.equal(a, _params()[i])  # every parameter moved
        assert opt.state[a].keys() == ref_opt.state[b].keys()  # same keys, shapes, dtypes
        for key, value in ref_opt.state[b].items():
            torch.testing.assert_close(opt.state[a][key], value, rtol=1e-5, atol=0.0, msg=f"{key} of {i}")


def test_state_dicts_interchange_with_torch():
    """Ours -> torch's and torch's -> ours halfway, against torch's all the way."""
    ref = _params()
    ref_opt = _make(torch.optim.Adafactor, ref, weight_decay=0.1)
    _run(ref_opt, ref, range(len(LRS)))
    half = len(LRS) // 2
    for first, second in [(Adafactor, torch.optim.Adafactor), (torch.optim.Adafactor, Adafactor)]:
        params = _params()
        opt = _make(first, params, weight_decay=0.1)
        _run(opt, params, range(half))
        saved = opt.state_dict()
        resumed = _make(second, params, weight_decay=0.1)
        resumed.load_state_dict(saved)
        _run(resumed, params, range(half, len(LRS)))
        for i, (a, b) in enumerate(zip(params, ref)):
            torch.testing.assert_close(
                a, b, **TOL, msg=f"{first.__name__} -> {second.__name__}: parameter {i}"
            )
    assert {k for s in ref_opt.state.values() for k in s} == {"step", "row_var", "col_var", "variance"}


def test_foreach_groups_take_torchs_own_step_once():
    """``foreach=True`` is torch's multi-tensor step, bit for bit, with each step hook run once."""
    ours, ref = _params(), _params()
    opt = _make(Adafactor, ours, weight_decay=0.1, foreach=True)
    ref_opt = _make(torch.optim.Adafactor, ref, weight_decay=0.1, foreach=True)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    _run(opt, ours, range(3))
    _run(ref_opt, ref, range(3))
    assert all(torch.equal(a, b) for a, b in zip(ours, ref)) and len(calls) == 3


def test_rejects_complex_parameters_like_torch():
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        Adafactor([p]).step()
