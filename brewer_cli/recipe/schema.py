"""The recipe as a whole: its sections, its stages, and the checks that read several of them
(which sections a distiller kind needs or forbids)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from brewer_cli.recipe.base import CrossFieldProblems, Strict, did_you_mean
from brewer_cli.recipe.distillation import STAGE_KINDS, Distillation, distillation_spec
from brewer_cli.recipe.sections import (
    DataSpec,
    ModelSpec,
    TaskEntry,
    TaskName,
    TaskSpec,
    TeacherSpec,
    TrainingSpec,
    WeightedTeacherSpec,
)


class _Required:
    """Stands in for `task` / `data` when a kind that needs them lacks them, so that pydantic
    reports the absence together with every other problem (see `brewer_cli.recipe.load`)."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()


# A Hub repository id: `name` or `namespace/name` of letters, digits, `-`, `_` and `.` (huggingface_hub's
# validate_repo_id also refuses `--`, `..` and a name that starts or ends with `-` or `.`).
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubSpec(Strict):
    """Push the finished run's final/ (model, tokenizer, model card) to the Hugging Face Hub at the
    end of `brewer distill` (brewer_cli/hub.py), as `brewer push RUN --repo-id …` does. The token is
    HF_TOKEN or the one `hf auth login` stored; a failed push leaves the run complete locally."""

    repo_id: str = Field(description="the model repository, e.g. your-name/sst2-student (created when missing)")
    private: bool = Field(default=False, description="create the repository private (an existing one keeps its visibility)")
    revision: str | None = Field(default=None, description="the branch to push to, created when missing (default: main)")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        parts = value.split("/")
        if not REPO_ID.match(value) or len(value) > 96 or any("--" in part or ".." in part or part[-1] in "-." for part in parts):
            raise ValueError(
                f"{value!r} is not a Hub repository id — write NAMESPACE/NAME (your user or organisation, then the model's "
                f"name: letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', not ending in '-' or '.')"
            )
        return value


class StageSpec(Strict):
    """One stage of a staged recipe (TinyBERT's task distillation: intermediate layers, then
    predictions; ETD's general distillation on unlabeled text, then the task). Stage k runs in
    <run>/stage-k with the recipe's task, data and teacher unless the stage gives its own, its own
    distillation, and `training` fields that override the recipe's; its student is stage k − 1's
    final/ (stage 1's is the recipe's `student`)."""

    name: str | None = Field(default=None, description="a label for the plan and summary.json, e.g. intermediate")
    training: dict[str, Any] = Field(default_factory=dict, description="fields of `training` that differ in this stage")
    distillation: Distillation
    task: TaskSpec | None = Field(default=None, description="this stage's task, in place of the recipe's")
    data: DataSpec | None = Field(default=None, description="this stage's data, in place of the recipe's")
    teacher: TeacherSpec | None = Field(default=None, description="this stage's teacher, in place of the recipe's")


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
    stages: tuple[StageSpec, ...] | None = Field(
        default=None, min_length=1, description="run these stages in order (brewer_cli.commands)"
    )
    hub: HubSpec | None = Field(default=None, description="push final/ to the Hugging Face Hub when the run ends")

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
            raise CrossFieldProblems(
                [
                    (
                        "distillation",
                        "with `stages`, each stage names its own distillation — move "
                        "the top-level `distillation` into a stage, or remove `stages`",
                    )
                ]
            )
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
        spec = distillation_spec(kind)
        if (spec is not None and spec.per_task) or "tasks" in value:
            # With `tasks`, the cross-field check explains the kind instead (`_models_for_kind`).
            return value
        return {**value, **{name: REQUIRED for name in ("task", "data") if name not in value}}

    @model_validator(mode="after")
    def _models_for_kind(self) -> Recipe:
        problems: list[tuple[str, str]] = []
        distillation = self.distillation
        kind = distillation.kind
        if distillation.trains_model:
            if self.model is None:
                problems.append(("model", f"kind `{kind}` trains `model`: give `model: {{checkpoint: …}}` or `{{config: …}}`"))
            for unused in ("teacher", "student"):
                if getattr(self, unused) is not None:
                    problems.append((unused, f"kind `{kind}` has no {unused}; name the model to train under `model`"))
        else:
            if distillation.teachers_section is not None:
                problems.extend(self._teacher_list_problems())
            elif distillation.per_task:
                problems.extend(self._per_task_problems())
            elif self.teacher is None:
                problems.append(("teacher", "distillation needs a teacher: `teacher: {checkpoint: …}`"))
            if self.student is None:
                problems.append(("student", "distillation needs a student: `student: {config: …}` or `{checkpoint: …}`"))
            if self.model is not None:
                problems.append(("model", "`model` is for kind `trainer`; a distillation recipe names `teacher` and `student`"))
        if distillation.teachers_section is None and self.teachers is not None:
            problems.append(
                (
                    "teachers",
                    f"`teachers` (a list) is for kind `multi_teacher`; kind `{kind}` "
                    + (
                        "takes one teacher per task under `tasks.<name>.teacher`"
                        if distillation.per_task
                        else "names one `teacher` — or set `distillation.kind: multi_teacher`"
                    ),
                )
            )
        if not distillation.per_task and self.tasks is not None:
            problems.append(
                (
                    "tasks",
                    f"`tasks` is for kind `multi_task`; kind `{kind}` reads one `task` and `data` "
                    f"— or set `distillation.kind: multi_task`",
                )
            )
            problems.extend((name, "required field is missing") for name in ("task", "data") if getattr(self, name) is None)
        if self.stages is not None:
            problems.extend(self._stage_problems())
        only = distillation.only_for_tasks
        if only and isinstance(self.task, TaskSpec) and self.task.kind not in only:
            problems.append(
                (
                    "distillation.kind",
                    f"kind `{kind}` generates completions with a language model, so it distills task "
                    f"{' or '.join(only)} only, not {self.task.kind} — set `task.kind: {only[0]}`, or use kind basic",
                )
            )
        for name, entry in (self.tasks or {}).items():
            if entry.data.augment is not None:
                problems.append(
                    (
                        f"tasks.{name}.data.augment",
                        "augmentation runs before single-task recipes only — "
                        "write the augmented file with `brewer augment` and name it in the task's `data.train`",
                    )
                )
        if problems:
            raise CrossFieldProblems(problems)
        return self

    def _stage_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        base = self.training.model_dump()
        valid = sorted(TrainingSpec.model_fields)
        for index, stage in enumerate(self.stages):
            where = f"stages.{index}"
            if not stage.distillation.can_be_a_stage:
                problems.append(
                    (
                        f"{where}.distillation.kind",
                        f"a stage distills the recipe's teacher into its student: "
                        f"kind {' or '.join(STAGE_KINDS)}, not {stage.distillation.kind!r}",
                    )
                )
            unknown = [key for key in stage.training if key not in TrainingSpec.model_fields]
            for key in unknown:
                problems.append((f"{where}.training.{key}", f"unknown key{did_you_mean(key, valid)} — valid: {', '.join(valid)}"))
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

    def _teacher_list_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.teacher is not None:
            problems.append(
                (
                    "teacher",
                    "kind `multi_teacher` reads `teachers: [{checkpoint: …}, …]` (a list); move `teacher` into `teachers`",
                )
            )
        if not self.teachers:
            problems.append(
                ("teachers", "kind `multi_teacher` needs `teachers: [{checkpoint: …, weight: …}, …]` with at least one entry")
            )
        elif self.distillation.match_teacher >= len(self.teachers):
            problems.append(
                (
                    "distillation.match_teacher",
                    f"{self.distillation.match_teacher} is not an index of `teachers` (0…{len(self.teachers) - 1})",
                )
            )
        return problems

    def _per_task_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for name in ("task", "data", "teacher"):
            if getattr(self, name) is not None:
                problems.append(
                    (
                        name,
                        f"kind `multi_task` takes each task's `{name}` under `tasks.<name>.{name}`; "
                        f"remove the top-level `{name}`",
                    )
                )
        if not self.tasks:
            problems.append(
                ("tasks", "kind `multi_task` needs `tasks: {NAME: {task: …, data: …, teacher: …}, …}` with at least one task")
            )
        return problems
