"""Export and load pretrained encoders (safetensors with the architecture in its metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from s12mae.files import atomic_path
from s12mae.models.vit import ViTEncoder, build_encoder

__all__ = ["encoder_stats", "load_encoder", "save_encoder"]


def save_encoder(encoder: ViTEncoder, path: Path, cfg: Any) -> None:
    """Write the encoder's weights with the metadata needed to rebuild it (atomically)."""
    meta = {
        "format": "s12mae-encoder-1",
        "encoder": cfg.model.encoder,
        "img_size": str(cfg.model.img_size),
        "in_chans": json.dumps(encoder.in_chans),
        "method": cfg.method,
        "stats": json.dumps(_stats_of(encoder, cfg)),  # the standardisation it was trained with
    }
    weights = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=meta)


def _stats_of(encoder: ViTEncoder, cfg: Any) -> dict[str, Any]:
    from s12mae.sensors import get_sensor

    stats_file = getattr(getattr(cfg, "data", None), "stats", None)
    out = {}
    for key in encoder.in_chans:
        try:
            spec = get_sensor(key, stats_file)
        except (KeyError, ValueError):  # a sensor unknown to the specs: nothing to record
            continue
        out[key] = {"source": f"statistics the encoder was trained with ({stats_file or 'shipped defaults'})",
                    "bands": {b: {"mean": s.mean, "std": s.std} for b, s in spec.stats.items()}}
    return out


def encoder_stats(path: str | Path) -> dict[str, Any] | None:
    """The band statistics recorded in an encoder file (``None`` for files without them)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: unreadable encoder file ({err})") from None
    return json.loads(meta["stats"]) if meta.get("stats") else None


def load_encoder(path: str | Path) -> ViTEncoder:
    """Rebuild an encoder written by :func:`save_encoder`."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: unreadable encoder file ({err})") from None
    if meta.get("format") != "s12mae-encoder-1":
        raise ValueError(f"{path}: not an s12mae encoder file (metadata {meta})")
    encoder = build_encoder(meta["encoder"], json.loads(meta["in_chans"]), int(meta["img_size"]))
    encoder.load_state_dict(weights)
    return encoder
