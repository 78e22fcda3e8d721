"""Sensor specifications and per-band normalisation.

Sensors are data, not code paths: every modality the models see is described by a
:class:`SensorSpec` read from ``resources/sensors.yaml``, and its per-band statistics come from
``resources/stats.json`` or from a file written by ``s12mae stats``. Model code never branches
on a sensor name; it asks the spec for channel counts, band names and normalisation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from s12mae.files import atomic_write

if TYPE_CHECKING:  # torch is imported where tensors are handled, so pairing and data tools run without it
    import torch

__all__ = [
    "Band",
    "BandStats",
    "SensorSpec",
    "get_sensor",
    "layout_sensors",
    "list_sensors",
    "load_stats",
    "sensors_of_family",
    "write_stats",
]


@dataclass(frozen=True)
class Band:
    """One spectral or polarisation channel.

    Attributes:
        name: canonical band name (``B01`` ... ``B12``, ``B8A``, ``VV``, ``VH``, ``DEM``).
        wavelength_nm: centre wavelength in nanometres (``None`` where meaningless).
        resolution_m: native ground sampling distance in metres.
    """

    name: str
    wavelength_nm: float | None
    resolution_m: float


@dataclass(frozen=True)
class BandStats:
    """Standardisation statistics of one band, in model units."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"band statistics need a finite mean and a positive std, got {self}")


@dataclass(frozen=True)
class SensorSpec:
    """Everything the toolkit needs to know about one input modality.

    Attributes:
        key: sensor key used in sample dicts and module dicts (``s2_l1c``, ``s1_grd``, ...).
        description: one line for humans.
        units: physical units of model inputs before standardisation.
        dn_scale: model units = DN * dn_scale + dn_offset.
        dn_offset: see ``dn_scale``.
        nodata: file value that marks missing pixels (``nan`` for float products).
        file_dtype: dtype the sensor is stored in (shards, simulated data).
        gsd_m: ground sampling distance of the grid the model sees, in metres.
        bands: the channels, in model order.
        display: ``{"bands": [r, g, b], "low": x, "high": y}`` for pictures, in model units.
        stats: per-band standardisation statistics keyed by band name.
        family: instrument family (``s2``, ``s1``, ``dem``, ...): pairing pairs across families,
            MixMAE weights the ``s1`` family by lambda.
        baseline_offset: files of processing baseline >= 04.00 carry +1000 DN (Sentinel-2).
        layout_names: ``{layout: folder, product or file-name token}`` for reader layouts.
    """

    key: str
    description: str
    units: str
    dn_scale: float
    dn_offset: float
    nodata: float
    file_dtype: str
    gsd_m: float
    bands: tuple[Band, ...]
    display: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, BandStats] = field(default_factory=dict)
    family: str = ""
    baseline_offset: bool = False
    layout_names: dict[str, str] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band_index(self, names: list[str]) -> list[int]:
        """Indices of ``names`` in this spec's band order; unknown names raise ``KeyError``."""
        lookup = {n: i for i, n in enumerate(self.band_names)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise KeyError(f"sensor {self.key!r} has no band(s) {missing}; it has {self.band_names}")
        return [lookup[n] for n in names]

    def with_stats(self, stats: dict[str, BandStats]) -> SensorSpec:
        """A copy of this spec whose statistics are ``stats`` (must cover every band)."""
        missing = [b for b in self.band_names if b not in stats]
        if missing:
            raise ValueError(f"statistics for sensor {self.key!r} lack band(s) {missing}")
        return SensorSpec(**{**self.__dict__, "stats": {b: stats[b] for b in self.band_names}})

    def _stat_tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.stats:
            raise ValueError(f"sensor {self.key!r} has no band statistics loaded")
        import torch

        mean = torch.tensor([self.stats[b].mean for b in self.band_names], dtype=x.dtype, device=x.device)
        std = torch.tensor([self.stats[b].std for b in self.band_names], dtype=x.dtype, device=x.device)
        return mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def to_units(self, dn: torch.Tensor) -> torch.Tensor:
        """File values (``(..., C, H, W)``) to physical units; nodata becomes NaN."""
        x = dn.float()
        if not math.isnan(self.nodata):
            import torch

            x = torch.where(dn == self.nodata, torch.nan, x)
        return x * self.dn_scale + self.dn_offset

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units ``(..., C, H, W)`` to standardised model inputs."""
        self._check_channels(x)
        mean, std = self._stat_tensors(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        self._check_channels(x)
        mean, std = self._stat_tensors(x)
        return x * std + mean

    def to_display(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ``(C, H, W)`` to an RGB picture ``(H, W, 3)`` in [0, 1]."""
        idx = self.band_index(list(self.display["bands"]))
        units = self.denormalize(x)[idx]
        lo, hi = float(self.display["low"]), float(self.display["high"])
        rgb = ((units - lo) / (hi - lo)).clamp(0, 1).nan_to_num(0.0)
        return rgb.permute(1, 2, 0)

    def _check_channels(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or x.shape[-3] != self.num_channels:
            raise ValueError(
                f"sensor {self.key!r} expects {self.num_channels} channels ({self.band_names}) "
                f"in dim -3, got a tensor of shape {tuple(x.shape)}"
            )


def _spec_from_dict(key: str, raw: dict[str, Any]) -> SensorSpec:
    bands = tuple(Band(b["name"], b.get("wavelength_nm"), float(b["resolution_m"])) for b in raw["bands"])
    nodata = raw.get("nodata", "nan")
    return SensorSpec(
        key=key,
        description=raw["description"],
        units=raw["units"],
        dn_scale=float(raw.get("dn_scale", 1.0)),
        dn_offset=float(raw.get("dn_offset", 0.0)),
        nodata=float(nodata),
        file_dtype=raw.get("file_dtype", "float32"),
        gsd_m=float(raw.get("gsd_m", 10)),
        bands=bands,
        display=dict(raw.get("display", {})),
        family=str(raw.get("family", key)),
        baseline_offset=bool(raw.get("baseline_offset", False)),
        layout_names=dict(raw.get("layout_names", {})),
    )


@cache
def _builtin_specs() -> dict[str, SensorSpec]:
    text = resources.files("s12mae.resources").joinpath("sensors.yaml").read_text()
    return {k: _spec_from_dict(k, v) for k, v in yaml.safe_load(text).items()}


def _default_stats_path() -> Path:
    return Path(str(resources.files("s12mae.resources").joinpath("stats.json")))


def load_stats(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, BandStats]]:
    """Read a statistics file (``{sensor: {"bands": {band: {"mean", "std", ...}}}}``).

    Files are parsed once and cached by (resolved path, modification time, size), so asking for a
    sensor spec per sample costs no I/O; a rewritten file is read again.

    Args:
        path: file written by ``s12mae stats``; ``None`` reads the shipped defaults.

    Raises:
        ValueError: the file is missing, not JSON, or lacks ``mean``/``std`` entries.
    """
    path = Path(path) if path is not None else _default_stats_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{path}: statistics file not found") from None
    return dict(_load_stats_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, str(path)))


@lru_cache(maxsize=64)
def _load_stats_cached(resolved: str, mtime_ns: int, size: int, shown: str) -> dict[str, dict[str, BandStats]]:
    path = Path(shown)
    try:
        raw = json.loads(path.read_text())
        return {
            sensor: {b: BandStats(float(v["mean"]), float(v["std"])) for b, v in entry["bands"].items()}
            for sensor, entry in raw.items()
            if not sensor.startswith("_")
        }
    except FileNotFoundError:
        raise ValueError(f"{path}: statistics file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid statistics file ({err})") from None


def write_stats(path: str | os.PathLike[str], entries: dict[str, dict[str, Any]]) -> None:
    """Write (or update) a statistics file atomically.

    Args:
        path: target file; sensors already in it that ``entries`` does not name are kept.
        entries: ``{sensor: {"source": str, "bands": {band: {"mean", "std", ...}}}}``.
    """
    path = Path(path)
    merged: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    merged.update(entries)
    atomic_write(path, json.dumps(merged, indent=1))


def sensors_of_family(family: str) -> list[str]:
    """Keys of the built-in sensors of one instrument family (``s2``, ``s1``, ``dem``), in spec order."""
    return [k for k, spec in _builtin_specs().items() if spec.family == family]


def layout_sensors(layout: str) -> dict[str, str]:
    """``{name: sensor key}`` of the sensors a reader layout stores, in the layout's preferred order.

    ``name`` is the folder, product or file-name token of ``layout_names`` in ``sensors.yaml``.
    """
    out = {spec.layout_names[layout]: k for k, spec in _builtin_specs().items() if layout in spec.layout_names}
    if not out:
        raise KeyError(f"no sensor names a {layout!r} layout in sensors.yaml")
    return out


def list_sensors() -> list[str]:
    """Keys of the built-in sensor specs."""
    return list(_builtin_specs())


def get_sensor(key: str, stats: str | os.PathLike[str] | None = None) -> SensorSpec:
    """The spec of sensor ``key`` with statistics from ``stats`` (default: shipped file).

    A user statistics file only needs to cover the sensors it names; the others fall back to the
    shipped defaults.
    """
    specs = _builtin_specs()
    if key not in specs:
        raise KeyError(f"unknown sensor {key!r}; known sensors: {sorted(specs)}")
    table = load_stats(None)
    if stats is not None:
        table.update(load_stats(stats))
    if key not in table:
        raise ValueError(f"no statistics for sensor {key!r}; run `s12mae stats` to compute them")
    return specs[key].with_stats(table[key])
