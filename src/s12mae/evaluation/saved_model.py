"""The trained model of ``s12mae evaluate`` on disk, for ``s12mae predict``.

``s12mae evaluate`` calls :func:`save_eval_model` at the end of a run; it writes, beside
``metrics.json``:

* ``eval_model.safetensors``: the head's weights (``head.*``), plus the encoder's (``encoder.*``)
  when the run finetuned it or used a random encoder;
* ``eval_model.json``: the task (kind, classes, label scale), the head config, the input plan
  (band mapping, sizes), the input sensor with the statistics the task was standardised with, and
  the encoder: its file, its SHA-256 and its architecture. A frozen head refers to the encoder
  file instead of copying it; :func:`load_eval_model` refuses an encoder whose hash differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from s12mae.evaluation.config import HeadConfig
from s12mae.evaluation.heads import EvalModel, InputAdapter, InputPlan, build_head
from s12mae.export.encoder_file import SensorInfo
from s12mae.files import atomic_path, atomic_write
from s12mae.models.vit import ViTEncoder

__all__ = ["MODEL_FILE", "SPEC_FILE", "file_sha256", "input_sensor", "load_eval_model", "save_eval_model"]

FORMAT = "s12mae-eval-model-1"
MODEL_FILE, SPEC_FILE = "eval_model.safetensors", "eval_model.json"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (remembered per path, size and modification time:
    an evaluation table hashes the same encoder file once)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _arch(encoder: ViTEncoder) -> dict[str, Any]:
    block = encoder.blocks[0]
    return {"in_chans": encoder.in_chans, "img_size": encoder.grid[0] * encoder.patch_size,
            "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim, "depth": len(encoder.blocks),
            "num_heads": block.attn.num_heads, "mlp_ratio": block.mlp.fc1.out_features / encoder.embed_dim}


def _input_sensor(task: Any) -> dict[str, Any]:
    spec = task.spec
    return SensorInfo(spec.key, tuple(spec.band_names), spec.units, tuple(spec.stats[b].mean for b in spec.band_names),
                      tuple(spec.stats[b].std for b in spec.band_names), spec.dn_scale, spec.dn_offset, spec.nodata,
                      f"statistics the task was standardised with ({task.source})").to_dict()


def save_eval_model(run_dir: str | Path, model: EvalModel, cfg: Any, task: Any) -> None:
    """Write ``eval_model.safetensors`` and ``eval_model.json`` into ``run_dir`` (atomically, JSON last).

    Args:
        run_dir: the evaluation run folder.
        model: the trained encoder + head.
        cfg: the run's ``EvalConfig``.
        task: the run's ``EvalTask``.
    """
    run_dir = Path(run_dir)
    reference = cfg.checkpoint != "random" and cfg.scenario == "frozen"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if k.startswith("head.") or (not reference and k.startswith("encoder."))}
    encoder: dict[str, Any] = {"weights": "reference" if reference else "included", "arch": _arch(model.encoder)}
    if cfg.checkpoint != "random":
        encoder.update(checkpoint=str(Path(cfg.checkpoint).resolve()), sha256=file_sha256(cfg.checkpoint))
    spec = {
        "format": FORMAT, "scenario": cfg.scenario,
        "task": {"name": task.name, "kind": task.kind, "classes": list(task.class_names),
                 "label_scale": task.label_scale, "ignore_index": task.ignore_index, "source": task.source},
        "head": dataclasses.asdict(cfg.head), "plan": dataclasses.asdict(model.adapter.plan),
        "out_size": list(model.out_size) if model.out_size else None,
        "input": _input_sensor(task), "encoder": encoder,
    }
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    atomic_write(run_dir / SPEC_FILE, json.dumps(spec, indent=1, allow_nan=False))


def _read(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    spec_file, model_file = run_dir / SPEC_FILE, run_dir / MODEL_FILE
    for f in (spec_file, model_file):
        if not f.is_file():
            raise ValueError(f"{f}: not found; is {run_dir} a folder written by `s12mae evaluate`?")
    try:
        spec = json.loads(spec_file.read_text())
        state = load_file(str(model_file))
    except (json.JSONDecodeError, OSError, SafetensorError) as err:
        raise ValueError(f"{run_dir}: unreadable trained model ({err})") from None
    if spec.get("format") != FORMAT:
        raise ValueError(f"{spec_file}: not an s12mae evaluation model (format {spec.get('format')!r})")
    return spec, state


def _encoder(spec: dict[str, Any], state: dict[str, torch.Tensor], run_dir: Path,
             checkpoint: str | None) -> ViTEncoder:
    enc = spec["encoder"]
    if enc["weights"] == "included":
        a = enc["arch"]
        model = ViTEncoder(a["in_chans"], img_size=a["img_size"], patch_size=a["patch_size"],
                           embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"],
                           mlp_ratio=a["mlp_ratio"])
        model.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        return model
    from s12mae.export.encoder_file import load_encoder

    path = Path(checkpoint or enc["checkpoint"])
    if not path.is_file():
        raise ValueError(f"{run_dir / SPEC_FILE}: the head's encoder {path} is not found; give its current "
                         "location with --checkpoint")
    digest = file_sha256(path)
    if digest != enc["sha256"]:
        raise ValueError(f"{run_dir / SPEC_FILE}: the head was trained on encoder {enc['checkpoint']} "
                         f"(sha256 {enc['sha256'][:12]}...), but {path} is another encoder "
                         f"(sha256 {digest[:12]}...)")
    return load_encoder(path)


def load_eval_model(run_dir: str | Path, checkpoint: str | None = None) -> tuple[EvalModel, dict[str, Any]]:
    """Rebuild the trained model of an evaluation run folder (in eval mode).

    Args:
        run_dir: a folder written by ``s12mae evaluate``.
        checkpoint: where the (frozen-run) encoder file is now, if it moved; it must be the same file.

    Returns:
        ``(model, spec)``: the encoder + head, and the content of ``eval_model.json``.

    Raises:
        ValueError: missing or unreadable files, or an encoder other than the one the head was
            trained on; the message names both.
    """
    run_dir = Path(run_dir)
    spec, state = _read(run_dir)
    encoder = _encoder(spec, state, run_dir, checkpoint)
    plan_d = spec["plan"]
    plan = InputPlan(plan_d["encoder_sensor"], tuple(plan_d["source_index"]), tuple(plan_d["filled"]),
                     tuple(plan_d["size"]), tuple(plan_d["task_size"]))
    task = spec["task"]
    head = build_head(task["kind"], HeadConfig(**spec["head"]), encoder, encoder.patch_grid(*plan.size),
                      len(task["classes"]), task["label_scale"])
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    out_size = tuple(spec["out_size"]) if spec.get("out_size") else None
    model = EvalModel(encoder, head, InputAdapter(plan), frozen=True, out_size=out_size).eval()
    return model, spec


def input_sensor(spec: dict[str, Any]) -> SensorInfo:
    """The task input the head expects (bands, units, statistics) from ``eval_model.json``."""
    return SensorInfo.from_dict(spec["input"])
