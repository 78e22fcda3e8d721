"""Windowed reads: a sample that is one chip of a bigger scene reads only that chip's pixels.

An :class:`~s12mae.readers.base.Item` with a ``region`` (a :class:`~s12mae.readers.grid.Grid`, e.g. one
chip of the S2 grid) is loaded on that region: from each file the reader reads only the window
that covers the region (:func:`covering_window`), a few source pixels wider for the resampling
kernel, and warps that window onto the region as it would warp the whole file. On a COG behind a
URL only the tiles of that window move (GDAL's virtual file systems read byte ranges); on a big
local GeoTIFF only those blocks are decoded.

:func:`grid_positions` is the rule of grid chips (the shard writer's ``crop="grid"`` too), and
:func:`scene_chips` cuts a scene grid into chip regions by it; :func:`grid_from_json` reads the scene grid that
``s12mae pair --stac`` records from the items' projection extension (``s2_grid``).
"""

from __future__ import annotations

import json
import math

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from s12mae.readers.grid import Grid

__all__ = ["PAD_PX", "covering_window", "grid_from_json", "grid_positions", "grid_to_json", "scene_chips",
           "window_grid"]

PAD_PX = 2
"""Source pixels added on every side of a window (ours): bilinear needs one neighbour, the
warper's approximate transformer a little slack; a downsampling warp widens it by the ratio."""
_EXACT = 1e-6
"""How close to whole pixels (in pixels) a window must be to be read exactly, without a warp."""


def grid_positions(h: int, w: int, s: int) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of the grid chips of side ``s`` of an ``h`` x ``w`` scene: row by row from
    the top left, the remainder dropped."""
    return [(y, x) for y in range(0, h - s + 1, s) for x in range(0, w - s + 1, s)]


def covering_window(src: Grid, region: Grid) -> Window | None:
    """The window of a file on grid ``src`` that covers ``region`` (both
    :class:`~s12mae.readers.grid.Grid`), clipped to the file; ``None`` if the file does not reach it.

    Where ``region`` is a whole-pixel part of ``src`` at the same resolution (a native 10 m band
    under a chip of its own grid) the window is exactly the region's pixels; elsewhere it is padded
    by :data:`PAD_PX` source pixels (times the downsampling ratio) for the resampling kernel.
    """
    bounds = region.bounds
    if src.crs is not None and region.crs is not None and src.crs != region.crs:
        bounds = transform_bounds(region.crs, src.crs, *bounds, densify_pts=21)
    try:
        win = from_bounds(*bounds, transform=src.transform)
    except (RasterioError, ValueError, ZeroDivisionError):  # a rotated or degenerate file grid
        return Window(0, 0, src.width, src.height)
    if (win.col_off >= src.width or win.row_off >= src.height or win.col_off + win.width <= 0
            or win.row_off + win.height <= 0):
        return None  # the file does not reach the region (the padding alone would)
    if not _exact(win, src, region):
        ratio = math.sqrt(region.pixel_area / src.pixel_area) if src.pixel_area else 1.0
        pad = PAD_PX * max(1, math.ceil(ratio))
        left, top = math.floor(win.col_off) - pad, math.floor(win.row_off) - pad
        right = math.ceil(win.col_off + win.width) + pad
        bottom = math.ceil(win.row_off + win.height) + pad
    else:
        left, top = round(win.col_off), round(win.row_off)
        right, bottom = left + region.width, top + region.height
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, src.width), min(bottom, src.height)
    if right <= left or bottom <= top:
        return None
    win = Window(left, top, right - left, bottom - top)
    return win if _reaches(window_grid(src, win), region) else None


def _reaches(part: Grid, region: Grid) -> bool:
    """Whether ``part`` overlaps ``region`` seen from the region's CRS: the box of the region in
    another CRS is larger than the region (rotated), so a window can touch that box and still miss
    the region, which the warp onto it would refuse; such a file simply does not reach the chip."""
    if part.crs is None or region.crs is None or part.crs == region.crs:
        return True
    left, bottom, right, top = transform_bounds(part.crs, region.crs, *part.bounds, densify_pts=21)
    r_left, r_bottom, r_right, r_top = region.bounds
    return left < r_right and right > r_left and bottom < r_top and top > r_bottom


def _exact(win: Window, src: Grid, region: Grid) -> bool:
    same_res = abs(src.pixel_area - region.pixel_area) <= _EXACT * region.pixel_area
    whole = all(abs(v - round(v)) < _EXACT for v in (win.col_off, win.row_off, win.width, win.height))
    return same_res and whole and (src.crs == region.crs) and not (src.transform.b or src.transform.d)


def window_grid(src: Grid, win: Window) -> Grid:
    """The grid of window ``win`` of a file on grid ``src``."""
    t = src.transform @ Affine.translation(win.col_off, win.row_off)
    return Grid(src.crs, t, int(win.width), int(win.height))


def scene_chips(scene: Grid, size: int) -> list[tuple[int, int, Grid]]:
    """``(y, x, chip grid)`` of the grid chips of side ``size`` of scene grid ``scene``, in the order
    of :func:`grid_positions`."""
    return [(y, x, Grid(scene.crs, scene.transform @ Affine.translation(x, y), size, size))
            for y, x in grid_positions(scene.height, scene.width, size)]


def grid_to_json(crs: str, transform: list[float], shape: list[int]) -> str:
    """The stored form of a grid: ``{"crs", "transform" (6 numbers), "shape" ([rows, cols])}``."""
    return json.dumps({"crs": crs, "transform": [float(v) for v in transform[:6]], "shape": [int(v) for v in shape]})


def grid_from_json(text: str, where: str) -> Grid:
    """A :class:`~s12mae.readers.grid.Grid` from :func:`grid_to_json`'s form, or a ValueError naming ``where``."""
    try:
        value = json.loads(text)
        (rows, cols), t = value["shape"], value["transform"]
        return Grid(CRS.from_user_input(value["crs"]), Affine(*t[:6]), int(cols), int(rows))
    except (ValueError, KeyError, TypeError, RasterioError) as err:
        raise ValueError(f"{where}: s2_grid {text!r} is not a grid ({{crs, transform, shape}}): {err}") from None
