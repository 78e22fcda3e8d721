"""ViT-Lite decoders: small transformers that turn encoder tokens into pixel patches.

"ViT-Lite" in the paper is a ~21M-parameter ViT decoder whose exact shape is not given. Here it
is a family of named variants ``vitlite_{width}d{depth}b`` (MAE's naming); ``vitlite_512d6b``
has 21.0M parameters behind a ViT-B encoder with 16x16x13 output patches (our choice, stated in
``configs/`` and checked by a test). These are plain MAE-style decoders, not Hassani et al.'s
ViT-Lite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from s12mae.models.patches import sincos_pos_embed
from s12mae.models.vit import init_weights

__all__ = ["DECODERS", "DecoderArch", "ViTDecoder", "build_decoder"]


@dataclass(frozen=True)
class DecoderArch:
    """Shape of a named decoder variant."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


DECODERS: dict[str, DecoderArch] = {
    "vitlite_128d2b": DecoderArch(128, 2, 4),  # CPU demo
    "vitlite_256d4b": DecoderArch(256, 4, 8),
    "vitlite_512d6b": DecoderArch(512, 6, 16),  # the paper's "ViT-Lite, ~21M" (ours)
    "vitlite_512d8b": DecoderArch(512, 8, 16),  # MAE's default decoder
}


class ViTDecoder(nn.Module):
    """Transformer decoder from encoder tokens to flattened output patches.

    Args:
        in_dim: width of the encoder tokens.
        grid: token grid ``(gh, gw)`` the position table is built for.
        out_dim: values predicted per token, ``p_out * p_out * C_out``.
        embed_dim: decoder width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / width.
        block_fn: transformer block class.
    """

    def __init__(
        self,
        in_dim: int,
        grid: tuple[int, int],
        out_dim: int,
        embed_dim: int = 512,
        depth: int = 6,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        block_fn: Callable[..., nn.Module] = Block,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid), persistent=True)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            block_fn(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        ids_restore: torch.Tensor | None = None,
        ids_pred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the patches of the grid.

        Args:
            tokens: encoder output ``(N, 1 + L_vis, D_enc)`` (class token first).
            grid: token grid ``(gh, gw)`` of the full image, ``L = gh * gw``.
            ids_restore: ``(N, L)`` indices that unshuffle ``[visible, masked]`` back to grid
                order (MAE); ``None`` when ``tokens`` already hold all ``L`` patch tokens.
            ids_pred: ``(N, M)`` grid positions to predict (e.g. only the ones a loss counts);
                ``None`` = all ``L``. The blocks run on every token either way; the final norm
                and projection run on the chosen rows only.

        Returns:
            ``(N, L, out_dim)`` predictions in grid order, or ``(N, M, out_dim)`` at ``ids_pred``.
        """
        x = self.embed(tokens)
        if ids_restore is not None:
            n, length = ids_restore.shape
            masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
            patches = torch.cat([x[:, 1:], masks], dim=1)
            patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :1], patches], dim=1)
        pos = self.pos_embed
        if tuple(grid) != self.grid:
            pos = resample_abs_pos_embed(pos, list(grid), list(self.grid), num_prefix_tokens=1)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        x = x[:, 1:]
        if ids_pred is not None:
            x = torch.gather(x, 1, ids_pred.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.pred(self.norm(x))


def build_decoder(name: str, in_dim: int, grid: tuple[int, int], out_dim: int) -> ViTDecoder:
    """Instantiate a registered decoder variant (see ``DECODERS``)."""
    if name not in DECODERS:
        raise KeyError(f"unknown decoder {name!r}; registered: {sorted(DECODERS)}")
    a = DECODERS[name]
    return ViTDecoder(in_dim, grid, out_dim, a.embed_dim, a.depth, a.num_heads, a.mlp_ratio)
