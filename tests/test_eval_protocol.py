"""The evaluation protocol's promises: standardised features, validation split and selection, the
convergence warning, the pixels baseline, separate finetuning rates, the closed-form ridge probe,
and (on simulated data, no timing) that the default head reaches the ridge probe's score."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch

from s12mae.config import OptimConfig
from s12mae.evaluation import (
    EvalConfig,
    EvalDataConfig,
    FitConfig,
    HeadConfig,
    PixelEncoder,
    Standardize,
    build_model,
    build_task,
    convergence,
    fit,
    param_groups,
    prepare_splits,
    run_evaluation,
    with_validation,
)
from s12mae.evaluation.fitting import score
from s12mae.evaluation.heads import LinearSegHead
from s12mae.evaluation.probes import ridge_path
from s12mae.models.patches import patchify
from s12mae.train.optim import lr_at

HEAD = HeadConfig(decoder="vitlite_128d2b")
DATA = EvalDataConfig(img_size=32, num_train=48, num_val=16, num_test=16)


def _cfg(tmp_path, **kw):
    base = {"task": "sen1floods11", "checkpoint": "random", "random_encoder": "vit_nano_patch8", "head": HEAD,
            "data": DATA, "out_dir": str(tmp_path), "progress": False, "num_plot": 0, "device": "cpu", "threads": 1}
    return EvalConfig(**{**base, **kw})


def test_standardize_uses_training_statistics_per_feature_and_keeps_the_class_token_apart():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 5, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -2.0, 0.0])
    tokens[:, 0] += 100.0  # a class token on another scale than the patch tokens
    norm = Standardize(3, tokens=True)
    norm.fit([tokens[:7], tokens[7:]])  # two batches: the statistics are over the whole split
    patches = tokens[:, 1:].reshape(-1, 3)
    assert torch.allclose(norm.mean[1], patches.mean(0), atol=1e-5)
    assert torch.allclose(norm.std[1], patches.std(0, unbiased=False), rtol=1e-4)
    assert torch.allclose(norm.mean[0], tokens[:, 0].mean(0), atol=1e-4)
    out = norm(tokens)
    assert torch.allclose(out[:, 1:].reshape(-1, 3).mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out[:, 0].std(0, unbiased=False), torch.ones(3), rtol=1e-3)
    pooled = Standardize(3, tokens=False)
    pooled.fit([patches])
    assert torch.allclose(pooled(patches).std(0, unbiased=False), torch.ones(3), rtol=1e-3)
    assert "mean" in norm.state_dict() and "std" in norm.state_dict()  # saved with the head


def test_pixels_baseline_reads_the_raw_patches_and_has_nothing_to_train():
    enc = PixelEncoder("s2_l1c", 13, 8)
    x = torch.randn(2, 13, 32, 32)
    tokens = enc.forward_features(x)
    assert enc.embed_dim == 13 * 64 and tokens.shape == (2, 1 + 16, 13 * 64)
    assert torch.equal(tokens[:, 1:], patchify(x, 8)) and torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1))
    task = build_task("bigearthnet", DATA)
    model = build_model(EvalConfig(task="bigearthnet", checkpoint="pixels", scenario="finetune",
                                   random_encoder="vit_nano_patch8", data=DATA), task)
    assert model.frozen and isinstance(model.encoder, PixelEncoder)  # finetuning pixels = training the head
    assert model.encoder.in_chans == {"s2_l2a": 12} and model.adapter.plan.filled == ()


def test_convergence_flags_a_falling_loss_a_short_run_and_nothing_else():
    optim = OptimConfig(lr=1e-3, warmup_steps=10)
    history = [{"step": i + 1, "lr": lr_at(i, 100, optim)} for i in range(100)]

    def curve(values):  # validation passes at steps 0, 25, 50, 75, 100
        return [{"step": 25 * i, "loss": v} for i, v in enumerate(values)]

    assert convergence(curve([1.0, 0.5, 0.36, 0.352, 0.35]), history, 0.2)[0]  # nearly flat in the second half
    assert convergence(curve([1.0, 0.5, 0.36, 0.38, 0.45]), history, 0.2)[0]  # overfitting: selection's job
    ok, message, rate = convergence(curve([1.0, 0.8, 0.7, 0.6, 0.5]), history, 0.2)
    assert not ok and rate > 1 and "still falling" in message and "step 50" in message
    # a learning rate too small to move much: a small drop, but as fast at the end as on average
    assert not convergence(curve([1.0, 0.9995, 0.999, 0.9988, 0.9987]), history, 0.2)[0]
    ok, message, _ = convergence(curve([1.0, 0.5, 0.4, 0.35, 0.349]), history[:10], 0.2, warmup=20)
    assert not ok and "within its learning-rate warmup" in message


def test_tasks_without_a_validation_split_hold_out_part_of_train(tmp_path):
    from s12mae.simulate import SimulationConfig, write_simulated

    write_simulated(tmp_path / "sim", SimulationConfig(num_samples=20, img_size=32, seed=1))
    task = build_task("sen1floods11", EvalDataConfig(path=str(tmp_path / "sim"), test_fraction=0.2))
    assert task.val is None and len(task.train) == 16
    split, how = with_validation(task, 0.25)
    train = {int(split.train[i]["index"]) for i in range(len(split.train))}
    val = {int(split.val[i]["index"]) for i in range(len(split.val))}
    assert len(val) == 4 and len(train) == 12 and not train & val and train | val == set(range(16))
    assert "4 of 16 training samples held out" in how
    assert with_validation(task, 0.25)[0].val.indices == split.val.indices  # the same split every time
    own = build_task("sen1floods11", DATA)
    assert len(own.val) == 16 and with_validation(own, 0.25)[0] is own  # a task's own split is kept


def test_the_tested_state_is_the_best_validation_pass_and_is_restored(tmp_path):
    torch.set_num_threads(1)
    by_loss, by_metric = (lambda r: r["loss"]), (lambda r: (r["metric"], -r["loss"]))
    for select, pick in (("val_loss", lambda rs: min(rs, key=by_loss)), ("val_metric", lambda rs: max(rs, key=by_metric)),
                         ("last", lambda rs: rs[-1])):
        cfg = _cfg(tmp_path, fit=FitConfig(steps=30, val_every=5, select=select, batch_size=8,
                                           optim={"name": "adamw", "lr": 3e-2, "warmup_steps": 2}),
                   head=HeadConfig(segmentation="upsample"))
        task, _ = with_validation(build_task(cfg.task, cfg.data), 0.2)
        model = build_model(cfg, task)
        splits = prepare_splits(cfg, task, model, torch.device("cpu"))
        out = fit(cfg, task, model, splits["train"], splits["val"])
        assert [r["step"] for r in out.val] == [0, 5, 10, 15, 20, 25, 30]  # val_every=5
        assert out.selected == pick(out.val[1:]), select  # never the untrained head at step 0
        loss, metrics = score(task, model, splits["val"], 64, torch.device("cpu"), nullcontext())
        assert loss == pytest.approx(out.selected["loss"], rel=1e-5)  # the selected state is the model's now
        assert metrics[task.headline] == pytest.approx(out.selected["metric"])


def test_finetuning_gives_the_encoder_a_lower_rate_than_the_head_with_layer_decay(tmp_path):
    cfg = _cfg(tmp_path, task="bigearthnet", scenario="finetune")
    model = build_model(cfg, build_task(cfg.task, cfg.data))
    depth = len(model.encoder.blocks)
    scale = {n: g["lr_scale"] for g in param_groups(model, 0.05, 0.5, 0.1) for n in g["names"]}
    assert scale["head.fc.weight"] == scale["head.fc.bias"] == 1.0
    assert scale["encoder.norm.weight"] == pytest.approx(0.1)
    for i in range(depth):
        assert scale[f"encoder.blocks.{i}.mlp.fc1.weight"] == pytest.approx(0.1 * 0.5 ** (depth - i))
    assert scale["encoder.patch_embed.s2_l1c.proj.weight"] == pytest.approx(0.1 * 0.5 ** (depth + 1))
    assert FitConfig().encoder_lr_scale < 1 and FitConfig().optim.warmup_steps > 0  # the defaults do this


def test_linear_head_logits_of_sampled_patches_are_those_of_the_full_prediction():
    torch.manual_seed(0)
    head = LinearSegHead(16, 8, 3)
    head.norm.fit([torch.randn(4, 1 + 6, 16)])
    tokens = torch.randn(2, 1 + 6, 16)
    full = head.predict(tokens, (2, 3))  # (2, 3, 16, 24)
    index = torch.tensor([4, 0, 5])
    part = head.predict_tokens(tokens, index)  # (2, 3 tokens, 64 pixels, 3 classes)
    patches = full.view(2, 3, 2, 8, 3, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, 6, 64, 3)  # token, pixel r*8+c
    assert torch.allclose(part, patches[:, index], atol=1e-5)


def test_ridge_path_matches_direct_solutions():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    xv, yv = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64)
    lambdas = [0.1, 1.0, 10.0]
    errors, *_ = ridge_path(x.T @ x, x.T @ y, xv.T @ xv, xv.T @ yv, float((yv * yv).sum()), lambdas)
    for lam, err in zip(lambdas, errors):
        w = torch.linalg.solve(x.T @ x + lam * torch.eye(6, dtype=torch.float64), x.T @ y)
        assert err == pytest.approx(float(((xv @ w - yv) ** 2).sum()), rel=1e-9)


# --- the protocol's promise on simulated data ---------------------------------------------------

FRACTION = 0.9
"""With the default protocol, a frozen head on a fixed random encoder reaches at least this share
of the closed-form ridge probe's test score on the same features."""


@pytest.mark.parametrize("task", ["sen1floods11", "bigearthnet"])
def test_default_frozen_head_reaches_the_ridge_probe_and_converges(tmp_path, task, one_thread):
    result = run_evaluation(_cfg(tmp_path, task=task))  # FitConfig() defaults
    head, ridge = result["headline"]["value"], result["ridge"]["headline"]["value"]
    assert head >= FRACTION * ridge, (head, ridge)
    assert result["train"]["converged"] and result["warnings"] == []
    assert result["train"]["selected"]["step"] > 0 and result["train"]["features_cached"]


def test_a_too_short_run_warns_on_screen_and_in_metrics(tmp_path, capsys, one_thread):
    cfg = _cfg(tmp_path, fit=FitConfig(steps=20, optim={"name": "adamw", "lr": 1e-3, "warmup_steps": 2}))
    result = run_evaluation(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert not saved["train"]["converged"] and saved["train"]["late_rate"] > 0.2
    assert len(saved["warnings"]) == 1 and "validation loss still falling" in saved["warnings"][0]
    assert saved["warnings"] == result["warnings"]
    assert "WARNING: sen1floods11 frozen random: validation loss still falling" in capsys.readouterr().err
