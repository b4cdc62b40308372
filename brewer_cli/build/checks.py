"""The checks that need no weights: registry names (tasks, losses, schedules, presets), each stage
as the recipe it runs as, what each distiller declares about its own settings, the fields an
extracted student reads, and the shapes of models built from a config (heads, positions). They run
before any model is loaded and before a teacher is trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig

from brewer_cli.build.loading import extraction_plan, max_lengths, shape_problems
from brewer_cli.build.store import store_problems
from brewer_cli.build.teachers import teacher_missing
from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.families.registered import registered_model_types, unknown_model_type_message
from brewer_cli.models import first_line, read_config_spec
from brewer_cli.recipe import ModelSpec, Recipe, in_user_terms, stage_recipes
from brewer_cli.tasks import TASKS


def check_names(recipe: Recipe) -> None:
    """Registry names in the recipe, all checked before any weight is read; raises `RecipeError`
    listing every problem."""
    problems: list[str] = []
    if recipe.tasks is not None:
        fields = [(entry.task.kind, f"tasks.{name}.task.kind") for name, entry in recipe.tasks.items()]
    else:
        fields = [(recipe.task.kind, "task.kind")]
    problems.extend(f"{recipe.path}: {field}: {TASKS.unknown_message(kind)}" for kind, field in fields if kind not in TASKS)
    if recipe.stages is not None:
        # Each stage is checked as the recipe it runs as; its lines name stages.N.distillation.
        problems.extend(line for line in _stage_problems(recipe) if line not in problems)
    else:
        if recipe.task is not None and recipe.task.kind in TASKS:
            task = TASKS.get(recipe.task.kind)
            problems.extend(task.recipe_problems(recipe))
            if recipe.task.mask_probability > 0 and not task.masks_inputs:
                problems.append(
                    f"{recipe.path}: task.mask_probability: task {recipe.task.kind} reads its text unmasked (masking on "
                    f"the fly is for masked_lm) — remove it"
                )
        problems.extend(DISTILLERS.get(recipe.distillation.kind).recipe_problems(recipe))
        # A teacher store (`teacher.store`) stands in for the teacher's logits only.
        problems.extend(store_problems(recipe))
    if problems:
        raise RecipeError(problems)
    check_model_configs(recipe)


def check_model_configs(recipe: Recipe) -> None:
    """The models built from a config (`student.config`, `model.config`, a missing teacher's
    `train.model.config`), read before anything is loaded or trained: a known model_type, heads
    that divide the width, and positions for every `data.max_length` — each would otherwise fail
    inside transformers, or at the first batch."""
    problems: list[str] = []
    for field, spec, lengths in _configured_models(recipe):
        settings = read_config_spec(spec.config, recipe, f"{field}.config")
        config = _config_of(settings, recipe, f"{field}.config")
        # Without its own pad_token_id the config takes the tokenizer's; 0 reserves the fewest positions.
        pad = None if "pad_token_id" in settings else 0
        problems.extend(shape_problems(config, f"{field}.config", lengths, f"{recipe.path}: ", True, pad))
    if problems:
        raise RecipeError(problems)


def _configured_models(recipe: Recipe) -> list[tuple[str, ModelSpec, list[tuple[str, int]]]]:
    """(dotted path, spec, the data lengths it reads) of each model the recipe builds from a config."""
    found: list[tuple[str, ModelSpec, list[tuple[str, int]]]] = []
    for field in ("student", "model"):
        spec = getattr(recipe, field)
        if spec is not None and spec.config is not None:
            found.append((field, spec, max_lengths(recipe)))
    teachers = [("teacher", recipe.teacher, max_lengths(recipe))] if recipe.teacher is not None else []
    teachers += [(f"teachers.{index}", spec, max_lengths(recipe)) for index, spec in enumerate(recipe.teachers or ())]
    for name, entry in (recipe.tasks or {}).items():
        teachers.append((f"tasks.{name}.teacher", entry.teacher, [(f"tasks.{name}.data.max_length", entry.data.max_length)]))
    for field, spec, lengths in teachers:
        # A teacher that exists is loaded as it is: its `train` section is not read.
        model = spec.train.model if spec.train is not None else None
        if model is not None and model.config is not None and teacher_missing(recipe, spec):
            found.append((f"{field}.train.model", model, lengths))
    return found


def _config_of(settings: dict[str, Any], recipe: Recipe, field: str) -> Any:
    settings = dict(settings)
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise RecipeError(f"{recipe.path}: {field}: the config has no `model_type` (e.g. bert, roberta, distilbert)")
    if model_type not in registered_model_types():
        raise RecipeError(f"{recipe.path}: {field}.model_type: {unknown_model_type_message(model_type)}")
    for key in ("architectures", "transformers_version"):
        settings.pop(key, None)
    try:
        return AutoConfig.for_model(model_type, **settings)
    except Exception as error:  # transformers raises many kinds for a bad value
        raise ModelError(f"{recipe.path}: {field}: {first_line(error)}") from None


def check_before_training_teachers(recipe: Recipe) -> None:
    """Everything that can fail without the teachers' weights, so that a misspelled name or a bad
    match fails now rather than after hours of teacher training."""
    check_names(recipe)
    DISTILLERS.get(recipe.distillation.kind).check_before_loading(recipe)
    if recipe.student is not None and recipe.student.init is not None:
        # A malformed student.init.extract; sizes against the teacher wait for its weights.
        extraction_plan(recipe)


def _stage_problems(recipe: Recipe) -> list[str]:
    problems: list[str] = []
    for _, stage_recipe in stage_recipes(recipe, Path("runs") / recipe.name):
        try:
            check_names(stage_recipe)
        except RecipeError as error:
            # Each line names the field in the user's file: stages.N.distillation.…, stages.N.data.…
            problems.extend(line for line in in_user_terms(error.problems, stage_recipe) if line not in problems)
    return problems
