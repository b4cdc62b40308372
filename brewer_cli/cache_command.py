"""`brewer cache list | clear`: what brewer keeps under its cache folder, and clearing it.

Everything there can be made again from the data and the models: the tokenization cache
(`tokenized/`, brewer_cli/tasks/tokenized_cache.py), large source files read into Arrow
(`sources/`), augmented training files (`augment/`) and teachers' completions for sequence KD
(`sequence_kd/`). The teacher-output cache is not here: it lives in its run's directory
(`teacher_cache/`) and goes with it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.errors import BrewerError
from brewer_cli.paths import cache_directory
from brewer_cli.tasks.tokenized_cache import entries

# The cache folder's parts, in the order `list` shows them, with what each holds.
KINDS = {
    "tokenized": "tokenized splits (one entry per data, tokenizer and settings)",
    "sources": "large csv / tsv / text / CoNLL files read into Arrow",
    "augment": "augmented training files (data.augment, brewer augment)",
    "sequence_kd": "teachers' completions for sequence-level KD",
}


@dataclass(frozen=True)
class Item:
    """One thing `clear` can remove: a tokenization entry, or a file or folder of another kind."""

    kind: str
    path: Path
    bytes: int
    last_used: float
    about: str


def items(kinds: list[str] | None = None) -> list[Item]:
    root = cache_directory()
    found: list[Item] = []
    for kind in kinds or list(KINDS):
        if kind == "tokenized":
            for entry in entries():
                found.append(Item(kind, entry.directory, entry.bytes, entry.last_used, _about_entry(entry.record)))
            # What a run stopped while tokenizing left behind (never read: it has no entry.json).
            for path in sorted((root / kind).glob("*.partial-*")):
                size, used = _size_and_use(path)
                found.append(Item(kind, path, size, used, "unfinished (a run stopped while tokenizing)"))
            continue
        folder = root / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            size, used = _size_and_use(path)
            found.append(Item(kind, path, size, used, path.name))
    return found


def _about_entry(record: dict[str, Any]) -> str:
    sources = ", ".join(f"{split}: {source}" for split, source in record.get("sources", {}).items())
    rows = ", ".join(f"{split} {count:,}" for split, count in record.get("rows", {}).items())
    return f"{record.get('task', '?')} · {sources} · {record.get('tokenizer', '?')} · max_length {record.get('max_length', '?')} · rows {rows}"


def _size_and_use(path: Path) -> tuple[int, float]:
    files = [item for item in path.rglob("*") if item.is_file()] if path.is_dir() else [path]
    stats = [item.stat() for item in files]
    return sum(stat.st_size for stat in stats), max((stat.st_mtime for stat in stats), default=path.stat().st_mtime)


def _check_kinds(kinds: list[str] | None) -> list[str] | None:
    unknown = [kind for kind in kinds or [] if kind not in KINDS]
    if unknown:
        raise BrewerError(f"brewer cache: unknown part {unknown[0]!r} — the parts are {', '.join(KINDS)}")
    return kinds or None


def list_cache(kinds: list[str] | None, console: Any) -> list[Item]:
    """Print the cache's contents (most recently used first within each part) and their sizes."""
    from rich.table import Table

    found = items(_check_kinds(kinds))
    console.print(f"brewer cache: {cache_directory()} (set $BREWER_CACHE to move it)", markup=False)
    if not found:
        console.print("empty", markup=False)
        return found
    table = Table(show_header=True, header_style="bold")
    for heading in ("part", "name", "size", "last used", "what"):
        table.add_column(heading, overflow="fold")
    for item in sorted(found, key=lambda item: (list(KINDS).index(item.kind), -item.last_used)):
        table.add_row(item.kind, item.path.name, _size(item.bytes), _age(item.last_used), item.about)
    console.print(table)
    console.print(f"{len(found)} items, {_size(sum(item.bytes for item in found))} in all", markup=False)
    return found


def clear_cache(kinds: list[str] | None, older_than_days: float | None, console: Any) -> list[Item]:
    """Remove the cache's items (of `kinds`; last used more than `older_than_days` ago)."""
    found = items(_check_kinds(kinds))
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400
        found = [item for item in found if item.last_used < cutoff]
    for item in found:
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        if item.kind == "tokenized":
            Path(str(item.path) + ".lock").unlink(missing_ok=True)
    console.print(
        f"removed {len(found)} items, {_size(sum(item.bytes for item in found))}, from {cache_directory()}", markup=False
    )
    return found


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _age(moment: float) -> str:
    seconds = max(0.0, time.time() - moment)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return "just now"
