"""Sliding windows over a scene and the weighted blending of their overlapping outputs.

Tiles are placed on a grid aligned to a cell size (the patch for embeddings), so every tile's
output lands on whole output pixels. Overlapping outputs are averaged with weights that fall off
towards each tile's border (a tile's centre sees the most context), and finished rows of the
output are handed to a sink strip by strip, so memory holds one strip of tiles, never the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Blender", "Tile", "border_weights", "tile_starts", "tiles_by_strip"]


@dataclass(frozen=True)
class Tile:
    """A window of the scene in input pixels (may reach past the scene's edge, read as nodata)."""

    row: int
    col: int
    height: int
    width: int


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of windows of ``tile`` covering ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tiles_by_strip(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> Iterator[list[Tile]]:
    """Tiles covering a ``height`` x ``width`` area (sizes already padded to the cell), row strip by strip."""
    th, tw = min(tile[0], height), min(tile[1], width)
    cols = tile_starts(width, tw, stride[1])
    for r in tile_starts(height, th, stride[0]):
        yield [Tile(r, c, th, tw) for c in cols]


def border_weights(height: int, width: int) -> np.ndarray:
    """``(height, width)`` blending weights: a tent, highest at the centre, positive at the border."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        return np.minimum(i + 0.5, n - i - 0.5) / (n / 2.0)

    return np.outer(ramp(height), ramp(width))


class Blender:
    """Accumulates weighted tile outputs on a ``(channels, height, width)`` output grid, one strip at a time.

    Args:
        height, width: the output grid.
        channels: values per output pixel.
        sink: ``sink(row0, values (C, rows, width), valid (rows, width))`` receives finished rows in
            order; pixels no valid input reached have ``valid`` False (their values are NaN).
    """

    def __init__(self, height: int, width: int, channels: int,
                 sink: Callable[[int, np.ndarray, np.ndarray], None]) -> None:
        self.height, self.width, self.channels, self.sink = height, width, channels, sink
        self.top = 0  # first output row not yet handed to the sink
        self.num = np.zeros((channels, 0, width), dtype=np.float32)
        self.den = np.zeros((0, width), dtype=np.float32)
        self.valid = np.zeros((0, width), dtype=bool)

    def _reach(self, bottom: int) -> None:
        extra = bottom - (self.top + self.den.shape[0])
        if extra > 0:
            self.num = np.concatenate([self.num, np.zeros((self.channels, extra, self.width), np.float32)], axis=1)
            self.den = np.concatenate([self.den, np.zeros((extra, self.width), np.float32)], axis=0)
            self.valid = np.concatenate([self.valid, np.zeros((extra, self.width), dtype=bool)], axis=0)

    def add(self, row: int, col: int, values: np.ndarray, weights: np.ndarray, valid: np.ndarray) -> None:
        """Add one tile's output ``values (C, h, w)`` at output ``(row, col)`` (clipped to the grid)."""
        if row < self.top:
            raise ValueError(f"tile at output row {row} arrived after rows up to {self.top} were written")
        h = min(values.shape[1], self.height - row)
        w = min(values.shape[2], self.width - col)
        self._reach(row + h)
        r = row - self.top
        wgt = weights[:h, :w]
        self.num[:, r : r + h, col : col + w] += values[:, :h, :w] * wgt
        self.den[r : r + h, col : col + w] += wgt
        self.valid[r : r + h, col : col + w] |= valid[:h, :w]

    def flush(self, until: int | None = None) -> None:
        """Hand rows ``[top, until)`` (all rows when ``None``) to the sink; they must be final."""
        until = self.top + self.den.shape[0] if until is None else min(until, self.top + self.den.shape[0])
        n = until - self.top
        if n <= 0:
            return
        den = self.den[:n]
        values = (self.num[:, :n] / np.where(den > 0, den, 1.0)).astype(np.float32)
        valid = self.valid[:n] & (den > 0)
        values[:, ~valid] = np.nan
        self.sink(self.top, values, valid)
        self.num, self.den, self.valid = self.num[:, n:], self.den[n:], self.valid[n:]
        self.top = until
