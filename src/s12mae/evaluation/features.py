"""What a head reads: per-feature standardisation, the ``pixels`` baseline encoder, cached features.

* :class:`Standardize`: ``(x - mean) / std`` per channel with statistics of the training split,
  fixed once computed (MAE's linear probe uses a BatchNorm without affine parameters for the
  same purpose). Pretrained ViT tokens are dominated by one direction shared by every token;
  without this a head spends most of its steps undoing that scale.
* :class:`PixelEncoder`: no encoder at all; every patch's raw standardised pixels are its token.
  A head on it says what the pixels alone give, the floor that an encoder must beat.
* :func:`encode_split`: one pass of a frozen encoder over a split, kept in memory, so that a
  frozen head trains for many steps at the cost of its own forward and backward only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from s12mae.models.patches import patchify

__all__ = ["CachedSplit", "PixelEncoder", "Standardize", "encode_split"]


class Standardize(nn.Module):
    """Per-channel standardisation with fixed statistics: ``(..., D) -> (..., D)``.

    For token sequences ``(N, 1 + L, D)`` the class token (position 0) and the patch tokens
    have separate statistics (``tokens=True``); pooled features ``(N, D)`` have one set. The
    statistics are buffers (saved with the head) and start as the identity until
    :meth:`fit` is called.

    Args:
        dim: channels ``D``.
        tokens: inputs are ``(N, 1 + L, D)`` token sequences, class token first.
        eps: added to the variance.
    """

    def __init__(self, dim: int, tokens: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.tokens, self.eps = tokens, eps
        rows = 2 if tokens else 1
        self.register_buffer("mean", torch.zeros(rows, dim))
        self.register_buffer("std", torch.ones(rows, dim))

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Set mean and std from every sample of ``batches`` (float64 sums, one pass)."""
        rows, dim = self.mean.shape
        count = torch.zeros(rows, 1, dtype=torch.float64)
        total = torch.zeros(rows, dim, dtype=torch.float64)
        squares = torch.zeros(rows, dim, dtype=torch.float64)
        for x in batches:
            x = x.detach().double().cpu()
            parts = [x[:, 0], x[:, 1:].reshape(-1, dim)] if self.tokens else [x.reshape(-1, dim)]
            for r, part in enumerate(parts):
                count[r] += part.shape[0]
                total[r] += part.sum(0)
                squares[r] += (part * part).sum(0)
        if bool((count == 0).any()):
            raise ValueError("Standardize.fit: no samples to compute statistics from")
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        self.mean.copy_(mean.float())
        self.std.copy_((var + self.eps).sqrt().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tokens:
            return (x - self.mean[0]) / self.std[0]
        cls = (x[:, :1] - self.mean[0]) / self.std[0]
        return torch.cat([cls, (x[:, 1:] - self.mean[1]) / self.std[1]], dim=1)


class PixelEncoder(nn.Module):
    """The ``pixels`` baseline: raw standardised patch pixels as tokens, no parameters.

    ``(N, C, H, W) -> (N, 1 + L, p * p * C)``: each patch flattened in MAE's ``(p, p, C)`` order;
    the "class token" is the mean of the patch tokens. It answers to the encoder API the heads
    and the input plan use (``in_chans``, ``patch_size``, ``embed_dim``, ``patch_grid``,
    ``forward_features``, ``blocks``).

    Args:
        sensor: sensor key of the input.
        channels: its number of bands ``C``.
        patch_size: patch side ``p`` (that of the encoders it is compared with).
    """

    def __init__(self, sensor: str, channels: int, patch_size: int) -> None:
        super().__init__()
        self.sensors, self.patch_size = [sensor], patch_size
        self.embed_dim = channels * patch_size * patch_size
        self._chans = {sensor: channels}
        self.blocks = nn.ModuleList()  # depth 0: no layer-wise decay to apply

    @property
    def in_chans(self) -> dict[str, int]:
        return dict(self._chans)

    def no_weight_decay(self) -> set[str]:
        return set()

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by the patch size {p}")
        return height // p, width // p

    def forward_features(self, x: torch.Tensor, sensor: str | None = None) -> torch.Tensor:
        """``(N, C, H, W) -> (N, 1 + L, p * p * C)``."""
        patches = patchify(x, self.patch_size)  # (N, L, p*p*C)
        return torch.cat([patches.mean(1, keepdim=True), patches], dim=1)


class CachedSplit:
    """A split's head inputs and labels held in memory.

    Attributes:
        feats: ``(N, ...)`` what the head reads before standardisation (pooled ``(N, D)`` or
            tokens ``(N, 1 + L, D)``), float32.
        labels: ``(N, ...)`` labels (segmentation: int16 to save memory; cast when used).
    """

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        self.feats, self.labels = feats, labels

    def __len__(self) -> int:
        return len(self.feats)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels (int64 / float) of the samples ``index``."""
        y = self.labels[index]
        return self.feats[index], (y.long() if not y.is_floating_point() else y)

    def batches(self, size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, ``size`` samples at a time."""
        for start in range(0, len(self), size):
            yield self.batch(torch.arange(start, min(start + size, len(self)), device=self.feats.device))


def feature_bytes(sample_feats: torch.Tensor, sample_label: torch.Tensor, num: int) -> int:
    """Memory of ``num`` cached samples like the given single-sample ``feats`` and ``label``."""
    label_bytes = sample_label.numel() * (2 if not sample_label.is_floating_point() else 4)
    return num * (sample_feats.numel() * 4 + label_bytes)


@torch.no_grad()
def encode_split(model: Any, dataset: Dataset, task: Any, split: str, batch_size: int,
                 device: torch.device, autocast: Any) -> CachedSplit:
    """Run the frozen encoder (and the head's parameter-free reduction) over a whole split.

    Args:
        model: an :class:`~s12mae.evaluation.heads.EvalModel` (``model.features``).
        dataset: the split.
        task: its :class:`~s12mae.evaluation.tasks.EvalTask` (checks every batch).
        split: ``train``, ``val`` or ``test`` for error messages.
        batch_size: samples per forward.
        device: where the features are kept.
        autocast: autocast context of the encoder's forward.
    """
    feats, labels = [], []
    model.eval()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        task.check_batch(batch, split)
        with autocast:
            f = model.features(batch[task.sensor].to(device))
        feats.append(f.float())
        y = batch["label"]
        labels.append(y.to(torch.int16) if task.kind == "segmentation" else y.float())
    return CachedSplit(torch.cat(feats), torch.cat(labels).to(device))
