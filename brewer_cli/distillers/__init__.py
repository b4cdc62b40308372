"""Registered distillers; `distillation.kind` names one. Each computes its loss and answers the
loop's hooks; the loop itself is `brewer_cli.loop.TrainingLoop`. This file is the list of kinds:
adding a distiller is one module here plus one line below (and its builder in brewer_cli.build)."""

from __future__ import annotations

from brewer_cli.distillers.base import Distiller, DistillerInputs
from brewer_cli.distillers.basic import BasicDistiller, LogitKD
from brewer_cli.distillers.general import GeneralDistiller
from brewer_cli.distillers.multi_task import MultiTaskDistiller
from brewer_cli.distillers.multi_teacher import MultiTeacherDistiller
from brewer_cli.distillers.on_policy import OnPolicyDistiller
from brewer_cli.distillers.sequence_kd import SequenceKDDistiller
from brewer_cli.distillers.trainer import TrainerDistiller
from brewer_cli.registry import Registry

DISTILLERS: Registry[type[Distiller]] = Registry("distiller")
DISTILLERS.add("trainer", TrainerDistiller, "supervised training of `model` on the labels (teacher fine-tuning)")
DISTILLERS.add("basic", BasicDistiller, "logit KD (ce | kl | mse, temperature, schedules) + weighted hard-label loss")
DISTILLERS.add(
    "general",
    GeneralDistiller,
    "basic + intermediate-layer matches (hidden, attention, relations; presets, uniform map, projections)",
)
DISTILLERS.add(
    "multi_teacher",
    MultiTeacherDistiller,
    "KD against the weighted mean of several teachers' logits (each may use its own tokenizer) + hard label; optional matches against one teacher",
)
DISTILLERS.add(
    "multi_task",
    MultiTaskDistiller,
    "one student encoder with a head per task, each task distilled from its own teacher; batches drawn per task ∝ |D_k|^τ",
)
DISTILLERS.add(
    "sequence_kd",
    SequenceKDDistiller,
    "sequence-level KD for causal LMs (Kim & Rush): the student trains on the teacher's completions of the "
    "training prompts (generated once, cached), cross-entropy + optional token KD",
)
DISTILLERS.add(
    "on_policy",
    OnPolicyDistiller,
    "on-policy KD for causal LMs (GKD): with probability student_data_fraction (λ) a batch's completions are "
    "sampled from the student and the teacher scores them, kd_loss on the sampled tokens; else token KD on the data",
)

__all__ = ["DISTILLERS", "Distiller", "DistillerInputs", "LogitKD"]
