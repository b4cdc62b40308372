"""The teachers of the multi kinds, and training the ones that are missing.

A multi-teacher recipe lists `teachers: [...]`; a multi-task recipe has one teacher per task under
`tasks.<name>.teacher`. Each may carry its own `train` section, trained (as for one teacher) into
the run directory its `checkpoint` names, on the recipe's task and data — for a multi-task recipe,
on that task's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.models import LoadedModel
from brewer_cli.recipe import Recipe, TeacherSpec

MULTI_KINDS = ("multi_teacher", "multi_task")


@dataclass
class TeacherSlot:
    field: str  # the teacher's dotted path in the recipe: teachers.1, tasks.<name>.teacher
    spec: TeacherSpec
    recipe: Recipe  # whose task and data train it: the recipe, or a multi-task recipe's one task


def teacher_slots(recipe: Recipe) -> list[TeacherSlot]:
    if recipe.distillation.kind == "multi_teacher":
        return [TeacherSlot(f"teachers.{index}", spec, recipe) for index, spec in enumerate(recipe.teachers)]
    from brewer_cli.multi_task import task_recipe

    return [TeacherSlot(f"tasks.{name}.teacher", entry.teacher, task_recipe(recipe, name)) for name, entry in recipe.tasks.items()]


def train_missing_teachers(recipe: Recipe, resume: bool, dry_run: bool, console: Any) -> dict[str, LoadedModel]:
    """Train every missing teacher that has a `train` section (`brewer distill`); in a dry run,
    print their plans instead and return untrained stand-ins by field."""
    from brewer_cli.build import check_names, teacher_missing

    missing = [slot for slot in teacher_slots(recipe) if teacher_missing(slot.recipe, slot.spec)]
    if not missing:
        return {}
    untrainable = [slot for slot in missing if slot.spec.train is None]
    if untrainable:
        raise ModelError("\n".join(
            f"{recipe.path}: {slot.field}.checkpoint: {slot.spec.checkpoint!r} does not exist and this teacher has no "
            f"`train` section — train it first (`brewer train-teacher TRAINER_RECIPE --set name={_run_name(slot.spec)}`), "
            f"add `{slot.field}.train`, or fix the path"
            for slot in untrainable
        ))
    # A misspelled name should fail now, not after the teachers have been trained.
    check_names(recipe)
    return _train(recipe, missing, resume, dry_run, console)[0]


def train_teachers(recipe: Recipe, resume: bool, dry_run: bool, console: Any) -> list[dict[str, Any] | None]:
    """`brewer train-teacher` on a multi recipe: every teacher with a `train` section that is
    missing (or, with --resume, every one)."""
    from brewer_cli.build import teacher_missing

    trainable = [slot for slot in teacher_slots(recipe) if slot.spec.train is not None]
    if not trainable:
        raise BrewerError(
            f"{recipe.path}: no teacher of this recipe has a `train` section — add one (e.g. "
            f"`{teacher_slots(recipe)[0].field}.train: {{model: …, training: …}}`), or train each teacher with a "
            f"`kind: trainer` recipe: `brewer train-teacher TRAINER_RECIPE --set training.seed=N --set name=…`"
        )
    chosen = [slot for slot in trainable if resume or teacher_missing(slot.recipe, slot.spec)]
    if not chosen:
        raise BrewerError(
            f"{recipe.path}: every teacher with a `train` section exists already "
            f"({', '.join(slot.spec.checkpoint for slot in trainable)}) — continue one with --resume, or distill"
        )
    return _train(recipe, chosen, resume, dry_run, console)[1]


def _train(recipe: Recipe, slots: list[TeacherSlot], resume: bool, dry_run: bool,
           console: Any) -> tuple[dict[str, LoadedModel], list[dict[str, Any] | None]]:
    """Train the slots' teachers in order; returns the dry run's untrained stand-ins by field and
    the trained runs' summaries."""
    from brewer_cli.build import build_run, teacher_missing, teacher_run_parent, teacher_training_recipe
    from brewer_cli.pipeline import _print_plan, distill

    console = console or _console()
    stand_ins: dict[str, LoadedModel] = {}
    summaries: list[dict[str, Any] | None] = []
    for slot in slots:
        # Two entries may name one checkpoint: the first trains it.
        if not resume and not teacher_missing(slot.recipe, slot.spec):
            continue
        teacher_recipe = teacher_training_recipe(slot.recipe, slot.spec)
        parent = teacher_run_parent(slot.recipe, slot.spec)
        if dry_run:
            console.print(f"[bold]{slot.field} {slot.spec.checkpoint} is missing: it will be trained first[/bold]")
            teacher_run = build_run(teacher_recipe, parent)
            _print_plan(teacher_run, console)
            loaded = teacher_run.student
            loaded.role = "teacher"
            loaded.source += " (untrained in this plan)"
            stand_ins[slot.field] = loaded
        else:
            console.print(f"[bold]{slot.field} {slot.spec.checkpoint}: training it[/bold]")
            summaries.append(distill(teacher_recipe, parent, resume=resume, console=console))
    return stand_ins, summaries


def _run_name(spec: TeacherSpec) -> str:
    """The run name whose final/ directory the checkpoint names (…/<name>/final)."""
    path = Path(spec.checkpoint)
    return path.parent.name if path.name == "final" and path.parent.name else "…"


def _console() -> Any:
    from rich.console import Console

    return Console()
