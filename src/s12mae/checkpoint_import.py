"""Import MAE-format checkpoints (facebookresearch/mae ``models_mae.py``, SSL4EO-S12 MAE releases).

A file holds ``{'model': sd, 'args': Namespace, ...}`` (or ``sd`` under ``state_dict`` or at top
level, keys maybe prefixed ``module.``). Loading is tensor-only (``weights_only=True``, with
``argparse.Namespace`` allow-listed for ``args``). Encoder-only files (backbone releases) load
the encoder; the decoder keeps its init. All checks run before any copy (design note 14).
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from s12mae.export import save_encoder
from s12mae.files import atomic_path
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

__all__ = ["ImportReport", "import_mae_checkpoint", "import_mae_cli", "mae_key_map", "read_mae_state_dict"]

_PATCH_WEIGHT = "patch_embed.proj.weight"


def mae_key_map(
    encoder_prefix: str = "encoder", decoder_prefix: str = "decoder", sensor: str = "s2_l1c"
) -> Callable[[str], str | None]:
    """Mapping from MAE (``models_mae.py``) key names to our MAE-method key names.

    Args:
        encoder_prefix: attribute of the encoder in our model.
        decoder_prefix: attribute of the decoder in our model.
        sensor: sensor key whose patch embedding receives ``patch_embed.proj``.

    Returns:
        A function from an MAE key to our key, or ``None`` for keys with no counterpart
        (``fc_norm.*``, ``head.*``, ...).
    """
    e, d = encoder_prefix, decoder_prefix
    rules = {  # MAE name (exact, or prefix before a '.') -> our name
        "patch_embed.proj": f"{e}.patch_embed.{sensor}.proj",
        "cls_token": f"{e}.cls_token",
        "pos_embed": f"{e}.pos_embed",
        "blocks": f"{e}.blocks",
        "norm": f"{e}.norm",
        "mask_token": f"{d}.mask_token",
        "decoder_embed": f"{d}.embed",
        "decoder_pos_embed": f"{d}.pos_embed",
        "decoder_blocks": f"{d}.blocks",
        "decoder_norm": f"{d}.norm",
        "decoder_pred": f"{d}.pred",
    }

    def convert(key: str) -> str | None:
        if key in rules:
            return rules[key]
        for src, dst in rules.items():
            if key.startswith(src + "."):
                return dst + key[len(src) :]
        return None

    return convert


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        path: the checkpoint file.
        loaded: our keys that received checkpoint values.
        skipped: checkpoint keys with no counterpart in our MAE (``fc_norm.*``, ``head.*``).
        missing: our keys the file does not provide (e.g. the whole decoder of a backbone release);
            they keep their initialisation.
        has_decoder: whether the file held decoder weights.
        resampled: position tables interpolated to the model's grid: our key -> (old grid, new grid).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    has_decoder: bool = False
    resampled: dict[str, tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable, multi-line account of the import."""
        lines = [
            f"imported {self.path}: {len(self.loaded)} tensors loaded, "
            f"decoder {'included' if self.has_decoder else 'absent (encoder-only file)'}"
        ]
        for key, (old, new) in self.resampled.items():
            lines.append(f"  resampled {key} from a {old[0]}x{old[1]} to a {new[0]}x{new[1]} grid")
        if self.skipped:
            lines.append(f"  skipped (no counterpart): {', '.join(self.skipped)}")
        if self.missing:  # a backbone release misses the whole decoder: name a few
            more = f", ... ({len(self.missing) - 4} more)" if len(self.missing) > 4 else ""
            lines.append(f"  not in the file, left at init: {', '.join(self.missing[:4])}{more}")
        return "\n".join(lines)


def read_mae_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the tensors of an MAE-format checkpoint without unpickling arbitrary objects.

    Args:
        path: ``.pth`` file holding ``{'model': sd}``, ``{'state_dict': sd}`` or ``sd`` itself.

    Returns:
        The state dict with any ``module.`` prefix removed.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, holds objects that tensor-only loading refuses, or
            holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # an object weights_only refuses, or not a pickle at all
        raise ValueError(
            f"{path}: refused by tensor-only loading (weights_only=True allows tensors, plain containers "
            f"and argparse.Namespace): the file holds code or other objects ({_unpickler_reason(err)}) and "
            "was not loaded; nothing in it ran"
        ) from None
    except Exception as err:  # torch raises many types for truncated or corrupt files
        raise ValueError(f"{path}: unreadable, truncated or corrupt ({type(err).__name__}: {err})") from None
    sd = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: no tensor state dict under 'model', 'state_dict' or top level ({found})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


_TORCH_ADVICE = ("Weights only load failed", "Re-running", "weights_only", "Check the documentation", "Please file")


def _unpickler_reason(err: Exception) -> str:
    """The cause in torch's weights_only message (e.g. the refused global), without its advice to
    rerun with ``weights_only=False``, which would run the file's code."""
    text = str(err).partition("WeightsUnpickler error:")[2] or str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line.split(" Please use")[0] for line in lines if not any(a in line for a in _TORCH_ADVICE)]
    return causes[0] if causes else "an object tensor-only loading does not allow"


def _grid(length: int) -> tuple[int, int] | None:
    side = round(length**0.5)
    return (side, side) if side * side == length else None


def _import_state_dict(sd: Mapping[str, torch.Tensor], model: MAE, source: str) -> ImportReport:
    """Validate ``sd`` (MAE names) against ``model`` and copy it in; see :func:`import_mae_checkpoint`."""
    convert = mae_key_map(sensor=model.sensor)
    ours = model.state_dict()
    report = ImportReport(path=source)
    values: dict[str, torch.Tensor] = {}  # our key -> checkpoint tensor
    origin: dict[str, str] = {}  # our key -> checkpoint key, for messages
    errors: list[str] = []
    for key, value in sd.items():
        target = convert(key)
        if target is None:
            report.skipped.append(key)
        elif target not in ours:
            errors.append(f"{key} -> {target}: no such key in the model (different depth?)")
        else:
            values[target], origin[target] = value, key
    report.has_decoder = any(k.startswith("decoder.") for k in values)
    own_patch = f"encoder.patch_embed.{model.sensor}."
    for key in ours:
        if key in values:
            continue
        if (key.startswith("decoder.") and not report.has_decoder) or (
            key.startswith("encoder.patch_embed.") and not key.startswith(own_patch)
        ):
            report.missing.append(key)  # absent by design: backbone release, or another sensor
        else:
            errors.append(f"{key}: missing from the file")
    for key, value in values.items():
        want, name = tuple(ours[key].shape), f"{origin[key]} (ours: {key})"
        same_width = value.ndim == 3 and value.shape[-1] == want[-1]
        if key.endswith("pos_embed") and same_width and tuple(value.shape) != want:
            old, new = _grid(value.shape[1] - 1), tuple(getattr(model, key.split(".")[0]).grid)
            if old is None:
                errors.append(f"{name}: position table {tuple(value.shape)} is not 1 + a square grid")
                continue
            values[key] = resample_abs_pos_embed(value.float(), list(new), list(old), num_prefix_tokens=1)
            report.resampled[key] = (old, new)
        elif key == own_patch + "proj.weight" and value.ndim == 4 and value.shape[1] != want[1]:
            errors.append(
                f"{name}: the checkpoint's patch embedding takes {value.shape[1]} channels, the model's "
                f"sensor {model.sensor!r} has {want[1]} (checkpoint {tuple(value.shape)}, model {want})"
            )
        elif tuple(value.shape) != want:
            errors.append(f"{name}: checkpoint shape {tuple(value.shape)}, model shape {want}")
    if errors:
        raise ValueError(f"{source}: cannot import into this MAE:\n  " + "\n  ".join(errors))
    ours.update(values)
    model.load_state_dict(ours)
    report.loaded = sorted(values)
    return report


def import_mae_checkpoint(path: str | os.PathLike[str], model: MAE) -> ImportReport:
    """Load an MAE-format checkpoint into an existing :class:`MAE`.

    Position tables of another grid are resampled (bicubic, class token kept); encoder-only
    files load the encoder and leave the decoder at its initialisation. Nothing is modified
    when an error is raised.

    Args:
        path: the checkpoint file.
        model: our MAE; its ``sensor`` receives the checkpoint's patch embedding.

    Returns:
        What was loaded, skipped, missing and resampled.

    Raises:
        ValueError: unreadable file, shape mismatches (all listed), encoder keys missing from
            the file, or checkpoint keys the model has no slot for.
    """
    return _import_state_dict(read_mae_state_dict(path), model, str(path))


def import_mae_cli(
    checkpoint: str, out: Path, encoder: str, decoder: str, img_size: int, sensor: str
) -> None:
    """Build our MAE for a checkpoint, import it and export ``out/encoder.safetensors``.

    Also writes ``out/mae.safetensors`` (the full MAE state dict) when the file held a decoder.

    Args:
        checkpoint: MAE-format ``.pth`` file.
        out: output folder (created if needed).
        encoder: our encoder variant, e.g. ``vit_base_patch16``.
        decoder: our decoder variant, e.g. ``vitlite_512d8b``.
        img_size: image side the model is built for.
        sensor: sensor key; its channel count must match the checkpoint's patch embedding.
    """
    sd = read_mae_state_dict(checkpoint)
    if _PATCH_WEIGHT not in sd or sd[_PATCH_WEIGHT].ndim != 4:
        raise ValueError(f"{checkpoint}: no 4-d {_PATCH_WEIGHT!r}, not an MAE-format checkpoint")
    channels = int(sd[_PATCH_WEIGHT].shape[1])
    expected = get_sensor(sensor).num_channels
    if channels != expected:
        raise ValueError(
            f"{checkpoint}: the patch embedding takes {channels} channels but sensor {sensor!r} "
            f"has {expected}; pick the sensor the checkpoint was trained on"
        )
    model = MAE(build_encoder(encoder, {sensor: channels}, img_size), sensor=sensor, decoder=decoder)
    report = _import_state_dict(sd, model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    cfg = SimpleNamespace(model=SimpleNamespace(encoder=encoder, img_size=img_size), method="mae")
    save_encoder(model.encoder, out / "encoder.safetensors", cfg)
    written = [out / "encoder.safetensors"]
    if report.has_decoder:
        meta = {"format": "s12mae-mae-1", "encoder": encoder, "decoder": decoder,
                "img_size": str(img_size), "sensor": sensor, "source": str(checkpoint)}
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with atomic_path(out / "mae.safetensors") as tmp:
            save_file(weights, str(tmp), metadata=meta)
        written.append(out / "mae.safetensors")
    print(report.summary())
    print("wrote " + ", ".join(str(p) for p in written))
