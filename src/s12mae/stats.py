"""Per-band statistics of a dataset in model units (``s12mae stats``).

Mean and standard deviation are exact (float64 running sums over every valid pixel); the
percentiles come from a fixed-seed sample of at most ``max_sample`` valid values per band.
Nodata and non-finite values are ignored. The result is written into the statistics file that
the sensor specs read (``data.stats`` in a run config).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s12mae.sensors import SensorSpec, get_sensor, list_sensors, write_stats

__all__ = ["band_statistics", "compute_stats_file"]

PERCENTILES = (1, 2, 50, 98, 99)


def band_statistics(dn: np.ndarray, spec: SensorSpec, chunk: int = 256, max_sample: int = 1_000_000,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Statistics of every band of ``dn`` (``(N, C, H, W)`` file values) in model units."""
    c = spec.num_channels
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = np.zeros(c)
    rng = np.random.default_rng(seed)
    n_pix = dn.shape[0] * dn.shape[2] * dn.shape[3]
    keep_prob = min(1.0, max_sample / max(n_pix, 1))
    samples: list[list[np.ndarray]] = [[] for _ in range(c)]
    for start in range(0, dn.shape[0], chunk):
        x = spec.to_units(torch.from_numpy(np.array(dn[start : start + chunk]))).double().numpy()
        for b in range(c):
            v = x[:, b].ravel()
            v = v[np.isfinite(v)]
            total[b] += v.sum()
            total_sq[b] += (v * v).sum()
            count[b] += v.size
            samples[b].append(v[rng.random(v.size) < keep_prob])
    out: dict[str, dict[str, float]] = {}
    for b, name in enumerate(spec.band_names):
        if count[b] == 0:
            raise ValueError(f"band {name} of {spec.key} has no valid pixel")
        mean = total[b] / count[b]
        std = float(np.sqrt(max(total_sq[b] / count[b] - mean * mean, 0.0)))
        pct = np.percentile(np.concatenate(samples[b]), PERCENTILES)
        out[name] = {"mean": float(mean), "std": std if std > 0 else 1.0, "count": int(count[b]),
                     **{f"p{q}": float(v) for q, v in zip(PERCENTILES, pct)}}
    return out


def compute_stats_file(data: str | Path, out: str | Path, sensors: Sequence[str] | None = None) -> dict[str, Any]:
    """Compute statistics of the sensors in a dataset folder and write them to ``out``."""
    from s12mae.data import load_arrays

    arrays = load_arrays(data)
    keys = list(sensors) if sensors else [k for k in arrays if k in list_sensors()]
    if not keys:
        raise ValueError(f"{data}: holds no known sensor arrays (found {sorted(arrays)})")
    entries = {}
    for key in keys:
        if key not in arrays:
            raise ValueError(f"{data}: has no array for sensor {key!r}")
        entries[key] = {"source": f"s12mae stats over {data}",
                        "bands": band_statistics(arrays[key], get_sensor(key))}
        print(f"{key}: " + ", ".join(f"{b} {v['mean']:.4g}±{v['std']:.3g}" for b, v in entries[key]["bands"].items()))
    write_stats(out, entries)
    print(f"wrote statistics of {keys} to {out}")
    return entries
