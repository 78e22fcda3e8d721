"""Downstream heads, the input adapter (band mapping, resizing) and the encoder + head model.

Every head reads the encoder's tokens ``(N, 1 + L, D)`` (class token first, final norm applied,
``ViTEncoder.forward_features``) and the token grid, so no head special-cases a method. A head is
``reduce`` (parameter-free: pooling for the linear probe, nothing for dense heads; what a frozen
run caches) then ``predict`` (standardisation with training-set statistics, then the trainable
layers).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from s12mae.evaluation.config import EvalDataConfig, HeadConfig
from s12mae.evaluation.features import PixelEncoder, Standardize
from s12mae.models.decoder import build_decoder
from s12mae.models.patches import unpatchify
from s12mae.models.vit import ViTEncoder
from s12mae.sensors import SensorSpec, get_sensor

__all__ = ["EvalModel", "InputAdapter", "LinearProbe", "LinearSegHead", "UpsampleSegHead", "ViTLiteSegHead", "build_head",
           "plan_input"]


class LinearProbe(nn.Module):
    """Linear classifier on pooled, standardised tokens: ``(N, 1 + L, D) -> (N, K)`` logits.

    Args:
        in_dim: token width ``D``.
        num_classes: ``K``.
        pool: ``mean`` of the patch tokens (DESIGN-NOTES 2) or the ``cls`` token.
        standardize: per-feature standardisation of the pooled feature (MAE's linear probe).
    """

    def __init__(self, in_dim: int, num_classes: int, pool: str = "mean", standardize: bool = True) -> None:
        super().__init__()
        self.pool = pool
        self.norm = Standardize(in_dim, tokens=False) if standardize else nn.Identity()
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # MAE linear probe init
        nn.init.zeros_(self.fc.bias)

    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        """The parameter-free part: ``(N, 1 + L, D) -> (N, D)`` pooled features."""
        return tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]

    def predict(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(N, D)`` pooled features -> ``(N, K)`` logits."""
        return self.fc(self.norm(feats))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.predict(self.reduce(tokens), grid)


class _TokenHead(nn.Module):
    """A head that reads every token: ``reduce`` keeps them, ``predict`` standardises first."""

    norm: nn.Module

    def reduce(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.predict(tokens, grid)


class ViTLiteSegHead(_TokenHead):
    """ViT-Lite decoder over all tokens (no masking) + per-token linear segmentation head.

    The decoder's final ``Linear`` (``pred``) is the segmentation head: it predicts
    ``p_out * p_out * K`` logits per token, unpatchified to ``(N, K, gh * p_out, gw * p_out)``
    with ``p_out = patch_size * label_scale`` (4x for super-resolution).

    Args:
        decoder: ViT-Lite variant (``DECODERS``).
        in_dim: encoder token width.
        grid: token grid the decoder's position table is built for.
        patch_out: output pixels per token side ``p_out``.
        num_classes: ``K``.
        standardize: per-feature standardisation of the tokens first.
    """

    def __init__(self, decoder: str, in_dim: int, grid: tuple[int, int], patch_out: int, num_classes: int,
                 standardize: bool = True) -> None:
        super().__init__()
        self.patch_out, self.num_classes = patch_out, num_classes
        self.norm = Standardize(in_dim, tokens=True) if standardize else nn.Identity()
        self.decoder = build_decoder(decoder, in_dim, grid, patch_out * patch_out * num_classes)

    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(N, 1 + L, D)`` tokens -> ``(N, K, gh * p_out, gw * p_out)`` logits."""
        out = self.decoder(self.norm(tokens), grid)  # (N, L, p_out * p_out * K)
        return unpatchify(out, self.patch_out, grid, self.num_classes)


class LinearSegHead(_TokenHead):
    """Per-token linear segmentation head (ours): each standardised patch token maps linearly to
    the ``p_out * p_out * K`` logits of its own output patch (a linear probe for dense tasks; the
    model class of the closed-form ridge probe, trained with cross-entropy).

    ``(N, 1 + L, D) -> (N, K, gh * p_out, gw * p_out)``. It reads only the token of each patch,
    so it measures what the features hold; a ViT-Lite head also learns context of its own.
    """

    def __init__(self, in_dim: int, patch_out: int, num_classes: int, standardize: bool = True) -> None:
        super().__init__()
        self.patch_out, self.num_classes = patch_out, num_classes
        self.norm = Standardize(in_dim, tokens=True) if standardize else nn.Identity()
        self.fc = nn.Linear(in_dim, patch_out * patch_out * num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        out = self.fc(self.norm(tokens)[:, 1:])  # (N, L, p_out * p_out * K)
        return unpatchify(out, self.patch_out, grid, self.num_classes)

    def predict_tokens(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of the output patches of some tokens only: ``(N, 1 + L, D) -> (N, T, p_out * p_out, K)``.

        Args:
            tokens: head input.
            index: ``(T,)`` patch-token positions (0-based, class token excluded).
        """
        chosen = self.norm(tokens)[:, 1:][:, index]  # (N, T, D)
        out = self.fc(chosen)  # (N, T, p_out * p_out * K)
        return out.view(*out.shape[:2], self.patch_out * self.patch_out, self.num_classes)


class UpsampleSegHead(_TokenHead):
    """1x1 convolution on the token feature map + bilinear upsampling (a linear dense probe).

    ``(N, 1 + L, D) -> (N, K, gh * scale, gw * scale)`` with ``scale = patch_size * label_scale``.
    """

    def __init__(self, in_dim: int, num_classes: int, scale: int, standardize: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.norm = Standardize(in_dim, tokens=True) if standardize else nn.Identity()
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)

    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        tokens = self.norm(tokens)
        n, _, d = tokens.shape
        fmap = tokens[:, 1:].transpose(1, 2).reshape(n, d, *grid)  # (N, D, gh, gw)
        return F.interpolate(self.conv(fmap), scale_factor=self.scale, mode="bilinear", align_corners=False)


def build_head(kind: str, cfg: HeadConfig, encoder: nn.Module, grid: tuple[int, int], num_classes: int,
               label_scale: int) -> nn.Module:
    """The head of a task kind (``multilabel``: linear probe; ``segmentation``: ``cfg.segmentation``)."""
    if kind == "multilabel":
        return LinearProbe(encoder.embed_dim, num_classes, cfg.pool, cfg.standardize)
    patch_out = encoder.patch_size * label_scale
    if cfg.segmentation == "vitlite":
        return ViTLiteSegHead(cfg.decoder, encoder.embed_dim, grid, patch_out, num_classes, cfg.standardize)
    if cfg.segmentation == "linear":
        return LinearSegHead(encoder.embed_dim, patch_out, num_classes, cfg.standardize)
    return UpsampleSegHead(encoder.embed_dim, num_classes, patch_out, cfg.standardize)


@dataclass(frozen=True)
class InputPlan:
    """How a task's input becomes the encoder's input.

    Attributes:
        encoder_sensor: patch embedding used.
        source_index: for each encoder band, the task channel that feeds it (``-1``: filled with 0).
        filled: encoder bands the task lacks (filled with 0 = the standardised band mean).
        size: encoder input ``(H, W)`` (resized from the task's when the patch does not divide it).
        task_size: the task's input ``(H, W)``.
    """

    encoder_sensor: str
    source_index: tuple[int, ...]
    filled: tuple[str, ...]
    size: tuple[int, int]
    task_size: tuple[int, int]


def _nearest_multiple(n: int, p: int) -> int:
    return max(p, int(math.floor(n / p + 0.5)) * p)


def plan_input(encoder: ViTEncoder | PixelEncoder, spec: SensorSpec, size: tuple[int, int], data: EvalDataConfig,
               checkpoint: str) -> InputPlan:
    """Match a task's input to the encoder's patch embeddings, by band name.

    Rule: use the encoder's patch embedding for the task's sensor key if it has one; otherwise the
    one whose sensor shares the most band names with the task's (ties: the encoder's order).
    Encoder bands the task lacks are filled with 0, the band's standardised mean (e.g. B10 for an
    L2A task on an L1C encoder); ``data.missing_bands="error"`` refuses instead. Sizes the patch
    does not divide are resized to the nearest multiple (``data.resize``).

    Raises:
        ValueError: no patch embedding shares a band with the task, bands are missing under
            ``missing_bands="error"``, or the patch does not divide the image under
            ``resize="none"``; the message names the checkpoint and the task input.
    """
    what = f"checkpoint {checkpoint} (sensors {encoder.in_chans}, patch {encoder.patch_size})"
    task_bands = spec.band_names
    best: tuple[int, str, list[str]] | None = None
    for key, chans in encoder.in_chans.items():
        try:
            bands = get_sensor(key).band_names
        except (KeyError, ValueError):
            continue  # a sensor this installation has no spec for cannot be matched by name
        if len(bands) != chans:
            raise ValueError(f"{what}: patch embedding {key!r} takes {chans} channels but the {key} spec "
                             f"has {len(bands)} bands {bands}")
        shared = len(set(bands) & set(task_bands))
        if key == spec.key:
            best = (len(bands) + 1, key, bands)
            break
        if shared and (best is None or shared > best[0]):
            best = (shared, key, bands)
    if best is None:
        raise ValueError(f"{what} cannot read the task input {spec.key} with bands {task_bands}: "
                         "no patch embedding shares a band with it")
    _, key, bands = best
    lookup = {b: i for i, b in enumerate(task_bands)}
    index = tuple(lookup.get(b, -1) for b in bands)
    filled = tuple(b for b in bands if b not in lookup)
    if filled and data.missing_bands == "error":
        raise ValueError(f"{what}: task input {spec.key} lacks encoder band(s) {list(filled)} of {key} "
                         "(data.missing_bands=error; 'zeros' fills them with the standardised mean)")
    h, w = size
    p = encoder.patch_size
    if h % p or w % p:
        if data.resize == "none":
            raise ValueError(f"{what}: patch size {p} does not divide the task input {spec.key} of "
                             f"{h}x{w} px (data.resize=none; 'nearest_multiple' resizes to "
                             f"{_nearest_multiple(h, p)}x{_nearest_multiple(w, p)})")
        size = (_nearest_multiple(h, p), _nearest_multiple(w, p))
    return InputPlan(key, index, filled, tuple(size), (h, w))


class InputAdapter(nn.Module):
    """Task input ``(N, C_task, H, W)`` -> encoder input ``(N, C_enc, H', W')`` per an :class:`InputPlan`."""

    def __init__(self, plan: InputPlan) -> None:
        super().__init__()
        self.plan = plan
        idx = torch.tensor([max(i, 0) for i in plan.source_index])
        keep = torch.tensor([i >= 0 for i in plan.source_index], dtype=torch.float32)
        self.register_buffer("index", idx, persistent=False)
        self.register_buffer("keep", keep.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(1, self.index) * self.keep  # missing bands -> 0 (standardised mean)
        if tuple(x.shape[-2:]) != self.plan.size:
            x = F.interpolate(x, size=self.plan.size, mode="bilinear", align_corners=False, antialias=True)
        return x


class EvalModel(nn.Module):
    """Input adapter + encoder + head; ``frozen`` keeps the encoder fixed and in eval mode.

    ``forward(x) = classify(features(x))``: ``features`` is everything a frozen run can compute
    once (adapter, encoder, the head's pooling), ``classify`` the trainable rest.

    Args:
        encoder: pretrained (or random) encoder, or the ``pixels`` :class:`PixelEncoder`.
        head: task head (``reduce``, ``predict``, ``norm``).
        adapter: task input -> encoder input.
        frozen: encoder parameters get ``requires_grad=False`` and the encoder stays in eval mode
            even under ``model.train()``; its features are computed without autograd. An encoder
            without parameters (``pixels``) is always frozen.
        out_size: segmentation: the label grid; logits of another size are resized bilinearly.
    """

    def __init__(self, encoder: ViTEncoder | PixelEncoder, head: nn.Module, adapter: InputAdapter, frozen: bool,
                 out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.encoder, self.head, self.adapter = encoder, head, adapter
        self.frozen = frozen or not any(True for _ in encoder.parameters())
        self.out_size = out_size
        self.grid = encoder.patch_grid(*adapter.plan.size)
        if self.frozen:
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> EvalModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Task input ``(N, C, H, W)`` -> the head's input before standardisation (``head.reduce``)."""
        x = self.adapter(x)
        sensor = self.adapter.plan.encoder_sensor
        with torch.no_grad() if self.frozen else nullcontext():
            tokens = self.encoder.forward_features(x, sensor)  # (N, 1 + L, D)
            return self.head.reduce(tokens)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Head input -> logits ``(N, K)`` or ``(N, K, H_label, W_label)``."""
        out = self.head.predict(feats, self.grid)
        if self.out_size is not None and tuple(out.shape[-2:]) != tuple(self.out_size):
            out = F.interpolate(out, size=self.out_size, mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Task input ``(N, C, H, W)`` -> logits ``(N, K)`` or ``(N, K, H_label, W_label)``."""
        return self.classify(self.features(x))
