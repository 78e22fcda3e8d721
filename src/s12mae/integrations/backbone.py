"""The multi-layer feature backbone that dense-prediction frameworks (TerraTorch, PANGAEA) take.

:class:`S12MAEBackbone` wraps an s12mae encoder for one sensor: ``forward(x)`` returns one
``(B, D, H/p, W/p)`` map per selected block (the raw block outputs, as timm's
``forward_intermediates``; ``norm=True`` applies the final norm to each), and ``out_channels``
lists their widths. Necks then pick layers and build a pyramid (TerraTorch ``SelectIndices`` +
``LearnedInterpolateToPyramidal`` for UPerNet). Needs no framework installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from s12mae.export.encoder_file import check_inputs
from s12mae.export.folder import load_any_encoder

__all__ = ["S12MAEBackbone", "band_names"]


def band_names(bands: Sequence[Any] | None) -> list[str] | None:
    """Band names from strings or enum members (TerraTorch's ``HLSBands``)."""
    if bands is None:
        return None
    return [str(getattr(b, "value", b)) for b in bands]


class S12MAEBackbone(nn.Module):
    """An s12mae encoder returning per-block feature maps.

    Args:
        checkpoint: ``encoder.safetensors`` of a run, or a folder written by ``s12mae export``.
        sensor: patch embedding to use (default: the encoder's first).
        bands: the bands of the input, in channel order; checked against the encoder's (an error
            names both lists). ``None`` skips the check.
        out_indices: blocks whose outputs are returned, in block order (default: every block).
        norm: apply the encoder's final norm to each map.
        pretrained: ``False`` keeps the architecture but re-initialises the weights.
    """

    def __init__(self, checkpoint: str, sensor: str | None = None, bands: Sequence[Any] | None = None,
                 out_indices: Sequence[int] | None = None, norm: bool = False, pretrained: bool = True) -> None:
        super().__init__()
        encoder, info = load_any_encoder(checkpoint)
        s = info.sensor(sensor)
        check_inputs(s, band_names(bands), where=str(checkpoint))
        depth = len(encoder.blocks)
        indices = list(range(depth)) if out_indices is None else [int(i) for i in out_indices]
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f"out_indices: {bad} out of range for an encoder of {depth} blocks")
        if not pretrained:
            encoder._init_weights()
        self.encoder, self.sensor, self.info, self.sensor_info = encoder, s.key, info, s
        self.out_indices, self.norm = sorted({i % depth for i in indices}), norm
        self.patch_size = encoder.patch_size
        self.out_channels = [encoder.embed_dim] * len(self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` standardised -> one map ``(B, D, H/p, W/p)`` per block of ``out_indices``."""
        return self.encoder.forward_intermediates(x, self.sensor, indices=self.out_indices, norm=self.norm)
