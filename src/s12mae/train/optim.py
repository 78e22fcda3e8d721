"""Optimizer with weight-decay groups, and the warmup + cosine learning-rate factor."""

from __future__ import annotations

import math

import torch
from torch import nn

from s12mae.config import OptimConfig
from s12mae.runtime import no_decay_names
from s12mae.train.adafactor import Adafactor

__all__ = ["build_optimizer", "lr_at"]


_FUSED_ADAMW_DEVICES = {"cpu", "cuda"}  # where torch has a fused AdamW kernel


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adafactor or AdamW; biases, norms and tokens get no weight decay.

    AdamW runs torch's fused kernel (one kernel for all tensors, instead of a Python loop of
    small ops per tensor) when every parameter is on the CPU or on CUDA, so build the optimizer
    after moving the model. Adafactor is torch's algorithm with a faster CPU step
    (:class:`~s12mae.train.adafactor.Adafactor`); off the CPU it is torch's own step.
    """
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "adafactor":
        return Adafactor(groups, lr=cfg.lr)
    devices = {p.device.type for p in decay + no_decay}
    fused = bool(devices) and devices <= _FUSED_ADAMW_DEVICES and len({p.device for p in decay + no_decay}) == 1
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate of ``step``: linear warmup to ``lr``, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
