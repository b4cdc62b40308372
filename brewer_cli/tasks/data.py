"""Reading raw examples: hub datasets, local csv / tsv / json / jsonl files, `save_to_disk`
directories and the project's own synthetic generators. Every reader returns a list of dicts."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from brewer_cli.errors import DataError
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import DataSource, Recipe, read_utf8
from brewer_cli.synthetic import GENERATORS
from brewer_cli.tasks.formats import TAGS, TOKENS, is_squad_document, read_conll, read_squad, select_articles, squad_rows


def read_source(source: DataSource, recipe: Recipe, field: str) -> list[dict[str, Any]]:
    """Rows of one split; `field` is its dotted path in the recipe, for messages."""
    where = f"{recipe.path}: {field}"
    if source.synthetic is not None:
        if source.synthetic not in GENERATORS:
            raise DataError(f"{where}.synthetic: {GENERATORS.unknown_message(source.synthetic)}")
        generator = GENERATORS.get(source.synthetic)
        rows = generator(source.examples or 1000, source.seed)
    elif source.hub is not None:
        rows = _read_hub(source, where)
    else:
        path = resolve_path(source.path, recipe)
        if not path.exists():
            raise DataError(
                f"{where}.path: data file {source.path!r} not found (looked at {path}) — check the path; relative paths are read from the current directory or the recipe's folder"
            )
        rows = _read_local(path, source, where, recipe)
    if source.articles is not None:
        rows = select_articles(rows, source.articles, where)
    if source.limit is not None:
        rows = rows[: source.limit]
    if not rows:
        raise DataError(f"{where}: the dataset is empty — point it at a file or split with at least one example")
    return rows


def _read_hub(source: DataSource, where: str) -> list[dict[str, Any]]:
    # Imported where used: `datasets` (pyarrow, pandas) adds about 80 MiB to every process, and only
    # hub and save_to_disk sources need it.
    import datasets

    try:
        dataset = datasets.load_dataset(source.hub, source.config, split=source.split)
    except Exception as error:  # the hub raises many kinds: connection, missing config, missing split
        raise DataError(
            f"{where}.hub: could not load {source.hub!r}"
            + (f" (config {source.config!r})" if source.config else "")
            + f", split {source.split!r}: {str(error).splitlines()[0] if str(error) else type(error).__name__} — "
            f"check the name, config and split, or use a local copy with `path:`"
        ) from None
    return [dict(row) for row in dataset]


def _read_local(path: Path, source: DataSource, where: str, recipe: Recipe | None = None) -> list[dict[str, Any]]:
    kind = source.format
    if kind == "auto":
        kind = _format_from_path(path)
        if kind is None:
            raise DataError(
                f"{where}.format: cannot tell the format of {path.name!r} from its name — "
                f"set `format:` to one of csv, tsv, json, jsonl, disk, conll, squad"
            )
    if kind == "disk":
        return _read_disk(path, source, where)
    if path.is_dir():
        raise DataError(
            f"{where}.path: {path} is a directory, but `format` is {kind} — give the file inside it, or use "
            f"format disk for a `save_to_disk` directory"
        )
    if kind in ("csv", "tsv"):
        return _read_delimited(path, kind, source.quoting, where)
    if kind == "jsonl":
        rows = []
        with io.StringIO(read_utf8(path, DataError, f"{where}: "), newline=None) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{where}: {path}:{number}: not valid JSON ({error.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(
                            f"{where}: {path}:{number}: a JSON Lines row must be an object such as "
                            f'{{"text": …, "label": …}}, found {_json_kind(row)} — one example per line, as an object'
                        )
                    rows.append(row)
        return rows
    if kind == "json":
        try:
            data = json.loads(read_utf8(path, DataError, f"{where}: "))
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: {path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if is_squad_document(data):
            # A SQuAD file (data[].paragraphs[].qas[]): one row per question, as on the hub.
            return squad_rows(data, path, where)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f'{where}: {path}: expected a JSON list of examples (or {{"data": [...]}})')
        for number, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(
                    f"{where}: {path}: example {number} (0-based) is {_json_kind(row)}, not an object — every example "
                    f'must be an object such as {{"text": …, "label": …}}'
                )
        return data
    if kind == "squad":
        return read_squad(path, where)
    # conll: rows named by the recipe's `data.tokens` / `data.tags` (default tokens / ner_tags).
    data_spec = recipe.data if recipe is not None else None
    return read_conll(path, where, (data_spec and data_spec.tokens) or TOKENS, (data_spec and data_spec.tags) or TAGS)


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def source_format(source: DataSource, path: Path) -> str | None:
    """The format a local source is read as: its `format`, else the one its name tells (None when
    the name tells none)."""
    return _format_from_path(path) if source.format == "auto" else source.format


def _format_from_path(path: Path) -> str | None:
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".conll": "conll", ".txt": None}.get(suffix)


def _read_delimited(path: Path, kind: str, quoting: bool, where: str) -> list[dict[str, Any]]:
    delimiter = "\t" if kind == "tsv" else ","
    # TSV corpora such as GLUE's SST-2 contain bare quote characters: CSV quoting would merge lines.
    use_quoting = quoting or kind == "csv"
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = read_utf8(path, DataError, f"{where}: ")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if use_quoting else csv.QUOTE_NONE
    )
    try:
        header = next(reader, None)
        if header is None:
            return []
        rows = []
        start = reader.line_num + 1  # the line the next record starts on (a quoted value may span lines)
        for fields in reader:
            if fields and len(fields) != len(header):
                if reader.line_num > start:
                    hint = (
                        f"this record runs from line {start} to line {reader.line_num}: a quote opened on line {start} is "
                        f'probably not closed — close it, and write a quote inside a quoted value as ""'
                    )
                else:
                    hint = _field_count_hint(kind, quoting, len(fields) > len(header))
                raise DataError(
                    f"{where}: {path}:{start}: has {len(fields)} fields, expected {len(header)} ({', '.join(header)}) — {hint}"
                )
            if fields:  # a blank line is skipped, as csv.DictReader does
                rows.append(dict(zip(header, fields)))
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{where}: {path}:{reader.line_num}: not valid {kind.upper()} ({error})") from None
    return rows


def _field_count_hint(kind: str, quoting: bool, too_many: bool) -> str:
    if kind == "csv":
        return 'put a value in every column, and quote a value that contains a comma ("a, b")'
    if too_many and not quoting:
        return "a value contains a tab: remove it, or quote the value and set `quoting: true`"
    return "put a value in every column, separated by single tabs"


def _read_disk(path: Path, source: DataSource, where: str) -> list[dict[str, Any]]:
    import datasets  # where used, as in _read_hub

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{where}.path: {path} is not a `save_to_disk` directory: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.split is None or source.split not in loaded:
            raise DataError(f"{where}.split: {path} holds splits {', '.join(loaded)} — name one with `split:`")
        loaded = loaded[source.split]
    return [dict(row) for row in loaded]


def column(rows: list[dict[str, Any]], name: str, where: str, role: str) -> list[Any]:
    """One column of every row, or a clear error listing the columns that exist."""
    if name not in rows[0]:
        found = ", ".join(str(key) for key in rows[0])
        raise DataError(
            f"{where}: {role} column {name!r} not found — columns found: {found}. "
            f"Set the column name in the recipe (e.g. `data.{role}: <column>`)."
        )
    for number, row in enumerate(rows):
        if name not in row:
            # A JSON example without the key would otherwise read as None (`label None`).
            raise DataError(
                f"{where}: example {number} (0-based) has no {role} column {name!r}, which example 0 has — give every "
                f"example the same keys"
            )
    return [row[name] for row in rows]
