"""A recipe's teachers as slots — the one `teacher`, each of `teachers: [...]`, or each task's
`tasks.<name>.teacher` — whether each is still to be trained, and whether one that exists may be
reused. The slots follow the recipe's shape, so every kind of distillation trains its missing
teachers the same way.

Reuse. A teacher with a `train` section whose checkpoint exists was trained by an earlier command.
Its run directory holds the recipe it was trained with (recipe.yaml); when what that recipe
trained differs from what `train` asks now (an earlier shortened try: 1 epoch, 12 now), the
teacher is not the one the recipe describes, and brewer refuses rather than distill from it
silently. What counts is everything in the teacher's training recipe — the model, the training
section, the task, the training and eval data (the eval split picks the best checkpoint and the
reported metric) — except the settings that only say how often to evaluate, save and log and how
progress shows (run_directory.SAFE_ON_RESUME): they do not change the trained model. A checkpoint
without a recorded recipe (the user's own) is used as it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import BrewerError, RunDirectoryError
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import Recipe, TeacherSpec, stage_recipes, task_recipe, teacher_training_recipe
from brewer_cli.run_directory import change_lines, result_changes

RECIPE_FILE = "recipe.yaml"


@dataclass(frozen=True)
class TeacherSlot:
    field: str  # the teacher's dotted path in the user's file: teacher, teachers.1, tasks.<name>.teacher, stages.1.teacher
    spec: TeacherSpec
    recipe: Recipe  # whose task and data train it: the recipe, or a multi-task recipe's one task
    data_field: str = "data"  # where that task and data are written in the user's file
    task_field: str = "task"

    @property
    def only_teacher(self) -> bool:
        return not self.field.startswith(("teachers.", "tasks."))

    @property
    def trainable(self) -> bool:
        return self.spec.train is not None

    @property
    def run_directory(self) -> Path:
        """The directory of the run that trains (or trained) this teacher: checkpoint is …/<run name>/final."""
        return resolve_path(self.spec.checkpoint, self.recipe).parent

    def training_recipe(self) -> Recipe:
        return teacher_training_recipe(self.recipe, self.spec)

    def missing_message(self) -> str:
        """Why this missing teacher cannot be trained, and the ways out."""
        if self.only_teacher:
            return (
                f"{self.recipe.path}: {self.field}.checkpoint: {self.spec.checkpoint!r} does not exist and the recipe has no "
                f"`{self.field}.train` section — train it first with `brewer train-teacher`, add `{self.field}.train`, or fix "
                f"the path"
            )
        return (
            f"{self.recipe.path}: {self.field}.checkpoint: {self.spec.checkpoint!r} does not exist and this teacher has "
            f"no `train` section — train it first (`brewer train-teacher TRAINER_RECIPE --set name={_run_name(self.spec)}`), "
            f"add `{self.field}.train`, or fix the path"
        )

    def field_of(self, path: str) -> str:
        """A dotted path of the teacher's training recipe as the user's file names it:
        `training.epochs` → `teacher.train.training.epochs`, `data.train.path` → `tasks.ner.data.train.path`."""
        section, _, rest = path.partition(".")
        prefix = {
            "model": f"{self.field}.train.model",
            "training": f"{self.field}.train.training",
            "data": self.data_field,
            "task": self.task_field,
        }.get(section, section)
        return f"{prefix}.{rest}" if rest else prefix


def teacher_slots(recipe: Recipe, written_as: dict[str, str] | None = None) -> list[TeacherSlot]:
    """`written_as`: where `recipe`'s `teacher`, `data` and `task` are written in the user's file
    when `recipe` is derived from it (a stage's own teacher is `stages.1.teacher`); by default
    where they are."""
    names = {"teacher": "teacher", "data": "data", "task": "task", **(written_as or {})}
    if recipe.teachers is not None:
        return [
            TeacherSlot(f"teachers.{index}", spec, recipe, names["data"], names["task"])
            for index, spec in enumerate(recipe.teachers)
        ]
    if recipe.tasks is not None:
        return [
            TeacherSlot(
                f"tasks.{name}.teacher", entry.teacher, task_recipe(recipe, name), f"tasks.{name}.data", f"tasks.{name}.task"
            )
            for name, entry in recipe.tasks.items()
        ]
    if recipe.teacher is not None:
        return [TeacherSlot(names["teacher"], recipe.teacher, recipe, names["data"], names["task"])]
    return []


def teacher_missing(recipe: Recipe, teacher: TeacherSpec | None = None) -> bool:
    """A teacher to train first: its checkpoint is not on disk and it is not a hub id to download
    (a checkpoint with a `train` section is always local: the run that trains it writes it)."""
    teacher = teacher or recipe.teacher
    value = teacher.checkpoint
    if value is None:
        return False
    return not resolve_path(value, recipe).exists() and (teacher.train is not None or not looks_like_hub_id(value))


def reuse_note(slot: TeacherSlot, command: str = "distill") -> str | None:
    """For a teacher with a `train` section whose checkpoint exists: what brewer does with it, or
    a RunDirectoryError when it was trained with other settings than `train` gives now (see the
    module docstring). None for a teacher without `train`, or one still to be trained.
    `command`: the command that found it (`distill` or `train-teacher`), whose fixes the message names."""
    if not slot.trainable or teacher_missing(slot.recipe, slot.spec):
        return None
    directory = slot.run_directory
    changes = result_changes(directory, slot.training_recipe())
    if changes is None:
        return (
            f"{slot.field}: {slot.spec.checkpoint} exists and records no training recipe ({directory / RECIPE_FILE} is "
            f"missing: not a brewer run): used as it is, without checking it against `{slot.field}.train`"
        )
    if not changes:
        return (
            f"{slot.field}: {slot.spec.checkpoint} was trained with the settings `{slot.field}.train` gives "
            f"({directory / RECIPE_FILE}): reused"
        )
    raise RunDirectoryError(_reuse_refusal(slot, changes, command))


def _reuse_refusal(slot: TeacherSlot, changes: dict, command: str) -> str:
    directory = slot.run_directory
    keep = f"--set {slot.field}.train=null"
    beside = f"--set {slot.field}.checkpoint={Path(slot.spec.checkpoint).parent}-2/final"
    if command == "distill":
        fixes = (
            f"distill from it as it is: `{keep}` (the recipe without `{slot.field}.train`; {slot.field}.checkpoint stays "
            f"{slot.spec.checkpoint}); train it again with these settings: --retrain-teacher (moves {directory} aside to "
            f"{directory.name}.replaced-<date-time>, then trains a new teacher); train a second teacher beside it: "
            f"`{beside}`; or delete {directory} yourself"
        )
    else:
        fixes = (
            f"distill from it as it is: `brewer distill {slot.recipe.path} {keep}`; train it again with these settings: "
            f"`brewer distill {slot.recipe.path} --retrain-teacher` (moves {directory} aside to "
            f"{directory.name}.replaced-<date-time> first); train a second teacher beside it: `{beside}`; or delete "
            f"{directory} yourself and run train-teacher again"
        )
    return (
        f"{slot.recipe.path}: {slot.field}.train: {slot.spec.checkpoint} exists, but it was trained with other settings "
        f"than `{slot.field}.train` gives now (recorded in {directory / RECIPE_FILE} → this recipe):\n"
        f"{change_lines(changes, slot.field_of)}\n"
        f"brewer does not {'distill from' if command == 'distill' else 'replace'} a teacher the recipe does not describe. "
        f"Either {fixes}."
    )


def stage_fields(recipe: Recipe, index: int) -> dict[str, str]:
    """Where stage `index`'s own sections are written in the user's file (stages.<index − 1>.teacher …)."""
    stage = recipe.stages[index - 1]
    return {
        section: f"stages.{index - 1}.{section}" for section in ("teacher", "data", "task") if getattr(stage, section) is not None
    }


def teachers_to_move_aside(recipe: Recipe, parent: Path) -> list[TeacherSlot]:
    """For --retrain-teacher: the teachers, over every stage, whose earlier run is to be moved
    aside (one per directory); refused when the recipe trains no teacher, or when a directory is
    not a brewer run. `parent`: the run directory of `recipe`."""
    if recipe.stages is None:
        parts = [(recipe, None)]
    else:
        parts = [(stage, stage_fields(recipe, index)) for index, (_, stage) in enumerate(stage_recipes(recipe, parent), 1)]
    slots = [
        slot
        for part, written_as in parts
        if DISTILLERS.get(part.distillation.kind).needs_teacher
        for slot in teacher_slots(part, written_as)
    ]
    trainable = [slot for slot in slots if slot.trainable]
    if not trainable:
        raise BrewerError(
            f"{recipe.path}: --retrain-teacher: no teacher of this recipe has a `train` section, so there is no teacher "
            f"to train again — drop --retrain-teacher, or add `teacher.train: {{model: …, training: …}}`"
        )
    earlier: dict[Path, TeacherSlot] = {}
    for slot in trainable:
        directory = slot.run_directory
        if directory.exists() and directory.resolve() not in earlier:
            if not (directory / RECIPE_FILE).is_file():
                raise BrewerError(
                    f"{recipe.path}: {slot.field}.checkpoint: --retrain-teacher would move {directory} aside, but it is not "
                    f"a brewer run directory (no {RECIPE_FILE}): brewer moves only the runs it wrote — move or delete it "
                    f"yourself, or give {slot.field}.checkpoint a new …/<run name>/final"
                )
            earlier[directory.resolve()] = slot
    return list(earlier.values())


def _run_name(spec: TeacherSpec) -> str:
    """The run name whose final/ directory the checkpoint names (…/<name>/final)."""
    path = Path(spec.checkpoint)
    return path.parent.name if path.name == "final" and path.parent.name else "…"
