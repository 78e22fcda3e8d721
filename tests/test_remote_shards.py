"""Shard sets on object storage (a local S3 endpoint): read back, statistics, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from s12mae import storage
from s12mae.cli import main
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, ShardStream, is_shard_set, read_manifest, read_samples, write_shard_set
from s12mae.simulate import SimulationConfig, write_simulated

pytest_plugins = ["fixtures_servers"]  # the s3 fixture
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def remote_set(tmp_path, s3):
    """A 32 px S2 shard set written locally and uploaded (manifest last): (local folder, URL)."""
    write_simulated(tmp_path / "sim", SimulationConfig(num_samples=10, img_size=32, seed=2))
    write_shard_set(str(tmp_path / "sim"), str(tmp_path / "set"), ShardConfig(sensors=["s2_l1c", "s1_grd"],
                                                                             chips_per_shard=3))
    storage.upload_folder(tmp_path / "set", s3.url("runs/set"), last=["shards.json"])
    return tmp_path / "set", s3.url("runs/set")


def test_read_samples_and_stream_from_s3_equal_local(remote_set, s3):
    local, url = remote_set
    assert is_shard_set(url) and not is_shard_set(s3.url("runs/none"))
    assert read_manifest(url) == read_manifest(local)
    here, there = list(read_samples(local)), list(read_samples(url + "/"))
    assert [s["id"] for s in here] == [s["id"] for s in there] and len(there) == 10
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a["s2_l1c"], b["s2_l1c"])
        np.testing.assert_array_equal(a["valid.s1_grd"], b["valid.s1_grd"])
    one = list(read_samples(url + "/shard-000001.tar"))
    assert [s["index"] for s in one] == [3, 4, 5]
    specs = [get_sensor("s2_l1c")]
    a = list(ShardStream(local, specs, seed=1, shuffle_buffer=4).iter_epoch(0))
    b = list(ShardStream(url, specs, seed=1, shuffle_buffer=4).iter_epoch(0))
    assert [int(x["index"]) for x in a] == [int(x["index"]) for x in b]
    assert all(np.array_equal(x["s2_l1c"], y["s2_l1c"]) for x, y in zip(a, b))


def test_stats_of_a_remote_set_equal_local(remote_set, tmp_path):
    local, url = remote_set
    assert main(["stats", "--data", str(local), "--out", str(tmp_path / "a.json")]) == 0
    assert main(["stats", "--data", url, "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    for key in a:
        assert a[key]["bands"] == b[key]["bands"]


def test_a_damaged_remote_shard_is_named(remote_set, s3):
    _, url = remote_set
    s3.client().put_object(Bucket=s3.name, Key="runs/set/shard-000001.tar", Body=b"x" * 512)
    with pytest.raises(ValueError, match=r"shard-000001\.tar.*manifest says"):
        list(read_samples(url))


def test_pretraining_reads_shards_from_s3(remote_set, tiny):
    from s12mae.train.loop import pretrain

    _, url = remote_set
    cfg = tiny(steps=2, checkpoint_every=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=url, shuffle_buffer=4))
    result = pretrain(cfg)
    assert len(result.history) == 2 and all(np.isfinite(r["loss"]) for r in result.history)
