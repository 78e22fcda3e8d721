"""``s12mae embed``: patch embeddings of a whole scene of any size.

The scene is cut into tiles of the encoder's image size on a grid aligned to the patch, tiles
overlap by ``overlap`` pixels and their token features (the final normed tokens of
``forward_features``) are blended with tent weights (:mod:`s12mae.inference.tiling`). One output
pixel is one ``p x p`` patch of the scene: the output GeoTIFF has the scene's CRS and its
transform scaled by ``p``, one band per feature channel. Patches without any valid input pixel
are nodata (NaN). ``pool`` instead writes one vector per tile (the mean of its valid patch tokens,
the pooling of s12mae's linear probes) with the tile's footprint to GeoParquet, for retrieval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from affine import Affine
from tqdm import tqdm

from s12mae.export.encoder_file import EncoderInfo
from s12mae.export.folder import load_any_encoder
from s12mae.inference.outputs import RASTER_SUFFIXES, check_out_path, raster_writer, write_tile_table
from s12mae.inference.scene import Scene, open_scene
from s12mae.inference.tiling import Blender, Tile, border_weights, tiles_by_strip
from s12mae.models.vit import ViTEncoder

__all__ = ["EmbedConfig", "embed_scene", "resolve_device", "scene_tiles", "strip_batches"]


@dataclass
class EmbedConfig:
    """Embed a whole scene with a pretrained encoder."""

    scene: str
    """A GeoTIFF stack of one sensor (all its bands), or a dataset folder / index read with ``layout``."""
    checkpoint: str
    """The encoder: a run's ``encoder.safetensors`` or a folder written by ``s12mae export``; its
    recorded statistics standardise the scene."""
    out: str
    """Output: ``.tif``/``.tiff`` (GeoTIFF) or ``.zarr`` for patch embeddings; ``.parquet`` with ``pool``."""
    sensor: str | None = None
    """Sensor of the scene, i.e. the encoder's patch embedding to use (default: the encoder's first)."""
    layout: str | None = None
    """Reader layout of ``scene`` (``sen1floods11``, ``bigearthnet-v1``, ``generic`` ...) for per-band
    files; ``None``: ``scene`` is a GeoTIFF stack."""
    item: str | None = None
    """Item id within ``layout`` (needed when the layout holds several)."""
    tile: int | None = None
    """Tile side in pixels, a multiple of the patch (default: the encoder's image size)."""
    overlap: int | None = None
    """Overlap of neighbouring tiles in pixels, a multiple of the patch (default: a quarter of the
    tile rounded down to the patch for embeddings, 0 with ``pool``) (ours)."""
    pool: bool = False
    """Write one vector per tile to ``out`` (``.parquet``) with its footprint instead of patch embeddings."""
    batch_size: int = 16
    """Tiles per forward pass; memory holds this batch and one row of tiles (input and output)."""
    s2_offset: int | None = None
    """DN removed from every Sentinel-2 band regardless of metadata; ``None``: the readers' rule."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` autocast (CUDA) or ``fp32``."""
    threads: int | None = None
    """Torch CPU threads (``None``: torch's default); 1 is fastest on a busy machine."""
    overwrite: bool = False
    """Replace an existing ``out``."""
    progress: bool = True
    """Progress bar on stderr."""

    def __post_init__(self) -> None:
        for name in ("scene", "checkpoint", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required")
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"tile: must be >= 1, got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap: must be >= 0, got {self.overlap}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be >= 1, got {self.threads}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: must be fp32 or bf16, got {self.precision!r}")
        suffix = self.out.lower().rsplit(".", 1)[-1]
        if self.pool and suffix != "parquet":
            raise ValueError(f"out: pooled tile vectors are written as .parquet, not {self.out!r}")
        if not self.pool and f".{suffix}" not in RASTER_SUFFIXES:
            raise ValueError(f"out: patch embeddings are written as {'/'.join(RASTER_SUFFIXES)}, not {self.out!r} "
                             "(or set pool for one vector per tile in .parquet)")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def scene_tiles(scene: Scene, cell: int, tile: int, overlap: int, where: str) -> tuple[list[list[Tile]], int, int]:
    """Tiles (by strip) over the scene padded to a multiple of ``cell``, and the padded size in cells."""
    h, w = scene.grid.height, scene.grid.width
    if h < cell or w < cell:
        raise ValueError(f"{where}: the scene is {h} x {w} px, smaller than one {cell} x {cell} patch")
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    stride = tile - overlap
    return list(tiles_by_strip(gh * cell, gw * cell, (tile, tile), (stride, stride))), gh, gw


def _tiling(cfg: EmbedConfig, info: EncoderInfo) -> tuple[int, int]:
    p = info.patch_size
    tile = cfg.tile or info.img_size
    overlap = cfg.overlap if cfg.overlap is not None else (0 if cfg.pool else (tile // 4) // p * p)
    for name, value in (("tile", tile), ("overlap", overlap)):
        if value % p:
            raise ValueError(f"{name}: {value} px is not a multiple of the encoder's patch size {p}")
    if overlap >= tile:
        raise ValueError(f"overlap: {overlap} px must be smaller than the tile ({tile} px)")
    return tile, overlap


@torch.no_grad()
def _encode(encoder: ViTEncoder, x: np.ndarray, sensor: str, device: torch.device, bf16: bool) -> np.ndarray:
    """Standardised tiles ``(N, C, h, w)`` -> patch features ``(N, D, h/p, w/p)`` (final norm applied)."""
    n, _, h, w = x.shape
    p = encoder.patch_size
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        tokens = encoder.forward_features(torch.from_numpy(x).to(device), sensor)[:, 1:]  # (N, L, D)
    return tokens.float().transpose(1, 2).reshape(n, -1, h // p, w // p).cpu().numpy()


def _token_valid(valid: np.ndarray, p: int) -> np.ndarray:
    """``(N, h, w)`` pixel validity -> ``(N, h/p, w/p)``: a patch is valid if any pixel is."""
    n, h, w = valid.shape
    return valid.reshape(n, h // p, p, w // p, p).any(axis=(2, 4))


def embed_scene(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed ``cfg.scene`` into ``cfg.out`` (nothing is left behind on an error).

    Returns:
        A summary: ``out``, ``tiles``, ``seconds``, ``tiles_per_s``, ``grid`` (output rows, cols),
        ``sensor``, ``device`` and the DN ``offsets`` removed.

    Raises:
        ValueError: unreadable checkpoint or scene, a sensor the encoder lacks, scene bands that do
            not match the encoder's, a scene smaller than a patch, a bad tile/overlap; the message
            names the file or option.
        FileExistsError: ``out`` exists and ``overwrite`` is off.
    """
    out = check_out_path(cfg.out, (".parquet",) if cfg.pool else RASTER_SUFFIXES, cfg.overwrite,
                         "pooled vectors" if cfg.pool else "patch embeddings")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder, info = load_any_encoder(cfg.checkpoint)
    sensor = info.sensor(cfg.sensor)
    tile, overlap = _tiling(cfg, info)
    device = resolve_device(cfg.device)
    encoder = encoder.to(device).eval()
    p, dim = info.patch_size, info.embed_dim
    bf16 = cfg.precision == "bf16"
    with open_scene(cfg.scene, sensor, cfg.layout, cfg.item, cfg.s2_offset) as scene:
        strips, gh, gw = scene_tiles(scene, p, tile, overlap, cfg.scene)
        total = sum(len(s) for s in strips)
        meta = {"checkpoint": str(cfg.checkpoint), "scene": str(cfg.scene), "sensor": sensor.key,
                "bands": list(sensor.bands), "method": info.method, "encoder": info.encoder, "patch_size": p,
                "tile": tile, "overlap": overlap, "dn_offsets": scene.offsets,
                "pixel": f"one output pixel = one {p} x {p} px patch of the scene"}
        bar = tqdm(total=total, disable=not cfg.progress, unit="tile", desc=f"embed {scene.id}")
        t0 = time.perf_counter()
        if cfg.pool:
            rows = _pooled(scene, encoder, strips, sensor.key, cfg.batch_size, device, bf16, bar)
            write_tile_table(out, rows, scene.grid.crs, scene.grid.transform, "embedding", dim, meta)
        else:
            transform = scene.grid.transform @ Affine.scale(p)
            with raster_writer(out, scene.grid.crs, transform, gh, gw, dim, "float32", float("nan"),
                               [f"feature_{i}" for i in range(dim)], {"s12mae": meta}) as write:
                blender = Blender(gh, gw, dim, lambda r0, values, valid: write(r0, values))
                _dense(scene, encoder, strips, sensor.key, cfg.batch_size, device, bf16, blender, bar)
        seconds = time.perf_counter() - t0
        bar.close()
    return {"out": str(out), "tiles": total, "seconds": round(seconds, 3), "tiles_per_s": total / max(seconds, 1e-9),
            "grid": [gh, gw], "sensor": sensor.key, "device": str(device), "offsets": scene.offsets}


def strip_batches(scene: Scene, strip: list[Tile], batch_size: int) -> Iterator[tuple[list[Tile], np.ndarray, np.ndarray]]:
    """The tiles of one strip in batches: ``(tiles, x (N, C, h, w) standardised, valid (N, C, h, w))``.

    The strip is read once (one window per file), then cut into tiles.
    """
    top, height = strip[0].row, strip[0].height
    left, right = strip[0].col, max(t.col + t.width for t in strip)
    x, valid = scene.read_standardised(top, left, height, right - left)
    for i in range(0, len(strip), batch_size):
        tiles = strip[i : i + batch_size]
        xs = np.stack([x[:, :, t.col - left : t.col - left + t.width] for t in tiles])
        vs = np.stack([valid[:, :, t.col - left : t.col - left + t.width] for t in tiles])
        yield tiles, xs, vs


def _dense(scene: Scene, encoder: ViTEncoder, strips: list[list[Tile]], sensor: str, batch_size: int,
           device: torch.device, bf16: bool, blender: Blender, bar: tqdm) -> None:
    p = encoder.patch_size
    weights = None
    for k, strip in enumerate(strips):
        for batch, x, valid in strip_batches(scene, strip, batch_size):
            feats, tok_valid = _encode(encoder, x, sensor, device, bf16), _token_valid(valid.any(1), p)
            weights = weights if weights is not None and weights.shape == feats.shape[-2:] else \
                border_weights(*feats.shape[-2:])
            for t, f, v in zip(batch, feats, tok_valid):
                blender.add(t.row // p, t.col // p, f, weights, v)
            bar.update(len(batch))
        blender.flush(strips[k + 1][0].row // p if k + 1 < len(strips) else None)


def _pooled(scene: Scene, encoder: ViTEncoder, strips: list[list[Tile]], sensor: str, batch_size: int,
            device: torch.device, bf16: bool, bar: tqdm) -> list[dict[str, Any]]:
    p, (h, w) = encoder.patch_size, (scene.grid.height, scene.grid.width)
    rows = []
    for strip in strips:
        for batch, x, bands_valid in strip_batches(scene, strip, batch_size):
            valid = bands_valid.any(1)  # (N, h, w): a pixel with any band
            feats, tok_valid = _encode(encoder, x, sensor, device, bf16), _token_valid(valid, p)
            for t, f, v, pix in zip(batch, feats, tok_valid, valid):
                th, tw = min(t.height, h - t.row), min(t.width, w - t.col)  # the part inside the scene
                vec = f[:, v].mean(axis=1) if v.any() else None  # mean of the valid patch tokens
                rows.append({"row": t.row, "col": t.col, "height": th, "width": tw,
                             "valid_fraction": float(pix[:th, :tw].mean()), "embedding": vec})
            bar.update(len(batch))
    return rows
