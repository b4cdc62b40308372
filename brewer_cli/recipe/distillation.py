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
    # The task kinds this kind can distill (empty: any): generating completions needs a language model.
    only_for_tasks: ClassVar[tuple[str, ...]] = ()


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
    jsd_beta: float = Field(
        default=0.5,
        description="β of kd_loss jsd, 0 < β < 1: β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S "
        "(GKD/TRL); near 0 it acts as forward KL, near 1 as reverse KL",
    )
    skew_alpha: float = Field(
        default=0.1,
        description="α of kd_loss skew_kl, KL(p_T ‖ α·p_T + (1−α)·p_S), and skew_reverse_kl, "
        "KL(p_S ‖ α·p_S + (1−α)·p_T) (DistiLLM), 0 ≤ α < 1; 0 is plain forward / reverse KL",
    )
    teacher_cache: Literal["auto", "off", "memory", "disk", "prefill"] = Field(
        default="auto",
        description="keep the frozen teacher's outputs (brewer_cli.teacher_cache): logits in memory, the matches' "
        "features (hidden states int8 with a scale per token, others fp16) in memory or in a file. prefill: computed in one teacher pass before training "
        "into teacher_outputs/ beside the runs, shared by later runs of the same teacher and data; memory / disk: "
        "filled as examples are first seen; auto: prefill (in memory while it adds at most 5% to the run's own peak "
        "memory, else on disk), off for runs "
        "of one epoch or less",
    )

    @field_validator("jsd_beta")
    @classmethod
    def _open_unit_interval(cls, value: float) -> float:
        # At β = 0 and β = 1 the mixture is one of the two distributions and JSD(β) is 0 for every input.
        if not 0 < value < 1:
            raise ValueError(
                f"{value} is outside 0 < β < 1 — at 0 and 1 JSD(β) is 0 whatever the student does; its limits are "
                f"other losses: kd_loss forward_kl (β → 0) or reverse_kl (β → 1)"
            )
        return value

    @field_validator("skew_alpha")
    @classmethod
    def _skew_range(cls, value: float) -> float:
        if not 0 <= value < 1:
            raise ValueError(
                f"{value} is outside 0 ≤ α < 1 — α is the share of the target's own distribution in the mixture, "
                f"and at α = 1 the skew KL is 0 whatever the student does; α = 0 is plain KL"
            )
        return value


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


class GenerationSpec(Strict):
    """How completions are generated (transformers `generate`): greedy unless `sample`, then with
    `temperature`, `top_p` and `top_k` (0: no top-k cut), from a generator seeded by `seed`."""

    max_new_tokens: int = Field(default=64, ge=1, description="the most tokens a completion may have")
    sample: bool = Field(default=False, description="sample (temperature, top_p, top_k) instead of greedy decoding")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature (not the KD temperature)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this mass")
    top_k: int = Field(default=0, ge=0, description="keep the k most likely tokens; 0 keeps all")
    seed: int | None = Field(default=None, description="the sampling seed (default: training.seed)")
    prompt_tokens: int | None = Field(
        default=None, ge=1, description="plain text has no prompts: continue the first N tokens of each example instead"
    )

    @model_validator(mode="after")
    def _sampling_settings_need_sampling(self) -> GenerationSpec:
        # Greedy decoding takes the arg-max: these would be silently ignored.
        ignored = [
            f"{name}: {getattr(self, name)}"
            for name, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0))
            if getattr(self, name) != default
        ]
        if not self.sample and ignored:
            raise ValueError(
                f"{', '.join(ignored)} only act when sampling, but `sample` is false (greedy decoding) — set `sample: true`, "
                f"or remove {'them' if len(ignored) > 1 else 'it'}"
            )
        return self


class SampledGenerationSpec(GenerationSpec):
    """`generation` of on-policy distillation, which samples unless told otherwise."""

    sample: bool = Field(default=True, description="sample (temperature, top_p, top_k) instead of greedy decoding")


class SequenceKDDistillation(BasicDistillation):
    """Sequence-level KD (Kim & Rush 2016): the teacher generates a completion for every training
    prompt, once (cached on disk under a fingerprint of the teacher, tokenizer, prompts and
    `generation`), and the student trains on prompt + teacher completion: the data cross-entropy on
    the completion tokens (`hard_label_weight`), optionally with token KD against the teacher on
    those tokens (`kd_weight`, `kd_loss`)."""

    can_be_a_stage: ClassVar[bool] = False
    only_for_tasks: ClassVar[tuple[str, ...]] = ("causal_lm",)

    kind: Literal["sequence_kd"]  # type: ignore[assignment]
    temperature: float = Field(default=1.0, gt=0)
    kd_loss: KDLossName = "forward_kl"
    kd_weight: float = Field(default=0.0, ge=0, description="token KD on the teacher's completions (0: sequence-level only)")
    hard_label_weight: float = Field(default=1.0, ge=0, description="cross-entropy on the teacher's completion tokens")
    generation: GenerationSpec = GenerationSpec()
    generation_cache: str | None = Field(
        default=None,
        description="where the teacher's completions are kept (default: $BREWER_CACHE, else ~/.cache/brewer, /sequence_kd)",
    )
    # The training examples are the generated ones; the teacher runs on each batch when kd_weight > 0.
    teacher_cache: Literal["off"] = Field(default="off", description="sequence_kd runs its teacher on every batch")  # type: ignore[assignment]


class OnPolicyDistillation(BasicDistillation):
    """On-policy distillation (GKD, Agarwal et al. 2024): with probability `student_data_fraction`
    (GKD's λ) a batch's completions are sampled from the student for its prompts, the teacher
    scores prompt + sample, and the loss is `kd_loss` over the sampled completion tokens only;
    otherwise the batch's own completions are used (λ = 0 is supervised token KD). The draws and
    the samples come from generators seeded by (seed, step), so a run is reproducible and a
    resumed run equals an uninterrupted one."""

    can_be_a_stage: ClassVar[bool] = False
    only_for_tasks: ClassVar[tuple[str, ...]] = ("causal_lm",)

    kind: Literal["on_policy"]  # type: ignore[assignment]
    # GKD's defaults: the divergence at τ = 1, generalized JSD with β = 0.5 (`jsd_beta`).
    temperature: float = Field(default=1.0, gt=0)
    kd_loss: KDLossName = "jsd"
    student_data_fraction: float = Field(
        default=0.5, ge=0, le=1, description="λ: the share of batches whose completions the student samples (TRL's lmbda)"
    )
    generation: SampledGenerationSpec = SampledGenerationSpec()
    # Student samples change every batch: nothing the teacher says about them can be kept.
    teacher_cache: Literal["off"] = Field(default="off", description="on_policy runs its teacher on every batch")  # type: ignore[assignment]


Distillation = Annotated[
    TrainerDistillation
    | BasicDistillation
    | GeneralDistillation
    | MultiTeacherDistillation
    | MultiTaskDistillation
    | SequenceKDDistillation
    | OnPolicyDistillation,
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
