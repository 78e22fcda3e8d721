"""Downstream evaluation (paper section 4): frozen / finetune heads on three task types, Table 2.

* :func:`evaluate` / :func:`run_evaluation`: one encoder, one task, one scenario ->
  ``metrics.json`` + ``predictions.png``.
* :func:`table`: the grid methods x scenarios x tasks x seeds -> ``table.md`` / ``table.csv``.
* :class:`EvalTask` + :func:`register_task`: how a dataset plugs in (simulated tasks built in).
"""

from s12mae.evaluation.config import SCENARIOS, EvalConfig, EvalDataConfig, HeadConfig
from s12mae.evaluation.heads import EvalModel, InputPlan, plan_input
from s12mae.evaluation.metrics import MultilabelMeter, SegmentationMeter, confusion_matrix, iou_from_confusion
from s12mae.evaluation.runner import build_model, evaluate, param_groups, run_evaluation
from s12mae.evaluation.table import format_table, table
from s12mae.evaluation.tasks import TASKS, EvalTask, build_task, register_task
from s12mae.evaluation import real as _real  # noqa: F401  (registers the real-data tasks)

__all__ = [
    "SCENARIOS",
    "TASKS",
    "EvalConfig",
    "EvalDataConfig",
    "EvalModel",
    "EvalTask",
    "HeadConfig",
    "InputPlan",
    "MultilabelMeter",
    "SegmentationMeter",
    "build_model",
    "build_task",
    "confusion_matrix",
    "evaluate",
    "format_table",
    "iou_from_confusion",
    "param_groups",
    "plan_input",
    "register_task",
    "run_evaluation",
    "table",
]
