"""WebDataset shards: exact round trip, determinism, crash safety, rank split, bad input."""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from s12mae.data import ArrayDataset
from s12mae.sensors import get_sensor
from s12mae.shards import (
    ShardConfig,
    ShardStream,
    read_manifest,
    read_samples,
    shard_loader,
    write_shard_set,
    write_shards,
)
from s12mae.simulate import SimulationConfig, simulate_scene, write_simulated

S2, S1 = get_sensor("s2_l1c"), get_sensor("s1_grd")
SIM = SimulationConfig(num_samples=12, img_size=64, seed=5)


def scenes(n: int = 6, size: int = 64) -> list[dict]:
    """Reader-format samples: S2 with 0-DN holes, S1 with NaN, masks that nodata does not imply."""
    cfg = dataclasses.replace(SIM, img_size=size)
    out = []
    for i in range(n):
        sc = simulate_scene(i, cfg)
        s2, s1 = sc["s2_l1c"].copy(), sc["s1_grd"].copy()
        s2[:, :3, :5] = 0
        s1[1, -2:, :] = np.nan
        valid2 = s2 != 0
        valid2[0, -1, -1] = False  # e.g. outside a warped footprint: only the stored mask knows
        out.append({
            "id": f"scene.{i}", "s2_l1c": s2, "valid.s2_l1c": valid2, "s1_grd": s1, "valid.s1_grd": np.isfinite(s1),
            "label.cloud": sc["cloud"], "label.landcover_hr": sc["landcover_hr"],
            "label.presence": sc["landcover_presence"],
            "meta": {"source": "test", "crs": "EPSG:32632", "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 5e6],
                     "times": {"s2_l1c": "2021-06-01T10:00:00Z", "s1_grd": "2021-06-03T17:00:00Z"},
                     "gap_hours": 55.0, "bands": {"s2_l1c": S2.band_names}},
        })
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


PAIR = ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=4)
GRID = ShardConfig(sensors=["s2_l1c", "s1_grd"], crop="grid", chip_size=32, chips_per_shard=3)


def test_round_trip_exact(tmp_path):
    data = scenes()
    manifest = write_shards(data, tmp_path / "a", PAIR)
    assert manifest["num_samples"] == 6 and [s["samples"] for s in manifest["shards"]] == [4, 2]
    got = list(read_samples(tmp_path / "a"))
    assert [g["index"] for g in got] == list(range(4)) + [4, 5]
    for src, g in zip(data, got):
        assert g["id"] == src["id"] and g["s2_l1c"].dtype == np.int16 and g["s1_grd"].dtype == np.float32
        for key in ("s2_l1c", "valid.s2_l1c", "valid.s1_grd", "label.cloud", "label.landcover_hr", "label.presence"):
            assert g[key].dtype == src[key].dtype and np.array_equal(g[key], src[key]), key
        np.testing.assert_array_equal(g["s1_grd"], src["s1_grd"])  # NaN compares equal here
        assert g["meta"] == src["meta"] and g["crop"] is None


def test_training_samples_match_array_dataset(tmp_path):
    data = scenes()
    write_shards(data, tmp_path, PAIR)
    arrays = {k: np.stack([d[k] for d in data]) for k in ("s2_l1c", "s1_grd")}
    ref = ArrayDataset(arrays, [S2, S1], nodata="mask")
    batches = iter(shard_loader(tmp_path, [S2, S1], 3, seed=0, shuffle_buffer=0, nodata="mask"))
    for _ in range(2):
        batch = next(batches)
        for row, index in enumerate(batch["index"].tolist()):
            want = ref[index]
            assert torch.equal(batch["s1_grd"][row], want["s1_grd"])
            assert torch.equal(batch["valid.s1_grd"][row], want["valid.s1_grd"])
            # the stored mask also knows the pixel that nodata alone does not mark
            stored = torch.from_numpy(data[index]["valid.s2_l1c"])
            assert torch.equal(batch["valid.s2_l1c"][row], want["valid.s2_l1c"] & stored)
            assert torch.equal(batch["s2_l1c"][row], torch.where(stored, want["s2_l1c"], 0.0))
    with pytest.raises(ValueError, match=r"shard-00000\d\.tar: sample 'scene\.\d'.*nodata.*s2_l1c"):
        next(iter(shard_loader(tmp_path, [S2, S1], 2, seed=0)))


def test_float16_s1_precision(tmp_path):
    data = scenes(2)
    write_shards(data, tmp_path, dataclasses.replace(PAIR, dtypes={"s1_grd": "float16"}))
    for src, got in zip(data, read_samples(tmp_path)):
        assert got["s1_grd"].dtype == np.float16
        np.testing.assert_array_equal(np.isnan(got["s1_grd"]), np.isnan(src["s1_grd"]))
        err = np.abs(got["s1_grd"].astype(np.float32) - src["s1_grd"])
        assert np.nanmax(err / np.abs(src["s1_grd"])) <= 2.0**-11  # half a float16 ulp
        assert np.nanmax(err) <= 2.0**-6  # every |dB| here is < 64


def test_deterministic_bytes(tmp_path):
    write_shards(scenes(), tmp_path / "a", GRID)
    write_shards(scenes(), tmp_path / "b", GRID)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and sorted(a) == [f"shard-{i:06d}.tar" for i in range(8)] + ["shards.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "a").iterdir()} == {0o666 & ~umask}  # as open()
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}
    assert write_shards(scenes(), tmp_path / "a", GRID) == read_manifest(tmp_path / "a")  # complete: no-op
    with pytest.raises(ValueError, match="another config"):
        write_shards(scenes(), tmp_path / "a", dataclasses.replace(GRID, chips_per_shard=5))


class Crashing(list):
    """Samples whose k-th load dies (a kill or a crash of the reader)."""

    def __init__(self, data: list, k: int) -> None:
        super().__init__(data)
        self.k = k

    def __getitem__(self, i):
        if i == self.k:
            raise RuntimeError("killed")
        return super().__getitem__(i)


@pytest.mark.parametrize("k", [2, 4])  # 4 scenes x 4 chips / 3 per shard: shards end mid-scene
def test_crash_leaves_only_complete_shards_and_rerun_completes(tmp_path, k):
    write_shards(scenes(), tmp_path / "full", GRID)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        write_shards(Crashing(scenes(), k), out, GRID)
    complete = (k * 4) // 3
    names = sorted(p.name for p in out.iterdir())  # the partial shard's temporary is gone too
    assert names == [f"shard-{i:06d}.tar" for i in range(complete)] + ["shards.progress.json"]
    full = files(tmp_path / "full")
    assert all(full[n] == (out / n).read_bytes() for n in names if n.endswith(".tar"))
    # a kill -9 mid-shard leaves its temporary (and older versions left shard-N.tar.tmp)
    (out / f".shard-{complete:06d}.tar.0f3a.tmp.tar").write_bytes(full[f"shard-{complete:06d}.tar"][:5000])
    (out / f"shard-{complete:06d}.tar.tmp").write_bytes(b"partial")
    stream = ShardStream(out, [S2, S1], seed=0, shuffle_buffer=0, nodata="mask")
    assert len(list(stream.iter_epoch(0))) == 3 * complete  # temporaries are not read
    write_shards(scenes(), out, GRID)
    assert files(out) == full  # and the rerun removed them


def test_rank_and_worker_split(tmp_path):
    data = scenes(6) * 4
    data = [{**d, "id": f"s{i}"} for i, d in enumerate(data)]
    cfg = dataclasses.replace(PAIR, chips_per_shard=2)
    write_shards(data, tmp_path, cfg)  # 24 samples in 12 shards
    for world, workers in [(3, 2), (2, 1), (5, 3)]:  # 12 >= 6, 12 >= 2; 12 < 15: sample-level split
        for epoch in (0, 1):
            seen = []
            for rank in range(world):
                stream = ShardStream(tmp_path, [S2], seed=7, rank=rank, world=world, shuffle_buffer=4,
                                     nodata="mask")
                for w in range(workers):
                    seen += [int(s["index"]) for s in stream.iter_epoch(epoch, w, workers)]
            assert sorted(seen) == list(range(24)), (world, workers, epoch)
    stream = ShardStream(tmp_path, [S2], seed=7, shuffle_buffer=4, nodata="mask")
    order = [[int(s["index"]) for s in stream.iter_epoch(e)] for e in (0, 1, 0)]
    assert order[0] == order[2] and order[0] != order[1]


def test_loader_is_endless_and_resumes_by_epoch(tmp_path):
    write_shards(scenes(), tmp_path, PAIR)
    loader = shard_loader(tmp_path, [S2], 4, seed=1, nodata="mask", shuffle_buffer=3)
    batches = iter(loader)
    first = torch.cat([next(batches)["index"] for _ in range(6)]).tolist()  # 24 = 4 epochs of 6
    assert [sorted(first[i:i + 6]) for i in range(0, 24, 6)] == [list(range(6))] * 4
    later = iter(shard_loader(tmp_path, [S2], 6, seed=1, nodata="mask", shuffle_buffer=3, epoch=2))
    assert next(later)["index"].tolist() == first[12:18]
    two = iter(shard_loader(tmp_path, [S2], 2, seed=1, nodata="mask", num_workers=2))
    assert sorted(torch.cat([next(two)["index"] for _ in range(3)]).tolist()) == list(range(6))


def test_grid_and_random_crops_deterministic(tmp_path):
    data = scenes(3)
    write_shards(data, tmp_path / "grid", dataclasses.replace(GRID, chips_per_shard=100))
    grid = list(read_samples(tmp_path / "grid"))
    assert [g["id"] for g in grid[:4]] == ["scene.0/0_0", "scene.0/0_32", "scene.0/32_0", "scene.0/32_32"]
    g = grid[3]
    assert g["s2_l1c"].shape == (13, 32, 32) and g["label.landcover_hr"].shape == (128, 128)
    np.testing.assert_array_equal(g["s2_l1c"], data[0]["s2_l1c"][:, 32:, 32:])
    np.testing.assert_array_equal(g["label.landcover_hr"], data[0]["label.landcover_hr"][128:, 128:])
    np.testing.assert_array_equal(g["label.presence"], data[0]["label.presence"])  # not spatial: kept
    assert g["meta"]["transform"] == [10.0, 0.0, 500320.0, 0.0, -10.0, 5e6 - 320.0]
    assert g["meta"]["bounds"] == [500320.0, 5e6 - 640.0, 500640.0, 5e6 - 320.0]
    assert g["meta"]["footprint_wgs84"] is not None

    def crops(name: str, seed: int) -> list[tuple]:
        cfg = ShardConfig(sensors=["s2_l1c"], crop="random", chip_size=32, crops_per_scene=3, seed=seed)
        write_shards(scenes(3), tmp_path / name, cfg)
        got = list(read_samples(tmp_path / name))
        for c in got:
            y, x = c["crop"]["y"], c["crop"]["x"]
            src = next(d for d in data if d["id"] == c["scene_id"])
            np.testing.assert_array_equal(c["s2_l1c"], src["s2_l1c"][:, y:y + 32, x:x + 32])
        return [(c["id"], c["crop"]["y"], c["crop"]["x"]) for c in got]

    assert crops("r1", 0) == crops("r2", 0) != crops("r3", 1)
    assert files(tmp_path / "r1") == files(tmp_path / "r2")
    # positions depend on (seed, scene id), not on the scene's position in the input
    cfg = ShardConfig(sensors=["s2_l1c"], crop="random", chip_size=32, crops_per_scene=3)
    write_shards(scenes(3)[::-1], tmp_path / "rev", cfg)
    assert sorted((c["id"]) for c in read_samples(tmp_path / "rev")) == sorted(c[0] for c in crops("r4", 0))


def test_pair_and_s2_only_sets(tmp_path):
    write_simulated(tmp_path / "sim", dataclasses.replace(SIM, s1_fraction=0.5))
    pair_cfg = ShardConfig(sensors=["s2_l1c", "s1_grd"])
    pairs = write_shard_set(str(tmp_path / "sim"), str(tmp_path / "pairs"), pair_cfg)
    s2 = write_shard_set(str(tmp_path / "sim"), str(tmp_path / "s2"), ShardConfig(sensors=["s2_l1c"]))
    assert s2["num_samples"] == 12 and 0 < pairs["num_samples"] < 12
    assert pairs["scenes"]["missing_sensor"] == 12 - pairs["num_samples"]
    assert all(np.isfinite(c["s1_grd"]).all() and c["meta"]["gap_hours"] == 0.0 for c in read_samples(tmp_path / "pairs"))
    assert set(read_manifest(tmp_path / "pairs")["sensors"]) == {"s2_l1c", "s1_grd"}
    batch = next(iter(shard_loader(tmp_path / "pairs", [S2, S1], 2, seed=0)))
    assert batch["s1_grd"].shape == (2, 2, 64, 64)
    with pytest.raises(ValueError, match="holds sensors"):
        shard_loader(tmp_path / "s2", [S2, S1], 2, seed=0)


def test_truncated_and_corrupt_shards(tmp_path):
    write_shards(scenes(), tmp_path, PAIR)
    shard = tmp_path / "shard-000000.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"shard-000000\.tar.*bytes, the manifest says"):
        list(read_samples(tmp_path))
    (tmp_path / "shards.json").unlink()  # without a manifest the tar reader must notice
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    marker = last.offset_data + -(-last.size // 512) * 512  # all data there, end-of-archive gone
    for cut in (len(good) // 2, len(good) // 2 + 100, marker):  # on and off block boundaries
        shard.write_bytes(good[:cut])
        with pytest.raises(ValueError, match=r"shard-000000\.tar: member 0000000000\d\d\.\S+: the tar file is corrupt"):
            list(read_samples(tmp_path))
    stream = ShardStream(tmp_path, [S2], seed=0, shuffle_buffer=0, nodata="mask", skip_bad=True)
    assert len(list(stream.iter_epoch(0))) < 6 and len(stream.skipped) == 1

    shard.write_bytes(good)
    assert len(list(read_samples(tmp_path))) == 6
    with tarfile.open(shard) as tar:  # rewrite with one member that is not an .npy
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = b"garbage" if m.name == "000000000001.s2_l1c.npy" else data
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))
    with pytest.raises(ValueError, match=r"shard-000000\.tar: member 000000000001\.s2_l1c\.npy: cannot be decoded"):
        list(ShardStream(tmp_path, [S2], seed=0, nodata="mask").iter_epoch(0))
    stream = ShardStream(tmp_path, [S2], seed=0, shuffle_buffer=0, nodata="mask", skip_bad=True)
    assert sorted(int(s["index"]) for s in stream.iter_epoch(0)) == [0, 2, 3, 4, 5]
    assert stream.skipped == [(str(shard), "000000000001.s2_l1c.npy", stream.skipped[0][2])]


def test_band_count_mismatch_names_sample_and_shard(tmp_path):
    write_shards(scenes(2), tmp_path, PAIR)
    twelve = dataclasses.replace(S2, bands=S2.bands[:12], stats={b.name: S2.stats[b.name] for b in S2.bands[:12]})
    with pytest.raises(ValueError, match="bands"):
        ShardStream(tmp_path, [twelve], seed=0)  # the manifest already disagrees
    (tmp_path / "shards.json").unlink()
    with pytest.raises(ValueError, match=r"shard-000000\.tar: sample 'scene\.\d' .*s2_l1c has shape \(13, 64, 64\)"):
        list(ShardStream(tmp_path, [twelve], seed=0, nodata="mask").iter_epoch(0))
    bad = scenes(1)
    bad[0]["s2_l1c"] = bad[0]["s2_l1c"][:12]
    with pytest.raises(ValueError, match=r"sample 0 \(sample 'scene\.0'\): s2_l1c has shape"):
        write_shards(bad, tmp_path / "w", PAIR)
    assert not list((tmp_path / "w").glob("*.tar"))
    manifest = write_shards(bad + scenes(2), tmp_path / "skip", PAIR, skip_bad=True)
    assert manifest["num_samples"] == 2 and manifest["scenes"]["skipped"][0][0] == 0


def test_webdataset_library_reads_shards(tmp_path):
    import webdataset as wds

    write_shards(scenes(2), tmp_path, PAIR)
    sample = next(iter(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False).decode()))
    assert sample["__key__"] == "000000000000" and sample["json"]["id"] == "scene.0"
    assert sample["s2_l1c.npy"].shape == (13, 64, 64)
