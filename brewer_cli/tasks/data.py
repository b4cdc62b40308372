"""Reading raw examples into Arrow: hub datasets, local csv / tsv / json / jsonl / text files,
CoNLL and SQuAD files, `save_to_disk` directories and the project's own synthetic generators.
Every reader returns a `datasets.Dataset`.

`datasets` has readers for csv and json, but not with the semantics brewer's users rely on: GLUE
TSV files are read without quoting (SST-2 holds bare quote characters), a byte-order mark is
dropped from the header (MRPC-style files start with one), every bad line is reported with its
file and line number, and CoNLL and SQuAD JSON have no reader there at all. So the rows are read
here and written to Arrow: line-oriented formats (csv, tsv, CoNLL, text) row by row into a file
under the brewer cache — keyed by the file's content hash, so a large corpus is never held in
memory and a changed file is never mistaken for the old one — and small files straight into memory.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from brewer_cli.errors import BrewerError, DataError
from brewer_cli.paths import cache_directory, resolve_path
from brewer_cli.recipe import DataSource, Recipe, origins_of, read_utf8, utf8_lines, written_at
from brewer_cli.synthetic import GENERATORS
from brewer_cli.tasks.formats import (
    TAGS,
    TOKENS,
    conll_sentences,
    is_squad_document,
    read_squad,
    select_articles,
    squad_rows,
)

# Local files at least this large are written to an Arrow file in the cache, row by row; smaller
# ones are read into memory (writing and memory-mapping a file costs more than it saves there).
ON_DISK_BYTES = 64 * 2**20
# Rows per record batch of the Arrow files brewer writes. `datasets` opens a file by reading every
# batch's header through a memory map, and the kernel's read-ahead around each header pulls its
# neighbourhood into the process's memory: at 1,000 rows a batch (the default) that was most of a
# 10-million-line corpus; at 20,000, a twentieth of it.
RECORD_BATCH_ROWS = 20_000
# Plain-text corpora: one document or sentence per line (format `text`, or these suffixes).
TEXT_SUFFIXES = (".txt", ".text")


def read_source(source: DataSource, recipe: Recipe, field: str) -> Any:
    """The rows of one split as a `datasets.Dataset`; `field` is its dotted path in the recipe,
    for messages."""
    where = f"{recipe.path}: {field}"
    if source.synthetic is not None:
        rows = _from_list(_synthetic_rows(source, where))
    elif source.hub is not None:
        rows = _read_hub(source, where)
    else:
        path = local_path(source, recipe, where)
        rows = _read_local(path, source, where, recipe)
    if source.articles is not None:
        rows = rows.select(select_articles(rows, source.articles, where))
    if source.limit is not None and source.limit < len(rows):
        rows = rows.select(range(source.limit))
    if not len(rows):
        raise DataError(f"{where}: the dataset is empty — point it at a file or split with at least one example")
    return rows


def local_path(source: DataSource, recipe: Recipe, where: str) -> Path:
    path = resolve_path(source.path, recipe)
    if not path.exists():
        raise DataError(
            f"{where}.path: data file {source.path!r} not found (looked at {path}) — check the path; relative paths are read from the current directory or the recipe's folder"
        )
    return path


def _synthetic_rows(source: DataSource, where: str) -> list[dict[str, Any]]:
    if source.synthetic not in GENERATORS:
        raise DataError(f"{where}.synthetic: {GENERATORS.unknown_message(source.synthetic)}")
    return GENERATORS.get(source.synthetic)(source.examples or 1000, source.seed)


def source_fingerprint(source: DataSource, recipe: Recipe, field: str) -> str:
    """What identifies a split's rows before reading them: a local file's (or directory's) content
    hash, a hub dataset's fingerprint (which `datasets` derives from its files and revision), a
    generator's name and settings; with the source's own settings (format, columns, limit …)."""
    where = f"{recipe.path}: {field}"
    settings = source.model_dump(mode="json")
    if source.synthetic is not None:
        origin = f"synthetic:{source.synthetic}"
    elif source.hub is not None:
        origin = f"hub:{_read_hub(source, where)._fingerprint}"
    else:
        origin = f"file:{content_hash(local_path(source, recipe, where))}"
    settings.pop("path", None)  # the content identifies a file, wherever it lies
    return hashlib.sha256(json.dumps([origin, settings], sort_keys=True).encode()).hexdigest()


def content_hash(path: Path) -> str:
    """BLAKE2b of a file's bytes, or of a directory's files (names and bytes, in name order) —
    once per process while the file keeps its size and modification time (a run asks for a
    corpus's hash twice: for the tokenization cache's key and for its Arrow copy's)."""
    stat = path.stat()
    return _content_hash(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_hash(path: Path, size: int, modified: int) -> str:
    digest = hashlib.blake2b(digest_size=20)
    files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode() + b"\0")
        with open(item, "rb") as handle:
            while chunk := handle.read(2**22):
                digest.update(chunk)
    return digest.hexdigest()


def _read_hub(source: DataSource, where: str) -> Any:
    # Imported where used: `datasets` (pyarrow, pandas) adds about 80 MiB to a process, and
    # commands that read no data (size-report, extract, catalog) need not carry it.
    import datasets

    try:
        return datasets.load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
    except Exception as error:  # the hub raises many kinds: connection, missing config, missing split
        raise DataError(
            f"{where}.hub: could not load {source.hub!r}"
            + (f" (config {source.config!r})" if source.config else "")
            + f", split {source.split!r}: {str(error).splitlines()[0] if str(error) else type(error).__name__} — "
            f"check the name, config and split, or use a local copy with `path:`"
        ) from None


def _read_local(path: Path, source: DataSource, where: str, recipe: Recipe | None = None) -> Any:
    kind = source_format(source, path)
    if kind is None:
        raise DataError(
            f"{where}.format: cannot tell the format of {path.name!r} from its name — "
            f"set `format:` to one of csv, tsv, json, jsonl, text, disk, conll, squad"
        )
    if kind == "disk":
        return _read_disk(path, source, where)
    if path.is_dir():
        raise DataError(
            f"{where}.path: {path} is a directory, but `format` is {kind} — give the file inside it, or use "
            f"format disk for a `save_to_disk` directory"
        )
    if kind in ("csv", "tsv"):
        header = _delimited_header(path, kind, source.quoting, where)
        if header is None:
            return _from_list([])
        return _rows_to_arrow(
            path, lambda: _delimited_rows(path, kind, source.quoting, where), {name: "string" for name in header}, where
        )
    if kind == "text":
        return _rows_to_arrow(path, lambda: ({"text": line} for line in _text_lines(path, where)), {"text": "string"}, where)
    if kind == "conll":
        # Rows named by the recipe's `data.tokens` / `data.tags` (default tokens / ner_tags).
        data_spec = recipe.data if recipe is not None else None
        tokens, tags = (data_spec and data_spec.tokens) or TOKENS, (data_spec and data_spec.tags) or TAGS
        features = {tokens: ["string"], tags: ["string"], "line": "int64"}
        return _rows_to_arrow(path, lambda: conll_sentences(path, where, tokens, tags), features, where)
    if kind == "jsonl":
        return _from_list(_same_keys(_jsonl_rows(path, where), path, where))
    if kind == "json":
        try:
            data = json.loads(read_utf8(path, DataError, f"{where}: "))
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: {path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if is_squad_document(data):
            # A SQuAD file (data[].paragraphs[].qas[]): one row per question, as on the hub.
            return _from_list(squad_rows(data, path, where))
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
        return _from_list(_same_keys(data, path, where))
    return _from_list(read_squad(path, where))


def _jsonl_rows(path: Path, where: str) -> list[dict[str, Any]]:
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


def _same_keys(rows: list[dict[str, Any]], path: Path, where: str) -> list[dict[str, Any]]:
    """JSON examples with the keys of the first one: Arrow would read a missing key as null (a
    label `None`), so the example that lacks one is named instead."""
    if rows:
        keys = list(rows[0])
        for number, row in enumerate(rows):
            missing = [key for key in keys if key not in row]
            if missing:
                raise DataError(
                    f"{where}: {path}: example {number} (0-based) has no {missing[0]!r}, which example 0 has — give every "
                    f"example the same keys"
                )
    return rows


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
    if suffix in TEXT_SUFFIXES:
        return "text"
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".conll": "conll"}.get(suffix)


def _text_lines(path: Path, where: str) -> Iterator[str]:
    """The non-blank lines of a text file, stripped."""
    for line in utf8_lines(path, DataError, f"{where}: "):
        text = line.strip()
        if text:
            yield text


def _delimited_reader(handle: Any, kind: str, quoting: bool) -> Any:
    # TSV corpora such as GLUE's SST-2 contain bare quote characters: CSV quoting would merge lines.
    use_quoting = quoting or kind == "csv"
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    return csv.reader(
        handle, delimiter="\t" if kind == "tsv" else ",", quoting=csv.QUOTE_MINIMAL if use_quoting else csv.QUOTE_NONE
    )


def _delimited_header(path: Path, kind: str, quoting: bool, where: str) -> list[str] | None:
    try:
        return next(_delimited_reader(_csv_lines(path, where), kind, quoting), None)
    except csv.Error as error:
        raise DataError(f"{where}: {path}:1: not valid {kind.upper()} ({error})") from None


def _csv_lines(path: Path, where: str) -> Iterator[str]:
    # The csv module wants lines with their own ends (newline=""), so a quoted value may span lines.
    for line in utf8_lines(path, DataError, f"{where}: "):
        yield line if line.endswith("\n") else line + "\n"


def _delimited_rows(path: Path, kind: str, quoting: bool, where: str) -> Iterator[dict[str, Any]]:
    reader = _delimited_reader(_csv_lines(path, where), kind, quoting)
    try:
        header = next(reader, None)
        if header is None:
            return
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
                yield dict(zip(header, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{where}: {path}:{reader.line_num}: not valid {kind.upper()} ({error})") from None


def _field_count_hint(kind: str, quoting: bool, too_many: bool) -> str:
    if kind == "csv":
        return 'put a value in every column, and quote a value that contains a comma ("a, b")'
    if too_many and not quoting:
        return "a value contains a tab: remove it, or quote the value and set `quoting: true`"
    return "put a value in every column, separated by single tabs"


def _features(spec: dict[str, Any]) -> Any:
    """`datasets.Features` from {column: "string" | "int64" | [inner]} (a list is a sequence)."""
    import datasets

    def feature(value: Any) -> Any:
        return datasets.Sequence(feature(value[0])) if isinstance(value, list) else datasets.Value(value)

    return datasets.Features({name: feature(value) for name, value in spec.items()})


def _from_list(rows: list[dict[str, Any]], features: dict[str, Any] | None = None) -> Any:
    import datasets
    import pyarrow

    try:
        return datasets.Dataset.from_list(rows, features=_features(features) if features else None)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError):
        # An Arrow column holds one type; JSON examples may mix them (labels 1 and "pos"). Such a
        # column is kept as text, which every reader of labels and offsets accepts (`whole_number`).
        mixed = [name for name in rows[0] if len({type(row.get(name)) for row in rows} - {type(None)}) > 1]
        as_text = [{**row, **{name: _as_text(row.get(name)) for name in mixed}} for row in rows]
        return datasets.Dataset.from_list(as_text)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _rows_to_arrow(path: Path, rows: Callable[[], Iterator[dict[str, Any]]], features: dict[str, Any], where: str) -> Any:
    """A line-oriented file's rows as a Dataset: in memory when the file is small, else written row
    by row to an Arrow file under the brewer cache (named by the file's content hash and this
    reader's settings, so a later run memory-maps it instead of reading the file again)."""
    if path.stat().st_size < ON_DISK_BYTES:
        return _from_list(list(rows()), features)
    import datasets

    try:
        return datasets.Dataset.from_generator(
            _generate,
            features=_features(features),
            cache_dir=str(cache_directory() / "sources"),
            gen_kwargs={"rows": rows, "content": content_hash(path), "where": where},
            writer_batch_size=RECORD_BATCH_ROWS,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # Our own message, not the wrapper's: the row that is wrong, its line and the fix.
        cause = error.__cause__
        if isinstance(cause, BrewerError):
            raise cause from None
        raise


def _generate(rows: Callable[[], Iterator[dict[str, Any]]], content: str, where: str) -> Iterator[dict[str, Any]]:
    # `content` and `where` are not read: they are in the generator's arguments so that the cache
    # `datasets` keeps for `from_generator` is keyed by the file's content, not only by its reader.
    yield from rows()


def _read_disk(path: Path, source: DataSource, where: str) -> Any:
    import datasets  # where used, as in _read_hub

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"{where}.path: {path} is not a `save_to_disk` directory: {error}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.split is None or source.split not in loaded:
            raise DataError(f"{where}.split: {path} holds splits {', '.join(loaded)} — name one with `split:`")
        loaded = loaded[source.split]
    return loaded


def column(rows: Any, name: str, where: str, role: str) -> list[Any]:
    """One column of every row (a Dataset's, or a list of dicts'), or a clear error listing the
    columns that exist."""
    names = rows.column_names if hasattr(rows, "column_names") else list(rows[0])
    if name not in names:
        found = ", ".join(str(key) for key in names)
        raise DataError(
            f"{where}: {role} column {name!r} not found — columns found: {found}. "
            f"Set the column name in the recipe (e.g. `data.{role}: <column>`)."
        )
    if hasattr(rows, "column_names"):
        return rows.select_columns([name])[:][name]
    return [row[name] for row in rows]


def split_as_written(recipe: Recipe, field: str) -> str:
    """A split named as the user gave it, for warnings: `RECIPE: data.eval`, or `--data` alone for
    `brewer eval --data FILE` (the split is not in the recipe file then)."""
    written = written_at(origins_of(recipe), field)
    return written if written.startswith("--") else f"{recipe.path}: {written}"
