"""Bytes moved and time to write one chip-shard from COGs on S3: a windowed read of the chip vs
reading the whole scene and cutting the chip. Runs against the tests' localhost S3 endpoint (moto),
so times include a Python HTTP server, not a network; bytes are what GDAL fetched.

    PYTHONPATH=src:tests python benchmarks/bench_windowed_chips.py --size 2048 --chip 256

The scene: one S2 L1C item whose 13 band COGs are int16 random DN (10 m bands ``size`` px, 20 m and
60 m bands proportionally smaller, 512 px tiles, LZW), listed in a hand-made ``s2-all`` pairs
folder with its ``s2_grid``. Reported: bytes of the files, bytes fetched, seconds, and for band
B02 alone (a single ``size`` x ``size`` int16 COG) its file size and the bytes its chip fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from fixtures_servers import S3Server, s2_item
from rasterio.transform import from_origin

from s12mae import storage
from s12mae.layouts import PairFolder
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, write_shards
from s12mae.stac_items import band_assets, proj_grid

ORIGIN = (600_000.0, 5_000_000.0)


def scene(server: S3Server, bucket: str, tmp: Path, size: int) -> dict:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    item = s2_item("S2B_bench", "2022-03-03T10:10:21Z", (10, 45, 11, 46))
    rng = np.random.default_rng(0)
    for band in get_sensor("s2_l1c").bands:
        asset = next(a for a in item["assets"].values() if a["href"].endswith(f"/{band.name}.tif"))
        key = asset["href"].split("/", 3)[3]
        asset["href"] = f"s3://{bucket}/{key}"
        n = round(size * 10 / band.resolution_m)
        with rasterio.open(tmp / "c.tif", "w", driver="COG", width=n, height=n, count=1, dtype="int16",
                           crs="EPSG:32632", transform=from_origin(*ORIGIN, band.resolution_m, band.resolution_m),
                           blocksize=512, compress="lzw") as ds:
            ds.write(rng.integers(1100, 4000, (1, n, n)).astype("int16"))
        client.upload_file(str(tmp / "c.tif"), bucket, key)
        asset["proj:shape"] = [n, n]
        asset["proj:transform"] = [band.resolution_m, 0, ORIGIN[0], 0, -band.resolution_m, ORIGIN[1]]
    item["properties"]["proj:epsg"] = 32632
    return item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chip", type=int, default=256)
    args = parser.parse_args()
    server = S3Server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=server.endpoint, CPL_VSIL_CURL_NON_CACHED="/vsis3/")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        item = scene(server, "bench", tmp, args.size)
        spec = get_sensor("s2_l1c")
        hrefs = band_assets(item, spec)
        row = {"s2_id": item["id"], "s2_path": "https://stac.example/S2B_bench", "s2_time": "2022-03-03T10:10:21Z",
               "s2_assets": json.dumps(hrefs), "s2_collection": "sentinel-2-l1c", "s2_dn_offset": 1000,
               "s2_grid": proj_grid(item, spec)}
        (tmp / "pairs").mkdir()
        pq.write_table(pa.Table.from_pylist([row]), tmp / "pairs" / "s2_only.parquet")
        pq.write_table(pa.table({"s2_id": pa.array([], pa.string()), "s2_path": pa.array([], pa.string()),
                                 "s2_time": pa.array([], pa.string())}), tmp / "pairs" / "pairs.parquet")
        files = sum(storage.size(h) for h in hrefs.values())
        b02 = hrefs["B02"].split("/", 3)[3]
        runs = {
            "windowed": (PairFolder(tmp / "pairs", s2_all=True, chip_size=args.chip),
                         ShardConfig(sensors=["s2_l1c"], crop="grid", chip_size=args.chip)),
            "whole scene": (PairFolder(tmp / "pairs", s2_all=True),
                            ShardConfig(sensors=["s2_l1c"], crop="random", chip_size=args.chip)),
        }
        for name, (folder, cfg) in runs.items():
            start, t0 = len(server.log), time.perf_counter()
            write_shards([folder[0]], tmp / name.replace(" ", "_"), cfg)
            seconds = time.perf_counter() - t0
            gets = [e for e in server.log[start:] if e["method"] == "GET"]
            moved = sum(e["bytes"] for e in gets)
            band = sum(e["bytes"] for e in gets if e["path"].endswith(b02))
            print(f"{name}: one {args.chip} px chip-shard of a {args.size} px 13-band scene: {seconds:.2f} s, "
                  f"{moved / 2**20:.2f} MiB fetched of {files / 2**20:.1f} MiB in {len(gets)} GETs; "
                  f"B02 ({args.size}^2 int16, {storage.size(hrefs['B02']) / 2**20:.2f} MiB): {band / 2**20:.3f} MiB")
    server.stop()


if __name__ == "__main__":
    main()
