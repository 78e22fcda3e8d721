"""Fault injection: what a run and a shard stream promise when things break (README "Guarantees").

* kill -9 in the middle of a checkpoint write: the previous checkpoint is intact, the next start
  removes the half-written folder, and the resumed run repeats the uninterrupted losses;
* a shard truncated mid-stream: an error naming the shard, or (``skip_bad``) the shard skipped,
  recorded, and the stream going on;
* a data-loader worker killed: the run stops with an error instead of hanging, and leaves no run
  folder when it had no checkpoint yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, ShardStream, write_shards
from s12mae.simulate import SimulationConfig, simulate_scene
from s12mae.train.loop import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"

_KILLED_DURING_SECOND_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, {src!r}); sys.path.insert(0, {tests!r})
import torch
import s12mae.train.checkpoint as ck
from conftest import tiny_config
from s12mae.train.loop import pretrain
torch.set_num_threads(1)  # as the test process (after conftest sets its default): bit-identical sums

real, calls = ck.save_file, []
def save_then_die(weights, path):
    real(weights, path)
    calls.append(path)
    if len(calls) == 2:  # the weights of checkpoint 2 are in its temporary folder; state.pt is not
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = save_then_die
pretrain(tiny_config({out!r}, steps=4, checkpoint_every=2))
"""


def test_kill_during_a_checkpoint_write_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path):
    run = tmp_path / "killed"
    script = _KILLED_DURING_SECOND_CHECKPOINT.format(src=str(SRC), tests=str(Path(__file__).parent), out=str(run))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    temps = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint-00000004")]
    assert temps and (run / "latest").read_text().strip() == "checkpoint-00000002"

    resumed = pretrain(tiny_config(str(run), steps=4, checkpoint_every=2), resume=True)
    full = pretrain(tiny_config(str(tmp_path / "full"), steps=4, checkpoint_every=2))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # the half checkpoint is gone
    assert (run / "latest").read_text().strip() == "checkpoint-00000004"


def _shard_set(out: Path) -> Path:
    samples = []
    for i in range(6):
        sc = simulate_scene(i, SimulationConfig(num_samples=6, img_size=16))
        samples.append({"id": str(i), "s2_l1c": sc["s2_l1c"], "valid.s2_l1c": np.ones(sc["s2_l1c"].shape, bool)})
    write_shards(samples, out, ShardConfig(chips_per_shard=3))
    return out


def _truncate(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # cut inside the second sample's arrays


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_truncated_shard_is_an_error_or_skipped_under_skip_bad(tmp_path, with_manifest):
    out = _shard_set(tmp_path / "set")
    _truncate(out / "shard-000001.tar")
    if not with_manifest:  # a set whose writer crashed: no sizes to check, the cut is met mid-stream
        (out / "shards.json").unlink()
    spec = [get_sensor("s2_l1c")]
    with pytest.raises(ValueError, match=r"shard-000001\.tar: member .*(truncated|corrupt)"):
        list(ShardStream(out, spec, seed=0, shuffle_buffer=1).iter_epoch(0))
    stream = ShardStream(out, spec, seed=0, shuffle_buffer=1, skip_bad=True)
    got = sorted(int(s["index"]) for s in stream.iter_epoch(0))
    assert set(got) >= {0, 1, 2} and not set(got) & {4, 5}  # the intact shard whole, nothing after the cut
    assert len(stream.skipped) == 1 and stream.skipped[0][0].endswith("shard-000001.tar")


def test_a_killed_data_worker_stops_the_run_with_an_error_and_leaves_no_run_folder(tmp_path, monkeypatch):
    if torch.multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        pytest.skip("the injected fault reaches the workers only when they are forked")
    from s12mae.data import ArrayDataset

    real = ArrayDataset.__getitem__

    def die_in_a_worker(self, position):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, position)

    monkeypatch.setattr(ArrayDataset, "__getitem__", die_in_a_worker)
    cfg = tiny_config(str(tmp_path / "r"), steps=2)
    cfg.data.num_workers = 1
    with pytest.raises(RuntimeError, match=r"DataLoader worker .*(killed|exited unexpectedly)"):
        pretrain(cfg)
    assert not (tmp_path / "r").exists()
