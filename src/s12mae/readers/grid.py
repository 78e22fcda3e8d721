"""A raster grid (CRS, affine transform, size): the grid a sample is read onto and the grids of files.

Kept apart from :mod:`s12mae.readers.base` so that the warping (:mod:`s12mae.readers.warp`) and
windowing (:mod:`s12mae.readers.windows`) helpers can use it without importing the readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds

__all__ = ["Grid"]


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size (``width`` x ``height`` pixels)."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, ds: rasterio.io.DatasetReader) -> Grid:
        return cls(ds.crs, ds.transform, ds.width, ds.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in ``crs`` units."""
        return tuple(float(v) for v in array_bounds(self.height, self.width, self.transform))  # type: ignore[return-value]

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)

    def same_as(self, other: Grid, tol: float = 0.01) -> bool:
        """Same CRS and size, transforms equal to ``tol`` of a pixel."""
        if (self.width, self.height) != (other.width, other.height) or self.crs != other.crs:
            return False
        return self.transform.almost_equals(other.transform, precision=tol * math.sqrt(self.pixel_area))

    def at_gsd(self, gsd: float) -> Grid:
        """This grid resampled to ``gsd`` metres over the same bounds (projected, north-up grids only;
        geographic grids are returned unchanged: their native 10 m bands define the grid)."""
        t = self.transform
        if self.crs is None or not self.crs.is_projected or t.b or t.d:
            return self
        if abs(abs(t.a) - gsd) < 1e-6 * gsd and abs(abs(t.e) - gsd) < 1e-6 * gsd:
            return self
        left, bottom, right, top = self.bounds
        width, height = round((right - left) / gsd), round((top - bottom) / gsd)
        return Grid(self.crs, Affine(gsd, 0.0, left, 0.0, -gsd, top), width, height)

    def footprint_wgs84(self) -> list[float] | None:
        if self.crs is None:
            return None
        return [float(v) for v in transform_bounds(self.crs, "EPSG:4326", *self.bounds, densify_pts=21)]
