"""Sinks of the loop's step records (design note 19): one record, several loggers.

The loop writes every logged record to ``metrics.jsonl`` itself (always); the sinks named in
``train.logger`` besides ``jsonl`` get the same records: TensorBoard event files in
``<run>/tensorboard`` and a Weights & Biases run (the ``[wandb]`` extra) in ``<run>/wandb``.
Each sink, and the run folder (``run_info.json``), records the resolved config and the code
version (package version and git commit).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import yaml

from s12mae.files import atomic_write

__all__ = ["Sink", "Sinks", "TensorBoardSink", "WandbSink", "code_version", "open_sinks"]


def code_version() -> dict[str, str | None]:
    """``{"package": s12mae's version, "git_commit": HEAD of the source checkout or None}``."""
    try:
        package = metadata.version("s12mae")
    except metadata.PackageNotFoundError:
        package = None
    commit = None
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=False)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "-dirty"
    except (OSError, subprocess.TimeoutExpired):  # no git, or not a checkout (an installed wheel)
        pass
    return {"package": package, "git_commit": commit}


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record but its step (bools and strings left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class Sink(Protocol):
    """A logger: gets each logged record (``{"step", "task", ...numbers}``) and is closed once."""

    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Event files in ``<run>/tensorboard``: scalars tagged ``<task>/<field>`` (``mae/loss``,
    ``mae/val_loss``, ``mae/lr``...), the config and the code version as text."""

    def __init__(self, run_dir: Path, config: dict[str, Any], version: dict[str, Any], start: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.logger: tensorboard needs the [tensorboard] extra "
                              "(pip install 's12mae[tensorboard]')") from e

        # purge_step: a resumed run hides what an interrupted session logged after its checkpoint
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start or None)
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.writer.add_text("version", "```json\n" + json.dumps(version) + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(f"{record['task']}/{key}", value, global_step=int(record["step"]))

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run in ``<run>/wandb`` (offline unless ``WANDB_MODE`` is set), with the
    config and code version as its config; metrics keyed ``<task>/<field>``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], version: dict[str, Any], start: int = 0) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError("train.logger: wandb needs the [wandb] extra (pip install 's12mae[wandb]')") from e
        self.wandb = wandb
        self.run = wandb.init(dir=str(run_dir), project="s12mae", name=run_dir.name,
                              mode=os.environ.get("WANDB_MODE", "offline"),  # no network unless asked (ours)
                              config={**config, "code_version": version})

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({f"{record['task']}/{k}": v for k, v in _scalars(record).items()},
                     step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """The sinks of a run, called as one."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


_SINKS = {"tensorboard": TensorBoardSink, "wandb": WandbSink}


def open_sinks(names: Sequence[str], run_dir: Path, config: dict[str, Any], start: int = 0) -> Sinks:
    """Write ``run_info.json`` (config + code version) into ``run_dir`` and open the sinks named
    in ``names`` (``jsonl`` is the loop's own ``metrics.jsonl`` and needs none) for a session
    that begins at step ``start``."""
    version = code_version()
    atomic_write(run_dir / "run_info.json", json.dumps({"code_version": version, "config": config}, indent=1))
    return Sinks([_SINKS[n](run_dir, config, version, start) for n in dict.fromkeys(names) if n != "jsonl"])
