"""`brewer augment` and `data.augment`: what to augment (a data file, a recipe's training split),
the cached result keyed by a fingerprint, the augmented file, and the recipe that reads it."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from brewer_cli.augment.masked_lm import MaskedLanguageModel
from brewer_cli.augment.variants import augment_rows
from brewer_cli.augment.vectors import EMBEDDINGS_PREFIX, WordVectors
from brewer_cli.errors import BrewerError
from brewer_cli.models import PACKAGE_PREFIX, checkpoint_location, package_checkpoint
from brewer_cli.paths import cache_directory, resolve_path
from brewer_cli.recipe import AugmentSpec, DataSource, Recipe, load_recipe, on_augmented_data
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.data import column, read_source
from brewer_cli.tokenizers import load_tokenizer_dir

FINGERPRINT_VERSION = 1
OUTPUT_FORMATS = (".jsonl", ".tsv")


@dataclass
class AugmentResult:
    path: Path
    examples: int  # examples read
    rows: int  # rows written: the originals and their variants
    seconds: float  # time the augmentation took when it ran (the cached run's own, on a cache hit)
    cached: bool
    fingerprint: str


def augment_file(
    data: str | Path,
    spec: AugmentSpec,
    text: str,
    text_pair: str | None = None,
    data_format: str = "auto",
    limit: int | None = None,
    console: Any = None,
) -> AugmentResult:
    """`brewer augment DATA`: augment a data file's `text` (and `text_pair`) column."""
    source = DataSource(path=str(data), format=data_format, limit=limit)
    rows = read_source(source, _FileOrigin(Path(data)), "data")
    fields = [text] + ([text_pair] if text_pair else [])
    _check_columns(rows, fields, str(data))
    return _augment_cached(rows, fields, spec, _tokenizer_location(spec, None, None), None, console)


def augment_recipe_data(recipe: Recipe, spec: AugmentSpec | None = None, console: Any = None) -> AugmentResult:
    """`brewer augment RECIPE` and `data.augment`: augment the recipe's training split."""
    spec = spec or recipe.data.augment
    if spec is None:
        raise BrewerError(
            f"{recipe.path}: data.augment: the recipe does not say how to augment — add "
            f"`data.augment: {{model: …}}` (a masked LM) or `{{word_vectors: …}}`, or pass --model / --word-vectors"
        )
    if recipe.task is None or not (recipe.task.kind in TASKS and TASKS.get(recipe.task.kind).sequence_level):
        kind = recipe.task.kind if recipe.task is not None else "multi_task"
        raise BrewerError(
            f"{recipe.path}: data.augment: augmentation rewrites whole texts, which suits sequence "
            f"classification (single texts and pairs); task {kind} keeps its labels on tokens or spans "
            f"— remove `data.augment`"
        )
    rows = read_source(recipe.data.train, recipe, "data.train")
    fields = [recipe.data.train.text or recipe.data.text]
    pair = recipe.data.train.text_pair or recipe.data.text_pair
    if pair:
        fields.append(pair)
    _check_columns(rows, fields, f"{recipe.path}: data.train")
    return _augment_cached(rows, fields, spec, _tokenizer_location(spec, recipe, "data.augment"), recipe, console)


def with_augmented_data(recipe: Recipe, console: Any = None) -> Recipe:
    """The recipe with `data.train` replaced by its augmented file (made now, or found in the cache)."""
    result = augment_recipe_data(recipe, console=console)
    if console is not None:
        state = "found in the cache" if result.cached else f"written in {result.seconds:.0f} s"
        console.print(
            f"augmented training data: {result.examples:,} examples → {result.rows:,} rows, {state}: {result.path}", markup=False
        )
    return on_augmented_data(recipe, result.path)


def augmented_output(recipe: Recipe) -> Path:
    """Where `data.augment` writes (or finds) the augmented file, without reading any model: for
    the plan of a dry run."""
    spec = recipe.data.augment
    rows = read_source(recipe.data.train, recipe, "data.train")
    fields = [recipe.data.train.text or recipe.data.text]
    pair = recipe.data.train.text_pair or recipe.data.text_pair
    if pair:
        fields.append(pair)
    fingerprint = _fingerprint(rows, fields, spec, _tokenizer_location(spec, recipe, "data.augment"), recipe)
    return _output_path(spec, fingerprint, recipe)


# ============================================================================= caching


def _augment_cached(
    rows: list[dict[str, Any]], fields: list[str], spec: AugmentSpec, tokenizer_location: str, recipe: Recipe | None, console: Any
) -> AugmentResult:
    fingerprint = _fingerprint(rows, fields, spec, tokenizer_location, recipe)
    output = _output_path(spec, fingerprint, recipe)
    record_path = output.with_name(output.name + ".fingerprint.json")
    if output.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if record.get("fingerprint") == fingerprint:
            return AugmentResult(
                output, len(rows), int(record.get("rows", 0)), float(record.get("seconds", 0.0)), True, fingerprint
            )
    start = time.monotonic()
    field = "data.augment" if recipe is not None else None
    masked_lm = MaskedLanguageModel.load(spec.model, recipe, f"{field}.model" if field else "--model") if spec.model else None
    vectors = (
        WordVectors.load(spec.word_vectors, recipe, f"{field}.word_vectors" if field else "--word-vectors")
        if spec.word_vectors
        else None
    )
    # The masked LM's own tokenizer decides which words are one piece; without one, any BERT-style tokenizer splits words.
    tokenizer = (
        masked_lm.tokenizer
        if masked_lm is not None
        else _load_tokenizer(tokenizer_location, recipe, f"{field}.tokenizer" if field else "--tokenizer")
    )
    augmented = augment_rows(rows, fields, spec, tokenizer, masked_lm, vectors, console)
    seconds = time.monotonic() - start
    _write_rows(augmented, output)
    record_path.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "examples": len(rows),
                "rows": len(augmented),
                "seconds": round(seconds, 2),
                "settings": spec.model_dump(mode="json"),
            },
            indent=2,
        )
    )
    return AugmentResult(output, len(rows), len(augmented), seconds, False, fingerprint)


def _output_path(spec: AugmentSpec, fingerprint: str, recipe: Recipe | None) -> Path:
    if spec.output is None:
        return cache_directory() / "augment" / f"{fingerprint[:24]}.jsonl"
    path = Path(spec.output).expanduser()
    if not path.is_absolute():
        # An output is created, so it cannot be looked up like an input: relative to the current directory.
        path = Path.cwd() / path
    if path.suffix.lower() not in OUTPUT_FORMATS:
        where = f"{recipe.path}: data.augment.output" if recipe is not None else "--output"
        raise BrewerError(f"{where}: {spec.output!r}: the augmented file is written as .jsonl or .tsv — name it so")
    return path


def _fingerprint(
    rows: list[dict[str, Any]], fields: list[str], spec: AugmentSpec, tokenizer_location: str, recipe: Recipe | None
) -> str:
    digest = hashlib.sha256()
    settings = spec.model_dump(mode="json", exclude={"output", "batch_size"})
    settings["model"] = _identity(spec.model, recipe) if spec.model else None
    vectors = spec.word_vectors
    if vectors is not None and vectors.startswith(EMBEDDINGS_PREFIX):
        settings["word_vectors"] = {"embeddings": _identity(vectors[len(EMBEDDINGS_PREFIX) :], recipe)}
    else:
        settings["word_vectors"] = _identity(vectors, recipe) if vectors else None
    header = {
        "version": FINGERPRINT_VERSION,
        "fields": fields,
        "settings": settings,
        "tokenizer": _identity(tokenizer_location, recipe),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _identity(value: str, recipe: Recipe | None) -> Any:
    """What a model, tokenizer or file is, for the fingerprint: a local directory or file by its
    files' names, sizes and modification times (hashing gigabytes of weights on every run would
    cost more than it saves); a hub id by its name."""
    path = package_checkpoint(value, recipe, "data.augment") if value.startswith(PACKAGE_PREFIX) else resolve_path(value, recipe)
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "modified": stat.st_mtime_ns}
    if path.is_dir():
        files = sorted(item for item in path.rglob("*") if item.is_file())
        return {
            "directory": str(path.resolve()),
            "files": [[str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns] for item in files],
        }
    return {"hub": value}


# ============================================================================= files


class _FileOrigin:
    """Stands in for a recipe when a data file is read on its own (`brewer augment DATA`): messages
    name the file, and relative paths are read from the current directory."""

    data = None

    def __init__(self, path: Path):
        self.path = path


def _check_columns(rows: list[dict[str, Any]], fields: list[str], where: str) -> None:
    for role, field in zip(("text", "text_pair"), fields):
        column(rows, field, where, role)


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """jsonl (one JSON object per line) or tsv (a header, tabs and newlines in values turned into
    spaces); written beside the target and renamed, so a crash never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".tsv":
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([" ".join(str(row.get(column, "")).split()) for column in columns])
        else:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    temporary.replace(path)


# ============================================================================= helpers


def _tokenizer_location(spec: AugmentSpec, recipe: Recipe | None, field: str | None) -> str:
    """Whose tokenizer splits words: the masked LM's, else `tokenizer`, else (in a recipe) the teacher's."""
    if spec.model is not None:
        return spec.model
    if spec.tokenizer is not None:
        return spec.tokenizer
    if recipe is not None and recipe.teacher is not None:
        teacher = recipe.teacher
        if teacher.checkpoint is not None and (resolve_path(teacher.checkpoint, recipe).exists() or teacher.train is None):
            return teacher.checkpoint
        if teacher.train is not None and teacher.train.model.checkpoint is not None:
            # A teacher still to be trained shares the tokenizer of the checkpoint it starts from.
            return teacher.train.model.checkpoint
    where = f"{recipe.path}: {field}.tokenizer" if recipe is not None else "--tokenizer"
    raise BrewerError(
        f"{where}: with word vectors and no masked LM, name the tokenizer that splits words (a checkpoint directory or hub id)"
    )


def _load_tokenizer(location: str, recipe: Recipe | None, field: str) -> Any:
    return load_tokenizer_dir(checkpoint_location(location, recipe, field), recipe, field)


# ============================================================================= brewer augment


def augment_command(
    target: str,
    options: dict[str, Any],
    text: str | None,
    text_pair: str | None,
    limit: int | None,
    overrides: list[str],
    console: Any,
) -> AugmentResult:
    """`brewer augment RECIPE_OR_DATA`: with a recipe, its `data.augment` (the options replace its
    fields); with a data file, the options alone. Prints where the file is and what it holds."""
    path = Path(target)
    if not path.exists():
        raise BrewerError(f"{target}: no such recipe or data file")
    given = {name: value for name, value in options.items() if value is not None}
    if _is_recipe(path):
        recipe = load_recipe(path, overrides)
        if recipe.data is None:
            raise BrewerError(f"{path}: data: the recipe has no `data` section to augment")
        base = recipe.data.augment.model_dump() if recipe.data.augment is not None else {}
        if text or text_pair or limit:
            raise BrewerError(
                f"{path}: --text, --text-pair and --limit are for a data file; a recipe's columns and "
                f"limit are its `data` section's"
            )
        spec = _spec({**base, **given}, f"{path}: data.augment")
        result = augment_recipe_data(recipe, spec, console)
    else:
        if overrides:
            raise BrewerError(f"{target}: --set changes a recipe's fields; for a data file give the options themselves")
        spec = _spec(given, "brewer augment")
        result = augment_file(path, spec, text or "text", text_pair, limit=limit, console=console)
    state = "found in the cache (same data, models and settings)" if result.cached else f"written in {result.seconds:.1f} s"
    console.print(
        f"{result.examples:,} examples → {result.rows:,} rows (originals and up to {spec.variants} variants "
        f"each), {state}: {result.path}",
        markup=False,
    )
    return result


def _is_recipe(path: Path) -> bool:
    """A .yaml/.yml file, or a .json mapping with a distillation or stages section (a .json data
    file is a list of examples)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return True
    if suffix != ".json":
        return False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and ("distillation" in content or "stages" in content)


def _spec(values: dict[str, Any], where: str) -> AugmentSpec:

    try:
        return AugmentSpec.model_validate(values)
    except ValidationError as error:
        lines = []
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}{'.' + field if field else ''}: {message}")
        raise BrewerError("\n".join(lines)) from None
