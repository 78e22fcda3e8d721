"""Shared fixtures: tiny configs that train in a second on CPU."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from s12mae.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from s12mae.simulate import SimulationConfig

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""Real samples beside the checkout (``../shared/data``); never copied into the repository."""


def shared(folder: str) -> Path:
    """A folder of the shared real samples, or skip (they live outside the repository)."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real sample folder {path} is absent (shared data is not part of the repository)")
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread (design note 12): tiny tensor ops only lose time to threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir: str, **train: object) -> PretrainConfig:
    """Nano encoder at 32 px on 24 simulated scenes; a step takes a few milliseconds."""
    return PretrainConfig(
        method="mae",
        model=ModelConfig(encoder="vit_nano_patch8", decoder="vitlite_128d2b", img_size=32),
        data=DataConfig(simulated=SimulationConfig(num_samples=24, img_size=32, seed=3)),
        optim=OptimConfig(name="adamw", lr=1e-3, warmup_steps=2),
        train=TrainConfig(**{"steps": 6, "batch_size": 8, "out_dir": out_dir, "progress": False,
                             "checkpoint_every": 3, **train}),
    )


@pytest.fixture
def tiny(tmp_path):
    return lambda **kw: tiny_config(str(tmp_path / "run"), **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from s12mae.train.loop import pretrain

    hist = pretrain(cfg).history
    with open(f"{result}.{rank}", "w") as f:
        json.dump([{"task": r["task"], "loss": r["loss"]} for r in hist], f)
    torch.distributed.destroy_process_group()


def run_ddp(cfg, tmp_path, world: int = 2) -> list[list[dict]]:
    """Run ``pretrain(cfg)`` in ``world`` gloo processes; each rank's (task, loss) per step."""
    result = str(tmp_path / "ddp-history")
    mp.spawn(_ddp_worker, args=(world, _free_port(), cfg, result), nprocs=world)
    out = []
    for rank in range(world):
        with open(f"{result}.{rank}") as f:
            out.append(json.load(f))
    return out
