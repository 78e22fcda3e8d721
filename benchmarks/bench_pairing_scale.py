"""How pairing's memory grows with the catalogue: peak RSS of ``pair`` at growing sizes.

Issue 11 asks for 10M S2 x 30M S1 rows under a stated memory cap. This benchmark measures peak
resident memory and wall time at growing sizes (default 0.1M x 0.3M, 0.3M x 0.9M, 1M x 3M) so the
growth per row can be read off, with the bounded-memory options of ``pair`` (``--partition_days``:
time-window partitions of the search; ``--memory_limit``/``--temp_dir``: DuckDB's limit and spill
folder), and can run each size under a hard address-space cap (``--cap_gb``, ``RLIMIT_AS``) to
check a bound. With ``--partition_days`` the two parquet indexes are also read window by window
(:mod:`s12mae.pairing.windows`), so memory is bounded by one window rather than the catalogue;
without it the item tables are loaded whole.

Each size runs in two fresh processes: one writes the synthetic catalogue of
``bench_pairing.generate`` (same generator and seed as the 1M x 3M benchmark; above
``--chunk_s1`` S1 rows it is made and written in chunks, so 40M rows fit in memory), one pairs it with
``pair_cli`` (read, pair, nearest S1 of the S2-only rows, write) and reports its own peak RSS
(``ru_maxrss``), so generation never counts.

Usage:
    python benchmarks/bench_pairing_scale.py                          # three sizes, 2 threads
    python benchmarks/bench_pairing_scale.py --sizes 100000:300000 --cap_gb 4
    python benchmarks/bench_pairing_scale.py --sizes 1000000:3000000 --partition_days 30 --memory_limit 2GB
    python benchmarks/bench_pairing_scale.py --sizes 10000000:30000000 --partition_days 15 \
        --memory_limit 2GB --cap_gb 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    work = Path(args.workdir)
    if args.worker == "generate":
        from bench_pairing import generate

        generate(args.n_s2, args.n_s1, args.seed, work, chunk_s1=args.chunk_s1)
        return
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cap_gb:
        cap = int(args.cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from s12mae.pairing import pair_cli

    load_start = os.getloadavg()
    t = time.perf_counter()
    inputs = Path(args.inputs or work)
    stats = pair_cli(str(inputs / "s2.parquet"), str(inputs / "s1.parquet"), out=str(work / "out"),
                     threads=args.threads, quiet=True, partition_days=args.partition_days,
                     memory_limit=args.memory_limit, temp_directory=args.temp_dir or str(work / "spill"))
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_gb = usage.ru_maxrss / 2**20  # KiB on Linux
    cpu_s = usage.ru_utime + usage.ru_stime  # with 1 thread: about the wall time on an idle core
    vm_peak = next((int(line.split()[1]) / 2**20 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmPeak:")), None)  # the address space that RLIMIT_AS caps, GiB
    print(json.dumps({"wall_s": wall, "cpu_s": cpu_s, "peak_rss_gb": peak_gb, "vm_peak_gb": vm_peak, "pairs": stats["pairs"],
                      "s2_only": stats["s2_only"], "windows": stats.get("windows"), "seconds": stats["seconds"], "load_start": load_start,
                      "load_end": os.getloadavg()}))


def _run(n_s2: int, n_s1: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=args.workroot) as tmp:
        work = Path(args.keep_data) / f"{n_s2}x{n_s1}-seed{args.seed}" if args.keep_data else Path(tmp)
        common = [sys.executable, __file__, "--workdir", str(work), "--n_s2", str(n_s2), "--n_s1", str(n_s1),
                  "--seed", str(args.seed), "--threads", str(args.threads), "--chunk_s1", str(args.chunk_s1)]
        t = time.perf_counter()
        if not (work / "s1.parquet").is_file():
            subprocess.run([*common, "--worker", "generate"], check=True)
            print(json.dumps({"generated_s": round(time.perf_counter() - t, 1), "n_s2": n_s2, "n_s1": n_s1}),
                  flush=True)
        common[3] = tmp  # outputs and spill in the temporary folder
        common += ["--inputs", str(work)]
        cap = ["--cap_gb", str(args.cap_gb)] if args.cap_gb else []
        cap += ["--partition_days", str(args.partition_days)] if args.partition_days else []
        cap += ["--memory_limit", args.memory_limit] if args.memory_limit else []
        cap += ["--temp_dir", args.temp_dir] if args.temp_dir else []
        log = Path(args.log) if args.log else Path(tmp) / "pair.log"
        t = time.perf_counter()
        with log.open("w") as err:
            done = subprocess.run([*common, "--worker", "pair", *cap], stdout=subprocess.PIPE, stderr=err, text=True,
                                  check=False)
        if done.returncode != 0:
            return {"n_s2": n_s2, "n_s1": n_s1, "failed_after_s": round(time.perf_counter() - t, 1),
                    "failed": log.read_text().strip().splitlines()[-1:]}
        return {"n_s2": n_s2, "n_s1": n_s1, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000:300000,300000:900000,1000000:3000000",
                    help="comma-separated N_S2:N_S1 pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap_gb", type=float, default=None, help="address-space cap of the pairing process")
    ap.add_argument("--partition_days", type=float, default=None, help="pair(partition_days=...)")
    ap.add_argument("--memory_limit", default=None, help="pair(memory_limit=...), e.g. 2GB")
    ap.add_argument("--temp_dir", default=None, help="DuckDB spill folder (default: in the work folder)")
    ap.add_argument("--chunk_s1", type=int, default=3_000_000, help="generate in chunks of this many S1 rows")
    ap.add_argument("--log", default=None, help="keep the pairing process's log (progress per window) here")
    ap.add_argument("--keep_data", default=None, help="keep the generated catalogues in this folder and reuse them")
    ap.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workroot", default=None, help="where the temporary work folder goes (default: system tmp)")
    ap.add_argument("--worker", choices=["generate", "pair"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n_s2", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n_s1", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    rows = []
    print(json.dumps({"load_average": os.getloadavg(), "partition_days": args.partition_days,
                      "memory_limit": args.memory_limit, "cap_gb": args.cap_gb}), flush=True)
    for size in args.sizes.split(","):
        n_s2, n_s1 = (int(v) for v in size.split(":"))
        rows.append(_run(n_s2, n_s1, args))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| S2 rows | S1 rows | wall s | peak RSS GB | GB per 1M input rows |\n|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n_s2']:,} | {r['n_s1']:,} | failed: {r['failed']} | | |")
            continue
        per = r["peak_rss_gb"] / ((r["n_s2"] + r["n_s1"]) / 1e6)
        print(f"| {r['n_s2']:,} | {r['n_s1']:,} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {per:.2f} |")


if __name__ == "__main__":
    main()
