"""Pictures of a downstream run: predictions against labels for a few test samples; loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap

from s12mae.evaluation.tasks import EvalTask
from s12mae.viz import save_figure

__all__ = ["plot_curves", "plot_predictions"]


def _class_colors(k: int) -> ListedColormap:
    base = plt.get_cmap("tab10" if k <= 10 else "tab20")
    # index 0 = ignored pixels (grey); class c is colour c + 1
    return ListedColormap([(0.6, 0.6, 0.6, 1.0)] + [base(i % base.N) for i in range(k)])


def _plot_segmentation(task: EvalTask, x: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, title: str):
    n, k = x.shape[0], task.num_classes
    cmap = _class_colors(k)
    pred = logits.argmax(1)
    fig, axes = plt.subplots(n, 3, figsize=(7.2, 2.4 * n), squeeze=False)
    for row in range(n):
        lab = labels[row].clone()
        lab[lab == task.ignore_index] = -1
        panels = [
            ("input RGB (B04, B03, B02)", task.spec.to_display(x[row]).numpy(), {}),
            ("label (grey: ignored)", (lab + 1).numpy(), {"cmap": cmap, "vmin": 0, "vmax": k}),
            ("prediction", (pred[row] + 1).numpy(), {"cmap": cmap, "vmin": 0, "vmax": k}),
        ]
        for col, (name, img, kw) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(c + 1)) for c in range(k)]
    fig.legend(handles, task.class_names, loc="lower center", ncol=min(k, 6), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def _plot_multilabel(task: EvalTask, labels: torch.Tensor, logits: torch.Tensor, title: str):
    n, k = labels.shape
    probs = logits.float().sigmoid()
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 1.0, 0.28 * k + 1.6), squeeze=False)
    pos = np.arange(k)
    for i in range(n):
        ax = axes[0][i]
        truth = labels[i].bool().numpy()
        ax.barh(pos, probs[i].numpy(), color=np.where(truth, "tab:green", "tab:gray"))
        ax.scatter(np.where(truth, 1.02, np.nan), pos, marker="<", color="tab:green", s=12, clip_on=False)
        ax.axvline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlim(0, 1)
        ax.set_yticks(pos)
        ax.set_yticklabels(task.class_names if i == 0 else [], fontsize=7)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_xlabel("predicted probability", fontsize=7)
        ax.set_title(f"test sample {i}", fontsize=8)
    fig.suptitle(f"{title}\ngreen = true label (arrow), grey = absent", fontsize=9, y=1.02)
    return fig


def plot_predictions(task: EvalTask, x: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
                     out: Path, title: str) -> None:
    """Write ``out``: inputs, labels and predictions of a few test samples (CPU tensors).

    Segmentation: rows of input RGB (through the sensor spec's display bands), label and
    predicted classes. Multi-label: per sample, predicted probabilities with the true labels marked.
    """
    if task.kind == "segmentation":
        fig = _plot_segmentation(task, x, labels, logits, title)
    else:
        fig = _plot_multilabel(task, labels, logits, title)
    save_figure(fig, out)


def plot_curves(train: dict, headline: str, out: Path, title: str) -> None:
    """Write ``out``: training and validation loss per step, the validation headline metric, and
    the selected step (a dotted line); the title says whether the run converged.

    Args:
        train: the ``train`` record of ``metrics.json`` (``loss``, ``val_loss``, ``val_metric``
            as ``[[step, value], ...]``, ``selected``, ``converged``).
        headline: name of the validation metric.
        out: picture path.
        title: first title line.
    """
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for key, name, style in (("loss", "train", "-"), ("val_loss", "validation", "o-")):
        pts = np.asarray(train[key], dtype=float).reshape(-1, 2)
        ax_loss.plot(pts[:, 0], pts[:, 1], style, ms=3, lw=1, label=name)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    pts = np.asarray(train["val_metric"], dtype=float).reshape(-1, 2)
    ax_metric.plot(pts[:, 0], pts[:, 1], "o-", ms=3, lw=1, color="tab:green")
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel(f"validation {headline}")
    step = train.get("selected", {}).get("step")
    if step is not None:
        for ax in (ax_loss, ax_metric):
            ax.axvline(step, color="k", ls=":", lw=0.8)
    state = "converged" if train.get("converged", True) else "NOT converged: validation loss still falling"
    fig.suptitle(f"{title}\nselected step {step} (dotted, by {train.get('selected', {}).get('by')}); {state}",
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
