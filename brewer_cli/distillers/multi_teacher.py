"""`multi_teacher`: KD against the weighted mean of several teachers' logits (TextBrewer's
MultiTeacherDistiller), plus `general`'s optional intermediate matches against one teacher.

    z̄ = Σ_k w_k z_k / Σ_k w_k        loss = kd_weight · KD(z_S, z̄, τ) + hard_label_weight · task loss
                                           + Σ matches (student ↔ teachers[match_teacher])

The mean is taken over logits, before the temperature, exactly as TextBrewer does; probability
shift and the temperature schedules see z̄ as they would see one teacher's logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from brewer_cli.distillers.general import GeneralDistiller
from brewer_cli.families import FeatureNeeds
from brewer_cli.multi_teacher import evaluate_teachers, mean_logits, update_summary
from brewer_cli.teacher_cache import TeacherRead


class MultiTeacherDistiller(GeneralDistiller):
    kind = "multi_teacher"

    def __init__(self, run: Any):
        match_index = run.recipe.distillation.match_teacher
        order = [match_index] + [index for index in range(len(run.teachers)) if index != match_index]
        # GeneralDistiller resolves `matches` against run.teachers[0]: give it a view of the run in
        # which the match teacher comes first, then keep the recipe's order.
        super().__init__(dataclasses.replace(run, teachers=[run.teachers[index] for index in order]))
        self.run = run
        object.__setattr__(self, "teachers", list(run.teachers))
        self.match_index = match_index
        self.prefixes: list[str | None] = list(run.multi.prefixes)
        self.weights: list[float] = list(run.multi.weights)
        self.each_teacher_metrics: list[dict[str, Any]] | None = None

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = []
        match_features = None
        for index, teacher in enumerate(self.teachers):
            if index == self.match_index and self.matches:
                # The match teacher shares the student's tokenizer (checked when the run is built).
                match_features = self.teacher_features(batch, teacher)
                logits.append(match_features.logits)
            else:
                logits.append(self.teacher_logits(batch, index))
        student = self.student_features(batch, with_labels=self.settings.hard_label_weight > 0)
        parts = self.logit_losses(batch, student, mean_logits(logits, self.weights))
        if self.matches:
            mask = batch["attention_mask"]
            intermediate = torch.zeros((), device=mask.device)
            for match, key, name in zip(self.matches, self.projection_keys, self.part_names):
                value = self.match_loss(match, key, student, match_features, mask)
                parts[name] = value
                intermediate = intermediate + match.weight * value
            parts["intermediate"] = intermediate
            parts["loss"] = parts["loss"] + intermediate
        return parts

    def teacher_logits(self, batch: dict[str, torch.Tensor], index: int) -> Any:
        """Teacher `index`'s logits on its own tokenization of the batch; no other features."""
        return self.teacher_features(batch, self.teachers[index], needs=FeatureNeeds(), prefix=self.prefixes[index]).logits

    def teacher_reads(self) -> list[TeacherRead]:
        # The match teacher gives the matches' features too; the others their logits only.
        return [
            TeacherRead(index, self.teacher_needs(), self.teacher_feature_layers())
            if index == self.match_index and self.matches else TeacherRead(index, FeatureNeeds(), (), self.prefixes[index])
            for index in range(len(self.teachers))
        ]

    # -- evaluation and summary (pipeline.execute) ----------------------------------------------

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        if self.run.data.eval is None or getattr(self.task, "measured_by_distillation_loss", False):
            # Without labels there is no metric of a teacher (nor of their ensemble).
            return None
        ensemble, each = evaluate_teachers(self.run, self.teachers, self.run.multi, device)
        self.each_teacher_metrics = each
        return ensemble

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        update_summary(summary, self.run, teacher_metrics, self.each_teacher_metrics)

    # -- the plan -------------------------------------------------------------------------------

    def describe_losses(self) -> list[str]:
        total = sum(self.weights)
        teachers = ", ".join(
            f"{index}: {weight / total:.3g}" + (" (own tokenization)" if prefix is not None else "")
            for index, (weight, prefix) in enumerate(zip(self.weights, self.prefixes))
        )
        lines = [f"KD target: the weighted mean of {len(self.teachers)} teachers' logits (weights {teachers})"]
        lines.extend(line for line in super().describe_losses() if not line.startswith("no intermediate matches"))
        if self.matches:
            lines.append(f"intermediate matches read teachers.{self.match_index}")
        return lines
