"""PANGAEA encoder adapter for s12mae encoders.

Drop this file into PANGAEA's ``pangaea/encoders/`` and a config written by
``s12mae export --format pangaea`` (or ``s12mae.yaml`` here, edited) into ``configs/encoder/``;
install s12mae in PANGAEA's environment (``pip install s12mae``). PANGAEA then builds the encoder
with ``encoder=s12mae_s2_l1c`` (the config's name) and calls ``load_encoder_weights``.

Input: PANGAEA's dict ``{modality: (B, C, T, H, W)}`` (``T == 1``; its decoders also pass
``(B, C, H, W)``), ``C`` the config's ``input_bands`` of the modality, which must be the encoder's
bands in order (PANGAEA names them ``B1``...``B12``, ``B8A``; an error names both lists otherwise).
Output: one ``(B, D, H/p, W/p)`` map per ``output_layers`` block, as PANGAEA's other ViT encoders.
"""

from __future__ import annotations

from logging import Logger
from pathlib import Path

import torch
from pangaea.encoders.base import Encoder

from s12mae.export.encoder_file import check_inputs
from s12mae.export.folder import load_any_encoder
from s12mae.export.pangaea import modality_of
from s12mae.integrations.backbone import S12MAEBackbone


class S12MAE_Encoder(Encoder):
    """An s12mae encoder (MAE, AuxMAE or MixMAE pretraining) for one sensor.

    Args:
        encoder_weights: an ``s12mae export`` folder or a run's ``encoder.safetensors``.
        input_size: image side PANGAEA feeds (any multiple of the patch; positions are resampled).
        input_bands: ``{modality: [band, ...]}`` with ``optical`` (Sentinel-2) or ``sar`` (Sentinel-1).
        output_layers: blocks whose outputs go to the decoder.
        output_dim: width of each output (the encoder's ``embed_dim``).
        download_url: unused (s12mae exports are local), kept for PANGAEA's interface.
        sensor: the encoder's patch embedding (default: the one the export holds).
        embed_dim, patch_size: as in the config; checked against the encoder.
        s12mae_stats: the encoder's statistics and units from the export (checked for the units).
    """

    def __init__(self, encoder_weights: str | Path, input_size: int, input_bands: dict[str, list[str]],
                 output_layers: list[int], output_dim: int | list[int], download_url: str | None = None,
                 sensor: str | None = None, embed_dim: int | None = None, patch_size: int | None = None,
                 s12mae_stats: dict | None = None) -> None:
        backbone = S12MAEBackbone(str(encoder_weights), sensor, out_indices=output_layers, pretrained=False)
        info = backbone.sensor_info
        for name, given, actual in (("embed_dim", embed_dim, backbone.info.embed_dim),
                                    ("patch_size", patch_size, backbone.info.patch_size)):
            if given is not None and given != actual:
                raise ValueError(f"{encoder_weights}: the config says {name} {given}, the encoder has {actual}")
        self.modality = modality_of(info.key)
        if self.modality not in input_bands:
            raise ValueError(f"{encoder_weights}: the {info.key} encoder reads modality {self.modality!r}, but "
                             f"input_bands has {list(input_bands)}")
        check_inputs(info, input_bands[self.modality], (s12mae_stats or {}).get("units"), where=str(encoder_weights))
        super().__init__(model_name=f"s12mae_{backbone.info.method}_{info.key}", encoder_weights=encoder_weights,
                         input_bands=input_bands, input_size=input_size, embed_dim=backbone.info.embed_dim,
                         output_layers=list(output_layers), output_dim=output_dim, multi_temporal=False,
                         multi_temporal_output=False, pyramid_output=False, download_url=download_url)
        self.backbone = backbone

    def load_encoder_weights(self, logger: Logger) -> None:
        encoder, _ = load_any_encoder(self.encoder_weights)
        state = {k: v for k, v in encoder.state_dict().items()
                 if not k.startswith("patch_embed.") or k.startswith(f"patch_embed.{self.backbone.sensor}.")}
        self.backbone.encoder.load_state_dict(state)  # strict: every tensor comes from the export
        logger.info(f"s12mae: loaded {len(state)} tensors from {self.encoder_weights}")

    def forward(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        x = image[self.modality]
        if x.ndim == 5:
            if x.shape[2] != 1:
                raise ValueError(f"s12mae encoders are single-temporal: got T={x.shape[2]} in {tuple(x.shape)}; "
                                 "use a multi-temporal strategy of PANGAEA's decoders")
            x = x[:, :, 0]
        return self.backbone(x)
