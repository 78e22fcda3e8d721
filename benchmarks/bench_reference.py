"""s12mae's MAE pretraining step against the reference MAE (facebookresearch/mae), same process.

Usage:
    S12MAE_REFERENCE_MAE=/path/to/mae python benchmarks/bench_reference.py --preset tiny small

``S12MAE_REFERENCE_MAE`` is a folder holding the reference's ``models_mae.py`` and
``util/pos_embed.py`` (e.g. a checkout of https://github.com/facebookresearch/mae). Its code is
never copied into this repository; it is imported from that folder at run time and adapted in
memory only, in three ways, without editing its file:

1. its ``Block(..., qk_scale=None, ...)`` calls (an old timm keyword that timm 1.x removed) go
   through a wrapper that drops ``qk_scale`` (refusing any value but ``None``) and builds timm's
   current ``Block``, the same block class s12mae uses;
2. its ``patchify``/``unpatchify``, which hard-code 3 channels, are overridden in a subclass with
   the same layout for the model's ``in_chans`` (13 here);
3. its ``util/pos_embed.py`` uses ``np.float`` (removed in numpy 1.24): while the model is built,
   ``np.float`` is the builtin ``float`` it aliased.

Both models get the same weights (ours copied into the reference through the MAE checkpoint key
map), the same batch and the same optimizer recipe: AdamW, betas (0.9, 0.95), weight decay 0.05,
for the reference a plain ``torch.optim.AdamW`` with timm's ``add_weight_decay`` groups as its
``main_pretrain.py`` builds it (no decay on biases and 1-d tensors), for s12mae
``build_optimizer`` (no decay on biases, norms and tokens). Gradient clipping is left out of both (the
reference pretrains without it). A step is, for s12mae, ``denominators`` + forward + backward +
optimizer step as the training loop runs it, and for the reference ``model(imgs, 0.75)`` +
backward + optimizer step. Rounds alternate the order (s12mae, reference; reference, s12mae; ...); each round times ``--steps`` steps
of one model, and the reported ratio is the median over rounds of s12mae's samples/s divided by
the reference's in the same round, by wall clock and by CPU time of the process (the second is
less disturbed by other processes on a shared machine).

Before timing, the loss of both models on the same mask (the reference's ``torch.rand`` noise
replaced by s12mae's keyed noise for that one call) is printed with its absolute difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn

from s12mae.checkpoint_import import mae_key_map
from s12mae.config import OptimConfig
from s12mae.methods.mae import MAE, STREAM_MASK
from s12mae.models.decoder import DECODERS
from s12mae.models.patches import patchify, unpatchify
from s12mae.models.vit import ENCODERS, build_encoder
from s12mae.rng import keyed_uniform
from s12mae.train.optim import build_optimizer

ENV = "S12MAE_REFERENCE_MAE"
SENSOR, CHANNELS, MASK_RATIO = "s2_l1c", 13, 0.75
PRESETS = {  # name: (encoder, decoder, img_size, batch)
    "tiny": ("vit_tiny_patch16", "vitlite_128d2b", 96, 32),
    "small": ("vit_small_patch16", "vitlite_128d2b", 96, 32),
    "small_dec256": ("vit_small_patch16", "vitlite_256d4b", 96, 32),
}


def load_reference(folder: str | None) -> ModuleType:
    """Import ``models_mae.py`` from ``folder`` and adapt it to timm 1.x (see the docstring)."""
    if not folder:
        raise SystemExit(f"set {ENV} to a folder holding facebookresearch/mae's models_mae.py and util/")
    path = Path(folder).expanduser() / "models_mae.py"
    if not path.is_file() or not (path.parent / "util" / "pos_embed.py").is_file():
        raise SystemExit(f"{ENV}={folder}: expected models_mae.py and util/pos_embed.py in that folder")
    sys.path.insert(0, str(path.parent))  # for its `from util.pos_embed import ...`
    try:
        spec = importlib.util.spec_from_file_location("reference_models_mae", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(path.parent))

    def block_without_qk_scale(*args: object, qk_scale: object = None, **kwargs: object) -> nn.Module:
        if qk_scale is not None:
            raise ValueError(f"timm 1.x Block has no qk_scale; the reference asked for {qk_scale}")
        return Block(*args, **kwargs)  # type: ignore[arg-type]

    module.Block = block_without_qk_scale  # looked up when the model is built
    return module


def reference_model(module: ModuleType, encoder: str, decoder: str, img_size: int) -> nn.Module:
    """The reference ``MaskedAutoencoderViT`` with any-channel ``patchify``/``unpatchify``."""

    class AnyChannelMAE(module.MaskedAutoencoderViT):  # type: ignore[name-defined,misc]
        def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
            return patchify(imgs, self.patch_embed.patch_size[0])

        def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
            side = int(x.shape[1] ** 0.5)
            return unpatchify(x, self.patch_embed.patch_size[0], (side, side), self.patch_embed.proj.in_channels)

    e, d = ENCODERS[encoder], DECODERS[decoder]
    with mock.patch.object(np, "float", float, create=True):  # its pos_embed.py uses np.float
        return AnyChannelMAE(
            img_size=img_size, patch_size=e.patch_size, in_chans=CHANNELS, embed_dim=e.embed_dim, depth=e.depth,
            num_heads=e.num_heads, decoder_embed_dim=d.embed_dim, decoder_depth=d.depth,
            decoder_num_heads=d.num_heads, mlp_ratio=e.mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )


def copy_weights(ours: MAE, ref: nn.Module) -> None:
    """Give the reference s12mae's weights (every tensor of both must be matched)."""
    convert = mae_key_map(sensor=SENSOR)
    ours_sd = ours.state_dict()
    mapped = {k: convert(k) for k in ref.state_dict()}
    missing = sorted(k for k, v in mapped.items() if v not in ours_sd)
    if missing or len(mapped) != len(ours_sd):
        raise SystemExit(f"weights do not map one to one; unmatched reference keys: {missing}")
    ref.load_state_dict({k: ours_sd[v] for k, v in mapped.items()})


def reference_optimizer(ref: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """MAE's ``main_pretrain.py`` recipe: timm ``add_weight_decay`` groups (no decay on 1-d
    tensors and biases; its model has no ``no_weight_decay``) + plain AdamW."""
    decay, no_decay = [], []
    for name, p in ref.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.weight_decay}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def loss_check(ours: MAE, ref: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Both losses on the same weights, images and mask (s12mae's keyed noise fed to the reference)."""
    imgs, index = batch[SENSOR], batch["index"]
    with torch.no_grad():
        ours_loss = ours(batch, "mae", 0)[SENSOR] / ours.denominators(batch, "mae", 0)[SENSOR]
        length = ours.encoder.patch_grid(*imgs.shape[-2:])
        noise = keyed_uniform(ours.seed, STREAM_MASK, 0, index, length[0] * length[1])
        with mock.patch("torch.rand", lambda *a, **k: noise.clone()):
            ref_loss = ref(imgs, MASK_RATIO)[0]
    return float(ours_loss), float(ref_loss)


def make_steps(ours: MAE, ref: nn.Module, batch: dict[str, torch.Tensor], cfg: OptimConfig):
    """One closure per model that runs one training step."""
    opt_ours, opt_ref = build_optimizer(ours, cfg), reference_optimizer(ref, cfg)
    counter = {"ours": 0, "ref": 0}

    def step_ours() -> None:
        i = counter["ours"] = counter["ours"] + 1
        den = ours.denominators(batch, "mae", i)[SENSOR]
        (ours(batch, "mae", i)[SENSOR] / den.clamp_min(1.0)).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_ref() -> None:
        ref(batch[SENSOR], MASK_RATIO)[0].backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)

    return step_ours, step_ref


def timed(step, n: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of ``n`` steps."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return time.perf_counter() - w0, time.process_time() - c0


def run_preset(module: ModuleType, preset: str, rounds: int, steps: int, warmup: int) -> str:
    encoder, decoder, img_size, batch_size = PRESETS[preset]
    torch.manual_seed(0)
    ours = MAE(build_encoder(encoder, {SENSOR: CHANNELS}, img_size), SENSOR, decoder, mask_ratio=MASK_RATIO)
    ref = reference_model(module, encoder, decoder, img_size)
    copy_weights(ours, ref)
    batch = {SENSOR: torch.randn(batch_size, CHANNELS, img_size, img_size), "index": torch.arange(batch_size)}
    a, b = loss_check(ours, ref, batch)
    print(f"{preset}: loss s12mae {a:.8f}, reference {b:.8f}, |diff| {abs(a - b):.3g}", flush=True)
    cfg = OptimConfig(name="adamw", lr=1e-4, warmup_steps=0)
    step_ours, step_ref = make_steps(ours, ref, batch, cfg)
    timed(step_ours, warmup), timed(step_ref, warmup)
    sps: dict[str, list[float]] = {"ours": [], "ref": []}
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for r in range(rounds):
        pair = [("ours", step_ours), ("ref", step_ref)]
        times = {name: timed(fn, steps) for name, fn in (pair if r % 2 == 0 else pair[::-1])}
        for name, values in sps.items():
            values.append(steps * batch_size / times[name][0])
        ratios["wall"].append(times["ref"][0] / times["ours"][0])
        ratios["cpu"].append(times["ref"][1] / times["ours"][1])
    med = statistics.median
    spread = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in ratios.items()}
    return (f"| {preset} | {encoder} + {decoder} | {img_size} | {batch_size} | {med(sps['ours']):.1f} | "
            f"{med(sps['ref']):.1f} | **{med(ratios['wall']):.2f}x** ({spread['wall']}) | "
            f"{med(ratios['cpu']):.2f}x ({spread['cpu']}) | {rounds} x {steps} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    ap.add_argument("--rounds", type=int, default=8, help="timed rounds per model, interleaved")
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_reference(os.environ.get(ENV))
    print(f"cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, reference {module.__file__}")
    print("| preset | encoder + decoder | px | batch | s12mae samples/s | reference samples/s "
          "| ratio (wall), median (range) | ratio (CPU time) | rounds x steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.preset:
        print(run_preset(module, preset, args.rounds, args.steps, args.warmup), flush=True)


if __name__ == "__main__":
    main()
