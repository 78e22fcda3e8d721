"""Statistics of the training data itself when a run on simulated data names none.

The shipped statistics (``resources/stats.json``) describe real Sentinel-1/2 archives. Simulated
scenes differ (B10's shipped std is tiny), so standardising them with the shipped numbers gives
step-0 MAE losses of 35-53 instead of ~1 and, under AGD, puts the tasks' gradients at very
different scales. A run on simulated data (``data.path`` unset or a ``s12mae simulate`` folder)
without ``data.stats`` therefore computes the statistics of the sensors it trains on, writes them
to ``<run folder>/data_stats.json`` and says so; a resumed run reuses that file. Runs on shard
sets keep the shipped statistics unless ``data.stats`` is given (shards hold real data).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from s12mae.config import PretrainConfig
from s12mae.data import available_rows, load_arrays
from s12mae.sensors import get_sensor, write_stats
from s12mae.shards import is_shard_set
from s12mae.simulate import SimulationConfig, simulate

__all__ = ["DATA_STATS", "simulated_arrays", "with_data_statistics"]

DATA_STATS = "data_stats.json"

_LAST_SIMULATION: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []  # one entry: the last run's


def simulated_arrays(sim: SimulationConfig) -> dict[str, np.ndarray]:
    """``simulate(sim)``, computed once for the statistics and the datasets of one run."""
    key = dataclasses.asdict(sim)
    if not _LAST_SIMULATION or _LAST_SIMULATION[0][0] != key:
        _LAST_SIMULATION[:] = [(key, simulate(sim))]
    return _LAST_SIMULATION[0][1]


def _simulated_sources(cfg: PretrainConfig) -> list[str | None]:
    """The simulated datasets of the run (``None`` = in memory), or ``[]`` if any task reads shards."""
    paths = {cfg.data.path, *(cfg.data.task_paths or {}).values()}
    return [] if any(is_shard_set(p) for p in paths) else sorted(paths, key=str)


def with_data_statistics(cfg: PretrainConfig, run_dir: Path, sensors: list[str], write: bool) -> PretrainConfig:
    """``cfg`` with ``data.stats`` pointing at the data's own statistics where it names none.

    Args:
        cfg: the run config as given.
        run_dir: the run folder (holds ``data_stats.json``).
        sensors: sensor keys the method trains on.
        write: compute and write the file if absent (rank 0); other ranks only point at it.

    Returns:
        ``cfg`` itself when it names statistics or reads shard sets; else a copy whose
        ``data.stats`` is the run folder's ``data_stats.json``.
    """
    sources = _simulated_sources(cfg)
    if cfg.data.stats is not None or not sources:
        return cfg
    path = (run_dir / DATA_STATS).resolve()
    if write and not path.is_file():
        entries = _statistics(cfg, sources, sensors)
        write_stats(path, entries)
        print(f"data.stats is not set: standardising with the statistics of the training data "
              f"({', '.join(str(s or 'simulated in memory') for s in sources)}), written to {path}", flush=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stats=str(path)))


def _statistics(cfg: PretrainConfig, sources: list[str | None], sensors: list[str]) -> dict[str, Any]:
    from s12mae.stats import BandAccumulator  # stats imports the shard reader; only needed here

    accs = {k: BandAccumulator(get_sensor(k)) for k in sensors}
    for source in sources:
        arrays = simulated_arrays(cfg.data.simulated) if source is None else load_arrays(source)
        for key, acc in accs.items():
            if key in arrays:
                rows = available_rows(arrays, [key])
                for start in range(0, len(rows), 256):
                    dn = np.asarray(arrays[key][rows[start:start + 256]])
                    acc.add(dn, None if np.isnan(acc.spec.nodata) else dn != acc.spec.nodata)
    where = ", ".join(str(s or "simulated data") for s in sources)
    return {k: {"source": f"computed by pretrain over {where}", "bands": acc.result()}
            for k, acc in accs.items() if acc.count.any()}  # a sensor the data lacks: the datasets say so
