"""Registered tasks; `task.kind` in a recipe names one of them."""

from __future__ import annotations

from brewer_cli.registry import Registry
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset
from brewer_cli.tasks.sequence_classification import SequenceClassification

TASKS: Registry[type[Task]] = Registry("task")
TASKS.add(
    "sequence_classification",
    SequenceClassification,
    "one label per text or text pair (`data.text_pair`); num_labels: 1 is regression. Metrics: accuracy, F1 (binary), Pearson/Spearman",
)

__all__ = ["TASKS", "Task", "PreparedData", "TokenizedDataset"]
