"""A built run: what `brewer_cli.build` makes of a recipe and the loop, the summary and the plan read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.distillers import Distiller
from brewer_cli.families.loading import LoadedModel
from brewer_cli.recipe import Recipe
from brewer_cli.tasks import PreparedData


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    task: Any  # a Task, or the group of tasks of a multi-task run
    data: PreparedData
    student: LoadedModel  # for kind `trainer`: the model being trained
    teachers: list[LoadedModel]
    distiller: Distiller

    @property
    def teacher(self) -> LoadedModel | None:
        return self.teachers[0] if self.teachers else None

    @property
    def collate(self) -> Any:
        """What batches the training split (the distiller's)."""
        return self.distiller.collate

    @property
    def role(self) -> str:
        """What the trained model is called in plans and summaries."""
        return "student" if self.distiller.needs_teacher else "model"
