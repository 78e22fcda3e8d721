"""TerraTorch: ``s12mae_vit`` in its backbone registry, under UPerNet through its model factory.

Skips without the [terratorch] extra (on Python 3.11 terratorch <= 1.2.11 installs next to torch
2.14); the backbone's feature contract is tested without it in test_export_integrations.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from s12mae.export import save_encoder
from s12mae.models.vit import build_encoder

pytest.importorskip("terratorch", reason="the [terratorch] extra (terratorch<=1.2.11) is not installed")

from terratorch.models import EncoderDecoderFactory
from terratorch.registry import BACKBONE_REGISTRY

import s12mae.integrations.terratorch  # noqa: F401  (registers the backbone)

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_registered_backbone_feeds_upernet(tmp_path, one_thread):
    torch.manual_seed(3)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32).eval()
    save_encoder(enc, tmp_path / "encoder.safetensors", tiny_config(str(tmp_path)))
    assert "s12mae_vit" in BACKBONE_REGISTRY and "terratorch_s12mae_vit" in BACKBONE_REGISTRY

    backbone = BACKBONE_REGISTRY.build("s12mae_vit", checkpoint=str(tmp_path / "encoder.safetensors"), bands=BANDS)
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(backbone(x), enc.forward_intermediates(x, indices=4)))

    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone="s12mae_vit", backbone_checkpoint=str(tmp_path / "encoder.safetensors"),
        backbone_bands=BANDS, necks=[{"name": "SelectIndices", "indices": [0, 1, 2, 3]},
                                     {"name": "LearnedInterpolateToPyramidal"}],
        decoder="UperNetDecoder", decoder_channels=32, num_classes=2)
    model.eval()
    with torch.no_grad():
        out = model(x).output
    assert out.shape == (2, 2, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"input has bands \['B02', 'B01'"):
        BACKBONE_REGISTRY.build("s12mae_vit", checkpoint=str(tmp_path / "encoder.safetensors"),
                                bands=["B02", "B01", *BANDS[2:]])
