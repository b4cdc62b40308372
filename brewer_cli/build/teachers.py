"""A recipe's teachers as slots — the one `teacher`, each of `teachers: [...]`, or each task's
`tasks.<name>.teacher` — and whether each is still to be trained. The slots follow the recipe's
shape, so every kind of distillation trains its missing teachers the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import Recipe, TeacherSpec, task_recipe


@dataclass(frozen=True)
class TeacherSlot:
    field: str  # the teacher's dotted path in the recipe: teacher, teachers.1, tasks.<name>.teacher
    spec: TeacherSpec
    recipe: Recipe  # whose task and data train it: the recipe, or a multi-task recipe's one task

    @property
    def only_teacher(self) -> bool:
        return self.field == "teacher"

    def missing_message(self) -> str:
        """Why this missing teacher cannot be trained, and the ways out."""
        if self.only_teacher:
            return (
                f"{self.recipe.path}: teacher.checkpoint: {self.spec.checkpoint!r} does not exist and the recipe has no "
                f"`teacher.train` section — train it first with `brewer train-teacher`, add `teacher.train`, or fix the path"
            )
        return (
            f"{self.recipe.path}: {self.field}.checkpoint: {self.spec.checkpoint!r} does not exist and this teacher has "
            f"no `train` section — train it first (`brewer train-teacher TRAINER_RECIPE --set name={_run_name(self.spec)}`), "
            f"add `{self.field}.train`, or fix the path"
        )


def teacher_slots(recipe: Recipe) -> list[TeacherSlot]:
    if recipe.teachers is not None:
        return [TeacherSlot(f"teachers.{index}", spec, recipe) for index, spec in enumerate(recipe.teachers)]
    if recipe.tasks is not None:
        return [
            TeacherSlot(f"tasks.{name}.teacher", entry.teacher, task_recipe(recipe, name)) for name, entry in recipe.tasks.items()
        ]
    if recipe.teacher is not None:
        return [TeacherSlot("teacher", recipe.teacher, recipe)]
    return []


def teacher_missing(recipe: Recipe, teacher: TeacherSpec | None = None) -> bool:
    """A teacher to train first: its checkpoint is not on disk and it is not a hub id to download
    (a checkpoint with a `train` section is always local: the run that trains it writes it)."""
    teacher = teacher or recipe.teacher
    value = teacher.checkpoint
    if value is None:
        return False
    return not resolve_path(value, recipe).exists() and (teacher.train is not None or not looks_like_hub_id(value))


def _run_name(spec: TeacherSpec) -> str:
    """The run name whose final/ directory the checkpoint names (…/<name>/final)."""
    path = Path(spec.checkpoint)
    return path.parent.name if path.name == "final" and path.parent.name else "…"
