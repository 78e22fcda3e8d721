"""Atomic, resumable checkpoints: weights in safetensors, loop state loadable with weights_only.

A run folder holds ``checkpoint-<step>/`` folders (``model.safetensors`` + ``state.pt``) and a
``latest`` file naming the newest. Each checkpoint is written to a temporary folder and renamed
into place, then ``latest`` is replaced atomically, so a crash never leaves a half checkpoint
that a resume would pick up. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from s12mae.files import atomic_dir, atomic_write

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]


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
    atomic_write(run_dir / "latest", final.name + "\n")
    for old in sorted(run_dir.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
