"""`multi_task`: one student encoder with a head per task, each task with its own teacher.

The student is one `AutoModelFor…` per task (the task's own head class), built from the same
`student` spec, whose base models share their modules: the embeddings and the encoder are one set
of weights, the heads are per task. (A base module that only some head classes build — BERT's
pooler, which token classifiers leave out — is shared by the tasks that have it.) So every task's
model is an ordinary transformers model: `final/<task>/` is its `save_pretrained` directory and
reproduces the multi-task model's outputs for that task exactly.

Each batch is one task's (brewer_cli.tasks.ordering draws the task ∝ |D_k|^τ) and is distilled from
that task's teacher with `basic`'s losses (KD + hard label, schedules, probability shift). The build
step (brewer_cli.build.multi_task) loads the teachers and the shared student and prepares each
task's data; this module holds the student, the per-task slots and the loop's hooks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

from brewer_cli.distillers.base import DistillerInputs
from brewer_cli.distillers.basic import BasicDistiller, LogitKD
from brewer_cli.evaluation import EvalSetup, evaluate_model
from brewer_cli.families import parameter_count
from brewer_cli.families.loading import LoadedModel
from brewer_cli.families.placement import place_teacher, teacher_features
from brewer_cli.features import FeatureNeeds
from brewer_cli.models import save_model_dir
from brewer_cli.tasks import PreparedData, Task
from brewer_cli.tasks.ordering import MultiTaskBatchSampler
from brewer_cli.tasks.views import view_batch

TASK_MEAN = "task_mean"


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
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if name not in self._tied_weights_keys
        }
        save_file(state, str(directory / "model.safetensors"))

    def export(self, directory: Path, tokenizer: Any) -> None:
        """final/<task>/ (and best/<task>/): one `save_pretrained` directory per task."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, model in self.models.items():
            save_model_dir(model, tokenizer, directory / name)
        tasks = {name: type(model).__name__ for name, model in self.models.items()}
        (directory / "tasks.json").write_text(
            json.dumps(
                {"tasks": tasks, "note": "one transformers model directory per task, sharing the encoder's weights"}, indent=2
            )
        )


@dataclass
class TaskSlot:
    name: str
    task: Task
    data: PreparedData  # tokenized the student's way (+ the teacher's columns when it reads its own)
    collate: Callable
    teacher: LoadedModel
    teacher_prefix: str | None  # None: the teacher reads the student's token columns
    eval_batch_size: int
    model: nn.Module | None = None  # this task's student model (its base shared with the others)

    def eval_setup(self) -> EvalSetup:
        return EvalSetup(self.task, self.data, self.collate, self.eval_batch_size)

    def teacher_eval_setup(self) -> EvalSetup:
        """The eval split as the teacher reads it (its own columns under the usual names)."""
        collate = self.collate if self.teacher_prefix is None else _TeacherColumns(self.collate, self.teacher_prefix)
        return EvalSetup(self.task, self.data, collate, self.eval_batch_size)


class _TeacherColumns:
    """A collate whose batches carry the teacher's token columns under the usual names."""

    def __init__(self, collate: Callable, prefix: str):
        self.collate = collate
        self.prefix = prefix

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return view_batch(self.collate(items), self.prefix)


class TaskGroup:
    """The task of a multi-task run: what the loop and the summary read of "the task" — the mean
    of the tasks' primary metrics (all of which are greater-is-better)."""

    name = "multi_task"
    primary_metric = TASK_MEAN
    greater_is_better = True
    measured_by_distillation_loss = False
    generates_text = False

    def __init__(self, slots: list[TaskSlot]):
        self.slots = slots


class MultiTaskDistiller(BasicDistiller):
    kind = "multi_task"
    # One teacher per task, each run live (build.store reads one teacher's store, kind basic).
    reads_teacher_store = False
    exports_several_students = True
    # Each batch is one task's: the other tasks' heads get no gradient on that step.
    leaves_parameters_unused = True
    # Its export writes one model per task from the live modules, not from a gathered state dict.
    shards_with_fsdp = False

    def __init__(
        self,
        inputs: DistillerInputs,
        logit_kd: LogitKD,
        slots: list[TaskSlot],
        student: MultiTaskStudent,
        probabilities: list[float],
        sampling_temperature: float,
    ):
        super().__init__(inputs, logit_kd)
        self.slots = slots
        self.probabilities = probabilities
        self.sampling_temperature = sampling_temperature
        # The trained module is every task's model, their shared encoder counted once.
        self.student = student

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        slot = self.slots[int(batch["task"][0])]
        # logit_losses reads the task of the batch (its KD mask and labels) from self.task.
        self.task = slot.task
        # On the teacher's device (teacher.device), its logits returned on the student's.
        teacher_logits = teacher_features(slot.teacher, view_batch(batch, slot.teacher_prefix), logits_of=slot.task.logits).logits
        labels = slot.task.labels(batch) if self.logit_kd.hard_label_weight > 0 else None
        student = self.student_family.features(slot.model, batch, FeatureNeeds(), labels=labels, logits_of=slot.task.logits)
        return self.logit_losses(batch, student, teacher_logits)

    # -- the loop's hooks -----------------------------------------------------------------------

    def teacher_reads(self) -> list:
        # No teacher-output cache: the tasks' example indices overlap (each task counts from 0).
        return []

    def train_loader(self, processes: int = 1) -> tuple[DataLoader, MultiTaskBatchSampler]:
        # One task per batch, drawn per batch: Accelerate deals them out to the processes.
        training = self.training_settings
        sampler = MultiTaskBatchSampler(self.data.train.sizes, training.batch_size, training.seed, self.sampling_temperature)
        loader = DataLoader(
            self.data.train,
            batch_sampler=sampler,
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(training.seed),
        )
        return loader, sampler

    def evaluate(self, accelerator: Any = None) -> dict[str, Any]:
        results = {
            slot.name: evaluate_model(slot.eval_setup(), slot.model, self.student_family, accelerator)
            for slot in self.slots
            if slot.data.eval is not None
        }
        return self._with_mean(results)

    def export_student(self, directory: Path, student_weights: dict[str, torch.Tensor] | None = None) -> None:
        # One model per task around a shared encoder: never sharded (shards_with_fsdp is False).
        self.student.export(directory, self.loaded_student.tokenizer)

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        results = {}
        for slot in self.slots:
            if slot.data.eval is None:
                continue
            place_teacher(slot.teacher, device)
            results[slot.name] = evaluate_model(slot.teacher_eval_setup(), slot.teacher.model, slot.teacher.family)
        return self._with_mean(results) if results else None

    def _with_mean(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        primaries = [results[slot.name][slot.task.primary_metric] for slot in self.slots if slot.name in results]
        return {TASK_MEAN: sum(primaries) / len(primaries) if primaries else None, **results}

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        """summary.json: `tasks: {name: {metric, teacher, student, student_to_teacher}}`; the
        top-level teacher and student carry the mean over tasks, the student's parameters count the
        shared encoder once and every head."""
        student_metrics = summary["student"].get("metrics") or {}
        teacher_metrics = teacher_metrics or {}
        final = Path(summary["student"]["checkpoint"])
        tasks = {}
        for slot in self.slots:
            metric = slot.task.primary_metric
            teacher = teacher_metrics.get(slot.name)
            student = student_metrics.get(slot.name)
            teacher_value = (teacher or {}).get(metric)
            student_value = (student or {}).get(metric)
            tasks[slot.name] = {
                "metric": metric,
                "teacher": {
                    "metric": teacher_value,
                    "metrics": teacher,
                    "parameters": parameter_count(slot.teacher.model),
                    "checkpoint": slot.teacher.source,
                },
                "student": {
                    "metric": student_value,
                    "metrics": student,
                    "parameters": parameter_count(slot.model),
                    "checkpoint": str(final / slot.name),
                },
                "student_to_teacher": student_value / teacher_value if teacher_value and student_value is not None else None,
            }
        summary["tasks"] = tasks
        summary["sampling"] = {
            "temperature": self.sampling_temperature,
            "probabilities": dict(zip([slot.name for slot in self.slots], self.probabilities)),
        }
        teacher_parameters = sum(parameter_count(slot.teacher.model) for slot in self.slots)
        summary["teacher"] = {
            "metric": teacher_metrics.get(TASK_MEAN),
            "metrics": teacher_metrics or None,
            "parameters": teacher_parameters,
            "checkpoint": "one teacher per task",
        }
        summary["student"]["parameters"] = parameter_count(self.student)
        teacher_value, student_value = summary["teacher"]["metric"], summary["student"]["metric"]
        summary["student_to_teacher"] = student_value / teacher_value if teacher_value and student_value is not None else None
        summary["parameters_ratio"] = summary["student"]["parameters"] / teacher_parameters

    # -- the plan -------------------------------------------------------------------------------

    def describe_losses(self) -> list[str]:
        lines = super().describe_losses()
        lines.append(
            f"student: {parameter_count(self.student):,} parameters in all — one encoder, {len(self.slots)} heads "
            f"(the student line above counts the {self.slots[0].name} model)"
        )
        for slot, probability in zip(self.slots, self.probabilities):
            own = ", teacher reads its own tokenization" if slot.teacher_prefix is not None else ""
            lines.append(
                f"task {slot.name} ({slot.task.name}): {len(slot.data.train):,} examples, batches drawn with "
                f"p = {probability:.3f} (∝ size^{self.sampling_temperature:g}), teacher {slot.teacher.source}{own}"
            )
        return lines
