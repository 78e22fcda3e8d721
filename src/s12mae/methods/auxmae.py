"""AuxMAE: a masked autoencoder with an auxiliary cross-sensor task (the paper's section 3.2).

One encoder is shared by two tasks, trained by alternating gradient descent (the loop's task
schedule picks one task per optimizer step):

1. ``"mae"``: the baseline MAE on the masked S2 image (a composed :class:`MAE`, unchanged);
2. ``"aux"``: the *unmasked* S2 image goes through the shared encoder and an auxiliary decoder
   predicts the co-located S1 image; the loss is the MSE over the whole S1 image (every patch,
   valid values only).

With ``norm_pix_loss`` the S1 target patches are standardised per patch too, as every
reconstruction target is (the rule of ``model.norm_pix_loss``, shared with MixMAE).

The target may have a finer grid than the input: with ``target_scale = s`` the S1 image is
``s`` times the S2 image's side, and each token predicts one ``(p*s) x (p*s)`` S1 patch, so the
token grid of input and target is the same. The encoder has a patch embedding for S2 only; S1
is never an input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from s12mae.methods.base import Batch, check_sensor_input, masked_sq_error
from s12mae.methods.mae import MAE, patch_targets
from s12mae.models.decoder import ViTDecoder, build_decoder
from s12mae.models.patches import patchify, unpatchify
from s12mae.models.vit import ViTEncoder

__all__ = ["AuxMAE"]


class AuxMAE(nn.Module):
    """MAE on one sensor plus prediction of an auxiliary sensor from the unmasked input.

    Args:
        mae: the MAE of task ``"mae"``; its encoder is the shared encoder.
        decoder: decoder variant of the auxiliary decoder (see ``DECODERS``).
        aux_sensor: sensor key of the auxiliary target, e.g. ``"s1_grd"``.
        aux_channels: channels of the auxiliary target (2 for S1 VV, VH).
        target_scale: side of the target image / side of the input image (integer >= 1).
    """

    tasks: tuple[str, ...] = ("mae", "aux")

    def __init__(
        self,
        mae: MAE,
        decoder: str = "vitlite_512d6b",
        *,
        aux_sensor: str = "s1_grd",
        aux_channels: int = 2,
        target_scale: int = 1,
    ) -> None:
        super().__init__()
        if target_scale < 1:
            raise ValueError(f"target_scale must be a positive integer, got {target_scale}")
        if aux_sensor == mae.sensor:
            raise ValueError(f"the auxiliary sensor must differ from the MAE's input sensor {mae.sensor!r}")
        self.mae = mae
        self.aux_sensor = aux_sensor
        self.aux_channels = aux_channels
        self.target_scale = target_scale
        enc = mae.encoder
        self.aux_patch_size = enc.patch_size * target_scale
        out_dim = self.aux_patch_size**2 * aux_channels
        self.aux_decoder: ViTDecoder = build_decoder(decoder, enc.embed_dim, enc.grid, out_dim)

    @property
    def encoder(self) -> ViTEncoder:
        """The shared encoder (held once, by the MAE, so each weight has one state-dict key)."""
        return self.mae.encoder

    @property
    def sensor(self) -> str:
        """Sensor key of the input (both tasks)."""
        return self.mae.sensor

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise KeyError(f"AuxMAE has tasks {self.tasks}, not {task!r}")

    def term_weights(self, task: str) -> dict[str, float]:
        self._check_task(task)
        return self.mae.term_weights(task) if task == "mae" else {self.aux_sensor: 1.0}

    def task_sensors(self, task: str) -> list[str]:
        self._check_task(task)
        return self.mae.task_sensors(task) if task == "mae" else [self.sensor, self.aux_sensor]

    def _aux_inputs(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """Input, target, target validity and token grid, with the target's shape checked."""
        imgs = check_sensor_input(self, batch, self.sensor)
        target = check_sensor_input(self, batch, self.aux_sensor)
        s = self.target_scale
        want = (imgs.shape[0], self.aux_channels, imgs.shape[-2] * s, imgs.shape[-1] * s)
        if tuple(target.shape) != want:
            idx = batch["index"].tolist() if "index" in batch else list(range(imgs.shape[0]))
            raise ValueError(
                f"samples {idx[:10]}: {self.aux_sensor} has shape {tuple(target.shape)} but "
                f"{self.sensor} {tuple(imgs.shape)} with target_scale {s} needs {want}"
            )
        grid = self.encoder.patch_grid(*imgs.shape[-2:])
        return imgs, target, batch.get(f"valid.{self.aux_sensor}"), grid

    def forward_encoder(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encode the unmasked input: ``(N, C, H, W) -> (N, 1 + L, D)``."""
        return self.encoder.forward_features(imgs, self.sensor)

    def forward_decoder(self, latent: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predict the target patches: ``(N, 1 + L, D) -> (N, L, (p*s)*(p*s)*C_aux)``."""
        return self.aux_decoder(latent, grid)

    def forward_loss(
        self, target: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared error summed over every valid target value, and their count.

        Args:
            target: ``(N, C_aux, H*s, W*s)``.
            pred: ``(N, L, (p*s)*(p*s)*C_aux)``.
            valid: ``(N, C_aux, H*s, W*s)`` bool or ``None`` (all valid).
        """
        target, ok = patch_targets(target, valid, self.aux_patch_size, norm_pix=self.mae.norm_pix_loss)
        return masked_sq_error(pred, target, ok)

    def denominators(self, batch: Batch, task: str, step: int) -> dict[str, torch.Tensor]:
        self._check_task(task)
        if task == "mae":
            return self.mae.denominators(batch, task, step)
        _, target, valid, _ = self._aux_inputs(batch)
        count = valid.sum(dtype=torch.float32) if valid is not None else torch.tensor(
            float(target.numel()), device=target.device
        )
        return {self.aux_sensor: count}

    def forward(self, batch: Batch, task: str = "mae", step: int = 0) -> dict[str, torch.Tensor]:
        self._check_task(task)
        if task == "mae":
            return self.mae(batch, task, step)
        imgs, target, valid, grid = self._aux_inputs(batch)
        pred = self.forward_decoder(self.forward_encoder(imgs), grid)
        num, _ = self.forward_loss(target, pred, valid)
        return {self.aux_sensor: num}

    @torch.no_grad()
    def visualize(self, batch: Batch, task: str, step: int) -> dict[str, Any]:
        """MAE panels for ``"mae"``; input, predicted and true target for ``"aux"``."""
        self._check_task(task)
        if task == "mae":
            return self.mae.visualize(batch, task, step)
        imgs, target, valid, grid = self._aux_inputs(batch)
        pred = self.forward_decoder(self.forward_encoder(imgs), grid).float()
        if self.mae.norm_pix_loss:  # undo the per-patch normalisation for display
            patches = patchify(torch.nan_to_num(target.float()), self.aux_patch_size)
            pred = pred * (patches.var(-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(-1, keepdim=True)
        pred_img = unpatchify(pred, self.aux_patch_size, grid, self.aux_channels)
        truth = target.float() if valid is None else torch.where(valid, target.float(), torch.nan)
        return {
            "title": f"AuxMAE: {self.sensor} -> {self.aux_sensor} (unmasked input)",
            "panels": [
                ("S2 input", self.sensor, imgs.float()),
                ("predicted S1", self.aux_sensor, pred_img),
                ("true S1", self.aux_sensor, truth),
            ],
        }
