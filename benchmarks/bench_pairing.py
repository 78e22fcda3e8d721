"""S1/S2 pairing at scale: 1M S2 and 3M S1 metadata rows, end to end (read, pair, write).

Usage:
    python benchmarks/bench_pairing.py                       # 1M S2 x 3M S1, all cores
    python benchmarks/bench_pairing.py --n_s2 100000 --n_s1 300000 --threads 2

The synthetic catalogue (deterministic seed): places spread over the globe (latitudes -60..75,
equal-area), each with an S1 revisit of 6-12 days over two years (acquisition times jittered by
about half an hour) and S2 acquisitions at random times; footprints are 10-100 km boxes around the
place (S1 a little larger and shifted), 15 % of S1 and 10 % of S2 rotated by up to 15 degrees and
given as WKT polygons (these need the exact shapely check), the rest as minlon..maxlat bboxes;
places near 180 degrees give footprints crossing the antimeridian. No location column: every
match goes through the footprint join. Generation is not timed; the timed part is
``pair_cli(s2.parquet, s1.parquet, out)``: reading both indexes, pairing, the nearest-S1 search of
the S2-only rows and writing the two parquet outputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from s12mae.pairing import pair_cli

T0_US = 1_577_836_800_000_000  # 2020-01-01T00:00:00Z
DAY_US = 86_400_000_000
SPAN_DAYS = 730.0
KM_PER_DEG = 111.32


def _footprints(
    rng: np.random.Generator, lon: np.ndarray, lat: np.ndarray, km: np.ndarray, rotated_share: float
) -> dict[str, object]:
    """Boxes of side ``km`` around (lon, lat): bbox columns, or WKT for a rotated share."""
    n = len(lon)
    half_lat = km / KM_PER_DEG / 2
    half_lon = km / (KM_PER_DEG * np.cos(np.radians(lat))) / 2
    wrap = lambda x: (x + 180.0) % 360.0 - 180.0  # noqa: E731
    minlon, maxlon = wrap(lon - half_lon), wrap(lon + half_lon)  # minlon > maxlon across 180
    minlat, maxlat = lat - half_lat, lat + half_lat
    rot = rng.random(n) < rotated_share
    wkt = np.full(n, None, dtype=object)
    if rot.any():
        a = np.radians(rng.uniform(-15, 15, rot.sum()))
        c, s = np.cos(a), np.sin(a)
        hx, hy = half_lon[rot], half_lat[rot]
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)], float)
        dx = corners[None, :, 0] * hx[:, None]
        dy = corners[None, :, 1] * hy[:, None]
        # rotate in km-like units (scale x by cos(lat)) so the shape stays a rotated square
        k = np.cos(np.radians(lat[rot]))[:, None]
        rx = (dx * k * c[:, None] - dy * s[:, None]) / k
        ry = dx * k * s[:, None] + dy * c[:, None]
        x = wrap(lon[rot][:, None] + rx)
        y = lat[rot][:, None] + ry
        polys = shapely.polygons(np.stack([x, y], axis=-1))
        wkt[rot] = shapely.to_wkt(polys, rounding_precision=6)
    nanif = lambda v: np.where(rot, np.nan, v)  # noqa: E731
    return {
        "footprint": pa.array(wkt, pa.string()),
        "minlon": nanif(minlon),
        "minlat": nanif(minlat),
        "maxlon": nanif(maxlon),
        "maxlat": nanif(maxlat),
    }


def generate(n_s2: int, n_s1: int, seed: int, out: Path, chunk_s1: int | None = None) -> tuple[Path, Path]:
    """Write ``out/s2.parquet`` and ``out/s1.parquet``. With ``chunk_s1``, the catalogue is made and
    written in chunks of about that many S1 rows (each its own places, S2 rows in proportion, seed
    ``[seed, chunk]``), so memory stays bounded by one chunk at any size; without, in one piece."""
    out.mkdir(parents=True, exist_ok=True)
    f2, f1 = out / "s2.parquet", out / "s1.parquet"
    if chunk_s1 is None or n_s1 <= chunk_s1:
        s2, s1 = _chunk(np.random.default_rng(seed), n_s2, n_s1)
        pq.write_table(s2, f2)
        pq.write_table(s1, f1)
        return f2, f1
    chunks = -(-n_s1 // chunk_s1)
    cut1 = np.linspace(0, n_s1, chunks + 1).astype(np.int64)
    cut2 = np.linspace(0, n_s2, chunks + 1).astype(np.int64)
    w2 = w1 = None
    try:
        for c in range(chunks):
            s2, s1 = _chunk(np.random.default_rng([seed, c]), int(cut2[c + 1] - cut2[c]), int(cut1[c + 1] - cut1[c]),
                            int(cut2[c]), int(cut1[c]))
            w2 = w2 or pq.ParquetWriter(f2, s2.schema)
            w1 = w1 or pq.ParquetWriter(f1, s1.schema)
            w2.write_table(s2)
            w1.write_table(s1)
    finally:
        for w in (w2, w1):
            if w is not None:
                w.close()
    return f2, f1


def _chunk(rng: np.random.Generator, n_s2: int, n_s1: int, s2_id0: int = 0, s1_id0: int = 0
           ) -> tuple[pa.Table, pa.Table]:
    """One piece of the catalogue: (S2 table, S1 table), ids numbered from ``s2_id0``/``s1_id0``."""
    # places and their S1 revisit; enough places for n_s1 acquisitions
    revisit = rng.uniform(6.0, 12.0, size=n_s1 // 50 + 10)
    per_place = np.floor(SPAN_DAYS / revisit).astype(np.int64)
    n_places = int(np.searchsorted(np.cumsum(per_place), n_s1)) + 1
    revisit, per_place = revisit[:n_places], per_place[:n_places]
    per_place[-1] -= int(per_place.sum() - n_s1)
    lon = rng.uniform(-180.0, 180.0, n_places)
    lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-60)), np.sin(np.radians(75)), n_places)))
    km = rng.uniform(10.0, 100.0, n_places)

    # S1: every revisit, jittered; footprint a bit larger and shifted
    p1 = np.repeat(np.arange(n_places), per_place)
    k1 = np.arange(n_s1) - np.repeat(np.cumsum(per_place) - per_place, per_place)
    phase = rng.uniform(0, revisit)
    t1 = T0_US + ((phase[p1] + k1 * revisit[p1]) * DAY_US + rng.normal(0, 0.5, n_s1) * 3_600_000_000).astype(
        np.int64
    )
    km1 = km[p1] * rng.uniform(0.8, 1.5, n_s1)
    shift = rng.normal(0, 0.15, (n_s1, 2)) * km[p1, None]
    lat1 = lat[p1] + shift[:, 1] / KM_PER_DEG
    lon1 = lon[p1] + shift[:, 0] / (KM_PER_DEG * np.cos(np.radians(lat[p1])))
    s1 = {
        "id": pa.array(np.char.add("S1_", np.arange(s1_id0, s1_id0 + n_s1).astype(str))),
        "time": pa.array(t1).cast(pa.timestamp("us", tz="UTC")),
        **_footprints(rng, lon1, lat1, km1, 0.15),
    }
    s1["path"] = pa.array(np.char.add("s1/", s1["id"].to_numpy(zero_copy_only=False).astype(str)))

    # S2: random places and times
    p2 = rng.integers(0, n_places, n_s2)
    t2 = T0_US + (rng.uniform(0, SPAN_DAYS, n_s2) * DAY_US).astype(np.int64)
    shift = rng.normal(0, 0.05, (n_s2, 2)) * km[p2, None]
    lat2 = lat[p2] + shift[:, 1] / KM_PER_DEG
    lon2 = lon[p2] + shift[:, 0] / (KM_PER_DEG * np.cos(np.radians(lat[p2])))
    s2 = {
        "id": pa.array(np.char.add("S2_", np.arange(s2_id0, s2_id0 + n_s2).astype(str))),
        "time": pa.array(t2).cast(pa.timestamp("us", tz="UTC")),
        **_footprints(rng, lon2, lat2, km[p2], 0.10),
    }
    s2["path"] = pa.array(np.char.add("s2/", s2["id"].to_numpy(zero_copy_only=False).astype(str)))

    return pa.table(s2), pa.table(s1)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n_s2", type=int, default=1_000_000)
    ap.add_argument("--n_s1", type=int, default=3_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    ap.add_argument(
        "--workdir", type=str, default=None, help="folder for the inputs/outputs (default: a temp dir)"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t = time.perf_counter()
        f2, f1 = generate(args.n_s2, args.n_s1, args.seed, work)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        stats = pair_cli(str(f2), str(f1), out=str(work / "out"), threads=args.threads, quiet=True)
        wall = time.perf_counter() - t
    rows = args.n_s2 + args.n_s1
    print(
        f"machine: {_cpu()}, {os.cpu_count()} cores, DuckDB threads {args.threads or os.cpu_count()}, "
        f"python {platform.python_version()}"
    )
    print(
        f"inputs: {args.n_s2:,} S2 + {args.n_s1:,} S1 rows "
        f"(seed {args.seed}; generated in {gen_s:.1f} s, not timed)"
    )
    print(
        f"pairs: {stats['pairs']:,}  S2-only: {stats['s2_only']:,}  S1 used: {stats['s1_used']:,} "
        f"(max reuse {stats['s1_max_reuse']})"
    )
    print("stages: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["seconds"].items()))
    print(
        f"wall time: {wall:.1f} s   throughput: {rows / wall:,.0f} input rows/s "
        f"({args.n_s2 / wall:,.0f} S2 rows/s)"
    )


if __name__ == "__main__":
    main()
