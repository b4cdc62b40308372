"""Recipe → Run: the only place that reads specs and turns them into models, data and a distiller."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from brewer_cli.errors import BrewerError, ModelError, RecipeError
from brewer_cli.models import (
    LoadedModel,
    build_tokenizer,
    load_checkpoint,
    model_from_config,
    parameter_count,
)
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import ModelSpec, Recipe, TeacherSpec, validate_recipe
from brewer_cli.registry import Registry
from brewer_cli.tasks import TASKS, PreparedData, Task


@dataclass
class Run:
    recipe: Recipe
    run_dir: Path
    task: Task
    data: PreparedData
    collate: Callable
    student: LoadedModel  # for kind `trainer`: the model being trained
    teachers: list[LoadedModel]
    distiller_class: type
    # What kinds multi_teacher and multi_task build besides (brewer_cli.multi_teacher / multi_task).
    multi: Any = None

    @property
    def teacher(self) -> LoadedModel | None:
        return self.teachers[0] if self.teachers else None


def lookup(registry: Registry, name: str, recipe: Recipe, field: str) -> Any:
    if name not in registry:
        raise RecipeError(f"{recipe.path}: {field}: {registry.unknown_message(name)}")
    return registry.get(name)


def check_names(recipe: Recipe) -> None:
    """Registry names in the recipe, all checked before any weight is read."""
    from brewer_cli.losses import KD_LOSSES
    from brewer_cli.schedulers import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES

    problems: list[str] = []

    def check(registry: Registry, name: str, field: str) -> None:
        if name not in registry:
            problems.append(f"{recipe.path}: {field}: {registry.unknown_message(name)}")

    if recipe.tasks is not None:
        for name, entry in recipe.tasks.items():
            check(TASKS, entry.task.kind, f"tasks.{name}.task.kind")
    else:
        check(TASKS, recipe.task.kind, "task.kind")
    if recipe.stages is not None:
        from brewer_cli.stages import stage_name_problems

        # Each stage is checked as the recipe it runs as; its lines name stages.N.distillation.
        problems.extend(line for line in stage_name_problems(recipe) if line not in problems)
        if problems:
            raise RecipeError(problems)
        return
    if recipe.task is not None and recipe.task.kind in TASKS:
        problems.extend(TASKS.get(recipe.task.kind).recipe_problems(recipe))
    distillation = recipe.distillation
    if (distillation.kind in ("basic", "general") and distillation.kd_weight == 0 and distillation.hard_label_weight == 0
            and not getattr(distillation, "matches", ())):
        # kd_weight 0 skips logit KD entirely, so nothing would be left to learn from.
        problems.append(f"{recipe.path}: distillation.kd_weight: with kd_weight 0, hard_label_weight 0 and no matches "
                        f"there is no loss — raise kd_weight or hard_label_weight, or add intermediate matches")
    if distillation.kind != "trainer":
        check(KD_LOSSES, distillation.kd_loss, "distillation.kd_loss")
        check(TEMPERATURE_SCHEDULES, distillation.temperature_schedule.kind, "distillation.temperature_schedule.kind")
        check(WEIGHT_SCHEDULES, distillation.kd_weight_schedule, "distillation.kd_weight_schedule")
        check(WEIGHT_SCHEDULES, distillation.hard_label_weight_schedule, "distillation.hard_label_weight_schedule")
    if distillation.kind in ("general", "multi_teacher"):
        from brewer_cli.matches import match_problems

        problems.extend(match_problems(recipe))
    if problems:
        raise RecipeError(problems)


def teacher_training_recipe(recipe: Recipe, teacher: TeacherSpec | None = None) -> Recipe:
    """The `trainer` recipe that `teacher.train` describes; its run directory is the parent of
    `teacher.checkpoint` (…/<run name>/final). `teacher`: one of several (multi-teacher), trained
    on the recipe's task and data."""
    teacher = teacher or recipe.teacher
    run_dir = Path(teacher.checkpoint).parent
    raw = {
        "name": run_dir.name,
        "task": recipe.task.model_dump(exclude_none=True),
        # The teacher learns from the original data: augmentation (data.augment) serves distillation only.
        "data": recipe.data.model_dump(exclude_none=True, exclude={"augment"}),
        "model": teacher.train.model.model_dump(by_alias=True, exclude_none=True),
        "training": teacher.train.training.model_dump(),
        "distillation": {"kind": "trainer"},
    }
    return validate_recipe(raw, recipe.path)


def teacher_run_parent(recipe: Recipe, teacher: TeacherSpec | None = None) -> Path:
    return resolve_path((teacher or recipe.teacher).checkpoint, recipe).parent.parent


def teacher_missing(recipe: Recipe, teacher: TeacherSpec | None = None) -> bool:
    from brewer_cli.paths import looks_like_hub_id

    teacher = teacher or recipe.teacher
    value = teacher.checkpoint
    if value is None:
        return False
    return not resolve_path(value, recipe).exists() and (teacher.train is not None or not looks_like_hub_id(value))


def build_run(recipe: Recipe, output_dir: str | Path, teacher_override: LoadedModel | None = None,
              teacher_overrides: dict[str, LoadedModel] | None = None) -> Run:
    """`teacher_override` stands in for `teacher`; `teacher_overrides` for teachers of the multi
    kinds, by field (`teachers.1`, `tasks.<name>.teacher`) — untrained teachers in a dry-run plan."""
    from transformers import set_seed

    from brewer_cli.distillers import DISTILLERS

    check_names(recipe)
    # Students built from a config (and heads added to checkpoints) draw their initial weights
    # here, before the loop seeds itself: seeding now makes a recipe's run reproducible.
    set_seed(recipe.training.seed)
    if recipe.distillation.kind == "multi_teacher":
        from brewer_cli.multi_teacher import build_multi_teacher_run

        return build_multi_teacher_run(recipe, Path(output_dir) / recipe.name, teacher_overrides or {})
    if recipe.distillation.kind == "multi_task":
        from brewer_cli.multi_task import build_multi_task_run

        return build_multi_task_run(recipe, Path(output_dir) / recipe.name, teacher_overrides or {})
    if recipe.distillation.kind == "general":
        from brewer_cli.matches import validate_before_loading

        # Layer indices, widths and heads against the configs readable without loading weights.
        validate_before_loading(recipe)
    task: Task = TASKS.get(recipe.task.kind)(recipe.task)
    distiller_class = DISTILLERS.get(recipe.distillation.kind)
    run_dir = Path(output_dir) / recipe.name

    teachers: list[LoadedModel] = []
    label_names = list(recipe.task.labels) if recipe.task.labels else None
    if recipe.distillation.kind == "trainer":
        model_spec, field = recipe.model, "model"
        tokenizer = _trainer_tokenizer(recipe, model_spec, task)
        data = task.prepare(recipe, tokenizer, label_names)
        student = _load_student(model_spec, task, data.label_names, tokenizer, recipe, field, "model")
        if student.tokenizer is None:
            student.tokenizer = tokenizer
    else:
        teacher = teacher_override or _load_teacher(recipe, task, label_names)
        teachers.append(teacher)
        label_names = label_names or _named_labels(teacher.model)
        data = task.prepare(recipe, teacher.tokenizer, label_names)
        if recipe.student.init is not None:
            student = extract_from_teacher(recipe, task, teacher, data)
        else:
            student = _load_student(recipe.student, task, data.label_names, teacher.tokenizer, recipe, "student", "student")
        _check_vocabularies(recipe, teacher, student)
        if recipe.distillation.kind == "general":
            from brewer_cli.matches import resolve_matches

            # The loaded models are authoritative (hub checkpoints, extracted students): before step 1.
            resolve_matches(recipe, teacher.model.config, student.model.config)
    return Run(recipe, run_dir, task, data, task.collate(student.tokenizer), student, teachers, distiller_class)


def _trainer_tokenizer(recipe: Recipe, spec: ModelSpec, task: Task) -> Any:
    if spec.tokenizer is not None:
        # The task knows which columns hold text (sentences, words, questions and contexts).
        texts = task.tokenizer_texts(recipe) if spec.tokenizer.train_wordpiece is not None else []
        return build_tokenizer(spec.tokenizer, texts, recipe, "model.tokenizer")
    if spec.checkpoint is not None:
        from brewer_cli.models import checkpoint_location, load_tokenizer_dir

        location = checkpoint_location(spec.checkpoint, recipe, "model.checkpoint")
        return load_tokenizer_dir(location, recipe, "model.checkpoint")
    raise ModelError(
        f"{recipe.path}: model.tokenizer: a model built from a config needs a tokenizer — give "
        f"`tokenizer: {{path: …}}` or `tokenizer: {{train_wordpiece: {{vocab_size: …}}}}`"
    )


def _load_teacher(recipe: Recipe, task: Task, label_names: list[str] | None, spec: TeacherSpec | None = None,
                  field: str = "teacher") -> LoadedModel:
    """`spec` and `field`: one teacher of several (`teachers.1`, `tasks.<name>.teacher`)."""
    spec = spec or recipe.teacher
    if spec.checkpoint is None:
        raise ModelError(
            f"{recipe.path}: {field}.checkpoint: a teacher must be a trained checkpoint (a run's final/ directory or a hub id)"
        )
    teacher = load_checkpoint(spec.checkpoint, task, label_names, recipe, f"{field}.checkpoint", "teacher", shape_head=False)
    if teacher.tokenizer is None:
        if spec.tokenizer is None:
            raise ModelError(f"{recipe.path}: {field}.tokenizer: {spec.checkpoint!r} has no tokenizer files — give `{field}.tokenizer: {{path: …}}`")
        teacher.tokenizer = build_tokenizer(spec.tokenizer, [], recipe, f"{field}.tokenizer")
    return teacher


def _load_student(
    spec: ModelSpec, task: Task, label_names: list[str] | None, tokenizer: Any, recipe: Recipe, field: str, role: str
) -> LoadedModel:
    if spec.checkpoint is not None:
        loaded = load_checkpoint(spec.checkpoint, task, label_names, recipe, f"{field}.checkpoint", role, shape_head=True)
        if loaded.tokenizer is None:
            loaded.tokenizer = tokenizer
        return loaded
    return model_from_config(spec, task, label_names, tokenizer, recipe, field, role)


def extraction_plan(recipe: Recipe) -> Any:
    """The recipe's `student.init.extract` as an ExtractPlan; its field checks need no weights, so
    `distill` calls this before training a missing teacher."""
    from brewer_cli.extract import ExtractPlan

    spec = recipe.student.init.extract
    layers = tuple(spec.layers) if isinstance(spec.layers, (list, tuple)) else spec.layers
    try:
        return ExtractPlan(
            layers=layers, selection=spec.selection, hidden=spec.hidden, heads=spec.heads, head_dim=spec.head_dim,
            intermediate=spec.intermediate, strategy=spec.strategy, seed=spec.seed,
            hidden_scoring=spec.hidden_scoring, rounds=spec.rounds,
        )
    except BrewerError as error:
        raise _extraction_error(recipe, error) from None


def _extraction_error(recipe: Recipe, error: Exception) -> Exception:
    """extract.py names the field (student.init.extract.…) but cannot know the file: add the recipe's
    path so the message says what to edit. Field problems become recipe problems, one per line."""
    from brewer_cli.extract import FIELD

    lines = str(error).splitlines()
    if type(error) is not ModelError and lines and all(line.startswith(FIELD) for line in lines):
        return RecipeError([f"{recipe.path}: {line}" for line in lines])
    return type(error)(f"{recipe.path}: {FIELD}: {error}")


def extract_from_teacher(recipe: Recipe, task: Task, teacher: LoadedModel, data: PreparedData) -> LoadedModel:
    """ETD: the student is cut out of the teacher's own parameters (width, then depth); for
    importance, the teacher is scored on the first `examples` training examples."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from brewer_cli.extract import extract_student
    from brewer_cli.families import family_for

    spec = recipe.student.init.extract
    plan = extraction_plan(recipe)
    batches = None
    if plan.strategy == "importance":
        count = min(spec.examples, len(data.train))
        loader = DataLoader(Subset(data.train, range(count)), batch_size=16, collate_fn=task.collate(teacher.tokenizer))
        batches = [{name: tensor for name, tensor in batch.items() if name != "index"} for batch in loader]
    with torch.random.fork_rng():
        try:
            result = extract_student(teacher.model, plan, batches, max_examples=spec.examples)
        except BrewerError as error:
            # Sizes are checked against the teacher's config only now, once it is loaded.
            raise _extraction_error(recipe, error) from None
    model = result.model
    model.train()
    return LoadedModel(model, teacher.tokenizer, family_for(model.config), "student",
                       f"the teacher's weights (ETD extraction, {plan.strategy})", extraction=result)


def _named_labels(model: Any) -> list[str] | None:
    """The teacher's label names, unless they are transformers' placeholders (LABEL_0, …)."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def _check_vocabularies(recipe: Recipe, teacher: LoadedModel, student: LoadedModel) -> None:
    teacher_vocab = teacher.model.config.vocab_size
    student_vocab = student.model.config.vocab_size
    if teacher_vocab != student_vocab:
        raise ModelError(
            f"{recipe.path}: student.checkpoint: the student's vocabulary has {student_vocab} tokens but the "
            f"teacher's has {teacher_vocab} — both read the same token ids in one batch, so they must share a "
            f"tokenizer; use a student with the teacher's vocabulary, or build it from a config (`student.config`), "
            f"which takes the teacher's tokenizer"
        )


def plan_lines(run: Run) -> list[str]:
    """What a run will do, for `--dry-run`."""
    from brewer_cli.distillers.base import resolve_precision

    training = run.recipe.training
    batches = -(-len(run.data.train) // training.batch_size)
    steps_per_epoch = max(1, -(-batches // training.gradient_accumulation))
    total = training.max_steps or max(1, int(-(-training.epochs * steps_per_epoch // 1)))
    lines = [f"run directory: {run.run_dir}"]
    for teacher in run.teachers:
        lines.append(f"teacher: {teacher.family.name} from {teacher.source} — {parameter_count(teacher.model):,} parameters, "
                     f"{teacher.model.config.num_hidden_layers} layers × {teacher.model.config.hidden_size}")
    role = "model" if run.recipe.distillation.kind == "trainer" else "student"
    student = run.student
    lines.append(f"{role}: {student.family.name} from {student.source} — {parameter_count(student.model):,} parameters, "
                 f"{student.model.config.num_hidden_layers} layers × {student.model.config.hidden_size}")
    if run.teachers:
        ratio = parameter_count(student.model) / parameter_count(run.teachers[0].model)
        lines.append(f"student / teacher parameters: {ratio:.3f}")
    labels = f", labels: {', '.join(run.data.label_names)}" if run.data.label_names else ""
    lines.append(f"data: {len(run.data.train):,} training examples, "
                 f"{len(run.data.eval) if run.data.eval is not None else 0:,} eval examples{labels}")
    lines.append(f"steps: {total:,} ({steps_per_epoch:,} per epoch, batch {training.batch_size} × accumulation "
                 f"{training.gradient_accumulation}), precision {resolve_precision(training.precision)}")
    if student.extraction is not None:
        from brewer_cli.extract import describe

        lines.extend(f"  {line}" for line in describe(student.extraction).splitlines())
    distiller = run.distiller_class(run)
    lines.append(f"distiller: {run.recipe.distillation.kind}")
    lines.extend(f"  loss: {line}" for line in distiller.describe_losses())
    from brewer_cli.teacher_cache import plan_cache

    # A launcher (torchrun, accelerate launch) says how many processes will each keep a cache.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if run.teachers:
        lines.append(f"teacher cache: {plan_cache(distiller, total, steps_per_epoch, processes, run.run_dir).describe()}")
    if training.compile_backend is not None:
        lines.append(f"compile: the student's forward is compiled in place (torch.compile, backend "
                     f"{training.compile_backend}) before step 1")
    return lines
