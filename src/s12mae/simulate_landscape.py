"""The simulated world's landscape: land-cover objects and what each sensor sees of them.

Layout (on the fine label grid, ``label_scale`` fine pixels per 10 m image pixel; sizes in image
pixels, all "(ours)", chosen to look like a European rural/peri-urban scene, not fitted to data):

* **Zones**: natural, agricultural and urban land from the argmax of three smooth random fields
  (correlation length 8-16 px) with a per-scene landscape mix, so scenes range from farmland to
  forest to town and most contain several zones.
* **Agricultural parcels**: a rotated brick grid of rectangles 12-32 px wide and 16-48 px long
  (several 8 px patches) with 1-fine-pixel grass margins. A parcel is cropland (55 %), a meadow
  (20 %, grassland) or bare soil (25 %), with one crop vigour, soil moisture and row pattern; as
  on one acquisition date, each crop parcel is at one of the scene's two crop stages and the
  soils share the scene's recent rain.
* **Natural land**: forest stands and open grassland from a thresholded smooth field (4-10 px).
* **Urban**: a rotated street grid (blocks 3-7 px, streets ~1 px) of built blocks (concrete,
  tile or dark roofs) and gardens; all of it is labelled urban.
* **Water**: lakes (compact blobs, 40 % of scenes) and a meandering river of 1.5-5 px width
  (50 % of scenes) that crosses whatever lies in its way.

What the sensors see is derived from the same per-object attributes:

* **S2 surface**: linear mixing of endmember spectra on the fine grid. Cropland, grassland and
  bare soil share ONE spectral family (green vegetation over dry or wet soil), so a single pixel
  cannot tell them apart; what separates them is texture and shape: a crop parcel is uniform with
  periodic row stripes (1.5-3 px period) inside straight edges, a meadow is patchy, a soil parcel
  is bare. Forest has crown texture (bright crowns, dark gaps). Turbid water (per water body) and
  wet dark soil come close in the visible bands. Urban is a high-contrast mosaic of roofs, asphalt
  and gardens, so single garden pixels look like grass.
* **S1 backscatter** (noise free, linear power): water is dark (wind-roughened per body), bare
  soil brightens with moisture (wet soil is bright where turbid water is dark), crops brighten in
  VH with vigour more than meadows do (volume scattering), forest is bright in VH, built blocks are
  very bright with a per-block double-bounce term, streets are dark.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = ["ENDMEMBERS", "Landscape", "landscape", "smooth_fields"]

# Endmembers of the S2 surface mixture (columns of the surface table in simulate.py).
ENDMEMBERS: tuple[str, ...] = (
    "water_clear", "water_turbid", "canopy", "green_veg", "soil", "wet_soil", "concrete", "roof_tile", "asphalt",
)
WATER, FOREST, CROP, GRASS, URBAN, SOIL = range(6)  # LAND_COVER_CLASSES order
_E = {name: i for i, name in enumerate(ENDMEMBERS)}
_TABLE = 64  # side of the per-object attribute tables (objects are indexed modulo this)


@dataclass
class Landscape:
    """One scene's land cover and its sensor-facing properties on the fine grid ``(Hf, Wf)``."""

    classes: np.ndarray
    """``(Hf, Wf)`` uint8 land-cover class (``LAND_COVER_CLASSES`` order)."""
    abundance: np.ndarray
    """``(E, Hf, Wf)`` float32 endmember fractions (sum <= 1; the rest is unlit shade)."""
    sigma0_db: np.ndarray
    """``(2, Hf, Wf)`` float32 noise-free VV, VH backscatter in dB."""


def smooth_fields(rng: np.random.Generator, count: int, size: int, sigma: float) -> np.ndarray:
    """``count`` zero-mean, unit-std periodic Gaussian random fields ``(count, size, size)``.

    White noise is drawn directly in the Fourier domain, and only where the Gaussian filter of
    standard deviation ``sigma`` pixels is not negligible, which keeps large grids cheap.
    """
    sigma = min(sigma, size / 6)
    f2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    gain = np.exp(-2 * np.pi**2 * sigma**2 * f2)
    support = gain > 1e-3
    support[0, 0] = False  # no DC: the mean is set by the caller
    m = int(support.sum())
    spectrum = np.zeros((count, *f2.shape), np.complex64)
    noise = rng.standard_normal((2, count, m))
    spectrum[:, support] = (noise[0] + 1j * noise[1]) * gain[support]
    fields = np.fft.irfft2(spectrum, s=(size, size))
    return (fields / (fields.std(axis=(1, 2), keepdims=True) + 1e-12)).astype(np.float32)


@cache
def _coords(size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine-pixel centres ``(y, x)`` in image pixels, each ``(Hf, Wf)``."""
    c = ((np.arange(size) + 0.5) / scale).astype(np.float32)
    return np.broadcast_to(c[:, None], (size, size)), np.broadcast_to(c[None, :], (size, size))


def _rotated(y: np.ndarray, x: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along ``(u)`` and across ``(v)`` a direction ``angle`` (radians)."""
    c, s = float(np.cos(angle)), float(np.sin(angle))  # Python floats keep float32 grids float32
    return x * c + y * s, -x * s + y * c


def _grid_cells(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, width: float, length: float,
                margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brick grid of ``width`` x ``length`` cells: cell id ``(Hf, Wf)`` in ``[0, 64**2)``,
    margin mask (within ``margin`` of a cell edge) and the coordinate along the cell (for rows)."""
    row_shift = rng.uniform(0, length, _TABLE).astype(np.float32)
    v0, u0 = float(rng.uniform(0, width)), float(rng.uniform(0, length))
    row = np.floor((v + v0) / width).astype(np.int64)
    along = u + u0 + row_shift[row % _TABLE]
    col = np.floor(along / length).astype(np.int64)
    edge = np.minimum(np.mod(v + v0, width), np.mod(along, length))
    return (row % _TABLE) * _TABLE + col % _TABLE, edge < margin, along


def _zones(rng: np.random.Generator, n: int, scale: int) -> np.ndarray:
    """``(Hf, Wf)`` zone index: 0 natural, 1 agricultural, 2 urban."""
    mix = np.log(rng.dirichlet((1.2, 1.6, 0.5)) + 1e-3)
    fields = smooth_fields(rng, 3, n, rng.uniform(8.0, 16.0) * scale)
    return (fields + 0.8 * mix[:, None, None]).argmax(axis=0)


def _agriculture(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, out: _Canvas, where: np.ndarray) -> None:
    """Parcels of cropland, meadow and bare soil with grass margins (see the module docstring)."""
    angle = rng.uniform(0, np.pi)
    u, v = _rotated(y, x, angle)
    width, length = float(rng.uniform(12, 32)), float(rng.uniform(16, 48))
    cell, margin, along = _grid_cells(rng, u, v, width, length, 0.25)
    n = _TABLE * _TABLE
    kind = rng.choice([CROP, GRASS, SOIL], n, p=[0.55, 0.2, 0.25])
    # One acquisition date: each parcel grows one of two crops of the scene (e.g. a winter and a
    # summer crop), each at its own growth stage, and the soils share the scene's recent rain.
    stages = rng.uniform(0.15, 0.95, 2)
    vigour = np.clip(stages[rng.integers(0, 2, n)] + rng.normal(0, 0.07, n), 0.05, 1.0)
    wet = np.clip(rng.uniform(0, 0.8) + rng.normal(0, 0.2, n), 0, 1)
    period, amp = rng.uniform(1.5, 3.0, n), rng.uniform(0.25, 0.6, n)
    across, residue = rng.random(n) < 0.5, rng.uniform(0.0, 0.12, n)
    patch = smooth_fields(rng, 1, y.shape[0], 1.5 * out.scale)[0]
    m = where & ~margin
    c = cell[m]
    k = kind[c]
    rows = np.where(across[c], v[m], along[m])
    stripe = 1 + amp[c] * np.cos(2 * np.pi * rows / period[c])
    veg = np.select([k == CROP, k == GRASS], [vigour[c] * stripe, 0.35 + 0.45 * vigour[c] + 0.15 * patch[m]],
                    residue[c])
    out.put(m, k, np.clip(veg, 0, 1), wet[c] * np.where(k == SOIL, 1.0, 0.4))
    # S1: crops gain VH with vigour (volume scattering) more than meadows; soil brightens with water.
    vv = np.select([k == CROP, k == GRASS], [-13 + 4 * veg, -12 + 2 * veg], -16 + 9 * wet[c])
    vh = np.select([k == CROP, k == GRASS], [-21 + 9 * veg, -20 + 3 * veg], -24 + 6 * wet[c])
    out.sigma0[0][m], out.sigma0[1][m] = vv, vh
    out.grass(where & margin, 0.6)


def _natural(rng: np.random.Generator, out: _Canvas, where: np.ndarray) -> None:
    """Forest stands with crown texture and open grassland."""
    n = where.shape[0]
    stands, crowns, meadow = smooth_fields(rng, 1, n, rng.uniform(4, 10) * out.scale)[0], \
        smooth_fields(rng, 1, n, 0.4 * out.scale)[0], smooth_fields(rng, 1, n, 1.5 * out.scale)[0]
    forest = where & (stands > np.quantile(stands, rng.uniform(0.2, 0.8)))
    crown = np.clip(0.8 + 0.25 * crowns[forest], 0.3, 1.2)
    out.classes[forest] = FOREST
    out.abundance[_E["canopy"]][forest] = crown
    out.sigma0[0][forest], out.sigma0[1][forest] = -7.5 + 4 * (crown - 0.8), -13 + 3 * (crown - 0.8)
    open_land = where & ~forest
    out.grass(open_land, np.clip(0.55 + 0.2 * meadow[open_land], 0.1, 1.0))


def _urban(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, out: _Canvas, where: np.ndarray) -> None:
    """Street grid of built blocks (concrete, tile or dark roofs) and gardens, all labelled urban."""
    u, v = _rotated(y, x, rng.uniform(0, np.pi / 2))
    cell, street, _ = _grid_cells(rng, u, v, *(float(a) for a in rng.uniform((3, 3, 0.6), (7, 7, 1.0))))
    n = _TABLE * _TABLE
    roof = rng.choice([_E["concrete"], _E["roof_tile"], _E["asphalt"]], n, p=[0.45, 0.35, 0.2])
    garden, bounce = rng.random(n) < 0.2, rng.uniform(0, 10, n)
    out.classes[where] = URBAN
    built = where & ~street & ~garden[cell]
    out.abundance[roof[cell[built]], np.nonzero(built)[0], np.nonzero(built)[1]] = 1.0
    out.sigma0[0][built], out.sigma0[1][built] = -8 + bounce[cell[built]], -14 + 0.4 * bounce[cell[built]]
    roads = where & street
    out.abundance[_E["asphalt"]][roads] = 1.0
    out.sigma0[0][roads], out.sigma0[1][roads] = -15, -22
    out.grass(where & ~street & garden[cell], 0.7, label=URBAN)


def _water(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, out: _Canvas) -> None:
    """Lakes (compact blobs) and a meandering river with a turbidity and wind per water body."""
    n, s = y.shape[0], out.scale
    bodies = []
    if rng.random() < 0.4:
        field = smooth_fields(rng, 1, n, rng.uniform(6, 12) * s)[0]
        bodies.append(field > np.quantile(field, 1 - rng.uniform(0.03, 0.15)))
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        u, v = _rotated(y, x, angle)
        t = np.linspace(0, 1, 4 * n, endpoint=False)  # meander as a 1-D periodic smooth curve
        bend = np.fft.irfft(np.r_[0, rng.standard_normal(3) + 1j * rng.standard_normal(3)], 4 * n)
        bend *= rng.uniform(3, 10) / (np.abs(bend).max() + 1e-9)
        pos = np.interp(np.mod(u / (n / s) / 1.5, 1.0), t, bend)
        half = rng.uniform(0.75, 2.5) * (1 + 0.3 * np.cos(2 * np.pi * u / rng.uniform(20, 60)))
        centre = (np.cos(angle) - np.sin(angle)) * n / s / 2 + rng.uniform(-0.35, 0.35) * n / s
        bodies.append(np.abs(v - centre - pos) < half)
    for body in bodies:
        turbid = np.clip(rng.beta(1.2, 1.5) + 0.1 * rng.standard_normal(), 0, 1)
        out.classes[body] = WATER
        out.abundance[:, body] = 0.0
        out.abundance[_E["water_clear"]][body], out.abundance[_E["water_turbid"]][body] = 1 - turbid, turbid
        out.sigma0[0][body] = rng.uniform(-25, -17)
        out.sigma0[1][body] = out.sigma0[0][body] - 7


class _Canvas:
    """Fine-grid layers being painted: classes, endmember abundances, VV/VH in dB."""

    def __init__(self, n: int, scale: int) -> None:
        self.scale = scale
        self.classes = np.zeros((n, n), np.uint8)
        self.abundance = np.zeros((len(ENDMEMBERS), n, n), np.float32)
        self.sigma0 = np.zeros((2, n, n), np.float32)

    def put(self, where: np.ndarray, cls: np.ndarray | int, veg: np.ndarray, wet: np.ndarray | float) -> None:
        """Vegetation fraction ``veg`` over soil of moisture ``wet`` (cropland/grassland/soil family)."""
        self.classes[where] = cls
        self.abundance[:, where] = 0.0
        self.abundance[_E["green_veg"]][where] = veg
        self.abundance[_E["soil"]][where] = (1 - veg) * (1 - wet)
        self.abundance[_E["wet_soil"]][where] = (1 - veg) * wet

    def grass(self, where: np.ndarray, veg: np.ndarray | float, label: int = GRASS) -> None:
        """Grass (margins, meadows, gardens) with S1 of a meadow."""
        veg = np.broadcast_to(veg, where.shape)[where] if np.ndim(veg) == 2 else veg
        self.put(where, label, veg, 0.1)
        self.sigma0[0][where], self.sigma0[1][where] = -12 + 2 * veg, -20 + 3 * veg


def landscape(rng: np.random.Generator, img_size: int, scale: int) -> Landscape:
    """Draw one scene's landscape (see the module docstring) on a ``img_size * scale`` grid."""
    n = img_size * scale
    y, x = _coords(n, scale)
    out = _Canvas(n, scale)
    zone = _zones(rng, n, scale)
    _natural(rng, out, zone == 0)
    _agriculture(rng, y, x, out, zone == 1)
    _urban(rng, y, x, out, zone == 2)
    _water(rng, y, x, out)
    return Landscape(out.classes, out.abundance, out.sigma0)
