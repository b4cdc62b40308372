"""What each command does. The only module that sequences runs: augmentation first, then the
missing teachers, then each stage — every step one run, built by brewer_cli.build and trained by
the one loop; a loop over steps, never a command calling itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from rich.console import Console

from brewer_cli.augment import augmented_output, with_augmented_data
from brewer_cli.build import (
    Run,
    TeacherSlot,
    build_run,
    check_before_training_teachers,
    plan_lines,
    teacher_missing,
    teacher_slots,
)
from brewer_cli.checkpoints import expected_output_bytes, write_json
from brewer_cli.conversion import convert_checkpoint
from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.evaluation import EvalSetup, eval_batch_size, evaluate_model
from brewer_cli.extract import describe
from brewer_cli.families import parameter_count
from brewer_cli.families.loading import LoadedModel, load_checkpoint
from brewer_cli.loop import TrainingLoop
from brewer_cli.models import save_model_dir
from brewer_cli.recipe import (
    DataSource,
    Recipe,
    eval_only,
    load_recipe,
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
from brewer_cli.run_directory import prepare_run_dir, record_recipe, resume_changes, run_directory_lock, run_started
from brewer_cli.summary import print_eval, print_stages, print_summary, run_summary, staged_summary
from brewer_cli.tasks import TASKS

Summary = dict[str, Any]


def distill(
    recipe: Recipe, output_dir: str | Path = "runs", resume: bool = False, dry_run: bool = False, console: Any = None
) -> Summary | None:
    """`brewer distill`: augmentation (`data.augment`), then the stages (or the single run), each
    after training the teachers it is missing."""
    console = console or Console()
    if recipe.data is not None and recipe.data.augment is not None:
        recipe = _augment(recipe, Path(output_dir), resume, dry_run, console)
    if recipe.stages is None:
        return _distill_one(recipe, Path(output_dir), resume, dry_run, console)
    return _run_stages(recipe, Path(output_dir), resume, dry_run, console)


def train_teacher(
    recipe: Recipe, output_dir: str | Path = "runs", resume: bool = False, dry_run: bool = False, console: Any = None
) -> Summary | None:
    """`brewer train-teacher`: a `trainer` recipe, or a distillation recipe's teachers' `train`."""
    console = console or Console()
    if not DISTILLERS.get(recipe.distillation.kind).needs_teacher:
        return _run(recipe, Path(output_dir), resume, dry_run, console)
    if recipe.teacher is not None:
        if recipe.teacher.train is None:
            raise BrewerError(
                f"{recipe.path}: teacher.train: this recipe does not say how to train its teacher — give a recipe with "
                f"`distillation: {{kind: trainer}}` and `model:`, or add `teacher.train: {{model: …, training: …}}`"
            )
        return _run(teacher_training_recipe(recipe), teacher_run_parent(recipe), resume, dry_run, console)
    slots = teacher_slots(recipe)
    trainable = [slot for slot in slots if slot.spec.train is not None]
    if not trainable:
        raise BrewerError(
            f"{recipe.path}: no teacher of this recipe has a `train` section — add one (e.g. "
            f"`{slots[0].field}.train: {{model: …, training: …}}`), or train each teacher with a "
            f"`kind: trainer` recipe: `brewer train-teacher TRAINER_RECIPE --set training.seed=N --set name=…`"
        )
    chosen = [slot for slot in trainable if resume or teacher_missing(slot.recipe, slot.spec)]
    if not chosen:
        raise BrewerError(
            f"{recipe.path}: every teacher with a `train` section exists already "
            f"({', '.join(slot.spec.checkpoint for slot in trainable)}) — continue one with --resume, or distill"
        )
    return {"teachers": _train_teachers(chosen, resume, dry_run, console)[1]}


def extract(recipe: Recipe, output: str | Path | None = None, console: Any = None) -> Path:
    """`brewer extract`: cut the student out of the teacher and write it, to inspect before distilling."""
    console = console or Console()
    if recipe.student is None or recipe.student.init is None:
        raise BrewerError(
            f"{recipe.path}: student.init.extract: this recipe does not extract its student — add "
            f"`student: {{init: {{extract: {{layers: …, hidden: …}}}}}}`"
        )
    if teacher_missing(recipe):
        raise ModelError(
            f"{recipe.path}: teacher.checkpoint: {recipe.teacher.checkpoint!r} does not exist — train it "
            f"first with `brewer train-teacher {recipe.path}`"
        )
    target = Path(output) if output is not None else Path("runs") / f"{recipe.name}-extracted"
    # Checked before the (possibly long) importance scoring; a file in the way would otherwise
    # fail inside save_pretrained with a traceback.
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BrewerError(f"{target}: already exists — choose another --output")
    run = build_run(recipe, "runs")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model_dir(run.student.model, run.student.tokenizer, target)
    extraction = run.student.extraction
    (target / "extraction.json").write_text(
        json.dumps({"kept": extraction.kept, "importance": extraction.importance_summary}, indent=2, default=str)
    )
    console.print(describe(extraction))
    console.print(f"written: {target} (a transformers model directory) and {target / 'extraction.json'}")
    return target


# ============================================================================= the steps


def _augment(recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any) -> Recipe:
    """`data.augment`: the recipe on the augmented training file. The teacher learns from the
    original data (augmentation serves distillation only), so a missing one is trained first."""
    if not dry_run:
        original = without_augment(recipe)
        missing = [
            slot for slot in teacher_slots(original) if teacher_missing(slot.recipe, slot.spec) and slot.spec.train is not None
        ]
        _train_teachers(missing, resume, False, console)
        return with_augmented_data(recipe, console)
    path = augmented_output(recipe)
    cached = path.is_file() and path.with_name(path.name + ".fingerprint.json").is_file()
    spec = recipe.data.augment
    console.print(
        f"[bold]data.train will be augmented[/bold] (N_a {spec.variants}, p {spec.probability}, "
        f"K {spec.candidates}, masked LM {spec.model or 'none'}, word vectors {spec.word_vectors or 'none'}) "
        f"→ {path}{' (in the cache already: the plan reads it)' if cached else ' (not made yet: the plan reads the original data)'}"
    )
    return on_augmented_data(recipe, path) if cached else without_augment(recipe)


def _distill_one(recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any) -> Summary | None:
    """One run, after training the teachers it is missing (dry run: planning them instead)."""
    stand_ins: dict[str, LoadedModel] = {}
    if DISTILLERS.get(recipe.distillation.kind).needs_teacher:
        missing = [slot for slot in teacher_slots(recipe) if teacher_missing(slot.recipe, slot.spec)]
        if missing:
            untrainable = [slot for slot in missing if slot.spec.train is None]
            if untrainable:
                raise ModelError("\n".join(slot.missing_message() for slot in untrainable))
            check_before_training_teachers(recipe)
            stand_ins = _train_teachers(missing, resume, dry_run, console)[0]
    return _run(recipe, output_dir, resume, dry_run, console, stand_ins)


def _train_teachers(
    slots: list[TeacherSlot], resume: bool, dry_run: bool, console: Any
) -> tuple[dict[str, LoadedModel], list[Summary | None]]:
    """Train the slots' teachers in order; returns the dry run's untrained stand-ins by field and
    the trained runs' summaries."""
    stand_ins: dict[str, LoadedModel] = {}
    summaries: list[Summary | None] = []
    for slot in slots:
        # Two entries may name one checkpoint: the first trains it.
        if not resume and not teacher_missing(slot.recipe, slot.spec):
            continue
        teacher_recipe = teacher_training_recipe(slot.recipe, slot.spec)
        parent = teacher_run_parent(slot.recipe, slot.spec)
        if dry_run:
            console.print(f"[bold]{slot.field} {slot.spec.checkpoint} is missing: it will be trained first[/bold]")
            teacher_run = build_run(teacher_recipe, parent)
            _print_plan(teacher_run, console)
            loaded = teacher_run.student
            loaded.role = "teacher"
            loaded.source += " (untrained in this plan)"
            stand_ins[slot.field] = loaded
        else:
            doing = "is missing: training it first" if teacher_missing(slot.recipe, slot.spec) else "continuing its training"
            console.print(f"[bold]{slot.field} {slot.spec.checkpoint} {doing}[/bold]")
            summaries.append(_run(teacher_recipe, parent, resume, False, console))
    return stand_ins, summaries


def _run_stages(recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any) -> Summary | None:
    """Each stage as a run of its own in <run>/stage-k (brewer_cli.recipe.derive.stage_recipes);
    `final` links to the last stage's final/, summary.json holds every stage's figures."""
    parent = output_dir / recipe.name
    stages = stage_recipes(recipe, parent)
    if dry_run:
        for index, (label, stage_recipe) in enumerate(stages, 1):
            console.print(f"[bold]stage {index}/{len(stages)}: {label}[/bold]")
            if index > 1:
                console.print(
                    f"  student: stage {index - 1}'s final/ ({stage_recipe.student.checkpoint}); this plan "
                    f"builds it as stage 1 does"
                )
                stage_recipe = with_student_of(stage_recipe, recipe)
            _distill_one(stage_recipe, parent, False, True, console)
        return None
    state = PartialState(cpu=not torch.cuda.is_available())
    # The staged run is one writer of its directory, for all its stages (each stage locks its own too).
    with run_directory_lock(parent, state):
        return _train_stages(recipe, stages, parent, resume, console, state)


def _train_stages(
    recipe: Recipe, stages: list[tuple[str, Recipe]], parent: Path, resume: bool, console: Any, state: PartialState
) -> Summary:
    # Checked before anything is written, so that a refusal leaves the directory as it was.
    if (parent / "summary.json").exists() and not resume:
        raise BrewerError(
            f"{parent}: the run directory already holds a finished staged run — choose another name "
            f"with --set name=…, or another --output-dir; brewer never overwrites checkpoints"
        )
    started = [stage_directory(parent, index) for index in range(1, len(stages) + 1)]
    started = [directory for directory in started if run_started(directory)]
    if started and not resume:
        raise BrewerError(
            f"{parent}: the run directory holds a started staged run ({started[0].name} has checkpoints) — continue "
            f"it with --resume, choose another name with --set name=…, or another --output-dir; brewer never "
            f"overwrites checkpoints"
        )
    changes = resume_changes(parent, recipe) if resume else {}
    if state.is_main_process:
        (parent / "summary.json").unlink(missing_ok=True)
        record_recipe(parent, recipe, changes, console)
    state.wait_for_everyone()
    summaries = []
    for index, (label, stage_recipe) in enumerate(stages, 1):
        directory = stage_directory(parent, index)
        console.print(f"[bold]stage {index}/{len(stages)}: {label}[/bold] → {directory}")
        if resume and (directory / "summary.json").is_file():
            console.print("  finished already: skipped")
            summaries.append(json.loads((directory / "summary.json").read_text()))
            continue
        # A stage stopped before its first complete checkpoint has nothing to resume: it starts afresh.
        summaries.append(_distill_one(stage_recipe, parent, resume and run_started(directory), False, console))
    _link_final(parent, stage_directory(parent, len(stages)))
    summary = staged_summary(recipe, stages, summaries, parent)
    write_json(parent / "summary.json", summary)
    print_stages(summary, console)
    return summary


def _link_final(parent: Path, last: Path) -> None:
    link = parent / "final"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise BrewerError(f"{link}: a directory is in the way of the link to {last / 'final'} — remove it")
    os.symlink(os.path.relpath(last / "final", parent), link)


def _run(
    recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any, stand_ins: dict[str, LoadedModel] | None = None
) -> Summary | None:
    """Build one run and train it (or print its plan)."""
    run = build_run(recipe, output_dir, stand_ins)
    if dry_run:
        _print_plan(run, console)
        return None
    return execute(run, resume, console)


def execute(run: Run, resume: bool, console: Any) -> Summary:
    # Without CUDA, Accelerate only joins a multi-process launch (gloo) when told it runs on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    # One writer per run directory: held from before the first write until summary.json is written.
    with run_directory_lock(run.run_dir, state):
        return _train(run, resume, console, state)


def _train(run: Run, resume: bool, console: Any, state: PartialState) -> Summary:
    prepare_run_dir(run.run_dir, run.recipe, resume, state, console, expected_output_bytes(run.distiller))
    state.wait_for_everyone()
    # The distiller knows its teachers: one, several (and their ensemble), or one per task.
    teacher_metrics = run.distiller.evaluate_teachers(state.device)
    if teacher_metrics is not None and state.is_main_process:
        console.print(f"teacher {run.task.primary_metric}: {teacher_metrics[run.task.primary_metric]:.4f}")
    loop = TrainingLoop(run, resume=resume, console=console)
    result = loop.fit()
    summary = run_summary(run, result, teacher_metrics, loop.accelerator.device)
    if state.is_main_process:
        write_json(run.run_dir / "summary.json", summary, run.run_dir)
        print_summary(summary, console, run)
    return summary


def _print_plan(run: Run, console: Any) -> None:
    console.print(f"[bold]plan for {run.recipe.name}[/bold]")
    for line in plan_lines(run):
        console.print(f"  {line}")


# ============================================================================= brewer eval


def evaluate(
    target: str, recipe_path: str | None, data_path: str | None, against: str | None, overrides: list[str], console: Any
) -> Summary:
    """`brewer eval`: a run's (or checkpoint's) metrics on its recipe's eval split or `--data`,
    optionally beside a teacher's; prints a table and writes eval.json."""
    target_path = Path(target)
    if not target_path.exists():
        raise BrewerError(f"{target}: no such run directory or checkpoint — give runs/<name> or a model directory")
    checkpoint = checkpoint_of(target_path)
    recipe_file = Path(recipe_path) if recipe_path else find_run_recipe(checkpoint)
    if recipe_file is None:
        raise BrewerError(
            f"{target}: no recipe.yaml found beside this checkpoint — pass --recipe RECIPE so brewer knows the task and data"
        )
    recipe = load_recipe(recipe_file, overrides)
    if recipe.tasks is not None:
        recipe = _one_task(recipe, checkpoint)
    if data_path is not None:
        recipe = with_eval_source(recipe, DataSource(path=data_path, format="auto"))
    if recipe.data.eval is None:
        raise BrewerError(f"{recipe_file}: data.eval: the recipe has no eval split — give --data FILE")
    task = TASKS.get(recipe.task.kind)(recipe.task)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    results: dict[str, Any] = {}
    models = [("model", str(checkpoint))] + ([("teacher", against)] if against else [])
    for role, location in models:
        location_path = Path(location)
        if role == "teacher" and location_path.exists():
            location = str(checkpoint_of(location_path))
        loaded = load_checkpoint(
            location, task, None, None, f"--against {location}" if role == "teacher" else str(location), role, shape_head=False
        )
        if loaded.tokenizer is None:
            raise BrewerError(f"{location}: no tokenizer files in this checkpoint — save the tokenizer with the model")
        data = task.prepare(eval_only(recipe), loaded.tokenizer, _label_names(loaded.model))
        setup = EvalSetup(task, data, task.collate(loaded.tokenizer), eval_batch_size(recipe.training))
        loaded.model.to(device)
        metrics = evaluate_model(
            setup, loaded.model, loaded.family, output_dir=Path(location) if Path(location).is_dir() else None
        )
        results[role] = {"checkpoint": str(location), "parameters": parameter_count(loaded.model), "metrics": metrics}
    primary = task.primary_metric
    # Examples as the user counts them: questions for QA, not the windows they were split into.
    examples = len(data.eval_examples) if data.eval_examples is not None else len(data.eval)
    report: dict[str, Any] = {"metric": primary, **results, "examples": examples}
    if against:
        teacher_value = results["teacher"]["metrics"][primary]
        report["model_to_teacher"] = results["model"]["metrics"][primary] / teacher_value if teacher_value else None
    output = (target_path if target_path.is_dir() else checkpoint) / "eval.json"
    output.write_text(json.dumps(report, indent=2))
    print_eval(report, console, output)
    return report


def find_run_recipe(target: Path) -> Path | None:
    """The resolved recipe of the run a checkpoint belongs to (final/, best/, checkpoints/step-N/student)."""
    for directory in [target, *target.parents][:4]:
        candidate = directory / "recipe.yaml"
        if candidate.is_file():
            return candidate
    return None


def checkpoint_of(target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    for directory in (target, target / "final", target / "best"):
        if (directory / "tasks.json").is_file():
            # A multi-task run: one model directory per task.
            choices = sorted(str(path.parent) for path in directory.glob("*/config.json"))
            raise BrewerError(f"{target}: a multi-task run holds one model per task — give one of: {', '.join(choices)}")
    for name in ("final", "best"):
        if (target / name / "config.json").is_file():
            return target / name
    raise BrewerError(
        f"{target}: not a run directory (no final/ or best/) nor a checkpoint (no config.json) — give a run "
        f"directory such as runs/<name> or a model directory"
    )


def _one_task(recipe: Recipe, checkpoint: Path) -> Recipe:
    """A multi-task recipe's task whose exported model this is (final/<task>/)."""
    if checkpoint.name not in recipe.tasks:
        raise BrewerError(
            f"{checkpoint}: {recipe.path} is a multi-task recipe and this directory is not one of its tasks' models "
            f"(final/<task>/ with a task among {', '.join(recipe.tasks)}) — give a task's directory"
        )
    return task_recipe(recipe, checkpoint.name)


def _label_names(model: Any) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] or None


# ============================================================================= brewer convert


def convert(directory: str | Path, output: str | Path | None, remove_pickles: bool, console: Any) -> list[Path]:
    """`brewer convert`: a checkpoint's pickled weights → safetensors, once, on request (brewer
    loads safetensors only). Prints what it wrote, copied and removed; returns the written files."""
    console = console or Console()
    result = convert_checkpoint(Path(directory), Path(output) if output is not None else None, remove_pickles)
    # Paths are printed as they are: no markup read in brackets, no line break inside a path.
    for path in result.written:
        console.print(f"wrote {path} ({path.stat().st_size:,} bytes)", markup=False, soft_wrap=True)
    console.print(f"{result.tensors} tensors converted and verified against the pickles", markup=False, soft_wrap=True)
    for path in result.copied:
        console.print(f"copied {path}", markup=False, soft_wrap=True)
    for path in result.removed:
        console.print(f"removed {path}", markup=False, soft_wrap=True)
    if result.kept_pickles:
        names = ", ".join(path.name for path in result.kept_pickles)
        console.print(
            f"left in place: {names} — brewer reads only the safetensors now; delete the pickles, or run again with "
            f"--remove-pickles",
            markup=False,
            soft_wrap=True,
        )
    console.print(f"the checkpoint {result.output} now loads with brewer", markup=False, soft_wrap=True)
    return result.written
