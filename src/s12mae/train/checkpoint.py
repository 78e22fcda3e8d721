"""Atomic, resumable checkpoints: weights in safetensors, loop state loadable with weights_only.

A run folder holds ``checkpoint-<step>/`` folders (``model.safetensors`` + ``state.pt``) and a
``latest`` file naming the newest. Each checkpoint is written to a temporary folder and renamed
into place, then ``latest`` is replaced atomically, so a crash never leaves a half checkpoint
that a resume would pick up. The last ``keep`` checkpoints are kept.

Under FSDP (``train.parallel: fsdp``) a checkpoint folder holds ``dcp/`` instead of
``model.safetensors``: model and optimizer state as each rank's shards, written and read by
``torch.distributed.checkpoint`` (:func:`save_sharded_checkpoint`, :func:`load_sharded_checkpoint`);
every rank writes its own shards into one temporary folder that rank 0 renames into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from s12mae.files import TMP_MARK, atomic_dir, atomic_write

__all__ = ["is_sharded", "latest_checkpoint", "load_checkpoint", "load_sharded_checkpoint", "save_checkpoint",
           "save_sharded_checkpoint"]


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Save weights and loop state after ``step`` optimizer steps.

    Args:
        run_dir: run folder.
        step: number of completed optimizer steps.
        model: module whose ``state_dict`` holds the weights.
        state: loop state: tensors, numbers, strings, lists and dicts only (``weights_only``).
        keep: how many checkpoints to keep.
    """
    final = run_dir / f"checkpoint-{step:08d}"
    with atomic_dir(final, replace=True) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save({**state, "step": step}, tmp / "state.pt")
    _point_and_prune(run_dir, final, keep)
    return final


def _point_and_prune(run_dir: Path, final: Path, keep: int) -> None:
    atomic_write(run_dir / "latest", final.name + "\n")
    for old in sorted(run_dir.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path:
    """Folder named by ``run_dir/latest``; a clear error if there is none."""
    pointer = run_dir / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from (no 'latest' file)")
    folder = run_dir / pointer.read_text().strip()
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer}: names {folder.name}, which does not exist")
    return folder


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the loop state, with one clear error if corrupt."""
    weights_path, state_path = folder / "model.safetensors", folder / "state.pt"
    try:
        weights = load_file(str(weights_path))
    except (OSError, SafetensorError, ValueError) as err:
        raise ValueError(f"{weights_path}: unreadable or corrupt checkpoint weights ({err})") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on corrupt input
        raise ValueError(f"{state_path}: unreadable or corrupt checkpoint state ({err})") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: does not fit this model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with another config?"
        )
    return state


def is_sharded(folder: Path) -> bool:
    """Whether a checkpoint folder was written under FSDP (holds ``dcp/``)."""
    return (folder / "dcp").is_dir()


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def save_sharded_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            state: dict[str, Any], keep: int = 2) -> Path:
    """Save an FSDP model's and optimizer's shards and the loop state; a collective.

    Every rank writes its shards into ``.checkpoint-<step>.dcp.tmp/dcp``; rank 0 adds ``state.pt``
    (``state`` as in :func:`save_checkpoint`) and renames the folder into place after all ranks
    have finished, then moves ``latest``.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    final = run_dir / f"checkpoint-{step:08d}"
    tmp = run_dir / f".{final.name}.dcp{TMP_MARK}"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(tmp / "dcp"))
    if rank == 0:
        torch.save({**state, "step": step}, tmp / "state.pt")
    dist.barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _point_and_prune(run_dir, final, keep)
    dist.barrier()
    return final


def load_sharded_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load an FSDP checkpoint's shards into ``model`` and ``optimizer`` (sharded the same way or
    not: DCP reshards) and return the loop state; a collective. One clear error if corrupt."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state_path = folder / "state.pt"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on corrupt input
        raise ValueError(f"{state_path}: unreadable or corrupt checkpoint state ({err})") from None
    shards = _dcp_state(model, optimizer)
    try:
        saved = set(dcp.FileSystemReader(str(folder / "dcp")).read_metadata().state_dict_metadata)
        # A parameter that never had a gradient (e.g. a token the run's tasks never use) has no
        # optimizer state in the checkpoint, while a fresh optimizer's template holds zeros for it.
        optim_state = shards["optimizer"]["state"]
        for name in [n for n, v in optim_state.items() if any(f"optimizer.state.{n}.{k}" not in saved for k in v)]:
            del optim_state[name]
        dcp.load(shards, checkpoint_id=str(folder / "dcp"))
    except Exception as err:  # DCP wraps reader errors in CheckpointException
        raise ValueError(f"{folder / 'dcp'}: unreadable sharded checkpoint, or written for another "
                         f"model ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    # strict=False for those stateless parameters only: dcp.load above found every model key
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"],
                   options=StateDictOptions(strict=False))
    return state
