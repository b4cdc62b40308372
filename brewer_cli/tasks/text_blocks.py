"""Plain text → token ids → blocks, as batched `datasets` maps: the corpus path of `masked_lm`
(general distillation) and of `causal_lm`'s plain text, so that a corpus of any size is tokenized
into Arrow files and never held in memory.

Tokenizing is a map over batches of lines in `data.num_proc` processes. Packing is a second pass,
in one process and in order: a block runs on from one batch of lines into the next, so the tokens
left at the end of a batch (the carry) start the next batch's first block, and the last batch
ends with a shorter block. Each line (document) is followed by a separator token, so the
boundaries stay visible inside a block; a block may be framed by a start and an end token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brewer_cli.errors import DataError
from brewer_cli.tasks.data import RECORD_BATCH_ROWS
from brewer_cli.tasks.examples import TokenizedDataset
from brewer_cli.tasks.tokenized_cache import batched_map


@dataclass(frozen=True)
class BlockShape:
    """How lines become blocks: `[start] tokens… [end]` of `length` tokens in all, a `separator`
    after each line, the lines tokenized with the tokenizer's own special tokens or without;
    `columns` the example's columns beyond input_ids (attention_mask, token_type_ids, labels,
    prompt_length)."""

    length: int
    separator: int
    start: int | None = None
    end: int | None = None
    special_tokens: bool = False
    segments: bool = False  # token_type_ids (zeros)
    labels: bool = False  # labels = input_ids and prompt_length = 0 (a causal LM's plain text)

    @property
    def width(self) -> int:
        """Tokens of text per block, between the start and end tokens."""
        return self.length - (self.start is not None) - (self.end is not None)


def frame_tokens(tokenizer: Any, where: str) -> tuple[int, int]:
    """The tokens that open and close an encoder's block and end each line in it: [CLS] and [SEP],
    or <s> and </s>."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None:
        raise DataError(
            f"{where}: a general corpus needs the tokenizer's start and separator tokens ([CLS] and [SEP], or <s> and "
            f"</s>), and this one has none — use the teacher's own tokenizer"
        )
    return start, end


def features(shape: BlockShape) -> Any:
    import datasets

    columns = {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "attention_mask": datasets.Sequence(datasets.Value("int8")),
    }
    if shape.segments:
        columns["token_type_ids"] = datasets.Sequence(datasets.Value("int8"))
    if shape.labels:
        columns["labels"] = datasets.Sequence(datasets.Value("int32"))
        columns["prompt_length"] = datasets.Value("int32")
    return datasets.Features(columns)


def packed_blocks(rows: Any, tokenizer: Any, shape: BlockShape, data: Any, field: str, work: Path | None) -> TokenizedDataset:
    """`rows` (a Dataset with a `text` column) → blocks of `shape.length` tokens: the ids of a map,
    then one pass in order that reads them batch by batch from their files (read, not mapped: a
    mapped file's pages would stay in the process's memory) and writes the blocks to one file."""
    import datasets
    import pyarrow
    from datasets.arrow_writer import ArrowWriter
    from datasets.table import InMemoryTable

    ids = batched_map(rows, EncodeLines(tokenizer, shape.special_tokens), data, field, work, remove_columns=rows.column_names)
    pack = Pack(shape)
    if work is None:  # no cache folder: everything in memory
        tables = [pack(batch) for batch in ids.data.table.to_batches()] + [pack.finish()]
        return TokenizedDataset(datasets.Dataset(InMemoryTable(pyarrow.concat_tables(tables))))
    output = work / f"{field}-blocks.arrow"
    with ArrowWriter(path=str(output), features=features(shape), writer_batch_size=RECORD_BATCH_ROWS) as writer:
        for item in ids.cache_files:
            with pyarrow.OSFile(item["filename"]) as source:
                for batch in pyarrow.ipc.open_stream(source):
                    writer.write_table(pack(batch))
        writer.write_table(pack.finish())
        writer.finalize()
    return TokenizedDataset(datasets.Dataset.from_file(str(output)))


def line_examples(rows: Any, tokenizer: Any, shape: BlockShape, data: Any, field: str, work: Path | None) -> TokenizedDataset:
    """`rows` → one example per line: `[start] tokens [end]`, or the tokens and the separator,
    cut at `shape.length` (`packing: false`)."""
    encode = EncodeLines(tokenizer, shape.special_tokens, shape)
    return TokenizedDataset(
        batched_map(rows, encode, data, field, work, remove_columns=rows.column_names, features=features(shape))
    )


def line(value: Any) -> str:
    # Hub corpora such as wikitext hold blank lines between paragraphs, and some rows are null.
    return str(value).strip() if value is not None else ""


class EncodeLines:
    """Non-blank lines → token ids (the map's function: a class, so worker processes get it by
    pickling). Without `shape`: the ids alone, for packing; with it: whole examples, one per line."""

    def __init__(self, tokenizer: Any, special_tokens: bool, shape: BlockShape | None = None):
        self.tokenizer, self.special_tokens, self.shape = tokenizer, special_tokens, shape

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts = [text for text in (line(value) for value in batch["text"]) if text]
        ids = self.tokenizer(texts, add_special_tokens=self.special_tokens)["input_ids"] if texts else []
        if self.shape is None:
            return {"ids": ids}
        shape = self.shape
        examples = []
        for tokens in ids:
            if shape.start is not None or shape.end is not None:
                tokens = [*([shape.start] if shape.start is not None else []), *tokens[: shape.width]]
                tokens += [shape.end] if shape.end is not None else []
            else:
                tokens = [*tokens, shape.separator][: shape.length]
            examples.append(tokens)
        # A one-token causal example predicts nothing: left out.
        examples = [tokens for tokens in examples if not shape.labels or len(tokens) > 1]
        return _columns([np.asarray(tokens) for tokens in examples], shape)


class Pack:
    """Token ids of consecutive lines → blocks (module docstring); call it on each batch of lines
    in order, then `finish` for the last, shorter block."""

    def __init__(self, shape: BlockShape):
        self.shape = shape
        self.carry = np.zeros(0, dtype=np.int64)

    def __call__(self, batch: Any) -> Any:
        import pyarrow.compute

        shape, width = self.shape, self.shape.width
        column = batch.column("ids")
        values = pyarrow.compute.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
        ends = pyarrow.compute.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64).cumsum()
        stream = np.concatenate([self.carry, np.insert(values, ends, shape.separator)])
        full = len(stream) // width
        self.carry = stream[full * width :]
        return self._blocks(list(stream[: full * width].reshape(full, width)) if full else [])

    def finish(self) -> Any:
        pieces, self.carry = ([self.carry] if len(self.carry) else []), np.zeros(0, dtype=np.int64)
        return self._blocks(pieces)

    def _blocks(self, pieces: list[np.ndarray]) -> Any:
        shape = self.shape
        framed = [
            np.concatenate(
                [[shape.start] if shape.start is not None else [], piece, [shape.end] if shape.end is not None else []]
            )
            for piece in pieces
        ]
        # A one-token causal block (the end of the stream) predicts nothing: left out.
        return _arrow_columns([block for block in framed if not shape.labels or len(block) > 1], shape)


def _columns(blocks: list[np.ndarray], shape: BlockShape) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        "input_ids": [block.tolist() for block in blocks],
        "attention_mask": [[1] * len(block) for block in blocks],
    }
    if shape.segments:
        columns["token_type_ids"] = [[0] * len(block) for block in blocks]
    if shape.labels:
        columns["labels"] = [block.tolist() for block in blocks]
        columns["prompt_length"] = [0] * len(blocks)
    return columns


def _arrow_columns(blocks: list[np.ndarray], shape: BlockShape) -> Any:
    """The blocks as an Arrow table, built from flat arrays (no Python list per token)."""
    import pyarrow

    lengths = np.asarray([len(block) for block in blocks], dtype=np.int64)
    offsets = pyarrow.array(np.concatenate([[0], lengths.cumsum()]).astype(np.int32))
    flat = np.concatenate(blocks).astype(np.int32) if blocks else np.zeros(0, dtype=np.int32)

    def lists(values: np.ndarray) -> Any:
        return pyarrow.ListArray.from_arrays(offsets, pyarrow.array(values))

    table = {"input_ids": lists(flat), "attention_mask": lists(np.ones(len(flat), dtype=np.int8))}
    if shape.segments:
        table["token_type_ids"] = lists(np.zeros(len(flat), dtype=np.int8))
    if shape.labels:
        table["labels"] = lists(flat)
        table["prompt_length"] = pyarrow.array(np.zeros(len(blocks), dtype=np.int32))
    return pyarrow.table(table)
