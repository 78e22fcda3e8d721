"""The ``encoder.safetensors`` file: weights plus the metadata that rebuilds and describes them.

A run's encoder file holds the encoder's state dict and, as safetensors string metadata, the
architecture (``encoder``, ``img_size``, ``in_chans``), the ``method``, the band ``stats`` it was
trained with, the ``sensors`` (band names in order, input units, DN scaling, nodata) and the run
``config`` (design note 18). Files written before the last three existed still load: the sensor
specs and the run folder's ``config.yaml`` fill the gaps, and :class:`EncoderInfo` says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from s12mae.files import atomic_path
from s12mae.models.vit import ENCODERS, ViTEncoder, build_encoder

__all__ = [
    "EncoderInfo",
    "SensorInfo",
    "check_inputs",
    "encoder_info",
    "encoder_stats",
    "load_encoder",
    "read_encoder",
    "save_encoder",
]

FORMAT = "s12mae-encoder-1"


def save_encoder(encoder: ViTEncoder, path: Path, cfg: Any) -> None:
    """Write the encoder's weights with the metadata needed to rebuild and describe it (atomically).

    Args:
        encoder: the encoder.
        path: target file.
        cfg: the run's config (``PretrainConfig``, or any object with ``model.encoder``,
            ``model.img_size``, ``method`` and optionally ``data.stats`` and ``to_dict()``).
    """
    meta = {
        "format": FORMAT,
        "encoder": cfg.model.encoder,
        "img_size": str(cfg.model.img_size),
        "in_chans": json.dumps(encoder.in_chans),
        "method": cfg.method,
        "stats": json.dumps(_stats_of(encoder, cfg)),  # the standardisation it was trained with
        "sensors": json.dumps(_sensors_of(encoder)),
    }
    if callable(getattr(cfg, "to_dict", None)):
        meta["config"] = json.dumps(cfg.to_dict())
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


def _sensors_of(encoder: ViTEncoder) -> dict[str, Any]:
    """Band names in model order, units and DN scaling of each patch embedding's sensor."""
    from s12mae.sensors import list_sensors

    known = set(list_sensors())
    return {key: _spec_entry(key) for key in encoder.in_chans if key in known}


def _spec_entry(key: str) -> dict[str, Any]:
    from s12mae.sensors import get_sensor

    spec = get_sensor(key)
    return {"bands": spec.band_names, "units": spec.units, "dn_scale": spec.dn_scale,
            "dn_offset": spec.dn_offset, "nodata": "nan" if math.isnan(spec.nodata) else spec.nodata,
            "description": spec.description}


def read_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata of an encoder file; a ``ValueError`` names the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: encoder file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: unreadable encoder file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an s12mae encoder file (metadata format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return weights, meta


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
    weights, meta = read_encoder(path)
    encoder = build_encoder(meta["encoder"], json.loads(meta["in_chans"]), int(meta["img_size"]))
    encoder.load_state_dict(weights)
    return encoder


@dataclass(frozen=True)
class SensorInfo:
    """What one patch embedding expects: the self-description of design note 18.

    Attributes:
        key: sensor key (``s2_l1c``).
        bands: canonical band names in input-channel order.
        units: physical units of the input before standardisation (``reflectance``, ``dB``).
        mean: per-band mean in ``units`` (standardised input = (x - mean) / std).
        std: per-band standard deviation in ``units``.
        dn_scale: ``units = DN * dn_scale + dn_offset`` for files holding digital numbers.
        dn_offset: see ``dn_scale``.
        nodata: file value marking missing pixels (NaN for float products).
        stats_source: where ``mean``/``std`` come from.
    """

    key: str
    bands: tuple[str, ...]
    units: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dn_scale: float = 1.0
    dn_offset: float = 0.0
    nodata: float = math.nan
    stats_source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "bands": list(self.bands), "units": self.units, "mean": list(self.mean),
                "std": list(self.std), "dn_scale": self.dn_scale, "dn_offset": self.dn_offset,
                "nodata": "nan" if math.isnan(self.nodata) else self.nodata, "stats_source": self.stats_source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensorInfo:
        return cls(d["key"], tuple(d["bands"]), d["units"], tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]), float(d.get("dn_scale", 1.0)), float(d.get("dn_offset", 0.0)),
                   float(d.get("nodata", "nan")), d.get("stats_source", ""))

    def standardise(self, units: torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` in ``units`` -> standardised model input."""
        mean = torch.tensor(self.mean, dtype=units.dtype, device=units.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=units.dtype, device=units.device).view(-1, 1, 1)
        return (units - mean) / std


@dataclass(frozen=True)
class EncoderInfo:
    """Everything an export says about an encoder.

    Attributes:
        source: the file it was read from.
        encoder: variant name (``vit_base_patch16``).
        img_size: image side the position table was built for.
        patch_size, embed_dim, depth, num_heads, mlp_ratio: the architecture.
        method: pretraining method (``mae``, ``auxmae``, ``mixmae``).
        sensors: one :class:`SensorInfo` per patch embedding, in the encoder's order.
        config: the run's resolved config (``None`` if neither the file nor the run folder has it).
        notes: what had to be filled in for older files (shown in model cards).
    """

    source: str
    encoder: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    method: str
    sensors: dict[str, SensorInfo]
    config: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def sensor(self, key: str | None) -> SensorInfo:
        """The info of sensor ``key`` (``None``: the first); an unknown key names the ones there are."""
        key = key or next(iter(self.sensors))
        if key not in self.sensors:
            raise ValueError(f"{self.source}: the encoder has no patch embedding for sensor {key!r}; "
                             f"it has {list(self.sensors)}")
        return self.sensors[key]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "encoder": self.encoder, "img_size": self.img_size,
                "patch_size": self.patch_size, "embed_dim": self.embed_dim, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio, "method": self.method,
                "sensors": {k: s.to_dict() for k, s in self.sensors.items()}, "config": self.config,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderInfo:
        return cls(d["source"], d["encoder"], int(d["img_size"]), int(d["patch_size"]), int(d["embed_dim"]),
                   int(d["depth"]), int(d["num_heads"]), float(d["mlp_ratio"]), d["method"],
                   {k: SensorInfo.from_dict(s) for k, s in d["sensors"].items()}, d.get("config"),
                   tuple(d.get("notes", ())))


def encoder_info(path: str | Path) -> EncoderInfo:
    """The self-description of an encoder file (see :class:`EncoderInfo`)."""
    path = Path(path)
    _, meta = read_encoder(path)
    in_chans: dict[str, int] = json.loads(meta["in_chans"])
    if meta["encoder"] not in ENCODERS:
        raise ValueError(f"{path}: unknown encoder variant {meta['encoder']!r}; known: {sorted(ENCODERS)}")
    arch = ENCODERS[meta["encoder"]]
    notes: list[str] = []
    recorded = json.loads(meta.get("sensors") or "{}")
    stats = json.loads(meta.get("stats") or "{}")
    sensors = {}
    for key, chans in in_chans.items():
        sensors[key] = _sensor_info(path, key, chans, recorded.get(key), stats.get(key), notes)
    config = json.loads(meta["config"]) if meta.get("config") else _run_config(path, notes)
    return EncoderInfo(str(path), meta["encoder"], int(meta["img_size"]), arch.patch_size, arch.embed_dim,
                       arch.depth, arch.num_heads, arch.mlp_ratio, meta.get("method", "unknown"), sensors,
                       config, tuple(notes))


def _sensor_info(path: Path, key: str, chans: int, recorded: dict[str, Any] | None, stats: dict[str, Any] | None,
                 notes: list[str]) -> SensorInfo:
    if recorded is None:
        try:
            recorded = _spec_entry(key)
        except (KeyError, ValueError):
            raise ValueError(f"{path}: sensor {key!r} has no recorded bands and no spec in this installation") from None
        notes.append(f"{key}: band names and units taken from this installation's sensor spec "
                     "(the file predates recording them)")
    bands = list(recorded["bands"])
    if len(bands) != chans:
        raise ValueError(f"{path}: patch embedding {key!r} takes {chans} channels but its bands are {bands}")
    if stats is None:
        from s12mae.sensors import get_sensor

        spec = get_sensor(key)
        stats = {"source": "shipped defaults (the file records none)",
                 "bands": {b: {"mean": s.mean, "std": s.std} for b, s in spec.stats.items()}}
        notes.append(f"{key}: statistics are the shipped defaults (the file records none)")
    missing = [b for b in bands if b not in stats["bands"]]
    if missing:
        raise ValueError(f"{path}: statistics of {key!r} lack band(s) {missing}")
    return SensorInfo(key, tuple(bands), recorded["units"], tuple(float(stats["bands"][b]["mean"]) for b in bands),
                      tuple(float(stats["bands"][b]["std"]) for b in bands), float(recorded.get("dn_scale", 1.0)),
                      float(recorded.get("dn_offset", 0.0)), float(recorded.get("nodata", "nan")),
                      stats.get("source", ""))


def _run_config(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The run folder's ``config.yaml`` beside an encoder file that does not carry its config."""
    file = path.parent / "config.yaml"
    if not file.is_file():
        notes.append("no run config: the file carries none and there is no config.yaml beside it")
        return None
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: not valid YAML ({err})") from None
    notes.append(f"run config read from {file.name} beside the encoder file")
    return config if isinstance(config, dict) else None


def check_inputs(info: SensorInfo, bands: list[str] | tuple[str, ...] | None = None, units: str | None = None,
                 where: str = "") -> None:
    """Stop with an error naming both lists if ``bands`` (in order) or ``units`` differ from the encoder's.

    Band names are compared after mapping layout names to canonical ones (``B1`` -> ``B01``).
    """
    from s12mae.readers import canonical_band

    what = f"{where}: " if where else ""
    if bands is not None:
        given = [canonical_band(str(b)) for b in bands]
        if given != list(info.bands):
            raise ValueError(f"{what}band mismatch: the input has bands {list(bands)}, but the {info.key} encoder "
                             f"expects {list(info.bands)} in this order")
    if units is not None and units != info.units:
        raise ValueError(f"{what}units mismatch: the input is in {units!r}, but the {info.key} encoder expects "
                         f"{info.units!r}")
