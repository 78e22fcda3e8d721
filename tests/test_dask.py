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
from s12mae.shards import ShardConfig, parallel, write_shards
from s12mae.shards.format import PROGRESS
from s12mae.shards.parallel import _Numbering, write_shards_distributed
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


class CountsReads(list):
    """Scenes that log every read to a file (the workers hold copies of the list, not this one)."""

    def __init__(self, items, log: Path, fail_at: int | None = None) -> None:
        super().__init__(items)
        self.log, self.fail_at = str(log), fail_at

    def __getitem__(self, i):
        with open(self.log, "a") as f:
            f.write(f"{i}\n")
        if i == self.fail_at:
            raise RuntimeError("killed")  # not a bad sample: stops the run
        return super().__getitem__(i)

    def reads(self) -> list[int]:
        return sorted(int(line) for line in Path(self.log).read_text().split()) if Path(self.log).exists() else []


def test_numbering_puts_chips_in_shards_globally():
    # scenes with 3, 0, 5, 1 chips, 4 per shard: chips 0-2 | 3-7 | 8
    n = _Numbering(4)
    assert n.add("a", 0, 0, 3) == [] and n.add("a", 1, 1, 0) == []
    assert n.add("b", 0, 2, 5) == [(0, [("a", 0, 0, 0, 3), ("b", 0, 2, 0, 1)]), (1, [("b", 0, 2, 1, 5)])]
    assert n.add("b", 1, 3, 1) == [] and n.flush() == [(2, [("b", 1, 3, 0, 1)])] and n.flush() == []
    # a rerun after 1 complete shard that ended with chip 0 of scene 2
    n = _Numbering(4, shard=1, resume=(2, 0))
    assert n.add("c", 0, 2, 5) == [(1, [("c", 0, 2, 1, 5)])] and n.flush() == []


def test_held_chips_keep_no_more_than_their_pixels():
    from s12mae.shards.write import _fresh_counters, _scene_at

    def held(cfg):
        chips = parallel._compact(_scene_at(scenes(1, size=64), 0, cfg, _fresh_counters(), False))
        owners = {id(v.base if v.base is not None else v): (v.base if v.base is not None else v).nbytes
                  for chip in chips for v in chip.values() if isinstance(v, np.ndarray)}
        pixels = sum(v.nbytes for chip in chips for v in chip.values() if isinstance(v, np.ndarray))
        return sum(owners.values()), pixels, chips[0]["s2_l1c"].base is not None

    kept, pixels, view = held(ShardConfig(sensors=["s2_l1c", "s1_grd"], crop="random", chip_size=16, crops_per_scene=2))
    assert kept <= pixels and not view  # two 16 px crops of a 64 px scene (8x their bytes): copies
    kept, pixels, view = held(GRID_CFG)  # a grid covers the scene: copying would save nothing
    assert kept <= 2 * pixels and view


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


def test_every_scene_is_read_once(tmp_path, client):
    write_shards(scenes(7), tmp_path / "one", GRID_CFG)
    data = CountsReads(scenes(7), tmp_path / "reads.log")
    write_shards_distributed(data, tmp_path / "two", GRID_CFG, client, progress=False)
    assert data.reads() == list(range(7))  # the plan + write design read each scene 2-3 times
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_killed_client_rerun_keeps_finished_shards_and_reads_from_the_gap(tmp_path, client):
    class Crashing(list):
        def __getitem__(self, i):
            if i == 2:
                raise RuntimeError("killed")
            return super().__getitem__(i)

    write_shards(scenes(4), tmp_path / "one", GRID_CFG)  # 6 shards of 3 chips from 4 scenes of 4 chips
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):  # the record a killed client leaves: shards 0-1, scene 1 from chip 2 on
        write_shards(Crashing(scenes(4)), out, GRID_CFG)
    (out / "shard-000004.tar").write_bytes((tmp_path / "one" / "shard-000004.tar").read_bytes())  # beyond the gap
    (out / ".shard-000002.tar.0f3a.tmp.tar").write_bytes(b"partial")
    kept = {k: (out / f"shard-00000{k}.tar").stat().st_mtime_ns for k in (0, 1, 4)}
    data = CountsReads(scenes(4), tmp_path / "reads.log")
    write_shards_distributed(data, out, GRID_CFG, client, progress=False)
    assert files(out) == files(tmp_path / "one")
    assert data.reads() == [1, 2, 3]  # scene 0 is in the complete shards; the others read once
    assert {k: (out / f"shard-00000{k}.tar").stat().st_mtime_ns for k in kept} == kept  # not rewritten


def _wait_idle(client, timeout_s: float = 30.0) -> None:
    """Cancelled tasks that were running finish on their own: let them before the folder is compared."""
    import time

    end = time.monotonic() + timeout_s
    while any(client.processing().values()) and time.monotonic() < end:
        time.sleep(0.05)


def test_a_failed_run_resumes_in_either_writer(tmp_path, client, monkeypatch):
    monkeypatch.setattr(parallel, "PROGRESS_EVERY_S", 0.0)  # record every shard
    cfg = dataclasses.replace(GRID_CFG, chips_per_shard=2)
    write_shards(scenes(8), tmp_path / "one", cfg)
    for k, rerun in enumerate((write_shards, write_shards_distributed)):
        out = tmp_path / f"run{k}"
        with pytest.raises(RuntimeError, match="killed"):
            write_shards_distributed(CountsReads(scenes(8), tmp_path / f"{k}.log", fail_at=6), out, cfg, client,
                                     progress=False)
        _wait_idle(client)
        assert (out / PROGRESS).exists() and not (out / "shards.json").exists()
        args = (client,) if rerun is write_shards_distributed else ()
        rerun(scenes(8), out, cfg, *args)
        assert files(out) == files(tmp_path / "one")


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
    assert not (tmp_path / PLAN).exists() and not (tmp_path / PROGRESS).exists()


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


def test_local_workers_keep_freed_memory_for_reuse(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ (page faults on every scene-sized array) is not passed on."""
    from s12mae.distributed import open_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # an earlier cluster in this process may set it
    with open_client("local:1") as c:
        env = c.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert list(env.values()) == [(None, "1")]  # Dask's other settings stay


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


def test_a_worker_whose_listing_differs_from_the_clients_refuses_to_read():
    """Positions index the client's listing: a worker that lists another number of samples (a row
    skipped there only) would cut other scenes into the same shard numbers."""
    data = scenes(4)
    batch = parallel._read_task(data, "same", 0, 2, GRID_CFG, False, 4)
    assert len(batch) == 2
    with pytest.raises(ValueError, match=r"lists 4 sample\(s\) on this worker and 5 on the client"):
        parallel._read_task(data, "differs", 0, 2, GRID_CFG, False, 5)
