"""Builders of the kinds with one teacher (basic, general) and of teacher fine-tuning (trainer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from brewer_cli.build.loading import check_vocabularies, load_student, load_teacher, named_labels, student_of, trainer_tokenizer
from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.build.store import build_basic_store_run
from brewer_cli.distillers import BasicDistiller, DistillerInputs, GeneralDistiller, TrainerDistiller
from brewer_cli.errors import ModelError
from brewer_cli.families.loading import LoadedModel
from brewer_cli.matches import resolve_matches
from brewer_cli.recipe import Recipe
from brewer_cli.run import Run
from brewer_cli.tasks import TASKS, PreparedData, Task
from brewer_cli.tasks.streams import MaskingCollate


def build_trainer_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    task: Task = TASKS.get(recipe.task.kind)(recipe.task)
    tokenizer = trainer_tokenizer(recipe, recipe.model, task)
    data = task.prepare(recipe, tokenizer, list(recipe.task.labels) if recipe.task.labels else None)
    model = load_student(recipe.model, task, data.label_names, tokenizer, recipe, "model", "model")
    if model.tokenizer is None:
        model.tokenizer = tokenizer
    inputs = distiller_inputs(recipe, task, data, model, [])
    return Run(recipe, run_dir, task, data, model, [], TrainerDistiller(inputs))


def build_basic_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    if recipe.teacher is not None and recipe.teacher.store is not None:
        # The teacher's logits from a store (brewer capture): no teacher model is loaded.
        return build_basic_store_run(recipe, run_dir, distiller_inputs)
    task, data, teacher, student = _teacher_and_student(recipe, stand_ins)
    inputs = distiller_inputs(recipe, task, data, student, [teacher])
    return Run(recipe, run_dir, task, data, student, [teacher], BasicDistiller(inputs, resolve_logit_kd(recipe.distillation)))


def build_general_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    # Layer indices, widths and heads against the configs readable without loading weights.
    GeneralDistiller.check_before_loading(recipe)
    task, data, teacher, student = _teacher_and_student(recipe, stand_ins)
    # The loaded models are authoritative (hub checkpoints, extracted students): before step 1.
    matches = resolve_matches(recipe, teacher.model.config, student.model.config)
    inputs = distiller_inputs(recipe, task, data, student, [teacher])
    distiller = GeneralDistiller(inputs, resolve_logit_kd(recipe.distillation), matches)
    return Run(recipe, run_dir, task, data, student, [teacher], distiller)


def _teacher_and_student(
    recipe: Recipe, stand_ins: dict[str, LoadedModel]
) -> tuple[Task, PreparedData, LoadedModel, LoadedModel]:
    task: Task = TASKS.get(recipe.task.kind)(recipe.task)
    label_names = list(recipe.task.labels) if recipe.task.labels else None
    teacher = stand_ins.get("teacher") or load_teacher(recipe, task, label_names)
    data = task.prepare(recipe, teacher.tokenizer, label_names or named_labels(teacher.model))
    student = student_of(recipe, task, teacher, data, teacher.tokenizer)
    check_vocabularies(recipe, teacher, student)
    return task, data, teacher, student


def distiller_inputs(
    recipe: Recipe,
    task: Task,
    data: PreparedData,
    student: LoadedModel,
    teachers: list[LoadedModel],
    collate: Callable | None = None,
) -> DistillerInputs:
    """What every builder hands its distiller (the multi kinds pass their own collate)."""
    collate = collate or task.collate(student.tokenizer)
    eval_collate = None
    if recipe.task is not None and recipe.task.mask_probability > 0:
        if student.tokenizer.mask_token_id is None:
            raise ModelError(
                f"{recipe.path}: task.mask_probability: the student's tokenizer has no mask token to put in — use a "
                f"masked-LM tokenizer (BERT's [MASK]), or remove mask_probability"
            )
        masking = MaskingCollate(collate, student.tokenizer, recipe.task.mask_probability, recipe.training.seed)
        collate, eval_collate = masking, masking.for_evaluation()
    return DistillerInputs(
        task=task,
        data=data,
        collate=collate,
        eval_collate=eval_collate,
        student=student,
        teachers=tuple(teachers),
        training=recipe.training,
        teacher_cache_mode=getattr(recipe.distillation, "teacher_cache", "off"),
        max_length=recipe.data.max_length if recipe.data is not None else None,
        source=recipe.path,
    )
