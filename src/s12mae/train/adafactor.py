"""torch's Adafactor, stepped with reductions that are fast on the CPU.

:class:`Adafactor` is ``torch.optim.Adafactor`` (same hyperparameters, defaults, state keys and
shapes, so a ``state_dict`` moves between the two in either direction) whose CPU step computes
the same algorithm (torch's documented one, including its placement of ``eps1``) with other
kernels. torch's for-loop spends most of a CPU step in three places:

* ``linalg.vector_norm(grad, dim=-2)`` for the column statistic: CPU norm reductions along a
  non-innermost dimension are not vectorised (pytorch/pytorch#40570), ~10x a plain mean.
  Here the squared gradient is written once into a scratch buffer and both statistics are
  ``mean`` reductions of it.
* ``rsqrt`` (slow on the CPU) of the full ``(n, m)`` variance estimate ``V = r c / mean(r)``,
  clamped at ``eps1**2``. Here ``1 / sqrt(V_ij)`` is the outer product of ``sqrt(mean(r) / r_i)``
  and ``1 / sqrt(c_j)``, clamped at ``1 / eps1``: ``n + m`` square roots instead of ``n * m``.
* fresh ``(n, m)`` temporaries (page faults): one scratch buffer, as large as the largest
  parameter, is reused for ``grad**2`` and then ``U``.

Sums and roots run in another order than torch's, so factored parameters agree with torch's to
a few float32 ulps, not bit for bit (vectors and 0-D tensors: bit for bit). Parameters off the CPU, and groups that
ask for ``foreach=True``, take torch's own step unchanged (the slow norm is a CPU kernel issue).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["Adafactor"]


class Adafactor(torch.optim.Adafactor):
    """``torch.optim.Adafactor`` with a faster CPU step; arguments as torch's (``lr``,
    ``beta2_decay``, ``eps=(eps1, eps2)``, ``d``, ``weight_decay``, ``foreach``, ``maximize``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._scratch: dict[tuple[torch.dtype, torch.device], Tensor] = {}  # see _buffer

    def __setstate__(self, state: dict) -> None:  # unpickling skips __init__
        super().__setstate__(state)
        self._scratch = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step (torch's algorithm); ``closure`` re-evaluates the loss."""
        if not self._fast_path_applies():
            # torch's own step; unwrapped, since torch wraps it in the step hooks once another
            # torch Adafactor exists, and ours already ran them
            return inspect.unwrap(torch.optim.Adafactor.step)(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr = float(group["lr"])
            eps1, eps2 = group["eps"]
            if eps1 is None:  # torch takes the first parameter's dtype for the whole group
                eps1 = torch.finfo(params[0].dtype).eps
            for p in params:
                self._step_one(p, group, lr, eps1, eps2)
        return loss

    def _fast_path_applies(self) -> bool:
        """Every parameter on the CPU, no group asking for foreach, no AMP grad scaler attached."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False  # torch raises its own error for these
        return all(
            not g["foreach"] and all(p.device.type == "cpu" for p in g["params"]) for g in self.param_groups
        )

    def _init_state(self, p: Tensor) -> dict[str, Tensor]:
        """torch's state: a float32 ``step``; ``row_var`` (..., n, 1) and ``col_var``
        (..., 1, m) for a gradient of 2+ dims (..., n, m), else ``variance`` like the gradient."""
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        if p.grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients")
        state = self.state[p]
        if len(state) == 0:
            float64 = torch.get_default_dtype() == torch.float64  # torch's rule for the step's dtype
            state["step"] = torch.tensor(0.0, dtype=torch.float64 if float64 else torch.float32)
            if p.grad.dim() > 1:
                state["row_var"] = p.grad.new_zeros((*p.grad.shape[:-1], 1))
                state["col_var"] = p.grad.new_zeros((*p.grad.shape[:-2], 1, p.grad.shape[-1]))
            else:
                state["variance"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        return state

    def _step_one(self, p: Tensor, group: dict, lr: float, eps1: float, eps2: float) -> None:
        """Update one parameter in place (torch's ``_single_tensor_adafactor`` for one tensor)."""
        grad = p.grad
        state = self._init_state(p)
        step_t = state["step"]
        step_t += 1
        step = step_t.item()
        weight = step ** group["beta2_decay"]  # 1 - beta2_t, the new statistic's share
        rho = min(lr, 1 / step**0.5)
        alpha = max(eps2, torch.linalg.vector_norm(p).item() / p.numel() ** 0.5) * rho
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        if grad.dim() > 1:
            update = self._factored_update(grad, state, weight, eps1)
        else:
            state["variance"].lerp_(grad * grad, weight)
            update = state["variance"].clamp(min=eps1 * eps1).rsqrt_().mul_(grad)
        rms = torch.linalg.vector_norm(update).item() / update.numel() ** 0.5
        scale = alpha / max(1.0, rms / group["d"])  # update clipping at RMS d
        p.add_(update, alpha=scale if group["maximize"] else -scale)  # maximize: U of -grad is -U

    def _buffer(self, like: Tensor) -> Tensor:
        """A reused scratch tensor shaped like ``like`` (fresh large tensors cost page faults)."""
        key = (like.dtype, like.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < like.numel():
            buf = self._scratch[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return buf[: like.numel()].view(like.shape)

    def _factored_update(self, grad: Tensor, state: dict, weight: float, eps1: float) -> Tensor:
        """Update ``row_var`` (..., n, 1) and ``col_var`` (..., 1, m) from ``grad`` (..., n, m);
        return the update ``U = grad / sqrt(max(V, eps1**2))``, ``V = row_var col_var / R``,
        written into the scratch buffer (valid until the next parameter)."""
        row_var, col_var = state["row_var"], state["col_var"]
        sq = torch.mul(grad, grad, out=self._buffer(grad))
        row_var.lerp_(sq.mean(dim=-1, keepdim=True), weight)
        col_var.lerp_(sq.mean(dim=-2, keepdim=True), weight)
        row_mean = row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1)  # R: (..., 1, 1)
        # 1 / sqrt(max(V_ij, eps1**2)) = min(a_i b_j, 1 / eps1), a = sqrt(R / r), b = 1 / sqrt(c):
        # n + m square roots instead of n * m (a zero r_i gives a_i = inf, clamped like V_ij = 0)
        a = row_mean.div(row_var).sqrt_()
        b = col_var.rsqrt()
        return torch.mul(a, b, out=sq).clamp_(max=1 / eps1 if eps1 else math.inf).mul_(grad)  # eps1=0: no floor
