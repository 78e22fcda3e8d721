"""MixMAE: a masked autoencoder whose "masked" patches come from another sensor (section 3.3).

Each sensor's image goes through its own patch embedding (with the position table), giving one
sequence of ``L`` tokens per sensor. Per sample, the ``L`` positions are split at random among
the sensors (argsort of keyed noise; ``k = L/2`` S2 and ``L - k`` S1 tokens by default, Figure 4's
complementary masks), and the shared encoder runs on that one mixed sequence. One decoder per
sensor reconstructs its sensor's full image, and each sensor's loss is the MSE over the patches
it did *not* contribute. With two sensors the loss is equation 1,
``L = lambda * L_S1 + (1 - lambda) * L_S2``: ``term_weights`` gives ``{S2: 1 - lambda, S1: lambda}``
and the loop normalises each term by its own global element count.

Beyond the paper (ours): any number of sensors with configurable proportions, an optional learned
sensor-identity embedding, and ``drop_ratio``, which removes a fraction of positions from the
encoder's input altogether (no sensor is visible there; every sensor's loss counts them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from s12mae.methods.base import Batch, check_sensor_input
from s12mae.methods.mae import sq_error_sum, targets_at
from s12mae.models.decoder import build_decoder
from s12mae.models.patches import patchify, unpatchify
from s12mae.models.vit import ViTEncoder
from s12mae.rng import keyed_uniform

__all__ = ["MixMAE", "random_mixing", "split_counts"]

STREAM_MIX = 2  # keyed-random stream of the sensor split (MAE masks use 1, the schedule 3)
STREAM_DROP = 4  # keyed-random stream of the dropped positions


def split_counts(length: int, proportions: Sequence[float]) -> list[int]:
    """Positions per sensor: floors of ``length * p / sum(p)``, the remainder handed out one
    each by largest fractional part (ties to the earlier sensor), so the counts sum to ``length``."""
    total = float(sum(proportions))
    exact = [length * p / total for p in proportions]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: length - sum(counts)]:
        counts[i] += 1
    if min(counts) < 1:
        raise ValueError(f"splitting {length} positions by {list(proportions)} leaves a sensor none")
    return counts


def random_mixing(
    seed: int, step: int, index: torch.Tensor, length: int, counts: Sequence[int], n_drop: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random split of the positions among sensors, by argsort of keyed noise.

    ``n_drop`` positions (stream 4) are dropped; the kept ones are shuffled (stream 2) and the
    first ``counts[0]`` go to sensor 0, the next ``counts[1]`` to sensor 1, and so on.

    Args:
        seed: run seed.
        step: optimizer step.
        index: ``(N,)`` global sample indices.
        length: positions per sample ``L``.
        counts: positions per sensor; ``sum(counts) + n_drop == L``.
        n_drop: positions no sensor shows.

    Returns:
        source ``(N, L)`` int64 sensor id per position (-1 = dropped), ids_keep ``(N, L - n_drop)``
        (kept positions in grid order), ids_restore ``(N, L)`` (unshuffles ``[kept, dropped]``).
    """
    if sum(counts) + n_drop != length:
        raise ValueError(f"counts {list(counts)} + {n_drop} dropped do not add up to {length} positions")
    noise = keyed_uniform(seed, STREAM_MIX, step, index, length)
    dropped = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    if n_drop:
        drop_noise = keyed_uniform(seed, STREAM_DROP, step, index, length)
        dropped = dropped.scatter(1, torch.argsort(drop_noise, dim=1, stable=True)[:, :n_drop], True)
        noise = noise.masked_fill(dropped, 2.0)  # dropped positions sort last
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    runs = [*enumerate(counts), (-1, n_drop)]  # sensor id per shuffled slot, -1 = dropped
    labels = torch.cat([torch.full((k,), s, dtype=torch.int64) for s, k in runs]).to(noise.device)
    source = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, labels.expand_as(ids_shuffle))
    order = torch.argsort(dropped.to(torch.int8), dim=1, stable=True)  # kept (grid order), then dropped
    return source, order[:, : length - n_drop], torch.argsort(order, dim=1, stable=True)


class MixMAE(nn.Module):
    """Masked autoencoder on a random patch-wise mixture of co-located sensor images.

    Args:
        encoder: the shared ViT encoder, with a patch embedding for every sensor in ``sensors``;
            after pretraining ``encoder.forward_features(x, sensors[0])`` is the downstream encoder.
        sensors: sensor keys to mix, e.g. ``["s2_l1c", "s1_grd"]``; all images share one size.
        decoder: decoder variant of every per-sensor decoder (see ``DECODERS``).
        proportions: relative share of the (kept) positions per sensor; ``None`` = equal (the
            paper's ``k = L/2`` for two sensors).
        loss_weights: weight of each sensor's loss, in the order of ``sensors``; ``None`` = equal.
            Equation 1 gives lambda to the S1 sensor wherever it is listed
            (:meth:`s12mae.config.MixConfig.loss_weights` computes them by sensor role).
        drop_ratio: fraction of positions removed before the encoder (ours; 0 = the paper).
        sensor_embedding: add a learned per-sensor vector to that sensor's tokens (ours; off).
            The paper does not say whether its tokens carry one. Downstream, the vector is part
            of the encoder only after :meth:`fold_sensor_embedding`.
        norm_pix_loss: per-patch normalised targets of every sensor, S1 included (the one rule
            of ``model.norm_pix_loss``, shared with AuxMAE's S1 target).
        seed: seed of the keyed mixes.
    """

    tasks: tuple[str, ...] = ("mix",)

    def __init__(
        self,
        encoder: ViTEncoder,
        sensors: Sequence[str] = ("s2_l1c", "s1_grd"),
        decoder: str = "vitlite_512d6b",
        *,
        proportions: Sequence[float] | None = None,
        loss_weights: Sequence[float] | None = None,
        drop_ratio: float = 0.0,
        sensor_embedding: bool = False,
        norm_pix_loss: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.sensors = list(sensors)
        n = len(self.sensors)
        proportions = [1.0] * n if proportions is None else list(proportions)
        loss_weights = [1.0 / n] * n if loss_weights is None else list(loss_weights)
        if n < 2 or len(set(self.sensors)) != n:
            raise ValueError(f"MixMAE needs two or more distinct sensors, got {self.sensors}")
        if len(proportions) != n or min(proportions) <= 0:
            raise ValueError(f"proportions must be {n} positive numbers, got {proportions}")
        if len(loss_weights) != n or min(loss_weights) < 0:
            raise ValueError(f"loss_weights must be {n} non-negative numbers, got {loss_weights}")
        if not 0.0 <= drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
        missing = [s for s in self.sensors if s not in encoder.patch_embed]
        if missing:
            raise ValueError(f"the encoder has no patch embedding for {missing}; it has {encoder.sensors}")
        self.encoder = encoder
        self.proportions, self.loss_weights = proportions, loss_weights
        self.drop_ratio, self.norm_pix_loss, self.seed = drop_ratio, norm_pix_loss, seed
        self.channels = {s: encoder.in_chans[s] for s in self.sensors}
        p, dim = encoder.patch_size, encoder.embed_dim
        self.decoders = nn.ModuleDict(
            {s: build_decoder(decoder, dim, encoder.grid, p * p * c) for s, c in self.channels.items()}
        )
        self.sensor_embed: nn.ParameterDict | None = None
        if sensor_embedding:
            self.sensor_embed = nn.ParameterDict(
                {s: nn.Parameter(torch.randn(1, 1, dim) * 0.02) for s in self.sensors}
            )

    def term_weights(self, task: str) -> dict[str, float]:
        return dict(zip(self.sensors, self.loss_weights))

    def task_sensors(self, task: str) -> list[str]:
        return list(self.sensors)

    def no_weight_decay(self) -> set[str]:
        return {f"sensor_embed.{s}" for s in self.sensors} if self.sensor_embed is not None else set()

    @torch.no_grad()
    def fold_sensor_embedding(self) -> None:
        """Move the sensor vectors into the patch-embedding biases (same outputs), so that the
        exported encoder adds them too."""
        if self.sensor_embed is not None:
            for s, vec in self.sensor_embed.items():
                self.encoder.patch_embed[s].proj.bias += vec.flatten()
                vec.zero_()

    def prepare_export(self) -> None:
        """Called by the loop before the encoder is exported: fold the sensor embeddings in."""
        self.fold_sensor_embedding()

    def mixing(
        self, step: int, index: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``source (N, L)``, ``ids_keep (N, L_keep)``, ``ids_restore (N, L)`` (see :func:`random_mixing`)."""
        counts, n_drop = self._split(length)
        return random_mixing(self.seed, step, index, length, counts, n_drop)

    def _split(self, length: int) -> tuple[list[int], int]:
        """Positions per sensor and dropped positions, out of ``length``."""
        n_drop = int(length * self.drop_ratio + 1e-9)  # guard 0.1 * 10 = 0.999...
        return split_counts(length - n_drop, self.proportions), n_drop

    @staticmethod
    def _positions(source: torch.Tensor, sensor_id: int, count: int, shown: bool) -> torch.Tensor:
        """``(N, count)`` grid positions (in grid order) that sensor ``sensor_id`` shows
        (``shown``) or does not show, from ``source (N, L)``; ``count`` is the same every row."""
        others = (source != sensor_id) if shown else (source == sensor_id)
        return torch.argsort(others.to(torch.int8), dim=1, stable=True)[:, :count]

    def forward_encoder(
        self, imgs: dict[str, torch.Tensor], step: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the mixed sequence.

        Args:
            imgs: sensor -> ``(N, C_s, H, W)`` standardised images.
            step: optimizer step (keys the mix).
            index: ``(N,)`` global sample indices (key the mix).

        Returns:
            latent ``(N, 1 + L_keep, D)``, source ``(N, L)`` (-1 = dropped), ids_restore ``(N, L)``.
        """
        gh, gw = self.encoder.patch_grid(*imgs[self.sensors[0]].shape[-2:])
        source, ids_keep, ids_restore = self.mixing(step, index, gh * gw)
        counts, n_drop = self._split(gh * gw)
        shown = []  # per sensor: its positions (N, k_s) and their tokens (N, k_s, D)
        for i, s in enumerate(self.sensors):
            ids = self._positions(source, i, counts[i], shown=True)
            tok = self.encoder.embed(imgs[s], s, ids)  # only the patches this sensor shows
            shown.append((ids, tok if self.sensor_embed is None else tok + self.sensor_embed[s]))
        first = shown[0][1]
        mixed = first.new_zeros(first.shape[0], gh * gw, first.shape[-1])  # dropped positions stay 0
        for ids, tok in shown:
            mixed = mixed.scatter(1, ids.unsqueeze(-1).expand(-1, -1, tok.shape[-1]), tok.to(mixed.dtype))
        kept = torch.gather(mixed, 1, ids_keep.unsqueeze(-1).expand(-1, -1, mixed.shape[-1])) if n_drop else mixed
        return self.encoder.forward_tokens(kept), source, ids_restore

    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        grid: tuple[int, int],
        ids_pred: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every sensor's patches: latent ``(N, 1 + L_keep, D)`` -> sensor -> ``(N, L, p*p*C_s)``,
        or ``(N, M_s, p*p*C_s)`` at grid positions ``ids_pred[sensor]`` (training predicts only
        the patches each loss counts)."""
        ids_pred = ids_pred or {}
        return {s: self.decoders[s](latent, grid, ids_restore, ids_pred.get(s)) for s in self.sensors}

    def forward_loss(
        self,
        imgs: dict[str, torch.Tensor],
        preds: dict[str, torch.Tensor],
        source: torch.Tensor,
        valid: dict[str, torch.Tensor | None],
        ids: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per sensor, squared error summed over the valid values of the patches it did not
        contribute (including dropped ones), and their count.

        Args:
            imgs: sensor -> ``(N, C_s, H, W)`` targets.
            preds: sensor -> ``(N, L, p*p*C_s)``, or ``(N, M_s, p*p*C_s)`` at ``ids[sensor]``.
            source: ``(N, L)`` contributing sensor id per position, -1 = dropped.
            valid: sensor -> ``(N, C_s, H, W)`` bool or ``None`` (all valid).
            ids: sensor -> ``(N, M_s)`` grid positions of that sensor's prediction rows, all
                ones it did not contribute; ``None`` (or a missing sensor) = all ``L`` rows, of
                which ``source`` picks the counted ones.
        """
        out, p = {}, self.encoder.patch_size
        for i, s in enumerate(self.sensors):
            rows = (ids or {}).get(s)
            target, ok = targets_at(imgs[s], valid[s], p, self.norm_pix_loss, rows)
            out[s] = sq_error_sum(preds[s], target, ok, source != i if rows is None else None)
        return out

    def _inputs(
        self, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None], tuple[int, int]]:
        imgs = {s: check_sensor_input(self, batch, s) for s in self.sensors}
        sizes = {s: tuple(x.shape[-2:]) for s, x in imgs.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"MixMAE mixes images of one size; got {sizes}")
        valid = {s: batch.get(f"valid.{s}") for s in self.sensors}
        return imgs, valid, self.encoder.patch_grid(*imgs[self.sensors[0]].shape[-2:])

    def denominators(self, batch: Batch, task: str, step: int) -> dict[str, torch.Tensor]:
        imgs, valid, (gh, gw) = self._inputs(batch)
        source, _, _ = self.mixing(step, batch["index"], gh * gw)
        p, out = self.encoder.patch_size, {}
        for i, s in enumerate(self.sensors):
            v = valid[s]
            per_patch = (
                torch.full(source.shape, p * p * self.channels[s], device=source.device)
                if v is None
                else patchify(v.float(), p).sum(-1)
            )
            out[s] = (per_patch * (source != i)).sum().float()
        return out

    def forward(self, batch: Batch, task: str = "mix", step: int = 0) -> dict[str, torch.Tensor]:
        imgs, valid, grid = self._inputs(batch)
        latent, source, ids_restore = self.forward_encoder(imgs, step, batch["index"])
        counts, _ = self._split(source.shape[1])
        unseen = {
            s: self._positions(source, i, source.shape[1] - counts[i], shown=False)
            for i, s in enumerate(self.sensors)
        }
        preds = self.forward_decoder(latent, ids_restore, grid, unseen)
        return {s: num for s, (num, _) in self.forward_loss(imgs, preds, source, valid, unseen).items()}

    @torch.no_grad()
    def visualize(self, batch: Batch, task: str, step: int) -> dict[str, Any]:
        """Figure-4 panels: each input, the source map, each mixed input and each reconstruction.

        The source map is drawn in the first sensor's bands: its patches bright, the last
        sensor's dark (others in between), dropped patches grey.
        """
        imgs, valid, grid = self._inputs(batch)
        latent, source, ids_restore = self.forward_encoder(imgs, step, batch["index"])
        preds = self.forward_decoder(latent, ids_restore, grid)
        p, first = self.encoder.patch_size, self.sensors[0]

        def per_pixel(values: torch.Tensor, channels: int) -> torch.Tensor:  # (N, L) -> (N, C, H, W)
            return unpatchify(values.unsqueeze(-1).expand(-1, -1, p * p * channels), p, grid, channels)

        levels = torch.linspace(3.0, -3.0, len(self.sensors), device=source.device)  # standardised
        src_map = torch.where(source >= 0, levels[source.clamp_min(0)], torch.nan)
        panels = [("input", s, imgs[s].float()) for s in self.sensors]
        panels.append(("source map", first, per_pixel(src_map, self.channels[first])))
        for i, s in enumerate(self.sensors):
            shown = per_pixel((source == i).float(), self.channels[s]).bool()
            panels.append(("mixed input", s, torch.where(shown, imgs[s].float(), torch.nan)))
        for s in self.sensors:
            pred = preds[s].float()
            if self.norm_pix_loss:  # undo the per-patch normalisation for display
                target = patchify(torch.nan_to_num(imgs[s].float()), p)
                pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
            panels.append(("reconstruction", s, unpatchify(pred, p, grid, self.channels[s])))
        shares = ", ".join(f"{s} {w:g}" for s, w in zip(self.sensors, self.proportions))
        return {
            "title": f"MixMAE: patches split {shares}; {self.drop_ratio:.0%} dropped; "
            f"source map bright = {first}, dark = {self.sensors[-1]}, grey = dropped",
            "panels": panels,
        }
