"""Robustness evaluation (issue 14.1): the degradations against their definitions, the per-input
views of a task, and ``s12mae robustness`` end to end on simulated and real samples at toy size."""

from __future__ import annotations

import csv
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import shared

from s12mae.cli import main
from s12mae.evaluation import (
    EvalConfig,
    EvalDataConfig,
    FitConfig,
    build_task,
    run_evaluation,
    with_validation,
)
from s12mae.evaluation import tasks as tasks_module
from s12mae.evaluation.degrade import CLOUD_SPECTRUM, CloudConfig, add_clouds, cloud_opacity, shift_image
from s12mae.evaluation.robustness import RobustnessConfig, condition_dataset, robustness
from s12mae.export import save_encoder
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

DATA = EvalDataConfig(img_size=32, num_train=8, num_val=4, num_test=4)


def _save(path, sensors, name="vit_nano_patch8", img_size=32):
    torch.manual_seed(0)
    enc = build_encoder(name, sensors, img_size)
    save_encoder(enc, path, SimpleNamespace(model=SimpleNamespace(encoder=name, img_size=img_size), method="mae"))
    return str(path)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    return {"MixMAE": _save(root / "mix.safetensors", {"s2_l1c": 13, "s1_grd": 2}),
            "MAE": _save(root / "mae.safetensors", {"s2_l1c": 13})}


def _run(steps=4, data=DATA):
    return EvalConfig(fit=FitConfig(steps=steps, batch_size=4), data=data, threads=1, progress=False, device="cpu")


# --- degradations ------------------------------------------------------------------------------

def test_shift_moves_every_pixel_by_n_and_repeats_the_edge():
    x = torch.randn(2, 3, 16, 20)
    for n in (1, 4, 8):
        y = shift_image(x, n)
        assert y.shape == x.shape
        assert torch.equal(y[..., n:, n:], x[..., :-n, :-n])
        assert torch.equal(y[..., :n, n:], x[..., :1, :-n].expand(-1, -1, n, -1))  # top strip repeats row 0
        assert not torch.equal(y, x)
    assert torch.equal(shift_image(x, 0), x)
    assert torch.equal(shift_image(x[0], 3), shift_image(x, 3)[0])  # (C, H, W) as (N, C, H, W)
    with pytest.raises(ValueError, match="shift of 16 px on a 16x20 image"):
        shift_image(x, 16)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_clouds_cover_the_fraction_deterministically_and_nest(fraction):
    cfg = CloudConfig(seed=3)
    a = cloud_opacity((64, 64), fraction, 7, cfg)
    assert a.shape == (64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert abs(float((a > 0.5).float().mean()) - fraction) < 0.01
    assert torch.equal(a, cloud_opacity((64, 64), fraction, 7, cfg))  # same seed and index: same clouds
    assert not torch.equal(a, cloud_opacity((64, 64), fraction, 8, cfg))  # another scene: other clouds
    assert not torch.equal(a, cloud_opacity((64, 64), fraction, 7, CloudConfig(seed=4)))
    bigger = cloud_opacity((64, 64), min(fraction * 1.8, 1.0), 7, cfg)
    assert bool(((a > 0.5) <= (bigger > 0.5)).all())  # a larger fraction covers the smaller one's clouds
    assert torch.equal(cloud_opacity((64, 64), 0.0, 7, cfg), torch.zeros(64, 64))


def test_clouds_are_bright_and_flat_in_vnir_and_low_in_cirrus():
    spec = get_sensor("s2_l1c")
    x = torch.zeros(spec.num_channels, 8, 8)  # the standardised band means
    a = torch.zeros(8, 8)
    a[:4] = 1.0
    y = add_clouds(x, spec, a, brightness=0.6)
    assert torch.equal(y[:, 4:], x[:, 4:])  # clear sky untouched
    refl = {b: float(y[i, 0, 0]) * spec.stats[b].std + spec.stats[b].mean for i, b in enumerate(spec.band_names)}
    for band in ("B02", "B03", "B04", "B08"):
        assert refl[band] == pytest.approx(0.6 * CLOUD_SPECTRUM[band], abs=1e-4)
        assert refl[band] > spec.stats[band].mean + spec.stats[band].std  # brighter than a typical surface
    assert refl["B10"] < 0.2 * refl["B02"] and refl["B12"] < refl["B11"] < refl["B02"]
    with pytest.raises(ValueError, match=r"clouds on s1_grd: no cloud reflectance for band\(s\) \['VV', 'VH'\]"):
        add_clouds(torch.zeros(2, 8, 8), get_sensor("s1_grd"), a, 0.6)


def test_condition_views_degrade_only_their_sensor():
    task = build_task("sen1floods11", DATA, extra=("s1_grd",))
    cfg = RobustnessConfig(checkpoints={"x": "random"})
    base = task.test[1]
    both = condition_dataset(cfg, task, task.test, "both")[1]
    assert both["s2_l1c+s1_grd"].shape[0] == 15
    assert torch.equal(both["s2_l1c+s1_grd"], torch.cat([base["s2_l1c"], base["s1_grd"]]))
    shifted = condition_dataset(cfg, task, task.test, "both", "shift", 8)[1]["s2_l1c+s1_grd"]
    assert torch.equal(shifted[:13], base["s2_l1c"])  # S2 stays
    assert torch.equal(shifted[13:, 8:, 8:], base["s1_grd"][:, :-8, :-8])
    clouded = condition_dataset(cfg, task, task.test, "s2", "cloud", 0.5)[1]["s2_l1c"]
    opacity = cloud_opacity((32, 32), 0.5, int(base["index"]), cfg.cloud)  # keyed by the sample's index
    assert torch.equal(clouded, add_clouds(base["s2_l1c"], task.spec, opacity, cfg.cloud.brightness))
    assert float((opacity > 0.5).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((clouded - base["s2_l1c"]).abs().mean()) > 0.5  # a heavy change of the standardised input
    s1 = condition_dataset(cfg, task, task.test, "s1", "cloud", 0.5)[1]  # clouds do not touch S1
    assert torch.equal(s1["s1_grd"], base["s1_grd"])
    assert torch.equal(s1["label"], base["label"])


def test_a_task_that_cannot_add_s1_says_so(monkeypatch):
    monkeypatch.setitem(tasks_module.TASKS, ("toy", "simulated"), lambda data: None)
    monkeypatch.setitem(tasks_module.EXTRA_INPUTS, ("toy", "simulated"), ())
    with pytest.raises(ValueError, match=r"task 'toy' \(data source 'simulated'\) cannot provide input\(s\) \['s1_grd'\]"):
        build_task("toy", DATA, extra=("s1_grd",))


def test_config_is_checked():
    with pytest.raises(ValueError, match="inputs: choose from"):
        RobustnessConfig(checkpoints={"a": "random"}, inputs=["s3"])
    with pytest.raises(ValueError, match="run.scenario: the robustness evaluation keeps encoders frozen"):
        RobustnessConfig(checkpoints={"a": "random"}, run=EvalConfig(scenario="finetune"))
    with pytest.raises(ValueError, match="clouds: fractions in"):
        RobustnessConfig(checkpoints={"a": "random"}, clouds=[1.5])


# --- end to end --------------------------------------------------------------------------------

def test_robustness_on_simulated_data(encoders, tmp_path):
    out = tmp_path / "rob"
    cfg = RobustnessConfig(checkpoints=encoders, shifts=[0, 4], clouds=[0, 0.5], seeds=[0], out_dir=str(out),
                           run=_run())
    result = robustness(cfg)
    for name in ("robustness.md", "robustness.csv", "robustness.json", "MixMAE.png", "MAE.png"):
        assert (out / name).stat().st_size > 0, name
    rows = {(r["method"], r["input"], r["condition"], r["level"]): r for r in csv.DictReader((out / "robustness.csv").read_text().splitlines())}
    assert len(rows) == 2 * 3 * 3  # methods x inputs x (clean, shift 4, cloud 50%)
    for inp in ("s1", "both"):  # an S2-only encoder: not applicable, blank, no crash
        assert all(rows[("MAE", inp, c, lv)]["applicable"] == "0" and rows[("MAE", inp, c, lv)]["mean"] == ""
                   for c, lv in (("clean", "0"), ("shift", "4"), ("cloud", "0.5")))
    assert "| MAE | s1 |  |  |  |" in (out / "robustness.md").read_text()
    assert "Blank: not applicable" in (out / "robustness.md").read_text()
    mix = {k[1:]: r for k, r in rows.items() if k[0] == "MixMAE"}
    assert all(mix[(i, "clean", "0")]["applicable"] == "1" for i in ("s2", "s1", "both"))
    assert mix[("s1", "shift", "4")]["applicable"] == "1" and mix[("s2", "shift", "4")]["applicable"] == "0"
    assert mix[("s2", "cloud", "0.5")]["applicable"] == "1" and mix[("s1", "cloud", "0.5")]["applicable"] == "0"
    assert mix[("both", "cloud", "0.5")]["mean"] != mix[("both", "clean", "0")]["mean"]  # clouds reach the head
    assert json.loads((out / "robustness.json").read_text())["runs"] == json.loads(json.dumps(result["runs"]))

    # shift 0 / no cloud is the ordinary evaluation's score: same task, same head, same protocol
    run = dataclasses.replace(_run(), checkpoint=encoders["MixMAE"], ridge=False, num_plot=0, out_dir=str(tmp_path / "e"))
    plain = run_evaluation(run)["headline"]["value"]
    ours = next(r for r in result["runs"] if r["method"] == "MixMAE" and r["input"] == "s2")["scores"]["clean:0"]
    assert ours == pytest.approx(plain, abs=1e-6)


def test_robustness_cli_on_real_sen1floods11(tmp_path):
    root = shared("sen1floods11-sample")
    out = tmp_path / "s1f11"
    mix = _save(tmp_path / "mix16.safetensors", {"s2_l1c": 13, "s1_grd": 2}, "vit_nano_patch16")  # 512 px chips
    code = main(["robustness", "--checkpoints", json.dumps({"MixMAE": mix}), "--task", "sen1floods11",
                 "--run.data.source", "real", "--run.data.path", str(root), "--shifts", "[0, 8]", "--clouds", "[0, 0.5]",
                 "--run.fit.steps", "2", "--run.progress", "false", "--run.device", "cpu", "--out_dir", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "robustness.csv").read_text().splitlines()))
    got = {(r["input"], r["condition"]): r for r in rows if r["applicable"] == "1"}
    assert set(got) == {("s2", "clean"), ("s2", "cloud"), ("s1", "clean"), ("s1", "shift"), ("both", "clean"),
                        ("both", "shift"), ("both", "cloud")}
    assert "sen1floods11-sample" in (out / "robustness.md").read_text()


def test_robustness_on_real_bigearthnet_v1(encoders, tmp_path):
    root = shared("bigearthnet-v1-example")
    data = EvalDataConfig(source="real", path=str(root))
    task, _ = with_validation(build_task("bigearthnet", data, extra=("s1_grd",)), data.val_fraction)
    assert task.train[0]["s1_grd"].shape == (2, 120, 120)
    out = tmp_path / "ben"
    result = robustness(RobustnessConfig(checkpoints=encoders, task="bigearthnet", shifts=[0, 2], clouds=[0, 0.25],
                                         out_dir=str(out), run=_run(steps=2, data=data)))
    applicable = {(r["method"], r["input"]) for r in result["runs"] if r["applicable"]}
    assert applicable == {("MixMAE", "s2"), ("MixMAE", "s1"), ("MixMAE", "both"), ("MAE", "s2")}
    assert (out / "MAE.png").is_file() and "map_micro" in (out / "robustness.md").read_text()
