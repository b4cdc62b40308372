"""Builder of kind `multi_task`: one teacher per task, one student encoder shared by a head per
task (brewer_cli.distillers.multi_task), each task's data tokenized the student's way (plus its
teacher's columns when that teacher reads another tokenizer), batches of one task each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from brewer_cli.build.loading import load_student, load_teacher, named_labels
from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.build.single import distiller_inputs
from brewer_cli.distillers.multi_task import MultiTaskDistiller, MultiTaskStudent, TaskGroup, TaskSlot
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.evaluation import eval_batch_size
from brewer_cli.families.loading import LoadedModel
from brewer_cli.recipe import Recipe, task_recipe
from brewer_cli.run import Run
from brewer_cli.tasks import TASKS, PreparedData, Task
from brewer_cli.tasks.ordering import MultiTaskCollate, MultiTaskDataset, task_probabilities
from brewer_cli.tasks.views import ViewCollate, add_view_columns, column_prefix, pad_id_of, require_sequence_level, same_tokenizer
from brewer_cli.tokenizers import own_student_tokenizer


def build_multi_task_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    where = f"{recipe.path}: "
    if recipe.student.init is not None:
        raise RecipeError(
            f"{recipe.path}: student.init: a multi-task student is shared by every task's teacher, so it is not "
            f"extracted from one — give `student.config`, or `student.checkpoint` (e.g. a student written by "
            f"`brewer extract` with a single-task recipe)"
        )
    if recipe.training.group_by_length:
        raise RecipeError(
            f"{recipe.path}: training.group_by_length: not available with kind multi_task, whose batches are drawn "
            f"task by task — remove it"
        )
    # Every teacher first: the student's tokenizer may be the first one's.
    entries: list[tuple[str, Recipe, Task, LoadedModel]] = []
    for name, entry in recipe.tasks.items():
        single = task_recipe(recipe, name)
        task: Task = TASKS.get(entry.task.kind)(entry.task)
        field = f"tasks.{name}.teacher"
        label_names = list(entry.task.labels) if entry.task.labels else None
        entries.append(
            (name, single, task, stand_ins.get(field) or load_teacher(single, task, label_names, entry.teacher, field))
        )

    tokenizer = _student_tokenizer(recipe, entries)
    batch_size = eval_batch_size(recipe.training)
    slots: list[TaskSlot] = []
    for name, single, task, teacher in entries:
        labels = recipe.tasks[name].task.labels
        data = task.prepare(single, tokenizer, list(labels) if labels else named_labels(teacher.model))
        prefix = None
        pad_ids: dict[str, int] = {}
        if not same_tokenizer(teacher.tokenizer, tokenizer):
            require_sequence_level(task, f"tasks.{name}.teacher", where)
            prefix = column_prefix(0)
            add_view_columns(
                data, task.prepare(single, teacher.tokenizer, data.label_names), prefix, f"{recipe.path}: tasks.{name}"
            )
            pad_ids[prefix] = pad_id_of(teacher.tokenizer)
        slots.append(TaskSlot(name, task, data, ViewCollate(task.collate(tokenizer), pad_ids), teacher, prefix, batch_size))

    models: dict[str, nn.Module] = {}
    loaded: list[LoadedModel] = []
    for slot in slots:
        student = load_student(recipe.student, slot.task, slot.data.label_names, tokenizer, recipe, "student", "student")
        slot.model = student.model
        models[slot.name] = student.model
        loaded.append(student)
    _check_same_architecture(recipe, slots)
    shared = MultiTaskStudent(models)
    first = loaded[0]
    student = LoadedModel(
        first.model, tokenizer, first.family, "student", f"{first.source}, one head per task ({', '.join(models)})"
    )

    sizes = [len(slot.data.train) for slot in slots]
    probabilities = task_probabilities(sizes, recipe.distillation.sampling_temperature)
    evaluations = [slot.data.eval for slot in slots]
    data = PreparedData(
        train=MultiTaskDataset([slot.data.train for slot in slots]),
        eval=MultiTaskDataset(evaluations) if any(item is not None for item in evaluations) else None,
        label_names=None,
    )
    group = TaskGroup(slots)
    teachers = [slot.teacher for slot in slots]
    inputs = distiller_inputs(recipe, group, data, student, teachers, MultiTaskCollate([slot.collate for slot in slots]))
    distiller = MultiTaskDistiller(
        inputs, resolve_logit_kd(recipe.distillation), slots, shared, probabilities, recipe.distillation.sampling_temperature
    )
    return Run(recipe, run_dir, group, data, student, teachers, distiller)


def _student_tokenizer(recipe: Recipe, entries: list[tuple[str, Recipe, Task, LoadedModel]]) -> Any:
    """The student's own tokenizer when the recipe names one (`student.tokenizer`, trained on
    every task's text, or a student checkpoint's), else the first task's teacher's."""
    own = own_student_tokenizer(
        recipe,
        lambda: [text for _, single, task, _ in entries for text in task.tokenizer_texts(single)],
        any(task.generates_text for _, _, task, _ in entries),
    )
    return own if own is not None else entries[0][3].tokenizer


def _check_same_architecture(recipe: Recipe, slots: list[TaskSlot]) -> None:
    first = slots[0].model.base_model
    for slot in slots[1:]:
        base = slot.model.base_model
        if type(base) is not type(first):
            raise ModelError(
                f"{recipe.path}: student: the {slots[0].name} and {slot.name} models have different base models "
                f"({type(first).__name__}, {type(base).__name__}) and cannot share an encoder"
            )
