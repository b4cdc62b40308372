"""`basic`: logit KD against the teacher plus a weighted hard-label loss."""

from __future__ import annotations

import torch

from brewer_cli.distillers.base import Distiller
from brewer_cli.families import Features
from brewer_cli.losses import kd_loss, probability_shift
from brewer_cli.schedulers import temperature_for, weight_for


class BasicDistiller(Distiller):
    kind = "basic"

    def __init__(self, run):
        super().__init__(run)
        self.settings = run.recipe.distillation

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = self.teacher_features(batch)
        student = self.student_features(batch, with_labels=self.settings.hard_label_weight > 0)
        parts = self.logit_losses(batch, student, teacher.logits)
        return parts

    def logit_losses(
        self, batch: dict[str, torch.Tensor], student: Features, teacher_logits
    ) -> dict[str, torch.Tensor]:
        """KD (+ hard label) shared by basic, general and multi-teacher distillation."""
        settings = self.settings
        if settings.kd_weight == 0:
            # No logit KD at all, not KD × 0: TinyBERT's intermediate stage and general distillation
            # (whose encoders have no logits) set kd_weight 0, and the schedules only scale it.
            parts: dict[str, torch.Tensor] = {}
            loss = torch.zeros((), device=batch["attention_mask"].device)
        else:
            parts, loss = self._kd(batch, student, teacher_logits)
        if settings.hard_label_weight > 0:
            hard_weight = weight_for(
                settings.hard_label_weight_schedule, settings.hard_label_weight, self.current_step, self.total_steps
            )
            parts["hard_label"] = student.task_loss
            loss = loss + hard_weight * student.task_loss
        parts["loss"] = loss
        return parts

    def _kd(self, batch: dict[str, torch.Tensor], student: Features, teacher_logits) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        settings = self.settings
        mask = self.task.kd_mask(batch)
        if settings.probability_shift:
            teacher_logits = probability_shift(teacher_logits, self.task.labels(batch))
        schedule = settings.temperature_schedule
        params = {name: getattr(schedule, name) for name in ("beta", "gamma") if getattr(schedule, name) is not None}
        temperature = temperature_for(schedule.kind, settings.temperature, student.logits, teacher_logits, mask, **params)
        kd_weight = weight_for(settings.kd_weight_schedule, settings.kd_weight, self.current_step, self.total_steps)
        kd = kd_loss(settings.kd_loss, student.logits, teacher_logits, temperature, mask, settings.temperature_squared)
        return {"kd": kd}, kd_weight * kd

    def describe_losses(self) -> list[str]:
        settings = self.settings
        schedule = settings.temperature_schedule
        if settings.kd_weight == 0:
            lines = ["no logit KD (kd_weight 0)"]
        else:
            lines = [
                f"KD {settings.kd_loss} × {settings.kd_weight} ({settings.kd_weight_schedule}), temperature "
                f"{settings.temperature} ({schedule.kind}){', ×τ²' if settings.temperature_squared else ''}"
                f"{', probability shift' if settings.probability_shift else ''}"
            ]
        if settings.hard_label_weight > 0:
            lines.append(f"hard label × {settings.hard_label_weight} ({settings.hard_label_weight_schedule})")
        return lines
