"""What a run will do, for `--dry-run`: models and their sizes, data, steps, loss terms, the
teacher-output cache and compilation."""

from __future__ import annotations

import torch

from brewer_cli.extract import describe
from brewer_cli.families import parameter_count
from brewer_cli.loop import resolve_precision
from brewer_cli.recipe import Recipe, data_columns, origins_of, written_at
from brewer_cli.run import Run
from brewer_cli.teacher_cache import plan_cache


def plan_lines(run: Run) -> list[str]:
    training = run.recipe.training
    if run.data.train.streamed:
        steps_per_epoch = training.steps_per_epoch or training.max_steps
    else:
        batches = -(-len(run.data.train) // training.batch_size)
        steps_per_epoch = max(1, -(-batches // training.gradient_accumulation))
    total = training.max_steps or max(1, int(-(-training.epochs * steps_per_epoch // 1)))
    lines = [f"run directory: {run.run_dir}"]
    for teacher in run.teachers:
        lines.append(
            f"teacher: {teacher.family.name} from {teacher.source} — {parameter_count(teacher.model):,} parameters, "
            f"{teacher.model.config.num_hidden_layers} layers × {teacher.model.config.hidden_size}{_placement(teacher)}"
        )
    store = run.distiller.inputs.teacher_store
    if store is not None:
        lines.append(store.describe())
    student = run.student
    lines.append(
        f"{run.role}: {student.family.name} from {student.source} — {parameter_count(student.model):,} parameters, "
        f"{student.model.config.num_hidden_layers} layers × {student.model.config.hidden_size}"
    )
    if run.teachers:
        ratio = parameter_count(student.model) / parameter_count(run.teachers[0].model)
        lines.append(f"student / teacher parameters: {ratio:.3f}")
    labels = f", labels: {', '.join(run.data.label_names)}" if run.data.label_names else ""
    training_examples = (
        f"training blocks of {run.recipe.data.max_length} tokens streamed (read as the run goes; an epoch is "
        f"{steps_per_epoch:,} steps)"
        if run.data.train.streamed
        else f"{len(run.data.train):,} training examples"
    )
    lines.append(f"data: {training_examples}, {len(run.data.eval) if run.data.eval is not None else 0:,} eval examples{labels}")
    # The columns each split reads, so a column the recipe names wrongly (or not at all) shows here.
    lines.extend(f"  columns of {line}" for line in _column_lines(run.recipe))
    # What the task found while reading the data (e.g. the NER tagging scheme and its conversion).
    lines.extend(f"  {line}" for line in run.data.extra.get("plan_lines", ()))
    lines.append(
        f"steps: {total:,} ({steps_per_epoch:,} per epoch, batch {training.batch_size} × accumulation "
        f"{training.gradient_accumulation}), precision {resolve_precision(training.precision)}"
    )
    # The settings a Trainer user looks for: the schedule, the threads, the metric that picks final/.
    best = training.metric_for_best or run.task.primary_metric
    keep = f"final/ = the best {best}" if training.load_best_at_end and run.data.eval is not None else "final/ = the last step"
    trackers = ", ".join(training.report_to) if training.report_to else "none (metrics.jsonl only)"
    # transformers' `constant` schedule has no warm-up (constant_with_warmup has).
    warmup = "no warm-up" if training.lr_schedule == "constant" else f"{training.warmup:.0%} warm-up"
    lines.append(
        f"  learning rate {training.learning_rate:g}, {training.lr_schedule} schedule with {warmup}; "
        f"{torch.get_num_threads()} threads; {keep}; trackers {trackers}"
    )
    if student.extraction is not None:
        lines.extend(f"  {line}" for line in describe(student.extraction).splitlines())
    distiller = run.distiller
    lines.append(f"distiller: {run.recipe.distillation.kind}")
    lines.extend(f"  loss: {line}" for line in distiller.describe_losses())
    if run.teachers:
        lines.append(f"teacher cache: {plan_cache(distiller, total, steps_per_epoch, run.run_dir).describe()}")
    elif store is not None:
        lines.append("teacher cache: off (the teacher's logits come from its store)")
    if training.compile_backend is not None:
        lines.append(
            f"compile: the student's forward is compiled in place (torch.compile, backend "
            f"{training.compile_backend}) before step 1"
        )
    return lines


def _column_lines(recipe: Recipe) -> list[str]:
    """`data.train (train.tsv): text 'sentence', label 'label'` per split (per task's split), each
    named where the user wrote it."""
    if recipe.tasks is not None:
        parts = [(entry.data, entry.task, f"tasks.{name}.data") for name, entry in recipe.tasks.items()]
    else:
        parts = [(recipe.data, recipe.task, "data")]
    origins = origins_of(recipe)
    return [line for data, task, prefix in parts for line in data_columns(data, task, written_at(origins, prefix))]


def _placement(teacher) -> str:
    """`, on cpu in bfloat16`: a teacher's device and dtype where they are not the defaults (teacher.device,
    teacher.dtype); nothing for a teacher that runs where training runs, in float32."""
    dtype = str(next(teacher.model.parameters()).dtype).removeprefix("torch.")
    parts = ([f"on {teacher.device}"] if teacher.device != "auto" else []) + ([f"in {dtype}"] if dtype != "float32" else [])
    return f", {' '.join(parts)}" if parts else ""
