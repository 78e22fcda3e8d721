"""Object storage (s12mae.storage): URL handling, redaction, and a real S3 endpoint on localhost
(moto): atomic writes, shard sets written there and read back in training and statistics,
COG windowed reads that move only a window's bytes, and refused credentials."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from fixtures_servers import TEST_KEY_ID, TEST_SECRET

from s12mae import storage
from s12mae.sensors import get_sensor
from s12mae.storage import StorageError

pytest_plugins = ["fixtures_servers"]  # the s3 and stac_server fixtures

# -- names and redaction (no server) -----------------------------------------------------------


def test_is_url_protocol_and_join():
    assert storage.is_url("s3://bucket/key") and storage.is_url("https://host/a.tif")
    assert storage.is_url("file:///tmp/x")
    assert not storage.is_url("/data/x") and not storage.is_url("relative/x") and not storage.is_url(r"C:\data")
    assert storage.protocol("gcs://b/k") == "gs" and storage.protocol("/x") == "file"
    assert storage.join("s3://b/prefix/", "shard-000000.tar") == "s3://b/prefix/shard-000000.tar"
    assert storage.join("/tmp/a", "b", "c") == "/tmp/a/b/c"


def test_redact_strips_signatures_userinfo_and_credential_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    text = ("GET https://user:pw@bucket.s3.amazonaws.com/a/B04.tif?X-Amz-Signature=abcd&X-Amz-Credential=AKIA1 "
            "failed; header Credential=AKIA2/20260101/us-east-1 and the key s3cr3t-value-xyz")
    out = storage.redact(text)
    for secret in ("pw", "abcd", "AKIA1", "AKIA2", "s3cr3t-value-xyz", "user:"):
        assert secret not in out
    assert "https://bucket.s3.amazonaws.com/a/B04.tif?***" in out


def test_rasterio_path_and_env_for_a_local_endpoint(monkeypatch):
    rasterio = pytest.importorskip("rasterio")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert storage.rasterio_path("gcs://b/k.tif") == "gs://b/k.tif"
    assert storage.rasterio_path("file:///tmp/a.tif") == "/tmp/a.tif"
    with pytest.raises(StorageError, match="ftp://"):
        storage.rasterio_path("ftp://host/a.tif")
    with storage.rasterio_env("s3://b/k.tif"):
        opts = rasterio.env.getenv()
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert opts["AWS_HTTPS"] == "NO" and opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


def test_local_files_write_atomically(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    storage.write_bytes(target, b"abc")
    assert storage.read_bytes(target) == b"abc" and storage.size(target) == 3 and storage.exists(target)
    with pytest.raises(RuntimeError), storage.atomic_open(tmp_path / "sub" / "b.bin") as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.bin"]  # nothing partial, no temp
    assert storage.list_files(tmp_path / "sub", r".*\.bin") == [str(target)]
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(tmp_path / "missing.bin")
    with pytest.raises(StorageError, match="read-only"):
        storage.write_bytes("https://example.org/x", b"1")


def test_other_file_systems_write_a_temporary_and_move_it():
    """fsspec's in-memory file system stands for any non-object store (no atomic upload)."""
    base = "memory://s12mae-test-" + os.urandom(4).hex()
    storage.write_bytes(f"{base}/a.bin", b"abc")
    with pytest.raises(RuntimeError), storage.atomic_open(f"{base}/b.bin") as f:
        f.write(b"partial")
        raise RuntimeError("writer died")
    fs, path = storage.filesystem(base)
    assert [p.rsplit("/", 1)[1] for p in fs.ls(path, detail=False)] == ["a.bin"]  # no target, no temporary
    assert storage.read_bytes(f"{base}/a.bin") == b"abc"


# -- a real S3 endpoint --------------------------------------------------------------------------


def test_s3_round_trip_listing_and_exists(s3):
    storage.write_bytes(s3.url("p/a.json"), json.dumps({"x": 1}))
    storage.write_bytes(s3.url("p/b.tar"), b"\0" * 10)
    storage.write_bytes(s3.url("p/.b.tar.1234.tmp"), b"leftover")
    assert json.loads(storage.read_bytes(s3.url("p/a.json"))) == {"x": 1}
    assert storage.size(s3.url("p/b.tar")) == 10
    assert storage.exists(s3.url("p/a.json")) and not storage.exists(s3.url("p/zzz"))
    assert storage.list_files(s3.url("p"), r".*\.tar") == [s3.url("p/b.tar")]  # temps are never listed
    with storage.open_input(s3.url("p/b.tar")) as f:
        f.seek(5)
        assert f.read() == b"\0" * 5
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(s3.url("p/missing.json"))


def test_s3_interrupted_write_publishes_nothing(s3):
    """A streamed multipart upload that fails half-way is aborted: no object, no open upload."""
    key = "big/object.bin"
    with pytest.raises(RuntimeError), storage.atomic_open(s3.url(key), block_size=5 * 2**20) as f:
        f.write(os.urandom(6 * 2**20))  # > one part: the multipart upload has started
        raise RuntimeError("writer died")
    assert not storage.exists(s3.url(key))
    assert s3.client().list_multipart_uploads(Bucket=s3.name).get("Uploads", []) == []
    with storage.atomic_open(s3.url(key), block_size=5 * 2**20) as f:
        f.write(b"1" * (6 * 2**20))
    assert storage.size(s3.url(key)) == 6 * 2**20


def _shard_set(tmp_path):
    from s12mae.shards import ShardConfig, simulated_samples, write_shards
    from s12mae.simulate import SimulationConfig, write_simulated

    write_simulated(tmp_path / "sim", SimulationConfig(num_samples=6, img_size=32, seed=2))
    out = tmp_path / "local"
    write_shards(simulated_samples(tmp_path / "sim"), out, ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=2))
    return out


def test_shards_on_s3_read_back_in_training_and_statistics(s3, tmp_path):
    from s12mae.shards import ShardStream, read_samples
    from s12mae.stats import compute_stats_file

    local = _shard_set(tmp_path)
    written = storage.upload_folder(local, s3.url("shards"), last=["shards.json"])
    assert written[-1] == s3.url("shards/shards.json")  # the manifest marks a complete set
    assert len(storage.list_files(s3.url("shards"), r"shard-\d{6}\.tar")) == 3

    staged = storage.stage(s3.url("shards"), tmp_path / "cache")
    before = len(s3.server.log)
    assert storage.stage(s3.url("shards"), tmp_path / "cache") == staged  # up to date: nothing moves
    assert not [e for e in s3.server.log[before:] if e["method"] == "GET" and e["path"].endswith((".tar", ".json"))]

    for a, b in zip(read_samples(local), read_samples(staged), strict=True):
        assert a["id"] == b["id"] and np.array_equal(a["s2_l1c"], b["s2_l1c"])
        assert np.array_equal(a["s1_grd"], b["s1_grd"], equal_nan=True)
    sensors = [get_sensor("s2_l1c"), get_sensor("s1_grd")]
    ref = list(ShardStream(local, sensors, seed=0, nodata="mask").iter_epoch(0))
    got = list(ShardStream(staged, sensors, seed=0, nodata="mask").iter_epoch(0))
    assert [int(s["index"]) for s in ref] == [int(s["index"]) for s in got]
    assert all(torch.equal(a["s2_l1c"], b["s2_l1c"]) for a, b in zip(ref, got, strict=True))
    stats_local = compute_stats_file(local, tmp_path / "a.json", sensors=["s2_l1c"])
    stats_s3 = compute_stats_file(staged, tmp_path / "b.json", sensors=["s2_l1c"])
    assert stats_local["s2_l1c"]["bands"] == stats_s3["s2_l1c"]["bands"]


def test_stage_downloads_only_what_changed(s3, tmp_path):
    storage.write_bytes(s3.url("set/shard-000000.tar"), b"a" * 50_000)
    storage.write_bytes(s3.url("set/shard-000001.tar"), b"b" * 50_000)
    storage.stage(s3.url("set"), tmp_path / "c")
    before = len(s3.server.log)
    storage.write_bytes(s3.url("set/shard-000001.tar"), b"c" * 50_000)  # same size, new content
    storage.stage(s3.url("set"), tmp_path / "c")
    fetched = [e["path"] for e in s3.server.log[before:] if e["method"] == "GET" and e["bytes"] >= 50_000]
    assert fetched == [f"/{s3.name}/set/shard-000001.tar"]
    assert (tmp_path / "c" / "shard-000001.tar").read_bytes() == b"c" * 50_000


def _cog(path, size=2048):
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(1, 10_000, (1, size, size)).astype("int16")
    with rasterio.open(path, "w", driver="COG", width=size, height=size, count=1, dtype="int16",
                       crs="EPSG:32632", transform=from_origin(600_000, 5_000_000, 10, 10),
                       blocksize=256, compress="deflate") as ds:
        ds.write(data)
    return data


def test_cog_windowed_read_moves_only_the_window(s3, tmp_path):
    pytest.importorskip("rasterio")
    from rasterio.windows import Window

    data = _cog(tmp_path / "B04.tif")
    url = s3.url("tiles/B04.tif")
    storage.upload_folder(tmp_path, s3.url("tiles"))
    whole = storage.size(url)
    start = len(s3.server.log)
    with storage.open_raster(url) as ds:
        chip = ds.read(1, window=Window(1024, 512, 128, 128))
    assert np.array_equal(chip, data[0, 512:640, 1024:1152])
    reads = [e for e in s3.server.log[start:] if e["path"] == f"/{s3.name}/tiles/B04.tif" and e["method"] == "GET"]
    assert reads and all(e["range"] for e in reads)  # byte-range requests only
    moved = sum(e["bytes"] for e in reads)
    assert moved < whole / 10, f"read {moved} of {whole} bytes for a 128 x 128 window"


def test_refused_credentials_give_a_clear_error_without_secrets(s3, tmp_path, monkeypatch):
    """Unknown key, wrong secret, and a valid key without permission: one clear error, no secret."""
    import boto3
    import fsspec

    pytest.importorskip("rasterio")
    storage.write_bytes(s3.url("secret/a.bin"), b"x" * 100)
    _cog(tmp_path / "c.tif", size=256)
    storage.upload_folder(tmp_path, s3.url("cog"))
    iam = boto3.client("iam", endpoint_url=s3.server.endpoint, region_name="us-east-1")
    user = f"reader-{s3.name}"
    iam.create_user(UserName=user)  # no policy: valid credentials that may not read anything
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3.server.enforce_auth(True)
    cases = {"unknown key": ("AKIAUNKNOWNKEY000001", TEST_SECRET),
             "wrong secret": (key["AccessKeyId"], "wrong-secret-Yq9/never-printed"),
             "no permission": (key["AccessKeyId"], key["SecretAccessKey"])}
    for label, (key_id, secret) in cases.items():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        fsspec.AbstractFileSystem.clear_instance_cache()
        with pytest.raises(StorageError) as err:
            storage.read_bytes(s3.url("secret/a.bin"))
        msg = str(err.value)
        assert "access denied" in msg and s3.url("secret/a.bin") in msg, (label, msg)
        assert secret not in msg and key_id not in msg, (label, msg)
        with pytest.raises(StorageError) as err, storage.open_raster(s3.url("cog/c.tif")) as ds:
            ds.read(1)
        msg = str(err.value)
        assert "access denied" in msg and secret not in msg and key_id not in msg, (label, msg)


def test_unreachable_endpoint_is_named(tmp_path, monkeypatch):
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 's12mae[s3]')")
    import fsspec

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        with pytest.raises(StorageError, match="unreachable") as err:
            storage.read_bytes("s3://bucket/key.bin")
        assert "s3://bucket/key.bin" in str(err.value) and TEST_SECRET not in str(err.value)
    finally:
        fsspec.AbstractFileSystem.clear_instance_cache()
