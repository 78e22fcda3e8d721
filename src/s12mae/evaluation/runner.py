"""One downstream run: encoder + new head on a task, frozen or finetuned, then test metrics.

``run_evaluation(cfg)`` builds the task (with a validation split: the dataset's own, or a
held-out part of train), the encoder and a new head; frozen runs compute every split's features
once; the head's input is standardised with training-set statistics; :func:`~s12mae.evaluation.fitting.fit`
trains, validates and selects; the selected state is tested once; a closed-form ridge probe on
the same features is scored beside it (frozen). ``metrics.json``, ``predictions.png`` and
``curves.png`` are written atomically into ``cfg.out_dir``. :func:`evaluate` is the entry point
(an :class:`~s12mae.evaluation.config.EvalConfig` in, ``metrics.json``'s content out).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from s12mae.evaluation.config import EvalConfig
from s12mae.evaluation.features import PixelEncoder, encode_split, feature_bytes
from s12mae.evaluation.fitting import FitResult, Split, fit, param_groups, score
from s12mae.evaluation.heads import EvalModel, InputAdapter, build_head, plan_input
from s12mae.evaluation.tasks import EvalTask, build_task, describe, with_validation
from s12mae.files import atomic_write, undo_outputs_on_failure
from s12mae.models.vit import ENCODERS, ViTEncoder, build_encoder
from s12mae.runtime import autocast_context, resolve_device
from s12mae.train.loggers import open_sinks
from s12mae.sensors import SensorSpec, get_sensor

__all__ = ["build_model", "evaluate", "json_safe", "load_eval_encoder", "param_groups", "prepare_splits", "run_evaluation"]

STATS_SAMPLES = 4096
"""Uncached runs (finetune, or features too big to keep): the head's standardisation statistics
come from about this many training samples, evenly spaced over the split (ours)."""


def load_eval_encoder(cfg: EvalConfig, size: tuple[int, int], spec: SensorSpec) -> ViTEncoder | PixelEncoder:
    """The encoder of ``cfg.checkpoint``: an ``encoder.safetensors`` file, a fresh random one, or
    ``pixels`` (no encoder; patches of the random encoder's patch size, in the task's bands)."""
    if cfg.checkpoint == "pixels":
        return PixelEncoder(spec.key, spec.num_channels, ENCODERS[cfg.random_encoder].patch_size)
    if cfg.checkpoint == "random":
        p = ENCODERS[cfg.random_encoder].patch_size
        side = max(p, round(max(size) / p) * p)
        torch.manual_seed(cfg.seed)
        chans = get_sensor(cfg.random_sensor, cfg.data.stats).num_channels
        return build_encoder(cfg.random_encoder, {cfg.random_sensor: chans}, side)
    from s12mae.export import load_encoder

    if not Path(cfg.checkpoint).is_file():
        raise ValueError(f"checkpoint {cfg.checkpoint}: file not found (give an encoder.safetensors, 'random' "
                         "or 'pixels')")
    return load_encoder(cfg.checkpoint)


def build_model(cfg: EvalConfig, task: EvalTask) -> EvalModel:
    """Encoder of ``cfg.checkpoint`` + a new head for ``task``, set up for ``cfg.scenario``.

    The head's standardisation starts as the identity; :func:`prepare_splits` sets it.
    """
    first = task.train[0]
    if task.sensor not in first:
        raise ValueError(f"{task.source}: samples have no {task.sensor!r} entry; they hold {sorted(first)}")
    size = tuple(first[task.sensor].shape[-2:])
    encoder = load_eval_encoder(cfg, size, task.spec)
    plan = plan_input(encoder, task.spec, size, cfg.data, cfg.checkpoint)
    grid = encoder.patch_grid(*plan.size)
    torch.manual_seed(cfg.seed)
    head = build_head(task.kind, cfg.head, encoder, grid, task.num_classes, task.label_scale)
    out_size = None
    if task.kind == "segmentation":
        out_size = (size[0] * task.label_scale, size[1] * task.label_scale)
    return EvalModel(encoder, head, InputAdapter(plan), frozen=cfg.scenario == "frozen", out_size=out_size)


def json_safe(obj: Any) -> Any:
    """NaN (an undefined metric, e.g. IoU of a class absent from the test set) -> ``null``."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj




def _with_encoder_stats(cfg: EvalConfig) -> EvalConfig:
    """Without ``data.stats``, standardise with the statistics recorded in the encoder file."""
    if cfg.data.stats is not None or cfg.checkpoint == "random" or not Path(cfg.checkpoint).is_file():
        return cfg
    from s12mae.export import encoder_stats
    from s12mae.sensors import write_stats

    stats = encoder_stats(cfg.checkpoint)
    if not stats:
        return cfg
    path = Path(cfg.out_dir) / "encoder_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stats(path, stats)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, stats=str(path)))


@torch.no_grad()
def _fit_standardize(cfg: EvalConfig, task: EvalTask, model: EvalModel, train: Split, device: torch.device,
                     autocast: Any) -> None:
    """Set the head's standardisation from the training split (cached, or up to STATS_SAMPLES)."""
    norm = model.head.norm
    if not hasattr(norm, "fit"):
        return
    if train.cached is not None:
        norm.fit(f for f, _ in train.cached.batches(cfg.eval_batch_size))
        return
    subset = torch.utils.data.Subset(train.dataset, range(0, len(train), max(1, len(train) // STATS_SAMPLES)))  # spread over the split
    was_training = model.training
    model.eval()

    def feats():
        for batch in DataLoader(subset, batch_size=cfg.eval_batch_size, shuffle=False):
            task.check_batch(batch, "train")
            with autocast:
                yield model.features(batch[task.sensor].to(device)).float()

    norm.fit(feats())
    model.train(was_training)


def prepare_splits(cfg: EvalConfig, task: EvalTask, model: EvalModel, device: torch.device,
                   autocast: Any = None) -> dict[str, Split]:
    """``train``, ``val`` and ``test`` as the loop reads them, and the head's standardisation set.

    A frozen model's features are computed once per split and kept on ``device`` when all three
    fit in ``cfg.fit.cache_gb``; otherwise (and when finetuning) they are computed every step.
    """
    autocast = autocast or nullcontext()
    datasets = {"train": task.train, "val": task.val, "test": task.test}
    cache = False
    if model.frozen and cfg.fit.cache_gb > 0:
        sample = task.train[0]
        task.check_batch(default_collate([sample]), "train")
        with torch.no_grad():
            one = model.features(sample[task.sensor][None].to(device))[0]
        need = feature_bytes(one, sample["label"], sum(len(d) for d in datasets.values()))
        cache = need <= cfg.fit.cache_gb * 1e9
    splits = {name: Split(name, ds, encode_split(model, ds, task, name, cfg.eval_batch_size, device, autocast)
                          if cache else None) for name, ds in datasets.items()}
    _fit_standardize(cfg, task, model, splits["train"], device, autocast)
    return splits


def _summary(history: list[dict[str, float]], key: str, points: int = 100) -> list[list[float]]:
    """``[[step, value], ...]`` at most ``points`` long (every k-th record, the last one kept)."""
    stride = max(len(history) // points, 1)
    picked = history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])
    return [[r["step"], r[key]] for r in picked]


def _training_record(cfg: EvalConfig, fitted: FitResult, val_how: str, cached: bool) -> dict[str, Any]:
    return {
        "steps": len(fitted.history), "first_loss": fitted.history[0]["loss"], "final_loss": fitted.history[-1]["loss"],
        "loss": _summary(fitted.history, "loss"),
        "val_loss": [[r["step"], r["loss"]] for r in fitted.val],
        "val_metric": [[r["step"], r["metric"]] for r in fitted.val],
        "selected": {"by": cfg.fit.select, **fitted.selected}, "validation": val_how,
        "converged": fitted.converged, "late_rate": round(fitted.late_rate, 4), "features_cached": cached,
    }


def checkpoint_sha256(checkpoint: str) -> str | None:
    """SHA-256 of the encoder file (``None`` for ``random``/``pixels``): a table reuses a finished
    run only for the same file content, not just the same path."""
    if not Path(checkpoint).is_file():
        return None
    from s12mae.evaluation.saved_model import file_sha256

    return file_sha256(checkpoint)


def _stats_used(cfg: EvalConfig, task: EvalTask) -> dict[str, dict[str, str]]:
    """Which statistics standardised the task's input, found by comparing them with the statistics
    file's (it may cover other sensors only: the rest fall back) and the shipped ones."""
    from s12mae.sensors import load_stats

    tables = ([(str(cfg.data.stats), load_stats(cfg.data.stats))] if cfg.data.stats else [])
    for name, table in [*tables, ("shipped defaults", load_stats(None))]:
        for key in dict.fromkeys([task.sensor, *table]):  # the task's own sensor first
            if all(table.get(key, {}).get(b) == s for b, s in task.spec.stats.items()):
                return {task.sensor: {"file": name, "sensor": key}}
    return {task.sensor: {"file": "the task's own", "sensor": task.sensor}}


@undo_outputs_on_failure(lambda cfg, *args, **kwargs: cfg.out_dir)  # a failed evaluation leaves no partial outputs
def run_evaluation(cfg: EvalConfig, task: EvalTask | None = None) -> dict[str, Any]:
    """Train a new head (frozen) or head + encoder (finetune), select it on validation, test it.

    Args:
        cfg: the run.
        task: an already built task (default: ``build_task(cfg.task, cfg.data)``).

    Returns:
        The content of ``metrics.json``: ``headline`` (``{"name", "value"}``, the selected
        state's test score), ``metrics`` (all test metrics), ``ridge`` (frozen: the closed-form
        probe, or ``None``), ``warnings`` (e.g. not converged), ``task``, ``stats`` (per input sensor, the ``file`` and
        ``sensor`` whose statistics standardised it), ``encoder`` (input
        plan, parameter counts), ``train`` (loss curves, validation curve, selected step,
        convergence, seconds) and the resolved ``config``.
    """
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if task is None:
        cfg = _with_encoder_stats(cfg)
        task = build_task(cfg.task, cfg.data)
    if task.name != cfg.task:
        raise ValueError(f"config names task {cfg.task!r} but the given task is {task.name!r}")
    task, val_how = with_validation(task, cfg.data.val_fraction)
    device = resolve_device(cfg.device)
    autocast = autocast_context(device, cfg.precision)
    model = build_model(cfg, task).to(device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    splits = prepare_splits(cfg, task, model, device, autocast)
    sinks = open_sinks(cfg.logger, out, cfg.to_dict())
    try:
        fitted = fit(cfg, task, model, splits["train"], splits["val"], device, autocast, log=sinks.log)
        _, metrics = score(task, model, splits["test"], cfg.eval_batch_size, device, autocast)
        sinks.log({"step": int(fitted.selected.get("step", 0)), "task": "test", **metrics})
    finally:
        sinks.close()
    ridge = None
    if cfg.ridge and cfg.scenario == "frozen" and all(s.cached is not None for s in splits.values()):
        from s12mae.evaluation.probes import ridge_probe

        ridge = ridge_probe(task, model, splits["train"].cached, splits["val"].cached, splits["test"].cached)
    if cfg.checkpoint != "pixels":  # the trained head, for `s12mae predict` (a pixels baseline has no encoder)
        from s12mae.evaluation.saved_model import save_eval_model

        save_eval_model(out, model, cfg, task)

    plan = model.adapter.plan
    count = lambda m: sum(p.numel() for p in m.parameters())
    warnings = [f"{task.name} {cfg.scenario} {cfg.checkpoint}: {fitted.warning}"] if fitted.warning else []
    result = {
        "headline": {"name": task.headline, "value": metrics[task.headline]},
        "data_note": "SIMULATED data: a smoke check, not results" if "simulated" in task.source else task.source,
        "metrics": metrics,
        "ridge": ridge,
        "warnings": warnings,
        "task": describe(task),
        "scenario": cfg.scenario,
        "checkpoint": cfg.checkpoint,
        "checkpoint_sha256": checkpoint_sha256(cfg.checkpoint),
        "stats": _stats_used(cfg, task),
        "encoder": {"sensor": plan.encoder_sensor, "filled_bands": list(plan.filled), "input_size": list(plan.size),
                    "task_size": list(plan.task_size), "patch_size": model.encoder.patch_size,
                    "params": count(model.encoder), "head_params": count(model.head),
                    "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "train": {**_training_record(cfg, fitted, val_how, splits["train"].cached is not None),
                  "seconds": round(time.perf_counter() - t0, 2), "device": str(device)},
        "config": cfg.to_dict(),
    }
    if cfg.num_plot:
        _plot(cfg, task, model, device, autocast, out, result)
    atomic_write(out / "metrics.json", json.dumps(json_safe(result), indent=1, allow_nan=False))
    for line in warnings:
        print(f"WARNING: {line}", file=sys.stderr, flush=True)
    if cfg.progress:
        extra = f" (ridge {ridge['headline']['value']:.4f})" if ridge else ""
        print(f"eval {task.name} {cfg.scenario} {cfg.checkpoint}: {task.headline}={metrics[task.headline]:.4f}"
              f"{extra} at step {int(fitted.selected.get('step', 0))} -> {out / 'metrics.json'}", flush=True)
    return result


@torch.no_grad()
def _plot(cfg: EvalConfig, task: EvalTask, model: nn.Module, device: torch.device, autocast: Any, out: Path,
          result: dict[str, Any]) -> None:
    from s12mae.evaluation.plots import plot_curves, plot_predictions

    batch = default_collate([task.test[i] for i in range(min(cfg.num_plot, len(task.test)))])
    model.eval()
    with autocast:
        logits = model(batch[task.sensor].to(device))
    head = result["headline"]
    name = Path(cfg.checkpoint).parent.name if cfg.checkpoint not in ("random", "pixels") else cfg.checkpoint
    title = f"{task.name} ({task.source}), {cfg.scenario}, {name or cfg.checkpoint}"
    plot_predictions(task, batch[task.sensor], batch["label"], logits.float().cpu(), out / "predictions.png",
                     f"{title}: test {head['name']} = {head['value']:.3f}")
    plot_curves(result["train"], task.headline, out / "curves.png", title)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate one encoder on one task in one scenario (the ``s12mae evaluate`` entry point).

    Writes ``metrics.json``, ``predictions.png`` and ``curves.png`` into ``cfg.out_dir``;
    returns the content of ``metrics.json`` (see :func:`run_evaluation`).
    """
    return run_evaluation(cfg)
