"""`basic`: logit KD against the teacher plus a weighted hard-label loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from brewer_cli.distillers.base import Distiller, DistillerInputs
from brewer_cli.features import Features
from brewer_cli.losses import KD_LOSSES, SOFTMAX_KD_LOSSES, kd_loss, probability_shift, trim_to_vocabulary, vocabularies_differ
from brewer_cli.recipe import Recipe
from brewer_cli.schedulers import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES

# step, total steps → the weight at that step
WeightAt = Callable[[int, int], float]


@dataclass(frozen=True)
class LogitKD:
    """The logit-KD and hard-label settings, resolved once by the build step: functions, not
    registry names (`describe` keeps the names for the plan)."""

    loss: Callable  # a KD_LOSSES function
    weight: float
    weight_at: WeightAt
    # student logits, teacher logits, mask → the temperature (a float, or one per row)
    temperature_of: Callable
    temperature_squared: bool
    probability_shift: bool
    hard_label_weight: float
    hard_label_weight_at: WeightAt
    describe: tuple[str, ...]  # the plan's lines


class BasicDistiller(Distiller):
    kind = "basic"
    reads_teacher_store = True

    def __init__(self, inputs: DistillerInputs, logit_kd: LogitKD):
        super().__init__(inputs)
        self.logit_kd = logit_kd

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        distillation = recipe.distillation
        problems = [
            f"{recipe.path}: {field}: {registry.unknown_message(name)}"
            for registry, name, field in (
                (KD_LOSSES, distillation.kd_loss, "distillation.kd_loss"),
                (TEMPERATURE_SCHEDULES, distillation.temperature_schedule.kind, "distillation.temperature_schedule.kind"),
                (WEIGHT_SCHEDULES, distillation.kd_weight_schedule, "distillation.kd_weight_schedule"),
                (WEIGHT_SCHEDULES, distillation.hard_label_weight_schedule, "distillation.hard_label_weight_schedule"),
            )
            if name not in registry
        ]
        if distillation.kd_weight == 0 and distillation.hard_label_weight == 0 and not getattr(distillation, "matches", ()):
            # kd_weight 0 skips logit KD entirely, so nothing would be left to learn from.
            problems.insert(
                0,
                f"{recipe.path}: distillation.kd_weight: with kd_weight 0, hard_label_weight 0 and no "
                f"matches there is no loss — raise kd_weight or hard_label_weight, or add intermediate matches",
            )
        return problems + _softmax_over_one_logit(recipe)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = self.teacher_features(batch)
        student = self.student_features(batch, with_labels=self.logit_kd.hard_label_weight > 0)
        return self.logit_losses(batch, student, teacher.logits)

    def logit_losses(self, batch: dict[str, torch.Tensor], student: Features, teacher_logits) -> dict[str, torch.Tensor]:
        """KD (+ hard label) shared by basic, general, multi-teacher and multi-task distillation."""
        settings = self.logit_kd
        if settings.weight == 0:
            # No logit KD at all, not KD × 0: TinyBERT's intermediate stage and general distillation
            # (whose encoders have no logits) set kd_weight 0, and the schedules only scale it.
            parts: dict[str, torch.Tensor] = {}
            loss = torch.zeros((), device=batch["attention_mask"].device)
        else:
            parts, loss = self._kd(batch, student, teacher_logits)
        if settings.hard_label_weight > 0:
            parts["hard_label"] = student.task_loss
            loss = loss + settings.hard_label_weight_at(self.current_step, self.total_steps) * student.task_loss
        parts["loss"] = loss
        return parts

    def _kd(
        self, batch: dict[str, torch.Tensor], student: Features, teacher_logits
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        settings = self.logit_kd
        mask = self.task.kd_mask(batch)
        student_logits = student.logits
        if vocabularies_differ(student_logits, teacher_logits):
            # Checkpoints padded past the tokenizer (151,936 vs 152,064 rows): compare the real tokens only.
            student_logits, teacher_logits = trim_to_vocabulary(
                student_logits, teacher_logits, len(self.loaded_student.tokenizer)
            )
        if settings.probability_shift:
            teacher_logits = probability_shift(teacher_logits, self.task.labels(batch))
        temperature = settings.temperature_of(student_logits, teacher_logits, mask)
        kd = kd_loss(settings.loss, student_logits, teacher_logits, temperature, mask, settings.temperature_squared)
        return {"kd": kd}, settings.weight_at(self.current_step, self.total_steps) * kd

    def describe_losses(self) -> list[str]:
        return list(self.logit_kd.describe)


def _softmax_over_one_logit(recipe: Recipe) -> list[str]:
    """A softmax KD loss (`ce`, `kl`) on a regression task (num_labels 1): the softmax over one
    logit is always 1, so the loss is 0 with zero gradient and, with the default hard-label weight
    0, nothing but weight decay would move the student."""
    distillation = recipe.distillation
    name = distillation.kd_loss
    # kd_weight 0 skips logit KD entirely (TinyBERT's intermediate stage), so any kd_loss is unused.
    if distillation.kd_weight == 0 or name not in KD_LOSSES or KD_LOSSES.canonical(name) not in SOFTMAX_KD_LOSSES:
        return []
    if recipe.tasks is not None:
        fields = [f"tasks.{task}.task.num_labels" for task, entry in recipe.tasks.items() if entry.task.num_labels == 1]
    else:
        fields = ["task.num_labels"] if recipe.task is not None and recipe.task.num_labels == 1 else []
    return [
        f"{recipe.path}: distillation.kd_loss: `{name}` compares softmax distributions over the classes, but "
        f"{field} is 1 (regression), and a softmax over one logit is always 1: the loss would be constant with "
        f"zero gradient, so the student would learn nothing from the teacher — set `distillation.kd_loss: mse`, "
        f"which compares the logits themselves"
        for field in fields
    ]
