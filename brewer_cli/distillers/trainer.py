"""`trainer`: supervised training of one model (teacher fine-tuning); no teacher involved."""

from __future__ import annotations

import torch

from brewer_cli.distillers.base import Distiller


class TrainerDistiller(Distiller):
    kind = "trainer"
    needs_teacher = False

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.student_features(batch)
        return {"loss": features.task_loss}

    def describe_losses(self) -> list[str]:
        return [f"task loss ({'MSE' if self.task.spec.num_labels == 1 else 'cross-entropy'}) on the labels"]
