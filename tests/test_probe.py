"""The periodic frozen probe during pretraining (``train.probe_every``, :mod:`s12mae.train.probe`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared, tiny_config
from safetensors.torch import load_file

from s12mae.config import TrainConfig
from s12mae.train.loop import pretrain
from s12mae.train.probe import FrozenProbe, knn_probe


def _lines(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _probes(run) -> list[dict]:
    return [r for r in _lines(run) if "probe_metric" in r]


def _losses(history) -> list[float]:
    return [r["loss"] for r in history]


class _Crash(RuntimeError):
    pass


def test_probe_every_n_steps_is_logged_plotted_and_leaves_training_unchanged(tmp_path, monkeypatch, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = pretrain(tiny_config(str(tmp_path / "plain"), steps=5))
    cfg = tiny_config(str(tmp_path / "probed"), steps=5, probe_every=2, logger=["jsonl", "tensorboard"])
    cfg.train.probe.num_train, cfg.train.probe.num_val, cfg.train.probe.num_test = 24, 12, 12
    modes: list[bool] = []
    real_call = FrozenProbe.__call__

    def spy(self, method, step):
        record = real_call(self, method, step)
        modes.append(method.training and all(m.training for m in method.encoder.modules()))
        return record

    monkeypatch.setattr(FrozenProbe, "__call__", spy)
    probed = pretrain(cfg)
    run = tmp_path / "probed"
    assert _losses(probed.history) == _losses(plain.history)  # bit-identical on CPU: no RNG draw, same mode
    a = load_file(str(tmp_path / "plain" / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(p.requires_grad for p in probed.model.encoder.parameters())  # the probe froze nothing
    assert modes == [True, True, True]  # back in training mode after every probe
    probes = _probes(run)
    assert [r["step"] for r in probes] == [1, 3, 4]  # every 2 and the last
    assert {r["probe_task"] for r in probes} == {"sen1floods11"} and probes[0]["probe_metric"] == "iou_water"
    assert all(0.0 <= r["iou_water"] <= 1.0 and 0.0 <= r["val_iou_water"] <= 1.0 for r in probes)
    assert (run / "probe_curve.png").stat().st_size > 0
    assert not (tmp_path / "plain" / "probe_curve.png").exists()
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("probe/iou_water")
    assert [e.step for e in events] == [r["step"] for r in probes]
    assert [e.value for e in events] == pytest.approx([r["iou_water"] for r in probes], rel=1e-6)


def test_the_last_probe_is_the_evaluations_ridge_probe_of_the_exported_encoder(tmp_path, one_thread):
    """Same data, same statistics, same closed-form probe: ``s12mae evaluate``'s ridge score of the
    run's exported encoder equals the probe logged at the run's last step."""
    from s12mae.evaluation import EvalConfig, EvalDataConfig, FitConfig, run_evaluation

    cfg = tiny_config(str(tmp_path / "run"), steps=2, probe_every=2)
    cfg.train.probe.task, cfg.train.probe.num_train, cfg.train.probe.num_val, cfg.train.probe.num_test = (
        "bigearthnet", 16, 8, 8)
    pretrain(cfg)
    last = _probes(tmp_path / "run")[-1]
    ev = EvalConfig(task="bigearthnet", checkpoint=str(tmp_path / "run" / "encoder.safetensors"),
                    out_dir=str(tmp_path / "eval"), fit=FitConfig(steps=2, batch_size=4), progress=False,
                    num_plot=0, device="cpu",
                    data=EvalDataConfig(img_size=32, num_train=16, num_val=8, num_test=8))
    ridge = run_evaluation(ev)["ridge"]
    assert last["map_micro"] == pytest.approx(ridge["headline"]["value"], abs=1e-4)
    assert last["val_map_micro"] == pytest.approx(ridge["val_headline"], abs=1e-4)


def test_a_resumed_run_with_probes_repeats_the_uninterrupted_one(tmp_path, one_thread):
    full = pretrain(tiny_config(str(tmp_path / "a"), probe_every=2))

    def crash(step, record):
        if step == 4:
            raise _Crash

    cfg = tiny_config(str(tmp_path / "b"), probe_every=2)
    with pytest.raises(_Crash):
        pretrain(cfg, callbacks=[crash])
    cfg.train.probe_every = 3  # a probe setting may change on resume: it changes nothing trained
    resumed = pretrain(cfg, resume=True)
    assert _losses(resumed.history) == _losses(full.history)
    # step 1 before the crash (step 3's probe was after the checkpoint: trimmed), then every 3 and the last
    assert [r["step"] for r in _probes(tmp_path / "b")] == [1, 5]
    before = {r["step"]: r["iou_water"] for r in _probes(tmp_path / "a")}
    after = {r["step"]: r["iou_water"] for r in _probes(tmp_path / "b")}
    assert after == {s: before[s] for s in after}  # same weights at the same steps, same scores


def test_knn_probe_with_one_neighbour_scores_its_own_training_set_perfectly(one_thread):
    from s12mae.evaluation.features import encode_split
    from s12mae.models.vit import build_encoder

    cfg = TrainConfig(probe_every=1).probe
    cfg.task, cfg.num_train, cfg.num_val, cfg.num_test = "bigearthnet", 12, 4, 4
    probe = FrozenProbe(cfg, None, 32, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    torch.manual_seed(0)
    encoder = build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32)
    model = probe._model(encoder)
    train = encode_split(model, probe.task.train, probe.task, "train", 8, torch.device("cpu"), probe.autocast)
    model.head.norm.fit(f for f, _ in train.batches(8))
    assert knn_probe(probe.task, model, train, train, k=1) == pytest.approx(1.0)
    assert knn_probe(probe.task, model, train, train, k=12) < 1.0  # every row votes: no longer its own label


def test_probe_settings_are_checked_before_the_run_starts(tmp_path):
    with pytest.raises(ValueError, match="train.probe_every: the frozen probe runs on rank 0 alone"):
        TrainConfig(probe_every=2, parallel="fsdp")
    with pytest.raises(ValueError, match="train.probe.num_train: must be >= 1"):
        TrainConfig(probe_every=2).probe.__class__(num_train=0)
    cfg = tiny_config(str(tmp_path / "run"), probe_every=2)
    cfg.train.probe.task = "no_such_task"
    with pytest.raises(ValueError, match="unknown task 'no_such_task'"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "latest").exists()


def test_probe_on_real_bigearthnet_patches(tmp_path, one_thread):
    cfg = tiny_config(str(tmp_path / "run"), steps=2, probe_every=2)
    cfg.train.probe.task, cfg.train.probe.source = "bigearthnet", "real"
    cfg.train.probe.path = str(shared("bigearthnet-v1-example"))
    pretrain(cfg)
    (record,) = _probes(tmp_path / "run")
    assert record["probe_task"] == "bigearthnet" and record["step"] == 1
    assert 0.0 < record["map_micro"] <= 1.0
