"""Warping bands onto a sample's grid: one function for every reader, whole files and windows alike.

:func:`warp` resamples float bands (NaN = nodata) from the grid they were read on to the sample
grid with :func:`rasterio.warp.reproject` (bilinear for reflectance and dB, nearest for labels);
pixels outside the source stay NaN. Grids without a CRS (a layout's local frame, see
:meth:`s12mae.readers.base.RasterReader.file_grid`) are resampled in that frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import reproject, transform_bounds

from s12mae.readers.grid import Grid

__all__ = ["resample_local", "warp"]


def warp(x: np.ndarray, src: Grid, dst: Grid, resampling: Resampling, path: Path) -> np.ndarray:
    """Float band(s) ``x`` (``(H, W)`` or ``(C, H, W)``, NaN = nodata) on ``src`` to ``dst``; pixels
    outside ``src`` become NaN."""
    if src.same_as(dst):
        return x
    if src.crs is None and dst.crs is None:
        return resample_local(x, src, dst, resampling)
    if src.crs is None or dst.crs is None:
        which = path if src.crs is None else "the sample grid"
        raise ValueError(
            f"{path}: {which} has no CRS, so it cannot be warped onto the sample grid "
            f"({dst.crs}, {dst.width}x{dst.height}); either every file of a sample is "
            "georeferenced or none is"
        )
    left, bottom, right, top = transform_bounds(src.crs, dst.crs, *src.bounds, densify_pts=21)
    d_left, d_bottom, d_right, d_top = dst.bounds
    if left >= d_right or right <= d_left or bottom >= d_top or top <= d_bottom:
        raise ValueError(
            f"{path}: does not overlap the sample grid ({dst.crs}, bounds {dst.bounds}); "
            f"its bounds are {src.bounds} in {src.crs}"
        )
    out = np.full((*x.shape[:-2], dst.height, dst.width), np.nan, dtype=np.float32)
    _reproject(
        x,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        src_nodata=np.nan,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return out


_LOCAL_CRS = CRS.from_epsg(3857)
"""Stand-in CRS for grids in a layout's local frame (no CRS): the same on both sides of a warp, so
the warp is a pure resampling between the two pixel grids (the CRS itself never matters)."""


def resample_local(x: np.ndarray, src: Grid, dst: Grid, resampling: Resampling) -> np.ndarray:
    """Float band ``x`` on ``src`` to ``dst``, both in one local frame (no CRS, see
    :meth:`RasterReader.file_grid`); pixels outside ``src`` become NaN."""
    out = np.full((*x.shape[:-2], dst.height, dst.width), np.nan, dtype=np.float32)
    _reproject(
        x,
        out,
        src_transform=src.transform,
        src_crs=_LOCAL_CRS,
        src_nodata=np.nan,
        dst_transform=dst.transform,
        dst_crs=_LOCAL_CRS,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return out


def _reproject(source: np.ndarray, destination: np.ndarray, **kwargs: Any) -> None:
    """:func:`rasterio.warp.reproject` of arrays whose transforms are given: rasterio's in-memory
    datasets warn that they have no geotransform before it sets the ones given, which means nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        reproject(source, destination, **kwargs)
