"""Kind `multi_task`: one student encoder with a head per task, each task with its own teacher.

The student is one `AutoModelFor…` per task (the task's own head class), built from the same
`student` spec, whose base models share their modules: the embeddings and the encoder are one set
of weights, the heads are per task. (A base module that only some head classes build — BERT's
pooler, which token classifiers leave out — is shared by the tasks that have it.) So every task's
model is an ordinary transformers model: `final/<task>/` is its `save_pretrained` directory and
reproduces the multi-task model's outputs for that task exactly.

Batches hold one task each. The task of a batch is drawn with probability

    p_k = |D_k|^τ / Σ_j |D_j|^τ        (τ = distillation.sampling_temperature)

— τ = 1 samples in proportion to the data sizes, τ = 0 uniformly, in between flattens towards the
small tasks — from a generator seeded by (training.seed, epoch). An epoch is ⌈Σ|D_k| / B⌉ batches:
as many examples as one pass over every task. Within a task, examples come in a fresh random order
each time its data runs out.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.models import LoadedModel, own_student_tokenizer, save_model_dir
from brewer_cli.recipe import Recipe, validate_recipe
from brewer_cli.tasks import TASKS, PreparedData, Task, TokenizedDataset
from brewer_cli.teacher_views import (
    ViewCollate,
    add_view_columns,
    column_prefix,
    pad_id_of,
    require_sequence_level,
    same_tokenizer,
)

TASK_MEAN = "task_mean"


# ============================================================================= the recipe, per task


def task_recipe(recipe: Recipe, name: str) -> Recipe:
    """One task of a multi-task recipe as a single-task `basic` recipe (the same student, training
    and KD settings): what evaluating that task and training its teacher read."""
    entry = recipe.tasks[name]
    settings = recipe.distillation.model_dump(mode="json", by_alias=True, exclude_none=True)
    settings.pop("sampling_temperature", None)
    settings["kind"] = "basic"
    raw = {
        "name": f"{recipe.name}.{name}",
        "task": entry.task.model_dump(mode="json", exclude_none=True),
        "data": entry.data.model_dump(mode="json", by_alias=True, exclude_none=True),
        "teacher": entry.teacher.model_dump(mode="json", by_alias=True, exclude_none=True),
        "student": recipe.student.model_dump(mode="json", by_alias=True, exclude_none=True),
        "training": recipe.training.model_dump(mode="json"),
        "distillation": settings,
    }
    return validate_recipe(raw, recipe.path)


def task_probabilities(sizes: Sequence[int], temperature: float) -> list[float]:
    """p_k ∝ |D_k|^τ."""
    weights = [float(size) ** temperature for size in sizes]
    total = sum(weights)
    return [weight / total for weight in weights]


# ============================================================================= data


class MultiTaskDataset(Dataset):
    """The tasks' datasets end to end; each item carries its task's position as `task`."""

    def __init__(self, datasets: Sequence[TokenizedDataset | None]):
        self.datasets = list(datasets)
        self.sizes = [len(dataset) if dataset is not None else 0 for dataset in self.datasets]
        self.offsets = [sum(self.sizes[:index]) for index in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # The last dataset starting at or before `index` (an empty one shares the next one's offset).
        task = bisect.bisect_right(self.offsets, index) - 1
        item = self.datasets[task][index - self.offsets[task]]
        item["task"] = task
        return item

    def lengths(self) -> list[int]:
        return [length for dataset in self.datasets if dataset is not None for length in dataset.lengths()]


class MultiTaskCollate:
    """Each batch is one task's: collated by that task (its padding, its labels), plus `task`."""

    def __init__(self, collates: Sequence[Callable]):
        self.collates = list(collates)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        task = items[0]["task"]
        if any(item["task"] != task for item in items):
            raise ValueError("a multi-task batch mixes examples of several tasks; batches come from MultiTaskBatchSampler")
        batch = self.collates[task](items)
        batch["task"] = torch.full((len(items),), task, dtype=torch.long)
        return batch


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each, the task drawn with probability ∝ |D_k|^τ (module docstring).
    Seeded by (seed, epoch) like EpochSampler, so any epoch can be rebuilt on resume."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, temperature: float):
        self.sizes = list(sizes)
        self.offsets = [sum(self.sizes[:index]) for index in range(len(self.sizes))]
        self.batch_size = batch_size
        # Accelerate reads these when it shards the batches over several processes.
        self.drop_last = False
        self.seed = seed
        self.probabilities = task_probabilities(self.sizes, temperature)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, math.ceil(sum(self.sizes) / self.batch_size))

    def tasks(self) -> list[int]:
        """This epoch's task of each batch."""
        return self._draw_tasks(self._generator())

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def _draw_tasks(self, generator: torch.Generator) -> list[int]:
        probabilities = torch.tensor(self.probabilities, dtype=torch.float64)
        return torch.multinomial(probabilities, len(self), replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        generator = self._generator()
        orders: list[list[int]] = [[] for _ in self.sizes]
        positions = [0 for _ in self.sizes]
        for task in self._draw_tasks(generator):
            batch: list[int] = []
            while len(batch) < self.batch_size:
                if positions[task] == len(orders[task]):
                    orders[task] = torch.randperm(self.sizes[task], generator=generator).tolist()
                    positions[task] = 0
                take = min(self.batch_size - len(batch), len(orders[task]) - positions[task])
                batch.extend(orders[task][positions[task] : positions[task] + take])
                positions[task] += take
            yield [self.offsets[task] + index for index in batch]


# ============================================================================= the student


class MultiTaskStudent(nn.Module):
    """One model per task sharing the base model's modules (module docstring).

    Its state dict names a shared weight once per task model; `_tied_weights_keys` maps each
    repeated name to the first, so that checkpoints store it once and --resume knows it is tied.
    """

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        owners: dict[str, nn.Module] = {}
        for model in models.values():
            base = model.base_model
            for child_name, child in list(base.named_children()):
                owner = owners.setdefault(child_name, child)
                if owner is not child:
                    setattr(base, child_name, owner)
        self.models = nn.ModuleDict(models)
        first_name: dict[int, str] = {}
        tied: dict[str, str] = {}
        persistent = set(self.state_dict().keys())
        for name, tensor in [*self.named_parameters(remove_duplicate=False), *self.named_buffers(remove_duplicate=False)]:
            if name not in persistent:
                continue
            if id(tensor) in first_name:
                tied[name] = first_name[id(tensor)]
            else:
                first_name[id(tensor)] = name
        self._tied_weights_keys = tied

    def save_pretrained(self, directory: str | Path, safe_serialization: bool = True) -> None:
        """The checkpoint form (checkpoints/step-N/student/): every weight once, in one
        safetensors file that --resume loads back; the per-task export is `export`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()
                 if name not in self._tied_weights_keys}
        save_file(state, str(directory / "model.safetensors"))

    def export(self, directory: Path, tokenizer: Any) -> None:
        """final/<task>/ (and best/<task>/): one `save_pretrained` directory per task."""
        import json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, model in self.models.items():
            save_model_dir(model, tokenizer, directory / name)
        tasks = {name: type(model).__name__ for name, model in self.models.items()}
        (directory / "tasks.json").write_text(json.dumps(
            {"tasks": tasks, "note": "one transformers model directory per task, sharing the encoder's weights"}, indent=2))


# ============================================================================= the run


@dataclass
class TaskSlot:
    name: str
    recipe: Recipe  # the task as a single-task recipe (task_recipe)
    task: Task
    data: PreparedData  # tokenized the student's way (+ the teacher's columns when it reads its own)
    collate: Callable
    teacher: LoadedModel
    teacher_prefix: str | None  # None: the teacher reads the student's token columns
    model: nn.Module | None = None  # this task's student model (its base shared with the others)

    @property
    def eval_setup(self) -> Any:
        from brewer_cli.evaluate import EvalSetup

        return EvalSetup(self.recipe, self.task, self.data, self.collate)

    def teacher_eval_setup(self) -> Any:
        """The eval split as the teacher reads it (its own columns under the usual names)."""
        from brewer_cli.evaluate import EvalSetup

        collate = self.collate if self.teacher_prefix is None else _TeacherColumns(self.collate, self.teacher_prefix)
        return EvalSetup(self.recipe, self.task, self.data, collate)


class _TeacherColumns:
    """A collate whose batches carry the teacher's token columns under the usual names."""

    def __init__(self, collate: Callable, prefix: str):
        self.collate = collate
        self.prefix = prefix

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from brewer_cli.teacher_views import view_batch

        return view_batch(self.collate(items), self.prefix)


class TaskGroup:
    """`Run.task` of a multi-task run: what the loop and the summary read of "the task" — the
    mean of the tasks' primary metrics (all of which are greater-is-better)."""

    name = "multi_task"
    primary_metric = TASK_MEAN
    greater_is_better = True

    def __init__(self, slots: list[TaskSlot]):
        self.slots = slots


@dataclass
class MultiTaskSetup:
    """`Run.multi` of a multi-task run."""

    slots: list[TaskSlot]
    student: MultiTaskStudent
    probabilities: list[float]


def build_multi_task_run(recipe: Recipe, run_dir: Path, overrides: dict[str, LoadedModel]) -> Any:
    from brewer_cli.build import Run, _load_student, _load_teacher, _named_labels
    from brewer_cli.distillers import DISTILLERS

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
        entries.append((name, single, task, overrides.get(field) or _load_teacher(single, task, label_names, entry.teacher, field)))

    tokenizer = _student_tokenizer(recipe, entries)
    slots: list[TaskSlot] = []
    for name, single, task, teacher in entries:
        labels = recipe.tasks[name].task.labels
        data = task.prepare(single, tokenizer, list(labels) if labels else _named_labels(teacher.model))
        prefix = None
        pad_ids: dict[str, int] = {}
        if not same_tokenizer(teacher.tokenizer, tokenizer):
            require_sequence_level(task, f"tasks.{name}.teacher", where)
            prefix = column_prefix(0)
            add_view_columns(data, task.prepare(single, teacher.tokenizer, data.label_names), prefix, f"{recipe.path}: tasks.{name}")
            pad_ids[prefix] = pad_id_of(teacher.tokenizer)
        slots.append(TaskSlot(name, single, task, data, ViewCollate(task.collate(tokenizer), pad_ids), teacher, prefix))

    models: dict[str, nn.Module] = {}
    loaded: list[LoadedModel] = []
    for slot in slots:
        student = _load_student(recipe.student, slot.task, slot.data.label_names, tokenizer, recipe, "student", "student")
        slot.model = student.model
        models[slot.name] = student.model
        loaded.append(student)
    _check_same_architecture(recipe, slots)
    shared = MultiTaskStudent(models)
    first = loaded[0]
    student = LoadedModel(first.model, tokenizer, first.family, "student",
                          f"{first.source}, one head per task ({', '.join(models)})")

    sizes = [len(slot.data.train) for slot in slots]
    probabilities = task_probabilities(sizes, recipe.distillation.sampling_temperature)
    evaluations = [slot.data.eval for slot in slots]
    data = PreparedData(
        train=MultiTaskDataset([slot.data.train for slot in slots]),
        eval=MultiTaskDataset(evaluations) if any(item is not None for item in evaluations) else None,
        label_names=None,
    )
    setup = MultiTaskSetup(slots, shared, probabilities)
    return Run(recipe, run_dir, TaskGroup(slots), data, MultiTaskCollate([slot.collate for slot in slots]), student,
               [slot.teacher for slot in slots], DISTILLERS.get("multi_task"), multi=setup)


def _student_tokenizer(recipe: Recipe, entries: list[tuple[str, Recipe, Task, LoadedModel]]) -> Any:
    """The student's own tokenizer when the recipe names one (`student.tokenizer`, trained on
    every task's text, or a student checkpoint's), else the first task's teacher's."""
    own = own_student_tokenizer(recipe, lambda: [text for _, single, task, _ in entries
                                                 for text in task.tokenizer_texts(single)])
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


# ============================================================================= evaluation and summary


def evaluate_students(slots: list[TaskSlot], family: Any, accelerator: Any = None) -> dict[str, Any]:
    from brewer_cli.evaluate import evaluate_model

    results = {slot.name: evaluate_model(slot.eval_setup, slot.model, family, accelerator)
               for slot in slots if slot.data.eval is not None}
    return _with_mean(results, slots)


def evaluate_task_teachers(slots: list[TaskSlot], device: Any) -> dict[str, Any] | None:
    from brewer_cli.evaluate import evaluate_model

    results = {}
    for slot in slots:
        if slot.data.eval is None:
            continue
        slot.teacher.model.to(device)
        results[slot.name] = evaluate_model(slot.teacher_eval_setup(), slot.teacher.model, slot.teacher.family)
    return _with_mean(results, slots) if results else None


def _with_mean(results: dict[str, dict[str, Any]], slots: list[TaskSlot]) -> dict[str, Any]:
    primaries = [results[slot.name][slot.task.primary_metric] for slot in slots if slot.name in results]
    return {TASK_MEAN: sum(primaries) / len(primaries) if primaries else None, **results}


def update_summary(summary: dict[str, Any], run: Any, teacher_metrics: dict[str, Any] | None) -> None:
    """summary.json: `tasks: {name: {metric, teacher, student, student_to_teacher}}`; the
    top-level teacher and student carry the mean over tasks, the student's parameters count the
    shared encoder once and every head."""
    from brewer_cli.models import parameter_count

    setup: MultiTaskSetup = run.multi
    student_metrics = summary["student"].get("metrics") or {}
    teacher_metrics = teacher_metrics or {}
    final = run.run_dir / "final"
    tasks = {}
    for slot in setup.slots:
        metric = slot.task.primary_metric
        teacher = teacher_metrics.get(slot.name)
        student = student_metrics.get(slot.name)
        teacher_value = (teacher or {}).get(metric)
        student_value = (student or {}).get(metric)
        tasks[slot.name] = {
            "metric": metric,
            "teacher": {"metric": teacher_value, "metrics": teacher, "parameters": parameter_count(slot.teacher.model),
                        "checkpoint": slot.teacher.source},
            "student": {"metric": student_value, "metrics": student, "parameters": parameter_count(slot.model),
                        "checkpoint": str(final / slot.name)},
            "student_to_teacher": student_value / teacher_value if teacher_value and student_value is not None else None,
        }
    summary["tasks"] = tasks
    summary["sampling"] = {"temperature": run.recipe.distillation.sampling_temperature,
                           "probabilities": dict(zip([slot.name for slot in setup.slots], setup.probabilities))}
    teacher_parameters = sum(parameter_count(slot.teacher.model) for slot in setup.slots)
    summary["teacher"] = {"metric": teacher_metrics.get(TASK_MEAN), "metrics": teacher_metrics or None,
                          "parameters": teacher_parameters, "checkpoint": "one teacher per task"}
    summary["student"]["parameters"] = parameter_count(setup.student)
    summary["student"]["checkpoint"] = str(final)
    teacher_value, student_value = summary["teacher"]["metric"], summary["student"]["metric"]
    summary["student_to_teacher"] = student_value / teacher_value if teacher_value and student_value is not None else None
    summary["parameters_ratio"] = summary["student"]["parameters"] / teacher_parameters
