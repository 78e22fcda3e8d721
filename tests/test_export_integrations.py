"""Encoders in other frameworks: the backbone feature contract, torchgeo weights, the PANGAEA adapter.

No network; torchgeo tests skip without the [torchgeo] extra. PANGAEA is not pip-installable: its
``Encoder`` base is replaced by a stand-in with the same constructor and attributes.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from torch import nn

from s12mae.export import ExportConfig, export_encoder, save_encoder
from s12mae.integrations.backbone import S12MAEBackbone
from s12mae.models.vit import build_encoder

ROOT = Path(__file__).resolve().parents[1]
PANGAEA_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrations")
    torch.manual_seed(2)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13, "s1_grd": 2}, 32).eval()
    save_encoder(enc, root / "encoder.safetensors", tiny_config(str(root)))
    (folder,) = export_encoder(ExportConfig(checkpoint=str(root / "encoder.safetensors"), out=str(root / "pangaea"),
                                            format="pangaea", quiet=True))
    return root / "encoder.safetensors", folder, enc


def test_backbone_returns_one_map_per_block(exported, one_thread):
    ckpt, folder, enc = exported
    for source in (ckpt, folder):
        bb = S12MAEBackbone(str(source)).eval()
        assert bb.out_channels == [128] * 4 and bb.out_indices == [0, 1, 2, 3]
        x = torch.randn(2, 13, 40, 48)
        with torch.no_grad():
            maps = bb(x)
            want = enc.forward_intermediates(x, "s2_l1c", indices=[0, 1, 2, 3])
        assert [tuple(m.shape) for m in maps] == [(2, 128, 5, 6)] * 4
        assert all(torch.equal(a, b) for a, b in zip(maps, want))
    s1 = S12MAEBackbone(str(ckpt), sensor="s1_grd", bands=["VV", "VH"], out_indices=[-1, 1], norm=True)
    assert s1.out_indices == [1, 3] and len(s1(torch.randn(1, 2, 16, 16))) == 2
    with pytest.raises(ValueError, match=r"input has bands \['VH', 'VV'\], but the s1_grd encoder expects \['VV', 'VH'\]"):
        S12MAEBackbone(str(ckpt), sensor="s1_grd", bands=["VH", "VV"])
    with pytest.raises(ValueError, match=r"out_indices: \[7\] out of range for an encoder of 4 blocks"):
        S12MAEBackbone(str(ckpt), out_indices=[7])


def test_torchgeo_weights_and_transform(exported, one_thread):
    pytest.importorskip("torchgeo", reason="the [torchgeo] extra (torchgeo) is not installed")
    from torchgeo.models import get_weight  # noqa: F401  (torchgeo imports cleanly)
    from torchgeo.trainers import ClassificationTask

    from s12mae.integrations.torchgeo import torchgeo_model, torchgeo_weights
    from s12mae.sensors import get_sensor

    _, folder, enc = exported
    weights = torchgeo_weights(folder)
    assert weights.meta["in_chans"] == 13 and weights.meta["bands"][0] == "B01" and weights.meta["units"] == "reflectance"
    dn = torch.randint(1, 6000, (2, 13, 32, 32)).float()
    spec = get_sensor("s2_l1c")
    standardised = spec.normalize(spec.to_units(dn))
    assert (weights.transforms(dn) - standardised).abs().max() < 1e-4  # the same standardisation, on raw DN

    model = torchgeo_model(weights).eval()
    task = ClassificationTask(model=weights.meta["model"], weights=weights, in_channels=13, num_classes=3)
    with torch.no_grad():
        want = enc.forward_features(standardised)
        assert (model.forward_features(standardised) - want).abs().max().item() == 0.0
        assert (task.model.forward_features(standardised) - want).abs().max().item() == 0.0
        assert task.model(standardised).shape == (2, 3)


@pytest.fixture
def pangaea_adapter(monkeypatch):
    """The adapter module, imported over a stand-in ``pangaea.encoders.base.Encoder``."""

    class Encoder(nn.Module):  # PANGAEA's base: same constructor and attributes
        def __init__(self, model_name, input_bands, input_size, embed_dim, output_layers, output_dim,
                     multi_temporal, multi_temporal_output, pyramid_output, encoder_weights, download_url):
            super().__init__()
            self.model_name, self.input_bands, self.input_size, self.embed_dim = model_name, input_bands, input_size, embed_dim
            self.output_layers = output_layers
            self.output_dim = [output_dim] * len(output_layers) if isinstance(output_dim, int) else list(output_dim)
            self.encoder_weights, self.multi_temporal = encoder_weights, multi_temporal
            self.multi_temporal_output, self.pyramid_output, self.download_url = multi_temporal_output, pyramid_output, download_url

    base = types.ModuleType("pangaea.encoders.base")
    base.Encoder = Encoder
    for name in ("pangaea", "pangaea.encoders"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "pangaea.encoders.base", base)
    spec = importlib.util.spec_from_file_location("s12mae_encoder", ROOT / "integrations/pangaea/s12mae_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pangaea_adapter_contract(exported, pangaea_adapter, one_thread):
    _, folder, enc = exported
    cfg = yaml.safe_load((folder / "pangaea_s2_l1c.yaml").read_text())
    assert cfg["_target_"] == "pangaea.encoders.s12mae_encoder.S12MAE_Encoder"
    assert cfg["input_bands"] == {"optical": PANGAEA_BANDS} and len(cfg["s12mae_stats"]["mean"]) == 13
    assert cfg["s12mae_stats"]["units"] == "reflectance" and cfg["output_layers"] == [0, 1, 2, 3]
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    model = pangaea_adapter.S12MAE_Encoder(**kwargs)
    model.load_encoder_weights(logging.getLogger("test"))
    model.eval()
    assert model.multi_temporal is False and model.output_dim == [128] * 4
    x = torch.randn(2, 13, 1, 32, 32)  # what PANGAEA feeds: (B, C, T, H, W)
    with torch.no_grad():
        feats = model({"optical": x})
        want = enc.forward_intermediates(x[:, :, 0], "s2_l1c", indices=[0, 1, 2, 3])
        assert [tuple(f.shape) for f in feats] == [(2, 128, 4, 4)] * 4
        assert all(torch.equal(a, b) for a, b in zip(feats, want))
        assert all(torch.equal(a, b) for a, b in zip(model({"optical": x[:, :, 0]}), want))  # (B, C, H, W) too
        with pytest.raises(ValueError, match="single-temporal: got T=3"):
            model({"optical": torch.randn(1, 13, 3, 32, 32)})


def test_pangaea_adapter_refuses_other_bands(exported, pangaea_adapter):
    _, folder, _ = exported
    cfg = {k: v for k, v in yaml.safe_load((folder / "pangaea_s2_l1c.yaml").read_text()).items() if k != "_target_"}
    l2a = [b for b in PANGAEA_BANDS if b != "B10"]
    with pytest.raises(ValueError, match=r"input has bands \['B1', .*'B9', 'B11', 'B12'\], but the s2_l1c encoder expects"):
        pangaea_adapter.S12MAE_Encoder(**{**cfg, "input_bands": {"optical": l2a}})
    with pytest.raises(ValueError, match="reads modality 'optical', but input_bands has \\['sar'\\]"):
        pangaea_adapter.S12MAE_Encoder(**{**cfg, "input_bands": {"sar": ["VV", "VH"]}})
    with pytest.raises(ValueError, match="the config says embed_dim 768, the encoder has 128"):
        pangaea_adapter.S12MAE_Encoder(**{**cfg, "embed_dim": 768})
