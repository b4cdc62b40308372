"""The `distillation` section: one spec class per distiller kind, tagged by `kind`.

What differs between the kinds beyond their fields is DECLARED on the spec classes (class
attributes, see `DistillationSpec`), and every list of kinds is read off the `Distillation` union,
so that adding a kind means adding one class to that union.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from brewer_cli.recipe.base import Strict
from brewer_cli.recipe.names import (
    KDLossName,
    MatchLossName,
    PresetName,
    ProjectionName,
    TemperatureScheduleName,
    WeightScheduleName,
)


class ScheduleSpec(Strict):
    kind: TemperatureScheduleName = "constant"
    beta: float | None = None
    gamma: float | None = None


class MatchSpec(Strict):
    """One intermediate match. Layers are hidden_states indices (0 = embeddings, i = layer i; for
    attention features i = layer i's attention); pair losses (fsp/gram, nst/mmd) take `[a, b]`.
    Cross-field and model-dependent checks live in `brewer_cli.matches`."""

    teacher_layer: int | tuple[int, int]
    student_layer: int | tuple[int, int]
    # None: the feature the loss reads (hidden, attention or attention_inputs).
    feature: Literal["hidden", "attention", "attention_inputs", "embedding"] | None = None
    loss: MatchLossName = "hidden_mse"
    weight: float = Field(default=1.0, ge=0)
    projection: ProjectionName | None = Field(default=None, description="linear | relu | tanh; sizes come from the models")
    relation_heads: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _embedding_layers(cls, value: Any) -> Any:
        # `feature: embedding` always reads hidden_states[0], so its layers may be left out.
        if isinstance(value, dict) and value.get("feature") == "embedding":
            value = {"teacher_layer": 0, "student_layer": 0, **value}
        return value


class UniformMatches(Strict):
    """Generate one match per student layer j against teacher layer round(j·N/M)."""

    uniform: Literal[True] = True
    loss: MatchLossName = "hidden_mse"
    feature: Literal["hidden", "attention", "attention_inputs"] | None = None
    weight: float = Field(default=1.0, ge=0)
    projection: ProjectionName | None = None
    relation_heads: int | None = Field(default=None, ge=1)
    include_embeddings: bool = Field(default=False, description="also match the embeddings (layer 0 ↔ 0)")


def _match_entry_kind(value: Any) -> str:
    if isinstance(value, str):
        return "preset-name"
    if isinstance(value, dict) and "uniform" in value:
        return "uniform-entry"
    if isinstance(value, UniformMatches):
        return "uniform-entry"
    return "match-entry"


# Tagged so that a bad entry is reported against the one shape it was meant as, not all three.
MatchEntry = Annotated[
    Annotated[PresetName, Tag("preset-name")]
    | Annotated[MatchSpec, Tag("match-entry")]
    | Annotated[UniformMatches, Tag("uniform-entry")],
    Discriminator(_match_entry_kind),
]
# The tags above, which pydantic puts into error locations (see `brewer_cli.recipe.load`).
MATCH_ENTRY_TAGS = {"preset-name", "match-entry", "uniform-entry"}


class DistillationSpec(Strict):
    """What a distiller kind asks of the rest of the recipe; each kind's class overrides these."""

    # The recipe trains `model` on the labels (no teacher, no student).
    trains_model: ClassVar[bool] = False
    # The recipe field that holds a list of teachers in place of the single `teacher`, or None.
    teachers_section: ClassVar[str | None] = None
    # Each task brings its own task, data and teacher under `tasks.<name>`.
    per_task: ClassVar[bool] = False
    # May be a stage of a staged recipe: distills the recipe's one teacher into its student.
    can_be_a_stage: ClassVar[bool] = False
    # Distills from intermediate features alone, with no logits (general distillation on unlabeled text).
    learns_without_logits: ClassVar[bool] = False


class TrainerDistillation(DistillationSpec):
    trains_model: ClassVar[bool] = True

    kind: Literal["trainer"]


class BasicDistillation(DistillationSpec):
    can_be_a_stage: ClassVar[bool] = True

    kind: Literal["basic"]
    temperature: float = Field(default=4.0, gt=0)
    temperature_schedule: ScheduleSpec = ScheduleSpec()
    temperature_squared: bool = Field(default=False, description="multiply KD by τ² (Hinton)")
    kd_loss: KDLossName = "ce"
    kd_weight: float = Field(default=1.0, ge=0)
    kd_weight_schedule: WeightScheduleName = "constant"
    hard_label_weight: float = Field(default=0.0, ge=0)
    hard_label_weight_schedule: WeightScheduleName = "constant"
    probability_shift: bool = False
    teacher_cache: Literal["auto", "off", "memory", "disk"] = Field(
        default="auto",
        description="keep the frozen teacher's outputs from the first time an example is seen (brewer_cli.teacher_cache): "
        "logits in memory, the matches' features in fp16 in memory or in a memory-mapped file; auto: memory when they "
        "fit 2 GiB, else disk, off for runs of one epoch or less",
    )


class GeneralDistillation(BasicDistillation):
    learns_without_logits: ClassVar[bool] = True
    kind: Literal["general"]  # type: ignore[assignment]
    matches: tuple[MatchEntry, ...] = ()

    @field_validator("matches", mode="before")
    @classmethod
    def _single(cls, value: Any) -> Any:
        # `matches: uniform` and `matches: L4t_hidden_mse` read as one-element lists.
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, list):
            value = [{"uniform": True} if item == "uniform" else item for item in value]
        return value


class MultiTeacherDistillation(GeneralDistillation):
    """KD against the weighted mean of the teachers' logits, Σ w_k z_k / Σ w_k (TextBrewer's
    MultiTeacherDistiller averages logits, not probabilities); optional `matches` read one teacher."""

    teachers_section: ClassVar[str | None] = "teachers"
    # Its target is the mean of the teachers' logits.
    learns_without_logits: ClassVar[bool] = False
    # A stage distills the recipe's single teacher.
    can_be_a_stage: ClassVar[bool] = False

    kind: Literal["multi_teacher"]  # type: ignore[assignment]
    match_teacher: int = Field(default=0, ge=0, description="index in `teachers` of the teacher that `matches` read")


class MultiTaskDistillation(BasicDistillation):
    """One student encoder with a head per task; each batch comes from one task, drawn with
    probability ∝ |D_k|^τ (τ = `sampling_temperature`: 1 proportional to size, 0 uniform)."""

    per_task: ClassVar[bool] = True
    # A stage runs on the recipe's one task and data.
    can_be_a_stage: ClassVar[bool] = False

    kind: Literal["multi_task"]  # type: ignore[assignment]
    sampling_temperature: float = Field(default=1.0, ge=0)
    # The tasks' example indices overlap (each counts from 0), and the cache is keyed by index.
    teacher_cache: Literal["off"] = Field(default="off", description="multi_task runs its teachers on every batch")  # type: ignore[assignment]


Distillation = Annotated[
    TrainerDistillation | BasicDistillation | GeneralDistillation | MultiTeacherDistillation | MultiTaskDistillation,
    Field(discriminator="kind"),
]


def kind_of(spec: type[DistillationSpec]) -> str:
    """The `kind` that selects this spec class."""
    return typing.get_args(spec.model_fields["kind"].annotation)[0]


# The spec classes in the union's order, and what is read off them.
DISTILLATION_SPECS: tuple[type[DistillationSpec], ...] = typing.get_args(typing.get_args(Distillation)[0])
DISTILLATION_KINDS = tuple(kind_of(spec) for spec in DISTILLATION_SPECS)
STAGE_KINDS = tuple(kind_of(spec) for spec in DISTILLATION_SPECS if spec.can_be_a_stage)


def distillation_spec(kind: Any) -> type[DistillationSpec] | None:
    """The spec class of `kind`, None for a kind no class declares."""
    return next((spec for spec in DISTILLATION_SPECS if kind_of(spec) == kind), None)
