"""Typed configuration of a pretraining run.

Nested dataclasses with a docstring per field and validation in ``__post_init__``. The CLI and
YAML files are generated from them by jsonargparse (unknown keys are errors that name the key),
and the resolved config is saved as ``config.yaml`` in every run folder. Values the paper does
not give are ours and marked "(ours)".

Settings of one method live in that method's section of ``model`` (``model.aux``, ``model.mix``),
built by keyword. The flat keys they replaced (``model.mix_lambda``, ...) are errors naming their
new place (:data:`MOVED_KEYS`); a run folder written before keeps working: its ``config.yaml`` is
upgraded on read when the run is resumed (:func:`upgrade_saved_config`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from s12mae.models.decoder import DECODERS
from s12mae.models.vit import ENCODERS
from s12mae.paths import is_url
from s12mae.sensors import get_sensor
from s12mae.simulate import SimulationConfig

__all__ = [
    "MOVED_KEYS",
    "AuxConfig",
    "DataConfig",
    "MixConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "ProbeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "check_moved_keys",
    "upgrade_saved_config",
]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass
class AuxConfig:
    """AuxMAE's auxiliary task: predict another sensor's image from the unmasked input."""

    sensor: str = "s1_grd"
    """Sensor key of the auxiliary target (the paper's S1)."""
    target_scale: int = 1
    """Side of the target image / side of the input image (e.g. 4 for a 2.5 m target from 10 m
    S2); the data must deliver the target at that size."""

    def __post_init__(self) -> None:
        _check(self.target_scale >= 1, f"model.aux.target_scale: must be >= 1, got {self.target_scale}")


@dataclass
class MixConfig:
    """MixMAE: the sensors whose patches are mixed and the weights of their losses."""

    sensors: list[str] = field(default_factory=lambda: ["s2_l1c", "s1_grd"])
    """Sensor keys whose patches are mixed; the first is the downstream input sensor."""
    proportions: list[float] | None = None
    """Relative share of the positions per sensor; ``None`` = equal (the paper's k = L/2)."""
    lam: float = 0.5
    """Lambda of equation 1, ``L = lam * L_S1 + (1 - lam) * L_S2`` (the paper's 0.5): the loss
    weight of the sensor of the ``s1`` family, whatever its place in ``sensors``; ``1 - lam`` is
    the weight of the other sensor. With more sensors (ours) the ``s1`` sensors share ``lam`` and
    the others ``1 - lam`` equally."""
    drop_ratio: float = 0.0
    """Fraction of positions no sensor shows, left out of the encoder (ours; 0 = the paper)."""
    sensor_embedding: bool = False
    """Add a learned per-sensor vector to each sensor's tokens (ours; the paper is silent)."""

    def __post_init__(self) -> None:
        n, props = len(self.sensors), self.proportions
        _check(n >= 2 and len(set(self.sensors)) == n,
               f"model.mix.sensors: need two or more distinct sensors, got {self.sensors}")
        _check(props is None or (len(props) == n and min(props) > 0),
               f"model.mix.proportions: need {n} positive numbers (one per mix sensor), got {props}")
        _check(0.0 <= self.lam <= 1.0, f"model.mix.lam: must be in [0, 1], got {self.lam}")
        _check(0.0 <= self.drop_ratio < 1.0, f"model.mix.drop_ratio: must be in [0, 1), got {self.drop_ratio}")
        s1 = _s1_flags(self.sensors)
        _check(0 < sum(s1) < n, f"model.mix.sensors: lam weighs the loss of the S1 sensor against the others, "
               f"so the sensors need both an s1-family sensor and another one; got {self.sensors}")

    def loss_weights(self) -> list[float]:
        """Loss weight per sensor, by role (equation 1): ``lam`` shared by the ``s1``-family
        sensors, ``1 - lam`` shared by the others; ``[1 - lam, lam]`` for ``[s2_l1c, s1_grd]`` and
        ``[lam, 1 - lam]`` for ``[s1_grd, s2_l1c]``."""
        s1 = _s1_flags(self.sensors)
        n_s1 = sum(s1)
        return [self.lam / n_s1 if is_s1 else (1.0 - self.lam) / (len(s1) - n_s1) for is_s1 in s1]


def _s1_flags(sensors: list[str]) -> list[bool]:
    """Whether each sensor key is of the ``s1`` family (its spec in ``sensors.yaml``)."""
    return [get_sensor(k).family == "s1" for k in sensors]


@dataclass
class ModelConfig:
    """Encoder, decoders, the MAE task and the sections of the methods that build on it."""

    encoder: str = "vit_base_patch16"
    """Encoder variant, ``vit_{nano,tiny,small,base,large}_patch{8,16}``."""
    decoder: str = "vitlite_512d6b"
    """Decoder variant of every decoder of the method (``vitlite_{width}d{depth}b``)."""
    img_size: int = 224
    """Side of the square input in pixels; a multiple of the patch size (ours: the paper gives none)."""
    sensor: str = "s2_l1c"
    """Sensor key of the masked input of the MAE task (MAE and AuxMAE)."""
    mask_ratio: float = 0.75
    """Fraction of patches hidden from the encoder in the MAE task."""
    norm_pix_loss: bool = False
    """Standardise each target patch by its own mean and variance (MAE option). One rule for every
    reconstructed target (ours): MAE's, AuxMAE's S1 target and each of MixMAE's sensors, S1 included."""
    drop_path: float = 0.0
    """Stochastic-depth rate of the encoder's last block."""
    aux: AuxConfig = field(default_factory=AuxConfig)
    """AuxMAE's auxiliary task (read with ``method: auxmae``)."""
    mix: MixConfig = field(default_factory=MixConfig)
    """MixMAE's sensors and loss weights (read with ``method: mixmae``)."""

    def __post_init__(self) -> None:
        _check(self.encoder in ENCODERS, f"model.encoder: unknown variant {self.encoder!r}; known: {sorted(ENCODERS)}")
        _check(self.decoder in DECODERS, f"model.decoder: unknown variant {self.decoder!r}; known: {sorted(DECODERS)}")
        p = ENCODERS[self.encoder].patch_size
        _check(
            self.img_size > 0 and self.img_size % p == 0,
            f"model.img_size: {self.img_size} is not divisible by the patch size {p} of {self.encoder}",
        )
        _check(0.0 < self.mask_ratio < 1.0, f"model.mask_ratio: must be in (0, 1), got {self.mask_ratio}")
        _check(0.0 <= self.drop_path < 1.0, f"model.drop_path: must be in [0, 1), got {self.drop_path}")


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
    val_samples: int = 0
    """Samples held out of training as the fixed validation set of the held-out loss (ours): the
    same rows of each array dataset, drawn once with a fixed seed, never in a training batch;
    0 = none. Shard-set tasks need their own held-out shards (not supported yet)."""
    max_empty_steps: int = 0
    """Steps a run tolerates (with a warning each) whose loss term has no valid target element in
    the whole batch (all nodata where the loss counts); one more stops the run (ours: 0)."""

    def __post_init__(self) -> None:
        _check(self.val_samples >= 0, f"data.val_samples: must be >= 0, got {self.val_samples}")
        _check(self.num_workers >= 0, f"data.num_workers: must be >= 0, got {self.num_workers}")
        _check(self.max_empty_steps >= 0, f"data.max_empty_steps: must be >= 0, got {self.max_empty_steps}")
        _check(self.shuffle_buffer >= 1, f"data.shuffle_buffer: must be >= 1, got {self.shuffle_buffer}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (lr, warmup and decay are ours: the paper gives none)."""

    name: Literal["adafactor", "adamw"] = "adafactor"
    """``adafactor`` (the paper's: ``torch.optim.Adafactor``'s algorithm, stepped faster on the CPU by
    :class:`s12mae.train.adafactor.Adafactor`) or ``adamw``."""
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
class ProbeConfig:
    """The periodic frozen probe of ``train.probe_every``: a small fixed labelled set (ours)."""

    task: str = "sen1floods11"
    """Downstream task (``sen1floods11``, ``bigearthnet``, ``srseg``), as ``s12mae evaluate``'s."""
    kind: Literal["linear", "knn"] = "linear"
    """``linear``: the closed-form ridge probe of ``s12mae evaluate`` (lambda picked on the
    validation split); ``knn``: the mean target of the ``k`` nearest training rows (cosine)."""
    k: int = 10
    """Neighbours of the ``knn`` probe."""
    source: str = "simulated"
    """Task data source, as the evaluation's ``data.source`` (``simulated`` or ``real``)."""
    path: str | None = None
    """Dataset folder of the task (``real``: the Sen1Floods11 / BigEarthNet layout); ``None``
    simulates in memory."""
    num_train: int = 64
    """Samples the probe is fitted on (simulated: scenes simulated; real: the first of the split)."""
    num_val: int = 32
    """Samples that pick the ridge penalty (validation split, or held out of train)."""
    num_test: int = 32
    """Samples the logged score is computed on."""
    img_size: int | None = None
    """Simulated scenes' side in pixels; ``None`` = ``model.img_size``."""
    batch_size: int = 32
    """Samples per encoder forward while the probe computes features."""

    def __post_init__(self) -> None:
        for name in ("k", "num_train", "num_val", "num_test", "batch_size"):
            _check(getattr(self, name) >= 1, f"train.probe.{name}: must be >= 1, got {getattr(self, name)}")
        _check(self.img_size is None or self.img_size >= 4, f"train.probe.img_size: must be >= 4, got {self.img_size}")
        _check(self.kind in ("linear", "knn"), f"train.probe.kind: must be 'linear' or 'knn', got {self.kind!r}")


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
    """Run folder: config, metrics.jsonl, loss curve, pictures, checkpoints. A URL (``s3://``,
    ``gs://``, ...) keeps the run on object storage: it works in ``local_dir`` and uploads after
    every checkpoint and at the end (:mod:`s12mae.train.mirror`)."""
    local_dir: str | None = None
    """Local working folder of a run whose ``out_dir`` is a URL; ``None`` = one per URL under
    ``$S12MAE_CACHE/runs`` (``~/.cache/s12mae/runs``). Ignored for a local ``out_dir``."""
    log_every: int = 1
    """Write a metrics line every this many steps."""
    checkpoint_every: int = 100
    """Save a resumable checkpoint every this many steps (and at the end)."""
    threads: int | None = None
    """torch CPU threads per process; ``None`` leaves torch's default."""
    progress: bool = True
    """Show a progress bar with loss and samples/s."""
    compile: bool | Literal["auto"] = "auto"
    """``torch.compile`` the transformer blocks: ``auto`` = on CUDA only, ``true`` also on CPU
    (needs a C++ compiler; pays for long runs), ``false`` never."""
    grad_checkpointing: bool = False
    """Recompute the encoder blocks' activations in the backward pass: less memory, ~1/3 more
    compute (for large encoders or large micro-batches)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """With several ranks: ``ddp`` replicates the model (one all-reduce per step); ``fsdp``
    shards parameters, gradients and optimizer state over the ranks (FSDP2; for ViT-L and
    larger) and writes sharded checkpoints (torch.distributed.checkpoint)."""
    logger: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    """Sinks of the step records: ``jsonl`` (``metrics.jsonl``, always written), ``tensorboard``
    (event files in ``<out_dir>/tensorboard``), ``wandb`` (the ``[wandb]`` extra; offline unless
    ``WANDB_MODE`` says otherwise)."""
    eval_every: int = 0
    """Held-out reconstruction loss of every task every this many steps (and at the last step) on
    the ``data.val_samples`` held-out samples; 0 = never (ours)."""
    probe_every: int = 0
    """Frozen probe of the current encoder on ``probe``'s small labelled set every this many steps
    (and at the last step), on rank 0; logged and plotted (``probe_curve.png``); 0 = never (ours)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Task, kind and sizes of the periodic frozen probe (read with ``probe_every > 0``)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.logger) - {"jsonl", "tensorboard", "wandb"})
        _check(not unknown, f"train.logger: unknown logger(s) {unknown}; known: jsonl, tensorboard, wandb")
        _check(self.eval_every >= 0, f"train.eval_every: must be >= 0, got {self.eval_every}")
        _check(not (self.eval_every and self.parallel == "fsdp"),
               "train.eval_every: the held-out loss runs on rank 0 alone, which an FSDP-sharded model "
               "cannot do; use train.parallel=ddp or train.eval_every=0")
        _check(self.probe_every >= 0, f"train.probe_every: must be >= 0, got {self.probe_every}")
        _check(not (self.parallel == "fsdp" and is_url(self.out_dir)),
               f"train.out_dir: {self.out_dir.split('://')[0]}:// with train.parallel=fsdp: every rank writes its "
               "own checkpoint shards, which are not mirrored to object storage; use a folder every rank can write")
        _check(not (self.probe_every and self.parallel == "fsdp"),
               "train.probe_every: the frozen probe runs on rank 0 alone, which an FSDP-sharded model "
               "cannot do; use train.parallel=ddp or train.probe_every=0")
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

    method: str = "mae"
    """Pretraining method, a name in the registry ``s12mae.methods.METHODS`` (``mae``, ``auxmae``,
    ``mixmae``); the command line offers exactly those."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.steps < self.optim.warmup_steps:
            warnings.warn(f"train.steps={self.train.steps} is shorter than optim.warmup_steps="
                          f"{self.optim.warmup_steps}: the learning rate never reaches optim.lr={self.optim.lr}",
                          stacklevel=2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MOVED_KEYS: dict[str, str] = {
    "model.aux_sensor": "model.aux.sensor",
    "model.aux_target_scale": "model.aux.target_scale",
    "model.mix_sensors": "model.mix.sensors",
    "model.mix_proportions": "model.mix.proportions",
    "model.mix_lambda": "model.mix.lam",
    "model.mix_loss_weights": "model.mix.lam",
    "model.mix_drop_ratio": "model.mix.drop_ratio",
    "model.mix_sensor_embedding": "model.mix.sensor_embedding",
}
"""Flat keys of the configs before the per-method sections -> their new place. ``mix_loss_weights``
has no field of its own any more: ``model.mix.lam`` is the one way to weigh MixMAE's losses."""


def check_moved_keys(keys: Iterable[str], source: str) -> None:
    """One error naming the new place of every old flat key among ``keys`` (dotted, e.g.
    ``model.mix_lambda``) read from ``source`` (a file or "the command line")."""
    moved = [f"{k} is now {MOVED_KEYS[k]}" for k in dict.fromkeys(keys) if k in MOVED_KEYS]
    if moved:
        raise ValueError(f"{source}: {'; '.join(moved)} (MixMAE's and AuxMAE's settings have their own "
                         "sections, model.mix and model.aux; see configs/)")


def upgrade_saved_config(saved: dict[str, Any], source: str) -> dict[str, Any]:
    """A run folder's ``config.yaml`` written before the per-method sections, in today's layout.

    Old flat ``model.aux_*`` / ``model.mix_*`` keys move into ``model.aux`` / ``model.mix``; MixMAE's
    loss weights (``mix_lambda`` by the old positional rule, or ``mix_loss_weights``) become the
    ``lam`` that gives the same weights by today's rule (by sensor role), and weights no ``lam``
    gives are an error naming ``source``. A config without old keys
    is returned unchanged.
    """
    model = dict(saved.get("model") or {})
    if not any(f"model.{k}" in MOVED_KEYS for k in model):
        return saved
    aux, mix = dict(model.get("aux") or {}), dict(model.get("mix") or {})
    weights = model.pop("mix_loss_weights", None)
    for key in [k for k in model if f"model.{k}" in MOVED_KEYS]:
        value = model.pop(key)
        _, section, name = MOVED_KEYS[f"model.{key}"].split(".")
        (aux if section == "aux" else mix)[name] = value
    lam, sensors = mix.get("lam", 0.5), mix.get("sensors", MixConfig().sensors)
    if weights is None:  # the old positional rule: [1 - lambda, lambda]; equal weights for more sensors
        weights = [1.0 - lam, lam] if len(sensors) == 2 else [1.0 / len(sensors)] * len(sensors)
    s1 = _s1_flags(sensors)
    lam = sum(w for w, is_s1 in zip(weights, s1) if is_s1)
    n_s1 = sum(s1)
    if not (len(sensors) == len(weights) and 0 < n_s1 < len(sensors) and math.isclose(sum(weights), 1.0)
            and all(math.isclose(w, lam / n_s1 if is_s1 else (1 - lam) / (len(s1) - n_s1))
                    for w, is_s1 in zip(weights, s1))):
        raise ValueError(f"{source}: MixMAE loss weights {weights} of sensors {sensors} in this run cannot be "
                         "written as model.mix.lam (lam shared by the s1-family sensors, 1 - lam by the others)")
    mix["lam"] = lam
    return {**saved, "model": {**model, "aux": aux, "mix": mix}}
