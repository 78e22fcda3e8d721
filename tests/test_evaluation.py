"""Downstream evaluation: metrics against hand computations, scenarios, heads, band mapping,
``evaluate`` and ``table`` end to end on tiny simulated tasks, and bad input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import shared
from torch.utils.data import Dataset

from s12mae.evaluation import (
    EvalConfig,
    EvalDataConfig,
    EvalTask,
    FitConfig,
    HeadConfig,
    MultilabelMeter,
    SegmentationMeter,
    TableConfig,
    build_model,
    build_task,
    confusion_matrix,
    evaluate,
    param_groups,
    plan_input,
    prepare_splits,
    register_task,
    run_evaluation,
    table,
    with_validation,
)
from s12mae.evaluation.fitting import fit
from s12mae.evaluation.heads import InputAdapter
from s12mae.evaluation.saved_model import file_sha256
from s12mae.export import save_encoder
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor

DATA = EvalDataConfig(img_size=32, num_train=12, num_test=6, num_val=6)
HEAD = HeadConfig(decoder="vitlite_128d2b")


def _save(path, sensors, name="vit_nano_patch8", img_size=32, seed=0):
    torch.manual_seed(seed)
    enc = build_encoder(name, sensors, img_size)
    save_encoder(enc, path, SimpleNamespace(model=SimpleNamespace(encoder=name, img_size=img_size), method="mae"))
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("enc") / "encoder.safetensors", {"s2_l1c": 13, "s1_grd": 2})


def _cfg(ckpt, **kw):
    fit_kw = {k: kw.pop(k) for k in ("steps", "batch_size", "optim", "layer_decay") if k in kw}
    base = dict(task="sen1floods11", scenario="frozen", checkpoint=ckpt, seed=0, fit=FitConfig(**{
                "steps": 2, "batch_size": 4, **fit_kw}), head=HEAD, data=DATA, threads=1, progress=False, num_plot=2,
                device="cpu")
    return EvalConfig(**{**base, **kw})


def _fit(cfg, task, model):
    task, _ = with_validation(task, cfg.data.val_fraction)
    splits = prepare_splits(cfg, task, model, torch.device("cpu"), None)
    return fit(cfg, task, model, splits["train"], splits["val"])


# --- metrics -----------------------------------------------------------------------------------

def test_iou_from_one_confusion_matrix_with_ignored_pixels():
    target = torch.tensor([[0, 0, 1, 1, -1], [2, 2, 1, 0, -1]])
    pred = torch.tensor([[0, 1, 1, 1, 2], [2, 0, 1, 0, 0]])
    # hand count (true row, predicted column), the two -1 pixels skipped:
    # true 0: pred 0,1,0 -> [2,1,0]; true 1: pred 1,1,1 -> [0,3,0]; true 2: pred 2,0 -> [1,0,1]
    expected = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    assert torch.equal(confusion_matrix(pred, target, 3), expected)
    meter = SegmentationMeter(["a", "b", "c"])
    logits = torch.nn.functional.one_hot(pred.clamp_min(0), 3).permute(2, 0, 1).float()
    for row in range(2):  # two "images": one matrix over both, not a mean of per-image IoUs
        meter.update(logits[:, row : row + 1].unsqueeze(0), target[row : row + 1].unsqueeze(0))
    m = meter.compute()
    assert m["iou_a"] == pytest.approx(2 / (3 + 3 - 2))  # tp 2, row 3, column 3
    assert m["iou_b"] == pytest.approx(3 / (3 + 4 - 3))
    assert m["iou_c"] == pytest.approx(1 / (2 + 1 - 1))
    assert m["miou"] == pytest.approx((2 / 4 + 3 / 4 + 1 / 2) / 3)
    assert m["accuracy"] == pytest.approx(6 / 8) and m["pixels"] == 8


def _ap(scores, labels):
    """AP by sorting: mean of precision at the rank of every positive (distinct scores)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / hits


def test_micro_and_macro_map_against_hand_computed_average_precision():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 3, generator=g)  # distinct scores
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0],
                           [0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    meter = MultilabelMeter(["x", "y", "z"])
    meter.update(logits[:5], labels[:5])
    meter.update(logits[5:], labels[5:])
    m = meter.compute()
    per = [_ap(logits[:, k].tolist(), labels[:, k].tolist()) for k in range(3)]
    for k, name in enumerate("xyz"):
        assert m[f"ap_{name}"] == pytest.approx(per[k], abs=1e-6)
    assert m["map_macro"] == pytest.approx(sum(per) / 3, abs=1e-6)
    assert m["map_micro"] == pytest.approx(_ap(logits.flatten().tolist(), labels.flatten().tolist()), abs=1e-6)


def test_class_without_positives_has_no_ap_and_leaves_the_macro_mean():
    meter = MultilabelMeter(["x", "y"])
    logits, labels = torch.tensor([[2.0, 0.1], [-1.0, 0.3], [0.5, -0.2]]), torch.tensor([[1, 0], [0, 0], [0, 0]])
    with pytest.warns(UserWarning):  # torchmetrics warns about the class without positives
        meter.update(logits, labels)
        m = meter.compute()
    assert math.isnan(m["ap_y"]) and m["map_macro"] == pytest.approx(m["ap_x"]) == pytest.approx(1.0)


# --- scenarios, heads, input plan --------------------------------------------------------------

def test_frozen_encoder_is_bit_identical_and_in_eval_mode_after_training(ckpt):
    cfg = _cfg(ckpt, steps=3)
    task = build_task(cfg.task, cfg.data)
    torch.set_num_threads(1)
    model = build_model(cfg, task)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.train()
    assert not model.encoder.training and model.head.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    _fit(cfg, task, model)
    assert not model.encoder.training
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in model.head.state_dict().items())


def test_finetune_changes_the_encoder(ckpt):
    cfg = _cfg(ckpt, scenario="finetune", task="bigearthnet", steps=2, optim={"name": "adamw", "lr": 1e-3})
    task = build_task(cfg.task, cfg.data)
    model = build_model(cfg, task)
    before = {k: v.clone() for k, v in model.encoder.named_parameters()}
    _fit(cfg, task, model)
    assert model.encoder.training
    changed = [k for k, v in model.encoder.named_parameters() if not torch.equal(before[k], v)]
    assert "blocks.0.attn.qkv.weight" in changed and "patch_embed.s2_l1c.proj.weight" in changed


def test_layer_wise_decay_gives_per_block_learning_rates(ckpt):
    cfg = _cfg(ckpt, scenario="finetune", task="bigearthnet", layer_decay=0.5)
    model = build_model(cfg, build_task(cfg.task, cfg.data))
    depth = len(model.encoder.blocks)
    scale = {n: g["lr_scale"] for g in param_groups(model, 0.05, 0.5) for n in g["names"]}
    for i in range(depth):
        assert scale[f"encoder.blocks.{i}.attn.qkv.weight"] == pytest.approx(0.5 ** (depth - i))
        assert scale[f"encoder.blocks.{i}.norm1.bias"] == pytest.approx(0.5 ** (depth - i))
    assert scale["encoder.patch_embed.s2_l1c.proj.weight"] == pytest.approx(0.5 ** (depth + 1))
    assert scale["encoder.cls_token"] == pytest.approx(0.5 ** (depth + 1))
    assert scale["encoder.norm.weight"] == scale["head.fc.weight"] == 1.0
    assert len(scale) == sum(1 for _ in model.parameters())
    wd = {n: g["weight_decay"] for g in param_groups(model, 0.05, 0.5) for n in g["names"]}
    assert wd["encoder.blocks.0.attn.qkv.weight"] == 0.05 and wd["encoder.cls_token"] == wd["head.fc.bias"] == 0.0


@pytest.mark.parametrize("seg", ["vitlite", "linear", "upsample"])
def test_super_resolution_head_predicts_at_4x_the_input(ckpt, seg):
    cfg = _cfg(ckpt, task="srseg", head=HeadConfig(segmentation=seg, decoder="vitlite_128d2b"))
    task = build_task(cfg.task, cfg.data)
    model = build_model(cfg, task).eval()
    x = torch.stack([task.test[i]["s2_l1c"] for i in range(2)])
    with torch.no_grad():
        out = model(x)
    assert task.label_scale == 4
    assert out.shape == (2, 6, 4 * 32, 4 * 32) == (2, 6, *task.test[0]["label"].shape)


def test_l2a_bands_go_to_l1c_slots_by_name_and_b10_is_zero(ckpt):
    from s12mae.export import load_encoder

    enc, l2a, l1c = load_encoder(ckpt), get_sensor("s2_l2a"), get_sensor("s2_l1c")
    plan = plan_input(enc, l2a, (32, 32), DATA, ckpt)
    assert plan.encoder_sensor == "s2_l1c" and plan.filled == ("B10",)
    x = torch.arange(1, 13, dtype=torch.float32).view(1, 12, 1, 1).expand(2, 12, 32, 32)  # channel c holds c+1
    y = InputAdapter(plan)(x)
    assert y.shape == (2, 13, 32, 32)
    for j, band in enumerate(l1c.band_names):
        want = 0.0 if band == "B10" else float(l2a.band_names.index(band) + 1)
        assert torch.all(y[:, j] == want), band
    with pytest.raises(ValueError, match=r"B10"):
        plan_input(enc, l2a, (32, 32), EvalDataConfig(missing_bands="error"), ckpt)


def test_sizes_the_patch_does_not_divide_are_resized_to_the_nearest_multiple(tmp_path, ckpt):
    from s12mae.export import load_encoder

    enc16 = load_encoder(_save(tmp_path / "p16.safetensors", {"s2_l1c": 13}, "vit_nano_patch16"))
    assert plan_input(enc16, get_sensor("s2_l1c"), (120, 120), DATA, "x").size == (128, 128)  # BigEarthNet
    assert plan_input(load_encoder(ckpt), get_sensor("s2_l1c"), (36, 44), DATA, "x").size == (40, 48)
    with pytest.raises(ValueError, match=r"p16.*patch size 16.*120x120"):
        plan_input(enc16, get_sensor("s2_l1c"), (120, 120), EvalDataConfig(resize="none"), "p16.safetensors")


# --- end to end --------------------------------------------------------------------------------

@pytest.mark.parametrize("task,headline,extra", [
    ("sen1floods11", "iou_water", ["miou", "iou_background"]),
    ("bigearthnet", "map_micro", ["map_macro", "ap_water"]),
    ("srseg", "miou", ["iou_urban", "accuracy"]),
])
def test_evaluate_writes_metrics_and_predictions(tmp_path, ckpt, task, headline, extra):
    torch.set_num_threads(1)
    res = evaluate(_cfg(ckpt, task=task, scenario="finetune", out_dir=str(tmp_path / task), layer_decay=0.75))
    saved = json.loads((tmp_path / task / "metrics.json").read_text())
    assert saved["headline"]["name"] == headline and res["headline"] == saved["headline"]
    assert 0.0 <= saved["headline"]["value"] <= 1.0
    assert all(k in saved["metrics"] for k in extra)
    assert saved["config"]["task"] == task and saved["config"]["fit"]["layer_decay"] == 0.75
    assert saved["encoder"]["filled_bands"] == (["B10"] if task == "bigearthnet" else [])
    assert (tmp_path / task / "predictions.png").stat().st_size > 1000
    assert (tmp_path / task / "curves.png").stat().st_size > 1000
    assert saved["ridge"] is None  # finetune: no closed-form probe (it reads frozen features)
    assert [s for s, _ in saved["train"]["val_loss"]] == [0, 1, 2] and saved["train"]["selected"]["step"] in (1, 2)


def test_random_encoder_with_cloud_class_and_upsample_head(tmp_path):
    cfg = EvalConfig(task="sen1floods11", checkpoint="random", random_encoder="vit_nano_patch8",
                     out_dir=str(tmp_path), threads=1, progress=False, device="cpu",
                     fit={"steps": 1, "batch_size": 4, "optim": {"name": "adamw", "lr": 1e-3}},
                     head=HeadConfig(segmentation="upsample"), data=EvalDataConfig(**{**DATA.__dict__, "cloud": "class"}))
    res = run_evaluation(cfg)
    assert res["task"]["classes"] == ["background", "water", "cloud"]
    assert "iou_cloud" in res["metrics"] and res["headline"]["name"] == "iou_water"


def test_table_writes_markdown_and_csv_with_baselines_ridge_and_convergence_marks(tmp_path, ckpt):
    torch.set_num_threads(1)
    run = _cfg(ckpt, steps=1, optim={"name": "adamw", "lr": 1e-3}, head=HeadConfig(segmentation="upsample"),
               data=EvalDataConfig(img_size=32, num_train=8, num_test=4, num_val=4), random_encoder="vit_nano_patch8",
               num_plot=0)
    cfg = TableConfig(checkpoints={"Baseline": ckpt}, scenarios=["finetune", "frozen"],
                      tasks=["bigearthnet", "sen1floods11"], seeds=[0, 1], out_dir=str(tmp_path / "t"), run=run)
    out = table(cfg)
    md = (tmp_path / "t" / "table.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "| Scenario | Model | BEN (mAP micro) | Sen1Floods (IoU water) |"
    assert lines[2].startswith("| Finetune | Baseline |") and lines[3].startswith("|  | pixels |")
    assert lines[4].startswith("|  | random init |") and lines[5].startswith("| Frozen | Baseline |")
    assert lines[8].startswith("| Ridge (closed form) | Baseline |") and lines[10].startswith("|  | random init |")
    # 3 models x 2 tasks x (finetune, frozen, ridge), two seeds each
    assert sum(line.count("±") for line in lines if line.startswith("|")) == 18
    rows = list(csv.DictReader((tmp_path / "t" / "table.csv").open()))
    assert len(rows) == 18 and len(out["runs"]) == 24
    r = next(r for r in rows if (r["scenario"], r["model"], r["task"]) == ("frozen", "random init", "sen1floods11"))
    vals = [float(v) for v in r["values"].split(";")]
    assert r["n"] == "2" and r["metric"] == "iou_water"
    assert float(r["mean"]) == pytest.approx(sum(vals) / 2, abs=1e-3)
    assert float(r["std"]) == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2), abs=1e-3)
    ridge = {m: next(r for r in rows if (r["scenario"], r["model"], r["task"]) == ("ridge", m, "bigearthnet"))
             for m in ("Baseline", "random init")}
    assert float(ridge["Baseline"]["std"]) == pytest.approx(0.0, abs=1e-6)  # closed form, same encoder every seed
    assert float(ridge["random init"]["std"]) > 0  # a new random encoder per seed
    # one optimizer step cannot converge: every trained cell is marked and the note says why
    assert "†" in lines[5] and "still improving at the end" in md
    assert all(r["not_converged"] == "2" for r in rows if r["scenario"] != "ridge")
    # pixels has nothing to finetune: its finetune row is its frozen row
    pix = {s: next(r for r in rows if (r["scenario"], r["model"], r["task"]) == (s, "pixels", "sen1floods11"))
           for s in ("finetune", "frozen")}
    assert pix["finetune"]["values"] == pix["frozen"]["values"]
    # a second call reuses every finished run (same config) instead of training again
    again = table(dataclasses.replace(cfg, tasks=["sen1floods11"]))
    assert [x["value"] for x in again["runs"]] == [x["value"] for x in out["runs"] if x["task"] == "sen1floods11"]


def test_table_config_refuses_unknown_baselines_and_name_clashes():
    with pytest.raises(ValueError, match="unknown.*'imagenet'"):
        TableConfig(checkpoints={"a": "x"}, baselines=["imagenet"])
    with pytest.raises(ValueError, match="'random init'.*taken by the baselines"):
        TableConfig(checkpoints={"random init": "random"})
    with pytest.raises(ValueError, match="steps.*'ocean'"):
        TableConfig(checkpoints={"a": "x"}, steps={"ocean": 3})


# --- bad input ---------------------------------------------------------------------------------

def test_s1_only_encoder_asked_for_s2_is_a_clear_error(tmp_path):
    s1 = _save(tmp_path / "s1.safetensors", {"s1_grd": 2})
    with pytest.raises(ValueError, match=r"s1\.safetensors.*s1_grd.*cannot read the task input s2_l1c"):
        build_model(_cfg(s1), build_task("sen1floods11", DATA))


def test_missing_checkpoint_and_unknown_task_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.safetensors: file not found"):
        build_model(_cfg(str(tmp_path / "nope.safetensors")), build_task("sen1floods11", DATA))
    with pytest.raises(ValueError, match="unknown task 'imagenet'"):
        build_task("imagenet", DATA)
    with pytest.raises(ValueError, match="scenario"):
        EvalConfig(scenario="linear")  # type: ignore[arg-type]


class _Bad(Dataset):
    def __init__(self, label):
        self.label = label

    def __len__(self):
        return 4

    def __getitem__(self, i):
        sample = {"s2_l1c": torch.zeros(13, 32, 32), "index": torch.tensor(i)}
        if self.label is not None:
            sample["label"] = self.label(i)
        return sample


@pytest.mark.parametrize("label,match", [
    (lambda i: torch.full((32, 32), 5 if i == 2 else 0), r"bad.tif.*out of range in sample\(s\) \[2\].*5\.0"),
    (lambda i: torch.zeros(16, 16, dtype=torch.long), r"bad.tif.*labels of shape \(\d, 16, 16\)"),
    (None, r"bad.tif.*no 'label' entry"),
])
def test_missing_or_out_of_range_labels_name_the_file_and_sample(tmp_path, ckpt, label, match):
    spec = get_sensor("s2_l1c")
    register_task("badwater", "test", lambda d: EvalTask(
        name="badwater", kind="segmentation", sensor="s2_l1c", spec=spec, class_names=("background", "water"),
        train=_Bad(label), test=_Bad(label), headline="iou_water", source="bad.tif"))
    cfg = _cfg(ckpt, task="badwater", data=EvalDataConfig(source="test"), out_dir=str(tmp_path))
    with pytest.raises(ValueError, match=match):
        run_evaluation(cfg)




@pytest.mark.parametrize("task, folder, sensor", [("sen1floods11", "sen1floods11-sample", "s2_l1c"),
                                                  ("bigearthnet", "bigearthnet-v1-example", "s2_l2a")])
def test_real_samples_go_through_evaluate(tmp_path, task, folder, sensor):
    """Smoke checks on the real chips (not accuracy claims): readers -> task -> head -> metrics."""
    enc = tmp_path / "enc.safetensors"
    cfg = SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch16", img_size=128), method="mae")
    save_encoder(build_encoder("vit_nano_patch16", {"s2_l1c": 13}, 128), enc, cfg)
    out = tmp_path / "eval"
    evaluate(EvalConfig(task=task, checkpoint=str(enc), out_dir=str(out), fit=FitConfig(steps=2, batch_size=2),
                        head=HeadConfig(decoder="vitlite_128d2b"), progress=False,
                        data=EvalDataConfig(source="real", path=str(shared(folder)))))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["sensor"] == sensor and metrics["task"]["train_samples"] > 0
    assert metrics["headline"]["value"] is not None and (out / "predictions.png").stat().st_size > 0
    if task == "bigearthnet":
        assert "B10" in json.dumps(metrics["encoder"])  # the L2A task fills the encoder's B10


def test_evaluate_standardises_with_the_statistics_the_encoder_was_trained_with(tmp_path):
    from s12mae.export import encoder_stats
    from s12mae.sensors import write_stats

    stats = tmp_path / "stats.json"
    write_stats(stats, {"s2_l1c": {"bands": {b: {"mean": 0.2, "std": 0.1} for b in get_sensor("s2_l1c").band_names}}})
    enc = tmp_path / "enc.safetensors"
    cfg = SimpleNamespace(model=SimpleNamespace(encoder="vit_nano_patch8", img_size=32), method="mae",
                          data=SimpleNamespace(stats=str(stats)))
    save_encoder(build_encoder("vit_nano_patch8", {"s2_l1c": 13}, 32), enc, cfg)
    assert encoder_stats(enc)["s2_l1c"]["bands"]["B04"] == {"mean": 0.2, "std": 0.1}
    out = tmp_path / "eval"
    evaluate(EvalConfig(task="srseg", checkpoint=str(enc), out_dir=str(out), fit=FitConfig(steps=1, batch_size=2),
                        progress=False, head=HeadConfig(decoder="vitlite_128d2b"),
                        data=EvalDataConfig(img_size=32, num_train=4, num_test=2, num_val=2)))
    used = json.loads((out / "encoder_stats.json").read_text())
    assert used["s2_l1c"]["bands"]["B01"]["mean"] == 0.2
    saved = json.loads((out / "metrics.json").read_text())["config"]
    assert saved["data"]["stats"] == str(out / "encoder_stats.json")


def test_table_reruns_a_finished_cell_whose_encoder_file_was_replaced(tmp_path):
    torch.set_num_threads(1)
    enc = _save(tmp_path / "encoder.safetensors", {"s2_l1c": 13}, seed=0)
    run = _cfg(enc, steps=1, data=EvalDataConfig(img_size=32, num_train=4, num_test=2, num_val=2), num_plot=0)
    cfg = TableConfig(checkpoints={"E": enc}, baselines=[], scenarios=["frozen"], tasks=["sen1floods11"], seeds=[0],
                      out_dir=str(tmp_path / "t"), run=run)
    metrics = tmp_path / "t" / "runs" / "frozen" / "E" / "sen1floods11" / "seed0" / "metrics.json"
    table(cfg)
    first, written = json.loads(metrics.read_text())["checkpoint_sha256"], metrics.stat().st_mtime_ns
    table(cfg)  # unchanged file: the finished run is reused, not run again
    assert metrics.stat().st_mtime_ns == written
    _save(tmp_path / "encoder.safetensors", {"s2_l1c": 13}, seed=1)  # retrained at the same path
    table(cfg)
    second = json.loads(metrics.read_text())["checkpoint_sha256"]
    assert second != first and second == file_sha256(enc) and metrics.stat().st_mtime_ns != written


def test_table_csv_counts_only_the_seeds_with_a_value():
    from s12mae.evaluation.table import format_table

    rows = [{"scenario": "frozen", "model": "E", "task": "sen1floods11", "values": [0.5, math.nan, 0.7],
             "not_converged": 0}]
    _, text = format_table(rows, ["sen1floods11"], {"sen1floods11": "iou_water"}, "note")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["n"] == "2" and float(row["mean"]) == pytest.approx(60.0)
