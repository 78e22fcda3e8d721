"""Per-band statistics of a dataset in model units (``s12mae stats``).

Mean and standard deviation are exact: every valid pixel counts, accumulated in float64 by
Chan et al.'s pairwise update (count, mean, sum of squared deviations) so large datasets lose no
precision to ``E[x^2] - E[x]^2`` cancellation. The percentiles come from a uniform random sample
of at most ``max_sample`` valid values per band, drawn with a fixed seed in one streaming pass
(each value gets a random key, the ``max_sample`` smallest keys are kept: a reservoir that needs no
dataset size up front). Nodata, values outside a sample's valid mask and non-finite values are
ignored. The result is written into the statistics file that the sensor specs read (``data.stats``
in a run config).

Sources: a ``s12mae simulate`` folder (memory-mapped arrays), a shard set written by
``s12mae shards`` (a folder with ``shards.json``; its stored valid masks mark nodata), or any
reader layout of :mod:`s12mae.layouts` (``layout=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s12mae import storage
from s12mae.data import load_arrays
from s12mae.sensors import SensorSpec, get_sensor, list_sensors, write_stats
from s12mae.shards import is_shard_set, read_manifest, read_samples

__all__ = ["BandAccumulator", "band_statistics", "cluster_statistics", "compute_stats_file"]

PERCENTILES = (1, 2, 50, 98, 99)


class BandAccumulator:
    """Streaming per-band statistics of one sensor in model units.

    Args:
        spec: the sensor (band names, file units -> model units).
        max_sample: values kept per band for the percentiles.
        seed: seed of the percentile sample.
    """

    def __init__(self, spec: SensorSpec, max_sample: int = 1_000_000, seed: int | Sequence[int] = 0) -> None:
        c = spec.num_channels
        self.spec, self.max_sample = spec, max_sample
        self.rng = np.random.default_rng(seed)
        self.count = np.zeros(c)
        self.mean = np.zeros(c)
        self.m2 = np.zeros(c)  # sum of squared deviations from the mean
        self.keys: list[list[np.ndarray]] = [[] for _ in range(c)]
        self.values: list[list[np.ndarray]] = [[] for _ in range(c)]
        self.held = np.zeros(c, dtype=np.int64)
        self.threshold = np.ones(c)  # keys at or above this can no longer enter the sample

    def add(self, dn: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add file values ``dn`` (``(C, H, W)`` or ``(N, C, H, W)``); ``valid`` (same shape, bool)
        marks the pixels to count (nodata and non-finite values are left out in any case)."""
        x = self.spec.to_units(torch.from_numpy(np.asarray(dn))).double().numpy()
        ok = np.isfinite(x) if valid is None else np.isfinite(x) & np.asarray(valid, dtype=bool)
        axis = -3
        for b in range(self.spec.num_channels):
            v = np.take(x, b, axis=axis)[np.take(ok, b, axis=axis)]
            if v.size:
                self._moments(b, v)
                self._sample(b, v)

    def _moments(self, b: int, v: np.ndarray) -> None:
        n, mean = float(v.size), float(v.mean())
        m2 = float(((v - mean) ** 2).sum())
        total = self.count[b] + n
        delta = mean - self.mean[b]
        self.mean[b] += delta * n / total
        self.m2[b] += m2 + delta * delta * self.count[b] * n / total
        self.count[b] = total

    def _sample(self, b: int, v: np.ndarray) -> None:
        keys = self.rng.random(v.size)
        keep = keys < self.threshold[b]
        self.keys[b].append(keys[keep])
        self.values[b].append(v[keep])
        self.held[b] += int(keep.sum())
        if self.held[b] > 2 * self.max_sample:
            self._shrink(b)

    def _shrink(self, b: int) -> None:
        keys, values = np.concatenate(self.keys[b]), np.concatenate(self.values[b])
        if keys.size > self.max_sample:
            part = np.argpartition(keys, self.max_sample - 1)[: self.max_sample]
            keys, values = keys[part], values[part]
            self.threshold[b] = keys.max()
        self.keys[b], self.values[b], self.held[b] = [keys], [values], keys.size

    def merge(self, other: BandAccumulator) -> BandAccumulator:
        """Add the values counted by ``other`` (same sensor): moments by Chan et al.'s pairwise
        update; the percentile samples by keeping the smallest keys of both (each holds at least
        the smallest ``max_sample`` of its own, so the union's smallest are all there)."""
        for b in range(self.spec.num_channels):
            n = other.count[b]
            if n == 0:
                continue
            total = self.count[b] + n
            delta = other.mean[b] - self.mean[b]
            self.mean[b] += delta * n / total
            self.m2[b] += other.m2[b] + delta * delta * self.count[b] * n / total
            self.count[b] = total
            self.keys[b] += other.keys[b]
            self.values[b] += other.values[b]
            self.held[b] += other.held[b]
            self.threshold[b] = min(self.threshold[b], other.threshold[b])
            if self.held[b] > 2 * self.max_sample:
                self._shrink(b)
        return self

    def compact(self) -> BandAccumulator:
        """Keep only the ``max_sample`` smallest keys per band (before sending it elsewhere)."""
        for b in range(self.spec.num_channels):
            self._shrink(b)
        return self

    def result(self) -> dict[str, dict[str, float]]:
        """``{band: {"mean", "std", "count", "p1", ...}}``; a band without valid pixels is a ValueError."""
        out: dict[str, dict[str, float]] = {}
        for b, name in enumerate(self.spec.band_names):
            if self.count[b] == 0:
                raise ValueError(f"band {name} of {self.spec.key} has no valid pixel")
            self._shrink(b)
            std = float(np.sqrt(self.m2[b] / self.count[b]))
            pct = np.percentile(self.values[b][0], PERCENTILES)
            out[name] = {"mean": float(self.mean[b]), "std": std if std > 0 else 1.0,
                         "count": int(self.count[b]), **{f"p{q}": float(v) for q, v in zip(PERCENTILES, pct)}}
        return out


def band_statistics(dn: np.ndarray, spec: SensorSpec, chunk: int = 256, max_sample: int = 1_000_000,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Statistics of every band of ``dn`` (``(N, C, H, W)`` file values) in model units."""
    acc = BandAccumulator(spec, max_sample, seed)
    for start in range(0, dn.shape[0], chunk):
        acc.add(np.array(dn[start : start + chunk]))
    return acc.result()


def _accumulate(samples: Iterable[Mapping[str, Any]], keys: Sequence[str] | None,
                seed: int | Sequence[int] = 0) -> dict[str, BandAccumulator]:
    """Accumulators of reader-format samples (``{<sensor>: (C, H, W), "valid.<sensor>": ...}``);
    with ``keys=None``, of every known sensor the samples hold."""
    known = set(list_sensors())
    accs: dict[str, BandAccumulator] = {k: BandAccumulator(get_sensor(k), seed=seed) for k in keys or []}
    for sample in samples:
        present = [k for k in sample if k in known] if keys is None else list(keys)
        for key in present:
            if key not in sample:
                continue  # e.g. an S2-only scene of a layout with S1 partners
            if key not in accs:
                accs[key] = BandAccumulator(get_sensor(key), seed=seed)
            accs[key].add(sample[key], sample.get(f"valid.{key}"))
    return accs


def _stream_statistics(samples: Iterable[Mapping[str, Any]], keys: Sequence[str] | None, where: str
                       ) -> dict[str, dict[str, dict[str, float]]]:
    """Statistics of reader-format samples (see :func:`_accumulate`)."""
    accs = _accumulate(samples, keys)
    if not accs:
        raise ValueError(f"{where}: holds no known sensor arrays")
    return {k: acc.result() for k, acc in accs.items()}


def _shard_set_statistics(data: str | Path, keys: Sequence[str] | None) -> dict[str, dict[str, dict[str, float]]]:
    have = list(read_manifest(data)["sensors"])
    missing = [k for k in keys or [] if k not in have]
    if missing:
        raise ValueError(f"{data}: the shard set holds sensors {have}, not {missing}")
    return _stream_statistics(read_samples(data), list(keys or have), str(data))


def compute_stats_file(data: str | Path, out: str | Path, sensors: Sequence[str] | None = None,
                       layout: str | None = None, split: Sequence[str] | None = None,
                       cluster: str | None = None) -> dict[str, Any]:
    """Compute statistics of the sensors in a dataset and write them to ``out``.

    Args:
        data: a ``s12mae simulate`` folder, a shard set (folder with ``shards.json``), or a dataset
            in ``layout``.
        out: statistics file to write or update (sensors it holds that are not computed stay).
        sensors: sensor keys (default: every sensor the dataset holds).
        layout: a key of :data:`s12mae.layouts.LAYOUTS`; ``None`` detects a shard set (a folder or
            an ``s3://``/``gs://``/``https://`` prefix) or a simulated folder.
        cluster: compute on Dask (``local:N`` or ``tcp://HOST:PORT``, :func:`cluster_statistics`):
            the same counts, means and deviations up to float rounding, percentiles from a sample
            of the same size drawn per partition; ``None`` computes here.
        split: splits to compute over, in layouts that have splits (``bigearthnet-v2``); ``None``:
            the training split there (statistics must not see test data; printed), every sample
            elsewhere.

    Returns:
        ``{sensor: {"source", "bands": {band: {"mean", "std", "count", "p1", ...}}}}``.
    """
    path = data if storage.is_url(data) else Path(data)
    if split is not None and layout in (None, "simulated"):
        raise ValueError(f"{data}: split {list(split)} applies only to a reader layout with splits "
                         "(give layout, e.g. bigearthnet-v2)")
    if layout not in (None, "simulated") and split is None:
        from s12mae.layouts import train_split

        if (default := train_split(layout)) is not None:
            split = [default]
            print(f"{data}: statistics over the {default!r} split only (the default; `split` chooses)")
    if cluster is not None:
        stats = cluster_statistics(data, sensors, layout, cluster, split=split)
    elif layout is None and is_shard_set(path):
        stats = _shard_set_statistics(path, sensors)
    elif layout in (None, "simulated"):
        arrays = load_arrays(data)
        keys = list(sensors) if sensors else [k for k in arrays if k in list_sensors()]
        if not keys:
            raise ValueError(f"{data}: holds no known sensor arrays (found {sorted(arrays)})")
        stats = {}
        for key in keys:
            if key not in arrays:
                raise ValueError(f"{data}: has no array for sensor {key!r}")
            stats[key] = band_statistics(arrays[key], get_sensor(key))
    else:
        from s12mae.layouts import open_layout  # the readers (rasterio) only where read

        samples = open_layout(layout, data, None if sensors is None else list(sensors),
                              split=None if split is None else list(split))
        stats = _stream_statistics(samples, sensors, f"{data} ({layout}{f', split {list(split)}' if split else ''})")
    entries = {}
    for key, bands in stats.items():
        over = f" (split {list(split)})" if split else ""
        entries[key] = {"source": f"s12mae stats over {data}{over}", "bands": bands}
        print(f"{key}: " + ", ".join(f"{b} {v['mean']:.4g}±{v['std']:.3g}" for b, v in bands.items()))
    write_stats(out, entries)
    print(f"wrote statistics of {list(entries)} to {out}")
    return entries


# -- on a Dask cluster ----------------------------------------------------------------------------


def _part_task(kind: str, data: str, keys: list[str] | None, part: Any, seed: list[int], opener: Any = None,
               token: str = "") -> dict[str, BandAccumulator]:
    """Accumulators of one partition: a shard (``part`` = (location, manifest entry)), rows
    ``[start, end)`` of a simulated folder, or scene positions of a layout (``opener``)."""
    from s12mae.distributed import worker_cached
    from s12mae.shards.format import decode_sample
    from s12mae.shards.stream import read_shard

    if kind == "shards":
        samples: Iterable[Mapping[str, Any]] = (decode_sample(r) for r in read_shard(part[0], part[1]))
    elif kind == "simulated":
        arrays = load_arrays(data)
        samples = ({k: np.array(arrays[k][i]) for k in keys or []} for i in range(*part))
    else:
        opened = worker_cached(opener, token)
        samples = (opened[i] for i in part)
    return {k: acc.compact() for k, acc in _accumulate(samples, keys, seed).items()}


def _merge_parts(a: dict[str, BandAccumulator], b: dict[str, BandAccumulator]) -> dict[str, BandAccumulator]:
    for key, acc in b.items():
        if key in a:
            a[key].merge(acc)
        else:
            a[key] = acc
    return a


def _partitions(data: str | Path, keys: Sequence[str] | None, layout: str | None,
                split: Sequence[str] | None = None) -> tuple[str, list[str] | None, list[Any], dict[str, Any]]:
    """``(kind, keys, parts, task options)`` of a dataset, each part a task's share."""
    from s12mae.shards.format import shard_files
    from s12mae.shards.stream import _expected, _name

    loc = data if storage.is_url(data) else Path(data)
    if layout is None and is_shard_set(loc):
        have = list(read_manifest(loc)["sensors"])
        missing = [k for k in keys or [] if k not in have]
        if missing:
            raise ValueError(f"{data}: the shard set holds sensors {have}, not {missing}")
        expected = _expected(loc)
        return "shards", list(keys or have), [(s, expected.get(_name(s))) for s in shard_files(loc)], {}
    if layout in (None, "simulated"):
        arrays = load_arrays(data)
        use = list(keys) if keys else [k for k in arrays if k in list_sensors()]
        absent = [k for k in use if k not in arrays]
        if not use or absent:
            raise ValueError(f"{data}: has no array for sensor(s) {absent or 'known'} (found {sorted(arrays)})")
        n = len(arrays[use[0]])
        return "simulated", use, [(s, min(s + 256, n)) for s in range(0, n, 256)], {}
    import functools

    from dask.base import tokenize

    from s12mae.layouts import open_layout

    opener = functools.partial(open_layout, layout, str(data), None if keys is None else list(keys),
                               split=None if split is None else list(split))
    n = len(opener())
    parts = [list(range(s, min(s + 16, n))) for s in range(0, n, 16)]
    return "layout", None if keys is None else list(keys), parts, {"opener": opener, "token": tokenize(opener)}


def cluster_statistics(data: str | Path, keys: Sequence[str] | None, layout: str | None, cluster: str,
                       seed: int = 0, progress: bool = True, split: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per-band statistics like :func:`compute_stats_file`'s, computed on a Dask cluster.

    The dataset is cut into partitions (a shard each, 256 rows of a simulated folder, 16 scenes of
    a layout); each worker task accumulates one (percentile keys seeded by ``(seed, partition)``)
    and the partial results are merged on the workers in a fixed binary tree, so the result does not
    depend on the number of workers or on which finished first.
    """
    from s12mae.distributed import TaskBar, open_client

    kind, use, parts, opts = _partitions(data, keys, layout, split)
    if not parts:
        raise ValueError(f"{data}: holds no sample")
    import distributed

    with open_client(cluster) as client:
        futures = [client.submit(_part_task, kind, str(data), use, part, [seed, i], pure=False, **opts)
                   for i, part in enumerate(parts)]
        bar = TaskBar(len(parts), "part", "statistics", progress)
        try:
            for _ in distributed.as_completed(futures):
                bar.update(1)
        finally:
            bar.close()
        while len(futures) > 1:
            pairs = [client.submit(_merge_parts, futures[i], futures[i + 1], pure=False)
                     for i in range(0, len(futures) - 1, 2)]
            futures = pairs + futures[len(futures) - len(futures) % 2:]
        accs = futures[0].result()
    if not accs:
        raise ValueError(f"{data}: holds no known sensor arrays")
    return {k: acc.result() for k, acc in accs.items()}
