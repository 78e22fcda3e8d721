"""A closed-form ridge probe on frozen features: what they hold, with no training protocol to spoil it.

The probe reads exactly what a frozen head reads (the cached, standardised head input) and maps
it linearly to the targets, solved in closed form:

* multi-label: pooled features ``(N, D)`` -> 0/1 targets ``(N, K)``; the scores rank samples
  for average precision;
* segmentation: every patch token ``(D)`` -> one-hot targets of the ``p_out x p_out`` label
  pixels under it (``p_out * p_out * K`` outputs); pixels to ignore get ``1 / K`` for every class
  (no preference); the class with the highest score wins.

The penalty ``lambda`` is picked from a grid (``n * 10**k``, ``n`` the rows) by the squared
error on the validation split, computed for the whole grid from one eigendecomposition of the
Gram matrix and the validation split's moments (:func:`ridge_path`); the test split is scored
once with that ``lambda``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from s12mae.evaluation.features import CachedSplit
from s12mae.evaluation.fitting import make_meter
from s12mae.evaluation.heads import EvalModel
from s12mae.evaluation.tasks import EvalTask
from s12mae.models.patches import patchify, unpatchify

__all__ = ["RIDGE_GRID", "ridge_path", "ridge_probe"]

RIDGE_GRID = tuple(10.0 ** k for k in range(-5, 2))
"""Penalties tried, relative to the number of rows (ours)."""

_CHUNK = 32  # samples per chunk when accumulating sums and scoring


def _design(model: EvalModel, feats: torch.Tensor) -> torch.Tensor:
    """Standardised head input -> rows with a bias column: ``(M, D + 1)`` in float64."""
    x = model.head.norm(feats)
    if x.ndim == 3:  # tokens: drop the class token, one row per patch token
        x = x[:, 1:].reshape(-1, x.shape[-1])
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1).double()


def _patch_out(task: EvalTask, model: EvalModel) -> int:
    return model.encoder.patch_size * task.label_scale


def _targets(task: EvalTask, model: EvalModel, labels: torch.Tensor) -> torch.Tensor:
    """Labels -> regression targets ``(M, outputs)`` in float32, rows as :func:`_design`'s."""
    if task.kind == "multilabel":
        return labels.float()
    p = _patch_out(task, model)
    gh, gw = model.grid
    if tuple(labels.shape[-2:]) != (gh * p, gw * p):  # labels on another grid than the head's output
        labels = F.interpolate(labels[:, None].float(), size=(gh * p, gw * p), mode="nearest")[:, 0].long()
    k = task.num_classes
    onehot = F.one_hot(labels.clamp_min(0), k).float()  # (N, H, W, K)
    onehot[labels == task.ignore_index] = 1.0 / k
    return patchify(onehot.permute(0, 3, 1, 2), p).reshape(-1, p * p * k)  # (N * L, p * p * K)


def _scores(task: EvalTask, model: EvalModel, x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``(M, D + 1)`` of ``n`` samples -> logits shaped like the model's output."""
    out = x @ w
    if task.kind == "multilabel":
        return out
    p, k = _patch_out(task, model), task.num_classes
    maps = unpatchify(out.reshape(n, -1, p * p * k), p, model.grid, k)  # (N, K, gh * p, gw * p)
    if model.out_size is not None and tuple(maps.shape[-2:]) != tuple(model.out_size):
        maps = F.interpolate(maps, size=model.out_size, mode="bilinear", align_corners=False)
    return maps


def _moments(task: EvalTask, model: EvalModel, split: CachedSplit) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """``X^T X``, ``X^T Y``, ``sum(Y^2)`` and the row count of a split (float64, chunked)."""
    gram = cross = None
    squares, rows = 0.0, 0
    for feats, labels in split.batches(_CHUNK):
        x, y = _design(model, feats), _targets(task, model, labels)
        xty = (x.float().T @ y).double()  # float32 products, float64 sums: the targets dominate the cost
        gram = x.T @ x if gram is None else gram + x.T @ x
        cross = xty if cross is None else cross + xty
        squares += float((y.double() * y).sum())
        rows += len(x)
    assert gram is not None and cross is not None, "empty split"
    return gram, cross, squares, rows


def ridge_path(gram: torch.Tensor, cross: torch.Tensor, val_gram: torch.Tensor, val_cross: torch.Tensor,
               val_squares: float, lambdas: list[float]) -> tuple[list[float], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation squared error of the ridge solution for every ``lambda``, without forming them.

    With ``G = Q diag(e) Q^T`` and ``P = Q^T X^T Y``, ``W(lambda) = Q diag(1 / (e + lambda)) P``
    and ``|X_v W - Y_v|^2 = tr(W^T G_v W) - 2 tr(W^T C_v) + |Y_v|^2`` need only ``(D+1)^2``
    numbers per ``lambda`` once ``Q^T G_v Q``, ``P P^T`` and ``diag(Q^T C_v P^T)`` are known.

    Returns:
        ``(errors, e, Q, P)``: summed squared error per ``lambda`` and the decomposition.
    """
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0)
    proj = evecs.T @ cross  # P: (D+1, outputs)
    a = evecs.T @ val_gram @ evecs
    ppt = proj @ proj.T
    cp = ((evecs.T @ val_cross) * proj).sum(1)  # diag(Q^T C_v P^T)
    errors = []
    for lam in lambdas:
        d = 1.0 / (evals + lam)
        errors.append(float((d[:, None] * a * d[None, :] * ppt.T).sum() - 2 * (d * cp).sum() + val_squares))
    return errors, evals, evecs, proj


def _score_split(task: EvalTask, model: EvalModel, split: CachedSplit, w: torch.Tensor) -> float:
    meter = make_meter(task)
    for feats, labels in split.batches(_CHUNK):
        meter.update(_scores(task, model, _design(model, feats).float(), w, len(feats)), labels)
    return meter.compute()[task.headline]


@torch.no_grad()
def ridge_probe(task: EvalTask, model: EvalModel, train: CachedSplit, val: CachedSplit,
                test: CachedSplit) -> dict[str, Any]:
    """Fit the ridge probe on ``train``, pick ``lambda`` by the squared error on ``val``, score ``test``.

    Args:
        task: the task (kind, classes, headline).
        model: the run's model, whose ``head.norm`` has its training-set statistics.
        train, val, test: cached head inputs and labels.

    Returns:
        ``{"headline": {"name", "value"}, "val_headline", "val_mse": {lambda/rows: mse},
        "lambda", "lambda_per_row", "rows", "note"}``.
    """
    gram, cross, _, rows = _moments(task, model, train)
    val_gram, val_cross, val_squares, val_rows = _moments(task, model, val)
    lambdas = [rows * r for r in RIDGE_GRID]
    errors, evals, evecs, proj = ridge_path(gram, cross, val_gram, val_cross, val_squares, lambdas)
    best = min(range(len(errors)), key=lambda i: errors[i])
    w = (evecs @ (proj / (evals + lambdas[best])[:, None])).float()
    outputs = cross.shape[1]
    return {"headline": {"name": task.headline, "value": _score_split(task, model, test, w)},
            "val_headline": _score_split(task, model, val, w),
            "val_mse": {f"{r:g}": e / (val_rows * outputs) for r, e in zip(RIDGE_GRID, errors)},
            "lambda": lambdas[best], "lambda_per_row": RIDGE_GRID[best], "rows": rows,
            "note": "closed-form ridge on the frozen, standardised head input; lambda by validation squared error"}
