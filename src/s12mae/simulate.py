"""Built-in SIMULATED Sentinel-1/Sentinel-2 dataset for the demo and the tests.

Nothing here is real satellite data. Scenes come from a deliberately simple physical model so the
pipeline can run and be tested end to end without downloads, with structure that a pretrained
encoder can learn and that the downstream labels depend on:

* **One landscape drives everything** (:mod:`s12mae.simulate_landscape`): land-cover objects on
  a grid ``label_scale`` times finer than the 10 m image grid (so image pixels are mixed pixels),
  most of them larger than the demo's 8 px patch: agricultural parcels with straight edges and
  crop rows, forest stands with crown texture, street grids, lakes and meandering rivers. Each
  object's attributes (crop stage, soil moisture, water turbidity and wind, roof material,
  double bounce) set both what S2 and what S1 see.
* **Sentinel-2 L1C**: linear mixing of endmember spectra, per-pixel variation, a toy atmosphere,
  soft-edged clouds and their shadows (cast with one sun direction per scene). Cropland,
  grassland and bare soil share one spectral family, so a single S2 pixel hardly separates them;
  parcel shape, row texture and S1 do.
* **Sentinel-1 GRD**: the landscape's VV/VH backscatter mixed in linear power, a per-scene
  calibration offset, gamma speckle, an optional S1-to-S2 misalignment; clouds play no part.
* **Labels** come from the same land-cover map: ``water`` (majority class per image pixel, the
  Sen1Floods11-like task), ``landcover_presence`` (BigEarthNet-like multi-label), ``landcover_hr``
  (classes on the fine grid, the 4x super-resolution segmentation) and ``cloud``.

Every scene is a deterministic function of ``(seed, index)`` only, and the landscape, S2
acquisition, clouds, S1 acquisition and misalignment each draw from their own child generator,
so changing e.g. the cloud settings leaves S1 unchanged and any subset of scenes can be
generated independently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from s12mae.files import atomic_dir
from s12mae.sensors import get_sensor
from s12mae.simulate_landscape import ENDMEMBERS, Landscape, landscape, smooth_fields

__all__ = [
    "LAND_COVER_CLASSES",
    "SimulationConfig",
    "load_simulated",
    "simulate",
    "simulate_scene",
    "simulated_samples",
    "write_simulated",
]

FORMAT_VERSION = 1
LAND_COVER_CLASSES: tuple[str, ...] = ("water", "forest", "cropland", "grassland", "urban", "bare_soil")

# Surface reflectance of the landscape's endmembers (see s12mae.simulate_landscape.ENDMEMBERS) at
# the S2 band centres, roughly approximating typical library spectra (USGS splib07 / ECOSTRESS:
# clear and sediment-laden inland water, broadleaf canopy, green crop/grass, dry loam, the same
# loam wet, concrete, red clay tiles, asphalt); "cloud" is a thick water cloud's TOA reflectance
# relative to its VNIR brightness; "gas_t" is a two-way gas transmittance (ozone in B03, water
# vapour in B09, saturated water vapour in the B10 cirrus band, which hides the surface under
# clear sky). Values are "(ours)".
#        w_clear w_turb canopy g_veg  soil   wet   concr  tile   asph   cloud  gas_t
_S2_TABLE: dict[str, tuple[float, ...]] = {
    "B01": (0.050, 0.060, 0.020, 0.030, 0.070, 0.035, 0.150, 0.060, 0.050, 1.00, 0.98),
    "B02": (0.055, 0.070, 0.030, 0.040, 0.090, 0.045, 0.170, 0.070, 0.055, 1.00, 0.98),
    "B03": (0.060, 0.100, 0.060, 0.090, 0.130, 0.065, 0.190, 0.090, 0.060, 1.00, 0.93),
    "B04": (0.035, 0.090, 0.030, 0.050, 0.180, 0.090, 0.210, 0.200, 0.065, 1.00, 0.95),
    "B05": (0.025, 0.080, 0.100, 0.150, 0.210, 0.100, 0.220, 0.250, 0.070, 0.99, 0.97),
    "B06": (0.015, 0.050, 0.250, 0.300, 0.230, 0.110, 0.230, 0.280, 0.070, 0.98, 0.97),
    "B07": (0.012, 0.040, 0.310, 0.380, 0.250, 0.115, 0.240, 0.300, 0.075, 0.98, 0.96),
    "B08": (0.010, 0.035, 0.330, 0.420, 0.270, 0.120, 0.250, 0.310, 0.075, 0.97, 0.96),
    "B8A": (0.008, 0.030, 0.340, 0.440, 0.280, 0.125, 0.250, 0.320, 0.080, 0.96, 0.97),
    "B09": (0.005, 0.020, 0.330, 0.430, 0.290, 0.120, 0.250, 0.320, 0.080, 0.80, 0.35),
    "B10": (0.003, 0.010, 0.080, 0.100, 0.320, 0.100, 0.220, 0.280, 0.080, 0.55, 0.005),
    "B11": (0.004, 0.010, 0.160, 0.240, 0.370, 0.120, 0.280, 0.360, 0.090, 0.65, 0.95),
    "B12": (0.002, 0.005, 0.070, 0.120, 0.340, 0.090, 0.260, 0.300, 0.090, 0.45, 0.90),
}


@dataclass
class SimulationConfig:
    """Settings of the simulated dataset."""

    num_samples: int = 256
    """Number of scenes."""
    img_size: int = 64
    """Side of the S2/S1 grid in pixels (10 m)."""
    seed: int = 0
    """Dataset seed; scene ``i`` depends only on ``(seed, i)``."""
    label_scale: int = 4
    """The land-cover label map is ``label_scale`` times finer than the image grid."""
    cloud_probability: float = 0.3
    """Chance that a scene has clouds."""
    max_cloud_cover: float = 0.5
    """Largest cloud-covered fraction of a cloudy scene."""
    misalignment_px: float = 0.0
    """Largest S1-to-S2 shift per axis in image pixels (applied on the fine grid, so sub-pixel)."""
    enl: float = 4.4
    """Equivalent number of looks of the S1 gamma speckle."""
    pixel_variation: float = 0.05
    """Relative per-pixel, per-band variation of the S2 surface reflectance."""
    s1_fraction: float = 1.0
    """Fraction of scenes with a co-located S1 partner; the others have S2 only (their S1 is NaN
    and ``available.s1_grd`` is 0), like S2 archives where no S1 lies within 7 days."""

    def __post_init__(self) -> None:
        for name, low in (("num_samples", 1), ("img_size", 4), ("seed", 0), ("label_scale", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"SimulationConfig.{name} must be an integer >= {low}, got {value!r}")
        for name, low, high in (
            ("cloud_probability", 0.0, 1.0),
            ("max_cloud_cover", 0.0, 1.0),
            ("misalignment_px", 0.0, float(self.img_size)),
            ("enl", 0.5, 1000.0),
            ("pixel_variation", 0.0, 1.0),
            ("s1_fraction", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ValueError(f"SimulationConfig.{name} must be in [{low}, {high}], got {value!r}")


@cache
def _s2_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surface ``(13, E)``, cloud ``(13,)``, gas transmittance ``(13,)``, wavelength in um ``(13,)``."""
    bands = get_sensor("s2_l1c").bands
    table = np.array([_S2_TABLE[b.name] for b in bands])
    wavelength_um = np.array([b.wavelength_nm for b in bands]) / 1000.0
    e = len(ENDMEMBERS)
    return table[:, :e], table[:, e], table[:, e + 1], wavelength_um


@cache
def _block_index(img_size: int, label_scale: int) -> np.ndarray:
    """Image-pixel index of every fine pixel, ``(Hf, Wf)``, for block counting."""
    block = np.arange(img_size * label_scale) // label_scale
    return block[:, None] * img_size + block[None, :]


def _abundances(fine_classes: np.ndarray, img_size: int, label_scale: int) -> np.ndarray:
    """Fine class map ``(Hf, Wf)`` -> per-class area fraction of every image pixel ``(6, H, W)``."""
    k = len(LAND_COVER_CLASSES)
    idx = _block_index(img_size, label_scale) * k + fine_classes
    counts = np.bincount(idx.ravel(), minlength=img_size * img_size * k)
    return counts.reshape(img_size, img_size, k).transpose(2, 0, 1) / label_scale**2


def _block_mean(fine: np.ndarray, label_scale: int) -> np.ndarray:
    """``(C, Hf, Wf)`` -> mean over each image pixel's ``label_scale**2`` fine pixels ``(C, H, W)``."""
    c, hf, wf = fine.shape
    s = label_scale
    return fine.reshape(c, hf // s, s, wf // s, s).mean(axis=(2, 4))


def _clouds(rng: np.random.Generator, cfg: SimulationConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """Cloud opacity ``(H, W)``, shadow opacity ``(H, W)`` and cloud VNIR brightness."""
    h = cfg.img_size
    if rng.random() >= cfg.cloud_probability or cfg.max_cloud_cover == 0:
        return np.zeros((h, h)), np.zeros((h, h)), 0.0
    field = smooth_fields(rng, 1, h, rng.uniform(1.5, 6.0))[0].astype(np.float64)
    cover = cfg.max_cloud_cover * rng.uniform(0.1, 1.0)
    threshold = np.quantile(field, 1.0 - cover)
    opacity = 1.0 / (1.0 + np.exp(-(field - threshold) / 0.1))  # soft edges; > 0.5 covers `cover`
    angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 0.15 * h + 2.0)
    offset = (round(distance * np.sin(angle)), round(distance * np.cos(angle)))
    shadow = np.roll(opacity, offset, axis=(0, 1))  # fields are periodic, so rolling is seamless
    return opacity, shadow, rng.uniform(0.4, 0.8)


def _s2(land: Landscape, rng: np.random.Generator, rng_cloud: np.random.Generator,
        cfg: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """S2 L1C DN ``(13, H, W)`` int16 and cloud opacity ``(H, W)`` of a landscape."""
    surface_table, cloud_shape, gas_t, wl = _s2_tables()
    abundance = _block_mean(land.abundance, cfg.label_scale)  # (E, H, W) mixed pixels
    surface = np.einsum("be,ehw->bhw", surface_table, abundance)
    surface *= np.exp(cfg.pixel_variation * rng.standard_normal(surface.shape))
    tau_aerosol = rng.uniform(0.05, 0.3) * (wl / 0.55) ** -1.3
    tau_rayleigh = 0.0088 * wl**-4.05
    path = 0.4 * tau_rayleigh + 0.15 * tau_aerosol  # haze: largest in the blue
    transmittance = np.exp(-(tau_rayleigh + tau_aerosol))
    illumination = rng.uniform(0.85, 1.15)
    opacity, shadow, brightness = _clouds(rng_cloud, cfg)
    lit = illumination * (1.0 - rng_cloud.uniform(0.4, 0.7) * shadow)  # shadow keeps 30-60 %
    clear = gas_t[:, None, None] * (path[:, None, None] + transmittance[:, None, None] * surface * lit)
    toa = (1.0 - opacity) * clear + opacity * (brightness * cloud_shape)[:, None, None]
    return np.clip(np.rint(toa * 10000.0), 1, 32767).astype(np.int16), opacity


def _s1(land: Landscape, rng: np.random.Generator, rng_shift: np.random.Generator,
        cfg: SimulationConfig) -> np.ndarray:
    """S1 GRD VV, VH sigma0 in dB ``(2, H, W)`` float32: mixed linear power, calibration, speckle."""
    s = cfg.label_scale
    power = 10.0 ** (land.sigma0_db.astype(np.float64) / 10.0)  # (2, Hf, Wf)
    shift = np.rint(rng_shift.uniform(-1.0, 1.0, 2) * cfg.misalignment_px * s).astype(int)
    if shift.any():
        power = np.roll(power, tuple(shift), axis=(1, 2))
    power = _block_mean(power, s) * 10.0 ** (rng.normal(0.0, 0.5, (2, 1, 1)) / 10.0)  # incidence, calibration
    power *= rng.gamma(cfg.enl, 1.0 / cfg.enl, power.shape)
    return (10.0 * np.log10(power)).astype(np.float32)


def simulate_scene(index: int, cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """Simulate scene ``index`` of the dataset described by ``cfg``.

    Args:
        index: scene number; the result depends only on ``(cfg.seed, index)`` and ``cfg``.
        cfg: dataset settings.

    Raises:
        ValueError: ``index`` is negative.

    Returns:
        ``s2_l1c`` ``(13, H, W)`` int16 TOA reflectance x 10000 in [1, 32767];
        ``s1_grd`` ``(2, H, W)`` float32 VV, VH sigma0 in dB; ``cloud`` ``(H, W)`` uint8
        (opacity > 0.5); ``water`` ``(H, W)`` uint8 (majority class is water);
        ``landcover_presence`` ``(6,)`` uint8 (class covers >= 1 % of the scene);
        ``landcover_hr`` ``(H * label_scale, W * label_scale)`` uint8 class indices;
        ``available.s1_grd`` uint8 scalar, 0 for an S2-only scene (then ``s1_grd`` is NaN).
    """
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    streams = np.random.default_rng([cfg.seed, index]).spawn(6)
    rng_cover, rng_s2, rng_cloud, rng_s1, rng_shift, rng_pair = streams
    land = landscape(rng_cover, cfg.img_size, cfg.label_scale)
    s2, opacity = _s2(land, rng_s2, rng_cloud, cfg)
    s1 = _s1(land, rng_s1, rng_shift, cfg)
    has_s1 = bool(rng_pair.random() < cfg.s1_fraction)
    if not has_s1:
        s1[:] = np.nan
    fractions = _abundances(land.classes, cfg.img_size, cfg.label_scale)  # (6, H, W)
    counts = fractions.sum(axis=(1, 2))
    return {
        "s2_l1c": s2,
        "s1_grd": s1,
        "cloud": (opacity > 0.5).astype(np.uint8),
        "water": (fractions.argmax(axis=0) == LAND_COVER_CLASSES.index("water")).astype(np.uint8),
        "landcover_presence": (counts / counts.sum() >= 0.01).astype(np.uint8),
        "landcover_hr": land.classes,
        "available.s1_grd": np.uint8(has_s1),
    }


def simulate(cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """All ``cfg.num_samples`` scenes, each key stacked along a leading ``N`` axis."""
    scenes = [simulate_scene(i, cfg) for i in range(cfg.num_samples)]
    return {key: np.stack([scene[key] for scene in scenes]) for key in scenes[0]}


def write_simulated(out_dir: str | Path, cfg: SimulationConfig, overwrite: bool = False) -> Path:
    """Write the dataset as one ``<key>.npy`` per array plus ``meta.json``, atomically.

    Scenes are streamed into memory-mapped files in a temporary sibling folder that is renamed to
    ``out_dir`` at the end, so a failure leaves nothing behind.

    Args:
        out_dir: target folder.
        cfg: dataset settings.
        overwrite: replace ``out_dir`` if it exists.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    with atomic_dir(out_dir, replace=overwrite) as tmp:
        first = simulate_scene(0, cfg)
        files = {
            key: np.lib.format.open_memmap(tmp / f"{key}.npy", "w+", a.dtype, (cfg.num_samples, *a.shape))
            for key, a in first.items()
        }
        for i in range(cfg.num_samples):
            for key, a in (first if i == 0 else simulate_scene(i, cfg)).items():
                files[key][i] = a
        meta = {
            "format_version": FORMAT_VERSION,
            "simulated": True,
            "config": asdict(cfg),
            "classes": list(LAND_COVER_CLASSES),
            "arrays": {k: {"shape": list(m.shape), "dtype": str(m.dtype)} for k, m in files.items()},
        }
        for m in files.values():
            m.flush()
        del files
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


def load_simulated(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Memory-map a folder written by :func:`write_simulated`.

    Returns:
        ``(arrays, meta)``: read-only memory-mapped arrays keyed as in :func:`simulate_scene`,
        and the parsed ``meta.json``.

    Raises:
        ValueError: the folder, ``meta.json`` or an array file is missing or corrupt, or the
            arrays disagree with ``meta.json`` or with each other on the number of scenes.
    """
    path = Path(path)
    meta_file = path / "meta.json"
    if not path.is_dir():
        raise ValueError(f"{path}: simulated dataset folder not found")
    try:
        meta = json.loads(meta_file.read_text())
        version, specs = meta["format_version"], dict(meta["arrays"])
    except FileNotFoundError:
        raise ValueError(f"{meta_file}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_file}: not a valid simulated-dataset meta file ({err!r})") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format version {version!r}, expected {FORMAT_VERSION}")
    arrays: dict[str, np.ndarray] = {}
    for key, spec in specs.items():
        file = path / f"{key}.npy"
        if not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", key) or not isinstance(spec, dict):  # no paths
            raise ValueError(f"{meta_file}: bad entry {key!r}: {spec!r} in 'arrays'")
        try:
            arrays[key] = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise ValueError(f"{file}: file not found") from None
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{file}: not a readable .npy file ({err})") from None
        if list(arrays[key].shape) != spec.get("shape") or str(arrays[key].dtype) != spec.get("dtype"):
            raise ValueError(
                f"{file}: array is {arrays[key].shape} {arrays[key].dtype}, meta.json says {spec}"
            )
    sizes = {key: a.shape[0] if a.ndim else None for key, a in arrays.items()}
    if not sizes or None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: arrays disagree on the number of scenes: {sizes}")
    return arrays, meta


class _SimulatedSamples(Sequence):
    """A folder written by :func:`write_simulated` as reader samples (S1 only where available)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.arrays, self.info = load_simulated(path)

    def __len__(self) -> int:
        return len(self.arrays["s2_l1c"])

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        a = self.arrays
        s2 = np.array(a["s2_l1c"][i])
        sample: dict[str, Any] = {"id": f"sim-{i:06d}", "s2_l1c": s2, "valid.s2_l1c": s2 != 0,
                                  "meta": {"source": "simulated", "scene": i, "crs": None, "times": {}}}
        if "s1_grd" in a and bool(a.get("available.s1_grd", np.ones(len(self), np.uint8))[i]):
            s1 = np.array(a["s1_grd"][i])
            sample["s1_grd"], sample["valid.s1_grd"] = s1, np.isfinite(s1)
            sample["meta"]["gap_hours"] = 0.0
        for key in ("cloud", "water", "landcover_presence", "landcover_hr"):
            if key in a:
                sample[f"label.{key}"] = np.array(a[key][i])
        return sample


def simulated_samples(path: str | Path) -> Sequence[dict[str, Any]]:
    """Reader-format samples (see :mod:`s12mae.readers.base`) of a :func:`write_simulated` folder:
    what ``s12mae shards --layout simulated`` and ``s12mae stats`` read."""
    return _SimulatedSamples(path)
