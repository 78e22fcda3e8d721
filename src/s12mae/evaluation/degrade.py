"""Test-time degradations of the robustness evaluation: S1/S2 misalignment and simulated clouds.

Both act on standardised model inputs ``(C, H, W)`` (what a task's sample holds), deterministic
by their arguments alone, so every encoder and every seed meets the same degraded scenes.

* :func:`shift_image`: the S1 image moved by ``n`` pixels down and right against S2 (and the
  labels); the uncovered strip repeats the edge (no wrap-around, which would paste the far side
  of the scene in).
* :func:`cloud_opacity` + :func:`add_clouds`: clouds drawn on the optical image itself. A smooth
  Gaussian random field (periodic, per scene from ``(seed, sample index)``) is thresholded at its
  ``1 - f`` quantile, with soft edges, so a fraction ``f`` of the pixels is covered (opacity
  > 0.5). The same field serves every ``f``, so the clouds of 10 % lie inside those of 25 %.
  Under opacity ``a`` a band becomes ``(1 - a) * x + a * c``: ``c`` is the cloud's
  top-of-atmosphere reflectance in that band, bright and flat over the visible and near
  infrared, lower in the SWIR (water droplets absorb) and low in the B10 cirrus band (the water
  vapour above a low cloud absorbs at 1375 nm), standardised with the band's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s12mae.sensors import SensorSpec

__all__ = ["CLOUD_SPECTRUM", "CloudConfig", "add_clouds", "cloud_opacity", "shift_image"]

CLOUD_SPECTRUM: dict[str, float] = {
    "B01": 1.00, "B02": 1.00, "B03": 1.00, "B04": 1.00, "B05": 0.99, "B06": 0.98, "B07": 0.98,
    "B08": 0.97, "B8A": 0.96, "B09": 0.80, "B10": 0.15, "B11": 0.65, "B12": 0.45,
}
"""A thick water cloud's TOA reflectance per Sentinel-2 band relative to its visible brightness
(ours, approximate: flat VNIR, water-vapour absorption in B09, B10 mostly absorbed above a low
cloud top, droplet absorption in B11/B12)."""


@dataclass
class CloudConfig:
    """How the clouds of the robustness evaluation look (every value ours)."""

    brightness: float = 0.6
    """Visible TOA reflectance of the cloud tops (thick cumulus: about 0.4-0.8); other bands
    follow :data:`CLOUD_SPECTRUM`."""
    scale: float = 4.0
    """Standard deviation, in pixels, of the Gaussian that smooths the random field: the size of
    the cloud cells (capped at an eighth of the image side)."""
    edge: float = 0.1
    """Softness of the cloud edges, in standard deviations of the field (0: hard edges)."""
    seed: int = 0
    """Seed of the cloud fields (with each sample's index); the same for every encoder and seed."""

    def __post_init__(self) -> None:
        if not 0.0 < self.brightness <= 1.5:
            raise ValueError(f"cloud.brightness: must be in (0, 1.5] (a reflectance), got {self.brightness}")
        if self.scale <= 0 or self.edge < 0:
            raise ValueError(f"cloud.scale must be > 0 and cloud.edge >= 0, got {self.scale}, {self.edge}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"cloud.seed: must be an integer >= 0, got {self.seed!r}")


def shift_image(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` moved ``n`` pixels down and right: ``out[..., i, j] = x[..., max(i - n, 0), max(j - n, 0)]``.

    Args:
        x: ``(C, H, W)`` or ``(N, C, H, W)``.
        n: pixels, ``0 <= n < min(H, W)``.
    """
    h, w = x.shape[-2:]
    if not 0 <= n < min(h, w):
        raise ValueError(f"shift of {n} px on a {h}x{w} image: must be in [0, {min(h, w)})")
    if n == 0:
        return x
    flat = x.reshape(-1, 1, h, w)[..., : h - n, : w - n]
    return F.pad(flat, (n, 0, n, 0), mode="replicate").reshape(x.shape)


def cloud_opacity(size: tuple[int, int], fraction: float, index: int, cfg: CloudConfig) -> torch.Tensor:
    """Cloud opacity in [0, 1] of one scene: ``(H, W)`` float32, above 0.5 on ``fraction`` of it.

    Args:
        size: ``(H, W)``.
        fraction: share of the pixels under cloud, in [0, 1].
        index: the sample's index (with ``cfg.seed``, it keys the field).
        cfg: cloud settings.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"cloud fraction {fraction}: must be in [0, 1]")
    h, w = size
    if fraction == 0.0:
        return torch.zeros(h, w)
    if fraction == 1.0:
        return torch.ones(h, w)
    rng = np.random.default_rng([cfg.seed, index])
    sigma = min(cfg.scale, min(h, w) / 8)
    gain = np.exp(-2 * np.pi**2 * sigma**2 * (np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((h, w))) * gain, s=(h, w))
    field = (field - field.mean()) / (field.std() + 1e-12)
    threshold = np.quantile(field, 1.0 - fraction)
    if cfg.edge == 0:
        return torch.from_numpy((field > threshold).astype(np.float32))
    return torch.from_numpy(1.0 / (1.0 + np.exp(-(field - threshold) / cfg.edge))).float()


def cloud_values(spec: SensorSpec, brightness: float) -> torch.Tensor:
    """The cloud's standardised value per band of ``spec``: ``(C,)``."""
    unknown = [b for b in spec.band_names if b not in CLOUD_SPECTRUM]
    if unknown:
        raise ValueError(f"clouds on {spec.key}: no cloud reflectance for band(s) {unknown}; "
                         f"known: {sorted(CLOUD_SPECTRUM)} (Sentinel-2)")
    if spec.units != "reflectance":
        raise ValueError(f"clouds on {spec.key}: inputs in {spec.units!r}, expected reflectance")
    return torch.tensor([(brightness * CLOUD_SPECTRUM[b] - spec.stats[b].mean) / spec.stats[b].std
                         for b in spec.band_names], dtype=torch.float32)


def add_clouds(x: torch.Tensor, spec: SensorSpec, opacity: torch.Tensor, brightness: float) -> torch.Tensor:
    """Standardised optical image ``(C, H, W)`` under clouds of ``opacity`` ``(H, W)``: ``(C, H, W)``."""
    c = cloud_values(spec, brightness).to(x.device).view(-1, 1, 1)
    a = opacity.to(x.device, x.dtype)
    return x * (1 - a) + c * a
