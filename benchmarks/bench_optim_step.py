"""``opt.step()`` alone: s12mae's Adafactor against torch's (for-loop and foreach) and fused AdamW.

Usage:
    python benchmarks/bench_optim_step.py --preset small --rounds 7 --threads 1

Each optimizer gets its own copy of a preset's MAE and MixMAE parameters (decay groups as
``build_optimizer`` makes them, lr 1e-4 as bench_step.py) and the same random gradients
(N(0, 1e-3), new every round); rounds are interleaved, the first dropped, and the median CPU
time per step printed. The last column (Adafactors) is the largest difference of a tensor from
torch's for-loop Adafactor's after the rounds, over that tensor's largest magnitude.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_step import PRESETS, build

from s12mae.config import OptimConfig
from s12mae.train.adafactor import Adafactor
from s12mae.train.optim import build_optimizer

OPTIMIZERS = {  # name: optimizer over build_optimizer's groups
    "s12mae Adafactor": lambda groups: Adafactor(groups, lr=1e-4),
    "torch Adafactor (for-loop)": lambda groups: torch.optim.Adafactor(groups, lr=1e-4),
    "torch Adafactor (foreach)": lambda groups: torch.optim.Adafactor(groups, lr=1e-4, foreach=True),
    "torch AdamW (fused)": lambda groups: torch.optim.AdamW(groups, lr=1e-4, fused=True),
}


def time_method(preset: str, method: str, rounds: int) -> None:
    encoder, decoder, img_size, _ = PRESETS[preset]
    torch.manual_seed(0)
    model = build(method, encoder, decoder, img_size)
    groups = build_optimizer(model, OptimConfig(name="adafactor", lr=1e-4)).param_groups
    copies = {}
    for name, make in OPTIMIZERS.items():
        params = [[p.detach().clone() for p in g["params"]] for g in groups]
        opt = make([{"params": ps, "weight_decay": g["weight_decay"]} for ps, g in zip(params, groups)])
        copies[name] = ([p for ps in params for p in ps], opt, [])
    n_params = sum(p.numel() for p in copies[name][0])
    gen = torch.Generator().manual_seed(1)
    for r in range(rounds):
        grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in copies[name][0]]
        for name in OPTIMIZERS if r % 2 == 0 else list(OPTIMIZERS)[::-1]:
            params, opt, times = copies[name]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            t0 = time.process_time()
            opt.step()
            times.append(time.process_time() - t0)
    ref = copies["torch Adafactor (for-loop)"][0]
    print(f"\n{preset} {method}: {len(ref)} tensors, {n_params / 1e6:.1f}M parameters, {rounds - 1} rounds")
    print("| optimizer | ms per step (CPU) | max abs diff / max abs (vs torch for-loop) |\n|---|---|---|")
    for name, (params, _, times) in copies.items():
        diff = max((p - q).abs().max().item() / q.abs().max().item() for p, q in zip(params, ref))
        same_algorithm = "Adafactor" in name
        print(
            f"| {name} | {1e3 * statistics.median(times[1:]):.1f} | {f'{diff:.1e}' if same_algorithm else '-'} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["small"], choices=sorted(PRESETS))
    ap.add_argument("--method", nargs="+", default=["mae", "mixmae"], choices=["mae", "mixmae"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}")
    for preset in args.preset:
        for method in args.method:
            time_method(preset, method, args.rounds)


if __name__ == "__main__":
    main()
