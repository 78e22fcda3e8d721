"""Tests of MAE-format checkpoint import (facebookresearch/mae, SSL4EO-S12 releases)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from s12mae.checkpoint_import import (
    ImportReport,
    import_mae_checkpoint,
    import_mae_cli,
    mae_key_map,
    read_mae_state_dict,
)
from s12mae.export import load_encoder
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder

SENSOR = "s2_l1c"  # 13 bands
DECODER = "vitlite_128d2b"

_RAN: list[str] = []


def _record(tag: str) -> str:
    _RAN.append(tag)
    return tag


class Payload:
    """An arbitrary object: unpickling it would call ``_record``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _record, ("payload ran",)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_mae(encoder: str = "vit_nano_patch8", img: int = 32, chans: int = 13, seed: int = 0) -> MAE:
    """A small MAE with every tensor (position tables included) moved off its initialisation."""
    torch.manual_seed(seed)
    model = MAE(build_encoder(encoder, {SENSOR: chans}, img), sensor=SENSOR, decoder=DECODER).eval()
    with torch.no_grad():
        for v in model.state_dict().values():
            v.add_(0.1 * torch.randn_like(v))
    return model


def to_mae_names(model: MAE) -> dict[str, torch.Tensor]:
    """Our MAE state dict under facebookresearch/mae ``models_mae.py`` names (written independently)."""
    out = {}
    for key, value in model.state_dict().items():
        part, rest = key.split(".", 1)
        if part == "encoder" and rest.startswith("patch_embed."):
            name = "patch_embed." + rest.split(".", 2)[2]  # drop the sensor key
        elif part == "encoder":
            name = rest
        elif rest == "mask_token":
            name = "mask_token"
        else:
            name = "decoder_" + rest  # decoder.blocks.0... -> decoder_blocks.0...
        out[name] = value.clone()
    return out


def write_ckpt(path: Path, sd: dict[str, torch.Tensor], wrap: str = "model") -> Path:
    """Save like MAE's ``misc.save_model``: state dict plus optimizer-free extras and ``args``."""
    obj: object = sd if wrap == "top" else {wrap: sd, "args": argparse.Namespace(lr=1e-3), "epoch": 3}
    torch.save(obj, path)
    return path


def predict(model: MAE, img: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, model.channels, img, img)
    latent, _, ids_restore = model.forward_encoder(x, step=0, index=torch.arange(2))
    grid = model.encoder.patch_grid(img, img)
    return torch.cat([latent.flatten(1), model.forward_decoder(latent, ids_restore, grid).flatten(1)], 1)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def snapshot(model: MAE) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_key_map() -> None:
    convert = mae_key_map(sensor="s1_grd")
    assert convert("patch_embed.proj.weight") == "encoder.patch_embed.s1_grd.proj.weight"
    assert convert("blocks.3.attn.qkv.bias") == "encoder.blocks.3.attn.qkv.bias"
    assert convert("norm.weight") == "encoder.norm.weight"
    assert convert("pos_embed") == "encoder.pos_embed"
    assert convert("decoder_pos_embed") == "decoder.pos_embed"
    assert convert("decoder_blocks.0.mlp.fc2.weight") == "decoder.blocks.0.mlp.fc2.weight"
    assert convert("mask_token") == "decoder.mask_token"
    assert convert("decoder_pred.bias") == "decoder.pred.bias"
    assert convert("fc_norm.weight") is None and convert("head.weight") is None


@pytest.mark.parametrize("encoder", ["vit_nano_patch8", "vit_tiny_patch16"])
def test_full_checkpoint_round_trip(tmp_path: Path, encoder: str) -> None:
    src = make_mae(encoder, seed=0)
    path = write_ckpt(tmp_path / "mae_pretrain.pth", to_mae_names(src))
    dst = make_mae(encoder, seed=1)
    report = import_mae_checkpoint(path, dst)
    assert isinstance(report, ImportReport) and report.has_decoder
    assert not report.skipped and not report.missing and not report.resampled
    assert set(report.loaded) == set(dst.state_dict())
    assert_same(dst.state_dict(), src.state_dict())
    torch.testing.assert_close(predict(dst), predict(src), rtol=0, atol=0)
    assert "decoder included" in report.summary()


@pytest.mark.parametrize("wrap", ["model", "state_dict", "top"])
def test_containers_and_module_prefix(tmp_path: Path, wrap: str) -> None:
    src = make_mae(seed=0)
    sd = {f"module.{k}": v for k, v in to_mae_names(src).items()}
    path = write_ckpt(tmp_path / "ddp.pth", sd, wrap)
    assert set(read_mae_state_dict(path)) == set(to_mae_names(src))
    dst = make_mae(seed=1)
    import_mae_checkpoint(path, dst)
    assert_same(dst.state_dict(), src.state_dict())


def test_encoder_only_file(tmp_path: Path) -> None:
    src = make_mae(seed=0)
    sd = {k: v for k, v in to_mae_names(src).items() if not k.startswith("decoder_") and k != "mask_token"}
    sd |= {"fc_norm.weight": torch.ones(128), "fc_norm.bias": torch.zeros(128)}
    sd["head.weight"] = torch.zeros(10, 128)
    path = write_ckpt(tmp_path / "backbone.pth", sd)
    dst = make_mae(seed=1)
    decoder_before = snapshot(dst.decoder)
    report = import_mae_checkpoint(path, dst)
    assert not report.has_decoder
    assert sorted(report.skipped) == ["fc_norm.bias", "fc_norm.weight", "head.weight"]
    assert set(report.missing) == {f"decoder.{k}" for k in decoder_before}
    assert_same(dst.encoder.state_dict(), src.encoder.state_dict())
    assert_same(dst.decoder.state_dict(), decoder_before)
    summary = report.summary()
    assert "encoder-only" in summary and "fc_norm.weight" in summary
    assert f"({len(decoder_before) - 4} more)" in summary


def test_channel_mismatch_is_refused_and_model_unchanged(tmp_path: Path) -> None:
    path = write_ckpt(tmp_path / "rgb_mae.pth", to_mae_names(make_mae(chans=3)))
    dst = make_mae(chans=13, seed=1)
    before = snapshot(dst)
    with pytest.raises(ValueError) as info:
        import_mae_checkpoint(path, dst)
    msg = str(info.value)
    assert "rgb_mae.pth" in msg and "3 channels" in msg and "13" in msg
    assert "decoder.pred.weight" in msg  # every mismatch is listed, not only the first
    assert_same(dst.state_dict(), before)


def test_missing_encoder_key_and_extra_block_are_errors(tmp_path: Path) -> None:
    sd = to_mae_names(make_mae())
    del sd["blocks.1.attn.proj.weight"]
    sd["blocks.9.norm1.weight"] = torch.ones(128)
    dst = make_mae(seed=1)
    before = snapshot(dst)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.proj\.weight: missing") as info:
        import_mae_checkpoint(write_ckpt(tmp_path / "bad.pth", sd), dst)
    assert "blocks.9.norm1.weight" in str(info.value)
    assert_same(dst.state_dict(), before)


def test_width_mismatch_of_position_table_is_an_error(tmp_path: Path) -> None:
    sd = to_mae_names(make_mae())
    sd["pos_embed"] = torch.zeros(1, 17, 64)
    wanted = r"pos_embed \(ours: encoder\.pos_embed\): checkpoint shape \(1, 17, 64\), model shape"
    with pytest.raises(ValueError, match=wanted):
        import_mae_checkpoint(write_ckpt(tmp_path / "wide.pth", sd), make_mae(seed=1))


def test_other_grid_is_resampled(tmp_path: Path) -> None:
    src = make_mae(img=48)  # 6x6 grid
    path = write_ckpt(tmp_path / "mae48.pth", to_mae_names(src))
    dst = make_mae(img=32, seed=1)  # 4x4 grid
    report = import_mae_checkpoint(path, dst)
    assert report.resampled == {"encoder.pos_embed": ((6, 6), (4, 4)), "decoder.pos_embed": ((6, 6), (4, 4))}
    for module in ("encoder", "decoder"):
        want = resample_abs_pos_embed(getattr(src, module).pos_embed, [4, 4], [6, 6], num_prefix_tokens=1)
        torch.testing.assert_close(getattr(dst, module).pos_embed, want)
    same = {k: v for k, v in src.state_dict().items() if not k.endswith("pos_embed")}
    assert_same({k: v for k, v in dst.state_dict().items() if not k.endswith("pos_embed")}, same)
    assert "resampled encoder.pos_embed from a 6x6 to a 4x4 grid" in report.summary()


def test_arbitrary_pickled_object_is_refused(tmp_path: Path) -> None:
    sd = to_mae_names(make_mae())
    path = tmp_path / "evil.pth"
    torch.save({"model": sd, "extra": Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth: refused by tensor-only loading \(weights_only") as info:
        read_mae_state_dict(path)
    assert "_record" in str(info.value)  # names the refused global
    assert not _RAN  # the payload was never unpickled


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_tensors"])
def test_unreadable_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / f"{damage}.pth"
    if damage == "truncated":
        write_ckpt(path, to_mae_names(make_mae()))
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    else:
        torch.save({"epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(ValueError, match=f"{damage}.pth"):
        read_mae_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_mae_state_dict(tmp_path / "nope.pth")


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from s12mae.cli import main

    src = make_mae("vit_nano_patch8")
    path = write_ckpt(tmp_path / "mae.pth", to_mae_names(src))
    out = tmp_path / "out" / "nested"
    argv = ["import-mae", str(path), "--out", str(out), "--encoder", "vit_nano_patch8",
            "--decoder", DECODER, "--img_size", "32", "--sensor", SENSOR]
    assert main(argv) == 0
    assert "decoder included" in capsys.readouterr().out
    assert_same(load_encoder(out / "encoder.safetensors").state_dict(), src.encoder.state_dict())
    assert_same(load_file(out / "mae.safetensors"), {k: v.contiguous() for k, v in src.state_dict().items()})
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    assert main([*argv[:-1], "s1_grd"]) == 2  # 13-channel checkpoint, 2-channel sensor
    err = capsys.readouterr().err
    assert "13 channels" in err and "'s1_grd' has 2" in err and "mae.pth" in err


def test_cli_encoder_only_writes_no_mae_file(tmp_path: Path) -> None:
    sd = {k: v for k, v in to_mae_names(make_mae()).items() if not k.startswith(("decoder_", "mask_token"))}
    path = write_ckpt(tmp_path / "backbone.pth", sd)
    import_mae_cli(str(path), tmp_path / "out", "vit_nano_patch8", DECODER, 32, SENSOR)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["encoder.safetensors"]
