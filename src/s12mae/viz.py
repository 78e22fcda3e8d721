"""Pictures of a run: loss curves and reconstructions (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from s12mae.files import atomic_path  # noqa: E402
from s12mae.sensors import get_sensor  # noqa: E402

__all__ = ["plot_loss_curve", "plot_reconstructions", "save_figure"]


def save_figure(fig: Any, path: Path) -> None:
    """Save a figure through a temporary file and a rename, then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or None)
    finally:
        plt.close(fig)


def plot_loss_curve(metrics_path: Path, out: Path) -> None:
    """Loss against step, one line per task (and per loss term where a task has several), with
    the held-out loss (records with ``val_loss``) as markers in the task's colour."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    records = [r for r in lines if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        steps = [r["step"] for r in rows]
        losses = np.array([r["loss"] for r in rows])
        line = ax.plot(steps, losses, lw=0.6, alpha=0.35)[0]
        k = max(len(losses) // 20, 1)  # moving average over ~5% of the run
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color=line.get_color(), lw=1.8, label=f"{task}: loss ({k}-step mean)")
        terms = [k for k in rows[0] if k.startswith("loss/")]
        if len(terms) > 1:
            for term in terms:
                ax.plot(steps, [r[term] for r in rows], lw=0.8, ls="--", label=f"{task}: {term[5:]}")
        val = [r for r in lines if "val_loss" in r and r["task"] == task]
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", ms=4, lw=1.2,
                    color=line.get_color(), label=f"{task}: held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE (standardised units)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"pretraining loss ({metrics_path.parent.name})")
    save_figure(fig, out)


def plot_reconstructions(vis: dict[str, Any], out: Path, stats: str | None = None) -> None:
    """Grid of samples (rows) by panels (columns) from a method's ``visualize`` output.

    Each panel is ``(label, sensor, (N, C, H, W) standardised)``; it is shown through the sensor
    spec's display bands (S2 as RGB from B04, B03, B02). NaN marks hidden pixels (grey).
    """
    panels = vis["panels"]
    n = panels[0][2].shape[0]
    fig, axes = plt.subplots(n, len(panels), figsize=(2.2 * len(panels), 2.2 * n), squeeze=False)
    for col, (label, sensor, images) in enumerate(panels):
        spec = get_sensor(sensor, stats)
        for row in range(n):
            x = images[row].detach().float().cpu()
            rgb = spec.to_display(x)
            hidden = torch.isnan(x).all(0)
            rgb[hidden] = 0.5
            ax = axes[row][col]
            ax.imshow(rgb.numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{label}\n({sensor})", fontsize=8)
    fig.suptitle(vis.get("title", ""), fontsize=9)
    save_figure(fig, out)
