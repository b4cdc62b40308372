"""The recipe schema and its loader.

A recipe is one YAML or JSON file, read with `yaml.safe_load` only (no tags, no code). The schema is
strict (`extra="forbid"`) and frozen: after `load_recipe` returns, nothing in the run mutates it.
Every problem is collected and reported at once as `file: dotted.path: what is wrong (did you
mean …?) — valid: …`.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from brewer_cli.errors import RecipeError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- task and data


class TaskSpec(Strict):
    kind: str = Field(description="registered task, see `brewer catalog`")
    num_labels: int | None = Field(default=None, ge=1, description="classes; 1 means regression")
    labels: tuple[str, ...] | None = Field(default=None, description="label names in id order")
    # Token classification / QA settings live here too, read by their task only.
    doc_stride: int | None = Field(default=None, ge=1)
    max_answer_length: int | None = Field(default=None, ge=1)
    n_best: int | None = Field(default=None, ge=1)
    version_2_with_negative: bool | None = None
    label_all_tokens: bool | None = None


class DataSource(Strict):
    """One split: from the hub, from a local file, from a `save_to_disk` directory, or generated."""

    hub: str | None = None
    config: str | None = None
    split: str | None = None
    path: str | None = None
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "disk", "conll", "squad"] = "auto"
    quoting: bool = Field(default=False, description="TSV: honour CSV quoting (off: plain tab split)")
    synthetic: str | None = Field(default=None, description="a generator registered in brewer_cli.synthetic")
    examples: int | None = Field(default=None, ge=1, description="synthetic: how many examples")
    seed: int = 0
    limit: int | None = Field(default=None, ge=1, description="keep only the first N examples")
    articles: str | None = Field(
        default=None,
        description='SQuAD: keep the questions of articles START:END (0-based, END excluded, like a Python '
        'slice, e.g. "0:38" and "38:48"), so a train/eval split never shares a paragraph; applied before `limit`',
    )
    # Column names; when absent the values under `data` apply.
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None

    @field_validator("articles")
    @classmethod
    def _article_range(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\s*\d*\s*:\s*\d*\s*", value):
            raise ValueError(f"{value!r} is not an article range — write START:END, e.g. \"0:38\" (either side may be empty)")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> "DataSource":
        origins = [name for name in ("hub", "path", "synthetic") if getattr(self, name) is not None]
        if len(origins) != 1:
            raise ValueError(
                "give exactly one of `hub`, `path` or `synthetic`"
                + (f" (found {', '.join(origins)})" if origins else "")
            )
        if self.hub is not None and self.split is None:
            raise ValueError("a hub source needs `split` (e.g. train, validation)")
        return self


class AugmentSpec(Strict):
    """TinyBERT data augmentation of the training split (brewer_cli.augment), run before training
    and cached: each word outside a built-in stop-word list is a candidate; a single-piece word takes
    the masked LM's top `candidates` predictions, a multi-piece word (or every word, without `model`)
    its nearest neighbours in `word_vectors`; `variants` tries per example, each replacing every
    candidate word with probability `probability`. The original is kept, duplicates are dropped."""

    model: str | None = Field(default=None, description="masked-LM checkpoint with its MLM head: hub id, directory or python-package:NAME")
    word_vectors: str | None = Field(default=None, description="word vectors in GloVe text format (`word v1 v2 …` per line), "
                                     "or embeddings:CHECKPOINT for a model's input embeddings of whole words")
    tokenizer: str | None = Field(default=None, description="splits words when there is no `model` (default: the teacher's)")
    variants: int = Field(default=20, ge=1, description="N_a: augmented variants tried per example")
    probability: float = Field(default=0.4, gt=0, le=1, description="p: chance that a candidate word is replaced")
    candidates: int = Field(default=15, ge=1, description="K: MLM predictions (or neighbours) per word")
    seed: int = 0
    batch_size: int = Field(default=64, ge=1, description="masked-LM inference batch")
    output: str | None = Field(default=None, description="the augmented file (.jsonl or .tsv); default: the cache, ~/.cache/brewer/augment/")

    @model_validator(mode="after")
    def _a_source_of_candidates(self) -> "AugmentSpec":
        if self.model is None and self.word_vectors is None:
            raise ValueError("give `model` (a masked LM), `word_vectors` (a GloVe-format file), or both")
        return self


class DataSpec(Strict):
    train: DataSource
    eval: DataSource | None = None
    augment: AugmentSpec | None = Field(default=None, description="augment the training split first (TinyBERT)")
    max_length: int = Field(default=128, ge=8, le=8192)
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    # Extra fields per task (token classification / QA column names).
    tokens: str | None = None
    tags: str | None = None
    question: str | None = None
    context: str | None = None
    answers: str | None = None


# ----------------------------------------------------------------------------- models


class WordPieceTraining(Strict):
    vocab_size: int = Field(default=1000, ge=16)
    lowercase: bool = True
    min_frequency: int = Field(default=1, ge=1)


class TokenizerSpec(Strict):
    """A tokenizer from a directory or hub id, or a WordPiece vocabulary trained on the training text."""

    path: str | None = None
    train_wordpiece: WordPieceTraining | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> "TokenizerSpec":
        if (self.path is None) == (self.train_wordpiece is None):
            raise ValueError("give exactly one of `path` or `train_wordpiece`")
        return self


class ExtractSpec(Strict):
    """ETD: build the student from the teacher's own parameters."""

    from_: Literal["teacher"] = Field(default="teacher", alias="from")
    layers: int | tuple[int, ...] | None = None
    selection: Literal["uniform", "first", "last"] = "uniform"
    hidden: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    intermediate: int | None = Field(default=None, ge=1)
    strategy: Literal["random", "importance"] = "importance"
    hidden_scoring: Literal["taylor", "activation"] = "taylor"
    rounds: int = Field(default=1, ge=1)
    seed: int = 0
    examples: int = Field(default=256, ge=1, description="importance: examples scored")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class InitSpec(Strict):
    extract: ExtractSpec


class ModelSpec(Strict):
    """A model: a checkpoint (local directory or hub id), a config (random init), or extracted."""

    checkpoint: str | None = None
    config: str | dict[str, Any] | None = None
    init: InitSpec | None = None
    tokenizer: TokenizerSpec | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> "ModelSpec":
        origins = [name for name in ("checkpoint", "config", "init") if getattr(self, name) is not None]
        if len(origins) != 1:
            raise ValueError(
                "give exactly one of `checkpoint`, `config` or `init`"
                + (f" (found {', '.join(origins)})" if origins else "")
            )
        return self


# torch.compile backends `training.compile` may name (`true` means inductor).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


class TrainingSpec(Strict):
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=5.0e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.1, ge=0, le=1, description="fraction of steps with linear warmup")
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    gradient_accumulation: int = Field(default=1, ge=1)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 42
    eval_every: int | None = Field(default=None, ge=1, description="steps; default once per epoch")
    save_every: int | None = Field(default=None, ge=1, description="steps; default = eval_every")
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    group_by_length: bool = False
    progress: bool = True
    compile: bool | str = Field(
        default=False, description="torch.compile the student in place (true = inductor, or a backend by name: "
        f"{', '.join(COMPILE_BACKENDS)}): slow first steps (and one recompile per new batch shape until shapes go "
        "dynamic), faster steps after, mostly on GPUs")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_backend_known(cls, value: Any) -> Any:
        # Before the union: one message naming every valid value, not one per union member.
        if isinstance(value, bool) or value in COMPILE_BACKENDS:
            return value
        raise ValueError(f"{value!r} is not allowed{_did_you_mean(str(value), list(COMPILE_BACKENDS))} — valid: true, "
                         f"false, {', '.join(COMPILE_BACKENDS)}")

    @property
    def compile_backend(self) -> str | None:
        """The torch.compile backend `compile` asks for, None when off."""
        if self.compile is False:
            return None
        return "inductor" if self.compile is True else self.compile


class TeacherTraining(Strict):
    """How to train the teacher when `teacher.checkpoint` does not exist yet."""

    model: ModelSpec
    training: TrainingSpec = TrainingSpec()


class TeacherSpec(ModelSpec):
    train: TeacherTraining | None = None

    @model_validator(mode="after")
    def _train_target(self) -> "TeacherSpec":
        if self.train is not None:
            if self.checkpoint is None:
                raise ValueError("`train` needs `checkpoint`: the directory the trained teacher is written to")
            if Path(self.checkpoint).name != "final":
                raise ValueError(
                    "with `train`, `checkpoint` must be a run's final directory (…/<run name>/final), "
                    f"got {self.checkpoint!r}"
                )
        return self


class WeightedTeacherSpec(TeacherSpec):
    """One entry of `teachers:` (kind multi_teacher)."""

    weight: float = Field(default=1.0, gt=0, description="its share in the weighted mean of the teachers' logits")


def _task_name(name: str) -> str:
    # A task's name becomes a directory of the exported student (final/<task>/).
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError("a task name becomes the directory final/<name>/ of its student: use letters, digits, "
                         "'.', '_' or '-', starting with a letter or digit")
    return name


TaskName = Annotated[str, AfterValidator(_task_name)]


class TaskEntry(Strict):
    """One entry of `tasks:` (kind multi_task): the task, its data and the teacher for it."""

    task: TaskSpec
    data: DataSpec
    teacher: TeacherSpec


# ----------------------------------------------------------------------------- distillation


class ScheduleSpec(Strict):
    kind: str = "constant"
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
    loss: str = "hidden_mse"
    weight: float = Field(default=1.0, ge=0)
    projection: str | None = Field(default=None, description="linear | relu | tanh; sizes come from the models")
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
    loss: str = "hidden_mse"
    feature: Literal["hidden", "attention", "attention_inputs"] | None = None
    weight: float = Field(default=1.0, ge=0)
    projection: str | None = None
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
    Union[
        Annotated[str, Tag("preset-name")],
        Annotated[MatchSpec, Tag("match-entry")],
        Annotated[UniformMatches, Tag("uniform-entry")],
    ],
    Discriminator(_match_entry_kind),
]
_TAGS = {"preset-name", "match-entry", "uniform-entry"}


class TrainerDistillation(Strict):
    kind: Literal["trainer"]


class BasicDistillation(Strict):
    kind: Literal["basic"]
    temperature: float = Field(default=4.0, gt=0)
    temperature_schedule: ScheduleSpec = ScheduleSpec()
    temperature_squared: bool = Field(default=False, description="multiply KD by τ² (Hinton)")
    kd_loss: str = "ce"
    kd_weight: float = Field(default=1.0, ge=0)
    kd_weight_schedule: str = "constant"
    hard_label_weight: float = Field(default=0.0, ge=0)
    hard_label_weight_schedule: str = "constant"
    probability_shift: bool = False
    teacher_cache: Literal["auto", "off", "memory", "disk"] = Field(
        default="auto",
        description="keep the frozen teacher's outputs from the first time an example is seen (brewer_cli.teacher_cache): "
        "logits in memory, the matches' features in fp16 in memory or in a memory-mapped file; auto: memory when they "
        "fit 2 GiB, else disk, off for runs of one epoch or less",
    )


class GeneralDistillation(BasicDistillation):
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

    kind: Literal["multi_teacher"]  # type: ignore[assignment]
    match_teacher: int = Field(default=0, ge=0, description="index in `teachers` of the teacher that `matches` read")


class MultiTaskDistillation(BasicDistillation):
    """One student encoder with a head per task; each batch comes from one task, drawn with
    probability ∝ |D_k|^τ (τ = `sampling_temperature`: 1 proportional to size, 0 uniform)."""

    kind: Literal["multi_task"]  # type: ignore[assignment]
    sampling_temperature: float = Field(default=1.0, ge=0)
    # The tasks' example indices overlap (each counts from 0), and the cache is keyed by index.
    teacher_cache: Literal["off"] = Field(default="off", description="multi_task runs its teachers on every batch")  # type: ignore[assignment]


Distillation = Annotated[
    Union[TrainerDistillation, BasicDistillation, GeneralDistillation, MultiTeacherDistillation, MultiTaskDistillation],
    Field(discriminator="kind"),
]
DISTILLATION_KINDS = ("trainer", "basic", "general", "multi_teacher", "multi_task")


class _Required:
    """Stands in for `task` / `data` when a kind that needs them lacks them, so that pydantic
    reports the absence together with every other problem (see `_explain`)."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


STAGE_KINDS = ("basic", "general")


class StageSpec(Strict):
    """One stage of a staged recipe (TinyBERT's task distillation: intermediate layers, then
    predictions). Stage k runs in <run>/stage-k with the recipe's task, data and teacher, its own
    distillation, and `training` fields that override the recipe's; its student is stage k − 1's
    final/ (stage 1's is the recipe's `student`)."""

    name: str | None = Field(default=None, description="a label for the plan and summary.json, e.g. intermediate")
    training: dict[str, Any] = Field(default_factory=dict, description="fields of `training` that differ in this stage")
    distillation: Distillation


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # Required by every kind but multi_task, whose tasks each carry their own (see `_required_sections`).
    task: TaskSpec | None = None
    data: DataSpec | None = None
    teacher: TeacherSpec | None = None
    teachers: tuple[WeightedTeacherSpec, ...] | None = Field(default=None, description="kind multi_teacher")
    tasks: dict[TaskName, TaskEntry] | None = Field(default=None, description="kind multi_task: name → task, data, teacher")
    student: ModelSpec | None = None
    model: ModelSpec | None = Field(default=None, description="kind trainer: the model to train")
    training: TrainingSpec = TrainingSpec()
    distillation: Distillation
    # With stages, `distillation` is not written: it stands for the last stage's (see `_stages`).
    stages: tuple[StageSpec, ...] | None = Field(default=None, min_length=1, description="run these stages in order (brewer_cli.stages)")

    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        return self._path

    @model_validator(mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        """A staged recipe's `distillation` is its last stage's, so that every reader of
        `recipe.distillation` (checks, teacher training, the plan) sees the kind that ends the run."""
        if not isinstance(value, dict) or not isinstance(value.get("stages"), list):
            return value
        if "distillation" in value:
            raise _CrossFieldProblems([("distillation", "with `stages`, each stage names its own distillation — move "
                                        "the top-level `distillation` into a stage, or remove `stages`")])
        last = value["stages"][-1] if value["stages"] else None
        if isinstance(last, dict) and isinstance(last.get("distillation"), dict):
            return {**value, "distillation": last["distillation"]}
        return value

    @model_validator(mode="before")
    @classmethod
    def _required_sections(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        distillation = value.get("distillation")
        kind = distillation.get("kind") if isinstance(distillation, dict) else getattr(distillation, "kind", None)
        if kind == "multi_task" or "tasks" in value:
            # With `tasks`, the cross-field check explains the kind instead (`_models_for_kind`).
            return value
        return {**value, **{name: _REQUIRED for name in ("task", "data") if name not in value}}

    @model_validator(mode="after")
    def _models_for_kind(self) -> "Recipe":
        problems: list[tuple[str, str]] = []
        kind = self.distillation.kind
        if kind == "trainer":
            if self.model is None:
                problems.append(("model", "kind `trainer` trains `model`: give `model: {checkpoint: …}` or `{config: …}`"))
            for unused in ("teacher", "student"):
                if getattr(self, unused) is not None:
                    problems.append((unused, f"kind `trainer` has no {unused}; name the model to train under `model`"))
        else:
            if kind == "multi_teacher":
                problems.extend(self._multi_teacher_problems())
            elif kind == "multi_task":
                problems.extend(self._multi_task_problems())
            elif self.teacher is None:
                problems.append(("teacher", "distillation needs a teacher: `teacher: {checkpoint: …}`"))
            if self.student is None:
                problems.append(("student", "distillation needs a student: `student: {config: …}` or `{checkpoint: …}`"))
            if self.model is not None:
                problems.append(("model", "`model` is for kind `trainer`; a distillation recipe names `teacher` and `student`"))
        if kind != "multi_teacher" and self.teachers is not None:
            problems.append(("teachers", f"`teachers` (a list) is for kind `multi_teacher`; kind `{kind}` "
                             + ("takes one teacher per task under `tasks.<name>.teacher`" if kind == "multi_task" else
                                "names one `teacher` — or set `distillation.kind: multi_teacher`")))
        if kind != "multi_task" and self.tasks is not None:
            problems.append(("tasks", f"`tasks` is for kind `multi_task`; kind `{kind}` reads one `task` and `data` "
                             f"— or set `distillation.kind: multi_task`"))
            problems.extend((name, "required field is missing") for name in ("task", "data") if getattr(self, name) is None)
        if self.stages is not None:
            problems.extend(self._stage_problems())
        for name, entry in (self.tasks or {}).items():
            if entry.data.augment is not None:
                problems.append((f"tasks.{name}.data.augment", "augmentation runs before single-task recipes only — "
                                 "write the augmented file with `brewer augment` and name it in the task's `data.train`"))
        if problems:
            raise _CrossFieldProblems(problems)
        return self

    def _stage_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        base = self.training.model_dump()
        valid = sorted(TrainingSpec.model_fields)
        for index, stage in enumerate(self.stages):
            where = f"stages.{index}"
            if stage.distillation.kind not in STAGE_KINDS:
                problems.append((f"{where}.distillation.kind", f"a stage distills the recipe's teacher into its student: "
                                 f"kind {' or '.join(STAGE_KINDS)}, not {stage.distillation.kind!r}"))
            unknown = [key for key in stage.training if key not in TrainingSpec.model_fields]
            for key in unknown:
                problems.append((f"{where}.training.{key}", f"unknown key{_did_you_mean(key, valid)} — valid: {', '.join(valid)}"))
            if unknown:
                continue
            try:
                # A stage's training is the recipe's with the stage's fields replaced.
                TrainingSpec.model_validate({**base, **stage.training})
            except ValidationError as error:
                for item in error.errors(include_url=False):
                    dotted = ".".join(str(part) for part in item["loc"])
                    problems.append((f"{where}.training.{dotted}", item["msg"].removeprefix("Value error, ")))
        return problems

    def _multi_teacher_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.teacher is not None:
            problems.append(("teacher", "kind `multi_teacher` reads `teachers: [{checkpoint: …}, …]` (a list); move "
                             "`teacher` into `teachers`"))
        if not self.teachers:
            problems.append(("teachers", "kind `multi_teacher` needs `teachers: [{checkpoint: …, weight: …}, …]` "
                             "with at least one entry"))
        elif self.distillation.match_teacher >= len(self.teachers):
            problems.append(("distillation.match_teacher", f"{self.distillation.match_teacher} is not an index of "
                             f"`teachers` (0…{len(self.teachers) - 1})"))
        return problems

    def _multi_task_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for name in ("task", "data", "teacher"):
            if getattr(self, name) is not None:
                problems.append((name, f"kind `multi_task` takes each task's `{name}` under `tasks.<name>.{name}`; "
                                 f"remove the top-level `{name}`"))
        if not self.tasks:
            problems.append(("tasks", "kind `multi_task` needs `tasks: {NAME: {task: …, data: …, teacher: …}, …}` "
                             "with at least one task"))
        return problems


class _CrossFieldProblems(ValueError):
    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


# ----------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; raise `RecipeError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"{path}: recipe file not found — give the path of a .yaml or .json recipe "
            f"(the shipped ones are under recipes/)"
        )
    raw = read_mapping(path)
    for override in overrides:
        apply_override(raw, override, path)
    return validate_recipe(raw, path)


def read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise RecipeError(f"{path}:{error.lineno}:{error.colno}: malformed JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"{where}: malformed YAML: {problem} — fix the syntax at that line and column") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields (name, task, data, …), got {type(data).__name__}")
    return data


def apply_override(raw: dict[str, Any], override: str, path: Path) -> None:
    """Apply `a.b.c=value`; the value is parsed as YAML so numbers, booleans and lists keep their type."""
    if "=" not in override:
        raise RecipeError(f"{path}: --set {override!r}: expected DOTTED.PATH=VALUE, e.g. --set training.epochs=3")
    dotted, _, text = override.partition("=")
    keys = [key for key in dotted.strip().split(".") if key]
    if not keys:
        raise RecipeError(f"{path}: --set {override!r}: the path before '=' is empty")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            index = _list_index(node, key, keys[: depth + 1], path)
            node = node[index]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        if not isinstance(node[key], (dict, list)):
            raise RecipeError(
                f"{path}: --set {dotted}: `{'.'.join(keys[: depth + 1])}` is a value, not a section"
            )
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys, path)] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, keys: list[str], path: Path) -> int:
    if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
        raise RecipeError(
            f"{path}: --set {'.'.join(keys)}: `{key}` is not an index of a list of {len(node)} entries"
        )
    return int(key)


def validate_recipe(raw: dict[str, Any], path: Path) -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(describe_validation_error(error, raw, path)) from None
    recipe._path = path
    return recipe


# Pydantic puts union member names and discriminator tags into error locations; a user's dotted
# path must not contain them.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict\[.*\]|tuple\[.*\]|list\[.*\]|[A-Z][A-Za-z]+|function-.*)$")


def describe_validation_error(error: ValidationError, raw: dict[str, Any], path: Path) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for item in error.errors(include_url=False):
        for dotted, message in _explain(item, raw):
            line = f"{path}: {dotted}: {message}" if dotted else f"{path}: {message}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
    return lines


def _explain(item: dict[str, Any], raw: dict[str, Any]) -> list[tuple[str, str]]:
    kind = item["type"]
    location = _clean_location(item["loc"], raw)
    dotted = ".".join(str(part) for part in location)
    context = item.get("ctx") or {}
    if kind == "value_error" and isinstance(context.get("error"), _CrossFieldProblems):
        return [(field, message) for field, message in context["error"].problems]
    if kind == "extra_forbidden":
        parent = _schema_at(location[:-1], raw)
        valid = sorted(_field_names(parent)) if parent else []
        return [(dotted, f"unknown key{_did_you_mean(str(location[-1]), valid)}" + (f" — valid: {', '.join(valid)}" if valid else ""))]
    if kind == "missing" or item.get("input") is _REQUIRED:
        return [(dotted, "required field is missing")]
    if kind == "union_tag_invalid":
        tag = context.get("tag")
        valid = list(DISTILLATION_KINDS) if location[-1:] == ["distillation"] or dotted == "distillation" else []
        suffix = _did_you_mean(str(tag), valid) + (f" — valid: {', '.join(valid)}" if valid else f" — valid: {context.get('expected_tags')}")
        return [(f"{dotted}.kind" if dotted else "kind", f"unknown distiller kind {tag!r}{suffix}")]
    if kind == "union_tag_not_found":
        return [(f"{dotted}.kind", f"required field is missing — valid: {', '.join(DISTILLATION_KINDS)}")]
    if kind == "literal_error":
        expected = str(context.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        given = item.get("input")
        return [(dotted, f"{given!r} is not allowed{_did_you_mean(str(given), choices)} — valid: {', '.join(choices) or expected}")]
    message = item["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return [(dotted, message)]


def _clean_location(location: tuple, raw: dict[str, Any]) -> list[Any]:
    cleaned: list[Any] = []
    node: Any = raw
    for part in location:
        # Keep a part when it exists in the user's data; drop pydantic's union/tag annotations.
        if isinstance(node, dict) and part in node:
            cleaned.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            cleaned.append(part)
            node = node[part]
        elif isinstance(part, str) and (_UNION_MEMBER.match(part) or part in DISTILLATION_KINDS or part in _TAGS
                                        or part == "[key]"):
            # "[key]": pydantic's mark for a problem with a mapping's key rather than its value.
            continue
        else:
            cleaned.append(part)
            node = None
    return cleaned


def _schema_at(location: list[Any], raw: dict[str, Any]) -> type[BaseModel] | None:
    """The pydantic model that describes the mapping at `location` in the user's data."""
    annotation: Any = Recipe
    node: Any = raw
    for part in location:
        if isinstance(part, int):
            annotation = _element_type(annotation)
        elif _mapping_value_type(annotation) is not None:
            # A key of a user-named mapping (`tasks.<name>`).
            annotation = _mapping_value_type(annotation)
        else:
            model = _model_in(annotation, node)
            if model is None or part not in model.model_fields:
                return None
            annotation = model.model_fields[part].annotation
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    return _model_in(annotation, node)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and part < len(node)


def _mapping_value_type(annotation: Any) -> Any:
    for argument in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(argument) is dict:
            return typing.get_args(argument)[1]
    return None


def _element_type(annotation: Any) -> Any:
    for argument in typing.get_args(annotation):
        if typing.get_origin(argument) in (tuple, list):
            return typing.get_args(argument)[0]
    if typing.get_origin(annotation) in (tuple, list):
        return typing.get_args(annotation)[0]
    return None


def _model_in(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model among `annotation`'s union members that the user's mapping `node` is meant as."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates: list[type[BaseModel]] = []
    stack = list(typing.get_args(annotation))
    while stack:
        argument = stack.pop(0)
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            candidates.append(argument)
        elif typing.get_origin(argument) not in (tuple, list, dict):
            stack.extend(typing.get_args(argument))
    if not isinstance(node, dict) or not candidates:
        return candidates[0] if len(candidates) == 1 else None
    if "kind" in node:
        for candidate in candidates:
            kind_field = candidate.model_fields.get("kind")
            if kind_field is not None and node["kind"] in typing.get_args(kind_field.annotation):
                return candidate
    if "uniform" in node and UniformMatches in candidates:
        return UniformMatches
    return candidates[0]


def _field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _did_you_mean(given: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(given, valid, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def resolved_mapping(recipe: Recipe) -> dict[str, Any]:
    """The recipe with every default filled in, as written to the run directory."""
    # A staged recipe's `distillation` is its last stage's, never written by the user.
    exclude = {"distillation"} if recipe.stages is not None else None
    return recipe.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)
