"""Hugging Face: the export folder is a Hub model repo (from_pretrained / save_pretrained, model card).

Local folders only: no network in tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from s12mae.export import ExportConfig, export_encoder, save_encoder
from s12mae.models.vit import build_encoder

pytest.importorskip("huggingface_hub", reason="the [hub] extra (huggingface_hub) is not installed")

from s12mae.integrations.hub import S12MAEEncoder, push_folder

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(1)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32).eval()
    save_encoder(enc, root / "encoder.safetensors", tiny_config(str(root)))
    (out,) = export_encoder(ExportConfig(checkpoint=str(root / "encoder.safetensors"), out=str(root / "hf"),
                                         format="hf", quiet=True))
    return out, enc


def test_from_pretrained_gives_the_same_encoder(export, one_thread):
    out, enc = export
    hub = S12MAEEncoder.from_pretrained(str(out), bands=BANDS, units="reflectance")
    assert hub.sensor_info.bands == tuple(BANDS) and hub.info.method == "mae"
    x = torch.randn(2, 13, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub.forward_features(x), enc.forward_features(x))
        assert torch.equal(hub.forward_intermediates(x, indices=2)[0], enc.forward_intermediates(x, indices=2)[0])


def test_save_pretrained_writes_the_same_repo(export, tmp_path):
    out, _ = export
    hub = S12MAEEncoder.from_pretrained(str(out))
    hub.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "copy" / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_model_card_is_written_from_the_run(export):
    out, _ = export
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm")
    for expected in ("MAE (masked autoencoder)", "Trained on simulated scenes only", "Steps: 6, batch 8",
                     "| 10 | B10 |", "in **reflectance**", "s2_l1c", "## Run config", "decoder: vitlite_128d2b"):
        assert expected in card, expected
    from huggingface_hub import ModelCard

    assert "s12mae" in ModelCard.load(out / "README.md").data.tags


def test_mismatched_bands_and_non_exports_are_refused(export, tmp_path):
    out, _ = export
    with pytest.raises(ValueError, match=r"input has bands \['B02', 'B01'"):
        S12MAEEncoder.from_pretrained(str(out), bands=["B02", "B01", *BANDS[2:]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json: not found"):
        push_folder(tmp_path / "empty", "someone/nothing")  # refused before any network call
