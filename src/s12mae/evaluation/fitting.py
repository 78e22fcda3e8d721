"""Training a head (frozen) or head + encoder (finetune), with validation, selection and a
convergence check.

The protocol (every value ours where the paper is silent, see :class:`~s12mae.evaluation.config.FitConfig`):

1. Frozen runs read features computed once per split (:class:`Split` with ``cached``); finetune
   runs (and frozen runs whose features do not fit ``fit.cache_gb``) compute them every step.
2. ``fit.steps`` optimizer steps with warmup + cosine decay; finetuning gives the encoder
   ``fit.encoder_lr_scale`` of the head's rate, decayed per block by ``fit.layer_decay``.
3. Every ``fit.every`` steps (and before the first) the validation split is scored: loss and
   headline metric. The state that is tested is the one ``fit.select`` picks from these passes,
   never one chosen by the test split.
4. A run whose validation loss still fell fast at the end, per unit of learning rate spent
   (:func:`convergence`), is flagged: a warning on screen and in ``metrics.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from s12mae.config import OptimConfig
from s12mae.data import StepOrder, task_loader
from s12mae.evaluation.config import EvalConfig
from s12mae.evaluation.features import CachedSplit
from s12mae.evaluation.heads import EvalModel
from s12mae.evaluation.metrics import MultilabelMeter, SegmentationMeter
from s12mae.evaluation.tasks import EvalTask
from s12mae.runtime import no_decay_names, set_lr
from s12mae.train.adafactor import Adafactor
from s12mae.train.optim import lr_at

__all__ = ["FitResult", "Split", "convergence", "fit", "loss_sum", "make_meter", "param_groups", "score"]


@dataclass
class Split:
    """One split as the loop reads it: the dataset, and its cached head inputs if any."""

    name: str
    dataset: Dataset
    cached: CachedSplit | None = None

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        history: one record per step (``step``, ``loss``, ``lr``, ``grad_norm``).
        val: one record per validation pass (``step``, ``loss``, ``metric``); step 0 is before
            training.
        selected: the validation record of the state left in the model (the tested one).
        converged: False when the validation loss still fell at the end (see :func:`convergence`).
        warning: the message when not converged, else ``None``.
        late_rate: fall of the validation loss per unit learning rate over the second half of
            the run, relative to the whole run's (see :func:`convergence`).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    selected: dict[str, float] = field(default_factory=dict)
    converged: bool = True
    warning: str | None = None
    late_rate: float = 0.0


def _layer_id(name: str, depth: int) -> int:
    """0: embeddings and class token; ``i + 1``: encoder block ``i``; ``depth + 1``: the rest."""
    if name.startswith("encoder."):
        rest = name[len("encoder."):]
        if rest.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
    return depth + 1


def param_groups(model: EvalModel, weight_decay: float, layer_decay: float = 1.0,
                 encoder_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (layer, weight decay) with an ``lr_scale`` each.

    The head gets ``lr_scale = 1``. Encoder parameters get ``encoder_lr_scale`` times BEiT's
    layer-wise decay: block ``i`` of a ``depth``-block encoder ``layer_decay ** (depth - i)``,
    the patch embeddings and class token ``layer_decay ** (depth + 1)``, the final norm ``1``.
    Biases, norms and ``no_weight_decay`` tokens get no weight decay. Frozen parameters are
    left out.
    """
    depth = len(model.encoder.blocks)
    skip = no_decay_names(model)
    groups: dict[tuple[bool, int, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = _layer_id(name, depth)
        encoder = name.startswith("encoder.")
        wd = 0.0 if name in skip else weight_decay
        scale = encoder_lr_scale * layer_decay ** (depth + 1 - layer) if encoder else 1.0
        group = groups.setdefault((not encoder, layer, wd), {"params": [], "names": [], "weight_decay": wd,
                                                            "layer": layer, "lr_scale": scale})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def _optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if cfg.name == "adafactor":
        return Adafactor(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def loss_sum(task: EvalTask, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed loss and the number of terms (labels that count): multi-label BCE per (sample,
    class), segmentation cross-entropy per labelled pixel (``ignore_index`` left out)."""
    if task.kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum"), labels.numel()
    count = int((labels != task.ignore_index).sum())
    return F.cross_entropy(logits.float(), labels, ignore_index=task.ignore_index, reduction="sum"), count


def _sampled_loss(task: EvalTask, model: EvalModel, feats: torch.Tensor, labels: torch.Tensor, step: int,
                  cfg: EvalConfig) -> tuple[torch.Tensor, int] | None:
    """Loss of a per-token linear dense head on a random subset of each image's patches holding
    about ``fit.max_loss_pixels`` label pixels (every pixel under them; the same patches in
    every image of the step), or ``None`` where it does not apply (other heads, images with
    fewer labelled pixels, logits resized to the labels).

    An unbiased estimate of the full loss that still updates every weight at every step, at a
    fraction of the cost: 4x super-resolution predicts 32 x 32 x K logits per token.
    """
    head = model.head
    if not hasattr(head, "predict_tokens") or labels[0].numel() <= cfg.fit.max_loss_pixels:
        return None
    p, (gh, gw) = head.patch_out, model.grid
    if tuple(labels.shape[-2:]) != (gh * p, gw * p):
        return None
    keep = max(1, cfg.fit.max_loss_pixels // (p * p))
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    index = torch.randperm(gh * gw, generator=gen)[:keep].to(feats.device)
    logits = head.predict_tokens(feats, index)  # (N, T, p * p, K)
    n = labels.shape[0]
    patches = labels.view(n, gh, p, gw, p).permute(0, 1, 3, 2, 4).reshape(n, gh * gw, p * p)
    return loss_sum(task, logits.permute(0, 3, 1, 2), patches[:, index])


def make_meter(task: EvalTask) -> SegmentationMeter | MultilabelMeter:
    if task.kind == "segmentation":
        return SegmentationMeter(task.class_names, task.ignore_index)
    return MultilabelMeter(task.class_names)


@torch.no_grad()
def score(task: EvalTask, model: EvalModel, split: Split, batch_size: int, device: torch.device,
          autocast: Any) -> tuple[float, dict[str, float]]:
    """Mean loss (per counted label) and every metric of ``model`` on a whole split."""
    meter, total, count = make_meter(task), 0.0, 0
    was_training = model.training
    model.eval()
    if split.cached is not None:
        batches: Any = split.cached.batches(batch_size)
    else:
        batches = _stream(task, DataLoader(split.dataset, batch_size=batch_size, shuffle=False), split.name, device)
    for x, y in batches:
        with autocast:
            logits = (model.classify(x) if split.cached is not None else model(x)).float()
        s, n = loss_sum(task, logits, y)
        total, count = total + float(s), count + n
        meter.update(logits, y)
    model.train(was_training)
    return total / max(count, 1), meter.compute()


def _stream(task: EvalTask, loader: DataLoader, split: str, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        task.check_batch(batch, split)
        yield batch[task.sensor].to(device), batch["label"].to(device)


def _train_batches(cfg: EvalConfig, task: EvalTask, split: Split, device: torch.device):
    """``(inputs, labels)`` of every step: cached head inputs, or task inputs from the loader."""
    steps, size = cfg.fit.steps, cfg.fit.batch_size
    if split.cached is None:
        yield from _stream(task, task_loader(split.dataset, range(steps), size, size, cfg.seed), "train", device)
        return
    order = StepOrder(len(split), size, cfg.seed)
    for step in range(steps):
        yield split.cached.batch(torch.from_numpy(order.global_batch(step)).to(device))


def convergence(val: list[dict[str, float]], history: list[dict[str, float]], tol: float,
                warmup: int = 0) -> tuple[bool, str | None, float]:
    """Whether the validation loss had stopped falling by the end of the run (ours).

    Under a decaying schedule every curve flattens at the end because the learning rate goes to
    zero, so the fall is measured per unit of learning rate spent: ``rate`` = the validation
    loss's fall over the second half of the run divided by the learning rate summed over those
    steps, relative to the same ratio over the whole run (from the untrained head at step 0).
    About 1 means the loss fell as fast per unit learning rate at the end as on average: the
    head was still learning when the schedule stopped it. More than ``tol`` is flagged; so is a
    run that ends within its warmup.

    Args:
        val: validation passes (``step``, ``loss``), the first at step 0.
        history: per-step records with ``step`` (1-based) and ``lr``.
        tol: largest ``rate`` accepted as converged.
        warmup: warmup steps of the schedule.

    Returns:
        ``(converged, warning or None, rate)``.
    """
    steps = len(history)
    if steps <= warmup:
        return False, (f"the run ended within its learning-rate warmup ({steps} steps, warmup {warmup}); the head "
                       "has not converged: train longer (fit.steps)"), 1.0
    if len(val) < 3:  # before training and at the end only: no late rate to compare (not judged)
        return True, None, 0.0
    first, last = val[0], val[-1]
    mid = min(val[:-1], key=lambda r: abs(r["step"] - 0.5 * steps))
    spent = lambda a, b: sum(r["lr"] for r in history if a < r["step"] <= b)
    late = (mid["loss"] - last["loss"]) / max(spent(mid["step"], last["step"]), 1e-30)
    overall = (first["loss"] - last["loss"]) / max(spent(first["step"], last["step"]), 1e-30)
    if late <= 0:
        return True, None, 0.0
    rate = late / overall if overall > 0 else float("inf")
    if rate <= tol:
        return True, None, rate
    return False, (f"validation loss still falling at the end: {mid['loss']:.4f} at step {int(mid['step'])} -> "
                   f"{last['loss']:.4f} at step {int(last['step'])}, per unit learning rate {rate:.2f}x its average "
                   f"fall over the run (tolerance {tol:.2f}); the head has not converged: train longer (fit.steps) or "
                   "raise fit.optim.lr"), rate


def _better(cfg: EvalConfig, new: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None or cfg.fit.select == "last":
        return True
    if cfg.fit.select == "val_loss":
        return new["loss"] < best["loss"]
    return new["metric"] > best["metric"] or (new["metric"] == best["metric"] and new["loss"] < best["loss"])


def fit(cfg: EvalConfig, task: EvalTask, model: EvalModel, train: Split, val: Split,
        device: torch.device | None = None, autocast: Any = None,
        log: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model``'s trainable parameters for ``cfg.fit.steps`` steps; leave the selected state in it.

    Frozen: only the head is in the optimizer and the encoder stays in eval mode. Finetune: all
    parameters, the encoder's at ``encoder_lr_scale`` with ``layer_decay`` per block. ``log``,
    where given, receives every training record (``task="train"``) and validation pass
    (``task="val"``) as it happens (the run's TensorBoard/W&B sinks).
    """
    from contextlib import nullcontext

    device = device or next(model.head.parameters()).device
    autocast = autocast or nullcontext()
    fc = cfg.fit
    finetune = not model.frozen
    groups = param_groups(model, fc.optim.weight_decay, fc.layer_decay if finetune else 1.0,
                          fc.encoder_lr_scale if finetune else 1.0)
    optimizer = _optimizer(groups, fc.optim)
    params = [p for g in groups for p in g["params"]]
    keep = model if finetune else model.head  # what a selected state consists of
    label = f"eval {task.name} {cfg.scenario}"
    interactive = cfg.progress and sys.stderr.isatty()
    bar = tqdm(total=fc.steps, disable=not interactive, desc=label, dynamic_ncols=True)
    every, print_every = fc.every, max(fc.steps // 10, 1)
    out = FitResult()

    def validate(step: int) -> None:
        loss, metrics = score(task, model, val, cfg.eval_batch_size, device, autocast)
        record = {"step": step, "loss": loss, "metric": metrics[task.headline]}
        out.val.append(record)
        if log is not None:
            log({**record, "task": "val"})
        nonlocal best_state
        if step > 0 and _better(cfg, record, out.selected or None):
            out.selected = record
            best_state = {k: v.detach().clone() for k, v in keep.state_dict().items()}

    best_state: dict[str, torch.Tensor] | None = None
    model.train()
    validate(0)
    for step, (x, y) in enumerate(_train_batches(cfg, task, train, device)):
        with autocast:
            sampled = _sampled_loss(task, model, x, y, step, cfg) if train.cached is not None else None
            if sampled is None:
                logits = model.classify(x) if train.cached is not None else model(x)
        total, count = sampled if sampled is not None else loss_sum(task, logits, y)
        loss = total / max(count, 1)  # a batch of ignored pixels gives 0, not NaN
        loss.backward()
        max_norm = fc.optim.clip_grad if fc.optim.clip_grad is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        lr = lr_at(step, fc.steps, fc.optim)
        set_lr(optimizer, lr)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.history.append({"step": step + 1, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)})
        if log is not None:
            log({**out.history[-1], "task": "train"})
        if (step + 1) % every == 0 or step + 1 == fc.steps:
            validate(step + 1)
        bar.set_postfix(loss=f"{out.history[-1]['loss']:.4f}", val=f"{out.val[-1]['loss']:.4f}")
        bar.update(1)
        if cfg.progress and not interactive and (step % print_every == 0 or step + 1 == fc.steps):
            print(f"{label} step {step + 1}/{fc.steps} loss={out.history[-1]['loss']:.4f} "
                  f"val_loss={out.val[-1]['loss']:.4f} lr={lr:.2e}", flush=True)
    bar.close()
    if best_state is not None:
        keep.load_state_dict(best_state)
    out.converged, out.warning, out.late_rate = convergence(out.val, out.history, fc.converge_tol,
                                                            fc.optim.warmup_steps)
    return out
