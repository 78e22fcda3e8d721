"""The PANGAEA encoder config of an export (for the adapter in ``integrations/pangaea/``).

PANGAEA names bands without zero padding (``B1`` ... ``B12``, ``B8A``) and modalities ``optical``
and ``sar``; its ``input_bands`` select and order the dataset's bands for the encoder. The config
also carries the encoder's statistics and units (``s12mae_stats``) so the adapter can check them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from s12mae.export.encoder_file import EncoderInfo

__all__ = ["modality_of", "pangaea_band", "pangaea_config", "write_pangaea_config"]

TARGET = "pangaea.encoders.s12mae_encoder.S12MAE_Encoder"


def pangaea_band(name: str) -> str:
    """Canonical band name to PANGAEA's: ``B01`` -> ``B1``, ``B8A`` and ``VV`` unchanged."""
    m = re.fullmatch(r"B0(\d)", name)
    return f"B{m.group(1)}" if m else name


def modality_of(sensor: str) -> str:
    """PANGAEA modality of a sensor key: ``sar`` for Sentinel-1, ``optical`` otherwise."""
    return "sar" if sensor.startswith("s1") else "optical"


def _output_layers(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last (PANGAEA's ViT-B choice is 3, 5, 7, 11)."""
    return sorted({max(0, round(depth * q) - 1) for q in (0.25, 0.5, 0.75, 1.0)})


def pangaea_config(info: EncoderInfo, sensor: str, folder: Path) -> dict[str, Any]:
    """PANGAEA ``configs/encoder/*.yaml`` content for the export ``folder`` of ``sensor``."""
    s = info.sensor(sensor)
    layers = _output_layers(info.depth)
    return {
        "_target_": TARGET,
        "encoder_weights": str(folder),
        "download_url": None,
        "sensor": s.key,
        "input_size": info.img_size,
        "embed_dim": info.embed_dim,
        "patch_size": info.patch_size,
        "input_bands": {modality_of(s.key): [pangaea_band(b) for b in s.bands]},
        "output_layers": layers,
        "output_dim": info.embed_dim,
        "s12mae_stats": {"units": s.units, "mean": list(s.mean), "std": list(s.std),
                         "dn_scale": s.dn_scale, "source": s.stats_source},
    }


def write_pangaea_config(info: EncoderInfo, sensor: str, folder: Path, path: Path) -> None:
    """Write :func:`pangaea_config` to ``path`` with a header on where it goes."""
    header = ("# PANGAEA encoder config written by `s12mae export --format pangaea` (copy to PANGAEA's\n"
              "# configs/encoder/, and integrations/pangaea/s12mae_encoder.py to pangaea/encoders/).\n"
              "# PANGAEA standardises each dataset with its own statistics; s12mae_stats are the encoder's,\n"
              "# for reference and for the adapter's band and units check.\n")
    path.write_text(header + yaml.safe_dump(pangaea_config(info, sensor, folder), sort_keys=False))
