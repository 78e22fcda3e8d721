"""torchgeo: an export folder as torchgeo weights (the ``[torchgeo]`` extra).

One call, :func:`torchgeo_weights`, gives a torchvision ``WeightsEnum`` member as torchgeo's own
pretrained weights are: ``.get_state_dict()`` reads the folder's ``model.safetensors`` (no
network), ``.transforms`` standardises raw file values (torchgeo datasets yield DN, e.g.
Sentinel-2 reflectance x 10000) exactly as s12mae does, and ``.meta`` holds the sensor, bands,
units, statistics and the timm model name (``local-dir:<folder>``) a torchgeo trainer builds::

    weights = torchgeo_weights("exports/mae_s2")
    task = ClassificationTask(model=weights.meta["model"], weights=weights,
                              in_channels=weights.meta["in_chans"], num_classes=10)
    datamodule.aug = weights.transforms            # or compose it into your augmentations

Nodata is not masked by ``transforms`` (s12mae sets nodata pixels to 0 after standardising).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torchvision.transforms.v2 as T
from safetensors.torch import load_file
from torch import nn
from torchvision.models._api import Weights, WeightsEnum

from s12mae.export.folder import WEIGHTS, read_folder

__all__ = ["torchgeo_model", "torchgeo_weights"]


class _LocalWeights(WeightsEnum):
    """Weights read from a local export folder instead of a URL."""

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return load_file(str(Path(self.url) / WEIGHTS))


def torchgeo_weights(folder: str | Path) -> WeightsEnum:
    """The weights of an ``s12mae export`` folder as a torchgeo-style ``WeightsEnum`` member."""
    folder = Path(folder).resolve()
    _, info, s = read_folder(folder)
    mean_dn = [(m - s.dn_offset) / s.dn_scale for m in s.mean]  # units = DN * scale + offset
    std_dn = [d / s.dn_scale for d in s.std]
    meta = {"dataset": "s12mae pretraining (see the model card)", "in_chans": len(s.bands),
            "model": f"local-dir:{folder}", "sensor": s.key, "bands": list(s.bands), "units": s.units,
            "mean": list(s.mean), "std": list(s.std), "dn_scale": s.dn_scale, "dn_offset": s.dn_offset,
            "ssl_method": info.method, "encoder": info.encoder, "img_size": info.img_size,
            "patch_size": info.patch_size}
    enum = _LocalWeights("S12MAEWeights", {"ENCODER": Weights(str(folder), nn.Sequential(T.Normalize(mean_dn, std_dn)),
                                                             meta)})
    return enum.ENCODER


def torchgeo_model(weights: WeightsEnum, **kwargs: Any) -> nn.Module:
    """The timm ViT of ``weights`` with its state dict loaded strictly (torchgeo's model-builder style).

    Args:
        weights: from :func:`torchgeo_weights`.
        kwargs: passed to ``timm.create_model`` (``num_classes`` adds a new head, left out of the check).
    """
    model = timm.create_model(weights.meta["model"], pretrained=False, **kwargs)
    missing, unexpected = model.load_state_dict(weights.get_state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.startswith("head.")]:
        raise ValueError(f"{weights.url}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return model
