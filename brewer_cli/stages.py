"""Staged recipes (TinyBERT's task distillation) and the steps that come before a run.

A recipe with `stages: [...]` runs them in order, each as an ordinary run of its own:

    runs/<name>/recipe.yaml     the staged recipe, resolved
    runs/<name>/stage-1/        stage 1: the recipe's student, the stage's distillation and training
    runs/<name>/stage-2/        stage 2: stage 1's final/ as the student
    runs/<name>/final           → stage-N/final (a relative link), so `brewer eval runs/<name>` works
    runs/<name>/summary.json    every stage's figures and the final student's

Stage k's recipe is the staged recipe with `stages` removed, `name: stage-k`, the stage's
`distillation`, the recipe's `training` with the stage's fields replaced, and — after stage 1 —
`student: {checkpoint: <run>/stage-(k-1)/final}`. It is written to stage-k/recipe.yaml like any
run's. One recipe rather than chained recipes: the stages share task, data, teacher and
augmentation by construction, and `--resume` skips finished stages and continues the unfinished one.

`data.augment` (brewer_cli.augment) runs before everything else; the stages (or the single run)
then train on the augmented file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.recipe import Recipe, resolved_mapping, validate_recipe


def stage_directory(parent: Path, index: int) -> Path:
    return parent / f"stage-{index}"


def stage_recipes(recipe: Recipe, parent: Path) -> list[tuple[str, Recipe]]:
    """(label, recipe) per stage, 1-based in the order they run; `parent` is the staged run's directory."""
    base = resolved_mapping(recipe)
    base.pop("stages")
    result = []
    for index, stage in enumerate(recipe.stages, 1):
        raw = dict(base)
        raw["name"] = stage_directory(parent, index).name
        raw["training"] = {**base["training"], **stage.training}
        raw["distillation"] = stage.distillation.model_dump(mode="json", by_alias=True, exclude_none=True)
        if index > 1:
            raw["student"] = {"checkpoint": str((stage_directory(parent, index - 1) / "final").resolve())}
        result.append((stage.name or f"stage {index}", validate_recipe(raw, recipe.path)))
    return result


def stage_name_problems(recipe: Recipe) -> list[str]:
    """`build.check_names` for each stage, its lines naming `stages.N.distillation…`."""
    from brewer_cli.build import check_names

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


# ============================================================================= running


def prepare_and_distill(recipe: Recipe, output_dir: str | Path, resume: bool, dry_run: bool, console: Any) -> dict[str, Any] | None:
    """`data.augment` first, then the stages, or the single run."""
    from brewer_cli import pipeline
    from brewer_cli.build import teacher_missing

    if recipe.data is not None and recipe.data.augment is not None:
        from brewer_cli.augment import augmented_output, recipe_on_augmented_data, with_augmented_data

        if not dry_run and recipe.teacher is not None and recipe.teacher.train is not None and teacher_missing(recipe):
            # The teacher learns from the original data; augmentation serves distillation only.
            pipeline.train_teacher(_without_augment(recipe), output_dir, resume=resume, console=console)
        if dry_run:
            path = augmented_output(recipe)
            cached = path.is_file() and path.with_name(path.name + ".fingerprint.json").is_file()
            spec = recipe.data.augment
            console.print(f"[bold]data.train will be augmented[/bold] (N_a {spec.variants}, p {spec.probability}, "
                          f"K {spec.candidates}, masked LM {spec.model or 'none'}, word vectors {spec.word_vectors or 'none'}) "
                          f"→ {path}{' (in the cache already: the plan reads it)' if cached else ' (not made yet: the plan reads the original data)'}")
            recipe = recipe_on_augmented_data(recipe, path) if cached else _without_augment(recipe)
        else:
            recipe = with_augmented_data(recipe, console)
    if recipe.stages is not None:
        return run_stages(recipe, output_dir, resume, dry_run, console)
    return pipeline.distill(recipe, output_dir, resume=resume, dry_run=dry_run, console=console)


def run_stages(recipe: Recipe, output_dir: str | Path, resume: bool, dry_run: bool, console: Any) -> dict[str, Any] | None:
    from brewer_cli import pipeline

    parent = Path(output_dir) / recipe.name
    stages = stage_recipes(recipe, parent)
    if dry_run:
        for index, (label, stage_recipe) in enumerate(stages, 1):
            console.print(f"[bold]stage {index}/{len(stages)}: {label}[/bold]")
            if index > 1:
                console.print(f"  student: stage {index - 1}'s final/ ({stage_recipe.student.checkpoint}); this plan "
                              f"builds it as stage 1 does")
                stage_recipe = _with_student(stage_recipe, recipe)
            pipeline.distill(stage_recipe, parent, dry_run=True, console=console)
        return None
    if (parent / "summary.json").exists() and not resume:
        raise BrewerError(f"{parent}: the run directory already holds a finished staged run — choose another name "
                          f"with --set name=…, or another --output-dir; brewer never overwrites checkpoints")
    parent.mkdir(parents=True, exist_ok=True)
    (parent / "summary.json").unlink(missing_ok=True)
    (parent / "recipe.yaml").write_text(yaml.safe_dump(resolved_mapping(recipe), sort_keys=False))
    summaries = []
    for index, (label, stage_recipe) in enumerate(stages, 1):
        directory = stage_directory(parent, index)
        console.print(f"[bold]stage {index}/{len(stages)}: {label}[/bold] → {directory}")
        if resume and (directory / "summary.json").is_file():
            console.print("  finished already: skipped")
            summaries.append(json.loads((directory / "summary.json").read_text()))
            continue
        summaries.append(pipeline.distill(stage_recipe, parent, resume=resume and (directory / "checkpoints").exists(),
                                          console=console))
    _link_final(parent, stage_directory(parent, len(stages)))
    summary = _staged_summary(recipe, stages, summaries, parent)
    temporary = parent / "summary.json.tmp"
    temporary.write_text(json.dumps(summary, indent=2))
    temporary.replace(parent / "summary.json")
    _print_stages(summary, console)
    return summary


def _link_final(parent: Path, last: Path) -> None:
    link = parent / "final"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise BrewerError(f"{link}: a directory is in the way of the link to {last / 'final'} — remove it")
    os.symlink(os.path.relpath(last / "final", parent), link)


def _staged_summary(recipe: Recipe, stages: list[tuple[str, Recipe]], summaries: list[dict[str, Any]], parent: Path) -> dict[str, Any]:
    last = summaries[-1]
    entries = []
    for index, ((label, stage_recipe), summary) in enumerate(zip(stages, summaries), 1):
        entries.append({
            "stage": index, "name": label, "kind": stage_recipe.distillation.kind, "run_dir": str(stage_directory(parent, index)),
            "steps": summary["steps"], "wall_time_s": summary["wall_time_s"],
            "student_metric": (summary.get("student") or {}).get("metric"),
        })
    result: dict[str, Any] = {
        "name": recipe.name, "kind": "stages", "metric": last["metric"], "stages": entries,
        "teacher": last.get("teacher"), "student": {**last["student"], "checkpoint": str(parent / "final")},
        "student_to_teacher": last.get("student_to_teacher"), "parameters_ratio": last.get("parameters_ratio"),
        "steps": sum(entry["steps"] for entry in entries),
        "wall_time_s": round(sum(entry["wall_time_s"] for entry in entries), 2),
    }
    if recipe.data is not None:
        # The augmented file when `data.augment` made one.
        result["train_data"] = recipe.data.train.path or recipe.data.train.hub
    return result


def _print_stages(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    metric = summary["metric"]
    table = Table(title=f"{summary['name']} ({len(summary['stages'])} stages, {summary['steps']} steps, {summary['wall_time_s']:.0f} s)")
    for column, justify in (("stage", "left"), ("kind", "left"), ("steps", "right"), (f"student {metric}", "right")):
        table.add_column(column, justify=justify)
    for entry in summary["stages"]:
        value = entry["student_metric"]
        table.add_row(f"{entry['stage']}: {entry['name']}", entry["kind"], str(entry["steps"]), "" if value is None else f"{value:.4f}")
    console.print(table)
    teacher = (summary.get("teacher") or {}).get("metric")
    if teacher is not None:
        console.print(f"teacher {metric}: {teacher:.4f}; final student: {summary['student']['metric']:.4f} "
                      f"({summary['student_to_teacher']:.1%} of the teacher)")
    console.print(f"written: {summary['student']['checkpoint']} (→ the last stage's final/), summary.json")


def _with_student(stage_recipe: Recipe, recipe: Recipe) -> Recipe:
    """A later stage's recipe with the staged recipe's own student, for a plan made before stage 1 ran."""
    updated = stage_recipe.model_copy(update={"student": recipe.student})
    updated._path = stage_recipe.path
    return updated


def _without_augment(recipe: Recipe) -> Recipe:
    data = recipe.data.model_copy(update={"augment": None})
    updated = recipe.model_copy(update={"data": data})
    updated._path = recipe.path
    return updated
