"""The paper's Table 2: methods x scenarios x tasks x seeds, as Markdown and CSV.

Rows are Scenario x Model, columns are tasks; each cell is the task's headline metric x 100,
mean ± sample standard deviation over the seeds (``n = 1``: the mean alone). Every table has the
baseline rows ``pixels`` (the head on raw standardised patch pixels, no encoder) and
``random init`` (an untrained encoder), and, from the frozen runs, a ``Ridge`` block: the
closed-form ridge probe on the same frozen features, a check that no head-training protocol can
spoil. A cell marked ``†`` holds a run whose validation loss was still falling at the end.
Every run keeps its own folder ``runs/<scenario>/<model>/<task>/seed<seed>/`` with
``metrics.json``, ``predictions.png`` and ``curves.png``; a run whose ``metrics.json`` holds the
same config is reused, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s12mae.evaluation.config import EvalConfig, TableConfig
from s12mae.evaluation.runner import checkpoint_sha256, json_safe, run_evaluation
from s12mae.evaluation.tasks import build_task
from s12mae.files import atomic_write

__all__ = ["TASK_TITLES", "format_table", "table"]

TASK_TITLES = {"bigearthnet": "BEN", "sen1floods11": "Sen1Floods", "srseg": "SRSeg (UrbanSRSeg8-style)"}
METRIC_TITLES = {"map_micro": "mAP micro", "iou_water": "IoU water", "miou": "mIoU"}
SCENARIO_TITLES = {"finetune": "Finetune", "frozen": "Frozen", "ridge": "Ridge (closed form)"}
NOT_CONVERGED = "†"


def _cell(values: list[float]) -> tuple[float, float]:
    vals = [100.0 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def format_table(rows: list[dict[str, Any]], tasks: Sequence[str], headlines: Mapping[str, str],
                 note: str = "") -> tuple[str, str]:
    """Markdown and CSV text of the grid.

    Args:
        rows: one dict per (scenario, model, task) with ``values`` (headline per seed, 0-1 scale)
            and optionally ``not_converged`` (how many of its runs were flagged; cells get ``†``).
        tasks: column order.
        headlines: task -> headline metric name.
        note: line printed under the Markdown table.
    """
    cells: dict[tuple[str, str, str], tuple[float, float, int]] = {}
    flagged = {(r["scenario"], r["model"], r["task"]): r.get("not_converged", 0) for r in rows}
    order: list[tuple[str, str]] = []
    for r in rows:
        mean, std = _cell(r["values"])
        finite = sum(v is not None and not math.isnan(v) for v in r["values"])  # the seeds _cell averages
        cells[(r["scenario"], r["model"], r["task"])] = (mean, std, finite)
        if (r["scenario"], r["model"]) not in order:
            order.append((r["scenario"], r["model"]))
    best = {}
    for (scen, _, task), (mean, _, _) in cells.items():
        if not math.isnan(mean):
            best[(scen, task)] = max(best.get((scen, task), -math.inf), mean)

    head = ["Scenario", "Model"] + [f"{TASK_TITLES.get(t, t)} ({METRIC_TITLES.get(headlines[t], headlines[t])})"
                                    for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous = None
    for scen, model in order:
        out = [SCENARIO_TITLES.get(scen, scen.capitalize()) if scen != previous else "", model]
        previous = scen
        for t in tasks:
            mean, std, n = cells.get((scen, model, t), (math.nan, math.nan, 0))
            text = "n/a" if math.isnan(mean) else f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")
            if not math.isnan(mean) and mean == best.get((scen, t)) and len(order) > 1:
                text = f"**{text}**"
            if flagged.get((scen, model, t)):
                text += f" {NOT_CONVERGED}"
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    markdown = "\n".join(lines) + "\n"
    if note:
        markdown += f"\n{note}\n"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scenario", "model", "task", "metric", "mean", "std", "n", "values", "not_converged"])
    for scen, model in order:
        for t in tasks:
            if (scen, model, t) not in cells:
                continue
            mean, std, n = cells[(scen, model, t)]
            values = next(r["values"] for r in rows if (r["scenario"], r["model"], r["task"]) == (scen, model, t))
            writer.writerow([scen, model, t, headlines[t], f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}", n,
                             ";".join(f"{100 * v:.4f}" for v in values), flagged.get((scen, model, t), 0)])
    return markdown, buf.getvalue()


def _reusable(path: Path, cfg: EvalConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("config") != json.loads(json.dumps(cfg.to_dict())):
        return None
    return old if old.get("checkpoint_sha256") == checkpoint_sha256(cfg.checkpoint) else None  # retrained? rerun


def _value(record: dict[str, Any] | None) -> float:
    value = None if record is None else record["headline"]["value"]
    return math.nan if value is None else value


def _note(cfg: TableConfig, sources: list[str], flagged: int) -> str:
    metrics = {"bigearthnet": "BEN: micro mAP", "sen1floods11": "Sen1Floods: IoU of the water class",
               "srseg": "SRSeg: mIoU"}
    named = "; ".join(metrics[t] for t in cfg.tasks if t in metrics)
    note = (f"Headline metric x 100, mean ± sample std over {len(cfg.seeds)} seed(s) {list(cfg.seeds)}; best per "
            f"scenario in bold. {named + '. ' if named else ''}Baselines: pixels "
            "= the same head on raw standardised patch pixels (no encoder); random init = an untrained encoder. "
            "Ridge (closed form) = a ridge probe on the frozen, standardised features, penalty chosen on "
            f"validation. Heads are selected on validation, tested once. Data: {'; '.join(sources)}.")
    if flagged:
        note += (f" {NOT_CONVERGED} = at least one run of the cell was still improving at the end ({flagged} run(s)); "
                 "its number understates what the features allow (see the run's "
                 f"{'curves.png' if cfg.run.num_plot else 'metrics.json, train.val_loss'}).")
    if any("simulated" in s for s in sources):
        note += " SIMULATED data: a smoke check of the pipeline, not results."
    return note


def table(cfg: TableConfig) -> dict[str, Any]:
    """Run the grid models x scenarios x tasks x seeds and write Table 2 (the ``s12mae table`` entry point).

    Returns:
        ``{"markdown", "csv", "rows", "runs"}``: the table texts, one row per
        (scenario, model, task) with the per-seed headline values, and every run's headline.
    """
    task_objs = {t: build_task(t, cfg.run.data) for t in cfg.tasks}  # built once, shared by every run
    root = Path(cfg.out_dir)
    rows: list[dict[str, Any]] = []
    ridge_rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for scen in cfg.scenarios:
        for model, ckpt in cfg.rows().items():
            for t in cfg.tasks:
                values, ridge, flagged = [], [], 0
                for seed in cfg.seeds:
                    run = dataclasses.replace(
                        cfg.run, task=t, scenario=scen, checkpoint=ckpt, seed=seed,
                        out_dir=str(root / "runs" / scen / model / t / f"seed{seed}"),
                        fit=dataclasses.replace(cfg.run.fit, steps=(cfg.steps or {}).get(t, cfg.run.fit.steps)))
                    result = _reusable(Path(run.out_dir) / "metrics.json", run) or run_evaluation(run, task_objs[t])
                    values.append(_value(result))
                    ridge.append(_value(result.get("ridge")))
                    converged = result["train"].get("converged", True)
                    flagged += not converged
                    runs.append({"scenario": scen, "model": model, "task": t, "seed": seed,
                                 "metric": result["headline"]["name"], "value": result["headline"]["value"],
                                 "ridge": result["ridge"]["headline"]["value"] if result.get("ridge") else None,
                                 "converged": converged, "run_dir": run.out_dir})
                rows.append({"scenario": scen, "model": model, "task": t, "values": values, "not_converged": flagged})
                if scen == "frozen" and not all(math.isnan(v) for v in ridge):
                    ridge_rows.append({"scenario": "ridge", "model": model, "task": t, "values": ridge})
    rows += ridge_rows
    headlines = {t: task_objs[t].headline for t in cfg.tasks}
    flagged = sum(not r["converged"] for r in runs)
    note = _note(cfg, sorted({task_objs[t].source for t in cfg.tasks}), flagged)
    markdown, csv_text = format_table(rows, cfg.tasks, headlines, note)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / "table.md", markdown)
    atomic_write(root / "table.csv", csv_text)
    atomic_write(root / "table.json", json.dumps(json_safe({"rows": rows, "runs": runs, "note": note}), indent=1,
                                                 allow_nan=False))
    return {"markdown": markdown, "csv": csv_text, "rows": rows, "runs": runs}
