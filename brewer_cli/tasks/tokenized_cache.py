"""The tokenization cache: a split is tokenized once, and later runs and `--resume` memory-map it.

An entry is named by a hash of everything its examples depend on: each source's identity (a local
file's content hash, a hub dataset's fingerprint, a generator's settings — `data.source_fingerprint`),
the tokenizer's definition (vocabulary, normalizer, pre-tokenizer, post-processor, special tokens,
chat template), the task's settings, `data` (max_length, columns, packing …), the label names
given, and `PREPROCESSING_VERSION` — raised whenever brewer's tokenization changes what it
produces, so an entry is never read by code that would have made something else. A changed file, a
different tokenizer or max_length is a different entry; nothing is ever invalidated in place.

An entry is a directory `<cache>/tokenized/<key>/`: each split's Arrow files (those its map
wrote, moved in; memory-mapped for random reads when used), `prepared.pkl` with the rest of the task's preparation (label
names, eval examples, what it found in the data), the warnings the tokenization logged (shown
again on a hit, so a hit says what a miss said) and `entry.json` (what `brewer cache list`
shows). It is written in a temporary directory and renamed into place, under a file lock, so
processes that prepare the same data at once (DDP) tokenize it once and a crash never leaves a
half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from brewer_cli.memory import return_freed_memory
from brewer_cli.paths import cache_directory
from brewer_cli.recipe import Recipe
from brewer_cli.tasks.data import RECORD_BATCH_ROWS, source_fingerprint, split_as_written
from brewer_cli.tasks.examples import TokenizedDataset
from brewer_cli.tokenizers import tokenizer_definition

# Raise when a change to brewer's readers or tokenization changes the examples they produce.
PREPROCESSING_VERSION = 1
SPLITS = ("train", "eval")
ENTRY_FILE = "entry.json"
# Splits of at least this many rows are tokenized by several processes when `data.num_proc` is unset.
PARALLEL_ROWS = 100_000


def tokenized_directory() -> Path:
    return cache_directory() / "tokenized"


@dataclass(frozen=True)
class CacheOutcome:
    """How a preparation was served, for the plan and summary.json."""

    hit: bool
    directory: Path | None
    seconds: float

    def describe(self) -> str:
        if self.directory is None:
            return f"tokenization cache: off (the cache folder cannot be written) — tokenized in {self.seconds:.1f} s"
        if self.hit:
            return f"tokenization cache: hit — read from {self.directory}"
        return f"tokenization cache: miss — tokenized in {self.seconds:.1f} s and kept in {self.directory}"

    def report(self) -> dict[str, Any]:
        return {"hit": self.hit, "directory": str(self.directory) if self.directory else None, "seconds": round(self.seconds, 2)}


def preparation_key(task: Any, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, method: str) -> str:
    """The entry's name: a hash of everything the prepared examples depend on (module docstring)."""
    data = recipe.data
    sources = {}
    for split in SPLITS:
        source = getattr(data, split)
        # A streamed split is read as the run goes, never stored: fingerprinting it would hash a
        # corpus file, or download a hub dataset whole, for nothing.
        if source is not None and not source.streaming and (split == "eval" or method == "prepare"):
            sources[split] = source_fingerprint(source, recipe, f"data.{split}")
    settings = data.model_dump(mode="json", exclude={"train", "eval", "augment", "num_proc"})
    ingredients = {
        "version": PREPROCESSING_VERSION,
        "method": method,
        "task": type(task).__name__,
        "task_settings": recipe.task.model_dump(mode="json") if recipe.task is not None else None,
        "data": settings,
        "sources": sources,
        "tokenizer": _tokenizer_identity(tokenizer),
        "label_names": label_names,
    }
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _tokenizer_identity(tokenizer: Any) -> Any:
    """What decides the ids a tokenizer gives and the special tokens a task adds around them."""
    return {
        "definition": tokenizer_definition(tokenizer),
        "class": type(tokenizer).__name__,
        "special": {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())},
        "special_ids": [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.sep_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "model_max_length": min(int(tokenizer.model_max_length), 2**31),
        "padding_side": tokenizer.padding_side,
    }


def cached_preparation(
    task: Any,
    recipe: Recipe,
    tokenizer: Any,
    label_names: list[str] | None,
    method: str,
    build: Callable[[Path | None], Any],
) -> Any:
    """The task's PreparedData from the cache, or built by `build(work_directory)` and kept there."""
    started = time.perf_counter()
    key = preparation_key(task, recipe, tokenizer, label_names, method)
    directory = tokenized_directory() / key
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        prepared = build(None)
        return _with_outcome(prepared, CacheOutcome(False, None, time.perf_counter() - started))
    from filelock import FileLock

    with FileLock(str(directory) + ".lock"):
        hit = (directory / ENTRY_FILE).is_file()
        if not hit:
            _write_entry(task, recipe, tokenizer, method, build, directory)
            # Training allocates differently and would not reuse what preparing freed.
            return_freed_memory()
        prepared = _read_entry(task, directory, recipe if hit else None)
    _touch(directory)
    return _with_outcome(prepared, CacheOutcome(hit, directory, time.perf_counter() - started))


def _with_outcome(prepared: Any, outcome: CacheOutcome) -> Any:
    extra = dict(prepared.extra)
    extra["tokenization_cache"] = outcome
    extra["plan_lines"] = [*extra.get("plan_lines", ()), outcome.describe()]
    # summary.json's `data`, beside what the task found in the data.
    extra["summary"] = {**extra.get("summary", {}), "tokenization_cache": outcome.report()}
    return replace(prepared, extra=extra)


def _write_entry(task: Any, recipe: Recipe, tokenizer: Any, method: str, build: Callable, directory: Path) -> None:
    partial = directory.with_name(directory.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with _captured_warnings(recipe) as warnings:
            prepared = build(partial / "work")
        rows, files = {}, {}
        for split in SPLITS:
            dataset = getattr(prepared, split)
            if dataset is not None:
                rows[split] = len(dataset)
                # An empty table (`brewer eval`'s train split) has no file to map.
                files[split] = _store_split(dataset, partial, split, partial / "work") if len(dataset) else []
        rest = replace(prepared, train=None, eval=None)
        stored = {"prepared": rest, "task_state": task.prepared_state(), "warnings": warnings, "rows": rows, "files": files}
        with open(partial / "prepared.pkl", "wb") as handle:
            pickle.dump(stored, handle)
        shutil.rmtree(partial / "work", ignore_errors=True)
        entry = {
            "key": directory.name,
            "version": PREPROCESSING_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "task": getattr(task, "name", type(task).__name__),
            "method": method,
            "recipe": str(recipe.path),
            "sources": {split: _describe_source(getattr(recipe.data, split)) for split in SPLITS if getattr(recipe.data, split)},
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
            "max_length": recipe.data.max_length,
            "rows": rows,
        }
        (partial / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
        os.replace(partial, directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _describe_source(source: Any) -> str:
    if source.hub is not None:
        return f"hub {source.hub}" + (f" ({source.config})" if source.config else "") + f" split {source.split}"
    if source.path is not None:
        return f"file {source.path}"
    return f"synthetic {source.synthetic} ({source.examples or 1000} examples, seed {source.seed})"


def _read_entry(task: Any, directory: Path, replay_for: Recipe | None) -> Any:
    """The stored preparation; `replay_for`: show the stored warnings again, naming the splits as
    this recipe (or command line) gives them."""
    with open(directory / "prepared.pkl", "rb") as handle:
        stored = pickle.load(handle)
    task.restore_state(stored["task_state"])
    if replay_for is not None:
        names = _split_names(replay_for)
        for name, message in stored["warnings"]:
            for field, written in names.items():
                message = message.replace(_placeholder(field), written)
            logging.getLogger(name).warning("%s", message)
    splits = {
        split: TokenizedDataset(*_mapped(directory, stored["files"][split])) if rows else TokenizedDataset({})
        for split, rows in stored["rows"].items()
    }
    return replace(stored["prepared"], train=splits.get("train"), eval=splits.get("eval"))


def _store_split(dataset: TokenizedDataset, entry: Path, split: str, work: Path) -> list[str]:
    """A split's Arrow files in the entry: the files its map wrote, moved in (a corpus is not read
    and written a second time, as `save_to_disk` would), or its table written once."""
    import pyarrow

    built = dataset.dataset
    written = [Path(item["filename"]) for item in built.cache_files] if built is not None else []
    names = []
    if written and built._indices is None and all(work in path.parents for path in written):
        for number, path in enumerate(written):
            names.append(f"{split}-{number:05d}.arrow")
            os.replace(path, entry / names[-1])
        return names
    # The Arrow streaming format, as `datasets` writes its files: `_mapped` reads either alike.
    with pyarrow.ipc.new_stream(str(entry / f"{split}-00000.arrow"), dataset.table.schema) as writer:
        writer.write_table(dataset.table, max_chunksize=RECORD_BATCH_ROWS)
    return [f"{split}-00000.arrow"]


def _mapped(directory: Path, names: list[str]) -> tuple[Any, list[mmap.mmap]]:
    """A split's files memory-mapped for random reads (MADV_RANDOM: no read-ahead), and the
    mappings, whose pages the dataset hands back after each read (`TokenizedDataset.release`).
    Read with pyarrow alone: a run served by the cache does not import `datasets`."""
    import pyarrow

    tables, mappings = [], []
    for name in names:
        with open(directory / name, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(mmap.MADV_RANDOM)
        mappings.append(mapped)
        batches = []
        reader = pyarrow.ipc.open_stream(pyarrow.py_buffer(mapped))
        for batch in reader:
            batches.append(batch)
            if len(batches) % 64 == 0:  # the headers read so far, and the pages around them
                mapped.madvise(mmap.MADV_DONTNEED)
        mapped.madvise(mmap.MADV_DONTNEED)
        tables.append(pyarrow.Table.from_batches(batches, schema=reader.schema))
    # Zero-copy views of the mapping.
    return pyarrow.concat_tables(tables), mappings


def _split_names(recipe: Recipe) -> dict[str, str]:
    """How messages name each split for this recipe: `RECIPE: data.eval`, or `--data`."""
    return {field: split_as_written(recipe, field) for field in ("data.train", "data.eval")}


def _placeholder(field: str) -> str:
    return f"\x00{field}\x00"


def _touch(directory: Path) -> None:
    """Mark the entry as used now (`brewer cache list` shows it, `clear --older-than` reads it)."""
    try:
        os.utime(directory / ENTRY_FILE)
    except OSError:
        pass


class _Collect(logging.Handler):
    def __init__(self, names: dict[str, str]) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str]] = []
        # Longest first, so that `RECIPE: data.eval` is replaced before a shorter name inside it.
        self.names = sorted(names.items(), key=lambda item: -len(item[1]))

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for field, written in self.names:
            message = message.replace(written, _placeholder(field))
        self.records.append((record.name, message))


@contextmanager
def _captured_warnings(recipe: Recipe) -> Iterator[list[tuple[str, str]]]:
    """The warnings brewer logs while tokenizing (they are still shown), to show again on a hit —
    with the splits' names as placeholders, since a hit may come from another recipe file or from
    `brewer eval --data`, which name the same split otherwise."""
    handler = _Collect(_split_names(recipe))
    logger = logging.getLogger("brewer_cli")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def batched_map(rows: Any, function: Callable, data: Any, field: str, work: Path | None, **options: Any) -> Any:
    """`rows.map(function, batched=True)` as every task tokenizes: in `data.num_proc` processes
    (default: every available core for a split of `PARALLEL_ROWS` rows or more — worker processes
    cost more to start than they save on a small one), written to an Arrow file in `work` (so a
    large split is never held in memory).

    A map writes one record batch per batch of its function, and `datasets` opens each result
    file by reading every batch's header through a memory map, the kernel mapping 64 KiB of the
    file around each into this process: with the default 1,000 rows a batch, the token ids of a
    1-million-line corpus put 62 MiB of their files into the memory of the process that tokenizes
    (measured), ten times that at 10 million lines. So the function is called on
    `RECORD_BATCH_ROWS` rows at a time unless a task asks for fewer."""
    processes = data.num_proc
    if processes is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        processes = cores if len(rows) >= PARALLEL_ROWS else 1
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    # With worker processes `datasets` (5.2) replaces os.environ by a deep copy of itself and leaves
    # it so; whatever holds the real mapping (monkeypatch, click's test runner) would then change a
    # dead object. The real one is put back.
    environment = os.environ
    try:
        return rows.map(
            function,
            batched=True,
            num_proc=processes if processes > 1 else None,
            cache_file_name=str(work / f"{field}-{uuid.uuid4().hex}.arrow") if work is not None else None,
            # The cache is keyed here (module docstring); hashing the function to name a map of
            # `datasets`' own would cost time and warn about tokenizers it cannot hash.
            new_fingerprint=uuid.uuid4().hex,
            writer_batch_size=RECORD_BATCH_ROWS,
            batch_size=options.pop("batch_size", RECORD_BATCH_ROWS),
            desc=f"tokenizing {field}",
            **options,
        )
    finally:
        os.environ = environment  # noqa: B003 (the same object, not a cleared environment)


@dataclass(frozen=True)
class Entry:
    """One tokenization-cache entry, as `brewer cache list` shows it."""

    directory: Path
    record: dict[str, Any]
    bytes: int
    last_used: float


def entries() -> list[Entry]:
    """The tokenization cache's complete entries, the most recently used first."""
    root = tokenized_directory()
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        record_path = directory / ENTRY_FILE
        if not directory.is_dir() or not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
        size = sum(item.stat().st_size for item in directory.rglob("*") if item.is_file())
        found.append(Entry(directory, record, size, record_path.stat().st_mtime))
    return sorted(found, key=lambda entry: entry.last_used, reverse=True)
