"""The robustness evaluation's outputs: table (Markdown, CSV), ``robustness.json`` and plots.

Rows are method x input, columns the conditions (clean, each S1 shift, each cloud fraction);
a cell is the task's headline metric x 100, mean ± sample std over the seeds (as in
:mod:`.table`). A blank cell is a condition that does not apply: the encoder has no patch
embedding for a sensor the input needs, or the degradation does not touch that input.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from s12mae.evaluation.robustness_config import RobustnessConfig
from s12mae.evaluation.runner import json_safe
from s12mae.evaluation.table import NOT_CONVERGED, _cell
from s12mae.evaluation.tasks import EvalTask
from s12mae.files import atomic_write

__all__ = ["column_name", "slug", "write_report"]

COLORS = {"s2": "C0", "s1": "C1", "both": "C2"}
"""One colour per input in every plot."""


def slug(name: str) -> str:
    """A method name as a file name (``MixMAE (ours)`` -> ``MixMAE_ours``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "method"


def column_name(kind: str, level: float) -> str:
    """Header of a condition: ``clean``, ``S1 shift 2 px``, ``cloud 25%``."""
    if kind == "clean":
        return "clean"
    return f"S1 shift {int(level)} px" if kind == "shift" else f"cloud {100 * level:g}%"


def _rows(cfg: RobustnessConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, input and condition: values over seeds, mean, std (x 100), applicable."""
    rows = []
    for method in cfg.checkpoints:
        for inp in cfg.inputs:
            mine = [r for r in runs if r["method"] == method and r["input"] == inp]
            applicable = any(r["applicable"] for r in mine)
            wanted = set(cfg.conditions(inp)) if applicable else set()
            for kind, level in cfg.columns():
                values = [r["scores"][f"{kind}:{level}"] for r in mine if (kind, level) in wanted]
                mean, std = _cell(values) if values else (math.nan, math.nan)
                rows.append({"method": method, "checkpoint": cfg.checkpoints[method], "input": inp,
                             "condition": kind, "level": level, "applicable": bool(values), "mean": mean,
                             "std": std, "values": values,
                             "not_converged": sum(1 for r in mine if r.get("converged") is False) if values else 0})
    return rows


def _markdown(cfg: RobustnessConfig, rows: list[dict[str, Any]], note: str) -> str:
    cols = cfg.columns()
    lines = ["| Method | Input | " + " | ".join(column_name(*c) for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for method in cfg.checkpoints:
        for inp in cfg.inputs:
            cells = []
            for kind, level in cols:
                row = next(r for r in rows if (r["method"], r["input"], r["condition"], r["level"]) ==
                           (method, inp, kind, level))
                text = ""
                if row["applicable"]:
                    text = "n/a" if math.isnan(row["mean"]) else f"{row['mean']:.2f}"
                    text += "" if math.isnan(row["std"]) else f" ± {row['std']:.2f}"
                    text += NOT_CONVERGED if row["not_converged"] else ""
                cells.append(text)
            lines.append(f"| {method} | {inp} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{note}\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "checkpoint", "input", "condition", "level", "applicable", "mean", "std", "n", "values",
                     "not_converged"])
    for r in rows:
        fmt = lambda v: "" if math.isnan(v) else f"{v:.4f}"
        writer.writerow([r["method"], r["checkpoint"], r["input"], r["condition"], r["level"], int(r["applicable"]),
                         fmt(r["mean"]), fmt(r["std"]), len(r["values"]),
                         ";".join(f"{100 * v:.4f}" for v in r["values"] if v is not None), r["not_converged"]])
    return buf.getvalue()


def _plot(cfg: RobustnessConfig, rows: list[dict[str, Any]], method: str, ylabel: str, path: Path) -> None:
    """Metric against S1 shift (inputs with S1) and against cloud fraction (inputs with S2)."""
    import matplotlib.pyplot as plt

    from s12mae.viz import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, kind, xlabel in ((axes[0], "shift", "S1 shift against S2 (px)"),
                             (axes[1], "cloud", "cloud-covered fraction of S2")):
        drawn = 0
        for inp in cfg.inputs:
            mine = {(r["condition"], r["level"]): r for r in rows if r["method"] == method and r["input"] == inp}
            points = [(0.0, mine[("clean", 0)])] + [(float(lv), r) for (k, lv), r in mine.items() if k == kind]
            points = [(x, r) for x, r in points if r["applicable"]]
            if len(points) < 2:
                continue
            ax.errorbar([x for x, _ in points], [r["mean"] for _, r in points],
                        yerr=[0.0 if math.isnan(r["std"]) else r["std"] for _, r in points],
                        marker="o", capsize=3, label=inp, color=COLORS[inp])
            drawn += 1
        ax.set_xlabel(xlabel)
        if drawn:
            ax.legend(title="input")
        else:
            ax.text(0.5, 0.5, "not applicable", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(f"{method}: {cfg.task}, frozen encoder, head trained on clean data")
    save_figure(fig, path)


def write_report(cfg: RobustnessConfig, task: EvalTask, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``robustness.md``, ``.csv``, ``.json`` and ``<method>.png`` into ``cfg.out_dir``;
    return the content of ``robustness.json``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(cfg, runs)
    simulated = "simulated" in task.source
    note = (f"{task.headline} x 100 on {cfg.task} ({'SIMULATED data: a smoke check, not results' if simulated else task.source}), "
            f"mean ± sample std over seed(s) {list(cfg.seeds)}. Frozen encoders; each head is trained once per method, "
            "input and seed on clean data and tested under every condition. Inputs: s2, s1 (S1 GRD), both (one "
            f"fixed complementary mix of L/2 S2 and L/2 S1 tokens, seed {cfg.mix_seed}). S1 shifted down and right "
            "against S2 and the labels; clouds simulated on the S2 image. Blank: not applicable (the encoder has "
            f"no patch embedding for a sensor of that input, or the degradation does not touch it). "
            f"{NOT_CONVERGED}: a head flagged as not converged. Task: {task.notes}.")
    atomic_write(out / "robustness.md", _markdown(cfg, rows, note))
    atomic_write(out / "robustness.csv", _csv(rows))
    ylabel = f"test {task.headline} x 100"
    for method in cfg.checkpoints:
        _plot(cfg, rows, method, ylabel, out / f"{slug(method)}.png")
    result = {"task": cfg.task, "source": task.source, "headline": task.headline, "note": note, "rows": rows,
              "runs": runs, "config": asdict(cfg)}
    atomic_write(out / "robustness.json", json.dumps(json_safe(result), indent=1, allow_nan=False))
    return result
