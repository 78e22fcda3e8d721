"""The export folder: timm's Hub layout, which is also a Hugging Face model repository.

One folder per exported sensor:

* ``model.safetensors``: the encoder with timm ``VisionTransformer`` key names (the sensor's patch
  embedding becomes ``patch_embed.proj``); ``timm.create_model("local-dir:DIR", pretrained=True)``
  loads it with strict keys.
* ``config.json``: ``architecture`` and ``model_args`` (every size, so variants timm has no name
  for build too; ``global_pool="avg"`` without ``fc_norm``, i.e. the mean of the normed patch
  tokens, the pooling of our linear probes, DESIGN-NOTES 2; ``dynamic_img_size`` so other sizes
  work), ``pretrained_cfg`` (timm's fields: input size, per-band ``mean``/``std`` in the input
  units; sensor, bands and units in ``description`` and ``notes``, since timm refuses unknown
  keys there) and ``s12mae``: the full :class:`EncoderInfo` of the exported sensor.
* ``README.md``: the model card (:mod:`s12mae.export.card`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from s12mae.export.card import model_card
from s12mae.export.encoder_file import EncoderInfo, SensorInfo, encoder_info, load_encoder
from s12mae.models.vit import ViTEncoder

__all__ = ["FOLDER_FORMAT", "load_any_encoder", "read_folder", "timm_state_dict", "write_folder"]

FOLDER_FORMAT = "s12mae-export-1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


def timm_state_dict(encoder: ViTEncoder, sensor: str) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm ``VisionTransformer`` names, with ``sensor``'s patch embedding only."""
    prefix = f"patch_embed.{sensor}."
    out = {}
    for k, v in encoder.state_dict().items():
        if k.startswith("patch_embed."):
            if not k.startswith(prefix):
                continue
            k = "patch_embed." + k[len(prefix):]
        out[k] = v.detach().contiguous().cpu()
    return out


def _timm_architecture(info: EncoderInfo) -> str:
    """timm's name for the variant when it has one (``vit_small_patch16_224``); else its generic ViT
    entrypoint, whose size ``model_args`` override entirely."""
    import timm

    name = f"{info.encoder}_224"
    return name if timm.is_model(name) else "vit_base_patch16_224"


def timm_config(info: EncoderInfo, sensor: SensorInfo) -> dict[str, Any]:
    """``config.json`` of the export folder (timm's Hub layout plus the ``s12mae`` block)."""
    c = len(sensor.bands)
    description = (f"s12mae {info.method} encoder, {info.encoder}, sensor {sensor.key}: bands "
                   f"{','.join(sensor.bands)} in {sensor.units} (file DN x {sensor.dn_scale:g} + {sensor.dn_offset:g}), "
                   "standardised per band with mean/std")
    own = {k: v for k, v in info.to_dict().items() if k != "sensors"}
    own.update(format=FOLDER_FORMAT, sensor=sensor.to_dict(),
               other_sensors=[k for k in info.sensors if k != sensor.key])
    return {
        "architecture": _timm_architecture(info),
        "num_classes": 0,
        "num_features": info.embed_dim,
        "model_args": {"img_size": info.img_size, "patch_size": info.patch_size, "in_chans": c,
                       "embed_dim": info.embed_dim, "depth": info.depth, "num_heads": info.num_heads,
                       "mlp_ratio": info.mlp_ratio, "qkv_bias": True, "class_token": True, "global_pool": "avg",
                       "fc_norm": False, "num_classes": 0, "dynamic_img_size": True},
        "pretrained_cfg": {"input_size": [c, info.img_size, info.img_size], "fixed_input_size": False,
                           "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                           "mean": list(sensor.mean), "std": list(sensor.std), "num_classes": 0,
                           "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
                           "description": description,
                           "notes": [f"sensor: {sensor.key}", f"bands: {','.join(sensor.bands)}",
                                     f"units: {sensor.units}", f"method: {info.method}"]},
        "s12mae": own,
    }


def write_folder(encoder: ViTEncoder, info: EncoderInfo, sensor: str, out: Path) -> None:
    """Write weights, ``config.json`` and the model card of one sensor into the existing folder ``out``.

    Callers wanting all-or-nothing write into a temporary folder (:func:`s12mae.files.atomic_dir`).
    """
    s = info.sensor(sensor)
    cfg = timm_config(info, s)
    meta = {"format": FOLDER_FORMAT, "sensor": s.key}
    save_file(timm_state_dict(encoder, s.key), str(out / WEIGHTS), metadata=meta)
    (out / CONFIG).write_text(json.dumps(cfg, indent=1))
    (out / CARD).write_text(model_card(info, s.key))


def read_folder(folder: str | Path) -> tuple[ViTEncoder, EncoderInfo, SensorInfo]:
    """Rebuild the s12mae encoder of an export folder (one patch embedding, the exported sensor).

    Returns:
        The encoder (keys mapped back from timm names, loaded strictly), the encoder's info and the
        exported sensor's info.

    Raises:
        ValueError: the folder lacks ``config.json``/``model.safetensors``, is not an s12mae export, or
            its weights do not fit the architecture; the message names the file.
    """
    folder = Path(folder)
    cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise ValueError(f"{f}: not found; is {folder} a folder written by `s12mae export`?")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file}: not valid JSON ({err})") from None
    own = cfg.get("s12mae") if isinstance(cfg, dict) else None
    if not isinstance(own, dict) or own.get("format") != FOLDER_FORMAT:
        raise ValueError(f"{cfg_file}: not an s12mae export (no 's12mae' block of format {FOLDER_FORMAT!r})")
    sensor = SensorInfo.from_dict(own["sensor"])
    info = EncoderInfo.from_dict({**own, "sensors": {sensor.key: sensor.to_dict()}})
    try:
        weights = load_file(str(weights_file))
        with safe_open(str(weights_file), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{weights_file}: unreadable weights ({err})") from None
    if meta.get("sensor", sensor.key) != sensor.key:
        raise ValueError(f"{weights_file}: weights are for sensor {meta['sensor']!r} but {cfg_file} describes "
                         f"{sensor.key!r}")
    encoder = ViTEncoder({sensor.key: len(sensor.bands)}, img_size=info.img_size, patch_size=info.patch_size,
                         embed_dim=info.embed_dim, depth=info.depth, num_heads=info.num_heads,
                         mlp_ratio=info.mlp_ratio)
    ours = {(f"patch_embed.{sensor.key}." + k[len("patch_embed."):] if k.startswith("patch_embed.") else k): v
            for k, v in weights.items()}
    try:
        encoder.load_state_dict(ours)
    except RuntimeError as err:
        raise ValueError(f"{weights_file}: weights do not fit the architecture in {cfg_file} ({err})") from None
    return encoder, info, sensor


def load_any_encoder(path: str | Path) -> tuple[ViTEncoder, EncoderInfo]:
    """An encoder and its info from an ``encoder.safetensors`` file or an export folder."""
    if Path(path).is_dir():
        encoder, info, _ = read_folder(path)
        return encoder, info
    return load_encoder(path), encoder_info(path)


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Upload an export folder to the Hub repository ``repo_id`` (created if needed); the commit URL."""
    from huggingface_hub import HfApi  # the [hub] extra

    read_folder(folder)  # refuse anything that is not a complete export
    api = HfApi()
    repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return str(api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message="Upload s12mae encoder export"))
