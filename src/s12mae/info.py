"""``s12mae info``: sensors and model variants with their parameter counts."""

from __future__ import annotations

import torch

from s12mae.models.decoder import DECODERS, build_decoder
from s12mae.models.vit import ENCODERS, build_encoder
from s12mae.sensors import get_sensor, list_sensors

__all__ = ["count_parameters", "print_info"]


def count_parameters(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]


def print_info(img_size: int = 224, channels: int = 13) -> None:
    """Print sensors, encoder variants and decoder variants (parameters in millions)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        _print_info(img_size, channels)


def _print_info(img_size: int, channels: int) -> None:
    print("Sensors (resources/sensors.yaml):")
    for key in list_sensors():
        spec = get_sensor(key)
        print(f"  {key:8s} {spec.num_channels:2d} bands {','.join(spec.band_names):55s} {spec.units}")
    print(f"\nEncoders ({channels} input channels, {img_size} px):")
    print(f"  {'name':22s} {'width':>5s} {'depth':>5s} {'heads':>5s} {'patch':>5s} {'params':>9s}")
    for name, a in ENCODERS.items():
        if img_size % a.patch_size:
            continue
        n = count_parameters(build_encoder(name, {"x": channels}, img_size))
        print(f"  {name:22s} {a.embed_dim:5d} {a.depth:5d} {a.num_heads:5d} {a.patch_size:5d} {n / 1e6:8.2f}M")
    print(f"\nDecoders (behind a width-768 encoder, 16x16x{channels} output patches):")
    for name, d in DECODERS.items():
        n = count_parameters(build_decoder(name, 768, (img_size // 16, img_size // 16), 16 * 16 * channels))
        print(f"  {name:22s} {d.embed_dim:5d} {d.depth:5d} {d.num_heads:5d} {'':5s} {n / 1e6:8.2f}M")
