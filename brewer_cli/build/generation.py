"""Builders of the kinds whose completions are generated — `sequence_kd` (by the teacher, once)
and `on_policy` (by the student, per batch) — and what they check before step 1: every training
example has a prompt to continue, and a prompt plus `generation.max_new_tokens` fits both models'
positions (a longer sequence would fail inside the position embeddings mid-run), and the
sequence_kd completions' cache folder is writable."""

from __future__ import annotations

import os
from pathlib import Path

from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.build.single import _teacher_and_student, distiller_inputs
from brewer_cli.distillers.generation import GenerationSettings, example_prompts
from brewer_cli.distillers.on_policy import OnPolicyDistiller
from brewer_cli.distillers.sequence_kd import SequenceKDDistiller
from brewer_cli.errors import DataError, ModelError, RecipeError
from brewer_cli.families.loading import LoadedModel
from brewer_cli.models import position_limit
from brewer_cli.paths import cache_directory, resolve_path
from brewer_cli.recipe import GenerationSpec, Recipe, TrainingSpec
from brewer_cli.run import Run
from brewer_cli.tasks import PreparedData


def generation_settings(spec: GenerationSpec, training: TrainingSpec) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=spec.max_new_tokens,
        sample=spec.sample,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        seed=training.seed if spec.seed is None else spec.seed,
        prompt_tokens=spec.prompt_tokens,
    )


def build_sequence_kd_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    task, data, teacher, student = _teacher_and_student(recipe, stand_ins)
    check_generation(recipe, data, [teacher, student])
    spec = recipe.distillation
    cache = resolve_path(spec.generation_cache, recipe) if spec.generation_cache is not None else cache_directory()
    check_writable(recipe, cache / "sequence_kd")
    inputs = distiller_inputs(recipe, task, data, student, [teacher])
    distiller = SequenceKDDistiller(inputs, resolve_logit_kd(spec), generation_settings(spec.generation, recipe.training), cache)
    return Run(recipe, run_dir, task, data, student, [teacher], distiller)


def build_on_policy_run(recipe: Recipe, run_dir: Path, stand_ins: dict[str, LoadedModel]) -> Run:
    task, data, teacher, student = _teacher_and_student(recipe, stand_ins)
    check_generation(recipe, data, [teacher, student])
    spec = recipe.distillation
    inputs = distiller_inputs(recipe, task, data, student, [teacher])
    distiller = OnPolicyDistiller(
        inputs, resolve_logit_kd(spec), generation_settings(spec.generation, recipe.training), spec.student_data_fraction
    )
    return Run(recipe, run_dir, task, data, student, [teacher], distiller)


def check_generation(recipe: Recipe, data: PreparedData, models: list[LoadedModel]) -> None:
    """Prompts in every training example, and room for prompt + completion in every model."""
    kind = recipe.distillation.kind
    prompts = example_prompts(data.train.columns, recipe.distillation.generation.prompt_tokens)
    missing = sum(1 for prompt in prompts if not prompt)
    if missing:
        raise DataError(
            f"{recipe.path}: data.train: kind {kind} generates completions of prompts, but {missing} of {len(prompts)} "
            f"training examples have no prompt (plain text has none) — give the training data as prompt/completion "
            f"pairs or chat messages, or set distillation.generation.prompt_tokens to continue the first tokens of "
            f"each text"
        )
    longest = max(len(prompt) for prompt in prompts)
    new_tokens = recipe.distillation.generation.max_new_tokens
    for loaded in models:
        limit = position_limit(loaded.model.config)
        if limit is None or longest + new_tokens <= limit[0]:
            continue
        fits = limit[0]
        raise ModelError(
            f"{recipe.path}: distillation.generation.max_new_tokens: the longest training prompt has {longest} tokens, "
            f"and with {new_tokens} new tokens a sequence would need {longest + new_tokens} positions, but the "
            f"{loaded.role} reads at most {fits} — lower max_new_tokens (to {fits - longest} at most), or "
            f"data.max_length to shorten the prompts"
        )


def check_writable(recipe: Recipe, directory: Path) -> None:
    """The completions' folder can be created and written — checked now, not after the teacher has
    generated for every prompt. Creates nothing (a dry run builds this too): the nearest existing
    folder must be one this user may write in."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return
    what = "is not a folder" if existing.exists() and not existing.is_dir() else "is not writable"
    where = (
        "distillation.generation_cache"
        if recipe.distillation.generation_cache is not None
        else "distillation.generation_cache (unset: $BREWER_CACHE, else ~/.cache/brewer)"
    )
    raise RecipeError(
        f"{recipe.path}: {where}: the teacher's completions are kept in {directory}, but {existing} {what} — set "
        f"distillation.generation_cache to a folder this user can write in"
    )
