"""The paper's Table 2: methods x scenarios x tasks x seeds, as Markdown and CSV.

Rows are Scenario x Model, columns are tasks; each cell is the task's headline metric x 100,
mean ± sample standard deviation over the seeds (``n = 1``: the mean alone). Every run keeps its
own folder ``runs/<scenario>/<model>/<task>/seed<seed>/`` with ``metrics.json`` and
``predictions.png``; a run whose ``metrics.json`` holds the same config is reused, so an
interrupted grid continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s12mae.config import OptimConfig
from s12mae.evaluation.config import SCENARIOS, EvalConfig, EvalDataConfig, HeadConfig
from s12mae.evaluation.runner import run_evaluation
from s12mae.evaluation.tasks import build_task
from s12mae.files import atomic_write

__all__ = ["TASK_TITLES", "format_table", "table"]

TASK_TITLES = {"bigearthnet": "BEN", "sen1floods11": "Sen1Floods", "srseg": "SRSeg (UrbanSRSeg8-style)"}
METRIC_TITLES = {"map_micro": "mAP micro", "iou_water": "IoU water", "miou": "mIoU"}


def _cell(values: list[float]) -> tuple[float, float]:
    vals = [100.0 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def format_table(rows: list[dict[str, Any]], tasks: Sequence[str], headlines: Mapping[str, str],
                 note: str = "") -> tuple[str, str]:
    """Markdown and CSV text of the grid.

    Args:
        rows: one dict per (scenario, model, task) with ``values`` (headline per seed, 0-1 scale).
        tasks: column order.
        headlines: task -> headline metric name.
        note: line printed under the Markdown table.
    """
    cells: dict[tuple[str, str, str], tuple[float, float, int]] = {}
    order: list[tuple[str, str]] = []
    for r in rows:
        mean, std = _cell(r["values"])
        cells[(r["scenario"], r["model"], r["task"])] = (mean, std, len(r["values"]))
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
        out = [scen.capitalize() if scen != previous else "", model]
        previous = scen
        for t in tasks:
            mean, std, n = cells.get((scen, model, t), (math.nan, math.nan, 0))
            text = "n/a" if math.isnan(mean) else f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")
            if not math.isnan(mean) and mean == best.get((scen, t)) and len(order) > 1:
                text = f"**{text}**"
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    markdown = "\n".join(lines) + "\n"
    if note:
        markdown += f"\n{note}\n"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scenario", "model", "task", "metric", "mean", "std", "n", "values"])
    for scen, model in order:
        for t in tasks:
            if (scen, model, t) not in cells:
                continue
            mean, std, n = cells[(scen, model, t)]
            values = next(r["values"] for r in rows if (r["scenario"], r["model"], r["task"]) == (scen, model, t))
            writer.writerow([scen, model, t, headlines[t], f"{mean:.4f}", "" if math.isnan(std) else f"{std:.4f}", n,
                             ";".join(f"{100 * v:.4f}" for v in values)])
    return markdown, buf.getvalue()


def _reusable(path: Path, cfg: EvalConfig) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return old if old.get("config") == json.loads(json.dumps(cfg.to_dict())) else None


def table(
    checkpoints: dict[str, str],
    scenarios: Sequence[str] = ("finetune", "frozen"),
    tasks: Sequence[str] = ("bigearthnet", "sen1floods11", "srseg"),
    seeds: Sequence[int] = (0,),
    out_dir: str = "runs/table",
    steps: int | dict[str, int] = 500,
    batch_size: int = 32,
    lr: float = 1e-2,
    optimizer: str = "adafactor",
    warmup_steps: int = 10,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    head: HeadConfig | None = None,
    data: EvalDataConfig | None = None,
    random_encoder: str = "vit_base_patch16",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    num_plot: int = 4,
) -> dict[str, Any]:
    """Run the grid methods x scenarios x tasks x seeds and write Table 2.

    Args:
        checkpoints: model name -> ``encoder.safetensors`` path (or ``random``), in row order,
            e.g. ``{"Baseline": "runs/mae/encoder.safetensors", "AuxMAE": ...}``.
        scenarios: ``finetune`` and/or ``frozen``, in row order.
        tasks: task names, in column order.
        seeds: seeds of every cell (head init, random encoder, sample order).
        out_dir: writes ``table.md``, ``table.csv``, ``table.json`` and ``runs/...``.
        steps: optimizer steps, one number or per task (``{"srseg": 10000, ...}``).
        batch_size, lr, optimizer, warmup_steps, weight_decay, layer_decay, head, data,
        random_encoder, device, threads, progress: as in :func:`s12mae.evaluation.evaluate`.
        num_plot: test samples drawn in each run's ``predictions.png``.

    Returns:
        ``{"markdown", "csv", "rows", "runs"}``: the table texts, one row per
        (scenario, model, task) with the per-seed headline values, and every run's headline.
    """
    if not checkpoints:
        raise ValueError("table: give at least one checkpoint (name -> encoder.safetensors or 'random')")
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        raise ValueError(f"table: unknown scenario(s) {bad}; known: {list(SCENARIOS)}")
    if not seeds or not tasks or not scenarios:
        raise ValueError("table: scenarios, tasks and seeds must not be empty")
    data = data or EvalDataConfig()
    head = head or HeadConfig()
    task_objs = {t: build_task(t, data) for t in tasks}  # built once, shared by every run
    per_task_steps = steps if isinstance(steps, dict) else {t: steps for t in tasks}
    missing = [t for t in tasks if t not in per_task_steps]
    if missing:
        raise ValueError(f"table: steps has no entry for task(s) {missing}")
    root = Path(out_dir)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for scen in scenarios:
        for model, ckpt in checkpoints.items():
            for t in tasks:
                values = []
                for seed in seeds:
                    cfg = EvalConfig(
                        task=t, scenario=scen, checkpoint=ckpt,  # type: ignore[arg-type]
                        out_dir=str(root / "runs" / scen / model / t / f"seed{seed}"),
                        steps=per_task_steps[t], batch_size=batch_size, seed=seed, layer_decay=layer_decay,
                        random_encoder=random_encoder, device=device, threads=threads, progress=progress,
                        num_plot=num_plot, head=head, data=data,
                        optim=OptimConfig(name=optimizer, lr=lr, warmup_steps=warmup_steps,  # type: ignore[arg-type]
                                          weight_decay=weight_decay),
                    )
                    result = _reusable(Path(cfg.out_dir) / "metrics.json", cfg) or run_evaluation(cfg, task_objs[t])
                    value = result["headline"]["value"]
                    values.append(math.nan if value is None else value)
                    runs.append({"scenario": scen, "model": model, "task": t, "seed": seed,
                                 "metric": result["headline"]["name"], "value": value, "run_dir": cfg.out_dir})
                rows.append({"scenario": scen, "model": model, "task": t, "values": values})
    headlines = {t: task_objs[t].headline for t in tasks}
    sources = sorted({task_objs[t].source for t in tasks})
    note = (f"Headline metric x 100, mean ± sample std over {len(seeds)} seed(s) {list(seeds)}; best per scenario "
            f"in bold. BEN: micro mAP; Sen1Floods: IoU of the water class; SRSeg: mIoU. Data: {'; '.join(sources)}.")
    if any("simulated" in s for s in sources):
        note += " SIMULATED data: a smoke check of the pipeline, not results."
    markdown, csv_text = format_table(rows, tasks, headlines, note)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / "table.md", markdown)
    atomic_write(root / "table.csv", csv_text)
    out = {"markdown": markdown, "csv": csv_text, "rows": rows, "runs": runs}
    atomic_write(root / "table.json", json.dumps({"rows": rows, "runs": runs, "note": note}, indent=1))
    return out
