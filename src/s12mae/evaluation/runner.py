"""One downstream run: encoder + new head on a task, frozen or finetuned, then test metrics.

``run_evaluation(cfg)`` trains for ``cfg.steps`` optimizer steps on the task's training split
(sample order from :class:`s12mae.data.StepOrder`, keyed by the seed), evaluates the test split
once at the end, and writes ``metrics.json`` and ``predictions.png`` atomically into
``cfg.out_dir``. :func:`evaluate` is the same with plain keyword arguments for the CLI.
"""

from __future__ import annotations

import dataclasses

import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from s12mae.config import OptimConfig
from s12mae.data import task_loader
from s12mae.evaluation.config import EvalConfig, EvalDataConfig, HeadConfig
from s12mae.evaluation.heads import EvalModel, InputAdapter, build_head, plan_input
from s12mae.evaluation.metrics import MultilabelMeter, SegmentationMeter
from s12mae.evaluation.tasks import EvalTask, build_task, describe
from s12mae.models.vit import ENCODERS, ViTEncoder, build_encoder
from s12mae.sensors import get_sensor
from s12mae.files import atomic_write, undo_outputs_on_failure
from s12mae.runtime import autocast_context, no_decay_names, resolve_device, set_lr
from s12mae.train.optim import lr_at

__all__ = ["build_model", "evaluate", "fit", "load_eval_encoder", "param_groups", "run_evaluation"]


def load_eval_encoder(cfg: EvalConfig, size: tuple[int, int]) -> ViTEncoder:
    """The encoder of ``cfg.checkpoint``: an ``encoder.safetensors`` file, or a fresh random one."""
    if cfg.checkpoint == "random":
        p = ENCODERS[cfg.random_encoder].patch_size
        side = max(p, round(max(size) / p) * p)
        torch.manual_seed(cfg.seed)
        chans = get_sensor(cfg.random_sensor, cfg.data.stats).num_channels
        return build_encoder(cfg.random_encoder, {cfg.random_sensor: chans}, side)
    from s12mae.export import load_encoder

    if not Path(cfg.checkpoint).is_file():
        raise ValueError(f"checkpoint {cfg.checkpoint}: file not found (give an encoder.safetensors or 'random')")
    return load_encoder(cfg.checkpoint)


def build_model(cfg: EvalConfig, task: EvalTask) -> EvalModel:
    """Encoder of ``cfg.checkpoint`` + a new head for ``task``, set up for ``cfg.scenario``."""
    first = task.train[0]
    if task.sensor not in first:
        raise ValueError(f"{task.source}: samples have no {task.sensor!r} entry; they hold {sorted(first)}")
    size = tuple(first[task.sensor].shape[-2:])
    encoder = load_eval_encoder(cfg, size)
    plan = plan_input(encoder, task.spec, size, cfg.data, cfg.checkpoint)
    grid = encoder.patch_grid(*plan.size)
    torch.manual_seed(cfg.seed)
    head = build_head(task.kind, cfg.head, encoder, grid, task.num_classes, task.label_scale)
    out_size = None
    if task.kind == "segmentation":
        out_size = (size[0] * task.label_scale, size[1] * task.label_scale)
    return EvalModel(encoder, head, InputAdapter(plan), frozen=cfg.scenario == "frozen", out_size=out_size)


def _layer_id(name: str, depth: int) -> int:
    """0: embeddings and class token; ``i + 1``: encoder block ``i``; ``depth + 1``: the rest."""
    if name.startswith("encoder."):
        rest = name[len("encoder."):]
        if rest.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(model: EvalModel, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (layer, weight decay) with an ``lr_scale`` each.

    Block ``i`` of a ``depth``-block encoder gets ``lr_scale = layer_decay ** (depth - i)``, the
    patch embeddings and class token ``layer_decay ** (depth + 1)``, the final norm and the head
    ``1`` (BEiT's layer-wise decay). Biases, norms and ``no_weight_decay`` tokens get no weight
    decay. Frozen parameters are left out.
    """
    depth = len(model.encoder.blocks)
    skip = no_decay_names(model)
    groups: dict[tuple[int, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = _layer_id(name, depth)
        wd = 0.0 if name in skip else weight_decay
        group = groups.setdefault((layer, wd), {"params": [], "names": [], "weight_decay": wd, "layer": layer,
                                                 "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def _optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if cfg.name == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _loss(task: EvalTask, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task.kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    count = (labels != task.ignore_index).sum().clamp_min(1)  # a batch of ignored pixels gives 0, not NaN
    return F.cross_entropy(logits.float(), labels, ignore_index=task.ignore_index, reduction="sum") / count


def _json_safe(obj: Any) -> Any:
    """NaN (an undefined metric, e.g. IoU of a class absent from the test set) -> ``null``."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def fit(cfg: EvalConfig, task: EvalTask, model: EvalModel, device: torch.device | None = None,
        autocast: Any = None) -> list[dict[str, float]]:
    """Train ``model``'s trainable parameters for ``cfg.steps`` steps; returns one record per step.

    Frozen: only the head is in the optimizer and the encoder stays in eval mode. Finetune: all
    parameters, with ``cfg.layer_decay`` applied per encoder block.
    """
    device = device or next(model.parameters()).device
    autocast = autocast or nullcontext()
    groups = param_groups(model, cfg.optim.weight_decay, cfg.layer_decay if cfg.scenario == "finetune" else 1.0)
    optimizer = _optimizer(groups, cfg.optim)
    params = [p for g in groups for p in g["params"]]
    loader = task_loader(task.train, range(cfg.steps), cfg.batch_size, cfg.batch_size, cfg.seed)
    show = cfg.progress
    interactive = show and sys.stderr.isatty()
    label = f"eval {task.name} {cfg.scenario}"
    bar = tqdm(total=cfg.steps, disable=not interactive, desc=label, dynamic_ncols=True)
    every = max(cfg.steps // 10, 1)
    history: list[dict[str, float]] = []
    model.train()
    for step, batch in enumerate(loader):
        task.check_batch(batch, "train")
        x, y = batch[task.sensor].to(device), batch["label"].to(device)
        with autocast:
            logits = model(x)
        loss = _loss(task, logits, y)
        loss.backward()
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = lr_at(step, cfg.steps, cfg.optim)
        set_lr(optimizer, lr)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update(1)
        if show and not interactive and (step % every == 0 or step == cfg.steps - 1):
            print(f"{label} step {step + 1}/{cfg.steps} loss={record['loss']:.4f} lr={lr:.2e}", flush=True)
    bar.close()
    return history


@torch.no_grad()
def _test(cfg: EvalConfig, task: EvalTask, model: EvalModel, device: torch.device, autocast: Any) -> dict[str, float]:
    meter = (SegmentationMeter(task.class_names, task.ignore_index) if task.kind == "segmentation"
             else MultilabelMeter(task.class_names))
    model.eval()
    for batch in DataLoader(task.test, batch_size=cfg.eval_batch_size, shuffle=False):
        task.check_batch(batch, "test")
        with autocast:
            logits = model(batch[task.sensor].to(device))
        meter.update(logits.float(), batch["label"].to(device))
    return meter.compute()


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
    """Train a new head (frozen) or head + encoder (finetune) and test it.

    Args:
        cfg: the run.
        task: an already built task (default: ``build_task(cfg.task, cfg.data)``).

    Returns:
        The content of ``metrics.json``: ``headline`` (``{"name", "value"}``), ``metrics`` (all
        test metrics), ``task``, ``stats`` (per input sensor, the ``file`` and ``sensor`` whose
        statistics standardised it), ``encoder`` (input plan, parameter counts), ``train`` (loss
        history summary, seconds) and the resolved ``config``.
    """
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if task is None:
        cfg = _with_encoder_stats(cfg)
        task = build_task(cfg.task, cfg.data)
    if task.name != cfg.task:
        raise ValueError(f"config names task {cfg.task!r} but the given task is {task.name!r}")
    device = resolve_device(cfg.device)
    autocast = autocast_context(device, cfg.precision)
    model = build_model(cfg, task).to(device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    history = fit(cfg, task, model, device, autocast)
    metrics = _test(cfg, task, model, device, autocast)
    from s12mae.evaluation.saved_model import save_eval_model  # the trained head, for `s12mae predict`
    save_eval_model(out, model, cfg, task)

    plan = model.adapter.plan
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    result = {
        "headline": {"name": task.headline, "value": metrics[task.headline]},
        "data_note": "SIMULATED data: a smoke check, not results" if "simulated" in task.source else task.source,
        "metrics": metrics,
        "task": describe(task),
        "scenario": cfg.scenario,
        "checkpoint": cfg.checkpoint,
        "stats": _stats_used(cfg, task),
        "encoder": {"sensor": plan.encoder_sensor, "filled_bands": list(plan.filled), "input_size": list(plan.size),
                    "task_size": list(plan.task_size), "patch_size": model.encoder.patch_size,
                    "params": count(model.encoder), "head_params": count(model.head),
                    "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "train": {"steps": len(history), "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
                  "loss": [r["loss"] for r in history[:: max(len(history) // 100, 1)]],
                  "seconds": round(time.perf_counter() - t0, 2), "device": str(device)},
        "config": cfg.to_dict(),
    }
    if cfg.num_plot:
        _plot(cfg, task, model, device, autocast, out / "predictions.png", result)
    atomic_write(out / "metrics.json", json.dumps(_json_safe(result), indent=1, allow_nan=False))
    if cfg.progress:
        print(f"eval {task.name} {cfg.scenario} {cfg.checkpoint}: {task.headline}={metrics[task.headline]:.4f} "
              f"-> {out / 'metrics.json'}", flush=True)
    return result


@torch.no_grad()
def _plot(cfg: EvalConfig, task: EvalTask, model: nn.Module, device: torch.device, autocast: Any, path: Path,
          result: dict[str, Any]) -> None:
    from s12mae.evaluation.plots import plot_predictions

    batch = default_collate([task.test[i] for i in range(min(cfg.num_plot, len(task.test)))])
    model.eval()
    with autocast:
        logits = model(batch[task.sensor].to(device))
    head = result["headline"]
    title = (f"{task.name} ({task.source}), {cfg.scenario}, {Path(cfg.checkpoint).parent.name or cfg.checkpoint}: "
             f"test {head['name']} = {head['value']:.3f}")
    plot_predictions(task, batch[task.sensor], batch["label"], logits.float().cpu(), path, title)


def evaluate(
    task: str = "sen1floods11",
    scenario: Literal["frozen", "finetune"] = "frozen",
    checkpoint: str = "random",
    out_dir: str = "runs/eval",
    steps: int = 500,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
    optimizer: Literal["adafactor", "adamw"] = "adafactor",
    warmup_steps: int = 10,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    head: HeadConfig | None = None,
    data: EvalDataConfig | None = None,
    random_encoder: str = "vit_base_patch16",
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate one encoder on one task in one scenario; writes ``metrics.json`` and ``predictions.png``.

    Args:
        task: ``sen1floods11`` (water IoU), ``bigearthnet`` (micro mAP) or ``srseg`` (mIoU, 4x).
        scenario: ``frozen`` (head only) or ``finetune`` (encoder and head).
        checkpoint: ``encoder.safetensors`` (any s12mae run, or an imported MAE) or ``random``.
        out_dir: output folder.
        steps: optimizer steps.
        batch_size: samples per step.
        lr: peak learning rate (warmup, then cosine to 0). Adafactor's step is relative to each
            parameter's RMS; 1e-2 is torch's default (ours: 1e-3 barely moved a linear probe).
        seed: head initialisation, random encoder and sample order.
        optimizer: ``adafactor`` (the paper's) or ``adamw``.
        warmup_steps: linear warmup steps.
        weight_decay: decoupled weight decay (not on biases, norms, tokens).
        layer_decay: finetune layer-wise lr decay (1.0: off).
        head: head options (pooling, segmentation head, ViT-Lite variant).
        data: data options (source, simulation sizes, statistics, clouds, resizing, bands).
        random_encoder: encoder variant of ``checkpoint="random"``.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        threads: CPU threads.
        progress: progress bar / lines.

    Returns:
        The content of ``metrics.json`` (see :func:`run_evaluation`).
    """
    cfg = EvalConfig(
        task=task, scenario=scenario, checkpoint=checkpoint, out_dir=out_dir, steps=steps, batch_size=batch_size,
        seed=seed, layer_decay=layer_decay, random_encoder=random_encoder, device=device, threads=threads,
        progress=progress, head=head or HeadConfig(), data=data or EvalDataConfig(),
        optim=OptimConfig(name=optimizer, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay),
    )
    return run_evaluation(cfg)
