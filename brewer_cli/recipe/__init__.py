"""The recipe: its schema, its loader, and the recipes derived from a recipe.

base.py          the strict, frozen base model and the shared message helpers
sections.py      task, data, models, training, the entries of `tasks:`
distillation.py  one spec per distiller kind, what each declares, the kinds read off them
schema.py        Recipe and its stages, with the checks across sections
load.py          reading, `--set` overrides, validation messages, the resolved mapping
names.py         every registered name (tasks, losses, …) without importing torch; the schema checks them
hints.py         Trainer argument names, misplaced fields, empty values cut off by a `#` comment
inputs.py        the data files, their columns and the model configs a recipe reads, checked on load
derive.py        recipes made from a recipe (teacher training, one task, stages, evaluation)
origins.py       where a derived recipe's parts were written, so its messages name the user's fields
"""

from brewer_cli.recipe.base import Strict
from brewer_cli.recipe.derive import (
    derive,
    eval_only,
    on_augmented_data,
    stage_directory,
    stage_recipes,
    task_recipe,
    teacher_run_parent,
    teacher_training_recipe,
    with_eval_source,
    with_student_of,
    without_augment,
)
from brewer_cli.recipe.distillation import (
    DISTILLATION_KINDS,
    DISTILLATION_SPECS,
    STAGE_KINDS,
    BasicDistillation,
    Distillation,
    DistillationSpec,
    GeneralDistillation,
    MatchEntry,
    MatchSpec,
    MultiTaskDistillation,
    MultiTeacherDistillation,
    ScheduleSpec,
    TrainerDistillation,
    UniformMatches,
    distillation_spec,
    kind_of,
)
from brewer_cli.recipe.inputs import (
    SplitPlace,
    check_data_source,
    data_columns,
    input_problems,
    source_from_options,
)
from brewer_cli.recipe.load import (
    apply_override,
    describe_validation_error,
    load_recipe,
    read_mapping,
    read_utf8,
    resolved_mapping,
    section_mapping,
    validate_recipe,
)
from brewer_cli.recipe.origins import RecipeFile, about_recipe, in_user_terms, origins_of, speaking_of, written_at
from brewer_cli.recipe.schema import Recipe, StageSpec
from brewer_cli.recipe.sections import (
    COMPILE_BACKENDS,
    AugmentSpec,
    DataSource,
    DataSpec,
    ExtractSpec,
    InitSpec,
    ModelSpec,
    TaskEntry,
    TaskName,
    TaskSpec,
    TeacherSpec,
    TeacherTraining,
    TokenizerSpec,
    TrainingSpec,
    WeightedTeacherSpec,
    WordPieceTraining,
)

__all__ = [
    "COMPILE_BACKENDS",
    "DISTILLATION_KINDS",
    "DISTILLATION_SPECS",
    "STAGE_KINDS",
    "AugmentSpec",
    "BasicDistillation",
    "DataSource",
    "DataSpec",
    "Distillation",
    "DistillationSpec",
    "ExtractSpec",
    "GeneralDistillation",
    "InitSpec",
    "MatchEntry",
    "MatchSpec",
    "ModelSpec",
    "MultiTaskDistillation",
    "MultiTeacherDistillation",
    "Recipe",
    "RecipeFile",
    "ScheduleSpec",
    "SplitPlace",
    "StageSpec",
    "Strict",
    "TaskEntry",
    "TaskName",
    "TaskSpec",
    "TeacherSpec",
    "TeacherTraining",
    "TokenizerSpec",
    "TrainerDistillation",
    "TrainingSpec",
    "UniformMatches",
    "WeightedTeacherSpec",
    "WordPieceTraining",
    "about_recipe",
    "apply_override",
    "check_data_source",
    "data_columns",
    "derive",
    "describe_validation_error",
    "distillation_spec",
    "eval_only",
    "in_user_terms",
    "input_problems",
    "kind_of",
    "load_recipe",
    "on_augmented_data",
    "origins_of",
    "read_mapping",
    "read_utf8",
    "resolved_mapping",
    "section_mapping",
    "source_from_options",
    "speaking_of",
    "stage_directory",
    "stage_recipes",
    "task_recipe",
    "teacher_run_parent",
    "teacher_training_recipe",
    "validate_recipe",
    "with_eval_source",
    "with_student_of",
    "without_augment",
    "written_at",
]
