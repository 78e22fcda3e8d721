"""Shared fixtures: tiny configs that train in a second on CPU."""

from __future__ import annotations

import pytest
import torch

from s12mae.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, TrainConfig
from s12mae.simulate import SimulationConfig

torch.set_num_threads(2)


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
