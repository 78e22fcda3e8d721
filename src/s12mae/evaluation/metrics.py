"""Downstream metrics: IoU from one confusion matrix over the test set, multi-label mAP.

Segmentation metrics are computed from a single confusion matrix accumulated over every test
pixel (not averaged per image), with ignored pixels (label ``-1``) left out, as the paper's
"IoU ... over the test set" and "per class over all images, then averaged over all classes".
Multi-label mAP is torchmetrics' ``MultilabelAveragePrecision`` (exact, no thresholds), micro
(all scores pooled; the headline, as most BigEarthNet papers) and macro (mean over classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics.classification import MultilabelAveragePrecision

__all__ = ["MultilabelMeter", "SegmentationMeter", "argmax_classes", "confusion_matrix", "iou_from_confusion"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = true class, columns = predicted; ``ignore_index`` skipped."""
    k = num_classes
    cell = torch.where(target != ignore_index, target.long() * k + pred.long(), k * k)  # ignored -> a spare bin
    return torch.bincount(cell.flatten(), minlength=k * k + 1)[: k * k].reshape(k, k).cpu()


def argmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K, ...) -> (N, ...)`` index of the largest logit (the first on ties), as ``argmax(1)``.

    One pass per class over contiguous planes: ``argmax`` over a short strided dimension is an
    order of magnitude slower on CPU for 4x super-resolution maps.
    """
    best, pred = logits[:, 0], torch.zeros(logits[:, 0].shape, dtype=torch.long, device=logits.device)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        best = torch.where(better, logits[:, c], best)
        pred = torch.where(better, c, pred)
    return pred


def iou_from_confusion(cm: torch.Tensor) -> list[float]:
    """Per-class IoU ``tp / (tp + fp + fn)``; NaN for a class absent from labels and predictions."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(a / b) if b > 0 else math.nan for a, b in zip(tp.tolist(), union.tolist())]


class SegmentationMeter:
    """Accumulates one confusion matrix over batches of logits and labels."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = -1) -> None:
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        k = len(self.class_names)
        self.cm = torch.zeros(k, k, dtype=torch.int64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``logits (N, K, H, W)``, ``labels (N, H, W)``."""
        self.cm += confusion_matrix(argmax_classes(logits), labels, len(self.class_names), self.ignore_index)

    def compute(self) -> dict[str, float]:
        """``iou_<class>`` per class, ``miou`` (mean over classes present), ``accuracy``, ``pixels``."""
        iou = iou_from_confusion(self.cm)
        valid = [v for v in iou if not math.isnan(v)]
        total = int(self.cm.sum())
        out = {f"iou_{name}": v for name, v in zip(self.class_names, iou)}
        out["miou"] = sum(valid) / len(valid) if valid else math.nan
        out["accuracy"] = float(self.cm.diag().sum()) / total if total else math.nan
        out["pixels"] = total
        return out


class MultilabelMeter:
    """Accumulates scores and 0/1 targets; micro and macro average precision."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        k = len(self.class_names)
        self.micro = MultilabelAveragePrecision(num_labels=k, average="micro")
        self.per_class = MultilabelAveragePrecision(num_labels=k, average="none")
        self.positives = torch.zeros(k, dtype=torch.int64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``logits (N, K)``, ``labels (N, K)`` of 0/1."""
        scores, target = logits.detach().float().sigmoid().cpu(), labels.long().cpu()
        self.micro.update(scores, target)
        self.per_class.update(scores, target)
        self.positives += target.sum(0)

    def compute(self) -> dict[str, float]:
        """``map_micro``, ``map_macro`` (mean over classes with a positive test sample), ``ap_<class>``.

        A class without positives in the test set has no average precision (NaN) and is left out
        of the macro mean (torchmetrics would count it as 0 with a warning).
        """
        per = self.per_class.compute().tolist()
        per = [v if n > 0 else math.nan for v, n in zip(per, self.positives.tolist())]
        valid = [v for v in per if not math.isnan(v)]
        out = {f"ap_{name}": v for name, v in zip(self.class_names, per)}
        out["map_micro"] = float(self.micro.compute())
        out["map_macro"] = sum(valid) / len(valid) if valid else math.nan
        return out
