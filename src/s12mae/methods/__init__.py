"""Pretraining methods and their registry (``PretrainConfig.method`` -> builder)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from s12mae.config import PretrainConfig
from s12mae.methods.auxmae import AuxMAE
from s12mae.methods.base import Batch, PretrainMethod
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

__all__ = ["METHODS", "MAE", "AuxMAE", "Batch", "PretrainMethod", "build_method"]


def _build_mae(cfg: PretrainConfig) -> MAE:
    spec = get_sensor(cfg.model.sensor, cfg.data.stats)
    encoder = build_encoder(
        cfg.model.encoder, {spec.key: spec.num_channels}, cfg.model.img_size, drop_path_rate=cfg.model.drop_path
    )
    return MAE(encoder, spec.key, cfg.model.decoder, cfg.model.mask_ratio, cfg.model.norm_pix_loss, cfg.train.seed)


def _build_auxmae(cfg: PretrainConfig) -> nn.Module:
    aux = get_sensor(cfg.model.aux_sensor, cfg.data.stats)
    # the loop feeds both sensors at the same size (simulated and prepared data), so scale 1
    return AuxMAE(_build_mae(cfg), cfg.model.decoder, aux.key, aux.num_channels, target_scale=1)


METHODS: dict[str, Callable[[PretrainConfig], nn.Module]] = {"mae": _build_mae, "auxmae": _build_auxmae}


def build_method(cfg: PretrainConfig) -> nn.Module:
    """The pretraining method named by ``cfg.method``, freshly initialised."""
    if cfg.method not in METHODS:
        raise KeyError(f"unknown method {cfg.method!r}; registered: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg)
