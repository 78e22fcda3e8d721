"""Reading chips from WebDataset shards vs from per-band GeoTIFFs, in samples/s on one core.

Usage:
    python benchmarks/bench_shards.py                      # 256 chips, 13 x 128 x 128, uncompressed
    python benchmarks/bench_shards.py --compress deflate   # GeoTIFFs as many archives ship them

Writes N simulated 13-band S2 chips twice into a temporary folder: as 13 single-band GeoTIFFs per
chip (``chip_000012/B01.tif`` ...) with rasterio, and as a shard set with ``s12mae.shards``. Then
times, in this one process with one torch thread (no DataLoader workers), two things each way:

- ``decode``: file values in memory, ``(13, H, W)`` int16 plus the bool valid mask (GeoTIFF: open
  and read 13 files, stack, ``!= 0``; shards: tar stream, ``.npy`` decode, unpack the mask);
- ``train``: the same plus the standardised float32 tensor and mask the training loop receives.

Files are read right after writing, so both sides come from the page cache: this measures CPU
cost per sample, not disk. Prints one Markdown row per mode with the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from s12mae.inputs import model_inputs
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, ShardStream, read_samples, write_shards
from s12mae.simulate import SimulationConfig, simulate_scene


def write_geotiffs(chips: list[np.ndarray], root: Path, bands: list[str], compress: str) -> list[list[Path]]:
    """One folder per chip, one single-band int16 GeoTIFF per band."""
    out = []
    for i, chip in enumerate(chips):
        folder = root / f"chip_{i:06d}"
        folder.mkdir(parents=True)
        files = []
        for band, x in zip(bands, chip):
            path = folder / f"{band}.tif"
            profile = {"driver": "GTiff", "width": x.shape[1], "height": x.shape[0], "count": 1,
                       "dtype": "int16", "crs": "EPSG:32632", "nodata": 0,
                       "transform": from_origin(500000 + 1280 * i, 5000000, 10, 10)}
            if compress != "none":
                profile["compress"] = compress
            with rasterio.open(path, "w", **profile) as ds:
                ds.write(x, 1)
            files.append(path)
        out.append(files)
    return out


def best_rate(fn: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="chips")
    p.add_argument("--size", type=int, default=128, help="chip side in pixels")
    p.add_argument("--chips_per_shard", type=int, default=64)
    p.add_argument("--compress", default="none", help="GeoTIFF compression: none, deflate, lzw, ...")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = get_sensor("s2_l1c")
    sim = SimulationConfig(num_samples=args.n, img_size=args.size, seed=0)
    chips = [simulate_scene(i, sim)["s2_l1c"] for i in range(args.n)]
    samples = [{"id": f"chip_{i:06d}", "s2_l1c": c, "valid.s2_l1c": c != 0, "meta": {"source": "bench"}}
               for i, c in enumerate(chips)]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiffs = write_geotiffs(chips, root / "tif", spec.band_names, args.compress)
        cfg = ShardConfig(sensors=["s2_l1c"], chips_per_shard=args.chips_per_shard)
        write_shards(samples, root / "shards", cfg)
        tif_bytes = sum(f.stat().st_size for files in tiffs for f in files)
        shard_bytes = sum(f.stat().st_size for f in (root / "shards").glob("*.tar"))

        def tif_decode() -> list[tuple[np.ndarray, np.ndarray]]:
            out = []
            for files in tiffs:
                bands = []
                for f in files:
                    with rasterio.open(f) as ds:
                        bands.append(ds.read(1))
                x = np.stack(bands)
                out.append((x, x != 0))
            return out

        def tif_train() -> int:
            n = 0
            for x, valid in tif_decode():
                model_inputs(spec, torch.from_numpy(x), torch.from_numpy(valid), nodata="mask")
                n += 1
            return n

        stream = ShardStream(root / "shards", [spec], seed=0, shuffle_buffer=0, nodata="mask")
        rows = {
            "decode": (lambda: len(tif_decode()), lambda: sum(1 for _ in read_samples(root / "shards"))),
            "train": (tif_train, lambda: sum(1 for _ in stream.iter_epoch(0))),
        }
        print(f"# {args.n} chips of 13 x {args.size} x {args.size} int16, GeoTIFF compress={args.compress}, "
              f"{platform.processor() or platform.machine()}, torch threads 1, page cache warm")
        print(f"# bytes on disk: GeoTIFF {tif_bytes / 1e6:.1f} MB in {args.n * 13} files, "
              f"shards {shard_bytes / 1e6:.1f} MB in {len(list((root / 'shards').glob('*.tar')))} files")
        print("| mode | GeoTIFF samples/s | shards samples/s | shards / GeoTIFF |")
        print("|---|---|---|---|")
        for mode, (tif_fn, shard_fn) in rows.items():
            tif_rate, shard_rate = best_rate(tif_fn, args.repeats), best_rate(shard_fn, args.repeats)
            print(f"| {mode} | {tif_rate:.0f} | {shard_rate:.0f} | {shard_rate / tif_rate:.1f}x |")


if __name__ == "__main__":
    main()
