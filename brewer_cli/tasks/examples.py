"""Tokenized examples and a task's prepared data: what the tokenization cache stores and the
loop reads."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """Tokenized examples in an Arrow table (`datasets.Dataset`): memory-mapped from the
    tokenization cache, so a corpus of any size costs the pages a batch touches, not its size.
    `__getitem__` adds the example index (the key of the teacher-output cache and of QA
    post-processing). Built from a dict of columns (Python lists), the table is in memory."""

    # Read whole and in any order (tasks/streams.py: a stream is read in its order, as the run goes).
    streamed = False

    def __init__(self, columns: Any, mappings: Sequence[Any] = ()):
        """`mappings`: the memory maps of the table's files (tasks/tokenized_cache.py), whose pages
        are handed back after every read."""
        import datasets

        self.mappings = list(mappings)

        if isinstance(columns, dict):
            lengths = {len(values) for values in columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
            columns = datasets.Dataset.from_dict(columns)
        self.table = columns

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.table[int(index)]
        item["index"] = int(index)
        self.release()
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch's examples in one read of the table (the DataLoader asks for them together)."""
        indices = [int(index) for index in indices]
        columns = self.table[indices]
        items = [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else [{} for _ in indices]
        for item, index in zip(items, indices):
            item["index"] = index
        self.release()
        return items

    def release(self) -> None:
        """Drop the mapped files' pages from this process (MADV_DONTNEED): the examples read are
        Python objects by now, and the pages stay in the kernel's page cache for the next read. A
        mapped page counts in the process's RSS from its first touch — with the kernel's
        fault-around, 64 KiB of the file per example — so without this a run's peak memory would
        grow with the steps it takes, up to the corpus's size."""
        for mapped in self.mappings:
            mapped.madvise(mmap.MADV_DONTNEED)

    @property
    def columns(self) -> dict[str, Any]:
        """Each column as a list-like view of the table (read lazily: `columns[name][i]`)."""
        return {name: self.table[name] for name in self.table.column_names}

    def column(self, name: str) -> list[Any]:
        """One column as a Python list."""
        return self.table.select_columns([name])[:][name]

    def lengths(self, prefix: str = "") -> np.ndarray:
        """Tokens per example (of the `prefix` teacher's own columns), from the Arrow offsets: no
        example is read."""
        import pyarrow.compute

        values = self.arrow_column(prefix + "input_ids")
        if values is None:
            return np.zeros(0, dtype=np.int64)
        lengths = []
        for number, chunk in enumerate(values.chunks):
            lengths.append(pyarrow.compute.list_value_length(chunk).to_numpy(zero_copy_only=False).astype(np.int64))
            if number % 64 == 63:  # the offsets read so far, and the mapped pages around them
                self.release()
        self.release()
        return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)

    def arrow_column(self, name: str) -> Any:
        """One column as a `pyarrow.ChunkedArray` in example order, or None when there is none."""
        if name not in self.table.column_names:
            return None
        selected = self.table.select_columns([name])
        # A selection (`limit`, articles) reads through an index mapping; the cache's tables have none.
        return (selected.flatten_indices() if selected._indices is not None else selected).data.column(name)

    def head(self, count: int) -> list[dict[str, Any]]:
        """The first `count` examples (ETD-Impt scores the teacher on them)."""
        return self.__getitems__(range(min(count, len(self))))

    def with_columns(self, other: TokenizedDataset, prefix: str, names: Sequence[str]) -> TokenizedDataset:
        """These examples plus `other`'s columns `names` (the same examples) under `prefix`."""
        import datasets

        present = [name for name in names if name in other.table.column_names]
        added = other.table.select_columns(present).rename_columns({name: prefix + name for name in present})
        added = added.flatten_indices() if added._indices is not None else added
        return TokenizedDataset(datasets.concatenate_datasets([self.table, added], axis=1), [*self.mappings, *other.mappings])


@dataclass
class PreparedData:
    train: TokenizedDataset
    eval: TokenizedDataset | None
    label_names: list[str] | None
    # Raw eval examples, for tasks whose metric needs them (QA answers, NER words).
    eval_examples: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
