"""What the pretraining loop and the downstream fitting loop share: the device, mixed precision,
the learning rate of each step and which parameters get no weight decay.

Used by :mod:`s12mae.train.loop` (and :mod:`s12mae.train.optim`) and by
:mod:`s12mae.evaluation.runner`, so that both loops read ``device: auto`` and
``precision: auto`` the same way and set the lr the same way.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

__all__ = ["autocast_context", "no_decay_names", "resolve_device", "set_lr"]


def resolve_device(want: str, local_rank: int | None = None) -> torch.device:
    """The device of a config's ``device`` setting.

    Args:
        want: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        local_rank: under data parallelism, the rank's GPU on its node: a CUDA device becomes
            ``cuda:<local_rank>``.
    """
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and want.startswith("cuda"):
        want = f"cuda:{local_rank}"
    return torch.device(want)


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager:
    """Context of the forward passes: bf16 autocast for ``bf16``, and for ``auto`` on CUDA; else
    nothing (fp32). The returned object can be entered once per forward pass."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the lr of this step on every parameter group, times the group's ``lr_scale`` where it
    has one (layer-wise lr decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: every parameter with fewer than 2
    dimensions (biases, norms) and those a submodule lists in its ``no_weight_decay()`` (class,
    mask and sensor tokens)."""
    names = {name for name, p in model.named_parameters() if p.ndim < 2}
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names |= {f"{prefix}.{n}" if prefix else n for n in hook()}
    return names
