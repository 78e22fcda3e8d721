"""The data path and the GPU path, as far as a CPU can test them: stored values standardised per
batch on the device, compiled blocks, activation checkpointing, FSDP2 on 2 gloo ranks with
sharded (DCP) checkpoints that resume exactly, and the per-step metrics."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import _free_port, tiny_config
from torch.utils.data import default_collate

from s12mae.data import ArrayDataset, model_batch, to_device
from s12mae.sensors import get_sensor
from s12mae.shards import ShardConfig, shard_loader, simulated_samples, write_shards
from s12mae.simulate import SimulationConfig, simulate, write_simulated
from s12mae.train import parallel
from s12mae.train.loop import pretrain

S2, S1 = get_sensor("s2_l1c"), get_sensor("s1_grd")


def test_stored_batches_standardised_on_the_device_equal_per_sample_inputs(tmp_path, one_thread):
    arrays = simulate(SimulationConfig(num_samples=6, img_size=16, seed=1))
    arrays["s2_l1c"][4, 1, 2, 3] = 0  # S2 nodata
    stored = ArrayDataset(arrays, [S2, S1], "mask", standardise=False)
    per_sample = ArrayDataset(arrays, [S2, S1], "mask")
    raw = default_collate([stored[i] for i in range(6)])
    assert raw["s2_l1c"].dtype == torch.int16 and "valid.s2_l1c" not in raw
    batch = model_batch(to_device(raw, torch.device("cpu")), [S2, S1], "mask", "sim")
    want = default_collate([per_sample[i] for i in range(6)])
    for key in ("s2_l1c", "s1_grd", "valid.s2_l1c", "valid.s1_grd"):
        assert torch.equal(batch[key], want[key]), key
    assert not bool(batch["valid.s2_l1c"][4, 1, 2, 3])
    with pytest.raises(ValueError, match=r"sim: sample\(s\) \[4\] have 1 nodata.* in s2_l1c"):
        model_batch(raw, [S2, S1], "error", "sim")


def test_shards_serve_their_stored_dtypes_and_masks(tmp_path, one_thread):
    data = write_simulated(tmp_path / "data", SimulationConfig(num_samples=4, img_size=16, seed=2))
    cfg = ShardConfig(sensors=["s2_l1c", "s1_grd"], chips_per_shard=4, dtypes={"s1_grd": "float16"})
    write_shards(simulated_samples(data), tmp_path / "sh", cfg)
    raw = next(iter(shard_loader(tmp_path / "sh", [S2, S1], 4, seed=0, shuffle_buffer=0, standardise=False)))
    assert raw["s2_l1c"].dtype == torch.int16 and raw["s1_grd"].dtype == torch.float16
    assert raw["valid.s2_l1c"].dtype == torch.bool and raw["valid.s1_grd"].shape == raw["s1_grd"].shape
    ref = next(iter(shard_loader(tmp_path / "sh", [S2, S1], 4, seed=0, shuffle_buffer=0, nodata="mask")))
    got = model_batch(raw, [S2, S1], "mask", "sh")
    for key in ("s2_l1c", "s1_grd", "valid.s2_l1c", "valid.s1_grd", "index"):
        assert torch.equal(got[key], ref[key]), key


def test_metrics_hold_the_wait_for_data_and_peak_memory(tmp_path):
    run = pretrain(tiny_config(str(tmp_path / "r"), steps=2))
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for rec in [*run.history, *lines]:
        assert rec["data_wait_s"] >= 0 and rec["data_wait_s"] <= rec["seconds"]
        assert rec["peak_mem_kind"] == "cpu_peak_rss" and rec["peak_mem_mb"] > 10


def test_compile_is_opt_in_on_cpu_and_trains_the_same(tmp_path, monkeypatch):
    assert not parallel.wants_compile("auto", torch.device("cpu"))
    assert parallel.wants_compile("auto", torch.device("cuda")) and parallel.wants_compile(True, torch.device("cpu"))
    eager = pretrain(tiny_config(str(tmp_path / "eager"), steps=2)).history
    # aot_eager traces the blocks as inductor does but skips code generation (minutes on 2 cores)
    monkeypatch.setattr(parallel, "compile_blocks", partial(parallel.compile_blocks, backend="aot_eager"))
    compiled = pretrain(tiny_config(str(tmp_path / "compiled"), steps=2, compile=True))
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in compiled.model.encoder.blocks)
    np.testing.assert_allclose([r["loss"] for r in compiled.history], [r["loss"] for r in eager], rtol=1e-5)


def test_grad_checkpointing_trains_the_same_or_is_a_clear_error(tmp_path):
    cfg = tiny_config(str(tmp_path / "ck"), steps=2, grad_checkpointing=True)
    if not hasattr(pretrain(tiny_config(str(tmp_path / "probe"), steps=1)).model.encoder, "set_grad_checkpointing"):
        with pytest.raises(ValueError, match="train.grad_checkpointing: the encoder .* has no set_grad_checkpointing"):
            pretrain(cfg)
        return
    plain = pretrain(tiny_config(str(tmp_path / "plain"), steps=2)).history
    ck = pretrain(cfg)
    assert ck.model.encoder.grad_checkpointing
    np.testing.assert_allclose([r["loss"] for r in ck.history], [r["loss"] for r in plain], rtol=1e-6)


def _fsdp_config(out_dir: str, steps: int):
    cfg = tiny_config(out_dir, steps=steps, checkpoint_every=2, parallel="fsdp")
    cfg.method = "auxmae"  # two tasks: under AGD the idle decoder must stay untouched
    cfg.schedule.sequence = ["mae", "aux", "aux"]
    cfg.data.simulated = SimulationConfig(num_samples=24, img_size=32, seed=3, s1_fraction=1.0)
    return cfg


def _fsdp_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    whole = pretrain(_fsdp_config(f"{root}/whole", 4))
    pretrain(_fsdp_config(f"{root}/cut", 2))
    resumed = pretrain(_fsdp_config(f"{root}/cut", 4), resume=True)
    with open(f"{root}/losses.{rank}", "w") as f:
        json.dump({"whole": [r["loss"] for r in whole.history], "resumed": [r["loss"] for r in resumed.history],
                   "sharded": type(whole.model).__name__ if rank else None}, f)
    torch.distributed.destroy_process_group()


def test_fsdp_on_two_gloo_ranks_matches_one_process_and_resumes_exactly(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"losses.{r}").read_text()) for r in range(2)]
    assert got[1]["sharded"].startswith("FSDP")  # fully_shard swaps in an FSDP subclass
    one = pretrain(_fsdp_config(str(tmp_path / "one"), 4)).history  # world 1: plain, no FSDP
    for rank in got:
        np.testing.assert_allclose(rank["whole"], [r["loss"] for r in one], rtol=1e-5)
    assert got[0]["resumed"] == got[0]["whole"]  # rank 0 keeps the whole history; exact after resume
    np.testing.assert_allclose(got[1]["resumed"], got[1]["whole"][2:], rtol=0)
    ckpt = tmp_path / "cut" / "checkpoint-00000004"
    assert (ckpt / "dcp" / ".metadata").is_file() and (ckpt / "state.pt").is_file()
    assert not list((tmp_path / "cut").glob(".*tmp*"))
    assert (tmp_path / "whole" / "encoder.safetensors").stat().st_size > 0
