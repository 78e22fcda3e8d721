"""Pretraining step throughput (forward, backward, optimizer step) per variant and method.

Usage:
    python benchmarks/bench_step.py                      # CPU presets: demo, tiny, small
    python benchmarks/bench_step.py --preset gpu_base    # ViT-B/16, 224 px, 13 bands, bf16 on CUDA

Prints one Markdown table row per case: samples/s (median over ``--rounds`` interleaved rounds
of ``--steps`` steps, after warmup), and on CUDA the model-FLOPs utilisation. With both ``mae``
and ``mixmae`` in ``--method``, a second table gives MixMAE's step time over MAE's (median of the
same-round ratios, by wall clock and by CPU time) beside their FLOP ratio.

FLOPs are counted with ``torch.utils.flop_counter`` over one training step (forward + backward;
matmuls and attention, 2 FLOPs per multiply-add), the optimizer excluded, divided by the step
time and the card's dense bf16 peak (``--peak_tflops``). The last column is the peak memory of the
timed steps (CUDA: max allocated since the case's first timed round; CPU: the process's peak
resident set so far, which never goes down). On CUDA the step runs as training runs it there:
bf16 autocast, SDPA attention (timm), AdamW with ``--optimizer adamw`` (fused kernel), blocks
compiled (``--compile``, default on CUDA) and optionally ``--grad_checkpointing``. Ready for a GPU:
``--preset gpu_base --method mae auxmae mixmae --optimizer adamw`` gives the ViT-B/16, 224 px,
13-band rows of each method and task.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from s12mae.config import OptimConfig
from s12mae.methods.auxmae import AuxMAE
from s12mae.methods.mae import MAE
from s12mae.models.vit import build_encoder
from s12mae.train.optim import build_optimizer
from s12mae.train.parallel import compile_blocks, set_grad_checkpointing

PRESETS = {  # name: (encoder, decoder, img_size, batch)
    "demo": ("vit_nano_patch8", "vitlite_128d2b", 64, 32),
    "tiny": ("vit_tiny_patch16", "vitlite_256d4b", 96, 32),
    "small": ("vit_small_patch16", "vitlite_256d4b", 96, 32),
    "base_cpu": ("vit_base_patch16", "vitlite_512d6b", 224, 8),
    "gpu_base": ("vit_base_patch16", "vitlite_512d6b", 224, 256),
}


MIX_DROP_RATIO = 0.0  # set by --mix_drop_ratio


def build(method: str, encoder: str, decoder: str, img_size: int) -> torch.nn.Module:
    """The method with an S2 encoder (and an S1 patch embedding where the method mixes S1 in)."""
    sensors = {"s2_l1c": 13, "s1_grd": 2} if method == "mixmae" else {"s2_l1c": 13}
    enc = build_encoder(encoder, sensors, img_size)
    if method == "mae":
        return MAE(enc, "s2_l1c", decoder)
    if method == "auxmae":
        return AuxMAE(MAE(enc, "s2_l1c", decoder), decoder, aux_sensor="s1_grd", aux_channels=2)
    if method == "mixmae":
        from s12mae.methods.mixmae import MixMAE

        return MixMAE(enc, ["s2_l1c", "s1_grd"], decoder, drop_ratio=MIX_DROP_RATIO)
    raise SystemExit(f"unknown method {method!r}")


def _suffix(method: str) -> str:
    return f" (drop {MIX_DROP_RATIO:g})" if method == "mixmae" and MIX_DROP_RATIO else ""


class Case:
    """One (method, task) of a preset: a step closure, its FLOPs and its timed rounds."""

    def __init__(self, preset: str, method: str, task: str, model, opt, batch, amp, device, peak: float) -> None:
        self.preset, self.method, self.task = preset, method, task
        self.model, self.opt, self.batch, self.amp, self.device, self.peak = model, opt, batch, amp, device, peak
        self.step_index = 0
        self.flops = 0.0  # of one forward + backward
        self.wall: list[float] = []  # seconds per step, one entry per round
        self.cpu: list[float] = []

    @property
    def batch_size(self) -> int:
        return int(self.batch["index"].shape[0])

    def step(self) -> None:
        i = self.step_index = self.step_index + 1
        den = self.model.denominators(self.batch, self.task, i)
        with self.amp:
            nums = self.model(self.batch, self.task, i)
        sum(nums[t] / den[t] for t in nums).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def count_flops(self) -> float:
        with FlopCounterMode(display=False) as counter:
            with self.amp:
                nums = self.model(self.batch, self.task, 0)
            sum(nums.values()).backward()
        self.opt.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def time_round(self, steps: int) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        sync()
        self.wall.append((time.perf_counter() - w0) / steps)
        self.cpu.append((time.process_time() - c0) / steps)
        self.peak_gb = max(getattr(self, "peak_gb", 0.0), _peak_memory_gb(self.device))


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_cases(preset: str, methods: list[str], device: torch.device, peak: float, optimizer: str,
                compile_: bool = False, grad_checkpointing: bool = False) -> list[Case]:
    """One case per task of each method, all on the same batch."""
    encoder, decoder, img_size, batch_size = PRESETS[preset]
    batch = {"s2_l1c": torch.randn(batch_size, 13, img_size, img_size, device=device),
             "s1_grd": torch.randn(batch_size, 2, img_size, img_size, device=device),
             "index": torch.arange(batch_size, device=device)}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    cases = []
    for method in methods:
        torch.manual_seed(0)
        model = build(method, encoder, decoder, img_size).to(device)
        opt = build_optimizer(model, OptimConfig(name=optimizer, lr=1e-4))  # the training recipe's
        if grad_checkpointing:
            set_grad_checkpointing(model, True)
        if compile_:
            compile_blocks(model)
        cases += [Case(preset, method, task, model, opt, batch, amp, device, peak) for task in model.tasks]
    return cases


def run_preset(preset: str, methods: list[str], rounds: int, steps: int, warmup: int,
               device: torch.device, peak: float, optimizer: str, compile_: bool = False,
               grad_checkpointing: bool = False) -> list[Case]:
    """Warm up every case, then time them in interleaved rounds (A, B, ..., then reversed)."""
    cases = build_cases(preset, methods, device, peak, optimizer, compile_, grad_checkpointing)
    for case in cases:
        for _ in range(warmup):
            case.step()
        case.flops = case.count_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for r in range(rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            case.time_round(steps)
    return cases


def row(case: Case) -> str:
    encoder, decoder, img_size, _ = PRESETS[case.preset]
    seconds = statistics.median(case.wall)
    mfu = f"{case.flops / seconds / (case.peak * 1e12):.1%}" if case.device.type == "cuda" and case.peak else "-"
    return (f"| {case.preset} | {case.method}{_suffix(case.method)}:{case.task} | {encoder} + {decoder} | "
            f"{img_size} | {case.batch_size} | {case.batch_size / seconds:.1f} | "
            f"{case.flops / case.batch_size / 1e9:.2f} | {mfu} | {case.peak_gb:.2f} |")


def ratio_row(preset: str, mix: Case, mae: Case) -> str:
    """MixMAE/MAE step-time ratio (median over rounds of same-round ratios) against the FLOP ratio."""
    wall = statistics.median(a / b for a, b in zip(mix.wall, mae.wall))
    cpu = statistics.median(a / b for a, b in zip(mix.cpu, mae.cpu))
    flops = mix.flops / mae.flops
    return f"| {preset}{_suffix('mixmae')} | {wall:.2f} | {cpu:.2f} | {flops:.2f} | {cpu / flops:.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["demo", "tiny", "small"], choices=sorted(PRESETS))
    ap.add_argument("--method", nargs="+", default=["mae"], choices=["mae", "auxmae", "mixmae"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the methods")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"],
                    help="built by s12mae.train.optim.build_optimizer (AdamW fused where torch has the kernel)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mix_drop_ratio", type=float, default=0.0, help="MixMAE: fraction of positions dropped")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                    help="torch.compile the transformer blocks (auto: on CUDA only, as in training)")
    ap.add_argument("--grad_checkpointing", action="store_true", help="recompute block activations in backward")
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global MIX_DROP_RATIO
    MIX_DROP_RATIO = args.mix_drop_ratio
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    compile_ = args.compile == "true" or (args.compile == "auto" and device.type == "cuda")
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"optimizer {args.optimizer}, compile {compile_}, grad checkpointing {args.grad_checkpointing}")
    mem = "peak GiB (CUDA max allocated)" if device.type == "cuda" else "peak GiB (process RSS)"
    print(f"| preset | method:task | encoder + decoder | px | batch | samples/s | train GFLOPs/sample | MFU | {mem} |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for preset in args.preset:
        cases = run_preset(preset, args.method, args.rounds, args.steps, args.warmup, device, args.peak_tflops,
                           args.optimizer, compile_, args.grad_checkpointing)
        for case in cases:
            print(row(case), flush=True)
        by_task = {(c.method, c.task): c for c in cases}
        if ("mixmae", "mix") in by_task and ("mae", "mae") in by_task:
            ratios.append(ratio_row(preset, by_task["mixmae", "mix"], by_task["mae", "mae"]))
    if ratios:
        print("\n| preset | time ratio MixMAE/MAE (wall) | (CPU time) | FLOP ratio | CPU-time ratio / FLOP ratio |")
        print("|---|---|---|---|---|")
        print("\n".join(ratios))


if __name__ == "__main__":
    main()
