"""What a recipe reads from disk, checked before torch is imported or any model is loaded: each
local data file exists and has the columns its task reads — from the header or the first record,
never the whole dataset — and each model config built from a file or a mapping names a registered
family. Hub datasets cannot be checked offline; their columns are checked when they are read.

The checks read the recipe as written (the mapping), not the validated `Recipe`, so that they run
in the same pass as the schema: a recipe with an unknown key and a misspelled column reports both.
Whatever cannot be read here (a file that is not valid UTF-8, a malformed record) is left to the
reader, which reports it with the line it is on.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from pydantic import ValidationError

from brewer_cli.errors import DataError
from brewer_cli.paths import resolve_path
from brewer_cli.recipe.names import TASK_NAMES, Column, Named, model_types, unknown_model_type_message
from brewer_cli.recipe.sections import DataSource, ModelSpec

# The columns of a row read from a SQuAD file (brewer_cli.tasks.formats.squad_rows), as on the hub.
SQUAD_COLUMNS = ("id", "title", "context", "question", "answers", "article")
FORMATS_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".conll": "conll"}
# Plain-text corpora, one text per line, for the tasks that read them (`Named.plain_text_files`).
TEXT_SUFFIXES = (".txt", ".text")
SPLITS = ("train", "eval")


def input_problems(raw: dict[str, Any], path: Path) -> list[str]:
    """Every problem with the files the recipe `raw` (as read from `path`) names: data files and
    their columns, model configs and their `model_type`. One line each, `file: dotted.path: …`."""
    problems: list[str] = []
    for prefix, task, data in _data_sections(raw):
        problems.extend(line for line in _data_problems(prefix, task, data, path) if line not in problems)
    problems.extend(_config_problems(raw, path))
    return problems


# ============================================================================= data


def _data_sections(raw: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted path of a `data` section, the task section that reads it, the section) for the
    recipe's data, each task's (`tasks.<name>`) and each stage's (a stage's own task may read the
    recipe's data)."""
    sections: list[tuple[str, Any, dict[str, Any]]] = []
    if isinstance(raw.get("data"), dict):
        sections.append(("data", raw.get("task"), raw["data"]))
    if isinstance(raw.get("tasks"), dict):
        for name, entry in raw["tasks"].items():
            if isinstance(entry, dict) and isinstance(entry.get("data"), dict):
                sections.append((f"tasks.{name}.data", entry.get("task"), entry["data"]))
    if isinstance(raw.get("stages"), list):
        for index, stage in enumerate(raw["stages"]):
            if not isinstance(stage, dict):
                continue
            task = stage.get("task") or raw.get("task")
            if isinstance(stage.get("data"), dict):
                sections.append((f"stages.{index}.data", task, stage["data"]))
            elif stage.get("task") is not None and isinstance(raw.get("data"), dict):
                sections.append(("data", task, raw["data"]))
    return sections


def task_named(task: Any) -> Named | None:
    """What the manifest knows of a task section's `kind` (None for a kind it does not hold: the
    schema reports that)."""
    kind = task.get("kind") if isinstance(task, dict) else getattr(task, "kind", None)
    if not isinstance(kind, str) or kind not in TASK_NAMES:
        return None
    return TASK_NAMES.get(kind)


def _data_problems(prefix: str, task: Any, data: dict[str, Any], path: Path) -> list[str]:
    named = task_named(task)
    problems: list[str] = []
    for split in SPLITS:
        try:
            source = DataSource.model_validate(data.get(split))
        except ValidationError:
            continue  # the schema reports it
        problems.extend(source_problems(source, data, named, SplitPlace(path, f"{prefix}.{split}", prefix)))
    return problems


@dataclass(frozen=True)
class SplitPlace:
    """Where one split's source was given, for messages: in the recipe `file` at `split`
    (`data.train`), or on the command line by `option` (`--data`, its fields as `--format`, …).
    `data` is the dotted path of the `data` section whose fields name the columns of every split."""

    file: Path | None
    split: str | None = None
    data: str = "data"
    option: str | None = None

    def field(self, name: str) -> tuple[str, str]:
        """(the start of a message about the source's field `name`, the field as the user writes it)."""
        if self.option is not None:
            written = self.option if name == "path" else f"--{name.replace('_', '-')}"
            return written, written
        return f"{self.file}: {self.split}.{name}", f"{self.split}.{name}"

    def shared(self, name: str) -> tuple[str, str]:
        """The same for the `data` section's field `name`."""
        return f"{self.file}: {self.data}.{name}", f"{self.data}.{name}"

    @property
    def described(self) -> str:
        return self.option or self.split or "the data"

    @property
    def start(self) -> str:
        """The start of a message about the split as a whole."""
        return self.option or f"{self.file}: {self.split}"


def source_problems(source: DataSource, data: Any, task: Named | None, place: SplitPlace) -> list[str]:
    """The problems of one split's source: its file, its format, its columns (the first record's).
    `data`: the `data` section (a `DataSpec` or its mapping), whose fields name the columns every
    split reads; `task`: what the manifest knows of the task reading it (None: columns unknown)."""
    if source.path is None:
        return []  # a hub dataset cannot be checked offline; a generator's columns are its own
    path = resolve_path(source.path, SimpleNamespace(path=place.file))
    if not path.exists():
        return [
            f"{place.field('path')[0]}: data file {source.path!r} not found (looked at {path}) — check the path; "
            f"relative paths are read from the current directory or the recipe's folder"
        ]
    kind = source.format
    if kind == "auto":
        if task is not None and task.plain_text_files and path.suffix.lower() in TEXT_SUFFIXES:
            return []  # one text per line: no columns
        kind = "disk" if path.is_dir() else FORMATS_BY_SUFFIX.get(path.suffix.lower())
        if kind is None:
            return [
                f"{place.field('format')[0]}: cannot tell the format of {path.name!r} from its name — set the format "
                f"to one of csv, tsv, json, jsonl, disk, conll, squad"
            ]
    if path.is_dir() != (kind == "disk"):
        fix = (
            "give the file inside it, or use format disk for a `save_to_disk` directory"
            if path.is_dir()
            else "format disk reads a `save_to_disk` directory"
        )
        return [
            f"{place.field('path')[0]}: {path} is {'a directory' if path.is_dir() else 'a file'}, but `format` is {kind} — {fix}"
        ]
    found = first_record(path, kind, source)
    if found is None:
        return []
    columns, has_record = found
    if not has_record:
        return [f"{place.start}: the dataset is empty — point it at a file or split with at least one example"]
    if task is None:
        return []
    problems = []
    for column in task.columns:
        name, (start, written) = column_name(column, source, data, place)
        if name is not None and name not in columns:
            problems.append(
                f"{start}: {column.role} column {name!r} is not in {place.described} ({source.path}) — columns found: "
                f"{', '.join(columns) or 'none'}; set {written} to one of them"
            )
    return problems


def column_name(column: Column, source: Any, data: Any, place: SplitPlace) -> tuple[str | None, tuple[str, str]]:
    """(the column a split reads for `column`, where it is named): the split's own field, else the
    `data` section's, else the task's default (named by the `data` section's field)."""
    own = getattr(source, column.role, None) if column.per_split else None
    if isinstance(own, str):
        return own, place.field(column.role)
    if isinstance(data, dict) and column.role in data and data[column.role] is None:
        return None, place.shared(column.role)  # written empty: reported as such (recipe.hints)
    shared = data.get(column.role) if isinstance(data, dict) else getattr(data, column.role, None)
    return (shared if isinstance(shared, str) else column.default), place.shared(column.role)


def first_record(path: Path, kind: str, source: DataSource) -> tuple[list[str], bool] | None:
    """(the columns of a local dataset, whether it holds a record), read from its header, first
    record or metadata; None when they cannot be told without reading it all (CoNLL names its
    columns after the recipe) or the file does not read (the reader reports why, with the line)."""
    try:
        if kind in ("csv", "tsv"):
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
            # As the reader splits them: TSV without quoting unless `quoting` (brewer_cli.tasks.data).
            quoting = csv.QUOTE_MINIMAL if source.quoting or kind == "csv" else csv.QUOTE_NONE
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle, delimiter="\t" if kind == "tsv" else ",", quoting=quoting)
                header = next(reader, None)
                # A blank line is no record (the reader skips it, as csv.DictReader does).
                record = next((fields for fields in reader if fields), None)
            return (header or []), record is not None
        if kind == "jsonl":
            with path.open(encoding="utf-8-sig") as handle:
                line = next((line for line in handle if line.strip()), None)
            if line is None:
                return [], False
            row = json.loads(line)
            return ([str(key) for key in row], True) if isinstance(row, dict) else None
        if kind == "json":
            document = json.loads(path.read_text(encoding="utf-8-sig"))
            rows = document.get("data") if isinstance(document, dict) else document
            if not isinstance(rows, list):
                return None
            if rows and isinstance(rows[0], dict) and "paragraphs" in rows[0]:
                return list(SQUAD_COLUMNS), True
            return ([str(key) for key in rows[0]], True) if rows and isinstance(rows[0], dict) else ([], bool(rows))
        if kind == "squad":
            return list(SQUAD_COLUMNS), True
        if kind == "disk":
            columns = _disk_columns(path, source.split)
            return (columns, True) if columns is not None else None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return None
    return None


def _disk_columns(path: Path, split: str | None) -> list[str] | None:
    """A `save_to_disk` directory's columns from its metadata (dataset_info.json)."""
    if (path / "dataset_dict.json").is_file():
        if split is None:
            return None  # the reader asks for `split`, naming the splits there are
        path = path / split
    info = path / "dataset_info.json"
    if not info.is_file():
        return None
    content = json.loads(info.read_text(encoding="utf-8"))
    features = content.get("features") if isinstance(content, dict) else None
    return [str(name) for name in features] if isinstance(features, dict) else None


def data_columns(data: Any, task: Any, prefix: str = "data") -> list[str]:
    """One line per split naming the columns it reads (`data.train (train.tsv): text 'sentence',
    label 'label'`), for the plan. `data`: a `DataSpec`; `task`: its `TaskSpec`."""
    named = task_named(task)
    if named is None or data is None:
        return []
    lines = []
    for split in SPLITS:
        source = getattr(data, split)
        if source is None or source.synthetic is not None:
            continue  # a generator's columns are its own
        origin = source.path or f"{source.hub} {source.split}"
        if named.plain_text_files and source.path is not None and source.format == "auto":
            if Path(source.path).suffix.lower() in TEXT_SUFFIXES:
                lines.append(f"{prefix}.{split} ({origin}): one text per line")
                continue
        place = SplitPlace(None, f"{prefix}.{split}", prefix)
        read = [
            f"{column.role} {name!r}"
            for column in named.columns
            for name in [column_name(column, source, data, place)[0]]
            if name
        ]
        lines.append(f"{prefix}.{split} ({origin}): {', '.join(read)}")
    return lines


# ============================================================================= model configs


def _config_problems(raw: dict[str, Any], path: Path) -> list[str]:
    """The model_type of each config the run builds a model from: `student.config`, `model.config`,
    and a missing teacher's `train.model.config` (a teacher that exists is loaded as it is)."""
    specs: list[tuple[str, Any]] = [(field, raw.get(field)) for field in ("student", "model")]
    teachers = [("teacher", raw.get("teacher"))]
    if isinstance(raw.get("teachers"), list):
        teachers += [(f"teachers.{index}", spec) for index, spec in enumerate(raw["teachers"])]
    if isinstance(raw.get("tasks"), dict):
        teachers += [
            (f"tasks.{name}.teacher", entry.get("teacher")) for name, entry in raw["tasks"].items() if isinstance(entry, dict)
        ]
    for field, teacher in teachers:
        train = teacher.get("train") if isinstance(teacher, dict) else None
        checkpoint = teacher.get("checkpoint") if isinstance(teacher, dict) else None
        if isinstance(train, dict) and isinstance(checkpoint, str):
            if not resolve_path(checkpoint, SimpleNamespace(path=path)).exists():
                specs.append((f"{field}.train.model", train.get("model")))
    problems = []
    for field, spec in specs:
        try:
            config = ModelSpec.model_validate(spec).config
        except ValidationError:
            continue  # absent, or the schema reports it
        if config is not None:
            problem = _config_problem(config, f"{field}.config", path)
            if problem is not None:
                problems.append(f"{path}: {problem}")
    return problems


def _config_problem(config: str | dict[str, Any], field: str, recipe_path: Path) -> str | None:
    if isinstance(config, str):
        file = resolve_path(config, SimpleNamespace(path=recipe_path))
        if not file.is_file():
            return f"{field}: config file {config!r} not found (looked at {file}); shipped architectures are in configs/students/"
        try:
            text = file.read_text(encoding="utf-8")
            config = yaml.safe_load(text) if file.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
            return f"{field}: could not read {file}: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        if not isinstance(config, dict):
            return f"{field}: {file} holds {type(config).__name__}, not a mapping of config fields — give a transformers config"
    model_type = config.get("model_type")
    if model_type is None:
        return f"{field}: the config has no `model_type` (e.g. bert, roberta, distilbert)"
    if model_type not in model_types():
        return f"{field}.model_type: {unknown_model_type_message(model_type)}"
    return None


# ============================================================================= sources given on the command line


def source_from_options(fields: dict[str, Any], option: str = "--data") -> DataSource:
    """A data source given on the command line (`brewer eval --data FILE --format tsv`): `fields`
    are DataSource fields by name (None: not given). A bad value raises `DataError` naming the
    option it came from (`--format`), not a recipe field."""
    given = {name: value for name, value in fields.items() if value is not None}
    try:
        return DataSource.model_validate(given)
    except ValidationError as error:
        lines = []
        for item in error.errors(include_url=False):
            location = [part for part in item["loc"] if isinstance(part, str)]
            start = option if not location or location[0] == "path" else f"--{location[0].replace('_', '-')}"
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "literal_error":
                message = f"{item.get('input')!r} is not allowed — valid: {item.get('ctx', {}).get('expected', '')}"
            lines.append(f"{start}: {message}")
        raise DataError("\n".join(dict.fromkeys(lines))) from None


def check_data_source(source: DataSource, recipe: Any, option: str = "--data") -> None:
    """Check a source given by `option` as `input_problems` checks a recipe's (file, format, the
    columns the recipe's task reads); raise `DataError` naming the option."""
    problems = source_problems(source, recipe.data, task_named(recipe.task), SplitPlace(recipe.path, option=option))
    if problems:
        raise DataError("\n".join(problems))
