"""Typed configuration of a pretraining run.

Nested dataclasses with a docstring per field and validation in ``__post_init__``. The CLI and
YAML files are generated from them by jsonargparse (unknown keys are errors that name the key),
and the resolved config is saved as ``config.yaml`` in every run folder. Values the paper does
not give are ours and marked "(ours)".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from s12mae.models.decoder import DECODERS
from s12mae.models.vit import ENCODERS
from s12mae.simulate import SimulationConfig

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "ScheduleConfig", "TrainConfig"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass
class ModelConfig:
    """Encoder, decoders and the masking of the pretraining method."""

    encoder: str = "vit_base_patch16"
    """Encoder variant, ``vit_{nano,tiny,small,base,large}_patch{8,16}``."""
    decoder: str = "vitlite_512d6b"
    """Decoder variant of every decoder of the method (``vitlite_{width}d{depth}b``)."""
    img_size: int = 224
    """Side of the square input in pixels; a multiple of the patch size (ours: the paper gives none)."""
    sensor: str = "s2_l1c"
    """Sensor key of the masked input (the MAE task)."""
    aux_sensor: str = "s1_grd"
    """Sensor key of the auxiliary target that AuxMAE predicts from the unmasked input."""
    aux_target_scale: int = 1
    """AuxMAE: side of the target image / side of the input image (e.g. 4 for a 2.5 m target
    from 10 m S2); the data must deliver the target at that size."""
    mask_ratio: float = 0.75
    """Fraction of patches hidden from the encoder in the MAE task."""
    norm_pix_loss: bool = False
    """Standardise each target patch by its own mean and variance (MAE option)."""
    drop_path: float = 0.0
    """Stochastic-depth rate of the encoder's last block."""
    mix_sensors: list[str] = field(default_factory=lambda: ["s2_l1c", "s1_grd"])
    """MixMAE: sensor keys whose patches are mixed; the first is the downstream input sensor."""
    mix_proportions: list[float] | None = None
    """MixMAE: relative share of the positions per sensor; ``None`` = equal (the paper's k = L/2)."""
    mix_lambda: float = 0.5
    """MixMAE with two sensors: weight of the second sensor's loss (S1), 1 - lambda for the first
    (equation 1, the paper's 0.5); used when ``mix_loss_weights`` is ``None``."""
    mix_loss_weights: list[float] | None = None
    """MixMAE: loss weight per sensor (any number of sensors); ``None`` = from ``mix_lambda`` for
    two sensors, equal for more."""
    mix_drop_ratio: float = 0.0
    """MixMAE: fraction of positions no sensor shows, left out of the encoder (ours; 0 = paper)."""
    mix_sensor_embedding: bool = False
    """MixMAE: add a learned per-sensor vector to each sensor's tokens (ours; the paper is silent)."""

    def __post_init__(self) -> None:
        _check(self.encoder in ENCODERS, f"model.encoder: unknown variant {self.encoder!r}; known: {sorted(ENCODERS)}")
        _check(self.decoder in DECODERS, f"model.decoder: unknown variant {self.decoder!r}; known: {sorted(DECODERS)}")
        p = ENCODERS[self.encoder].patch_size
        _check(
            self.img_size > 0 and self.img_size % p == 0,
            f"model.img_size: {self.img_size} is not divisible by the patch size {p} of {self.encoder}",
        )
        _check(self.aux_target_scale >= 1, f"model.aux_target_scale: must be >= 1, got {self.aux_target_scale}")
        _check(0.0 < self.mask_ratio < 1.0, f"model.mask_ratio: must be in (0, 1), got {self.mask_ratio}")
        _check(0.0 <= self.drop_path < 1.0, f"model.drop_path: must be in [0, 1), got {self.drop_path}")
        n, props, weights = len(self.mix_sensors), self.mix_proportions, self.mix_loss_weights
        _check(n >= 2 and len(set(self.mix_sensors)) == n,
               f"model.mix_sensors: need two or more distinct sensors, got {self.mix_sensors}")
        _check(props is None or (len(props) == n and min(props) > 0),
               f"model.mix_proportions: need {n} positive numbers (one per mix sensor), got {props}")
        _check(0.0 <= self.mix_lambda <= 1.0, f"model.mix_lambda: must be in [0, 1], got {self.mix_lambda}")
        _check(weights is None or (len(weights) == n and min(weights) >= 0 and sum(weights) > 0),
               f"model.mix_loss_weights: need {n} non-negative numbers, not all 0, got {weights}")
        _check(weights is None or self.mix_lambda == 0.5,
               "model.mix_lambda and model.mix_loss_weights: set one of them, not both")
        _check(0.0 <= self.mix_drop_ratio < 1.0,
               f"model.mix_drop_ratio: must be in [0, 1), got {self.mix_drop_ratio}")


@dataclass
class DataConfig:
    """Where samples come from and how they are standardised."""

    path: str | None = None
    """Dataset of every task: a ``s12mae simulate`` folder or a shard set written by
    ``s12mae shards`` (a folder with ``shards.json``); ``None`` simulates ``simulated`` in memory."""
    task_paths: dict[str, str] | None = None
    """Per-task datasets overriding ``path``, e.g. ``{mae: shards/s2-all, aux: shards/pairs}``:
    under AGD each task draws from its own dataset (all S2 images for the MAE task, pairs for
    the paired task)."""
    shuffle_buffer: int = 1024
    """Samples in the shuffle buffer of a shard stream (each rank and worker has its own)."""
    simulated: SimulationConfig = field(default_factory=SimulationConfig)
    """Scene simulation used when ``path`` is ``None``."""
    stats: str | None = None
    """Band statistics file written by ``s12mae stats``; ``None`` uses the shipped defaults."""
    nodata: Literal["error", "mask"] = "error"
    """Non-finite or nodata pixels: ``error`` stops naming the sample; ``mask`` fills them with 0
    and leaves them out of every loss."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, f"data.num_workers: must be >= 0, got {self.num_workers}")
        _check(self.shuffle_buffer >= 1, f"data.shuffle_buffer: must be >= 1, got {self.shuffle_buffer}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (lr, warmup and decay are ours: the paper gives none)."""

    name: Literal["adafactor", "adamw"] = "adafactor"
    """``adafactor`` (the paper's, ``torch.optim.Adafactor``) or ``adamw``."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 10
    """Linear warmup from 0 to ``lr``."""
    weight_decay: float = 0.05
    """Decoupled weight decay (not applied to biases, norms, class and mask tokens)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (MAE's)."""
    clip_grad: float | None = 1.0
    """Clip the global gradient norm to this value; ``None`` disables clipping."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr: must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, f"optim.min_lr: must be in [0, lr], got {self.min_lr}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        _check(self.clip_grad is None or self.clip_grad > 0, f"optim.clip_grad: must be > 0, got {self.clip_grad}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class ScheduleConfig:
    """Which task each optimizer step trains (alternating gradient descent for several tasks)."""

    sequence: list[str] | None = None
    """Explicit repeating task sequence, e.g. ``[mae, aux]``; overrides ``weights``."""
    weights: dict[str, float] | None = None
    """Relative task frequencies drawn per step from the run seed; ``None`` alternates strictly."""


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 100
    """Optimizer steps in the whole run."""
    batch_size: int = 32
    """Global batch per optimizer step (the paper's is 4096), split over ranks and micro-batches."""
    micro_batch_size: int | None = None
    """Samples per forward pass per rank; ``None`` = batch_size / world size (no accumulation)."""
    seed: int = 0
    """Seeds weights, data order, masks and the task schedule."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``..."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto`` = bf16 autocast on CUDA, fp32 on CPU."""
    out_dir: str = "runs/pretrain"
    """Run folder: config, metrics.jsonl, loss curve, pictures, checkpoints."""
    log_every: int = 1
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many steps (and at the end)."""
    threads: int | None = None
    """torch CPU threads per process; ``None`` leaves torch's default."""
    progress: bool = True
    """Show a progress bar with loss and samples/s."""

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"train.steps: must be > 0, got {self.steps}")
        _check(self.batch_size > 0, f"train.batch_size: must be > 0, got {self.batch_size}")
        _check(
            self.micro_batch_size is None or self.micro_batch_size > 0,
            f"train.micro_batch_size: must be > 0, got {self.micro_batch_size}",
        )
        _check(self.log_every > 0, f"train.log_every: must be > 0, got {self.log_every}")
        _check(self.checkpoint_every > 0, f"train.checkpoint_every: must be > 0, got {self.checkpoint_every}")


@dataclass
class PretrainConfig:
    """A pretraining run: method, model, data, optimizer, schedule and loop."""

    method: Literal["mae", "auxmae", "mixmae"] = "mae"
    """Pretraining method."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
