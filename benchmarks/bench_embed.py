"""Whole-scene embedding throughput (``s12mae embed``) in tiles/s, on the shared Sen1Floods11 chip.

Usage:
    python benchmarks/bench_embed.py --threads 1 2 --variant vit_nano_patch8:64 vit_base_patch16:224

For each ``variant:img_size`` a randomly initialised 13-band S2 L1C encoder (throughput does not
depend on the weights) embeds a scene made of the real Sen1Floods11 S2 chip (512 x 512 px, 13
bands) mirrored to ``--size`` x ``--size`` px, with the default tiling (tile = the encoder's image
size, overlap = a quarter of the tile rounded to the patch), fp32, on the CPU. Reading, blending and
writing the GeoTIFF are included. Prints one Markdown row per (variant, threads), best of
``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import torch

from s12mae.export import save_encoder
from s12mae.inference.embed import EmbedConfig, embed_scene
from s12mae.models.vit import build_encoder

CHIP = Path(__file__).resolve().parents[2] / "shared/data/sen1floods11-sample/S2/Spain_7370579_S2Hand.tif"


def make_scene(path: Path, size: int) -> None:
    with rasterio.open(CHIP) as src:
        data, profile = src.read(), src.profile
    pad = size - data.shape[1]
    big = np.pad(data, ((0, 0), (0, pad), (0, pad)), mode="symmetric")[:, :size, :size]
    profile.update(height=size, width=size)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(big)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs="+", default=["vit_nano_patch8:64", "vit_base_patch16:224"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--size", type=int, default=1024, help="scene side in px")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| encoder | tile px | overlap px | threads | tiles | tiles/s | scene Mpx/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        make_scene(scene, args.size)
        for variant in args.variant:
            name, img = variant.split(":")
            ckpt = Path(tmp) / f"{name}.safetensors"
            torch.manual_seed(0)
            save_encoder(build_encoder(name, {"s2_l1c": 13}, int(img)), ckpt,
                         SimpleNamespace(model=SimpleNamespace(encoder=name, img_size=int(img)), method="mae"))
            for threads in args.threads:
                best = None
                for _ in range(args.repeats):
                    s = embed_scene(EmbedConfig(scene=str(scene), checkpoint=str(ckpt), out=str(Path(tmp) / "e.tif"),
                                                threads=threads, batch_size=args.batch_size, overwrite=True,
                                                progress=False))
                    best = s if best is None or s["seconds"] < best["seconds"] else best
                p = int(name.split("patch")[1])
                overlap = (int(img) // 4) // p * p
                print(f"| {name} | {img} | {overlap} | {threads} | {best['tiles']} | {best['tiles_per_s']:.1f} | "
                      f"{args.size ** 2 / best['seconds'] / 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
