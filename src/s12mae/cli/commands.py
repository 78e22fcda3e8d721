"""Typed configs and entry functions of the subcommands that have no config of their own elsewhere.

Each config is a dataclass with a docstring per field (``--help`` shows them); its entry function
takes the built config and imports the heavy modules only when it runs. ``pretrain`` and
``evaluate`` use the run configs themselves (:class:`PretrainRun` adds ``--resume`` and the
``--method`` choices of the method registry to :class:`~s12mae.config.PretrainConfig`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from s12mae.config import PretrainConfig
from s12mae.evaluation.config import EvalConfig
from s12mae.methods import METHODS
from s12mae.pairing import DEFAULT_MAX_DAYS, DEFAULT_MIN_OVERLAP, DEFAULT_NEAREST_DAYS, Match
from s12mae.paths import is_url
from s12mae.shards import ShardConfig
from s12mae.simulate import SimulationConfig
from s12mae.storage import redact

__all__ = [
    "DemoCommand",
    "ImportMaeCommand",
    "InfoCommand",
    "PairCommand",
    "PretrainRun",
    "ShardsCommand",
    "SimulateCommand",
    "StatsCommand",
]

MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # the registry's names


@dataclass
class PretrainRun(PretrainConfig):
    """A pretraining run: method, model, data, optimizer, schedule and loop.

    A run folder's ``config.yaml`` is a valid ``--config`` (``resume`` is not part of it)."""

    method: MethodName = "mae"  # type: ignore[assignment]
    """Pretraining method: a name in the method registry (``s12mae.methods.METHODS``)."""
    resume: bool = False
    """Continue ``train.out_dir`` from its latest checkpoint; the config must be the run's own but
    for ``train.steps`` and logging/device settings."""

    def run_config(self) -> PretrainConfig:
        """The run's config without the command-line-only ``resume``."""
        return PretrainConfig(**{f.name: getattr(self, f.name) for f in fields(PretrainConfig)})


def pretrain(cfg: PretrainRun) -> None:
    from s12mae.train.loop import pretrain as run

    result = run(cfg.run_config(), resume=cfg.resume)
    out = cfg.train.out_dir
    print(f"run folder: {redact(out)} (working copy: {result.run_dir})" if is_url(out)
          else f"run folder: {result.run_dir}")


def evaluate(cfg: EvalConfig) -> None:
    from s12mae.evaluation import run_evaluation

    run_evaluation(cfg)


@dataclass
class SimulateCommand:
    """Where the simulated dataset goes."""

    out: str
    """Dataset folder to create."""
    sim: SimulationConfig = field(default_factory=SimulationConfig)
    """The simulation."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""


def simulate(cfg: SimulateCommand) -> None:
    from s12mae.simulate import write_simulated

    path = write_simulated(cfg.out, cfg.sim, overwrite=cfg.overwrite)
    print(f"wrote {cfg.sim.num_samples} simulated scenes to {path}")


@dataclass
class PairCommand:
    """Inputs, output and matching rules of the pairing."""

    s2: str | None = None
    """S2 metadata: an SSL4EO-S12 root (``s2c``/``s2a``/``s1`` folders) or modality folder, a
    parquet/CSV index, or STAC (Item/ItemCollection/Catalog JSON, or a catalog folder). Not with
    ``--stac``."""
    s1: str | None = None
    """S1 metadata in the same forms; ``None``: ``s2`` itself (its ``s1/`` folder)."""
    out: str = "pairs"
    """Output folder (or ``s3://``/``gs://`` prefix with ``--stac``) for ``pairs.parquet`` and
    ``s2_only.parquet``."""
    stac: str | None = None
    """Search this STAC API instead of reading ``s2``/``s1`` (landing page URL, e.g.
    ``https://earth-search.aws.element84.com/v1``); see ``s12mae.stac``."""
    collections: str = "sentinel-2-l1c,sentinel-1-grd"
    """With ``--stac``: the S2 collection, then the S1 collection, comma-separated."""
    bbox: str | None = None
    """With ``--stac``: area as ``minlon,minlat,maxlon,maxlat`` in degrees."""
    intersects: str | None = None
    """With ``--stac``: area as GeoJSON (a geometry, Feature or FeatureCollection), inline or the
    path/URL of a ``.geojson`` file. Not together with ``bbox``."""
    datetime: str | None = None
    """With ``--stac``: RFC 3339 instant, day or interval (``2022-03-01/2022-05-31``)."""
    max_cloud: float | None = None
    """With ``--stac``: largest S2 ``eo:cloud_cover`` in percent (``None``: no limit)."""
    orbit_state: Literal["ascending", "descending"] | None = None
    """With ``--stac``: keep only S1 items of this orbit direction (``None``: both)."""
    max_items: int | None = None
    """With ``--stac``: stop after this many items per collection (``None``: all pages)."""
    max_days: float = DEFAULT_MAX_DAYS
    """Pair only if ``|t_S1 - t_S2| <= max_days x 24 h`` (the paper's 7)."""
    min_overlap: float = DEFAULT_MIN_OVERLAP
    """Smallest intersection area / S2 footprint area for footprint matches (ours)."""
    match: Match = "auto"
    """``auto`` (location keys where both items have one, else footprints), ``footprint`` or
    ``location``."""
    nearest_days: float | None = DEFAULT_NEAREST_DAYS
    """S2-only rows report the nearest same-place S1 within this many days."""
    s2_product: str = "s2c"
    """SSL4EO-S12 S2 folder: ``s2c`` (L1C) or ``s2a`` (L2A)."""
    cell_deg: float = 1.0
    """Spatial join grid cell in degrees (speed only)."""
    threads: int | None = None
    """DuckDB threads (``None``: all cores)."""
    partition_days: float | None = None
    """Search the S2 items in time windows this many days wide (bounded memory for archives of
    tens of millions of rows; the result is the same). ``None``: all at once."""
    memory_limit: str | None = None
    """DuckDB memory limit, e.g. ``4GB`` (``None``: DuckDB's default, 80 % of RAM)."""
    temp_directory: str | None = None
    """Folder where DuckDB spills joins beyond ``memory_limit``."""
    quiet: bool = False
    """Print nothing."""


_STAC_FIELDS = ("stac", "collections", "bbox", "intersects", "datetime", "max_cloud", "orbit_state", "max_items")


def _numbers(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.strip("[]() ").split(","))
    except ValueError:
        raise ValueError(f"--{name}: need comma-separated numbers, not {text!r}") from None


def pair(cfg: PairCommand) -> None:
    options = {k: v for k, v in asdict(cfg).items() if k not in _STAC_FIELDS}
    if cfg.stac is None:
        if cfg.s2 is None:
            raise ValueError("s12mae pair: give the S2 metadata (a folder, index or STAC file) or --stac URL")
        from s12mae.pairing import pair_cli

        pair_cli(**options)
        return
    if cfg.s2 is not None or cfg.s1 is not None:
        raise ValueError("s12mae pair: --stac searches the API for both sensors; leave out s2 and --s1")
    from s12mae.stac import StacSearchConfig, pair_stac

    search = StacSearchConfig(
        url=cfg.stac, collections=tuple(c.strip() for c in cfg.collections.split(",")),  # type: ignore[arg-type]
        bbox=None if cfg.bbox is None else _numbers(cfg.bbox, "bbox"),  # type: ignore[arg-type]
        intersects=cfg.intersects, datetime=cfg.datetime, max_cloud=cfg.max_cloud,
        orbit_state=cfg.orbit_state, max_items=cfg.max_items)
    for key in ("s2", "s1", "out", "quiet", "s2_product"):
        options.pop(key)
    pair_stac(search, cfg.out, quiet=cfg.quiet, **options)


@dataclass
class ShardsCommand:
    """The dataset to cut, the shard set to write, and how."""

    data: str
    """Dataset (folder or index) in ``layout``."""
    out: str
    """Shard-set folder."""
    layout: str = "simulated"
    """How ``data`` is laid out, a key of ``s12mae.layouts.LAYOUTS``: ``simulated``, ``terramesh``,
    ``sen1floods11``, ``bigearthnet-v1``, ``bigearthnet-v2``, ``generic``, ``pairs``, ``s2-all``."""
    shards: ShardConfig = field(default_factory=ShardConfig)
    """Chips and shards."""
    skip_bad: bool = False
    """Skip (count and log) unreadable samples instead of stopping at the first."""
    overwrite: bool = False
    """Replace ``out`` if it holds a shard set."""
    split: list[str] | None = None
    """Only these splits, in layouts that have splits (``bigearthnet-v2``: ``train``,
    ``validation``, ``test``); ``None``: every sample."""
    cluster: str | None = None
    """Spread the scenes over Dask workers: ``local:N`` (N worker processes here) or the address of a
    running scheduler, ``tcp://HOST:PORT`` (e.g. a SLURM cluster of dask-jobqueue); the shard set is
    byte-identical to the in-process one. ``None``: in this process (needs no Dask)."""
    progress: bool = True
    """Show the live progress bars of a ``cluster`` run (scenes, chips/s, ETA)."""


def shards(cfg: ShardsCommand) -> None:
    if cfg.cluster is None:
        from s12mae.shards import write_shard_set

        write_shard_set(cfg.data, cfg.out, cfg.shards, layout=cfg.layout, skip_bad=cfg.skip_bad,
                        overwrite=cfg.overwrite, split=cfg.split)
        return
    from s12mae.distributed import parse_cluster
    from s12mae.shards.parallel import write_shard_set_dask

    parse_cluster(cfg.cluster)  # a bad spec is an error before the dataset is listed
    write_shard_set_dask(cfg.data, cfg.out, cfg.shards, cfg.cluster, layout=cfg.layout, skip_bad=cfg.skip_bad,
                         overwrite=cfg.overwrite, progress=cfg.progress, split=cfg.split)


@dataclass
class StatsCommand:
    """The dataset and the statistics file."""

    data: str
    """Dataset: a ``s12mae simulate`` folder, a shard set, or a dataset in ``layout``."""
    out: str
    """Statistics file to write or update (sensors it holds that are not computed stay)."""
    sensors: list[str] | None = None
    """Sensor keys (``None``: every sensor the dataset holds)."""
    layout: str | None = None
    """Reader layout of ``data`` (``None``: a simulated folder or a shard set, detected)."""
    split: list[str] | None = None
    """Splits to compute over, in layouts that have splits (``bigearthnet-v2``); ``None``: the
    training split there (statistics must not see test data), every sample elsewhere."""
    cluster: str | None = None
    """Compute on Dask workers: ``local:N`` or ``tcp://HOST:PORT`` (see ``s12mae shards --cluster``);
    mean, std and counts equal the in-process ones up to float rounding, percentiles come from an
    equally sized random sample. ``None``: in this process."""


def stats(cfg: StatsCommand) -> None:
    from s12mae.stats import compute_stats_file

    compute_stats_file(cfg.data, cfg.out, cfg.sensors, layout=cfg.layout, split=cfg.split, cluster=cfg.cluster)


@dataclass
class InfoCommand:
    """Input size and channels of the parameter counts."""

    img_size: int = 224
    """Image side in pixels."""
    channels: int = 13
    """Input channels."""


def info(cfg: InfoCommand) -> None:
    from s12mae.info import print_info

    print_info(cfg.img_size, cfg.channels)


@dataclass
class ImportMaeCommand:
    """The checkpoint and the model it is imported into."""

    checkpoint: str
    """``.pth`` file holding ``{'model': state_dict}`` (facebookresearch/mae, SSL4EO-S12)."""
    out: str
    """Folder for ``encoder.safetensors`` (and ``mae.safetensors`` when the file holds a decoder)."""
    encoder: str = "vit_base_patch16"
    """Our encoder variant matching the checkpoint."""
    decoder: str = "vitlite_512d8b"
    """Our decoder variant matching the checkpoint's decoder (facebookresearch/mae: 512 wide, 8 deep)."""
    img_size: int = 224
    """Image side the model is built for."""
    sensor: str = "s2_l1c"
    """Sensor key; its channel count must match the checkpoint's patch embedding."""


def import_mae(cfg: ImportMaeCommand) -> None:
    from s12mae.checkpoint_import import import_mae_cli

    import_mae_cli(cfg.checkpoint, Path(cfg.out), encoder=cfg.encoder, decoder=cfg.decoder, img_size=cfg.img_size,
                   sensor=cfg.sensor)


@dataclass
class DemoCommand:
    """Size of the demo."""

    out: str = "runs/demo"
    """Demo folder."""
    steps: int | None = None
    """Pretraining steps per method (``None``: the recipe's)."""
    num_samples: int | None = None
    """Simulated scenes (``None``: the recipe's)."""
    eval_steps: int | None = None
    """Head-training steps per run of the demo's table (``None``: 500)."""
    eval_scenes: int | None = None
    """Training scenes per downstream task; validation and test get a third as many each
    (``None``: 96)."""
    seeds: int = 3
    """Head seeds per table cell (and random-init encoders): the table shows mean +- std."""


def demo(cfg: DemoCommand) -> None:
    from s12mae.demo import run_demo

    run_demo(Path(cfg.out), steps=cfg.steps, num_samples=cfg.num_samples, eval_steps=cfg.eval_steps,
             eval_scenes=cfg.eval_scenes, seeds=cfg.seeds)
