"""Multi-sensor ViT encoder built from timm layers.

One patch embedding per sensor (a ``ModuleDict`` keyed by sensor name), one shared stack of
transformer blocks, a class token and a fixed 2-D sin-cos position table in the MAE layout.
The encoder API follows timm/terratorch: ``forward_features``, ``forward_intermediates``,
``no_weight_decay``, ``embed_dim``; pretraining methods additionally use the two halves
``embed`` (patch tokens + positions) and ``forward_tokens`` (class token + blocks + norm) so that
masking (MAE) and mixing (MixMAE) happen between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from s12mae.models.patches import patch_grid_view, select_patches, sincos_pos_embed

__all__ = ["ENCODERS", "EncoderArch", "ViTEncoder", "build_encoder", "init_weights"]


@dataclass(frozen=True)
class EncoderArch:
    """Shape of a named ViT encoder variant."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


_SIZES = {  # width, depth, heads (ViT paper / DeiT; nano is ours, for CPU demos)
    "nano": (128, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
ENCODERS: dict[str, EncoderArch] = {
    f"vit_{size}_patch{p}": EncoderArch(d, depth, heads, p)
    for size, (d, depth, heads) in _SIZES.items()
    for p in (8, 16)
}


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears, zero biases, unit layer norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """Vision transformer with one patch embedding per sensor.

    Args:
        in_chans: channels per sensor key, e.g. ``{"s2_l1c": 13, "s1_grd": 2}``; the first key is
            the default sensor of ``forward_features``.
        img_size: side of the square image the position table is built for; other sizes
            divisible by the patch size work by resampling the table.
        patch_size: side of a square patch.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / token width.
        drop_path_rate: stochastic-depth rate of the last block (linear in depth).
        block_fn: transformer block class (timm ``Block`` signature).
        grad_checkpointing: recompute each block's activations in the backward pass instead of
            keeping them (less memory, about one more forward of the blocks); also settable
            later with :meth:`set_grad_checkpointing` (timm's API).
    """

    def __init__(
        self,
        in_chans: Mapping[str, int],
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        block_fn: Callable[..., nn.Module] = Block,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        if not in_chans:
            raise ValueError("the encoder needs at least one sensor")
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not divisible by the patch size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = self.num_features = embed_dim
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.sensors = list(in_chans)
        self.patch_embed = nn.ModuleDict(
            {
                key: PatchEmbed(img_size, patch_size, c, embed_dim, strict_img_size=False)
                for key, c in in_chans.items()
            }
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed (not learned) table, saved with the weights so imported tables round-trip.
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid), persistent=True)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            block_fn(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=r)
            for r in rates
        )
        self.norm = norm_layer(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_weights)
        for embed in self.patch_embed.values():
            w = embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def in_chans(self) -> dict[str, int]:
        return {k: int(m.proj.in_channels) for k, m in self.patch_embed.items()}

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (timm's method name)."""
        self.grad_checkpointing = enable

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an image; sizes not divisible by the patch are an error."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the encoder's patch size {p}; "
                f"resize or crop to a multiple of {p}"
            )
        return height // p, width // p

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table ``(1, 1 + gh*gw, D)`` for a token grid, resampled if needed."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid), num_prefix_tokens=1)

    def embed(self, x: torch.Tensor, sensor: str | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with positions: ``(N, C, H, W) -> (N, L, D)``.

        With ``ids (N, M)`` (row-major grid positions) only those patches are embedded, giving
        ``(N, M, D)``: ``embed(x)`` gathered at ``ids`` up to float rounding (the patch
        convolution runs as the equivalent matrix product, several times faster on CPU for
        a few hundred patches). MAE and MixMAE never pay for the patches the encoder does not see.
        """
        sensor = sensor or self.sensors[0]
        if sensor not in self.patch_embed:
            raise KeyError(f"this encoder has no patch embedding for sensor {sensor!r}; it has {self.sensors}")
        expected = self.patch_embed[sensor].proj.in_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(
                f"sensor {sensor!r} expects input (N, {expected}, H, W), got {tuple(x.shape)}"
            )
        grid = self.patch_grid(x.shape[-2], x.shape[-1])
        pos = self.pos_embed_for(grid)[:, 1:]
        patch_embed = self.patch_embed[sensor]
        if ids is None:
            return patch_embed(x) + pos
        # A p x p convolution with stride p is a linear map of each flattened (C, p, p) patch.
        patches = select_patches(patch_grid_view(x, self.patch_size), ids)  # (N, M, C, p, p)
        proj = patch_embed.proj
        tokens = F.linear(patches.flatten(2), proj.weight.flatten(1), proj.bias)
        return patch_embed.norm(tokens) + pos[0][ids]

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class token + blocks + norm: ``(N, L', D) -> (N, 1 + L', D)``."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = self._block(block, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor, sensor: str | None = None) -> torch.Tensor:
        """All tokens of an unmasked image: ``(N, C, H, W) -> (N, 1 + L, D)``."""
        return self.forward_tokens(self.embed(x, sensor))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        sensor: str | None = None,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
    ) -> list[torch.Tensor]:
        """Feature maps of chosen blocks for dense heads.

        Args:
            x: ``(N, C, H, W)``.
            sensor: sensor key of ``x`` (default: the first sensor).
            indices: block indices (negative counts from the end); an int ``n`` takes the last
                ``n`` blocks; ``None`` takes the last block.
            norm: apply the final norm to each map.

        Returns:
            One ``(N, D, H/p, W/p)`` map per requested block, in block order.
        """
        depth = len(self.blocks)
        if indices is None:
            wanted = [depth - 1]
        elif isinstance(indices, int):
            wanted = list(range(depth - indices, depth))
        else:
            wanted = sorted(i % depth for i in indices)
        gh, gw = self.patch_grid(x.shape[-2], x.shape[-1])
        tokens = self.embed(x, sensor)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        out = []
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):
            h = self._block(block, h)
            if i in wanted:
                feats = self.norm(h) if norm else h
                out.append(feats[:, 1:].transpose(1, 2).reshape(h.shape[0], -1, gh, gw))
        return out

    def forward(self, x: torch.Tensor, sensor: str | None = None) -> torch.Tensor:
        return self.forward_features(x, sensor)


def build_encoder(name: str, in_chans: Mapping[str, int], img_size: int, **kwargs: object) -> ViTEncoder:
    """Instantiate a registered encoder variant (see ``ENCODERS``)."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)}")
    a = ENCODERS[name]
    return ViTEncoder(
        in_chans,
        img_size=img_size,
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        **kwargs,  # type: ignore[arg-type]
    )
