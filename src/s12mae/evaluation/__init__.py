"""Downstream evaluation (paper section 4): frozen / finetune heads on three task types, Table 2.

* :func:`evaluate` (an :class:`EvalConfig`) / :func:`run_evaluation`: one encoder, one task, one
  scenario -> ``metrics.json`` + ``predictions.png`` + ``curves.png``.
* :func:`table` (a :class:`TableConfig`): the grid models x scenarios x tasks x seeds, with the
  ``pixels`` and ``random init`` baselines and the closed-form ridge probe -> ``table.md`` / ``table.csv``.
* :func:`robustness` (a :class:`RobustnessConfig`): heads trained on clean data, tested with S1
  shifted and S2 clouded, per input (``s2``, ``s1``, ``both``).
* :class:`EvalTask` + :func:`register_task`: how a dataset plugs in (simulated tasks built in).

How a head is trained, validated, selected and checked for convergence: :mod:`.fitting`.
"""

from s12mae.evaluation import real as _real  # noqa: F401  (registers the real-data tasks)
from s12mae.evaluation.config import (
    BASELINES,
    SCENARIOS,
    EvalConfig,
    EvalDataConfig,
    FitConfig,
    HeadConfig,
    TableConfig,
)
from s12mae.evaluation.features import PixelEncoder, Standardize
from s12mae.evaluation.fitting import FitResult, convergence, fit, param_groups
from s12mae.evaluation.heads import EvalModel, InputPlan, plan_input
from s12mae.evaluation.metrics import MultilabelMeter, SegmentationMeter, confusion_matrix, iou_from_confusion
from s12mae.evaluation.probes import ridge_probe
from s12mae.evaluation.robustness import RobustnessConfig, robustness
from s12mae.evaluation.runner import build_model, evaluate, prepare_splits, run_evaluation
from s12mae.evaluation.table import format_table, table
from s12mae.evaluation.tasks import TASKS, EvalTask, build_task, register_task, with_validation

__all__ = [
    "BASELINES",
    "SCENARIOS",
    "TASKS",
    "EvalConfig",
    "EvalDataConfig",
    "EvalModel",
    "EvalTask",
    "FitConfig",
    "FitResult",
    "HeadConfig",
    "InputPlan",
    "MultilabelMeter",
    "PixelEncoder",
    "RobustnessConfig",
    "SegmentationMeter",
    "Standardize",
    "TableConfig",
    "build_model",
    "build_task",
    "confusion_matrix",
    "convergence",
    "evaluate",
    "fit",
    "format_table",
    "iou_from_confusion",
    "param_groups",
    "plan_input",
    "prepare_splits",
    "register_task",
    "ridge_probe",
    "robustness",
    "run_evaluation",
    "table",
    "with_validation",
]
