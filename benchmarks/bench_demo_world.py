"""Does the simulated demo world reward pretraining? (issue 14, item 4)

Pretrains the demo's MAE recipe (``s12mae.demo.demo_config``: vit_nano_patch8, 64 px, batch 32) on
the demo's simulated scenes for several seeds, then measures on NEW simulated scenes:

1. masked-patch MSE on standardised S2 (75 % of patches hidden, fixed masks) of the MAE against
   "predict every hidden patch as the per-band mean of the visible image" and the oracle
   "each hidden patch's own per-band mean";
2. closed-form ridge probes (features z-scored on the training split, ridge strength picked on a
   quarter of the training scenes by the probe's own metric, then refit on all of them) on frozen
   features: raw patch pixels, raw patch pixels + the per-band means of the 8 neighbouring
   patches, and the final-norm tokens of the random-init and of the MAE encoder. Tasks as in
   ``s12mae.evaluation.tasks`` (water IoU with cloud pixels ignored, BEN-like micro mAP from
   mean-pooled features, 4x super-resolution mIoU): per-patch linear maps from a token to the
   patch's 8 x 8 water labels / 32 x 32 x 6 class scores.

Run (CPU, ~N minutes; the demo's own frozen-head table is ``s12mae demo``):
    PYTHONPATH=src python benchmarks/bench_demo_world.py --out /tmp/demo-world --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from s12mae.demo import demo_config
from s12mae.inputs import model_inputs
from s12mae.methods import build_method
from s12mae.models.patches import patchify
from s12mae.models.vit import build_encoder
from s12mae.sensors import get_sensor
from s12mae.simulate import SimulationConfig, simulate, write_simulated
from s12mae.stats import compute_stats_file
from s12mae.train.checkpoint import latest_checkpoint, load_checkpoint

P = 8  # patch size of vit_nano_patch8


def standardised(arrays: dict[str, np.ndarray], stats: Path) -> torch.Tensor:
    spec = get_sensor("s2_l1c", stats)
    x, _ = model_inputs(spec, torch.from_numpy(arrays["s2_l1c"]), nodata="mask")
    return x


def masked_mse(method: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """MAE, image-mean and oracle patch-mean MSE over the hidden patches of ``x (N, C, H, W)``."""
    enc = method.encoder
    grid = enc.patch_grid(*x.shape[-2:])
    index = torch.arange(len(x))
    with torch.no_grad():  # the model's own keyed masks, at a step it never trained on
        latent, mask, restore = method.forward_encoder(x, 10**6, index)
        pred = method.forward_decoder(latent, restore, grid)  # (N, L, p*p*C)
    target = patchify(x, P)  # (N, L, p*p*C), channels last within a patch
    c = x.shape[1]
    hidden = mask.bool()
    sq = ((pred - target) ** 2).mean(-1)
    t = target.reshape(*target.shape[:2], -1, c)  # (N, L, p*p, C)
    vis_mean = (t * (~hidden)[..., None, None]).sum((1, 2)) / ((~hidden).sum(1) * P * P)[:, None]
    base = ((t - vis_mean[:, None, None]) ** 2).mean((-1, -2))
    oracle = ((t - t.mean(2, keepdim=True)) ** 2).mean((-1, -2))
    # No learning, only context: inverse-square-distance weighted mean of the visible patch means.
    gy, gx = torch.div(torch.arange(grid[0] * grid[1]), grid[1], rounding_mode="floor"), torch.arange(grid[0] * grid[1]) % grid[1]
    dist2 = ((gy[:, None] - gy[None]) ** 2 + (gx[:, None] - gx[None]) ** 2).float()
    w = torch.where((~hidden)[:, None, :], 1.0 / dist2.clamp_min(1.0), 0.0)  # (N, L, L): hidden row, visible column
    neigh = (w @ t.mean(2)) / w.sum(-1, keepdim=True)  # (N, L, C)
    ctx = ((t - neigh[:, :, None]) ** 2).mean((-1, -2))
    pairs = (("mae", sq), ("image_mean", base), ("neighbour_mean", ctx), ("patch_mean", oracle))
    return {k: float(v[hidden].mean()) for k, v in pairs}


def raw_features(x: torch.Tensor, neighbours: bool) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, L, p*p*C)`` patch pixels, plus the 8 neighbours' band means."""
    feats = patchify(x, P)
    if not neighbours:
        return feats
    h, w = x.shape[-2:]
    means = torch.nn.functional.avg_pool2d(x, P)  # (N, C, gh, gw)
    padded = torch.nn.functional.pad(means, (1, 1, 1, 1), mode="replicate")
    shifts = [padded[:, :, 1 + dy : 1 + dy + h // P, 1 + dx : 1 + dx + w // P]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    ctx = torch.cat(shifts, 1).flatten(2).transpose(1, 2)  # (N, L, 8C)
    return torch.cat([feats, ctx], -1)


def token_features(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encoder.forward_features(x[i : i + 32])[:, 1:] for i in range(0, len(x), 32)])


class Ridge:
    """Closed-form ridge with intercept on ``x (M, D)`` float64, ``y (M, K)`` float32, solved for
    any strength from one Gram matrix (centring ``x`` makes centring ``y`` unnecessary)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xm, self.ym, self.n = x.mean(0), y.mean(0), len(x)
        xc = x - self.xm
        self.gram, self.cross = xc.T @ xc, (xc.float().T @ y).double()

    def solve(self, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(D, K)`` and bias ``(K,)`` for ridge strength ``lam`` (per sample)."""
        eye = torch.eye(len(self.gram), dtype=self.gram.dtype)
        w = torch.linalg.solve(self.gram + lam * self.n * eye, self.cross).float()
        return w, self.ym - self.xm.float() @ w


def iou_scores(pred: torch.Tensor, label: torch.Tensor, k: int) -> list[float]:
    ok = label >= 0
    out = []
    for c in range(k):
        p, t = (pred == c) & ok, (label == c) & ok
        union = (p | t).sum()
        out.append(float((p & t).sum() / union) if union else float("nan"))
    return out


def probe(task: str, ftr: torch.Tensor, fte: torch.Tensor, tr: dict, te: dict) -> float:
    """Ridge probe of one task; ``ftr``/``fte`` are ``(N, L, D)`` token features."""
    mu, sd = ftr.flatten(0, 1).mean(0), ftr.flatten(0, 1).std(0) + 1e-6
    ftr, fte = ((ftr - mu) / sd).double(), ((fte - mu) / sd).double()
    n_fit = len(ftr) * 3 // 4

    def targets(d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if task == "water":  # (N, L, 64) pixel labels, -1 = cloud (ignored)
            y = torch.from_numpy(d["water"].astype(np.int64))
            y[torch.from_numpy(d["cloud"].astype(bool))] = -1
            y = patchify(y[:, None].float(), P)
            return y.clamp_min(0), y
        if task == "srseg":  # (N, L, 32*32*6) one-hot fine classes
            hr = torch.from_numpy(d["landcover_hr"].astype(np.int64))
            onehot = torch.nn.functional.one_hot(hr, 6).permute(0, 3, 1, 2).float()
            return patchify(onehot, 4 * P), hr
        y = torch.from_numpy(d["landcover_presence"].astype(np.float32))  # ben: (N, 6)
        return y, y

    def predict_score(w, b, f, d, y_eval) -> float:
        if task == "ben":
            s = f.mean(1).float() @ w + b
            return float(average_precision_score(y_eval.numpy(), s.numpy(), average="micro"))
        s = f.float() @ w + b  # (N, L, K)
        n, (gh, gw) = len(f), (d["water"].shape[1] // P,) * 2
        if task == "water":
            pred = (s > 0.5).long()
            return iou_scores(pred.flatten(), y_eval.flatten().long(), 2)[1]
        s = s.reshape(n, gh, gw, 4 * P, 4 * P, 6).permute(0, 5, 1, 3, 2, 4).reshape(n, 6, gh * 4 * P, gw * 4 * P)
        return float(np.nanmean(iou_scores(s.argmax(1).flatten(), y_eval.flatten(), 6)))

    ytr, _ = targets(tr)
    _, yte_eval = targets(te)
    fit_x = ftr.mean(1) if task == "ben" else ftr.flatten(0, 1)
    fit_y = ytr if task == "ben" else ytr.flatten(0, 1)
    per = 1 if task == "ben" else ftr.shape[1]
    best = None
    sub = {k: v[n_fit:] for k, v in tr.items()}
    _, ysub_eval = targets(sub)
    part = Ridge(fit_x[: n_fit * per], fit_y[: n_fit * per])
    for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0):
        w, b = part.solve(lam)
        score = predict_score(w, b, ftr[n_fit:], sub, ysub_eval)
        if best is None or score > best[0]:
            best = (score, lam)
    w, b = Ridge(fit_x, fit_y).solve(best[1])
    return predict_score(w, b, fte, te, yte_eval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/demo-world"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--num-train", type=int, default=192)
    ap.add_argument("--num-test", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-raw", action="store_true", help="skip the raw-pixel probes (seed-free)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    recipe = demo_config("mae")
    data_dir, stats = args.out / "data", args.out / "stats.json"
    if not data_dir.exists():
        write_simulated(data_dir, recipe.data.simulated)
    if not stats.exists():
        compute_stats_file(data_dir, stats)
    print(f"[{time.perf_counter() - t0:6.1f}s] data {data_dir}", flush=True)
    tr = simulate(SimulationConfig(num_samples=args.num_train, img_size=64, seed=100))
    te = simulate(SimulationConfig(num_samples=args.num_test, img_size=64, seed=101))
    xtr, xte = standardised(tr, stats), standardised(te, stats)
    results: dict[str, dict[str, list[float]]] = {}

    def record(name: str, key: str, value: float) -> None:
        results.setdefault(name, {}).setdefault(key, []).append(value)
        print(f"[{time.perf_counter() - t0:6.1f}s] {name:>16} {key:>10} {value:.4f}", flush=True)

    for feats_name, neighbours in () if args.no_raw else (("raw patch", False), ("raw + neighbours", True)):
        ftr, fte = raw_features(xtr, neighbours), raw_features(xte, neighbours)
        for task in ("water", "ben", "srseg"):
            record(feats_name, task, probe(task, ftr, fte, tr, te))
    for seed in args.seeds:
        run = args.out / f"mae-seed{seed}-steps{args.steps}"
        cfg = demo_config("mae", str(run), str(data_dir))
        cfg.data.stats, cfg.train.seed, cfg.train.steps = str(stats), seed, args.steps
        cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(args.steps // 10, 1))
        if not (run / "encoder.safetensors").exists():
            from s12mae.train.loop import pretrain

            pretrain(cfg)
        method = build_method(cfg)
        load_checkpoint(latest_checkpoint(run), method)
        method.eval()
        for key, value in masked_mse(method, xte).items():
            record("masked MSE", key, value)
        torch.manual_seed(seed)
        random = build_encoder(cfg.model.encoder, {"s2_l1c": 13}, 64).eval()
        for name, enc in (("random init", random), (f"MAE {args.steps}", method.encoder)):
            ftr, fte = token_features(enc, xtr), token_features(enc, xte)
            for task in ("water", "ben", "srseg"):
                record(name, task, probe(task, ftr, fte, tr, te))
    summary = {n: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in d.items()} for n, d in results.items()}
    (args.out / f"results-steps{args.steps}.json").write_text(json.dumps(summary, indent=1))
    print("| features | water | ben | srseg |")
    for name, d in summary.items():
        if name != "masked MSE":
            print(f"| {name} | " + " | ".join(f"{100 * m:.1f} +- {100 * s:.1f}" for m, s, _ in d.values()) + " |")
    print("masked MSE: " + ", ".join(f"{k} {m:.3f} +- {s:.3f}" for k, (m, s, _) in summary["masked MSE"].items()))
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
