"""Builder of kind `multi_teacher`: several teachers, each reading its own tokenization of the
examples when its tokenizer differs from the student's (sequence-level tasks only), one student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brewer_cli.build.loading import load_teacher, named_labels, student_of
from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.build.single import distiller_inputs
from brewer_cli.distillers import MultiTeacherDistiller
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.families.loading import LoadedModel
from brewer_cli.matches import resolve_matches
from brewer_cli.recipe import Recipe
from brewer_cli.run import Run
from brewer_cli.tasks import TASKS, Task
from brewer_cli.tasks.views import ViewCollate, add_view_columns, column_owners, column_prefix, pad_id_of, require_sequence_level
from brewer_cli.tokenizers import own_student_tokenizer


def build_multi_teacher_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    where = f"{recipe.path}: "
    task: Task = TASKS.get(recipe.task.kind)(recipe.task)
    label_names = list(recipe.task.labels) if recipe.task.labels else None
    teachers = [
        stand_ins.get(f"teachers.{index}") or load_teacher(recipe, task, label_names, spec, f"teachers.{index}")
        for index, spec in enumerate(recipe.teachers)
    ]
    label_names = label_names or named_labels(teachers[0].model)
    _check_label_orders(recipe, teachers, label_names)
    match_index = recipe.distillation.match_teacher

    tokenizer = _student_tokenizer(recipe, task, teachers[match_index])
    data = task.prepare(recipe, tokenizer, label_names)
    owners = column_owners([teacher.tokenizer for teacher in teachers], tokenizer)
    prefixes: list[str | None] = []
    pad_ids: dict[str, int] = {}
    for index, owner in enumerate(owners):
        if owner is None:
            prefixes.append(None)
            continue
        require_sequence_level(task, f"teachers.{index}", where)
        prefix = column_prefix(owner)
        if owner == index:
            # Tokenized once per distinct tokenizer, for both splits.
            add_view_columns(data, task.prepare(recipe, teachers[index].tokenizer, data.label_names), prefix, str(recipe.path))
            pad_ids[prefix] = pad_id_of(teachers[index].tokenizer)
        prefixes.append(prefix)

    match_teacher = teachers[match_index]
    student = student_of(recipe, task, match_teacher, data, tokenizer)
    matches = []
    if recipe.distillation.matches:
        if prefixes[match_index] is not None:
            raise RecipeError(
                f"{recipe.path}: distillation.matches: intermediate matches compare teacher and student features "
                f"token by token, but teachers.{match_index} (distillation.match_teacher) reads another tokenizer than "
                f"the student — set match_teacher to a teacher that shares the student's tokenizer, or drop `matches`"
            )
        matches = resolve_matches(recipe, match_teacher.model.config, student.model.config)
    inputs = distiller_inputs(recipe, task, data, student, teachers, ViewCollate(task.collate(student.tokenizer), pad_ids))
    distiller = MultiTeacherDistiller(
        inputs, resolve_logit_kd(recipe.distillation), matches, match_index, prefixes, [spec.weight for spec in recipe.teachers]
    )
    return Run(recipe, run_dir, task, data, student, teachers, distiller)


def _student_tokenizer(recipe: Recipe, task: Task, match_teacher: LoadedModel) -> Any:
    """The student's own tokenizer when the recipe names one (`student.tokenizer`, or a student
    checkpoint's), else the match teacher's (teachers[0] unless `match_teacher` says otherwise)."""
    if recipe.student.tokenizer is not None and recipe.student.init is not None:
        raise ModelError(
            f"{recipe.path}: student.tokenizer: an extracted student reads its teacher's tokenizer — remove `student.tokenizer`"
        )
    own = own_student_tokenizer(recipe, lambda: task.tokenizer_texts(recipe), task.generates_text)
    return own if own is not None else match_teacher.tokenizer


def _check_label_orders(recipe: Recipe, teachers: list[LoadedModel], label_names: list[str] | None) -> None:
    if label_names is None:
        return
    for index, teacher in enumerate(teachers):
        names = named_labels(teacher.model)
        if names is not None and names != list(label_names):
            raise ModelError(
                f"{recipe.path}: teachers.{index}.checkpoint: its labels are {', '.join(names)} (in id order) but the "
                f"task's are {', '.join(label_names)} — the mean of the teachers' logits adds up the scores of one "
                f"label id, so every teacher needs the same labels in the same order"
            )
