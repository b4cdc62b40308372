"""The matches checked against the configs readable before any weight is loaded."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from brewer_cli.families import FAMILIES
from brewer_cli.matches.resolve import resolve_matches
from brewer_cli.models import read_config_spec
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import Recipe

# ============================================================================= before loading


def configs_before_loading(recipe: Recipe) -> tuple[Any, Any]:
    """The teacher's and student's configs where they can be read without loading weights: a local
    checkpoint's config.json, or a student `config`. Hub checkpoints are left to the check after
    loading (a config download that fails offline would only repeat the loader's own error), as is
    an extracted student (its sizes exist only after extraction)."""

    def local(value: str | None) -> Any:
        if value is None:
            return None
        directory = resolve_path(value, recipe)
        if not (directory / "config.json").is_file():
            return None
        try:
            return AutoConfig.from_pretrained(str(directory))
        except Exception:
            return None  # the loader reports an unreadable checkpoint in its own words

    def from_spec(value: str | dict[str, Any] | None, field: str) -> Any:
        if value is None:
            return None
        try:
            settings = read_config_spec(value, recipe, field)
            model_type = settings.pop("model_type", None)
            settings.pop("architectures", None)
            settings.pop("transformers_version", None)
            return AutoConfig.for_model(model_type, **settings) if model_type else None
        except Exception:
            return None  # model_from_config reports a bad config with its own message

    teacher_config = None
    if recipe.teacher is not None:
        teacher_config = local(recipe.teacher.checkpoint)
        if teacher_config is None and recipe.teacher.train is not None:
            # A teacher still to be trained: its config says its shape before hours of training.
            teacher_config = from_spec(recipe.teacher.train.model.config, "teacher.train.model.config")
    student_config = None
    if recipe.student is not None:
        if recipe.student.checkpoint is not None:
            student_config = local(recipe.student.checkpoint)
        else:
            student_config = from_spec(recipe.student.config, "student.config")
    return teacher_config, student_config


def validate_before_loading(recipe: Recipe) -> None:
    """Check the matches against whatever configs are readable before any weight is loaded."""
    teacher_config, student_config = configs_before_loading(recipe)
    known = {model_type for entry in FAMILIES for model_type in entry.value.model_types}
    # An unknown model_type is the loader's error to report (with the list of families).
    teacher_config = teacher_config if getattr(teacher_config, "model_type", None) in known else None
    student_config = student_config if getattr(student_config, "model_type", None) in known else None
    resolve_matches(recipe, teacher_config, student_config)
