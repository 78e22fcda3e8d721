"""TerraTorch: s12mae encoders as a backbone of its ``EncoderDecoderFactory`` (the ``[terratorch]`` extra).

Importing this module registers ``s12mae_vit`` in TerraTorch's backbone registry (also reachable
as ``terratorch_s12mae_vit``). In a TerraTorch YAML, make the CLI import it with
``custom_modules_path: integrations/terratorch/s12mae_modules`` (a folder whose ``__init__.py``
imports this module), then::

    model:
      class_path: terratorch.tasks.SemanticSegmentationTask
      init_args:
        model_factory: EncoderDecoderFactory
        model_args:
          backbone: s12mae_vit
          backbone_checkpoint: runs/mae/encoder.safetensors   # or an `s12mae export` folder
          backbone_sensor: s2_l1c
          backbone_bands: [B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12]
          necks:
            - {name: SelectIndices, indices: [2, 5, 8, 11]}
            - {name: LearnedInterpolateToPyramidal}
          decoder: UperNetDecoder
          num_classes: 2

The backbone returns one ``(B, D, H/p, W/p)`` map per block (:class:`S12MAEBackbone`); the data
module must standardise with the encoder's statistics (``s12mae export`` writes them to the export
folder's ``config.json``: ``pretrained_cfg.mean``/``std``, in the sensor's units).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY

from s12mae.integrations.backbone import S12MAEBackbone

__all__ = ["s12mae_vit"]


def s12mae_vit(checkpoint: str, sensor: str | None = None, bands: Sequence[Any] | None = None,
               out_indices: Sequence[int] | None = None, norm: bool = False,
               pretrained: bool = True) -> S12MAEBackbone:
    """The TerraTorch backbone ``s12mae_vit``: the ``backbone_*`` model arguments, see :class:`S12MAEBackbone`."""
    return S12MAEBackbone(checkpoint, sensor, bands, out_indices, norm, pretrained)


if "s12mae_vit" not in TERRATORCH_BACKBONE_REGISTRY:
    TERRATORCH_BACKBONE_REGISTRY.register(s12mae_vit)
