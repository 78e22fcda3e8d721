"""Shard writing on Dask (1 and 2 workers, against one process) and shard reading from S3 vs disk.

1. ``s12mae shards`` throughput: a simulated dataset (``--scenes`` scenes at ``--size`` px, S2 +
   S1) cut into a grid of 64 px chips, written in one process (``write_shard_set``) and on a
   ``LocalCluster`` of 1 and 2 worker processes of one thread (``open_client("local:N")``, what
   ``--cluster local:N`` starts; ``write_shards_distributed``; worker start-up and imports
   excluded: the cluster is started and the readers imported before the clock, as the one-process
   writer's are). Chips written per second; the sets are checked byte-identical; the load average is printed before each row, and the CPU seconds of
   the client (with the scheduler) and the workers, and the workers' peak anonymous memory (the
   largest, polled every 0.1 s: ``RssAnon``, without the memory-mapped scene files);
   ``--repeat R`` keeps the run of median wall time.
2. Shard reading: the one-process set read back with ``read_samples`` (decode every member) from
   the local folder and from a local S3 endpoint (moto's server on localhost, the test suite's
   ``fixtures_servers.S3Server``), after ``storage.upload_folder``. Chips per second and MB/s.

Usage:
    python benchmarks/bench_dask.py                 # 64 scenes of 256 px (1024 chips)
    python benchmarks/bench_dask.py --scenes 16     # quicker
    python benchmarks/bench_dask.py --write-only    # part 1 only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _anon_mb() -> float:
    """This process's anonymous resident memory (Linux): its own data, without the pages of files it
    maps (the simulated layout memory-maps its scenes; those pages are the page cache's)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024


class _PeakAnon:
    """The largest anonymous memory of any worker, polled every 0.1 s while in the ``with`` block."""

    def __init__(self, client: Any) -> None:
        import threading

        self.client, self.peak, self.stop = client, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, *self.client.run(_anon_mb).values())

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _dask_write(opener: Any, out: Path, **kwargs: Any) -> dict:
    from s12mae.shards.parallel import write_shards_distributed

    return write_shards_distributed(opener, out, progress=False, **kwargs)


def _write(args: argparse.Namespace, work: Path) -> list[dict]:
    import functools

    from s12mae.distributed import open_client
    from s12mae.layouts import open_layout
    from s12mae.shards import ShardConfig, write_shard_set

    cfg = ShardConfig(sensors=["s2_l1c", "s1_grd"], crop="grid", chip_size=64, chips_per_shard=64)
    data = str(work / "sim")
    rows = []

    def timed(mode: str, workers: int, write: Any, cpu: Any) -> None:
        """``args.repeat`` runs of ``write(folder)``; the one of median wall time is kept."""
        runs = []
        for i in range(args.repeat):
            load, c, t = os.getloadavg()[0], cpu(), time.perf_counter()
            chips = write(work / f"{mode}{workers}-{i}")["num_samples"]
            runs.append({"mode": mode, "workers": workers, "chips": chips, "seconds": time.perf_counter() - t,
                         "cpu_s": cpu() - c, "load": load, "folder": work / f"{mode}{workers}-{i}"})
        rows.append(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])

    timed("one process", 0, lambda out: write_shard_set(data, out, cfg), time.process_time)
    keys = list(cfg.sensors)
    for n in (1, 2):
        with open_client(f"local:{n}") as client:  # the CLI's cluster: processes of one thread
            opener = functools.partial(open_layout, "simulated", data, keys)
            client.run(lambda: [__import__(m) for m in ("s12mae.shards.parallel", "s12mae.layouts")])  # not timed
            num_input = len(opener())
            with _PeakAnon(client) as memory:
                timed("dask", n, functools.partial(_dask_write, opener, cfg=cfg, client=client, num_input=num_input),
                      lambda c=client: time.process_time() + sum(c.run(time.process_time).values()))  # scheduler here
            rows[-1]["peak_anon_mb"] = memory.peak
        rows[-1]["identical"] = _files(rows[-1]["folder"]) == _files(rows[0]["folder"])
    for r in rows:
        r["chips_per_s"] = r["chips"] / r["seconds"]
    return rows


def _read(work: Path) -> list[dict]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import boto3
    import fsspec
    from fixtures_servers import S3Server

    from s12mae import storage
    from s12mae.shards import read_samples

    server = S3Server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=server.endpoint)
    fsspec.AbstractFileSystem.clear_instance_cache()
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    storage.upload_folder(work / "one", "s3://bench/set", last=["shards.json"])
    size = sum(p.stat().st_size for p in (work / "one").glob("shard-*.tar"))
    rows = []
    for name, where in (("local disk (page cache warm)", str(work / "one")), ("local S3 endpoint", "s3://bench/set")):
        sum(1 for _ in read_samples(where))  # warm-up
        t = time.perf_counter()
        n = sum(1 for _ in read_samples(where))
        dt = time.perf_counter() - t
        rows.append({"source": name, "chips": n, "seconds": dt, "chips_per_s": n / dt, "MB_per_s": size / dt / 1e6})
    server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1, help="runs per writer; the median wall time is kept")
    ap.add_argument("--write-only", action="store_true", help="skip part 2 (shard reading from S3)")
    args = ap.parse_args()
    from s12mae.simulate import SimulationConfig, write_simulated

    print(json.dumps({"load_average_start": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_simulated(work / "sim", SimulationConfig(num_samples=args.scenes, img_size=args.size, seed=0))
        writes = _write(args, work)
        reads = [] if args.write_only else _read(work)
    print(json.dumps({"load_average_end": os.getloadavg()}))
    print("\n| writer | workers | chips | seconds | chips/s | CPU s (all processes) | identical to one process "
          "| load before | worker peak anon. MB |\n|---|---|---|---|---|---|---|---|---|")
    for r in writes:
        memory = f"{r['peak_anon_mb']:.0f}" if "peak_anon_mb" in r else "-"
        print(f"| {r['mode']} | {r['workers'] or '-'} | {r['chips']} | {r['seconds']:.2f} | {r['chips_per_s']:.0f} "
              f"| {r['cpu_s']:.2f} | {r.get('identical', '-')} | {r['load']:.1f} | {memory} |")
    if reads:
        print("\n| shard source | chips | seconds | chips/s | MB/s |\n|---|---|---|---|---|")
    for r in reads:  # empty under --write-only
        print(f"| {r['source']} | {r['chips']} | {r['seconds']:.2f} | {r['chips_per_s']:.0f} | {r['MB_per_s']:.0f} |")


if __name__ == "__main__":
    main()
