"""Pretraining methods and their registry (``PretrainConfig.method`` -> builder)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from s12mae.config import PretrainConfig
from s12mae.methods.auxmae import AuxMAE
from s12mae.methods.base import Batch, PretrainMethod
from s12mae.methods.mae import MAE
from s12mae.methods.mixmae import MixMAE
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

__all__ = ["METHODS", "MAE", "AuxMAE", "MixMAE", "Batch", "PretrainMethod", "build_method"]


def _build_mae(cfg: PretrainConfig) -> MAE:
    spec = get_sensor(cfg.model.sensor, cfg.data.stats)
    encoder = build_encoder(
        cfg.model.encoder, {spec.key: spec.num_channels}, cfg.model.img_size, drop_path_rate=cfg.model.drop_path
    )
    return MAE(encoder, spec.key, cfg.model.decoder, cfg.model.mask_ratio, cfg.model.norm_pix_loss, cfg.train.seed)


def _build_auxmae(cfg: PretrainConfig) -> nn.Module:
    aux = get_sensor(cfg.model.aux_sensor, cfg.data.stats)
    return AuxMAE(_build_mae(cfg), cfg.model.decoder, aux.key, aux.num_channels, cfg.model.aux_target_scale)


def _build_mixmae(cfg: PretrainConfig) -> MixMAE:
    m = cfg.model
    specs = [get_sensor(key, cfg.data.stats) for key in m.mix_sensors]
    channels = {s.key: s.num_channels for s in specs}
    encoder = build_encoder(m.encoder, channels, m.img_size, drop_path_rate=m.drop_path)
    weights = m.mix_loss_weights
    if weights is None and len(specs) == 2:
        weights = [1.0 - m.mix_lambda, m.mix_lambda]  # equation 1: lambda weighs the second (S1)
    return MixMAE(encoder, list(channels), m.decoder, m.mix_proportions, weights, m.mix_drop_ratio,
                  m.mix_sensor_embedding, m.norm_pix_loss, cfg.train.seed)


METHODS: dict[str, Callable[[PretrainConfig], nn.Module]] = {
    "mae": _build_mae, "auxmae": _build_auxmae, "mixmae": _build_mixmae,
}


def build_method(cfg: PretrainConfig) -> nn.Module:
    """The pretraining method named by ``cfg.method``, freshly initialised."""
    if cfg.method not in METHODS:
        raise KeyError(f"unknown method {cfg.method!r}; registered: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg)
