"""Read + decode + standardise on one core: s12mae's shard path against torchgeo's per-file reading.

Usage:
    python benchmarks/bench_datapath.py                       # BigEarthNet v1 example, S1 stored float16
    python benchmarks/bench_datapath.py --s1_dtype float32 --batch 64

Data: the six S1/S2 pairs of the shared BigEarthNet v1 example (``../shared/data`` or ``--data``),
S2 L2A 12 bands + S1 VV/VH, 120 x 120 px. The pairs are read once with s12mae's reader and written
``--repeat`` times into a shard set (distinct ids), so that the shard side streams many chips
while torchgeo re-reads the same six folders (page cache warm on both sides: this measures CPU
cost per sample, not disk).

Timed, interleaved in ``--rounds`` rounds in this one process, one torch thread, no workers:

- ``torchgeo``: ``torchgeo.datasets.BigEarthNet(bands="all")[i]`` (14 GeoTIFFs per pair, resampled
  to 120 px with rasterio, stacked as float32; no standardisation), when torchgeo is installed;
- ``shards, per sample``: the stream standardising each sample in the reader (the old path);
- ``shards, per batch``: the stream serving stored dtypes (int16 S2, ``--s1_dtype`` S1) and bool
  masks, ``default_collate`` into batches of ``--batch``, then :func:`s12mae.data.model_batch`
  on the batch (what the training loop does after the copy to its device; here on the CPU);
- ``shards, batches``: the same without standardising: the data core's whole share when the
  training device is a GPU.

Prints a Markdown table: samples/s (median of rounds) and the ratio to torchgeo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import default_collate

from s12mae.data import model_batch
from s12mae.layouts import open_layout
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, ShardStream, write_shards

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bigearthnet-v1-example"


def torchgeo_root(data: Path, root: Path) -> Path:
    """torchgeo's BigEarthNet v1 layout over the example: links to the two folders, split CSVs."""
    (root / "BigEarthNet-v1.0").symlink_to(data / "BigEarthNet-S2-Example")
    (root / "BigEarthNet-S1-v1.0").symlink_to(data / "BigEarthNet-S1-Example")
    rows = []
    for s1 in sorted((data / "BigEarthNet-S1-Example").iterdir()):
        meta = json.loads(next(s1.glob("*_labels_metadata.json")).read_text())
        rows.append(f"{meta['corresponding_s2_patch']},{s1.name}")
    for split in ("train", "val", "test"):
        (root / f"bigearthnet-{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def torchgeo_reader(data: Path, root: Path) -> tuple[Callable[[int], int] | None, str]:
    try:
        from torchgeo.datasets import BigEarthNet
    except ImportError as err:
        return None, f"skipped: torchgeo is not installed ({err})"
    ds = BigEarthNet(str(torchgeo_root(data, root)), split="train", bands="all")

    def read(n: int) -> int:
        for i in range(n):
            ds[i % len(ds)]
        return n

    return read, f"torchgeo {__import__('torchgeo').__version__}"


def shard_readers(path: Path, batch: int) -> dict[str, Callable[[int], int]]:
    specs = [get_sensor("s2_l2a"), get_sensor("s1_grd")]

    def per_sample(n: int) -> int:
        stream = ShardStream(path, specs, seed=0, shuffle_buffer=0, nodata="mask")
        return sum(1 for _ in islice(iter(stream), n))

    def per_batch(n: int, standardise: bool = True) -> int:
        stream = iter(ShardStream(path, specs, seed=0, shuffle_buffer=0, standardise=False))
        done = 0
        while done < n:
            raw = default_collate(list(islice(stream, batch)))
            if standardise:
                model_batch(raw, specs, "mask", "bench")
            done += batch
        return done

    return {"shards, standardised per sample (old)": per_sample,
            f"shards, stored dtypes, standardised per batch of {batch} on this CPU": per_batch,
            f"shards, stored dtypes, batches of {batch} (the CPU's share when a GPU standardises)":
                lambda n: per_batch(n, standardise=False)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--repeat", type=int, default=64, help="copies of the six pairs in the shard set")
    p.add_argument("--s1_dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--samples", type=int, default=384, help="samples per timed round and reader")
    p.add_argument("--torchgeo_samples", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no BigEarthNet v1 example folder (pass --data)")
    torch.set_num_threads(1)
    pairs = open_layout("bigearthnet-v1", args.data, ["s2_l2a", "s1_grd"])
    base = [pairs[i] for i in range(len(pairs))]
    chips = [{**s, "id": f"{s['id']}-{r}"} for r in range(args.repeat) for s in base]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_shards(chips, tmp_path / "shards",
                     ShardConfig(sensors=["s2_l2a", "s1_grd"], chips_per_shard=128, dtypes={"s1_grd": args.s1_dtype}))
        (tmp_path / "tg").mkdir()
        tg, tg_note = torchgeo_reader(args.data, tmp_path / "tg")
        readers = {**({"torchgeo BigEarthNet(bands='all'), per file": tg} if tg else {}),
                   **shard_readers(tmp_path / "shards", args.batch)}
        rates: dict[str, list[float]] = {name: [] for name in readers}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            for name in readers if r % 2 == 0 else list(readers)[::-1]:
                n = args.torchgeo_samples if name.startswith("torchgeo") else args.samples
                t0 = time.perf_counter()
                done = readers[name](n)
                rates[name].append(done / (time.perf_counter() - t0))
            load.append(os.getloadavg()[0])
    print(f"# BigEarthNet v1 example: {len(base)} pairs x {args.repeat} in shards (S2 L2A int16, S1 {args.s1_dtype}), "
          f"120 px; {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; {tg_note}; "
          f"1-min load average {min(load):.1f}-{max(load):.1f} over the rounds")
    print("| reader | samples/s (median of rounds) | / torchgeo |")
    print("|---|---|---|")
    ref = statistics.median(next(iter(rates.values()))) if tg else None
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.0f} | {f'{rate / ref:.1f}x' if ref else '-'} |")


if __name__ == "__main__":
    main()
