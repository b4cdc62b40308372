"""Kind `multi_teacher`: several teachers, one student, KD against the weighted mean of the
teachers' logits.

The target is TextBrewer's (MultiTeacherDistiller): the teachers' *logits* are averaged, then KD
applies the temperature as for one teacher —

    z̄ = Σ_k w_k z_k / Σ_k w_k,    KD = kd_loss(z_S, z̄, τ)

(not the mean of the teachers' softmax(z_k/τ)). Hard-label loss, schedules and probability shift
(applied to z̄) are `basic`'s. Optional intermediate `matches` read one teacher,
`distillation.match_teacher`. A teacher whose tokenizer differs from the student's reads the
examples tokenized its way (brewer_cli.teacher_views); that works for sequence-level tasks only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.models import LoadedModel, own_student_tokenizer
from brewer_cli.recipe import Recipe
from brewer_cli.tasks import TASKS, Task
from brewer_cli.teacher_views import (
    ViewCollate,
    add_view_columns,
    column_owners,
    column_prefix,
    pad_id_of,
    require_sequence_level,
    view_batch,
)


@dataclass
class TeacherInputs:
    """`Run.multi` of a multi-teacher run: per teacher, the prefix of the token columns it reads
    (None: the student's) and its weight in the mean of the logits."""

    prefixes: list[str | None]
    weights: list[float]


def mean_logits(logits: Sequence[Any], weights: Sequence[float]) -> Any:
    """Σ_k w_k z_k / Σ_k w_k, element-wise; QA's (start, end) logits are averaged per element."""
    if isinstance(logits[0], tuple):
        return tuple(mean_logits([item[part] for item in logits], weights) for part in range(len(logits[0])))
    total = float(sum(weights))
    return sum(weight * value for weight, value in zip(weights, logits)) / total


def build_multi_teacher_run(recipe: Recipe, run_dir: Path, overrides: dict[str, LoadedModel]) -> Any:
    from brewer_cli.build import Run, _load_student, _load_teacher, _named_labels, extract_from_teacher
    from brewer_cli.distillers import DISTILLERS

    where = f"{recipe.path}: "
    task: Task = TASKS.get(recipe.task.kind)(recipe.task)
    label_names = list(recipe.task.labels) if recipe.task.labels else None
    teachers = [
        overrides.get(f"teachers.{index}") or _load_teacher(recipe, task, label_names, spec, f"teachers.{index}")
        for index, spec in enumerate(recipe.teachers)
    ]
    label_names = label_names or _named_labels(teachers[0].model)
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
    if recipe.student.init is not None:
        student = extract_from_teacher(recipe, task, match_teacher, data)
    else:
        student = _load_student(recipe.student, task, data.label_names, tokenizer, recipe, "student", "student")
    if recipe.distillation.matches:
        if prefixes[match_index] is not None:
            raise RecipeError(
                f"{recipe.path}: distillation.matches: intermediate matches compare teacher and student features "
                f"token by token, but teachers.{match_index} (distillation.match_teacher) reads another tokenizer than "
                f"the student — set match_teacher to a teacher that shares the student's tokenizer, or drop `matches`"
            )
        from brewer_cli.matches import resolve_matches

        resolve_matches(recipe, match_teacher.model.config, student.model.config)
    collate = ViewCollate(task.collate(student.tokenizer), pad_ids)
    inputs = TeacherInputs(prefixes, [spec.weight for spec in recipe.teachers])
    return Run(recipe, run_dir, task, data, collate, student, teachers, DISTILLERS.get("multi_teacher"), multi=inputs)


def _student_tokenizer(recipe: Recipe, task: Task, match_teacher: LoadedModel) -> Any:
    """The student's own tokenizer when the recipe names one (`student.tokenizer`, or a student
    checkpoint's), else the match teacher's (teachers[0] unless `match_teacher` says otherwise)."""
    if recipe.student.tokenizer is not None and recipe.student.init is not None:
        raise ModelError(f"{recipe.path}: student.tokenizer: an extracted student reads its teacher's tokenizer — "
                         f"remove `student.tokenizer`")
    own = own_student_tokenizer(recipe, lambda: task.tokenizer_texts(recipe))
    return own if own is not None else match_teacher.tokenizer


def _check_label_orders(recipe: Recipe, teachers: list[LoadedModel], label_names: list[str] | None) -> None:
    from brewer_cli.build import _named_labels

    if label_names is None:
        return
    for index, teacher in enumerate(teachers):
        names = _named_labels(teacher.model)
        if names is not None and names != list(label_names):
            raise ModelError(
                f"{recipe.path}: teachers.{index}.checkpoint: its labels are {', '.join(names)} (in id order) but the "
                f"task's are {', '.join(label_names)} — the mean of the teachers' logits adds up the scores of one "
                f"label id, so every teacher needs the same labels in the same order"
            )


# ----------------------------------------------------------------------------- evaluation


def evaluate_teachers(run: Any, teachers: list[LoadedModel], inputs: TeacherInputs, device: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of the ensemble (the weighted mean of the logits, the student's target) and of each
    teacher, on the eval split, each teacher reading its own tokenization."""
    task = run.task
    batch_size = run.recipe.training.eval_batch_size or run.recipe.training.batch_size * 2
    loader = DataLoader(run.data.eval, batch_size=batch_size, shuffle=False, collate_fn=run.collate)
    for teacher in teachers:
        teacher.model.to(device)
        teacher.model.eval()
    per_teacher: list[list[Any]] = [[] for _ in teachers]
    ensemble: list[Any] = []
    indices: list[int] = []
    with torch.inference_mode():
        for batch in loader:
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            logits = [
                teacher.family.features(teacher.model, view_batch(batch, prefix), logits_of=task.logits).logits
                for teacher, prefix in zip(teachers, inputs.prefixes)
            ]
            for collected, value in zip(per_teacher, logits):
                collected.append(_to_cpu(task.prediction_of(value)))
            ensemble.append(_to_cpu(task.prediction_of(mean_logits(logits, inputs.weights))))
            indices.extend(int(i) for i in batch["index"].tolist())
    ensemble_metrics = task.compute_metrics(ensemble, indices, run.data)
    teacher_metrics = [task.compute_metrics(collected, indices, run.data) for collected in per_teacher]
    return ensemble_metrics, teacher_metrics


def _to_cpu(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(item.detach().float().cpu() for item in value)
    return value.detach().float().cpu()


def update_summary(summary: dict[str, Any], run: Any, teacher_metrics: dict[str, Any] | None,
                   each_teacher: list[dict[str, Any]] | None) -> None:
    """summary.json: `teacher` is the ensemble the student learned from (its parameters: all the
    teachers'), `teachers` lists each one."""
    from brewer_cli.models import parameter_count

    metric = summary["metric"]
    counts = [parameter_count(teacher.model) for teacher in run.teachers]
    summary["teachers"] = [
        {"checkpoint": teacher.source, "weight": weight, "parameters": count,
         "metric": (metrics or {}).get(metric), "metrics": metrics}
        for teacher, weight, count, metrics in zip(run.teachers, run.multi.weights, counts,
                                                   each_teacher or [None] * len(run.teachers))
    ]
    ensemble_value = (teacher_metrics or {}).get(metric)
    summary["teacher"] = {
        "metric": ensemble_value, "metrics": teacher_metrics, "parameters": sum(counts),
        "checkpoint": f"weighted mean of the logits of {len(run.teachers)} teachers",
    }
    student_value = summary["student"]["metric"]
    summary["student_to_teacher"] = student_value / ensemble_value if ensemble_value and student_value is not None else None
    summary["parameters_ratio"] = summary["student"]["parameters"] / sum(counts)
