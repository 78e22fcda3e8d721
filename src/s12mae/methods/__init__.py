"""Pretraining methods and their registry (``PretrainConfig.method`` -> builder)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from s12mae.config import PretrainConfig
from s12mae.methods.base import Batch, PretrainMethod
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

__all__ = ["METHODS", "MAE", "Batch", "PretrainMethod", "build_method"]


def _build_mae(cfg: PretrainConfig) -> nn.Module:
    spec = get_sensor(cfg.model.sensor, cfg.data.stats)
    encoder = build_encoder(
        cfg.model.encoder, {spec.key: spec.num_channels}, cfg.model.img_size, drop_path_rate=cfg.model.drop_path
    )
    return MAE(encoder, spec.key, cfg.model.decoder, cfg.model.mask_ratio, cfg.model.norm_pix_loss, cfg.train.seed)


METHODS: dict[str, Callable[[PretrainConfig], nn.Module]] = {"mae": _build_mae}


def build_method(cfg: PretrainConfig) -> nn.Module:
    """The pretraining method named by ``cfg.method``, freshly initialised."""
    if cfg.method not in METHODS:
        raise KeyError(f"unknown method {cfg.method!r}; registered: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg)
