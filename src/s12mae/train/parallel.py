"""How the pretraining loop wraps a method for speed and scale: activation checkpointing,
``torch.compile`` of the transformer blocks and FSDP2 (``fully_shard``), plus the full weights of a
sharded model (for pictures and the exported encoder).

Order (as FSDP2 expects it): checkpointing and compilation change blocks in place, then the
blocks, the decoders and the method are sharded, and only then is the optimizer built (FSDP2
replaces the parameters by sharded ``DTensor`` s). In-place ``Module.compile`` keeps the
state-dict keys, so checkpoints do not depend on the setting.

FSDP2 units: every transformer block (encoder and decoders), every decoder and, as the root, the
method (its remaining parameters: patch embeddings, class token, norms). A task's idle decoder
is never called, so under alternating tasks its parameters keep ``grad = None`` on every rank, as
under DDP. Gradients are summed over ranks (divide factor 1): the loop already normalises the
loss by the global element count.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from s12mae.models.decoder import ViTDecoder

__all__ = ["compile_blocks", "full_state_dict", "set_grad_checkpointing", "shard_method", "wants_compile"]


def set_grad_checkpointing(method: nn.Module, enable: bool) -> None:
    """Recompute the encoder blocks' activations in the backward pass (``train.grad_checkpointing``).

    Raises:
        ValueError: the method's encoder has no ``set_grad_checkpointing`` (timm's API).
    """
    if not enable:
        return
    encoder = getattr(method, "encoder", None)
    hook = getattr(encoder, "set_grad_checkpointing", None)
    if not callable(hook):
        raise ValueError(f"train.grad_checkpointing: the encoder of this method ({type(encoder).__name__}) "
                         "has no set_grad_checkpointing(); this version of s12mae cannot checkpoint it, "
                         "set train.grad_checkpointing=false")  # noqa: TRY004 (a config error)
    hook(True)


def wants_compile(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: ``auto`` compiles on CUDA only (on a CPU the compile time rarely pays)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_blocks(method: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every transformer block of the method in place; the number compiled.

    Blocks rather than the whole method: masking and mixing gather by data-dependent indices
    between the blocks, while a block is a fixed graph that compiles once per token count.
    """
    blocks = [m for m in method.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def shard_method(method: nn.Module, bf16: bool) -> None:
    """Apply FSDP2 in place: each block, each decoder, then the method (see the module notes).

    Args:
        method: the method on its device, in the default process group.
        bf16: gather parameters in bfloat16 for the forward/backward (gradients are reduced and
            kept in float32).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    units = [m for m in method.modules() if isinstance(m, Block)]
    units += [m for m in method.modules() if isinstance(m, ViTDecoder)]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(method, mp_policy=policy)
    for unit in [*units, method]:  # sum, with plain SUM collectives (gloo has no PREMUL_SUM)
        unit.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        unit.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]


def full_state_dict(method: nn.Module) -> dict[str, Any]:
    """The method's full (unsharded) weights on the CPU of rank 0 (empty on other ranks).

    A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(method, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
