"""Shards and statistics on a Dask cluster: the same bytes as one process, resumable, CLI."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="Dask is not installed (pip install 's12mae[dask]')")

from test_shards import GRID as GRID_CFG
from test_shards import files, scenes

from s12mae.cli import main
from s12mae.shards import ShardConfig, read_manifest, write_shards
from s12mae.shards.parallel import _spans, write_shards_distributed
from s12mae.shards.write import PLAN
from s12mae.simulate import SimulationConfig, write_simulated

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client():
    """Two workers of one thread each, in this process (fast to start; same code path as processes)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


class Flaky(list):
    """Scenes of which some are bad (a ValueError when loaded) and one lacks S1."""

    def __getitem__(self, i):
        if i in (1, 4):
            raise ValueError(f"scene {i} is unreadable")
        sample = dict(super().__getitem__(i))
        if i == 3:
            sample.pop("s1_grd")
        return sample


def test_spans_number_chips_globally():
    # scenes with 3, 0, 5, 1 chips, 4 per shard: chips 0-2 | 3-7 | 8
    assert _spans([3, 0, 5, 1], 4) == [[(0, 0, 3), (2, 0, 1)], [(2, 1, 5)], [(3, 0, 1)]]
    assert _spans([0, 0], 4) == []


@pytest.mark.parametrize("cfg", [
    GRID_CFG,  # shards end mid-scene
    ShardConfig(sensors=["s2_l1c", "s1_grd"], crop="random", chip_size=32, crops_per_scene=3, chips_per_shard=4,
                min_valid=0.9, seed=7),
])
def test_two_workers_write_the_same_bytes_as_one_process(tmp_path, client, cfg):
    data = Flaky(scenes(7))
    one = write_shards(data, tmp_path / "one", cfg, skip_bad=True)
    two = write_shards_distributed(data, tmp_path / "two", cfg, client, skip_bad=True, progress=False)
    assert one == two and one["scenes"]["skipped"] and one["scenes"]["missing_sensor"] == 1
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_killed_client_rerun_keeps_finished_shards_and_redoes_the_rest(tmp_path, client):
    write_shards(scenes(4), tmp_path / "one", GRID_CFG)
    out = tmp_path / "run"
    write_shards_distributed(scenes(4), out, GRID_CFG, client, progress=False)
    # the state a killed client leaves: the plan, some shards, a worker's temporary, no manifest
    plan = {"config": GRID_CFG.to_dict(), "input_samples": 4, "chips": [4, 4, 4, 4],
            "counters": read_manifest(out)["scenes"]}
    (out / "shards.json").unlink()
    (out / PLAN).write_text(__import__("json").dumps(plan))
    (out / "shard-000002.tar").unlink()
    kept = (out / "shard-000001.tar").stat().st_mtime_ns
    (out / ".shard-000002.tar.0f3a.tmp.tar").write_bytes(b"partial")
    write_shards_distributed(scenes(4), out, GRID_CFG, client, progress=False)
    assert files(out) == files(tmp_path / "one")
    assert (out / "shard-000001.tar").stat().st_mtime_ns == kept  # finished shards are not rewritten


def test_resumes_a_one_process_run_and_refuses_another_config(tmp_path, client):
    class Crashing(list):
        def __getitem__(self, i):
            if i == 2:
                raise RuntimeError("killed")
            return super().__getitem__(i)

    write_shards(scenes(4), tmp_path / "one", GRID_CFG)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        write_shards(Crashing(scenes(4)), out, GRID_CFG)
    write_shards_distributed(scenes(4), out, GRID_CFG, client, progress=False)
    assert files(out) == files(tmp_path / "one")
    with pytest.raises(ValueError, match="another config"):
        write_shards_distributed(scenes(4), out, dataclasses.replace(GRID_CFG, chips_per_shard=5), client,
                                 progress=False)


def test_no_chip_is_an_error_and_leaves_no_plan(tmp_path, client):
    with pytest.raises(ValueError, match="no chip was written"):
        write_shards_distributed(scenes(2, size=16), tmp_path, GRID_CFG, client, progress=False)
    assert not (tmp_path / PLAN).exists()


def test_cli_cluster_address_matches_in_process_run(tmp_path, client, capsys):
    write_simulated(tmp_path / "sim", SimulationConfig(num_samples=6, img_size=32, seed=1))
    common = ["--shards.sensors", "[s2_l1c, s1_grd]", "--shards.chips_per_shard", "4",
              "--shards.crop", "grid", "--shards.chip_size", "16"]
    assert main(["shards", "--data", str(tmp_path / "sim"), "--out", str(tmp_path / "a"), *common]) == 0
    address = client.scheduler.address
    assert main(["shards", "--data", str(tmp_path / "sim"), "--out", str(tmp_path / "b"), *common,
                 "--cluster", address, "--progress", "false"]) == 0
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert "wrote 24 chips in 6 shard(s)" in capsys.readouterr().out
    assert main(["shards", "--data", str(tmp_path / "sim"), "--out", str(tmp_path / "c"), "--cluster", "lokal:2"]) == 2
    assert "local:N" in capsys.readouterr().err


def test_cli_stats_on_the_cluster_match_in_process(tmp_path, client):
    write_simulated(tmp_path / "sim", SimulationConfig(num_samples=6, img_size=32, seed=1))
    write_shards_distributed(scenes(5), tmp_path / "set", ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=2),
                             client, progress=False)
    import json

    for data in (tmp_path / "sim", tmp_path / "set"):
        assert main(["stats", "--data", str(data), "--out", str(tmp_path / "local.json")]) == 0
        assert main(["stats", "--data", str(data), "--out", str(tmp_path / "dask.json"),
                     "--cluster", client.scheduler.address]) == 0
        local = json.loads((tmp_path / "local.json").read_text())
        dask = json.loads((tmp_path / "dask.json").read_text())
        for key, entry in local.items():
            for band, v in entry["bands"].items():
                w = dask[key]["bands"][band]
                assert w["count"] == v["count"]
                np.testing.assert_allclose([w["mean"], w["std"]], [v["mean"], v["std"]], rtol=1e-9)
                np.testing.assert_allclose([w["p1"], w["p50"], w["p99"]], [v["p1"], v["p50"], v["p99"]],
                                           rtol=0.05, atol=0.05)


@pytest.mark.skipif(os.environ.get("S12MAE_SLOW_TESTS") != "1",
                    reason="starts and restarts worker processes (70 s on 2 busy cores); S12MAE_SLOW_TESTS=1 runs it")
def test_a_killed_worker_is_survived(tmp_path):
    """A worker process that dies mid-task (os._exit) is replaced; the set is still byte-identical."""
    write_shards(scenes(4), tmp_path / "one", GRID_CFG)
    data = DiesOnce(scenes(4), str(tmp_path / "died"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        write_shards_distributed(data, tmp_path / "two", GRID_CFG, c, progress=False)
    assert Path(tmp_path / "died").exists()
    assert files(tmp_path / "two") == files(tmp_path / "one")


class DiesOnce(list):
    """Kills its worker process the first time scene 2 is read."""

    def __init__(self, items, marker: str) -> None:
        super().__init__(items)
        self.marker = marker

    def __getitem__(self, i):
        if i == 2 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().__getitem__(i)
