"""What each command does. The only module that sequences runs: augmentation first, then the
missing teachers, then each stage — every step one run, built by brewer_cli.build and trained by
the one loop; a loop over steps, never a command calling itself."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from rich.console import Console
from rich.markup import escape

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
from brewer_cli.build.loading import UntrainedTeacher
from brewer_cli.build.teachers import reuse_note, stage_fields, teachers_to_move_aside
from brewer_cli.checkpoints import expected_output_bytes, write_json
from brewer_cli.conversion import convert_checkpoint
from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.extract import describe
from brewer_cli.families.loading import LoadedModel
from brewer_cli.families.placement import check_device
from brewer_cli.hub import check_push_possible, push_finished_run
from brewer_cli.loop import TrainingLoop
from brewer_cli.model_card import write_model_cards
from brewer_cli.models import save_model_dir
from brewer_cli.recipe import (
    Recipe,
    about_recipe,
    on_augmented_data,
    speaking_of,
    stage_directory,
    stage_recipes,
    teacher_run_parent,
    teacher_training_recipe,
    with_student_of,
    without_augment,
)
from brewer_cli.run_directory import (
    link_final,
    move_aside,
    prepare_run_dir,
    record_recipe,
    refuse_started,
    refuse_started_stages,
    resume_changes,
    run_directory_lock,
    run_started,
)
from brewer_cli.summary import print_stages, print_summary, run_summary, staged_summary
from brewer_cli.training_setup import apply_threads, check_trackers

Summary = dict[str, Any]


def distill(
    recipe: Recipe,
    output_dir: str | Path = "runs",
    resume: bool = False,
    dry_run: bool = False,
    console: Any = None,
    retrain_teacher: bool = False,
) -> Summary | None:
    """`brewer distill`: augmentation (`data.augment`), then the stages (or the single run), each
    after training the teachers it is missing. `--resume` continues each part that has a
    checkpoint, starts afresh the parts that have none and skips the finished ones.
    `retrain_teacher`: each teacher with a `train` section is trained again into a fresh run; an
    earlier run of it is moved aside to <name>.replaced-<date-time>, never deleted."""
    console = console or Console()
    output_dir = Path(output_dir)
    if not dry_run:
        _check_before_any_training(recipe)
    if retrain_teacher:
        _move_teachers_aside(recipe, output_dir, resume, dry_run, console)
    # A dry run moves nothing: the teachers it would retrain are planned as missing ones.
    retrained = retrain_teacher and dry_run
    checked: frozenset[str] = frozenset()
    if recipe.data is not None and recipe.data.augment is not None:
        # The teachers learn from the original data: _augment checks an existing one against that, and
        # the recipe on the augmented file must not check it again (its data.train is the new file).
        checked = frozenset(slot.spec.checkpoint for slot in teacher_slots(without_augment(recipe)))
        recipe = _augment(recipe, output_dir, resume, dry_run, console, retrained)
    if recipe.stages is None:
        return _distill_one(recipe, output_dir, resume, dry_run, console, retrained=retrained, checked=checked)
    return _run_stages(recipe, output_dir, resume, dry_run, console, retrained, checked)


def train_teacher(
    recipe: Recipe, output_dir: str | Path = "runs", resume: bool = False, dry_run: bool = False, console: Any = None
) -> Summary | None:
    """`brewer train-teacher`: a `trainer` recipe, or a distillation recipe's teachers' `train`.
    A teacher that exists is checked against the settings it was trained with (reuse_note)."""
    console = console or Console()
    if not DISTILLERS.get(recipe.distillation.kind).needs_teacher:
        if not dry_run:
            _check_before_any_training(recipe)
        return _run(recipe, Path(output_dir), resume, dry_run, console)
    if recipe.teacher is not None:
        if recipe.teacher.train is None:
            raise BrewerError(
                f"{recipe.path}: teacher.train: this recipe does not say how to train its teacher — give a recipe with "
                f"`distillation: {{kind: trainer}}` and `model:`, or add `teacher.train: {{model: …, training: …}}`"
            )
        if not resume:
            # Trained with other settings: refused with them shown (the same settings: the run
            # directory's own refusal follows, naming --resume).
            reuse_note(teacher_slots(recipe)[0], "train-teacher")
        return _run(teacher_training_recipe(recipe), teacher_run_parent(recipe), resume, dry_run, console)
    slots = teacher_slots(recipe)
    trainable = [slot for slot in slots if slot.trainable]
    if not trainable:
        raise BrewerError(
            f"{recipe.path}: no teacher of this recipe has a `train` section — add one (e.g. "
            f"`{slots[0].field}.train: {{model: …, training: …}}`), or train each teacher with a "
            f"`kind: trainer` recipe: `brewer train-teacher TRAINER_RECIPE --set training.seed=N --set name=…`"
        )
    for slot in trainable:
        reuse_note(slot, "train-teacher")
    # A finished teacher is skipped, also with --resume; the others are trained (or continued).
    chosen = [slot for slot in trainable if teacher_missing(slot.recipe, slot.spec)]
    if not chosen:
        raise BrewerError(
            f"{recipe.path}: every teacher with a `train` section exists already "
            f"({', '.join(slot.spec.checkpoint for slot in trainable)}), trained with these settings — distill with "
            f"them, or train them again: `brewer distill {recipe.path} --retrain-teacher`"
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
    console.print(describe(extraction), markup=False)
    console.print(f"written: {target} (a transformers model directory) and {target / 'extraction.json'}", markup=False)
    return target


# ============================================================================= the steps


def _check_before_any_training(recipe: Recipe) -> None:
    """What would fail only at the end, or in the student's run after its teachers trained for
    hours, is refused first: a tracker that is not installed, a push that cannot happen."""
    check_trackers(recipe.training, recipe.path)
    if recipe.hub is not None:
        check_push_possible(recipe.hub, recipe.path)
    for slot in teacher_slots(recipe):
        check_device(slot.spec.device, f"{recipe.path}: {slot.field}.device")


def _augment(recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any, retrained: bool) -> Recipe:
    """`data.augment`: the recipe on the augmented training file. The teacher learns from the
    original data (augmentation serves distillation only), so a missing one is trained first."""
    original = without_augment(recipe)
    # Teachers that cannot be trained, or were trained otherwise, are refused before augmenting.
    to_train = _teachers_to_train(original, None, retrained, console)
    if not dry_run:
        _train_teachers(to_train, resume, False, console)
        return with_augmented_data(recipe, console)
    path = augmented_output(recipe)
    cached = path.is_file() and path.with_name(path.name + ".fingerprint.json").is_file()
    spec = recipe.data.augment
    console.print(
        f"[bold]data.train will be augmented[/bold] (N_a {spec.variants}, p {spec.probability}, "
        f"K {spec.candidates}, masked LM {escape(spec.model or 'none')}, word vectors {escape(spec.word_vectors or 'none')}) "
        f"→ {escape(str(path))}{' (in the cache already: the plan reads it)' if cached else ' (not made yet: the plan reads the original data)'}"
    )
    return on_augmented_data(recipe, path) if cached else without_augment(recipe)


# Messages about a derived recipe (a stage, a teacher's training run) name the user's fields.
@about_recipe
def _distill_one(
    recipe: Recipe,
    output_dir: Path,
    resume: bool,
    dry_run: bool,
    console: Any,
    written_as: dict[str, str] | None = None,
    retrained: bool = False,
    composite: bool = False,
    checked: frozenset[str] = frozenset(),
) -> Summary | None:
    """One run, after training the teachers it is missing (dry run: planning them instead).
    `written_as`: where a stage's own sections are in the user's file (TeacherSlot.field_of);
    `retrained`: a dry run of --retrain-teacher; `composite`: one stage of several. In a composite
    run (stages, or teachers trained first) --resume starts afresh a student without checkpoints. `checked`: teacher
    checkpoints already checked against the settings they were trained with (before augmentation)."""
    stand_ins: dict[str, LoadedModel] = {}
    run_dir = output_dir / recipe.name
    if DISTILLERS.get(recipe.distillation.kind).needs_teacher:
        composite = composite or any(slot.trainable for slot in teacher_slots(recipe))
        to_train = _teachers_to_train(recipe, written_as, retrained, console, checked)
        if to_train:
            check_before_training_teachers(recipe)
            if not dry_run and not resume:
                refuse_started(run_dir)  # refused now, not after training the teachers
            stand_ins = _train_teachers(to_train, resume, dry_run, console)[0]
            extract = recipe.student.init.extract if recipe.student and recipe.student.init else None
            if stand_ins and extract is not None and extract.strategy in ("importance", "activation"):
                console.print(
                    f"student.init.extract: strategy {extract.strategy} scores the teacher's heads, neurons and channels once the "
                    "teacher is trained — this plan does not score its untrained stand-in; the student below has the "
                    "recipe's shape, cut without scores",
                    markup=False,
                )
    if resume and composite and not dry_run and not run_started(run_dir):
        console.print(f"{run_dir}: no checkpoint to resume: training it from the start", markup=False)
        resume = False
    return _run(recipe, output_dir, resume, dry_run, console, stand_ins)


def _teachers_to_train(
    recipe: Recipe, written_as: dict[str, str] | None, retrained: bool, console: Any, checked: frozenset[str] = frozenset()
) -> list[TeacherSlot]:
    """The recipe's teachers still to train (with `retrained`, every one with a `train` section).
    One that exists and has `train` is checked against the settings it was trained with, and
    what brewer does with it is printed; a missing one without `train` is refused."""
    to_train = []
    for slot in teacher_slots(recipe, written_as):
        if teacher_missing(slot.recipe, slot.spec) or (retrained and slot.trainable):
            to_train.append(slot)
            continue
        if slot.spec.checkpoint in checked:
            continue
        note = reuse_note(slot)
        if note is not None and console is not None:
            console.print(note, markup=False)
    untrainable = [slot for slot in to_train if not slot.trainable]
    if untrainable:
        raise ModelError("\n".join(slot.missing_message() for slot in untrainable))
    return to_train


def _train_teachers(
    slots: list[TeacherSlot], resume: bool, dry_run: bool, console: Any
) -> tuple[dict[str, LoadedModel], list[Summary | None]]:
    """Train the slots' teachers in order; returns the dry run's untrained stand-ins by field and
    the trained runs' summaries. With --resume a teacher run with a checkpoint continues, one
    without starts afresh."""
    stand_ins: dict[str, LoadedModel] = {}
    summaries: list[Summary | None] = []
    for slot in slots:
        teacher_recipe = slot.training_recipe()
        parent = teacher_run_parent(slot.recipe, slot.spec)
        missing = teacher_missing(slot.recipe, slot.spec)
        if dry_run:
            doing = "is missing: it will be trained first" if missing else "will be trained again (--retrain-teacher)"
            console.print(f"[bold]{escape(slot.field)} {escape(slot.spec.checkpoint)} {doing}[/bold]")
            with speaking_of(teacher_recipe):
                teacher_run = build_run(teacher_recipe, parent)
            _print_plan(teacher_run, console)
            stand_ins[slot.field] = UntrainedTeacher.of(teacher_run.student)
            continue
        # Two entries may name one checkpoint: the first trains it.
        if not missing:
            continue
        started = run_started(slot.run_directory)
        if resume and started:
            doing = "continuing its training"
        elif resume:
            doing = "has no checkpoint to resume: training it from the start"
        else:
            doing = "is missing: training it first"
        console.print(f"[bold]{escape(slot.field)} {escape(slot.spec.checkpoint)} {doing}[/bold]")
        summaries.append(_run(teacher_recipe, parent, resume and started, False, console))
    return stand_ins, summaries


def _move_teachers_aside(recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any) -> None:
    """--retrain-teacher: the earlier run of each teacher with a `train` section moves aside, after
    every check that could refuse the command has passed."""
    if resume:
        raise BrewerError(
            f"{recipe.path}: --retrain-teacher and --resume together: the student's checkpoints were distilled from "
            f"the teacher that would be replaced — continue the run without --retrain-teacher, or start a new run "
            f"with it (another name: --set name=…)"
        )
    parent = output_dir / recipe.name
    earlier = teachers_to_move_aside(recipe, parent)
    if dry_run:
        for slot in earlier:
            console.print(
                f"--retrain-teacher: {slot.run_directory} would be moved aside to "
                f"{slot.run_directory.name}.replaced-<date-time> and {slot.field} trained again (a dry run moves nothing)",
                markup=False,
            )
        return
    # The student's directory must take a new run, or the teacher would be moved for nothing.
    if recipe.stages is None:
        refuse_started(parent)
    else:
        refuse_started_stages(parent, len(recipe.stages))
    state = PartialState(cpu=not torch.cuda.is_available())
    for slot in earlier:
        moved = move_aside(slot.run_directory, state)
        if state.is_main_process:
            console.print(
                f"--retrain-teacher: the earlier run of {slot.field} moved aside to {moved} (kept: delete it when you no "
                f"longer need it); training the teacher again",
                markup=False,
            )
    state.wait_for_everyone()


def _run_stages(
    recipe: Recipe,
    output_dir: Path,
    resume: bool,
    dry_run: bool,
    console: Any,
    retrained: bool = False,
    checked: frozenset[str] = frozenset(),
) -> Summary | None:
    """Each stage as a run of its own in <run>/stage-k (brewer_cli.recipe.derive.stage_recipes);
    `final` links to the last stage's final/, summary.json holds every stage's figures."""
    parent = output_dir / recipe.name
    stages = stage_recipes(recipe, parent)
    if dry_run:
        for index, (label, stage_recipe) in enumerate(stages, 1):
            console.print(f"[bold]stage {index}/{len(stages)}: {escape(label)}[/bold]")
            if index > 1:
                console.print(
                    f"  student: stage {index - 1}'s final/ ({stage_recipe.student.checkpoint}); this plan "
                    f"builds it as stage 1 does",
                    markup=False,
                )
                stage_recipe = with_student_of(stage_recipe, recipe)
            _distill_one(stage_recipe, parent, False, True, console, stage_fields(recipe, index), retrained, checked=checked)
        return None
    state = PartialState(cpu=not torch.cuda.is_available())
    # The staged run is one writer of its directory, for all its stages (each stage locks its own too).
    with run_directory_lock(parent, state):
        return _train_stages(recipe, stages, parent, resume, console, state, checked)


def _train_stages(
    recipe: Recipe,
    stages: list[tuple[str, Recipe]],
    parent: Path,
    resume: bool,
    console: Any,
    state: PartialState,
    checked: frozenset[str] = frozenset(),
) -> Summary:
    # Checked before anything is written, so that a refusal leaves the directory as it was.
    if not resume:
        refuse_started_stages(parent, len(stages))
    changes = resume_changes(parent, recipe) if resume else {}
    if state.is_main_process:
        (parent / "summary.json").unlink(missing_ok=True)
        record_recipe(parent, recipe, changes, console)
    state.wait_for_everyone()
    summaries = []
    for index, (label, stage_recipe) in enumerate(stages, 1):
        directory = stage_directory(parent, index)
        console.print(f"[bold]stage {index}/{len(stages)}: {escape(label)}[/bold] → {escape(str(directory))}")
        if resume and (directory / "summary.json").is_file():
            console.print("  finished already: skipped")
            summaries.append(json.loads((directory / "summary.json").read_text()))
            continue
        # Each part of the stage (its teachers, its student) resumes from its checkpoints, or
        # starts afresh when it stopped before its first complete one.
        summaries.append(
            _distill_one(
                stage_recipe, parent, resume, False, console, stage_fields(recipe, index), composite=True, checked=checked
            )
        )
    link_final(parent, stage_directory(parent, len(stages)))
    summary = staged_summary(recipe, stages, summaries, parent)
    write_json(parent / "summary.json", summary)
    print_stages(summary, console)
    if recipe.hub is not None and state.is_main_process:
        # The last stage's final/ (its model card written by that stage's run).
        push_finished_run(parent, recipe.hub, recipe.path, console)
    return summary


@about_recipe
def _run(
    recipe: Recipe, output_dir: Path, resume: bool, dry_run: bool, console: Any, stand_ins: dict[str, LoadedModel] | None = None
) -> Summary | None:
    """Build one run and train it (or print its plan)."""
    started = time.monotonic()  # summary.json's total_time_s counts from here
    if not dry_run:
        # A tracker that is not installed stops the run before any model is built.
        check_trackers(recipe.training, recipe.path)
    # The intra-op thread count for everything this run computes (extraction, tokenization, training).
    apply_threads(recipe.training.threads)
    run = build_run(recipe, output_dir, stand_ins)
    if dry_run:
        _print_plan(run, console)
        return None
    return execute(run, resume, console, started)


def execute(run: Run, resume: bool, console: Any, started: float | None = None) -> Summary:
    started = time.monotonic() if started is None else started
    # Without CUDA, Accelerate only joins a multi-process launch (gloo) when told it runs on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    # One writer per run directory: held from before the first write until summary.json is written.
    with run_directory_lock(run.run_dir, state):
        return _train(run, resume, console, state, started)


def _train(run: Run, resume: bool, console: Any, state: PartialState, started: float) -> Summary:
    prepare_run_dir(run.run_dir, run.recipe, resume, state, console, expected_output_bytes(run.distiller))
    state.wait_for_everyone()
    loop = TrainingLoop(run, resume=resume, console=console)
    # The distiller knows its teachers: one, several (and their ensemble), or one per task.
    teacher_metrics = run.distiller.evaluate_teachers(state.device)
    if teacher_metrics is not None and state.is_main_process:
        console.print(f"teacher {run.task.primary_metric}: {teacher_metrics[run.task.primary_metric]:.4f}")
    # A training.metric_for_best the task does not report stops the run here, before training.
    loop.check_metric_for_best(teacher_metrics, "the teacher's evaluation")
    result = loop.fit()
    summary = run_summary(run, result, teacher_metrics, loop.accelerator.device, started)
    if state.is_main_process:
        # The model cards (README.md in final/ and best/: summary's figures, recipe.yaml) come first:
        # summary.json, written last, is what marks the run finished (and --resume skips it then).
        write_model_cards(run.run_dir, summary, losses=run.distiller.describe_losses())
        write_json(run.run_dir / "summary.json", summary, run.run_dir)
        print_summary(summary, console, run)
        if run.recipe.hub is not None:
            push_finished_run(run.run_dir, run.recipe.hub, run.recipe.path, console)
    return summary


def _print_plan(run: Run, console: Any) -> None:
    console.print(f"[bold]plan for {escape(run.recipe.name)}[/bold]")
    for line in plan_lines(run):
        console.print(f"  {line}", markup=False)


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
