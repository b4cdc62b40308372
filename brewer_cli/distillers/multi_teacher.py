"""`multi_teacher`: KD against the weighted mean of several teachers' logits (TextBrewer's
MultiTeacherDistiller), plus `general`'s optional intermediate matches against one teacher.

    z̄ = Σ_k w_k z_k / Σ_k w_k        loss = kd_weight · KD(z_S, z̄, τ) + hard_label_weight · task loss
                                           + Σ matches (student ↔ teachers[match_teacher])

The mean is taken over logits, before the temperature, exactly as TextBrewer does (not the mean of
the teachers' softmax(z_k/τ)); probability shift and the temperature schedules see z̄ as they would
see one teacher's logits. A teacher whose tokenizer differs from the student's reads the examples
tokenized its way (brewer_cli.tasks.views); that works for sequence-level tasks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from brewer_cli.distillers.base import DistillerInputs
from brewer_cli.distillers.basic import LogitKD
from brewer_cli.distillers.general import GeneralDistiller
from brewer_cli.evaluation import evaluate_outputs
from brewer_cli.families import parameter_count
from brewer_cli.families.placement import place_teacher, teacher_features
from brewer_cli.features import FeatureNeeds
from brewer_cli.matches import ResolvedMatch
from brewer_cli.recipe import Recipe
from brewer_cli.tasks.views import view_batch
from brewer_cli.teacher_cache import TeacherRead


def mean_logits(logits: Sequence[Any], weights: Sequence[float]) -> Any:
    """Σ_k w_k z_k / Σ_k w_k, element-wise; QA's (start, end) logits are averaged per element."""
    if isinstance(logits[0], tuple):
        return tuple(mean_logits([item[part] for item in logits], weights) for part in range(len(logits[0])))
    total = float(sum(weights))
    # In fp32 at least: bf16 teachers' logits summed in bf16 would lose the small differences
    # between teachers that the mean is for (bf16 keeps 8 bits of mantissa).
    upcast = [value.to(torch.promote_types(value.dtype, torch.float32)) for value in logits]
    return sum(weight * value for weight, value in zip(weights, upcast)) / total


class MultiTeacherDistiller(GeneralDistiller):
    kind = "multi_teacher"

    def __init__(
        self,
        inputs: DistillerInputs,
        logit_kd: LogitKD,
        matches: list[ResolvedMatch],
        match_teacher: int,
        prefixes: list[str | None],
        weights: list[float],
    ):
        """`prefixes`: per teacher, the prefix of the token columns it reads (None: the student's);
        `weights`: its weight in the mean of the logits."""
        super().__init__(inputs, logit_kd, matches, match_teacher)
        self.prefixes = list(prefixes)
        self.weights = list(weights)
        self.each_teacher_metrics: list[dict[str, Any]] | None = None

    @classmethod
    def check_before_loading(cls, recipe: Recipe) -> None:
        """Nothing before loading: the matches read the match teacher, checked once it is loaded."""

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
        student = self.student_features(batch, with_labels=self.logit_kd.hard_label_weight > 0)
        parts = self.logit_losses(batch, student, mean_logits(logits, self.weights))
        self.add_match_losses(parts, batch, student, match_features)
        return parts

    def teacher_logits(self, batch: dict[str, torch.Tensor], index: int) -> Any:
        """Teacher `index`'s logits on its own tokenization of the batch; no other features."""
        return self.teacher_features(batch, self.teachers[index], needs=FeatureNeeds(), prefix=self.prefixes[index]).logits

    def teacher_reads(self) -> list[TeacherRead]:
        # The match teacher gives the matches' features too; the others their logits only.
        return [
            TeacherRead(index, self.teacher_needs(), self.teacher_feature_layers())
            if index == self.match_index and self.matches
            else TeacherRead(index, FeatureNeeds(), (), self.prefixes[index])
            for index in range(len(self.teachers))
        ]

    # -- evaluation and summary -----------------------------------------------------------------

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        """Metrics of the ensemble (the weighted mean of the logits, the student's target) and of
        each teacher, each reading its own tokenization."""
        if self.data.eval is None or self.task.measured_by_distillation_loss:
            # Without labels there is no metric of a teacher (nor of their ensemble).
            return None
        for teacher in self.teachers:
            place_teacher(teacher, device)

        def outputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
            # Each teacher on its own device (teacher.device); the logits meet on `device`.
            logits = [
                teacher_features(teacher, view_batch(batch, prefix), logits_of=self.task.logits).logits
                for teacher, prefix in zip(self.teachers, self.prefixes)
            ]
            return {"ensemble": mean_logits(logits, self.weights), **dict(enumerate(logits))}

        metrics = evaluate_outputs(self.eval_setup(), outputs, device)
        self.each_teacher_metrics = [metrics[index] for index in range(len(self.teachers))]
        return metrics["ensemble"]

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        """summary.json: `teacher` is the ensemble the student learned from (its parameters: all the
        teachers'), `teachers` lists each one."""
        metric = summary["metric"]
        counts = [parameter_count(teacher.model) for teacher in self.teachers]
        summary["teachers"] = [
            {
                "checkpoint": teacher.source,
                "weight": weight,
                "parameters": count,
                "metric": (metrics or {}).get(metric),
                "metrics": metrics,
            }
            for teacher, weight, count, metrics in zip(
                self.teachers, self.weights, counts, self.each_teacher_metrics or [None] * len(self.teachers)
            )
        ]
        ensemble_value = (teacher_metrics or {}).get(metric)
        summary["teacher"] = {
            "metric": ensemble_value,
            "metrics": teacher_metrics,
            "parameters": sum(counts),
            "checkpoint": f"weighted mean of the logits of {len(self.teachers)} teachers",
        }
        student_value = summary["student"]["metric"]
        summary["student_to_teacher"] = student_value / ensemble_value if ensemble_value and student_value is not None else None
        summary["parameters_ratio"] = summary["student"]["parameters"] / sum(counts)

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
