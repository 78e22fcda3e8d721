"""Pretraining methods and their registry (``PretrainConfig.method`` -> builder).

A method is registered by one entry in :data:`METHODS`; the command line's ``--method`` choices
are the registry's names. A builder reads the shared ``model`` fields and its own section
(``model.aux``, ``model.mix``) and calls the method's constructor by keyword.
"""

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
    m = cfg.model
    spec = get_sensor(m.sensor, cfg.data.stats)
    encoder = build_encoder(m.encoder, {spec.key: spec.num_channels}, m.img_size, drop_path_rate=m.drop_path)
    return MAE(encoder, spec.key, m.decoder, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss,
               seed=cfg.train.seed)


def _build_auxmae(cfg: PretrainConfig) -> AuxMAE:
    aux = cfg.model.aux
    spec = get_sensor(aux.sensor, cfg.data.stats)
    return AuxMAE(_build_mae(cfg), cfg.model.decoder, aux_sensor=spec.key, aux_channels=spec.num_channels,
                  target_scale=aux.target_scale)


def _build_mixmae(cfg: PretrainConfig) -> MixMAE:
    m, mix = cfg.model, cfg.model.mix
    specs = [get_sensor(key, cfg.data.stats) for key in mix.sensors]
    channels = {s.key: s.num_channels for s in specs}
    encoder = build_encoder(m.encoder, channels, m.img_size, drop_path_rate=m.drop_path)
    return MixMAE(encoder, list(channels), m.decoder, proportions=mix.proportions, loss_weights=mix.loss_weights(),
                  drop_ratio=mix.drop_ratio, sensor_embedding=mix.sensor_embedding,
                  norm_pix_loss=m.norm_pix_loss, seed=cfg.train.seed)


METHODS: dict[str, Callable[[PretrainConfig], nn.Module]] = {
    "mae": _build_mae,
    "auxmae": _build_auxmae,
    "mixmae": _build_mixmae,
}
"""Method name -> builder of the freshly initialised method from the run config."""


def build_method(cfg: PretrainConfig) -> nn.Module:
    """The pretraining method named by ``cfg.method``, freshly initialised."""
    if cfg.method not in METHODS:
        raise KeyError(f"unknown method {cfg.method!r}; registered: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg)
