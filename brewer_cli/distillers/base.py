"""What every distiller is: an `nn.Module` whose `forward(batch)` is its `compute_loss`.

It holds the student (and any projections) as submodules, so Accelerate wraps exactly the trainable
part in DDP, clips it and saves it, while teachers are kept outside the module tree — frozen, in
eval mode, under `torch.inference_mode`, never wrapped. A distiller gets values, not the recipe:
the build step resolves losses, schedules, projections and weights once and hands them over; the
loop (brewer_cli.loop) asks the hooks below for data, evaluation, export and summary.

What differs between kinds is declared here as class attributes and read through the registry
(`DISTILLERS.get(kind).needs_teacher`, …), never switched on by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from brewer_cli.evaluation import EvalSetup, average_losses, eval_batch_size, evaluate_model
from brewer_cli.families.loading import LoadedModel
from brewer_cli.families.placement import model_device, place_teacher, release_teacher, teacher_features
from brewer_cli.features import FeatureNeeds, Features
from brewer_cli.models import save_model_dir
from brewer_cli.recipe import Recipe, TrainingSpec
from brewer_cli.tasks import PreparedData
from brewer_cli.tasks.ordering import EpochSampler, ProcessBatches
from brewer_cli.tasks.views import view_batch
from brewer_cli.teacher_cache import TeacherRead, open_teacher_cache


@dataclass(frozen=True)
class DistillerInputs:
    """What every distiller is built from: the task and its prepared data, the models, the
    training settings the loaders read, and what the teacher-output cache keys on."""

    task: Any
    data: PreparedData
    collate: Callable
    student: LoadedModel  # for kind `trainer`: the model being trained
    teachers: tuple[LoadedModel, ...]
    training: TrainingSpec
    teacher_cache_mode: str = "off"  # distillation.teacher_cache
    max_length: int | None = None  # data.max_length: part of the teacher cache's fingerprint
    source: Path | None = None  # the recipe file, named in messages
    # `teacher: {store: DIR}`: the teacher's sparse logits from a store (brewer_cli.logit_store), no
    # teacher model in memory; `teachers` is then empty.
    teacher_store: Any = None
    # The eval split's collate when it differs from training's (masks fixed across evaluations).
    eval_collate: Callable | None = None


class Distiller(nn.Module, ABC):
    """Base class: subclasses implement `compute_loss` and declare how they differ."""

    kind: ClassVar[str] = ""
    # Declared differences, read through the registry by build and commands.
    needs_teacher: ClassVar[bool] = True  # False: supervised training of one model (teacher fine-tuning)
    exports_several_students: ClassVar[bool] = False  # final/<task>/ per task instead of one final/
    # Some student parameters may get no gradient on a step (a head no loss reads, another task's
    # head): DDP must then look for unused parameters, which costs every step and warns on launch.
    leaves_parameters_unused: ClassVar[bool] = False
    # Whether the student may be sharded with FSDP (brewer_cli/sharding.py): its export writes one
    # model from the gathered state dict.
    shards_with_fsdp: ClassVar[bool] = True
    # The losses read nothing of the teacher but its logits, so a store of them (`teacher.store`)
    # can stand in for the teacher model.
    reads_teacher_store: ClassVar[bool] = False

    def __init__(self, inputs: DistillerInputs):
        super().__init__()
        self.inputs = inputs
        self.task = inputs.task
        self.data = inputs.data
        self.collate = inputs.collate
        self.training_settings = inputs.training
        self.loaded_student = inputs.student
        self.student = inputs.student.model
        self.student_family = inputs.student.family
        # Teachers stay out of the module tree: not trained, not saved, not wrapped in DDP.
        object.__setattr__(self, "teachers", list(inputs.teachers))
        self.total_steps = 1
        self.current_step = 0
        # Set by the loop when the run caches teacher outputs (brewer_cli.teacher_cache).
        self.teacher_cache: Any = None
        # Set by `compile_student` (training.compile): the backend and the models compiled.
        self.compiled: dict[str, Any] | None = None

    # -- validation, before any model is loaded -------------------------------------------------

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        """Problems of the recipe's `distillation` section that this kind checks (registry names,
        settings that leave nothing to learn); each line names the file and the dotted field."""
        return []

    @classmethod
    def check_before_loading(cls, recipe: Recipe) -> None:
        """Checks against the model configs readable before any weight is loaded (matches' layers
        and widths); raises a `BrewerError`."""

    # -- what subclasses provide ----------------------------------------------------------------

    @abstractmethod
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The total `loss` plus named parts for logging."""

    def student_needs(self) -> FeatureNeeds:
        return FeatureNeeds()

    def teacher_needs(self) -> FeatureNeeds:
        return FeatureNeeds()

    def describe_losses(self) -> list[str]:
        """One line per loss term, for the dry-run plan."""
        return []

    # -- the loop's hooks; multi-task distillation brings its own data, evaluation and export ---

    def train_loader(self, processes: int = 1) -> tuple[DataLoader, Any]:
        """The training batches and the sampler whose `set_epoch` orders an epoch; with several
        processes, batches that Accelerate deals out so that each example is read once (ProcessBatches)."""
        training = self.training_settings
        data = self.data.train
        # The loader's own generator: creating an epoch's iterator draws a seed from it, and drawing
        # from the global RNG instead would shift dropout masks after a resume.
        generator = torch.Generator().manual_seed(training.seed)
        if data.streamed:
            # In the order it is read; its position is its own state (checkpointed by the loop).
            return DataLoader(data, batch_size=training.batch_size, collate_fn=self.collate, generator=generator), data
        sampler = EpochSampler(
            len(data),
            training.seed,
            training.batch_size,
            lengths=data.lengths() if training.group_by_length else None,
        )
        if processes > 1:
            batches = ProcessBatches(sampler, training.batch_size, processes)
            return DataLoader(data, batch_sampler=batches, collate_fn=self.collate, generator=generator), batches
        loader = DataLoader(data, batch_size=training.batch_size, sampler=sampler, collate_fn=self.collate, generator=generator)
        return loader, sampler

    def eval_setup(self) -> EvalSetup:
        collate = self.inputs.eval_collate or self.collate
        return EvalSetup(self.task, self.data, collate, eval_batch_size(self.training_settings))

    def evaluate(self, accelerator: Any = None) -> dict[str, Any]:
        """The student's metrics on the eval split; the loop keeps the best by the task's primary
        metric. Tasks without labels (general distillation) are measured by this distiller's loss
        and its parts, with the student in eval mode."""
        if self.task.measured_by_distillation_loss:
            device = accelerator.device if accelerator is not None else next(self.student.parameters()).device
            was_training = self.training
            self.eval()
            losses = average_losses(self.eval_setup(), self.compute_loss, device, accelerator)
            self.train(was_training)
            return losses
        return evaluate_model(self.eval_setup(), self.student, self.student_family, accelerator)

    def export_student(self, directory: Path, student_weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the student as a `save_pretrained` directory with its tokenizer (best/, final/).
        `student_weights`: its state dict gathered from the processes' shards (FSDP)."""
        save_model_dir(self.student, self.loaded_student.tokenizer, directory, student_weights)

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        """The teacher's metrics on the eval split, reported beside the student's."""
        store = self.inputs.teacher_store
        if store is not None and store.load_teacher is not None and self.data.eval is not None:
            # Loaded for its evaluation only, then let go: training reads the store. None: the
            # checkpoint's weights are no longer the captured ones (`store.unavailable` says so).
            teacher = store.teacher_for_metrics()
            if teacher is None:
                return None
            place_teacher(teacher, device)
            return evaluate_model(self.eval_setup(), teacher.model, teacher.family)
        if not self.teachers or self.data.eval is None or self.task.measured_by_distillation_loss:
            # Without labels a teacher has no metric either (its distillation loss is 0 by definition).
            return None
        teacher = self.teachers[0]
        # Evaluated where it runs (teacher.device; `auto`: `device`); the batches follow it.
        place_teacher(teacher, device)
        return evaluate_model(self.eval_setup(), teacher.model, teacher.family)

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        """Add what this kind of distillation has to say to summary.json (several teachers, tasks)."""
        store = self.inputs.teacher_store
        if store is not None:
            metric = self.task.primary_metric
            summary["teacher"] = {
                **store.summary(),
                "metric": (teacher_metrics or {}).get(metric),
                "metrics": teacher_metrics,
            }
            if teacher_metrics is None:
                summary["teacher"]["metrics_unavailable"] = store.unavailable
            student, teacher = summary["student"]["metric"], summary["teacher"]["metric"]
            summary["student_to_teacher"] = student / teacher if teacher and student is not None else None

    def log_statistics(self) -> dict[str, float]:
        """Numbers this kind adds to each metrics.jsonl line, over the micro-batches since the last
        line (on-policy: the share of sampled batches, their mean length); counting starts again."""
        return {}

    # -- shared helpers -------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.compute_loss(batch)

    def student_features(self, batch: dict[str, torch.Tensor], with_labels: bool = True) -> Features:
        labels = self.task.labels(batch) if with_labels else None
        return self.student_family.features(self.student, batch, self.student_needs(), labels=labels, logits_of=self.task.logits)

    def teacher_features(
        self,
        batch: dict[str, torch.Tensor],
        teacher: LoadedModel | None = None,
        needs: FeatureNeeds | None = None,
        prefix: str | None = None,
    ) -> Features:
        """A teacher's outputs on `batch` (`prefix`: the columns of a teacher with its own
        tokenization), from the teacher-output cache while training when the run keeps one."""
        store = self.inputs.teacher_store
        if store is not None and teacher is None:
            if not self.training:
                # Eval batches index the eval split; the store holds the training split only.
                raise RuntimeError("a teacher store holds the training split's logits only; evaluation reads the student")
            return store.features(batch, self.task.kd_mask(batch))
        teacher = teacher or self.teachers[0]
        needs = self.teacher_needs() if needs is None else needs

        def compute(examples: dict[str, torch.Tensor]) -> Features:
            # On the teacher's device (teacher.device), returned on the student's.
            return teacher_features(teacher, view_batch(examples, prefix), needs, logits_of=self.task.logits)

        # Only training batches: evaluation batches index the eval split, not the cached train split.
        if self.teacher_cache is None or not self.training:
            return compute(batch)
        index = next(number for number, loaded in enumerate(self.teachers) if loaded is teacher)
        read = self.teacher_cache.read_of(index)
        if read is None or read.needs != needs or read.prefix != prefix:
            raise RuntimeError(
                f"teacher {index} is read with {needs}, prefix {prefix!r}, but teacher_reads() declared "
                f"{read} — the cache would return other features than the losses ask for"
            )
        return self.teacher_cache.features(index, batch, compute, self.current_step)

    # -- the teacher-output cache and compilation (brewer_cli.teacher_cache, training.compile) --

    def teacher_feature_layers(self) -> tuple[tuple[str, int], ...]:
        """(hidden | attention | attention_inputs, layer) pairs the losses read from the teacher."""
        return ()

    def teacher_reads(self) -> list[TeacherRead]:
        """What each teacher's forward gives the losses; the teacher-output cache keeps exactly that."""
        if not self.needs_teacher or not self.teachers:
            return []
        return [TeacherRead(0, self.teacher_needs(), self.teacher_feature_layers())]

    def open_teacher_cache(
        self,
        run_dir: Path,
        resume: bool,
        step: int,
        total_steps: int,
        steps_per_epoch: int,
        accelerator: Any,
        precision: str,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.teacher_cache = open_teacher_cache(
            self, run_dir, resume, step, total_steps, steps_per_epoch, accelerator, precision, on_progress
        )
        if self.teacher_cache is not None and self.teacher_cache.prefilled and not self.teachers_run_after_prefill:
            # Training reads every teacher output from the store: the weights are let go (release_teacher).
            for teacher in self.teacher_cache.stores:
                release_teacher(self.teachers[teacher])

    @property
    def teachers_run_after_prefill(self) -> bool:
        """Whether a teacher still runs once a prefilled store holds its outputs on the training
        split: an evaluation measured by this distiller's loss runs it on the eval split, and the
        summary of a text-generating task shows the teacher's own completions."""
        return self.task.measured_by_distillation_loss or self.task.generates_text

    def teacher_outputs_of(self, read: TeacherRead, indices: list[int]) -> Features:
        """What teacher `read.teacher` gives the losses on these training examples, as one batch:
        the prefilled teacher-output store's pass (brewer_cli.teacher_cache.prefill)."""
        teacher = self.teachers[read.teacher]
        # Built where the teacher sits (teacher.device): its outputs go to the store on the CPU, so
        # nothing needs to pass through the student's device.
        device = model_device(teacher.model)
        batch = {
            name: value.to(device) if torch.is_tensor(value) else value
            for name, value in self.collate([self.data.train[index] for index in indices]).items()
        }
        return teacher_features(teacher, view_batch(batch, read.prefix), read.needs, logits_of=self.task.logits)

    def persist_teacher_cache(self) -> None:
        if self.teacher_cache is not None:
            self.teacher_cache.persist()

    def compile_student(self, backend: str) -> None:
        """`training.compile`: compile each model's forward in place (`nn.Module.compile`), so that
        parameter names — and with them checkpoints, resume and exports — stay the plain model's.
        What was compiled goes to summary.json (`self.compiled`)."""

        def outermost(module: nn.Module) -> list[nn.Module]:
            # A multi-task student holds one model per task around a shared encoder: each is compiled.
            if isinstance(module, PreTrainedModel):
                return [module]
            return [found for child in module.children() for found in outermost(child)]

        models = outermost(self.student) or [self.student]
        for model in models:
            model.compile(backend=backend)
        self.compiled = {"backend": backend, "models": [type(model).__name__ for model in models]}

    def progress(self) -> float:
        return self.current_step / max(self.total_steps, 1)

    @property
    def _no_split_modules(self) -> list[str]:
        """The student's layer classes, read by Accelerate's FSDP `fsdp_auto_wrap_policy:
        TRANSFORMER_BASED_WRAP` (a transformers model declares them; the distiller around it does
        not), so that each layer becomes its own shard unit without naming its class in the config."""
        return list(getattr(self.student, "_no_split_modules", None) or [])
