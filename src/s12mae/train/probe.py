"""The periodic frozen probe: does the representation improve while the loss goes down?

Every ``train.probe_every`` steps (and at the last step) rank 0 puts the *current* encoder, in
eval mode and without gradients, in front of a small fixed labelled set (``train.probe``: a
simulated task by default, or a real Sen1Floods11 / BigEarthNet folder) and scores a probe on
its frozen features:

* ``linear``: the closed-form ridge probe of ``s12mae evaluate``
  (:func:`s12mae.evaluation.probes.ridge_probe`: lambda picked on the validation split, the
  test split scored once), on the head input that evaluation standardises the same way;
* ``knn``: each test row (a pooled feature, or a patch token for segmentation) gets the mean
  target of its ``k`` nearest training rows by cosine similarity of the standardised features.

The labelled set is built once and its samples are fixed, so successive probes differ only by
the weights. The head's initialisation runs under :func:`torch.random.fork_rng`; the feature loaders do
draw a base seed from the global generator, which is harmless because the loop reseeds every
step from the run's key; and the encoder is put back in the
mode it was in, so a run with probes trains exactly as one without (and resumes exactly).
FSDP-sharded runs refuse ``probe_every`` at config time: rank 0 alone holds no full encoder.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from s12mae.config import ProbeConfig
from s12mae.evaluation.config import EvalDataConfig, HeadConfig
from s12mae.evaluation.features import CachedSplit, encode_split
from s12mae.evaluation.fitting import make_meter
from s12mae.evaluation.heads import EvalModel, InputAdapter, build_head, plan_input
from s12mae.evaluation.probes import _design, _scores, _targets, ridge_probe  # the ridge probe's rows, shared
from s12mae.evaluation.tasks import EvalTask, build_task, with_validation

__all__ = ["FrozenProbe", "knn_probe", "plot_probe_curve"]

HEAD_SEED = 0
"""Seed of the (unused by the probe, but built) head's initialisation, drawn in a forked RNG (ours)."""


def _first(ds: Any, n: int) -> Any:
    return ds if len(ds) <= n else Subset(ds, range(n))


@torch.no_grad()
def knn_probe(task: EvalTask, model: EvalModel, train: CachedSplit, test: CachedSplit, k: int,
              chunk: int = 32) -> float:
    """The ``k``-nearest-neighbour probe's headline metric on ``test``.

    Rows as the ridge probe's (pooled features, or one row per patch token), standardised by
    ``model.head.norm`` and L2-normalised; a test row's scores are the mean target ``(outputs,)``
    of its ``k`` most cosine-similar training rows (multi-label: 0/1 labels, ranked for AP;
    segmentation: one-hot pixels under the patch, the highest class wins).
    """
    xs, ys = [], []
    for feats, labels in train.batches(chunk):
        xs.append(F.normalize(_design(model, feats)[:, :-1].float(), dim=1))  # drop the bias column
        ys.append(_targets(task, model, labels))
    x_train, y_train = torch.cat(xs), torch.cat(ys)  # (M, D), (M, outputs)
    k = min(k, len(x_train))
    meter = make_meter(task)
    for feats, labels in test.batches(chunk):
        x = F.normalize(_design(model, feats)[:, :-1].float(), dim=1)
        nearest = (x @ x_train.T).topk(k, dim=1).indices  # (m, k)
        rows = y_train[nearest].mean(1)  # (m, outputs)
        meter.update(_scores(task, model, rows, torch.eye(rows.shape[1], device=rows.device), len(feats)), labels)
    return meter.compute()[task.headline]


class FrozenProbe:
    """A fixed small labelled set and the probe scored on it (built once, on rank 0).

    Args:
        cfg: ``train.probe``.
        stats: the run's band statistics file (``data.stats`` as resolved), so that the task's
            input is standardised as the pretraining input is.
        img_size: ``model.img_size`` (the simulated scenes' side unless ``cfg.img_size``).
        device: where the features are computed and kept.
        autocast: the loop's autocast context.

    Raises:
        ValueError: an unknown task or source, or an unreadable dataset (from the task builder).
    """

    def __init__(self, cfg: ProbeConfig, stats: str | None, img_size: int, device: torch.device,
                 autocast: AbstractContextManager) -> None:
        self.cfg, self.device, self.autocast = cfg, device, autocast
        self.data = EvalDataConfig(source=cfg.source, path=cfg.path, stats=stats, img_size=cfg.img_size or img_size,
                                   num_train=cfg.num_train, num_val=cfg.num_val, num_test=cfg.num_test)
        task, _ = with_validation(build_task(cfg.task, self.data), self.data.val_fraction)
        self.task = replace(task, train=_first(task.train, cfg.num_train), val=_first(task.val, cfg.num_val),
                            test=_first(task.test, cfg.num_test))

    def _model(self, encoder: nn.Module) -> EvalModel:
        """The encoder, as it is, behind the evaluation's input adapter and head (not frozen:
        ``frozen=True`` would switch its gradients off for the rest of training)."""
        task = self.task
        size = tuple(task.train[0][task.sensor].shape[-2:])
        plan = plan_input(encoder, task.spec, size, self.data, "the run's encoder")
        grid = encoder.patch_grid(*plan.size)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(HEAD_SEED)
            head = build_head(task.kind, HeadConfig(), encoder, grid, task.num_classes, task.label_scale)
        out_size = (size[0] * task.label_scale, size[1] * task.label_scale) if task.kind == "segmentation" else None
        return EvalModel(encoder, head, InputAdapter(plan), frozen=False, out_size=out_size).to(self.device)

    @torch.no_grad()
    def __call__(self, method: nn.Module, step: int) -> dict[str, Any]:
        """Probe ``method.encoder`` now; the record ``{"step", "task": "probe", "probe_task",
        "probe_kind", "probe_metric", <metric>, "val_<metric>", "probe_seconds"}``."""
        t0 = time.perf_counter()
        was_training = method.training
        task, cfg = self.task, self.cfg
        try:
            model = self._model(method.encoder)
            model.eval()
            splits = {name: encode_split(model, getattr(task, name), task, name, cfg.batch_size, self.device,
                                         self.autocast) for name in ("train", "val", "test")}
            model.head.norm.fit(f for f, _ in splits["train"].batches(cfg.batch_size))
            if cfg.kind == "linear":
                out = ridge_probe(task, model, splits["train"], splits["val"], splits["test"])
                value, val_value = out["headline"]["value"], out["val_headline"]
            else:
                value = knn_probe(task, model, splits["train"], splits["test"], cfg.k)
                val_value = knn_probe(task, model, splits["train"], splits["val"], cfg.k)
        finally:
            method.train(was_training)
        return {"step": step, "task": "probe", "probe_task": task.name, "probe_kind": cfg.kind,
                "probe_metric": task.headline, task.headline: float(value), f"val_{task.headline}": float(val_value),
                "probe_seconds": time.perf_counter() - t0}


def plot_probe_curve(metrics_path: Path, out: Path) -> bool:
    """The loss (top) and the probe's test and validation scores (bottom) against step, from
    ``metrics.jsonl``; ``False`` (nothing written) when the run logged no probe."""
    import matplotlib.pyplot as plt

    from s12mae.viz import save_figure  # its import sets the headless backend

    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    probes = [r for r in lines if "probe_metric" in r]
    if not probes:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for task in dict.fromkeys(r["task"] for r in lines if "loss" in r):
        rows = [r for r in lines if "loss" in r and r["task"] == task]
        top.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label=f"{task}: loss")
    top.set_yscale("log")
    top.set_ylabel("pretraining loss")
    top.legend(fontsize=8)
    metric, first = probes[0]["probe_metric"], probes[0]
    steps = [r["step"] for r in probes]
    bottom.plot(steps, [r[metric] for r in probes], marker="o", label=f"test {metric}")
    bottom.plot(steps, [r[f"val_{metric}"] for r in probes], marker="s", ls="--", label=f"validation {metric}")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel(metric)
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.set_title(f"frozen {first['probe_kind']} probe on {first['probe_task']} ({metrics_path.parent.name})")
    save_figure(fig, out)
    return True
