"""Patchify / unpatchify for any channel count, and 2-D sin-cos position tables."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["patch_grid_view", "patchify", "select_patches", "sincos_pos_embed", "unpatchify"]


def patch_grid_view(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The image as a grid of patches, without copying.

    Args:
        imgs: ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: side ``p`` of a square patch.

    Returns:
        ``(N, H/p, W/p, C, p, p)`` view of ``imgs``.
    """
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    return imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)


def select_patches(grid_view: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Patches at chosen grid positions: ``(N, gh, gw, ...)`` and ``ids (N, M)`` (row-major
    position ``row * gw + col``) -> ``(N, M, ...)``. Copies only the chosen patches."""
    n, _, gw = grid_view.shape[:3]
    rows = torch.arange(n, device=ids.device).unsqueeze(1)
    return grid_view[rows, torch.div(ids, gw, rounding_mode="floor"), ids % gw]


def patchify(imgs: torch.Tensor, patch_size: int, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Cut images into flattened patches.

    Args:
        imgs: ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: side ``p`` of a square patch.
        ids: ``(N, M)`` grid positions to cut (row-major); ``None`` = all ``L`` in grid order.

    Returns:
        ``(N, L, p*p*C)`` (or ``(N, M, p*p*C)``) with ``L = (H/p) * (W/p)`` in row-major grid
        order and each patch flattened as ``(p, p, C)`` (the MAE layout).
    """
    n = imgs.shape[0]
    x = patch_grid_view(imgs, patch_size).permute(0, 1, 2, 4, 5, 3)  # (N, gh, gw, p, p, C)
    if ids is not None:
        return select_patches(x, ids).reshape(n, ids.shape[1], -1)
    return x.reshape(n, x.shape[1] * x.shape[2], -1)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, L, p*p*C) -> (N, C, gh*p, gw*p)``."""
    n, length, dim = x.shape
    gh, gw = grid
    p = patch_size
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(
            f"cannot unpatchify {tuple(x.shape)} into a {gh}x{gw} grid of {p}x{p}x{channels} patches"
        )
    x = x.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position table in the MAE layout, so MAE checkpoints load unchanged.

    Half the channels encode the column, half the row (as in MAE's ``get_2d_sincos_pos_embed``);
    the class-token row, when present, is all zeros.

    Returns:
        ``(1, [1 +] gh*gw, dim)`` float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    cols, rows = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    table = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)
