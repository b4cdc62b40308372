"""Tokenized examples and a task's prepared data: what the tokenization cache stores and the
loop reads."""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """Tokenized examples in an Arrow table (`pyarrow.Table`): memory-mapped from the tokenization
    cache, so a corpus of any size costs the pages a batch touches, not its size.
    `__getitem__` adds the example index (the key of the teacher-output cache and of QA
    post-processing). Built from a dict of columns (Python lists), the table is in memory; built
    from the `datasets.Dataset` a task's map wrote, that dataset is kept for the tokenization cache
    to move its files (`dataset`).

    Reading goes through pyarrow, not `datasets`, so that a run served by the tokenization cache
    never imports `datasets` (with pandas, about 50 MiB of a training process's peak memory,
    benchmarks/RESULTS.md); the gather is the one `datasets` uses (`fast_gather`): each index is
    found among the table's record batches by binary search and sliced there, where `Table.take`
    would concatenate a column's chunks first and so touch the whole memory-mapped corpus."""

    # Read whole and in any order (tasks/streams.py: a stream is read in its order, as the run goes).
    streamed = False

    def __init__(self, columns: Any, mappings: Sequence[Any] = ()):
        """`columns`: a dict of lists, a `pyarrow.Table` or a `datasets.Dataset`; `mappings`: the
        memory maps of the table's files (tasks/tokenized_cache.py), whose pages are handed back
        after every read."""
        import pyarrow

        self.mappings = list(mappings)
        self.dataset = None
        if isinstance(columns, dict):
            lengths = {len(values) for values in columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
            columns = pyarrow.table(columns)
        elif not isinstance(columns, pyarrow.Table):
            self.dataset = columns
            # A selection (`limit`, articles) reads through an index mapping: made plain once here.
            columns = (columns.flatten_indices() if columns._indices is not None else columns).data.table
        self.table = columns
        self._batches: list[Any] | None = None
        self._starts: np.ndarray | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch's examples in one read of the table (the DataLoader asks for them together)."""
        import pyarrow

        indices = [int(index) for index in indices]
        if not self.table.num_columns:
            return [{"index": index} for index in indices]
        if self._batches is None:
            self._batches = [batch for batch in self.table.to_batches() if batch.num_rows]
            self._starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"example {index} of {len(self)}")
        chunks = np.searchsorted(self._starts, indices, side="right") - 1
        rows = [self._batches[chunk].slice(index - self._starts[chunk], 1) for chunk, index in zip(chunks, indices)]
        items = pyarrow.Table.from_batches(rows, schema=self.table.schema).to_pylist()
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
    def columns(self) -> dict[str, ColumnView]:
        """Each column as a list-like view of the table (read lazily: `columns[name][i]`)."""
        return {name: ColumnView(self.table.column(name)) for name in self.table.column_names}

    def column(self, name: str) -> list[Any]:
        """One column as a Python list."""
        return self.table.column(name).to_pylist()

    def lengths(self, prefix: str = "") -> np.ndarray:
        """Tokens per example (of the `prefix` teacher's own columns), from the Arrow offsets: no
        example is read."""
        import pyarrow.compute

        values = self.arrow_column(prefix + "input_ids")
        if values is None:
            return np.zeros(0, dtype=np.int64)
        lengths = []
        for number, chunk in enumerate(values.chunks):
            lengths.append(integers(pyarrow.compute.list_value_length(chunk)))
            if number % 64 == 63:  # the offsets read so far, and the mapped pages around them
                self.release()
        self.release()
        return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)

    def arrow_column(self, name: str) -> Any:
        """One column as a `pyarrow.ChunkedArray` in example order, or None when there is none."""
        return self.table.column(name) if name in self.table.column_names else None

    def head(self, count: int) -> list[dict[str, Any]]:
        """The first `count` examples (ETD-Impt scores the teacher on them)."""
        return self.__getitems__(range(min(count, len(self))))

    def with_columns(self, other: TokenizedDataset, prefix: str, names: Sequence[str]) -> TokenizedDataset:
        """These examples plus `other`'s columns `names` (the same examples) under `prefix`."""
        table = self.table
        for name in names:
            if name in other.table.column_names:
                table = table.append_column(prefix + name, other.table.column(name))
        return TokenizedDataset(table, [*self.mappings, *other.mappings])


def integers(array: Any) -> np.ndarray:
    """An Arrow integer array without nulls as int64, read from its buffer: pyarrow's `to_numpy`
    imports pandas (about 40 MiB of a process's memory) even where it copies nothing."""
    if array.null_count:
        raise ValueError(f"{array.null_count} missing values in an integer column")
    values = np.frombuffer(array.buffers()[1], dtype=np.dtype(str(array.type)), count=array.offset + len(array))
    return values[array.offset :].astype(np.int64)


class ColumnView(Sequence):
    """One column of a table as a read-only sequence of Python values, converted as they are read."""

    def __init__(self, values: Any):
        self.values = values  # a pyarrow.ChunkedArray

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return self.values[index].as_py()

    def __iter__(self) -> Iterator[Any]:
        for chunk in self.values.chunks:
            yield from chunk.to_pylist()

    def __eq__(self, other: object) -> bool:
        # As a list compares: element by element, with any sequence of the same values.
        return list(self) == list(other) if isinstance(other, (list, tuple, ColumnView)) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are not hashable either


@dataclass
class PreparedData:
    train: TokenizedDataset
    eval: TokenizedDataset | None
    label_names: list[str] | None
    # Raw eval examples, for tasks whose metric needs them (QA answers, NER words).
    eval_examples: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
