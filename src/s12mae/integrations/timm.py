"""timm: an export folder as a timm ``VisionTransformer``, after checking the input description.

``timm.create_model("local-dir:DIR", pretrained=True)`` alone works too (strict keys, identical
features); :func:`create_timm_model` adds design note 18's check: the bands (in order) and units
the caller's data has must be the encoder's, else an error names both lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from s12mae.export.encoder_file import check_inputs
from s12mae.export.folder import read_folder

__all__ = ["create_timm_model"]


def create_timm_model(folder: str | Path, bands: list[str] | None = None, units: str | None = None,
                      **kwargs: Any) -> nn.Module:
    """``timm.create_model("local-dir:folder", pretrained=True, **kwargs)`` for an s12mae export folder.

    Args:
        folder: a folder written by ``s12mae export``.
        bands: the bands of the caller's input, in channel order (``B1`` or ``B01`` style).
        units: the units of the caller's input before standardisation (``reflectance``, ``dB``).
        kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ``global_pool`` ...).
    """
    _, _, sensor = read_folder(folder)
    check_inputs(sensor, bands, units, where=str(folder))
    return timm.create_model(f"local-dir:{Path(folder)}", pretrained=True, **kwargs)
