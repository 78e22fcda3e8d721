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

__all__ = ["SCENARIOS", "EvalConfig", "EvalDataConfig", "HeadConfig"]

SCENARIOS = ("finetune", "frozen")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass
class HeadConfig:
    """The new prediction head put on the encoder."""

    pool: Literal["mean", "cls"] = "mean"
    """Classification: linear probe on the mean of the patch tokens (``mean``, DESIGN-NOTES 2) or
    on the class token (``cls``)."""
    segmentation: Literal["vitlite", "upsample"] = "vitlite"
    """Segmentation head: ``vitlite`` = a ViT-Lite decoder on all tokens (no masking) whose final
    Linear predicts ``p_out * p_out * num_classes`` per token, unpatchified (the paper's choice);
    ``upsample`` = a 1x1 convolution on the last feature map and bilinear upsampling (ours, cheap)."""
    decoder: str = "vitlite_512d6b"
    """ViT-Lite variant of the ``vitlite`` segmentation head (``vitlite_{width}d{depth}b``)."""

    def __post_init__(self) -> None:
        _check(self.pool in ("mean", "cls"), f"head.pool: must be 'mean' or 'cls', got {self.pool!r}")
        _check(self.segmentation in ("vitlite", "upsample"),
               f"head.segmentation: must be 'vitlite' or 'upsample', got {self.segmentation!r}")
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
    sim_seed: int = 100
    """Simulation seed of the training split; the test split uses ``sim_seed + 1`` (ours)."""
    test_fraction: float = 0.2
    """Share of the scenes of a dataset folder (``path``) held out as the test set (its tail)."""
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
        for name, low in (("img_size", 4), ("num_train", 1), ("num_test", 1), ("sim_seed", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                   f"data.{name}: must be an integer >= {low}, got {value!r}")
        _check(0.0 < self.test_fraction < 1.0, f"data.test_fraction: must be in (0, 1), got {self.test_fraction}")
        _check(self.cloud in ("ignore", "class", "none"),
               f"data.cloud: must be 'ignore', 'class' or 'none', got {self.cloud!r}")
        _check(self.resize in ("nearest_multiple", "none"),
               f"data.resize: must be 'nearest_multiple' or 'none', got {self.resize!r}")
        _check(self.missing_bands in ("zeros", "error"),
               f"data.missing_bands: must be 'zeros' or 'error', got {self.missing_bands!r}")


def _default_optim() -> OptimConfig:
    return OptimConfig(name="adafactor", lr=1e-2, warmup_steps=10, weight_decay=0.05)


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
    untrained encoder (a floor)."""
    out_dir: str = "runs/eval"
    """Folder for ``metrics.json`` and ``predictions.png``."""
    steps: int = 500
    """Optimizer steps (ours; the paper trains 10K-30K)."""
    batch_size: int = 32
    """Samples per step (ours; the paper uses 4096)."""
    eval_batch_size: int = 64
    """Samples per forward pass on the test set."""
    seed: int = 0
    """Seed of the head's initialisation, the random encoder and the sample order."""
    layer_decay: float = 1.0
    """Finetune: lr of encoder block ``i`` (of ``depth``) is ``lr * layer_decay ** (depth - i)``,
    the embeddings get ``layer_decay ** (depth + 1)``, the final norm and the head ``1`` (BEiT);
    1.0 turns it off."""
    random_encoder: str = "vit_base_patch16"
    """Encoder variant built when ``checkpoint`` is ``random``."""
    random_sensor: str = "s2_l1c"
    """Sensor of the random encoder's patch embedding (the pretraining input)."""
    optim: OptimConfig = field(default_factory=_default_optim)
    """Optimizer (AdaFactor, the paper's, or AdamW) and warmup + cosine schedule."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """The new head."""
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    """Task data."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto`` = bf16 autocast on CUDA, fp32 on CPU."""
    threads: int | None = None
    """Torch CPU threads (``None``: leave torch's default)."""
    progress: bool = True
    """Progress bar on a terminal, plain lines in a log file."""
    num_plot: int = 4
    """Test samples drawn in ``predictions.png``."""

    def __post_init__(self) -> None:
        _check(self.scenario in SCENARIOS, f"scenario: must be one of {SCENARIOS}, got {self.scenario!r}")
        _check(bool(self.checkpoint), "checkpoint: give an encoder file or 'random'")
        for name, low in (("steps", 1), ("batch_size", 1), ("eval_batch_size", 1), ("seed", 0), ("num_plot", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                   f"{name}: must be an integer >= {low}, got {value!r}")
        _check(0.0 < self.layer_decay <= 1.0, f"layer_decay: must be in (0, 1], got {self.layer_decay}")
        _check(self.random_encoder in ENCODERS,
               f"random_encoder: unknown variant {self.random_encoder!r}; known: {sorted(ENCODERS)}")
        _check(self.precision in ("auto", "fp32", "bf16"), f"precision: must be auto, fp32 or bf16, got {self.precision!r}")
        _check(self.threads is None or self.threads >= 1, f"threads: must be >= 1, got {self.threads}")
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        if isinstance(self.data, dict):
            self.data = EvalDataConfig(**self.data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d
