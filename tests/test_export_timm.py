"""``s12mae export --format timm``: timm's Hub layout, strict keys, features identical to s12mae's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import timm
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from s12mae.export import (
    ExportConfig,
    check_inputs,
    encoder_info,
    export_encoder,
    load_encoder,
    read_folder,
    save_encoder,
)
from s12mae.models.vit import build_encoder


@pytest.fixture(scope="module")
def run_encoder(tmp_path_factory):
    """A nano S2 + S1 encoder saved as a run would save it (config recorded)."""
    folder = tmp_path_factory.mktemp("run")
    cfg = tiny_config(str(folder))
    torch.manual_seed(0)
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13, "s1_grd": 2}, 32).eval()
    save_encoder(enc, folder / "encoder.safetensors", cfg)
    return folder / "encoder.safetensors", enc


def test_timm_loads_strictly_and_features_are_identical(run_encoder, tmp_path, one_thread):
    path, enc = run_encoder
    (out,) = export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "timm"), quiet=True))
    cfg = json.loads((out / "config.json").read_text())
    args = cfg["model_args"]
    assert (args["in_chans"], args["img_size"], args["patch_size"], args["embed_dim"], args["depth"]) == (13, 32, 8, 128, 4)
    pcfg = cfg["pretrained_cfg"]
    assert len(pcfg["mean"]) == len(pcfg["std"]) == 13 and pcfg["input_size"] == [13, 32, 32]
    assert "sensor: s2_l1c" in pcfg["notes"] and "units: reflectance" in pcfg["notes"]
    assert cfg["s12mae"]["sensor"]["bands"][0] == "B01" and cfg["s12mae"]["other_sensors"] == ["s1_grd"]

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    weights = load_file(str(out / "model.safetensors"))
    assert set(model.state_dict()) == set(weights)  # strict: nothing random, nothing unused
    for side in (32, 48):  # the trained size and another (dynamic sizing)
        x = torch.randn(2, 13, side, side)
        with torch.no_grad():
            ours, theirs = enc.forward_features(x, "s2_l1c"), model.forward_features(x)
            assert (ours - theirs).abs().max().item() == 0.0
            assert (model(x) - ours[:, 1:].mean(1)).abs().max().item() == 0.0  # pooled = mean patch token


def test_naive_timm_route_keeps_a_random_patch_embedding(run_encoder, tmp_path):
    """The trap the export removes: the raw encoder file under timm leaves ``patch_embed`` random."""
    path, enc = run_encoder
    model = timm.create_model("vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                              in_chans=13, img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                              num_classes=0)
    assert not torch.equal(model.patch_embed.proj.weight, enc.patch_embed["s2_l1c"].proj.weight)


def test_multi_sensor_export_says_which_and_exports_each(run_encoder, tmp_path, capsys, one_thread):
    path, enc = run_encoder
    export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "default")))
    said = capsys.readouterr().out
    assert "s2_l1c patch embedding" in said and "also has ['s1_grd']" in said

    (s1,) = export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "s1"), sensor="s1_grd", quiet=True))
    model = timm.create_model(f"local-dir:{s1}", pretrained=True).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert (model.forward_features(x) - enc.forward_features(x, "s1_grd")).abs().max().item() == 0.0

    both = export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "all"), sensor="all", quiet=True))
    assert [f.name for f in both] == ["s2_l1c", "s1_grd"]
    assert [read_folder(f)[2].key for f in both] == ["s2_l1c", "s1_grd"]


def test_folder_reads_back_as_the_same_encoder(run_encoder, tmp_path, one_thread):
    path, enc = run_encoder
    (out,) = export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "e"), quiet=True))
    back, info, sensor = read_folder(out)
    assert sensor.key == "s2_l1c" and info.method == "mae" and info.config["train"]["steps"] == 6
    x = torch.randn(1, 13, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.forward_features(x), enc.forward_features(x))


def test_encoder_file_describes_itself(run_encoder):
    path, _ = run_encoder
    info = encoder_info(path)
    s2, s1 = info.sensors["s2_l1c"], info.sensors["s1_grd"]
    assert s2.bands[-1] == "B12" and s2.units == "reflectance" and s2.dn_scale == pytest.approx(1e-4)
    assert s1.bands == ("VV", "VH") and s1.units == "dB" and len(s1.mean) == 2
    assert info.config["method"] == "mae" and not info.notes


def test_old_encoder_files_fill_in_from_the_specs(tmp_path):
    enc = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    cfg = SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch8", img_size=32), method="mae")
    save_encoder(enc, tmp_path / "encoder.safetensors", cfg)
    info = encoder_info(tmp_path / "encoder.safetensors")
    assert info.config is None and any("no run config" in n for n in info.notes)
    assert info.sensors["s2_l1c"].bands[0] == "B01"


def test_bad_inputs_are_one_clear_error_and_leave_nothing(run_encoder, tmp_path):
    path, _ = run_encoder
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        ExportConfig(checkpoint=str(path), out=str(tmp_path / "x"), format="onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no patch embedding for sensor 's1_rtc'; it has \['s2_l1c', 's1_grd'\]"):
        export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "x"), sensor="s1_rtc"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: unreadable encoder file"):
        export_encoder(ExportConfig(checkpoint=str(junk), out=str(tmp_path / "x")))
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken already exists"):
        export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "taken")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.safetensors", "taken"]  # no partial folder


def test_band_or_units_mismatch_names_both_lists(run_encoder, tmp_path):
    from s12mae.integrations.timm import create_timm_model

    path, _ = run_encoder
    (out,) = export_encoder(ExportConfig(checkpoint=str(path), out=str(tmp_path / "e"), quiet=True))
    info = encoder_info(path).sensors["s2_l1c"]
    layout_names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    check_inputs(info, layout_names, "reflectance")  # layout names map to canonical ones
    swapped = [layout_names[1], layout_names[0], *layout_names[2:]]
    with pytest.raises(ValueError, match=r"input has bands \['B2', 'B1'.*expects \['B01', 'B02'"):
        create_timm_model(out, bands=swapped)
    with pytest.raises(ValueError, match="input is in 'DN', but the s2_l1c encoder expects 'reflectance'"):
        create_timm_model(out, units="DN")
    assert create_timm_model(out, bands=layout_names, units="reflectance").num_features == 128
    assert torch.equal(load_encoder(path).cls_token, read_folder(out)[0].cls_token)
