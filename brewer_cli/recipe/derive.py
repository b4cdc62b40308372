"""Recipes made from a recipe: the teacher's training run, one task of a multi-task recipe, the
stages of a staged recipe, evaluation on another split, training on augmented data.

Each goes through `derive`, which starts from the recipe as written to the run directory
(`resolved_mapping`), replaces whole top-level fields and validates the result, so that a derived
recipe passes every check a written one does and keeps the file it came from (`path`, which
relative paths and messages read).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from brewer_cli.paths import resolve_path
from brewer_cli.recipe.distillation import (
    BasicDistillation,
    TrainerDistillation,
    kind_of,
)
from brewer_cli.recipe.load import resolved_mapping, section_mapping, validate_recipe
from brewer_cli.recipe.origins import derived_origins, located, speaking_of
from brewer_cli.recipe.schema import Recipe
from brewer_cli.recipe.sections import DataSource, TeacherSpec


def derive(recipe: Recipe, changes: dict[str, Any], origins: dict[str, str | None] | None = None) -> Recipe:
    """`recipe` with the top-level fields in `changes` replaced (given as mappings, as in a recipe
    file); a value of None removes the field. `origins`: where the user wrote the replaced parts,
    as paths of `recipe` (`model` → `teacher.train.model`; None: written by brewer), so that
    messages about the derived recipe name the user's fields (brewer_cli.recipe.origins)."""
    raw = resolved_mapping(recipe)
    for field, value in changes.items():
        if value is None:
            raw.pop(field, None)
        else:
            raw[field] = value
    derived = located(recipe.path, derived_origins(recipe, origins or {}))
    with speaking_of(SimpleNamespace(path=derived)):
        return validate_recipe(raw, derived)


def _data_with(recipe: Recipe, **fields: Any) -> dict[str, Any]:
    """The recipe's `data` with some of its fields replaced (None removes one)."""
    data = section_mapping(recipe.data)
    for field, value in fields.items():
        if value is None:
            data.pop(field, None)
        else:
            data[field] = value
    return data


# ============================================================================= the teacher


def teacher_training_recipe(recipe: Recipe, teacher: TeacherSpec | None = None) -> Recipe:
    """The `trainer` recipe that `teacher.train` describes; its run directory is the parent of
    `teacher.checkpoint` (…/<run name>/final). `teacher`: one of several (multi-teacher), trained
    on the recipe's task and data."""
    teacher = teacher or recipe.teacher
    return derive(
        recipe,
        {
            "name": Path(teacher.checkpoint).parent.name,
            # The teacher learns from the original data: augmentation (data.augment) serves distillation only.
            "data": _data_with(recipe, augment=None),
            "model": section_mapping(teacher.train.model),
            "training": section_mapping(teacher.train.training),
            "distillation": {"kind": kind_of(TrainerDistillation)},
            # A trainer recipe has one model, no teachers or student, and runs in one go.
            "teacher": None,
            "teachers": None,
            "tasks": None,
            "student": None,
            "stages": None,
            # The teacher's run is a step of this one: only the recipe's own result is pushed.
            "hub": None,
        },
        {
            "model": f"{_teacher_field(recipe, teacher)}.train.model",
            "training": f"{_teacher_field(recipe, teacher)}.train.training",
            **dict.fromkeys(("distillation", "teacher", "teachers", "tasks", "student", "stages")),
        },
    )


def _teacher_field(recipe: Recipe, teacher: TeacherSpec) -> str:
    """Where `teacher` is in `recipe`: `teacher`, or `teachers.<index>` for one of several."""
    for index, spec in enumerate(recipe.teachers or ()):
        if spec == teacher:
            return f"teachers.{index}"
    return "teacher"


def teacher_run_parent(recipe: Recipe, teacher: TeacherSpec | None = None) -> Path:
    """The output directory of the teacher's training run: `checkpoint` is <parent>/<run name>/final."""
    return resolve_path((teacher or recipe.teacher).checkpoint, recipe).parent.parent


# ============================================================================= multi-task


def task_recipe(recipe: Recipe, name: str) -> Recipe:
    """One task of a multi-task recipe as a single-task `basic` recipe (the same student, training
    and KD settings): what evaluating that task and training its teacher read."""
    entry = recipe.tasks[name]
    # The KD settings a basic distillation has; the multi-task ones (task sampling) stay behind.
    settings = {
        field: value for field, value in section_mapping(recipe.distillation).items() if field in BasicDistillation.model_fields
    }
    settings["kind"] = kind_of(BasicDistillation)
    return derive(
        recipe,
        {
            "name": f"{recipe.name}.{name}",
            "task": section_mapping(entry.task),
            "data": section_mapping(entry.data),
            "teacher": section_mapping(entry.teacher),
            "tasks": None,
            "distillation": settings,
            "hub": None,
        },
        {section: f"tasks.{name}.{section}" for section in ("task", "data", "teacher")},
    )


# ============================================================================= stages


def stage_directory(parent: Path, index: int) -> Path:
    return parent / f"stage-{index}"


def stage_recipes(recipe: Recipe, parent: Path) -> list[tuple[str, Recipe]]:
    """(label, recipe) per stage, 1-based in the order they run; `parent` is the staged run's directory.
    Stage k: `name: stage-k`, the stage's distillation, the recipe's training with the stage's
    fields replaced, the stage's own task, data and teacher where it gives them, and after stage 1
    the previous stage's final/ as the student."""
    training = section_mapping(recipe.training)
    result = []
    for index, stage in enumerate(recipe.stages, 1):
        changes: dict[str, Any] = {
            "name": stage_directory(parent, index).name,
            "training": {**training, **stage.training},
            "distillation": section_mapping(stage.distillation),
            "stages": None,
            # The staged run pushes its final student once, after the last stage (commands._train_stages).
            "hub": None,
        }
        # Where the user wrote each part, for messages: stages.<index − 1>.… (0-based, as dotted paths count).
        written = f"stages.{index - 1}"
        origins: dict[str, str | None] = {"distillation": f"{written}.distillation", "stages": None}
        origins.update({f"training.{field}": f"{written}.training.{field}" for field in stage.training})
        # A stage may bring its own task, data and teacher (ETD: unlabeled text, then the task).
        for section in ("task", "data", "teacher"):
            if getattr(stage, section) is not None:
                changes[section] = section_mapping(getattr(stage, section))
                origins[section] = f"{written}.{section}"
        if index > 1:
            changes["student"] = {"checkpoint": str((stage_directory(parent, index - 1) / "final").resolve())}
            origins["student"] = None
        result.append((stage.name or f"stage {index}", derive(recipe, changes, origins)))
    return result


def with_student_of(stage_recipe: Recipe, recipe: Recipe) -> Recipe:
    """A later stage's recipe with the staged recipe's own student, for a plan made before stage 1 ran."""
    return derive(stage_recipe, {"student": section_mapping(recipe.student)})


# ============================================================================= data


def without_augment(recipe: Recipe) -> Recipe:
    """The recipe on its original training data."""
    return derive(recipe, {"data": _data_with(recipe, augment=None)})


def on_augmented_data(recipe: Recipe, path: Path) -> Recipe:
    """The recipe training on the augmented file at `path` (.jsonl or .tsv) in place of `data.train`,
    read with the original source's column names."""
    train = recipe.data.train
    source = DataSource(
        path=str(path),
        format="jsonl" if path.suffix == ".jsonl" else "tsv",
        text=train.text,
        text_pair=train.text_pair,
        label=train.label,
    )
    return derive(recipe, {"data": _data_with(recipe, train=section_mapping(source), augment=None)})


def with_eval_source(recipe: Recipe, source: DataSource, given_by: str | None = None) -> Recipe:
    """The recipe evaluating on `source`; `given_by`: the command-line option that gave it (`--data`),
    which messages about it then name instead of `data.eval`."""
    origins = {"data.eval": given_by} if given_by is not None else {}
    return derive(recipe, {"data": _data_with(recipe, eval=section_mapping(source))}, origins)


def eval_only(recipe: Recipe) -> Recipe:
    """Evaluation reads only the eval split: the train source is replaced by it."""
    return derive(
        recipe,
        {"data": _data_with(recipe, train=section_mapping(recipe.data.eval))},
        {"data.train": "data.eval"},
    )
