"""Robustness of frozen encoders to a missing sensor, S1/S2 misalignment and clouds (issue 14).

The paper's claim to test: mixing modalities makes representations more robust to a missing
modality and to misaligned S1/S2. For every encoder, input and seed the evaluation's own head
(:mod:`.fitting`, the default protocol: standardised features, validation, selection) is trained
once on the frozen encoder's features of *clean* data, then tested on the clean test split and on
each degraded copy of it (features recomputed per copy): a trained head meeting test-time
degradation, as a deployed model would. The head never sees a degraded scene.

Inputs (``inputs``):

* ``s2``: the task's optical image through the encoder's S2 patch embedding;
* ``s1``: the co-located S1 GRD image (VV, VH) through the encoder's S1 patch embedding;
* ``both``: one token sequence holding both sensors, as MixMAE pretrains: the ``L`` positions
  are split into ``L/2`` S2 and ``L/2`` S1 tokens by one fixed random complementary mix
  (:func:`~s12mae.methods.mixmae.random_mixing`, ``mix_seed``, the same positions in every
  scene), each embedded by its own sensor's patch embedding. The sequence keeps MixMAE's length
  and its train-time statistics; it drops half of each sensor, so it is not a sum of both.

An input whose sensor the encoder has no patch embedding for (S1 for an S2-only MAE) is not
applicable: a blank cell, never an error. Degradations (:mod:`.degrade`), each swept with the
other at zero: S1 shifted against S2 and the labels by ``shifts`` pixels (where S1 is an input),
clouds over a fraction ``clouds`` of the S2 image (where S2 is an input).

Writes ``robustness.md``, ``robustness.csv`` (one row per method, input and condition),
``robustness.json`` (every value) and ``<method>.png`` (metric against shift and cloud fraction).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from s12mae.evaluation.config import EvalConfig
from s12mae.evaluation.degrade import CloudConfig, add_clouds, cloud_opacity, shift_image
from s12mae.evaluation.features import encode_split
from s12mae.evaluation.fitting import Split, fit, score
from s12mae.evaluation.heads import EvalModel, InputAdapter, build_head, plan_input
from s12mae.evaluation.robustness_config import FAMILIES, INPUTS, RobustnessConfig
from s12mae.evaluation.robustness_report import slug, write_report
from s12mae.evaluation.runner import (
    _with_encoder_stats,
    build_model,
    json_safe,
    load_eval_encoder,
    prepare_splits,
)
from s12mae.evaluation.tasks import EvalTask, build_task, with_validation
from s12mae.files import undo_outputs_on_failure
from s12mae.runtime import autocast_context, resolve_device
from s12mae.sensors import SensorSpec, get_sensor

__all__ = ["INPUTS", "MixedInputModel", "RobustnessConfig", "condition_dataset", "robustness"]

class ConditionDataset(Dataset):
    """A task split seen through one input and one condition: ``{key: x, "label", "index"}``.

    ``x`` is the (clouded) S2 image, the (shifted) S1 image, or both stacked on the channel axis
    (S2 first) for ``both``.
    """

    def __init__(self, base: Dataset, inp: str, key: str, s2: SensorSpec, s1: str, shift: int = 0,
                 cloud: float = 0.0, cloud_cfg: CloudConfig | None = None) -> None:
        self.base, self.inp, self.key, self.s2, self.s1 = base, inp, key, s2, s1
        self.shift, self.cloud, self.cloud_cfg = shift, cloud, cloud_cfg or CloudConfig()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.base[i]
        parts = []
        if "s2" in FAMILIES[self.inp]:
            x = sample[self.s2.key]
            if self.cloud:
                opacity = cloud_opacity(tuple(x.shape[-2:]), self.cloud, int(sample["index"]), self.cloud_cfg)
                x = add_clouds(x, self.s2, opacity, self.cloud_cfg.brightness)
            parts.append(x)
        if "s1" in FAMILIES[self.inp]:
            parts.append(shift_image(sample[self.s1], self.shift))
        return {self.key: torch.cat(parts), "label": sample["label"], "index": sample["index"]}


def _input_spec(task: EvalTask, inp: str, s1: str) -> SensorSpec:
    """The spec a condition's input is checked and mapped with (S2 + S1 bands for ``both``)."""
    if inp == "s2":
        return task.spec
    s1_spec = task.extra[s1]
    if inp == "s1":
        return s1_spec
    return dataclasses.replace(task.spec, key=f"{task.spec.key}+{s1_spec.key}", bands=task.spec.bands + s1_spec.bands,
                               stats={**task.spec.stats, **s1_spec.stats}, description="S2 and S1 stacked")


def condition_dataset(cfg: RobustnessConfig, task: EvalTask, base: Dataset, inp: str, kind: str = "clean",
                      level: float = 0) -> ConditionDataset:
    """``base`` (a split of ``task``) seen through input ``inp`` under one condition."""
    return ConditionDataset(base, inp, _input_spec(task, inp, cfg.s1_sensor).key, task.spec, cfg.s1_sensor,
                            shift=int(level) if kind == "shift" else 0, cloud=float(level) if kind == "cloud" else 0.0,
                            cloud_cfg=cfg.cloud)


def _view(cfg: RobustnessConfig, task: EvalTask, inp: str) -> EvalTask:
    """The task as a head on input ``inp`` sees it (clean train, validation and test)."""
    spec = _input_spec(task, inp, cfg.s1_sensor)
    clean = lambda ds: None if ds is None else condition_dataset(cfg, task, ds, inp)
    return dataclasses.replace(task, sensor=spec.key, spec=spec, train=clean(task.train), val=clean(task.val),
                               test=clean(task.test), extra={})


class MixedInputModel(EvalModel):
    """Frozen encoder on one sequence of S2 and S1 tokens (MixMAE's input): ``(N, C2 + C1, H, W)``.

    Args:
        encoder: a ViT encoder with patch embeddings for both sensors.
        head: the task head.
        adapters: S2 and S1 input adapters (band mapping, resizing).
        channels: ``C2``, where the S1 channels start.
        source: ``(L,)`` 0 where the S2 token is used, 1 where the S1 token is.
        out_size: segmentation label grid.
    """

    def __init__(self, encoder: Any, head: torch.nn.Module, adapters: tuple[InputAdapter, InputAdapter], channels: int,
                 source: torch.Tensor, out_size: tuple[int, int] | None) -> None:
        super().__init__(encoder, head, adapters[0], frozen=True, out_size=out_size)
        self.s1_adapter, self.channels = adapters[1], channels
        self.register_buffer("source", source.view(1, -1, 1), persistent=False)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x2, x1 = self.adapter(x[:, : self.channels]), self.s1_adapter(x[:, self.channels :])
        t2 = self.encoder.embed(x2, self.adapter.plan.encoder_sensor)  # (N, L, D)
        t1 = self.encoder.embed(x1, self.s1_adapter.plan.encoder_sensor)
        return self.head.reduce(self.encoder.forward_tokens(torch.where(self.source == 0, t2, t1)))


def _mixed_model(cfg: RobustnessConfig, run: EvalConfig, task: EvalTask) -> MixedInputModel:
    """The ``both`` model: the encoder of ``run.checkpoint`` on the fixed S2/S1 mix, a new head."""
    from s12mae.methods.mixmae import random_mixing, split_counts

    size = tuple(task.train[0][task.sensor].shape[-2:])
    encoder = load_eval_encoder(run, size, task.spec)
    plans = [plan_input(encoder, spec, size, run.data, run.checkpoint) for spec in (task.spec, task.extra[cfg.s1_sensor])]
    grid = encoder.patch_grid(*plans[0].size)
    length = grid[0] * grid[1]
    source = random_mixing(cfg.mix_seed, 0, torch.zeros(1, dtype=torch.int64), length, split_counts(length, [1, 1]))[0][0]
    torch.manual_seed(run.seed)
    head = build_head(task.kind, run.head, encoder, grid, task.num_classes, task.label_scale)
    out_size = (size[0] * task.label_scale, size[1] * task.label_scale) if task.kind == "segmentation" else None
    return MixedInputModel(encoder, head, (InputAdapter(plans[0]), InputAdapter(plans[1])), task.spec.num_channels,
                           source, out_size)


def _families(run: EvalConfig, task: EvalTask) -> set[str]:
    """Sensor families the encoder of ``run.checkpoint`` has patch embeddings for."""
    encoder = load_eval_encoder(run, tuple(task.train[0][task.sensor].shape[-2:]), task.spec)
    found = set()
    for key in encoder.in_chans:
        try:
            found.add(get_sensor(key).family)
        except (KeyError, ValueError):
            continue  # a sensor this installation has no spec for
    return found


def _run_input(cfg: RobustnessConfig, run: EvalConfig, task: EvalTask, inp: str) -> dict[str, Any]:
    """Train the head on clean ``inp`` once; score it under every condition of ``inp``."""
    device = resolve_device(run.device)
    autocast = autocast_context(device, run.precision)
    view = _view(cfg, task, inp)
    model = (_mixed_model(cfg, run, task) if inp == "both" else build_model(run, view)).to(device)
    splits = prepare_splits(run, view, model, device, autocast)
    fitted = fit(run, view, model, splits["train"], splits["val"], device, autocast)
    scores = {}
    for kind, level in cfg.conditions(inp):
        test = splits["test"]
        if kind != "clean":
            ds = condition_dataset(cfg, task, task.test, inp, kind, level)
            cached = (encode_split(model, ds, view, "test", run.eval_batch_size, device, autocast)
                      if test.cached is not None else None)
            test = Split("test", ds, cached)
        scores[f"{kind}:{level}"] = score(view, model, test, run.eval_batch_size, device, autocast)[1][task.headline]
    return {"scores": scores, "converged": fitted.converged, "warning": fitted.warning,
            "selected_step": fitted.selected.get("step")}


@undo_outputs_on_failure(lambda cfg: cfg.out_dir)  # a failed run leaves no partial outputs
def robustness(cfg: RobustnessConfig) -> dict[str, Any]:
    """Evaluate every encoder under every input and condition (the ``s12mae robustness`` entry).

    Returns:
        The content of ``robustness.json``: ``runs`` (per method, input and seed: applicable,
        scores per condition, convergence), ``rows`` (per method, input and condition: mean, std,
        values), ``task``, ``headline``, ``note`` and the resolved ``config``.
    """
    out = Path(cfg.out_dir)
    runs: list[dict[str, Any]] = []
    task = None
    for method, checkpoint in cfg.checkpoints.items():
        base = dataclasses.replace(cfg.run, checkpoint=checkpoint, task=cfg.task, scenario="frozen", num_plot=0,
                                   ridge=False, out_dir=str(out / "runs" / slug(method)))
        base = _with_encoder_stats(base)
        task, _ = with_validation(build_task(cfg.task, base.data, extra=(cfg.s1_sensor,)), base.data.val_fraction)
        for seed in cfg.seeds:
            run = dataclasses.replace(base, seed=seed)
            have = _families(run, task)
            for inp in cfg.inputs:
                record = {"method": method, "checkpoint": checkpoint, "input": inp, "seed": seed}
                if not set(FAMILIES[inp]) <= have:
                    runs.append({**record, "applicable": False, "scores": {}})
                    continue
                result = _run_input(cfg, run, task, inp)
                runs.append({**record, "applicable": True, **result})
                if result["warning"]:
                    print(f"WARNING: {method} {inp} seed {seed}: {result['warning']}", file=sys.stderr, flush=True)
                if run.progress:
                    clean = result["scores"]["clean:0"]
                    print(f"robustness {cfg.task} {method} {inp} seed {seed}: clean {task.headline}={clean:.4f}",
                          flush=True)
    assert task is not None  # checkpoints is not empty (validated)
    return json_safe(write_report(cfg, task, runs))
