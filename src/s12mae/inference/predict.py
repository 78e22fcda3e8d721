"""``s12mae predict``: the trained head of an evaluation run applied to a whole scene.

* Segmentation heads (Sen1Floods11 water): tiles of the size the head was trained on slide over
  the scene with overlap; their class probabilities are blended with tent weights and the class
  of each pixel is written as a ``uint8`` GeoTIFF on the input grid (finer by ``label_scale`` for
  super-resolution heads), ``255`` where the input has no data (any band missing, as the task's
  labels ignore such pixels).
* Multi-label heads (BigEarthNet): one prediction per tile of the training size (tiles do not
  overlap); per-class probabilities as a GeoTIFF with one pixel per tile (transform scaled by the
  tile, one band per class) or as GeoParquet rows with each tile's footprint.

The scene is standardised with the statistics the task was standardised with, recorded in the run.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from affine import Affine
from tqdm import tqdm

from s12mae.evaluation.heads import EvalModel
from s12mae.inference.embed import resolve_device, strip_batches
from s12mae.evaluation.saved_model import input_sensor, load_eval_model
from s12mae.inference.outputs import check_out_path, raster_writer, write_tile_table
from s12mae.inference.scene import Scene, open_scene
from s12mae.inference.tiling import Blender, border_weights, tiles_by_strip

__all__ = ["NODATA_CLASS", "PredictConfig", "predict_scene"]

NODATA_CLASS = 255


@dataclass
class PredictConfig:
    """Apply the head trained by ``s12mae evaluate`` to a whole scene."""

    scene: str
    """A GeoTIFF stack of the task's sensor, or a dataset folder / index read with ``layout``."""
    model: str
    """The evaluation run folder (holds ``eval_model.json`` and ``eval_model.safetensors``)."""
    out: str
    """Output: ``.tif`` (segmentation: class per pixel; multi-label: probabilities per tile) or
    ``.parquet`` (multi-label: one row per tile with its footprint)."""
    checkpoint: str | None = None
    """The encoder file, if it moved since the evaluation run (it must be the same file)."""
    layout: str | None = None
    """Reader layout of ``scene`` for per-band files (``bigearthnet-v1`` ...); ``None``: a GeoTIFF stack."""
    item: str | None = None
    """Item id within ``layout`` (needed when the layout holds several)."""
    overlap: int | None = None
    """Segmentation: overlap of neighbouring tiles in pixels (default: a quarter of the tile) (ours)."""
    batch_size: int = 4
    """Tiles per forward pass."""
    s2_offset: int | None = None
    """DN removed from every Sentinel-2 band regardless of metadata; ``None``: the readers' rule."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` ..."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` autocast (CUDA) or ``fp32``."""
    threads: int | None = None
    """Torch CPU threads (``None``: torch's default)."""
    overwrite: bool = False
    """Replace an existing ``out``."""
    progress: bool = True
    """Progress bar on stderr."""

    def __post_init__(self) -> None:
        for name in ("scene", "model", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: required")
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap: must be >= 0, got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: must be fp32 or bf16, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be >= 1, got {self.threads}")


@torch.no_grad()
def _probabilities(model: EvalModel, kind: str, x: np.ndarray, device: torch.device, bf16: bool) -> np.ndarray:
    """Standardised tiles ``(N, C, h, w)`` -> softmax ``(N, K, h', w')`` or sigmoid ``(N, K)``."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        logits = model(torch.from_numpy(x).to(device)).float()
    probs = logits.softmax(1) if kind == "segmentation" else logits.sigmoid()
    return probs.cpu().numpy()


def predict_scene(cfg: PredictConfig) -> dict[str, Any]:
    """Predict ``cfg.scene`` with the head of ``cfg.model`` into ``cfg.out`` (nothing partial on an error).

    Returns:
        A summary: ``out``, ``kind``, ``classes``, ``tiles``, ``seconds``, ``grid`` (output rows, cols)
        and, for segmentation, ``class_pixels`` (pixel count per class).

    Raises:
        ValueError: the run folder holds no trained model, the encoder is not the one the head was
            trained on, the scene's bands do not match the task's, the scene is smaller than a patch;
            the message names the file.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, spec = load_eval_model(cfg.model, cfg.checkpoint)
    kind, classes = spec["task"]["kind"], spec["task"]["classes"]
    allowed = (".tif", ".tiff") if kind == "segmentation" else (".tif", ".tiff", ".parquet")
    out = check_out_path(cfg.out, allowed, cfg.overwrite, f"a {kind} prediction")
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    sensor = input_sensor(spec)
    th, tw = spec["plan"]["task_size"]
    bf16 = cfg.precision == "bf16"
    with open_scene(cfg.scene, sensor, cfg.layout, cfg.item, cfg.s2_offset) as scene:
        h, w = scene.grid.height, scene.grid.width
        p = model.encoder.patch_size
        if h < p or w < p:
            raise ValueError(f"{cfg.scene}: the scene is {h} x {w} px, smaller than one {p} x {p} patch")
        t0 = time.perf_counter()
        if kind == "segmentation":
            summary = _segment(cfg, scene, model, spec, (th, tw), out, device, bf16)
        else:
            summary = _classify(cfg, scene, model, spec, (th, tw), out, device, bf16)
        summary.update(seconds=round(time.perf_counter() - t0, 3), out=str(out), kind=kind, classes=classes)
    return summary


def _segment(cfg: PredictConfig, scene: Scene, model: EvalModel, spec: dict[str, Any], tile: tuple[int, int],
             out: Any, device: torch.device, bf16: bool) -> dict[str, Any]:
    th, tw = tile
    scale = spec["task"]["label_scale"]
    overlap = cfg.overlap if cfg.overlap is not None else min(th, tw) // 4
    if overlap >= min(th, tw):
        raise ValueError(f"overlap: {overlap} px must be smaller than the tile ({th} x {tw} px)")
    h, w = scene.grid.height, scene.grid.width
    strips = list(tiles_by_strip(max(h, th), max(w, tw), (th, tw), (th - overlap, tw - overlap)))
    classes = spec["task"]["classes"]
    counts = np.zeros(len(classes), dtype=np.int64)
    transform = scene.grid.transform @ Affine.scale(1 / scale)
    tags = {"s12mae": {"model": str(cfg.model), "scene": str(cfg.scene), "classes": classes,
                       "nodata": NODATA_CLASS, "dn_offsets": scene.offsets}}
    bar = tqdm(total=sum(len(s) for s in strips), disable=not cfg.progress, unit="tile", desc=f"predict {scene.id}")
    with raster_writer(out, scene.grid.crs, transform, h * scale, w * scale, 1, "uint8", NODATA_CLASS,
                       ["class"], tags) as write:
        def sink(row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
            cls = np.where(valid, np.nan_to_num(probs).argmax(0), NODATA_CLASS).astype(np.uint8)
            counts[:] += np.bincount(cls[valid].ravel(), minlength=len(classes))[: len(classes)]
            write(row0, cls[None])

        blender = Blender(h * scale, w * scale, len(classes), sink)
        weights = border_weights(th * scale, tw * scale)
        for k, strip in enumerate(strips):
            for batch, x, bands_valid in strip_batches(scene, strip, cfg.batch_size):
                probs = _probabilities(model, "segmentation", x, device, bf16)
                valid = bands_valid.all(1)  # the task's rule: a pixel with a missing band is not scored
                if scale > 1:
                    valid = valid.repeat(scale, axis=1).repeat(scale, axis=2)
                for t, prob, v in zip(batch, probs, valid):
                    blender.add(t.row * scale, t.col * scale, prob, weights, v)
                bar.update(len(batch))
            blender.flush(strips[k + 1][0].row * scale if k + 1 < len(strips) else None)
    bar.close()
    return {"tiles": sum(len(s) for s in strips), "grid": [h * scale, w * scale],
            "class_pixels": dict(zip(classes, counts.tolist()))}


def _classify(cfg: PredictConfig, scene: Scene, model: EvalModel, spec: dict[str, Any], tile: tuple[int, int],
              out: Any, device: torch.device, bf16: bool) -> dict[str, Any]:
    th, tw = tile
    h, w = scene.grid.height, scene.grid.width
    gh, gw = math.ceil(h / th), math.ceil(w / tw)
    strips = list(tiles_by_strip(gh * th, gw * tw, (th, tw), (th, tw)))
    classes = spec["task"]["classes"]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=gh * gw, disable=not cfg.progress, unit="tile", desc=f"predict {scene.id}")
    for strip in strips:
        for batch, x, bands_valid in strip_batches(scene, strip, cfg.batch_size):
            probs = _probabilities(model, "multilabel", x, device, bf16)
            for t, prob, v in zip(batch, probs, bands_valid.all(1)):
                ih, iw = min(th, h - t.row), min(tw, w - t.col)
                frac = float(v[:ih, :iw].mean())
                rows.append({"row": t.row, "col": t.col, "height": ih, "width": iw, "valid_fraction": frac,
                             "probabilities": prob if frac > 0 else None})
            bar.update(len(batch))
    bar.close()
    meta = {"model": str(cfg.model), "scene": str(cfg.scene), "classes": classes, "tile": [th, tw],
            "dn_offsets": scene.offsets}
    if out.suffix.lower() == ".parquet":
        write_tile_table(out, rows, scene.grid.crs, scene.grid.transform, "probabilities", len(classes), meta)
    else:
        grid = np.full((len(classes), gh, gw), np.nan, dtype=np.float32)
        for r in rows:
            if r["probabilities"] is not None:
                grid[:, r["row"] // th, r["col"] // tw] = r["probabilities"]
        transform = scene.grid.transform @ Affine.scale(tw, th)
        with raster_writer(out, scene.grid.crs, transform, gh, gw, len(classes), "float32", float("nan"),
                           classes, {"s12mae": meta}) as write:
            write(0, grid)
    return {"tiles": len(rows), "grid": [gh, gw]}
