"""The composition root: a validated recipe becomes a `Run` — its task and data, its models
(loaded, configured or extracted), and its distiller with every setting resolved to values.

`BUILDERS` maps each distillation kind to the function that builds its run; a new kind is a
distiller module in brewer_cli.distillers plus one builder here (a test checks both tables agree).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import set_seed

from brewer_cli.build.checks import check_before_training_teachers, check_names
from brewer_cli.build.generation import build_on_policy_run, build_sequence_kd_run
from brewer_cli.build.loading import extraction_plan
from brewer_cli.build.multi_task import build_multi_task_run
from brewer_cli.build.multi_teacher import build_multi_teacher_run
from brewer_cli.build.plan import plan_lines
from brewer_cli.build.single import build_basic_run, build_general_run, build_trainer_run
from brewer_cli.build.teachers import TeacherSlot, teacher_missing, teacher_slots
from brewer_cli.families.loading import LoadedModel
from brewer_cli.recipe import Recipe
from brewer_cli.registry import Registry
from brewer_cli.run import Run

Builder = Callable[[Recipe, Path, dict[str, LoadedModel]], Run]

BUILDERS: Registry[Builder] = Registry("run builder")
BUILDERS.add("trainer", build_trainer_run, "the model to train, its tokenizer and the task's data")
BUILDERS.add("basic", build_basic_run, "one teacher, the student (checkpoint, config or extracted), the task's data")
BUILDERS.add("general", build_general_run, "as basic, plus the matches checked against both models")
BUILDERS.add("multi_teacher", build_multi_teacher_run, "several teachers with their own tokenizations, one student")
BUILDERS.add("multi_task", build_multi_task_run, "a teacher per task, one student encoder with a head per task")
BUILDERS.add("sequence_kd", build_sequence_kd_run, "as basic, for causal LMs: prompts to complete, room for the completions")
BUILDERS.add("on_policy", build_on_policy_run, "as basic, for causal LMs: prompts to complete, room for the samples")


def build_run(recipe: Recipe, output_dir: str | Path, stand_ins: dict[str, LoadedModel] | None = None) -> Run:
    """`stand_ins`: teachers by field (`teacher`, `teachers.1`, `tasks.<name>.teacher`) standing in
    for checkpoints that do not exist yet — the untrained teachers of a dry-run plan."""
    check_names(recipe)
    # Students built from a config (and heads added to checkpoints) draw their initial weights
    # here, before the loop seeds itself: seeding now makes a recipe's run reproducible.
    set_seed(recipe.training.seed)
    return BUILDERS.get(recipe.distillation.kind)(recipe, Path(output_dir) / recipe.name, stand_ins or {})


__all__ = [
    "BUILDERS",
    "Run",
    "TeacherSlot",
    "build_run",
    "check_before_training_teachers",
    "check_names",
    "extraction_plan",
    "plan_lines",
    "teacher_missing",
    "teacher_slots",
]
