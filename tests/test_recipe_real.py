"""The one-GPU real-data recipe (README "One GPU, real data") end to end at toy size.

SSL4EO-S12 sample -> pairs -> shards -> statistics -> MAE and MixMAE pretraining with the recipe
configs (a nano encoder at 64 px, a few steps) -> frozen evaluation on the real Sen1Floods11 and
BigEarthNet samples. The recipes themselves are checked to be what the README says they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import shared

from s12mae.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.encoder", "vit_nano_patch8", "--model.decoder", "vitlite_128d2b", "--model.img_size", "64",
        "--train.steps", "2", "--train.batch_size", "4", "--train.micro_batch_size", "null",
        "--optim.warmup_steps", "1", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
        "--train.progress", "false", "--train.checkpoint_every", "2"]


@pytest.mark.parametrize("name", ["mae_ssl4eo_1gpu", "mixmae_ssl4eo_1gpu"])
def test_the_one_gpu_recipes_are_vit_b16_bf16_compiled_on_shards(name):
    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    assert (cfg["model"]["encoder"], cfg["model"]["img_size"]) == ("vit_base_patch16", 224)
    assert (cfg["train"]["precision"], cfg["train"]["compile"]) == ("auto", "auto")  # bf16 + compile on CUDA
    assert cfg["train"]["batch_size"] % cfg["train"]["micro_batch_size"] == 0
    assert cfg["data"]["path"] == ("ssl4eo/shards/s2-all" if name.startswith("mae") else "ssl4eo/shards/pairs")
    assert cfg["data"]["stats"] == "ssl4eo/stats.json" and cfg["data"]["nodata"] == "mask"


def _run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def test_recipe_end_to_end_on_the_real_samples(tmp_path, monkeypatch, one_thread):
    ssl4eo, floods, ben = (str(shared(f)) for f in ("ssl4eo-s12-sample", "sen1floods11-sample",
                                                     "bigearthnet-v1-example"))
    monkeypatch.chdir(tmp_path)
    _run("pair", ssl4eo, "--out", "ssl4eo/pairs")
    for layout, sensors in (("s2-all", "[s2_l1c]"), ("pairs", "[s2_l1c, s1_grd]")):
        _run("shards", "--layout", layout, "--data", "ssl4eo/pairs", "--out", f"ssl4eo/shards/{layout}",
             "--shards.sensors", sensors, "--shards.crop", "grid", "--shards.chip_size", "64")
    _run("stats", "--data", "ssl4eo/shards/s2-all", "--out", "ssl4eo/stats.json")
    _run("stats", "--data", "ssl4eo/shards/pairs", "--out", "ssl4eo/stats.json", "--sensors", "[s1_grd]")
    stats = json.loads(Path("ssl4eo/stats.json").read_text())
    assert {"s2_l1c", "s1_grd"} <= set(stats)

    for method in ("mae", "mixmae"):
        probe = (["--train.probe_every", "2", "--train.probe.task", "bigearthnet", "--train.probe.source", "real",
                  "--train.probe.path", ben] if method == "mae" else [])
        _run("pretrain", "--config", str(ROOT / "configs" / f"{method}_ssl4eo_1gpu.yaml"),
             "--train.out_dir", f"runs/{method}", *TINY, *probe)
        saved = yaml.safe_load(Path(f"runs/{method}/config.yaml").read_text())
        assert saved["method"] == method and saved["data"]["stats"] == "ssl4eo/stats.json"
        assert Path(f"runs/{method}/encoder.safetensors").stat().st_size > 0
    lines = [json.loads(x) for x in Path("runs/mae/metrics.jsonl").read_text().splitlines()]
    (probed,) = [r for r in lines if "probe_metric" in r]  # the frozen probe on the real BigEarthNet patches
    assert probed["probe_task"] == "bigearthnet" and 0 < probed["map_micro"] <= 1
    assert Path("runs/mae/probe_curve.png").stat().st_size > 0

    for method in ("mae", "mixmae"):
        for task, path in (("sen1floods11", floods), ("bigearthnet", ben)):
            out = f"runs/eval/{method}_{task}"
            _run("evaluate", "--task", task, "--data.source", "real", "--data.path", path,
                 "--checkpoint", f"runs/{method}/encoder.safetensors", "--out_dir", out,
                 "--fit.steps", "2", "--progress", "false", "--num_plot", "1")
            result = json.loads(Path(out, "metrics.json").read_text())
            assert result["data_note"] != "SIMULATED data: a smoke check, not results"
            assert result["task"]["name"] == task and path in result["task"]["source"]
            assert math.isfinite(result["headline"]["value"]) and math.isfinite(result["ridge"]["headline"]["value"])
            filled = set(result["encoder"]["filled_bands"])
            assert filled == ({"B10"} if task == "bigearthnet" else set())  # L2A lacks B10
