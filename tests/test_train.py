"""The training loop: resume, accumulation, data parallelism, schedules and bad input."""

from __future__ import annotations

import json
import numpy as np
import pytest
import yaml
import torch
from safetensors.torch import load_file

from conftest import run_ddp, tiny_config
from s12mae.data import StepOrder
from s12mae.simulate import SimulationConfig, write_simulated
from s12mae.train.loop import pretrain
from s12mae.train.schedule import TaskSchedule


def _losses(history):
    return [r["loss"] for r in history]


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, optimizer):
    full_cfg = tiny_config(str(tmp_path / "a"))
    full_cfg.optim.name = optimizer
    full = pretrain(full_cfg)

    def crash(step, record):
        if step == 4:
            raise _Crash

    cfg = tiny_config(str(tmp_path / "b"))
    cfg.optim.name = optimizer
    with pytest.raises(_Crash):
        pretrain(cfg, callbacks=[crash])
    resumed = pretrain(cfg, resume=True)
    assert _losses(resumed.history) == _losses(full.history)  # bit-identical on CPU
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(6))
    a = load_file(str(tmp_path / "a" / "checkpoint-00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-00000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.yaml", "loss_curve.png", "reconstruction_mae.png", "encoder.safetensors"):
        assert (tmp_path / "b" / name).stat().st_size > 0


def test_gradient_accumulation_gives_the_same_steps(tmp_path):
    one = pretrain(tiny_config(str(tmp_path / "a"), steps=3))
    acc = pretrain(tiny_config(str(tmp_path / "b"), steps=3, micro_batch_size=2))
    np.testing.assert_allclose(_losses(one.history), _losses(acc.history), rtol=1e-5)


def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(tmp_path):
    data = str(write_simulated(tmp_path / "data", SimulationConfig(num_samples=24, img_size=32, seed=3)))
    s2 = np.load(tmp_path / "data" / "s2_l1c.npy", mmap_mode="r+")
    s2[::3, :, :9, :13] = 0  # S2 nodata in every third scene: the ranks' counts differ
    s2.flush()
    single = tiny_config(str(tmp_path / "one"), steps=3)
    single.data.path, single.data.nodata = data, "mask"
    single.model.sensor = "s2_l1c"
    ref = _losses(pretrain(single).history)
    # the test is only sharp if the two ranks hold different numbers of nodata scenes in a step
    # (then averaging per-rank mean losses would not give the global loss)
    order = StepOrder(24, 8, seed=0)
    assert any(sum(i % 3 == 0 for i in order.global_batch(s)[:4]) != sum(i % 3 == 0 for i in order.global_batch(s)[4:])
               for s in range(3))
    two = tiny_config(str(tmp_path / "two"), steps=3, micro_batch_size=2)
    two.data.path, two.data.nodata = data, "mask"
    for rank_history in run_ddp(two, tmp_path):
        np.testing.assert_allclose([r["loss"] for r in rank_history], ref, rtol=1e-5)


def test_resume_without_checkpoint_or_from_a_corrupt_one_is_a_clear_error(tmp_path):
    cfg = tiny_config(str(tmp_path / "r"), steps=3)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        pretrain(cfg, resume=True)
    pretrain(cfg)
    cfg.train.steps = 5
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    weights = tmp_path / "r" / "checkpoint-00000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors: unreadable or corrupt"):
        pretrain(cfg, resume=True)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics  # nothing overwritten
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(cfg)


def test_non_finite_input_names_the_sample_unless_masked(tmp_path):
    data = write_simulated(tmp_path / "data", SimulationConfig(num_samples=8, img_size=32))
    arr = np.load(data / "s2_l1c.npy", mmap_mode="r+")
    arr[5, 2, 0, 0] = 0  # S2 nodata value
    arr.flush()
    cfg = tiny_config(str(tmp_path / "r"), steps=2)
    cfg.data.path = str(data)
    with pytest.raises(ValueError, match=r"task .mae.: sample\(s\) \[5\] have 1 nodata"):
        pretrain(cfg)
    cfg.data.nodata = "mask"
    cfg.train.out_dir = str(tmp_path / "r2")
    assert len(pretrain(cfg).history) == 2


def test_batch_that_does_not_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="micro_batch_size 3 does not divide"):
        pretrain(tiny_config(str(tmp_path / "r"), micro_batch_size=3))


def test_schedules_are_deterministic_and_respect_their_definition():
    alt = TaskSchedule(["mae", "aux"])
    assert [alt.task_at(s) for s in range(5)] == ["mae", "aux", "mae", "aux", "mae"]
    seq = TaskSchedule(["mae", "aux"], sequence=["mae", "mae", "aux"])
    assert "".join(seq.task_at(s)[0] for s in range(9)) == "mmammamma"
    assert seq.task_steps(4, 9) == {"mae": [3, 4, 5], "aux": [1, 2]}
    w = TaskSchedule(["mae", "aux"], weights={"mae": 3, "aux": 1}, seed=5)
    ids = w.assignments(20000)
    assert abs(float((ids == 0).mean()) - 0.75) < 0.02
    assert np.array_equal(ids, TaskSchedule(["mae", "aux"], weights={"mae": 3, "aux": 1}, seed=5).assignments(20000))
    assert all(w.task_at(s) == ["mae", "aux"][ids[s]] for s in range(50))
    with pytest.raises(ValueError, match="unknown task"):
        TaskSchedule(["mae"], sequence=["aux"])


def test_each_task_reads_its_own_shard_set(tmp_path):
    from s12mae.shards import ShardConfig, write_shards, simulated_samples

    data = write_simulated(tmp_path / "data", SimulationConfig(num_samples=24, img_size=32, seed=3, s1_fraction=0.5))
    samples = simulated_samples(data)
    write_shards(samples, tmp_path / "s2-all", ShardConfig(sensors=["s2_l1c"], chips_per_shard=8))
    write_shards(samples, tmp_path / "pairs", ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=4))
    cfg = tiny_config(str(tmp_path / "run"), steps=4, checkpoint_every=2)
    cfg.method = "auxmae"
    cfg.data.task_paths = {"mae": str(tmp_path / "s2-all"), "aux": str(tmp_path / "pairs")}
    hist = pretrain(cfg).history
    assert [r["task"] for r in hist] == ["mae", "aux", "mae", "aux"]
    assert all(np.isfinite(r["loss"]) for r in hist)  # nodata=error: no S2-only scene reached the aux task
    assert (tmp_path / "run" / "reconstruction_aux.png").stat().st_size > 0
    cfg.train.steps = 6
    assert len(pretrain(cfg, resume=True).history) == 6  # a stream resumes (at an epoch boundary)
    cfg.data.task_paths = {"mea": str(tmp_path / "pairs")}
    cfg.train.out_dir = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['mea'\]"):
        pretrain(cfg)


def test_resume_of_a_finished_run_redoes_only_its_end(tmp_path):
    cfg = tiny_config(str(tmp_path / "r"), steps=3)
    pretrain(cfg)
    run = tmp_path / "r"
    (run / "encoder.safetensors").unlink()  # as if the run died while exporting
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"st')  # and cut a line short
    result = pretrain(cfg, resume=True)
    assert (run / "encoder.safetensors").stat().st_size > 0
    assert [r["step"] for r in result.history] == [0, 1, 2]


def _old_style_config(cfg, **model) -> str:
    """``config.yaml`` as runs wrote it before the per-method sections (flat ``aux_*``/``mix_*``)."""
    d = cfg.to_dict()
    aux, mix = d["model"].pop("aux"), d["model"].pop("mix")
    d["model"].update({"aux_sensor": aux["sensor"], "aux_target_scale": aux["target_scale"],
                       "mix_sensors": mix["sensors"], "mix_proportions": mix["proportions"], "mix_lambda": mix["lam"],
                       "mix_loss_weights": None, "mix_drop_ratio": mix["drop_ratio"],
                       "mix_sensor_embedding": mix["sensor_embedding"], **model})
    return yaml.safe_dump(d, sort_keys=False)


def test_a_run_folder_with_an_old_style_config_resumes_and_its_differences_are_named(tmp_path):
    cfg = tiny_config(str(tmp_path / "r"), steps=3)
    pretrain(cfg)
    saved = tmp_path / "r" / "config.yaml"
    saved.write_text(_old_style_config(cfg))
    assert [r["step"] for r in pretrain(cfg, resume=True).history] == [0, 1, 2]  # upgraded on read
    saved.write_text(_old_style_config(cfg, mix_lambda=0.3))
    with pytest.raises(ValueError, match=r"model\.mix\.lam: 0\.3 -> 0\.5"):
        pretrain(cfg, resume=True)
    saved.write_text(_old_style_config(cfg, mix_lambda=0.5, mix_loss_weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match=r"config\.yaml: MixMAE loss weights \[1\.0, 1\.0\] .* model\.mix\.lam"):
        pretrain(cfg, resume=True)


def test_old_loss_weights_become_the_lam_that_gives_them():
    from s12mae.config import upgrade_saved_config

    def lam(**old):
        return upgrade_saved_config({"model": old}, "x.yaml")["model"]["mix"]["lam"]

    assert lam(mix_lambda=0.3) == pytest.approx(0.3)
    assert lam(mix_loss_weights=[0.8, 0.2]) == pytest.approx(0.2)
    three = ["s2_l1c", "s1_grd", "dem"]
    assert lam(mix_sensors=three, mix_lambda=0.5) == pytest.approx(1 / 3)  # the old equal weights
    assert lam(mix_sensors=three, mix_loss_weights=[0.25, 0.5, 0.25]) == pytest.approx(0.5)  # by role: s1 gets lam
    assert lam(mix_sensors=["s1_grd", "s2_l1c"], mix_lambda=0.3) == pytest.approx(0.7)  # old positional: s1 got 0.7
    with pytest.raises(ValueError, match="x.yaml"):
        lam(mix_sensors=three, mix_loss_weights=[0.5, 0.3, 0.2])
    new = {"model": {"mix": {"lam": 0.4}}}
    assert upgrade_saved_config(new, "x.yaml") is new
