"""`multi_task`: one student encoder with a head per task; each batch is one task's and is
distilled from that task's teacher with `basic`'s losses (KD + hard label, schedules, probability
shift). The data, the shared student and the sampling are built in brewer_cli.multi_task; this
class computes the loss and answers the loop's hooks (data loader, evaluation, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from brewer_cli.distillers.basic import BasicDistiller
from brewer_cli.families import FeatureNeeds
from brewer_cli.multi_task import (
    MultiTaskBatchSampler,
    MultiTaskSetup,
    evaluate_students,
    evaluate_task_teachers,
    update_summary,
)
from brewer_cli.teacher_views import view_batch


class MultiTaskDistiller(BasicDistiller):
    kind = "multi_task"

    def __init__(self, run: Any):
        super().__init__(run)
        self.setup: MultiTaskSetup = run.multi
        self.slots = self.setup.slots
        # The trained module is every task's model, their shared encoder counted once.
        self.student = self.setup.student

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        slot = self.slots[int(batch["task"][0])]
        # logit_losses reads the task of the batch (its KD mask and labels) from self.task.
        self.task = slot.task
        teacher = slot.teacher
        with torch.inference_mode():
            features = teacher.family.features(teacher.model, view_batch(batch, slot.teacher_prefix), FeatureNeeds(),
                                               logits_of=slot.task.logits)
        # Inference tensors cannot be saved for backward; clones made outside inference mode can.
        teacher_logits = features.logits
        teacher_logits = (tuple(item.clone() for item in teacher_logits) if isinstance(teacher_logits, tuple)
                          else teacher_logits.clone())
        labels = slot.task.labels(batch) if self.settings.hard_label_weight > 0 else None
        student = self.student_family.features(slot.model, batch, FeatureNeeds(), labels=labels, logits_of=slot.task.logits)
        return self.logit_losses(batch, student, teacher_logits)

    # -- the loop's hooks -----------------------------------------------------------------------

    def teacher_reads(self) -> list:
        # No teacher-output cache: the tasks' example indices overlap (each task counts from 0).
        return []

    def train_loader(self, training: Any) -> tuple[DataLoader, MultiTaskBatchSampler]:
        data = self.run.data.train
        sampler = MultiTaskBatchSampler(data.sizes, training.batch_size, training.seed,
                                        self.recipe.distillation.sampling_temperature)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=self.run.collate,
                            generator=torch.Generator().manual_seed(training.seed))
        return loader, sampler

    def evaluate(self, accelerator: Any = None) -> dict[str, Any]:
        return evaluate_students(self.slots, self.student_family, accelerator)

    def export_student(self, directory: Path) -> None:
        self.student.export(directory, self.run.student.tokenizer)

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        return evaluate_task_teachers(self.slots, device)

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        update_summary(summary, self.run, teacher_metrics)

    # -- the plan -------------------------------------------------------------------------------

    def describe_losses(self) -> list[str]:
        from brewer_cli.models import parameter_count

        lines = super().describe_losses()
        lines.append(f"student: {parameter_count(self.student):,} parameters in all — one encoder, {len(self.slots)} heads "
                     f"(the student line above counts the {self.slots[0].name} model)")
        temperature = self.recipe.distillation.sampling_temperature
        for slot, probability in zip(self.slots, self.setup.probabilities):
            own = ", teacher reads its own tokenization" if slot.teacher_prefix is not None else ""
            lines.append(f"task {slot.name} ({slot.task.name}): {len(slot.data.train):,} examples, batches drawn with "
                         f"p = {probability:.3f} (∝ size^{temperature:g}), teacher {slot.teacher.source}{own}")
        return lines
