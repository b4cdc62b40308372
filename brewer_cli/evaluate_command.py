"""`brewer eval`: a model's metrics on its recipe's eval split or on `--data FILE`, beside a
teacher's (`--against`); prints a table and writes one eval file per model and data set.

Models are named as a recipe names its checkpoints — a run directory (its final/, else best/), a
model directory, `python-package:NAME` or a hub id — and loaded by the loader recipes use
(`families.loading.load_checkpoint`). Only the eval split is read and tokenized
(`Task.prepare_eval`), so a warning about the data (e.g. truncation) names that split, once.

Where the result goes: beside the run (the directory holding the run's recipe.yaml, never inside
final/), in a bare model directory, or — for a package or hub model — in the current directory.
`eval.json` is the run's final model on its recipe's eval split; another data set, another
checkpoint of the run or another model add to the name (`eval-<data file stem>.json`,
`eval-best.json`, `eval-step-500-dev.json`), and a file that records a different model or data set
is never overwritten: the name takes a number (`eval-dev-2.json`) instead."""

from __future__ import annotations

import itertools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from rich.console import Console

from brewer_cli.checkpoints import write_json
from brewer_cli.errors import BrewerError, DataError
from brewer_cli.evaluation import EvalSetup, eval_batch_size, evaluate_model
from brewer_cli.families import parameter_count
from brewer_cli.families.loading import LoadedModel, load_checkpoint
from brewer_cli.models import PACKAGE_PREFIX
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import DataSource, Recipe, load_recipe, section_mapping, task_recipe, with_eval_source
from brewer_cli.summary import print_eval
from brewer_cli.tasks import TASKS, PreparedData, Task
from brewer_cli.tasks.data import source_format
from brewer_cli.tasks.views import same_tokenizer

Report = dict[str, Any]

# `--data`'s source options: the DataSource field → the command-line option that sets it.
SOURCE_OPTIONS = {
    "format": "--format",
    "quoting": "--quoting",
    "text": "--text",
    "text_pair": "--text-pair",
    "label": "--label",
    "limit": "--limit",
    "articles": "--articles",
}
FORMATS = [name for name in typing.get_args(DataSource.model_fields["format"].annotation) if name != "auto"]
# Parts of a checkpoint's path inside its run that do not tell checkpoints apart in a file name.
_UNNAMED_PARTS = {"final", "checkpoints", "student"}


@dataclass(frozen=True)
class ModelReference:
    """A model as the user named it: `location` is what the loader reads (a model directory, or
    `python-package:NAME` / a hub id as given); `run_dir` the run it belongs to, when local."""

    given: str
    location: str
    local: bool
    run_dir: Path | None

    @property
    def recipe_file(self) -> Path | None:
        return self.run_dir / "recipe.yaml" if self.run_dir is not None else None

    @property
    def identity(self) -> str:
        """The same model however it was named (runs/x, runs/x/final, an absolute path)."""
        return str(Path(self.location).resolve()) if self.local else self.location

    def name_part(self) -> str:
        """What tells this model apart in the eval file's name: "" for a run's final model and for
        a bare model directory (the file is written inside it), `best` / `step-500` / a task for
        the run's other checkpoints, the name of a package or hub model."""
        if not self.local:
            return _file_name_part(self.given.removeprefix(PACKAGE_PREFIX))
        if self.run_dir is None:
            return ""
        parts = Path(self.location).relative_to(self.run_dir).parts
        return _file_name_part("-".join(part for part in parts if part not in _UNNAMED_PARTS))


def evaluate(
    target: str,
    recipe_path: str | None = None,
    data_path: str | None = None,
    source_options: dict[str, Any] | None = None,
    against: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    console: Any = None,
    output: str | None = None,
) -> Report:
    """`brewer eval`: the model's (and `against`'s) metrics; prints a table, writes the eval file."""
    console = console or Console()
    options = {field: value for field, value in (source_options or {}).items() if value is not None}
    if options and data_path is None:
        given = ", ".join(SOURCE_OPTIONS[field] for field in options)
        raise BrewerError(
            f"{given}: describe the file given with --data — add --data FILE, or change the recipe's eval split with "
            f"--set data.eval.<field>=…"
        )
    model = model_reference(target, "TARGET")
    teacher = model_reference(against, "--against") if against is not None else None
    recipe_file = Path(recipe_path) if recipe_path else model.recipe_file
    if recipe_file is None:
        raise BrewerError(
            f"{target}: no recipe.yaml found beside this model — pass --recipe RECIPE so brewer knows the task and data"
        )
    recipe = load_recipe(recipe_file, list(overrides), check_inputs=False)
    if recipe.tasks is not None:
        recipe = _one_task(recipe, Path(model.location))
    data_name = "data.eval"
    if data_path is not None:
        recipe = with_eval_source(recipe, data_source(data_path, options), given_by="--data")
        data_name = f"--data {data_path}"
    if recipe.data.eval is None:
        raise BrewerError(f"{recipe_file}: data.eval: the recipe has no eval split — give --data FILE")
    task = TASKS.get(recipe.task.kind)(recipe.task)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    data_record = _data_record(recipe, data_name, recipe_file)
    output_file = Path(output) if output is not None else eval_file(model, teacher, recipe_file, data_path, data_record)
    predictions = output_file.with_name(output_file.stem + "-predictions") if task.writes_predictions else None
    results: dict[str, Any] = {}
    prepared: list[tuple[LoadedModel, PreparedData]] = []
    for role, reference in (("model", model), ("teacher", teacher)):
        if reference is None:
            continue
        field = "TARGET" if role == "model" else "--against"
        loaded = load_checkpoint(reference.location, task, None, None, field, role, shape_head=False)
        if loaded.tokenizer is None:
            raise BrewerError(f"{reference.given}: no tokenizer files in this checkpoint — save the tokenizer with the model")
        data = _reused(prepared, loaded) or _prepared_eval(task, recipe, loaded, data_path)
        prepared.append((loaded, data))
        setup = EvalSetup(task, data, task.collate(loaded.tokenizer), eval_batch_size(recipe.training))
        loaded.model.to(device)
        role_predictions = predictions / role if predictions is not None else None
        if role_predictions is not None:
            role_predictions.mkdir(parents=True, exist_ok=True)
        metrics = evaluate_model(setup, loaded.model, loaded.family, output_dir=role_predictions)
        results[role] = {
            "checkpoint": reference.identity,
            "given": reference.given,
            "parameters": parameter_count(loaded.model),
            "metrics": metrics,
        }
        if role_predictions is not None:
            results[role]["predictions"] = str(role_predictions)
    primary = task.primary_metric
    # Examples as the user counts them: questions for QA, not the windows they were split into.
    first = prepared[0][1]
    examples = len(first.eval_examples) if first.eval_examples is not None else len(first.eval)
    report: Report = {"metric": primary, "data": data_record, **results, "examples": examples}
    if teacher is not None:
        teacher_value = results["teacher"]["metrics"][primary]
        report["model_to_teacher"] = results["model"]["metrics"][primary] / teacher_value if teacher_value else None
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(output_file, report)
    print_eval(report, console, output_file)
    return report


# ============================================================================= models


def model_reference(value: str, option: str) -> ModelReference:
    """A local run or model directory, or a reference the loader resolves (package, hub id)."""
    path = Path(value).expanduser()
    if path.exists():
        checkpoint = checkpoint_of(path)
        recipe = find_run_recipe(checkpoint)
        return ModelReference(value, str(checkpoint), True, recipe.parent if recipe is not None else None)
    if value.startswith(PACKAGE_PREFIX) or looks_like_hub_id(value):
        return ModelReference(value, value, False, None)
    where = f"{option} {value}" if option.startswith("--") else value
    raise BrewerError(
        f"{where}: no such run directory or checkpoint — give a run directory (runs/<name>), a model directory, "
        f"python-package:NAME or a hub id"
    )


def find_run_recipe(target: Path) -> Path | None:
    """The resolved recipe of the run a checkpoint belongs to (final/, best/, checkpoints/step-N/student)."""
    for directory in [target, *target.parents][:4]:
        candidate = directory / "recipe.yaml"
        if candidate.is_file():
            return candidate
    return None


def checkpoint_of(target: Path) -> Path:
    """The model directory of a run (final/, else best/) or the directory itself."""
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


# ============================================================================= data


def data_source(data_path: str, options: dict[str, Any]) -> DataSource:
    """`--data FILE` and its options as the eval split's source. The file is read from the current
    directory (not the recipe's folder, where a recipe's relative paths may also point)."""
    path = Path(data_path).expanduser()
    if not path.exists():
        raise DataError(
            f"--data {data_path}: no such file (looked at {path.resolve()}) — give the path of the data to evaluate on "
            f"({', '.join(FORMATS)})"
        )
    try:
        source = DataSource(path=str(path.resolve()), **options)
    except ValidationError as error:
        problems = "; ".join(
            f"{SOURCE_OPTIONS.get(str(item['loc'][0]), '--data') if item['loc'] else '--data'} "
            f"{item.get('input')!r}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        raise DataError(f"{problems} — fix the option (brewer eval --help lists them)") from None
    if source_format(source, path) is None:
        raise DataError(
            f"--data {data_path}: cannot tell the format from the file name — give --format, one of {', '.join(FORMATS)}"
        )
    return source


def _data_record(recipe: Recipe, name: str, recipe_file: Path) -> dict[str, Any]:
    """What was evaluated on: the split's name, its source (a file by its absolute path) and format."""
    source = recipe.data.eval
    record: dict[str, Any] = {"name": name, "recipe": str(recipe_file), "source": section_mapping(source)}
    if source.path is not None:
        path = resolve_path(source.path, recipe).resolve()
        record["source"]["path"] = str(path)
        record["format"] = source_format(source, path)
    return record


def _prepared_eval(task: Task, recipe: Recipe, loaded: LoadedModel, data_path: str | None) -> PreparedData:
    try:
        return task.prepare_eval(recipe, loaded.tokenizer, _label_names(loaded.model))
    except BrewerError as error:
        if data_path is not None:
            error.message = named_by_options(error.message, str(recipe.path), data_path)
            error.args = (error.message,)
        raise


def named_by_options(message: str, recipe_path: str, data_path: str) -> str:
    """A message about the eval split, which `--data` replaced, naming the options instead of the
    recipe's fields: `recipe.yaml: data.eval.path: …` → `--data FILE: …`."""
    prefix = f"{recipe_path}: data.eval"
    for field, option in (("path", f"--data {data_path}"), ("format", f"--data {data_path}: --format")):
        message = message.replace(f"{prefix}.{field}:", f"{option}:")
    message = message.replace(f"{prefix}.articles:", "--articles:").replace(f"{prefix}:", f"--data {data_path}:")

    def option_of(match: re.Match[str]) -> str:
        option = SOURCE_OPTIONS.get(match.group(1))
        return f"Name the column with {option} COLUMN" if option else match.group(0)

    return re.sub(r"Set the column name in the recipe \(e\.g\. `data\.(\w+): <column>`\)", option_of, message)


def _reused(prepared: list[tuple[LoadedModel, PreparedData]], loaded: LoadedModel) -> PreparedData | None:
    """The data already tokenized for another model, when this one reads text the same way (the
    same tokenizer, tasks.views.same_tokenizer) and names the same labels. A teacher distilled into
    its student usually does; then the eval split is read once, and what reading it reports is
    reported once."""
    for other, data in prepared:
        if same_tokenizer(other.tokenizer, loaded.tokenizer) and _label_names(other.model) == _label_names(loaded.model):
            return data
    return None


# ============================================================================= the eval file


def eval_file(
    model: ModelReference, teacher: ModelReference | None, recipe_file: Path, data_path: str | None, data: dict[str, Any]
) -> Path:
    """Where this evaluation is written (see the module docstring)."""
    if model.run_dir is not None:
        directory = model.run_dir
    elif model.local:
        directory = Path(model.location)
    else:
        directory = Path.cwd()
    if data_path is not None:
        data_part = _file_name_part(Path(data_path).stem)
    elif model.recipe_file is not None and Path(recipe_file).resolve() != model.recipe_file.resolve():
        data_part = _file_name_part(Path(recipe_file).stem)
    else:
        data_part = ""
    stem = "-".join(["eval", *(part for part in (model.name_part(), data_part) if part)])
    identity = _identity(model.identity, teacher.identity if teacher else None, data["source"])
    for number in itertools.count(1):
        candidate = directory / f"{stem}{'' if number == 1 else f'-{number}'}.json"
        if not candidate.exists() or _recorded_identity(candidate) == identity:
            return candidate


def _identity(model: str, teacher: str | None, source: dict[str, Any]) -> tuple[Any, ...]:
    # The teacher is part of it: `--against` another teacher is another comparison.
    return model, teacher, json.dumps(source, sort_keys=True)


def _recorded_identity(path: Path) -> tuple[Any, ...] | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        teacher = report.get("teacher")
        return _identity(report["model"]["checkpoint"], teacher["checkpoint"] if teacher else None, report["data"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable, or written by an older brewer without the data it was evaluated on: kept.
        return None


def _file_name_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")
