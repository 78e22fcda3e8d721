"""Loggers of the pretraining loop (TensorBoard, W&B, run_info.json) and the held-out loss."""

from __future__ import annotations

import json
import re
from importlib import metadata

import pytest
import torch
import yaml
from conftest import tiny_config

from s12mae.config import TrainConfig
from s12mae.train import loop
from s12mae.train.heldout import held_out_rows
from s12mae.train.loop import pretrain


def _cfg(tmp_path, val_samples: int = 4, **train):
    cfg = tiny_config(str(tmp_path / "run"), **{"steps": 5, "eval_every": 2, "checkpoint_every": 5, **train})
    cfg.data.val_samples = val_samples
    return cfg


def _lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_the_records_scalars_and_the_config(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, logger=["jsonl", "tensorboard"])
    pretrain(cfg)
    run = tmp_path / "run"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    lines = _lines(run)
    for key in ("loss", "loss/s2_l1c", "grad_norm", "lr", "samples_per_s", "val_loss"):
        events = acc.Scalars(f"mae/{key}")
        expected = [(r["step"], r[key]) for r in lines if key in r]
        assert [e.step for e in events] == [s for s, _ in expected]
        assert [e.value for e in events] == pytest.approx([v for _, v in expected], rel=1e-6)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text.strip("`\n").removeprefix("yaml\n"))["train"]["logger"] == ["jsonl", "tensorboard"]
    assert "git_commit" in acc.Tensors("version/text_summary")[0].tensor_proto.string_val[0].decode()


def test_held_out_loss_every_n_steps_on_samples_never_trained_on(tmp_path, monkeypatch, one_thread):
    seen: list[int] = []
    real = loop.task_loader

    def spy(*args, **kwargs):
        for batch in real(*args, **kwargs):
            seen.extend(batch["index"].tolist())
            yield batch

    monkeypatch.setattr(loop, "task_loader", spy)
    cfg = _cfg(tmp_path, steps=5, eval_every=2)
    result = pretrain(cfg)
    held = set(held_out_rows(24, 4).tolist())
    assert len(held) == 4
    assert not held & set(seen)  # 5 steps x 8 samples: every training row is drawn, no held-out one
    assert set(seen) == set(range(24)) - held
    val = [r for r in _lines(tmp_path / "run") if "val_loss" in r]
    assert [(r["step"], r["task"]) for r in val] == [(1, "mae"), (3, "mae"), (4, "mae")]  # every 2 and the last
    assert all(r["val_loss"] == r["val_loss/s2_l1c"] > 0 for r in val)
    assert val[0]["val_loss"] != val[-1]["val_loss"]  # the weights changed, the samples and masks did not
    assert all("loss" in r for r in result.history) and len(result.history) == 5


def test_held_out_loss_is_the_training_loss_of_the_same_samples(tmp_path, one_thread):
    """With a learning rate of ~0 the held-out loss at any step is the loss of the untrained
    model on the held-out rows with the step-0 masks, computed independently here."""
    from torch.utils.data import default_collate

    from s12mae.methods import build_method

    cfg = _cfg(tmp_path, steps=2, eval_every=1)
    cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay = 1e-12, 0.0, 0.0
    pretrain(cfg)
    cfg.data.stats = str(tmp_path / "run" / "data_stats.json")  # the run computed its data's statistics
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    ds = loop._task_datasets(cfg, method)["mae"]
    from s12mae.data import model_batch

    stored = default_collate([ds[int(i)] for i in held_out_rows(24, 4)])
    batch = model_batch(stored, ds.sensors, cfg.data.nodata, "held-out rows")  # stored values -> model inputs
    with torch.no_grad():
        expected = float(method(batch, "mae", 0)["s2_l1c"] / method.denominators(batch, "mae", 0)["s2_l1c"])
    val = [r["val_loss"] for r in _lines(tmp_path / "run") if "val_loss" in r]
    assert val == pytest.approx([expected, expected], rel=1e-4)


def test_run_info_records_the_resolved_config_and_the_code_version(tmp_path, one_thread):
    cfg = tiny_config(str(tmp_path / "run"), steps=1)
    pretrain(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert info["code_version"]["package"] == metadata.version("s12mae")
    commit = info["code_version"]["git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)


def test_wandb_offline_run_is_written(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("wandb", reason="the [wandb] extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    pretrain(_cfg(tmp_path, steps=2, logger=["jsonl", "wandb"]))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_bad_logger_and_held_out_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"train.logger: unknown logger\(s\) \['mlflow'\]"):
        TrainConfig(logger=["jsonl", "mlflow"])
    with pytest.raises(ValueError, match="data.val_samples > 0"):
        pretrain(_cfg(tmp_path, val_samples=0))
    with pytest.raises(ValueError, match="simulated data: data.val_samples=24 leaves task 'mae' no training sample"):
        pretrain(_cfg(tmp_path, val_samples=24))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


def test_a_resumed_run_may_add_a_logger_which_gets_the_new_steps(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pretrain(_cfg(tmp_path, val_samples=0, steps=2, eval_every=0, checkpoint_every=2))
    pretrain(_cfg(tmp_path, val_samples=0, steps=4, eval_every=0, checkpoint_every=2,
                  logger=["jsonl", "tensorboard"]), resume=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("mae/loss")] == [2, 3]
    assert [r["step"] for r in _lines(tmp_path / "run")] == [0, 1, 2, 3]


def test_evaluate_logs_the_head_curves_and_test_metrics_to_tensorboard(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from s12mae.evaluation import EvalConfig, EvalDataConfig, FitConfig, run_evaluation

    out = tmp_path / "eval"
    cfg = EvalConfig(task="sen1floods11", random_encoder="vit_nano_patch8", out_dir=str(out), num_plot=0,
                     fit=FitConfig(steps=6, batch_size=2, val_every=3), progress=False, ridge=False,
                     data=EvalDataConfig(img_size=32, num_train=4, num_val=2, num_test=2),
                     logger=["jsonl", "tensorboard"])
    result = run_evaluation(cfg)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    train = result["train"]
    for tag, curve in (("train/loss", train["loss"]), ("val/loss", train["val_loss"])):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in curve]
        assert [e.value for e in events] == pytest.approx([v for _, v in curve], rel=1e-6)
    assert [e.value for e in acc.Scalars("test/iou_water")] == pytest.approx([result["metrics"]["iou_water"]])
    assert json.loads((out / "run_info.json").read_text())["config"]["logger"] == ["jsonl", "tensorboard"]


def test_evaluate_refuses_an_unknown_logger():
    from s12mae.evaluation import EvalConfig

    with pytest.raises(ValueError, match=r"logger: unknown logger\(s\) \['csv'\]"):
        EvalConfig(logger=["csv"])
