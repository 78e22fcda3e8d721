"""The model card (``README.md``) of an export folder, written from the run that trained the encoder.

Everything in it comes from :class:`~s12mae.export.encoder_file.EncoderInfo`: the method, the
training data (simulated or a named dataset), steps and batch, the sensor with its bands, units and
statistics, and the limits a user must know (simulated data only, statistics filled from defaults,
sensors left out of this export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from s12mae.export.encoder_file import EncoderInfo, SensorInfo

__all__ = ["describe_data", "limits", "model_card"]

_METHODS = {
    "mae": "MAE (masked autoencoder) on Sentinel-2",
    "auxmae": "AuxMAE: MAE on S2 plus an auxiliary task reconstructing the paired sensor",
    "mixmae": "MixMAE: one sequence mixing patches of the paired sensors, each reconstructed",
}


def describe_data(config: dict[str, Any] | None) -> tuple[str, bool | None]:
    """One line on the pretraining data, and whether it was simulated (``None``: unknown)."""
    if config is None:
        return "unknown: the encoder carries no run config (for example an imported MAE checkpoint)", None
    data = config.get("data") or {}
    paths = {"all tasks": data.get("path")} | dict(data.get("task_paths") or {})
    paths = {k: v for k, v in paths.items() if v}
    if not paths:
        sim = data.get("simulated") or {}
        return (f"simulated scenes made in memory by s12mae's simulator ({sim.get('num_samples', '?')} scenes "
                f"of {sim.get('img_size', '?')} px, seed {sim.get('seed', '?')})"), True
    parts, simulated = [], []
    for task, path in paths.items():
        kind, is_sim = _dataset_kind(Path(path))
        parts.append(f"{task}: {path} ({kind})")
        simulated.append(is_sim)
    known = [s for s in simulated if s is not None]
    return "; ".join(parts), (all(known) if len(known) == len(simulated) else None)


def _dataset_kind(path: Path) -> tuple[str, bool | None]:
    meta, manifest = path / "meta.json", path / "shards.json"
    try:
        if meta.is_file() and json.loads(meta.read_text()).get("simulated"):
            return "a folder written by `s12mae simulate`", True
        if manifest.is_file():
            return "a shard set written by `s12mae shards`", None
    except (OSError, json.JSONDecodeError):
        pass
    return ("a dataset folder" if path.exists() else "not found on the exporting machine, kind unknown"), None


def limits(info: EncoderInfo, sensor: SensorInfo) -> list[str]:
    """What the card must warn about."""
    out = []
    data, simulated = describe_data(info.config)
    if simulated:
        out.append("**Trained on simulated scenes only.** The features have never seen real Sentinel data; use "
                   "them to test pipelines, not to draw conclusions about real scenes.")
    elif simulated is None:
        out.append(f"The pretraining data could not be fully established ({data}).")
    steps = ((info.config or {}).get("train") or {}).get("steps")
    if isinstance(steps, int) and steps < 10_000:
        out.append(f"Short pretraining: {steps} optimizer steps (the paper trains far longer); a smoke check, "
                   "not a converged encoder.")
    out += list(info.notes)
    others = [k for k in info.sensors if k != sensor.key]
    if others:
        out.append(f"This export holds the {sensor.key} patch embedding only; the encoder also has {others} "
                   "(export them with `--sensor`).")
    out.append("Inputs must be standardised as below; nodata pixels are expected as 0 after standardisation "
               "(the band mean), as in s12mae's own pipeline.")
    out.append("The position table is the fixed 2-D sin-cos table of MAE, resampled for other image sizes.")
    return out


def model_card(info: EncoderInfo, sensor_key: str) -> str:
    """The ``README.md`` of an export folder for sensor ``sensor_key``."""
    s = info.sensor(sensor_key)
    data, _ = describe_data(info.config)
    cfg = info.config or {}
    train, optim = cfg.get("train") or {}, cfg.get("optim") or {}
    front = {"library_name": "timm", "license": "apache-2.0", "pipeline_tag": "image-feature-extraction",
             "tags": ["s12mae", info.method, "remote-sensing", "sentinel-1" if s.key.startswith("s1") else "sentinel-2",
                      "vision-transformer"]}
    rows = "\n".join(f"| {i} | {b} | {m:.6g} | {d:.6g} |" for i, (b, m, d) in enumerate(zip(s.bands, s.mean, s.std)))
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# s12mae {info.method} encoder: {info.encoder}, {s.key}", "",
        (f"A ViT encoder pretrained with **{_METHODS.get(info.method, info.method)}** by s12mae "
         "(self-supervised Sentinel-1/2 pretraining)."), "",
        "## Model", "",
        (f"- Architecture: {info.encoder} (width {info.embed_dim}, depth {info.depth}, {info.num_heads} heads, "
         f"patch {info.patch_size}), trained at {info.img_size} x {info.img_size} px"),
        f"- Sensor of this export: `{s.key}`; encoder sensors: {list(info.sensors)}",
        "- Output: tokens `(N, 1 + L, D)` (class token first); pooled feature = mean of the normed patch tokens",
        "", "## Training", "",
        f"- Method: {info.method}",
        f"- Data: {data}",
        (f"- Steps: {train.get('steps', 'unknown')}, batch {train.get('batch_size', 'unknown')}, optimizer "
         f"{optim.get('name', 'unknown')} (lr {optim.get('lr', 'unknown')}), seed {train.get('seed', 'unknown')}"),
        "", "## Input", "",
        (f"Bands in this order, in **{s.units}** (files holding DN: units = DN x {s.dn_scale:g} + {s.dn_offset:g}; "
         "Sentinel-2 processing baseline >= 04.00 files first lose their +1000 DN offset). Standardise each band: "
         "`(x - mean) / std`."), "",
        f"Statistics: {s.stats_source or 'unknown source'}", "",
        "| channel | band | mean | std |", "|---|---|---|---|", rows,
        "", "## Limits", "", *[f"- {item}" for item in limits(info, s)],
        "", "## Use", "", "```python",
        "import timm",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)  # or "hf-hub:user/repo"',
        "features = model.forward_features(x)  # x: (N, C, H, W) standardised as above",
        "", "from s12mae.integrations.hub import S12MAEEncoder",
        'encoder = S12MAEEncoder.from_pretrained("PATH/TO/THIS/FOLDER")  # or a Hub repo id', "```",
        "", "## Run config", "", "```yaml",
        yaml.safe_dump(info.config, sort_keys=False).strip() if info.config else "# not recorded",
        "```", "",
    ]
    return "\n".join(lines)
