"""Pretraining step throughput (forward, backward, optimizer) per variant and method.

Usage:
    python benchmarks/bench_step.py                      # CPU presets: demo, tiny, small
    python benchmarks/bench_step.py --preset gpu_base    # ViT-B/16, 224 px, 13 bands, bf16 on CUDA

Prints one Markdown table row per case: samples/s over the timed steps (after warmup), on
CUDA the model-FLOPs utilisation, and the peak memory of the timed steps (CUDA: max allocated;
CPU: the process's peak resident set so far, which never goes down). FLOPs are counted with ``torch.utils.flop_counter`` over one
training step (forward + backward; matmuls and attention, 2 FLOPs per multiply-add), the
optimizer excluded, divided by the step time and the card's dense bf16 peak (``--peak_tflops``).
On CUDA the step runs as training runs it there: bf16 autocast, SDPA attention (timm), AdamW
with ``--optimizer adamw`` (fused kernel), transformer blocks compiled (``--compile``, default
on CUDA) and optionally ``--grad_checkpointing``. Ready for a GPU: ``--preset gpu_base --method
mae auxmae mixmae --optimizer adamw`` gives the ViT-B/16, 224 px, 13-band rows of each method
and task.
"""

from __future__ import annotations

import argparse
import platform
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
COMPILE = False  # set by --compile
GRAD_CHECKPOINTING = False  # set by --grad_checkpointing
OPTIMIZER = "adafactor"  # set by --optimizer


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


def run_case(preset: str, method: str, steps: int, warmup: int, device: torch.device, peak: float) -> list[str]:
    """One row per task of the method."""
    encoder, decoder, img_size, batch_size = PRESETS[preset]
    model = build(method, encoder, decoder, img_size).to(device)
    opt = build_optimizer(model, OptimConfig(name=OPTIMIZER, lr=1e-4))  # the training recipe's
    batch = {"s2_l1c": torch.randn(batch_size, 13, img_size, img_size, device=device),
             "s1_grd": torch.randn(batch_size, 2, img_size, img_size, device=device),
             "index": torch.arange(batch_size, device=device)}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if GRAD_CHECKPOINTING:
        set_grad_checkpointing(model, True)
    if COMPILE:
        compile_blocks(model)
    return [_time_task(model, opt, batch, task, amp, steps, warmup, device, peak,
                       f"| {preset} | {method}{_suffix(method)}:{task} | {encoder} + {decoder} | {img_size} | {batch_size} | ")
            for task in model.tasks]


def _time_task(model, opt, batch, task, amp, steps, warmup, device, peak, prefix) -> str:
    batch_size = batch["index"].shape[0]

    def step(i: int) -> None:
        den = model.denominators(batch, task, i)
        with amp:
            nums = model(batch, task, i)
        sum(nums[t] / den[t] for t in nums).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    with FlopCounterMode(display=False) as counter:
        with amp:
            nums = model(batch, task, 0)
        sum(nums.values()).backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    sps = batch_size / seconds
    mfu = f"{flops / seconds / (peak * 1e12):.1%}" if device.type == "cuda" and peak else "-"
    return f"{prefix}{sps:.1f} | {flops / batch_size / 1e9:.2f} | {mfu} | {_peak_memory_gb(device):.2f} |"


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["demo", "tiny", "small"], choices=sorted(PRESETS))
    ap.add_argument("--method", nargs="+", default=["mae"], choices=["mae", "auxmae", "mixmae"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mix_drop_ratio", type=float, default=0.0, help="MixMAE: fraction of positions dropped")
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                    help="torch.compile the transformer blocks (auto: on CUDA)")
    ap.add_argument("--grad_checkpointing", action="store_true", help="recompute encoder activations")
    ap.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"],
                    help="built by s12mae.train.optim.build_optimizer, as in training")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global MIX_DROP_RATIO, COMPILE, GRAD_CHECKPOINTING, OPTIMIZER
    MIX_DROP_RATIO, OPTIMIZER = args.mix_drop_ratio, args.optimizer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    COMPILE = device.type == "cuda" if args.compile == "auto" else args.compile == "true"
    GRAD_CHECKPOINTING = args.grad_checkpointing
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"compile {COMPILE}, grad checkpointing {GRAD_CHECKPOINTING}")
    mem = "peak GiB (CUDA max allocated)" if device.type == "cuda" else "peak GiB (process RSS)"
    print(f"| preset | method:task | encoder + decoder | px | batch | samples/s | train GFLOPs/sample | MFU | {mem} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.preset:
        for method in args.method:
            for row in run_case(preset, method, args.steps, args.warmup, device, args.peak_tflops):
                print(row, flush=True)


if __name__ == "__main__":
    main()
