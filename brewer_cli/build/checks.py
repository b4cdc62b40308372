"""The checks that need no weights: registry names (tasks, losses, schedules, presets), each stage
as the recipe it runs as, what each distiller declares about its own settings, and the fields an
extracted student reads. They run before any model is loaded and before a teacher is trained."""

from __future__ import annotations

from pathlib import Path

from brewer_cli.build.loading import extraction_plan
from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import RecipeError
from brewer_cli.recipe import Recipe, stage_recipes
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
            problems.extend(TASKS.get(recipe.task.kind).recipe_problems(recipe))
        problems.extend(DISTILLERS.get(recipe.distillation.kind).recipe_problems(recipe))
    if problems:
        raise RecipeError(problems)


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
    for index, (_, stage_recipe) in enumerate(stage_recipes(recipe, Path("runs") / recipe.name)):
        try:
            check_names(stage_recipe)
        except RecipeError as error:
            for line in error.problems:
                line = line.replace(f"{recipe.path}: distillation", f"{recipe.path}: stages.{index}.distillation", 1)
                if line not in problems:
                    problems.append(line)
    return problems
