"""Typed configuration of a downstream evaluation run (the paper's section 4, Table 2).

Nested dataclasses with a docstring per field and validation in ``__post_init__``, in the style
of :mod:`s12mae.config` (whose :class:`~s12mae.config.OptimConfig` is reused as is). Values the
paper does not give are ours and marked "(ours)": the paper trains 10K-30K steps at batch 4096
with AdaFactor and gives no learning rate, warmup or head shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from s12mae.config import OptimConfig
from s12mae.models.decoder import DECODERS
from s12mae.models.vit import ENCODERS

__all__ = ["BASELINES", "SCENARIOS", "EvalConfig", "EvalDataConfig", "FitConfig", "HeadConfig", "TableConfig"]

SCENARIOS = ("finetune", "frozen")
BASELINES = ("pixels", "random")
"""Encoders that need no file: ``pixels`` (no encoder: the head reads the raw standardised patch
pixels) and ``random`` (an untrained encoder)."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass
class HeadConfig:
    """The new prediction head put on the encoder."""

    pool: Literal["mean", "cls"] = "mean"
    """Classification: linear probe on the mean of the patch tokens (``mean``, DESIGN-NOTES 2) or
    on the class token (``cls``)."""
    segmentation: Literal["linear", "vitlite", "upsample"] = "linear"
    """Segmentation head: ``linear`` (default, ours) = each standardised patch token maps linearly
    to the ``p_out * p_out * num_classes`` logits of its own output patch: a linear probe for
    dense tasks, the closed-form ridge probe's model class, cheap enough to converge;
    ``vitlite`` = a ViT-Lite decoder on all tokens (no masking) whose final Linear is that map
    (the paper's choice; it learns spatial context of its own, and a transformer head wants a
    smaller learning rate: ``fit.optim.lr=1e-3``, ours); ``upsample`` = a 1x1 convolution on the
    last feature map and bilinear upsampling (ours, cheapest, blurs within a patch)."""
    decoder: str = "vitlite_512d6b"
    """ViT-Lite variant of the ``vitlite`` segmentation head (``vitlite_{width}d{depth}b``)."""
    standardize: bool = True
    """Standardise the head's input per feature with training-set statistics (mean and std of
    every channel over the training split; class token and patch tokens separately) before the
    linear probe or the segmentation head: MAE's linear probe does the same with a BatchNorm
    without affine parameters. Pretrained tokens are dominated by one shared direction, and an
    unstandardised head needs many more steps to find the rest. Finetuning keeps the statistics
    of the encoder it started from. ``False`` feeds the tokens as they are."""

    def __post_init__(self) -> None:
        _check(self.pool in ("mean", "cls"), f"head.pool: must be 'mean' or 'cls', got {self.pool!r}")
        _check(self.segmentation in ("linear", "vitlite", "upsample"),
               f"head.segmentation: must be 'linear', 'vitlite' or 'upsample', got {self.segmentation!r}")
        _check(self.decoder in DECODERS, f"head.decoder: unknown variant {self.decoder!r}; known: {sorted(DECODERS)}")


@dataclass
class EvalDataConfig:
    """Where the task's samples come from and how they are fitted to the encoder."""

    source: str = "simulated"
    """Task data source; ``simulated`` uses the built-in simulator, real readers register their own
    (see :func:`s12mae.evaluation.tasks.register_task`)."""
    path: str | None = None
    """Dataset folder (a simulated one from ``s12mae simulate``: train/test split by index, the
    last ``test_fraction`` of the scenes are the test set); ``None`` simulates in memory, with
    train and test from separate simulation seeds."""
    stats: str | None = None
    """Band statistics file (``s12mae stats``); ``None`` uses the shipped defaults. Use the file
    the encoder was pretrained with."""
    img_size: int = 64
    """Simulated scenes: side of the input image in pixels (10 m)."""
    num_train: int = 256
    """Simulated scenes in the training split (in-memory simulation)."""
    num_test: int = 64
    """Simulated scenes in the test split (in-memory simulation)."""
    num_val: int = 64
    """Simulated scenes in the validation split (in-memory simulation)."""
    sim_seed: int = 100
    """Simulation seed of the training split; test and validation use ``sim_seed + 1`` and
    ``sim_seed + 2`` (ours)."""
    test_fraction: float = 0.2
    """Share of the scenes of a dataset folder (``path``) held out as the test set (its tail)."""
    val_fraction: float = 0.2
    """Tasks without a validation split (a simulated dataset folder, real data without split
    files): this share of the training split, drawn with a fixed seed, is held out for
    validation (ours)."""
    cloud: Literal["ignore", "class", "none"] = "ignore"
    """Water task on simulated data: cloud pixels are ignored (``-1``, as invalid pixels in the
    Sen1Floods11 labels; default), a third class ``cloud`` (trained and in mIoU; the headline stays
    the water IoU), or keep their land-cover water/background label (``none``)."""
    resize: Literal["nearest_multiple", "none"] = "nearest_multiple"
    """Inputs whose size the patch does not divide (BigEarthNet's 120 px) are resized bilinearly to
    the nearest multiple (128 for patch 16; DESIGN-NOTES 7); predictions are resized back to the
    label grid. ``none`` makes such inputs an error."""
    missing_bands: Literal["zeros", "error"] = "zeros"
    """Encoder bands the task's sensor lacks (B10 for an L2A task on an L1C encoder) are filled
    with 0, the standardised band mean (``zeros``), or are an error."""

    def __post_init__(self) -> None:
        for name, low in (("img_size", 4), ("num_train", 1), ("num_test", 1), ("num_val", 1), ("sim_seed", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                   f"data.{name}: must be an integer >= {low}, got {value!r}")
        _check(0.0 < self.test_fraction < 1.0, f"data.test_fraction: must be in (0, 1), got {self.test_fraction}")
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        _check(self.cloud in ("ignore", "class", "none"),
               f"data.cloud: must be 'ignore', 'class' or 'none', got {self.cloud!r}")
        _check(self.resize in ("nearest_multiple", "none"),
               f"data.resize: must be 'nearest_multiple' or 'none', got {self.resize!r}")
        _check(self.missing_bands in ("zeros", "error"),
               f"data.missing_bands: must be 'zeros' or 'error', got {self.missing_bands!r}")


def _default_optim() -> OptimConfig:
    return OptimConfig(name="adamw", lr=1e-2, warmup_steps=100, weight_decay=0.05, betas=(0.9, 0.999))


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class FitConfig:
    """How the head (and, finetuning, the encoder) is trained and which state is reported.

    The paper trains 10K-30K steps at batch 4096 with AdaFactor and gives no learning rate,
    warmup or selection rule: every default here is ours, chosen so that the heads of the demo's
    simulated tasks and of the shared real samples converge (``benchmarks/RESULTS.md``).
    """

    steps: int = 2000
    """Optimizer steps (ours). Frozen heads train on features computed once, so steps are cheap."""
    batch_size: int = 8
    """Samples per step (ours; a segmentation sample holds thousands of labelled pixels)."""
    optim: OptimConfig = field(default_factory=_default_optim)
    """Optimizer and warmup + cosine schedule; ``lr`` is the head's peak learning rate (ours:
    AdamW, lr 1e-2 for the linear heads on standardised features, 100 warmup steps)."""
    encoder_lr_scale: float = 0.1
    """Finetune: the encoder's learning rate is the head's times this (ours), then decayed per
    block by ``layer_decay``; a pretrained encoder needs smaller steps than a new head."""
    layer_decay: float = 0.75
    """Finetune: encoder block ``i`` (of ``depth``) gets ``layer_decay ** (depth - i)`` of the
    encoder's rate, the embeddings ``layer_decay ** (depth + 1)``, the final norm ``1`` (BEiT;
    0.75 is MAE's finetuning value); 1.0 turns it off."""
    val_every: int | None = None
    """Steps between validation passes; ``None``: ``steps // 10`` (at least 1; ours)."""
    select: Literal["val_metric", "val_loss", "last"] = "val_metric"
    """Which state is tested: the validation pass with the best headline metric (default), the
    lowest validation loss, or the last step. Never chosen by the test split."""
    converge_tol: float = 0.2
    """A run is flagged as not converged when its validation loss fell, per unit of learning rate
    spent, faster over the second half of the run than this share of its average over the whole
    run (ours; see :func:`s12mae.evaluation.fitting.convergence`)."""
    max_loss_pixels: int = 16384
    """Frozen runs with the ``linear`` segmentation head: when an image has more label pixels
    than this, each step's loss reads a random subset of its patches holding about this many
    (every pixel under them; 4x super-resolution at 64 px: 16 of 64 patches; ours). An unbiased
    estimate of the full loss at a fraction of the cost; validation and test score every pixel."""
    cache_gb: float = 4.0
    """Frozen: features are computed once per split and kept in memory (on the device) when all
    splits fit in this many GB; otherwise they are recomputed every step. 0 never caches."""

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("max_loss_pixels", 1)):
            _check(_int_at_least(getattr(self, name), low),
                   f"fit.{name}: must be an integer >= {low}, got {getattr(self, name)!r}")
        _check(self.val_every is None or _int_at_least(self.val_every, 1),
               f"fit.val_every: must be None or an integer >= 1, got {self.val_every!r}")
        _check(0.0 < self.encoder_lr_scale <= 1.0, f"fit.encoder_lr_scale: must be in (0, 1], got {self.encoder_lr_scale}")
        _check(0.0 < self.layer_decay <= 1.0, f"fit.layer_decay: must be in (0, 1], got {self.layer_decay}")
        _check(self.select in ("val_metric", "val_loss", "last"),
               f"fit.select: must be 'val_metric', 'val_loss' or 'last', got {self.select!r}")
        _check(self.converge_tol >= 0.0, f"fit.converge_tol: must be >= 0, got {self.converge_tol}")
        _check(self.cache_gb >= 0, f"fit.cache_gb: must be >= 0, got {self.cache_gb}")
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)

    @property
    def every(self) -> int:
        """Steps between validation passes (``val_every`` resolved)."""
        return self.val_every or max(self.steps // 10, 1)


@dataclass
class EvalConfig:
    """One downstream run: an encoder, a new head, a task and a scenario."""

    task: str = "sen1floods11"
    """Task name: ``sen1floods11`` (water segmentation), ``bigearthnet`` (multi-label
    classification) or ``srseg`` (4x super-resolution segmentation, UrbanSRSeg8-style)."""
    scenario: Literal["frozen", "finetune"] = "frozen"
    """``frozen``: only the head trains, the encoder stays in eval mode with ``requires_grad``
    False; ``finetune``: encoder and head train."""
    checkpoint: str = "random"
    """``encoder.safetensors`` of any pretraining run or an imported MAE encoder; ``random`` is an
    untrained encoder (a floor); ``pixels`` is no encoder: the head reads the raw standardised
    patch pixels (what the task's pixels alone give)."""
    out_dir: str = "runs/eval"
    """Folder for ``metrics.json``, ``predictions.png`` and ``curves.png``."""
    seed: int = 0
    """Seed of the head's initialisation, the random encoder and the sample order."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Training protocol: steps, optimizer, validation and selection."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """The new head."""
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    """Task data."""
    ridge: bool = True
    """Frozen: also fit a closed-form ridge probe on the same standardised features (its penalty
    chosen on the validation split) and record it beside the trained head: a check of what the
    features hold that no training protocol can spoil."""
    random_encoder: str = "vit_base_patch16"
    """Encoder variant built for ``checkpoint="random"``; its patch size is also the patch of
    ``pixels``."""
    random_sensor: str = "s2_l1c"
    """Sensor of the random encoder's patch embedding (the pretraining input)."""
    eval_batch_size: int = 64
    """Samples per forward pass when computing features, validating and testing."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto`` = bf16 autocast on CUDA, fp32 on CPU."""
    threads: int | None = None
    """Torch CPU threads (``None``: leave torch's default)."""
    progress: bool = True
    """Progress bar on a terminal, plain lines in a log file."""
    num_plot: int = 4
    """Test samples drawn in ``predictions.png`` (0: no pictures, no ``curves.png``)."""
    logger: list[Literal["jsonl", "tensorboard", "wandb"]] = field(default_factory=lambda: ["jsonl"])
    """Sinks of the head's training: ``jsonl`` (the curves in ``metrics.json``, always written),
    ``tensorboard`` (event files in ``<out_dir>/tensorboard``: ``train/loss``, ``val/loss``,
    ``val/metric``, ``test/<metric>``), ``wandb`` (the ``[wandb]`` extra; offline unless
    ``WANDB_MODE`` says otherwise); each records the resolved config and the code version."""

    def __post_init__(self) -> None:
        self.logger = list(self.logger)
        unknown = sorted(set(self.logger) - {"jsonl", "tensorboard", "wandb"})
        _check(not unknown, f"logger: unknown logger(s) {unknown}; known: jsonl, tensorboard, wandb")
        _check(self.scenario in SCENARIOS, f"scenario: must be one of {SCENARIOS}, got {self.scenario!r}")
        _check(bool(self.checkpoint), "checkpoint: give an encoder file, 'random' or 'pixels'")
        for name, low in (("eval_batch_size", 1), ("seed", 0), ("num_plot", 0)):
            _check(_int_at_least(getattr(self, name), low),
                   f"{name}: must be an integer >= {low}, got {getattr(self, name)!r}")
        _check(self.random_encoder in ENCODERS,
               f"random_encoder: unknown variant {self.random_encoder!r}; known: {sorted(ENCODERS)}")
        _check(self.precision in ("auto", "fp32", "bf16"), f"precision: must be auto, fp32 or bf16, got {self.precision!r}")
        _check(self.threads is None or self.threads >= 1, f"threads: must be >= 1, got {self.threads}")
        for name, cls in (("fit", FitConfig), ("head", HeadConfig), ("data", EvalDataConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fit"]["optim"]["betas"] = list(d["fit"]["optim"]["betas"])
        return d


@dataclass
class TableConfig:
    """The grid models x scenarios x tasks x seeds of the paper's Table 2."""

    checkpoints: dict[str, str] = field(default_factory=dict)
    """Model name -> ``encoder.safetensors`` (or ``random`` / ``pixels``), in row order, e.g.
    ``{"MAE": "runs/mae/encoder.safetensors", "AuxMAE": ...}``."""
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    """Rows added after the checkpoints: ``pixels`` (the head on raw standardised patch pixels,
    no encoder) and ``random`` (shown as ``random init``, an untrained ``run.random_encoder``).
    An encoder that does not beat them has learnt nothing the task needs."""
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    """``finetune`` and/or ``frozen``, in row order."""
    tasks: list[str] = field(default_factory=lambda: ["bigearthnet", "sen1floods11", "srseg"])
    """Task names, in column order."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of every cell (head init, random encoder, sample order)."""
    out_dir: str = "runs/table"
    """Writes ``table.md``, ``table.csv``, ``table.json`` and ``runs/<scenario>/<model>/<task>/seed<s>/``."""
    steps: dict[str, int] | None = None
    """Per-task optimizer steps (``{"srseg": 10000}``); tasks not named use ``run.fit.steps``."""
    run: EvalConfig = field(default_factory=EvalConfig)
    """Settings shared by every run (fit, head, data, ridge, device, ...); its ``task``,
    ``scenario``, ``checkpoint``, ``seed`` and ``out_dir`` are set per cell."""

    def __post_init__(self) -> None:
        if isinstance(self.run, dict):
            self.run = EvalConfig(**self.run)
        self.baselines, self.scenarios, self.tasks = list(self.baselines), list(self.scenarios), list(self.tasks)
        self.seeds = list(self.seeds)
        _check(bool(self.checkpoints) or bool(self.baselines),
               "table: give at least one checkpoint (name -> encoder.safetensors) or baseline")
        bad = [b for b in self.baselines if b not in BASELINES]
        _check(not bad, f"table.baselines: unknown {bad}; known: {list(BASELINES)}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        _check(not bad, f"table.scenarios: unknown {bad}; known: {list(SCENARIOS)}")
        _check(bool(self.scenarios) and bool(self.tasks) and bool(self.seeds),
               "table: scenarios, tasks and seeds must not be empty")
        _check(all(_int_at_least(s, 0) for s in self.seeds), f"table.seeds: must be integers >= 0, got {self.seeds}")
        clash = [n for n in self.checkpoints if n in self.baseline_names().values()]
        _check(not clash, f"table.checkpoints: name(s) {clash} are taken by the baselines; rename or drop them")
        if self.steps is not None:
            unknown = [t for t in self.steps if t not in self.tasks]
            _check(not unknown, f"table.steps: task(s) {unknown} are not among tasks {self.tasks}")
            _check(all(_int_at_least(v, 1) for v in self.steps.values()),
                   f"table.steps: must be integers >= 1, got {self.steps}")

    def baseline_names(self) -> dict[str, str]:
        """Baseline checkpoint -> row name (``random`` is shown as ``random init``)."""
        return {b: "random init" if b == "random" else b for b in self.baselines}

    def rows(self) -> dict[str, str]:
        """Every row of the table: model name -> checkpoint, the baselines last."""
        return {**self.checkpoints, **{name: b for b, name in self.baseline_names().items()}}
