"""Baseline masked autoencoder on one sensor (He et al. 2022; the paper's S2-only baseline).

Per sample, a random ``mask_ratio`` of the patches is hidden (argsort of keyed noise), the
encoder sees the visible patches only, a decoder fills in mask tokens and predicts every patch,
and the loss is the MSE over the masked patches (optionally against per-patch normalised
targets). Training computes only what the loss reads: the patch embedding of the visible
patches and the decoder's output head on the hidden ones. Reads like the MAE paper:
``random_masking``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from s12mae.methods.base import Batch, check_sensor_input
from s12mae.models.decoder import ViTDecoder, build_decoder
from s12mae.models.patches import patchify, unpatchify
from s12mae.models.vit import ViTEncoder
from s12mae.rng import keyed_uniform

__all__ = ["MAE", "hidden_ids", "patch_targets", "random_masking", "sq_error_sum", "targets_at"]

STREAM_MASK = 1  # keyed-random stream of MAE masks


def random_masking(
    seed: int, step: int, index: torch.Tensor, length: int, mask_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of keyed noise.

    Args:
        seed: run seed.
        step: optimizer step.
        index: ``(N,)`` global sample indices.
        length: tokens per sample ``L``.
        mask_ratio: fraction hidden; ``int(L * (1 - mask_ratio))`` tokens stay visible.

    Returns:
        ``ids_keep (N, L_vis)``, ``mask (N, L)`` with 1 = hidden, ``ids_restore (N, L)``.
    """
    n_keep = int(length * (1 - mask_ratio) + 1e-9)  # guard float error: 10 * (1 - 0.9) = 0.999...
    if n_keep < 1:
        raise ValueError(f"mask ratio {mask_ratio} leaves no visible patch out of {length}")
    noise = keyed_uniform(seed, STREAM_MASK, step, index, length)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    mask = torch.ones(noise.shape, device=noise.device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :n_keep], mask, ids_restore


def hidden_ids(mask: torch.Tensor, n_hidden: int) -> torch.Tensor:
    """Grid positions of the hidden patches, in grid order.

    Args:
        mask: ``(N, L)``, 1 = hidden, with ``n_hidden`` ones in every row.
        n_hidden: hidden patches per sample.

    Returns:
        ``(N, n_hidden)`` int64.
    """
    return torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_hidden]


def targets_at(
    imgs: torch.Tensor, valid: torch.Tensor | None, patch_size: int, norm_pix: bool, ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target patches ``(N, L or M, p*p*C)`` at ``ids`` (all if ``None``) and their bool validity
    (``None`` = all valid); see :func:`patch_targets`."""
    target = patchify(imgs, patch_size, ids)
    ok = None if valid is None else patchify(valid, patch_size, ids)
    if norm_pix:
        clean = torch.nan_to_num(target)
        if ok is None:
            count = torch.full_like(target[..., :1], target.shape[-1])
        else:
            okf = ok.to(target.dtype)
            count = okf.sum(-1, keepdim=True).clamp_min(1)
            clean = clean * okf
        mean = clean.sum(-1, keepdim=True) / count
        centred = clean - mean if ok is None else (clean - mean) * okf
        var = (centred**2).sum(-1, keepdim=True) / (count - 1).clamp_min(1)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target, ok


def patch_targets(
    imgs: torch.Tensor, valid: torch.Tensor | None, patch_size: int, norm_pix: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened target patches and their validity, ``(N, L, p*p*C)`` each.

    With ``norm_pix`` each patch is standardised by its own mean and variance over valid values
    (MAE's ``norm_pix_loss``).
    """
    target, ok = targets_at(imgs, valid, patch_size, norm_pix, None)
    return target, torch.ones_like(target) if ok is None else ok.to(target.dtype)


def sq_error_sum(
    pred: torch.Tensor, target: torch.Tensor, ok: torch.Tensor | None, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors over the counted values, and their number.

    Args:
        pred: ``(N, M, K)`` predictions.
        target: ``(N, M, K)`` targets; may be non-finite where ``ok`` is False, must be finite
            where counted.
        ok: ``(N, M, K)`` bool validity, or ``None`` (all valid).
        weight: ``(N, M)`` 0/1 per patch (e.g. the MAE mask), or ``None`` (every row counts).

    Returns:
        ``(sum, count)`` float32 scalars: the numbers ``masked_sq_error`` gives with the full
        ``(N, M, K)`` weight ``ok * weight``, without building that tensor.
    """
    pred, target = pred.float(), target.float()
    if ok is None and weight is None:  # the training path: rows are exactly the counted patches
        total = nn.functional.mse_loss(pred, target, reduction="sum")
        return total, torch.tensor(float(target.numel()), device=target.device)
    sq = (pred - target) ** 2
    if ok is None:
        per_patch = torch.full(pred.shape[:2], float(pred.shape[-1]), device=pred.device)
    else:
        sq = torch.where(ok, sq, 0.0)  # nodata may hold NaN: select, never multiply
        per_patch = ok.sum(-1, dtype=torch.float32)
    if weight is not None:
        sq = sq * weight.unsqueeze(-1).to(sq.dtype)  # (N, M, 1): broadcast, not an (N, M, K) copy
        per_patch = per_patch * weight
    return sq.sum(), per_patch.sum(dtype=torch.float32)


class MAE(nn.Module):
    """Masked autoencoder of one sensor's images.

    Args:
        encoder: the (shared) ViT encoder; must have a patch embedding for ``sensor``.
        sensor: sensor key of the input, e.g. ``"s2_l1c"``.
        decoder: decoder variant name (see ``DECODERS``).
        mask_ratio: fraction of patches hidden from the encoder.
        norm_pix_loss: per-patch normalised targets.
        seed: seed of the keyed masks.
    """

    tasks: tuple[str, ...] = ("mae",)

    def __init__(
        self,
        encoder: ViTEncoder,
        sensor: str = "s2_l1c",
        decoder: str = "vitlite_512d6b",
        *,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.sensor = sensor
        self.channels = encoder.in_chans[sensor]
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.seed = seed
        p = encoder.patch_size
        self.decoder: ViTDecoder = build_decoder(decoder, encoder.embed_dim, encoder.grid, p * p * self.channels)

    def term_weights(self, task: str) -> dict[str, float]:
        return {self.sensor: 1.0}

    def task_sensors(self, task: str) -> list[str]:
        return [self.sensor]

    def random_masking(self, step: int, index: torch.Tensor, length: int):
        return random_masking(self.seed, step, index, length, self.mask_ratio)

    def forward_encoder(
        self, imgs: torch.Tensor, step: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches.

        Args:
            imgs: ``(N, C, H, W)`` standardised images.
            step: optimizer step (keys the mask).
            index: ``(N,)`` global sample indices (key the mask).

        Returns:
            latent ``(N, 1 + L_vis, D)``, mask ``(N, L)`` (1 = hidden), ids_restore ``(N, L)``.
        """
        gh, gw = self.encoder.patch_grid(*imgs.shape[-2:])
        ids_keep, mask, ids_restore = self.random_masking(step, index, gh * gw)
        visible = self.encoder.embed(imgs, self.sensor, ids_keep)  # only the visible patches
        return self.encoder.forward_tokens(visible), mask, ids_restore

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        grid: tuple[int, int],
        ids_pred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the patches: latent ``(N, 1 + L_vis, D)`` -> ``(N, L, p*p*C)``, or
        ``(N, M, p*p*C)`` at grid positions ``ids_pred (N, M)`` (training predicts the hidden
        patches only: the loss never reads the others)."""
        return self.decoder(latent, grid, ids_restore, ids_pred)

    def forward_loss(
        self,
        imgs: torch.Tensor,
        pred: torch.Tensor,
        mask: torch.Tensor,
        valid: torch.Tensor | None,
        ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error summed over the masked, valid values, and their count.

        Args:
            imgs: ``(N, C, H, W)`` targets.
            pred: ``(N, L, p*p*C)``, or ``(N, M, p*p*C)`` at the grid positions ``ids``.
            mask: ``(N, L)``, 1 = hidden (counted).
            valid: ``(N, C, H, W)`` bool or ``None`` (all valid).
            ids: ``(N, M)`` grid positions of ``pred``'s rows, all hidden (``hidden_ids(mask)``);
                ``None`` = ``pred`` holds all ``L`` rows and ``mask`` picks the counted ones.
        """
        target, ok = targets_at(imgs, valid, self.encoder.patch_size, self.norm_pix_loss, ids)
        return sq_error_sum(pred, target, ok, mask if ids is None else None)

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        imgs = check_sensor_input(self, batch, self.sensor)
        return imgs, batch.get(f"valid.{self.sensor}"), self.encoder.patch_grid(*imgs.shape[-2:])

    def denominators(self, batch: Batch, task: str, step: int) -> dict[str, torch.Tensor]:
        imgs, valid, (gh, gw) = self._inputs(batch)
        _, mask, _ = self.random_masking(step, batch["index"], gh * gw)
        p = self.encoder.patch_size
        per_patch = (
            torch.full_like(mask, p * p * self.channels)
            if valid is None
            else patchify(valid.float(), p).sum(-1)
        )
        return {self.sensor: (per_patch * mask).sum()}

    def forward(self, batch: Batch, task: str = "mae", step: int = 0) -> dict[str, torch.Tensor]:
        imgs, valid, grid = self._inputs(batch)
        latent, mask, ids_restore = self.forward_encoder(imgs, step, batch["index"])
        hidden = hidden_ids(mask, mask.shape[1] - (latent.shape[1] - 1))  # latent: class token + visible
        pred = self.forward_decoder(latent, ids_restore, grid, hidden)
        num, _ = self.forward_loss(imgs, pred, mask, valid, hidden)
        return {self.sensor: num}

    @torch.no_grad()
    def visualize(self, batch: Batch, task: str, step: int) -> dict[str, Any]:
        """Input, masked input, reconstruction and reconstruction with visible patches pasted."""
        imgs, valid, grid = self._inputs(batch)
        latent, mask, ids_restore = self.forward_encoder(imgs, step, batch["index"])
        pred = self.forward_decoder(latent, ids_restore, grid).float()
        p = self.encoder.patch_size
        if self.norm_pix_loss:  # undo the per-patch normalisation for display
            target = patchify(torch.nan_to_num(imgs.float()), p)
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        recon = unpatchify(pred, p, grid, self.channels)
        hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * self.channels), p, grid, self.channels)
        masked = torch.where(hidden.bool(), torch.nan, imgs.float())
        pasted = torch.where(hidden.bool(), recon, imgs.float())
        return {
            "title": f"MAE on {self.sensor}: {self.mask_ratio:.0%} of patches hidden",
            "panels": [
                ("input", self.sensor, imgs.float()),
                ("masked input", self.sensor, masked),
                ("reconstruction", self.sensor, recon),
                ("reconstruction + visible", self.sensor, pasted),
            ],
        }
