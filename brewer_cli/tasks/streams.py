"""Streamed corpora for general distillation (`data.train: {…, streaming: true}`), and masking on
the fly.

A streamed split is never read whole: lines come from a text file of any size (read from a byte
offset) or from a hub dataset opened with `streaming=True`, are tokenized a batch of lines at a
time in the training process, and are packed into blocks of `max_length` tokens as the Arrow path
packs them (tasks/general_corpus.py: `[CLS] … [SEP]`, a `[SEP]` after every line). The stream
runs on past its end into a new pass over the data, so an epoch is a number of steps
(`training.steps_per_epoch`, or `training.max_steps`), not a pass.

Its position is a small state — the pass, where the next line starts (a byte offset in a file;
`datasets`' own `state_dict` for a hub stream), the tokens already read but not yet in a block, and
the blocks given so far — saved with every checkpoint, so `--resume` goes on from the same
position without reading what came before: bit-identical to an uninterrupted run for files.

Under DDP each process reads its own share: in a file, line i belongs to process i mod N; a hub
stream is split by `datasets.distributed.split_dataset_by_node`. No line is read by two processes.

Masking (`task.mask_probability`, `DataCollatorForLanguageModeling`'s semantics): of the tokens
that are not special, each is chosen with that probability; a chosen token becomes [MASK] 80% of
the time, a random token 10%, and stays 10%. The draws of an example come from a generator seeded
by (training.seed, epoch, example index), so a batch's masks do not depend on which process or
which resume made it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource
from brewer_cli.tasks.text_blocks import frame_tokens

# Lines tokenized together: one call of the fast tokenizer, a few milliseconds in the training process.
LINES_PER_READ = 256


class FileLines:
    """The non-blank lines of a text file that belong to process `rank` of `world`, read from a
    byte offset, in batches, each with the position after it."""

    def __init__(self, path: Path, where: str, rank: int = 0, world: int = 1):
        self.path, self.where, self.rank, self.world = path, where, rank, world

    def batches(self, position: dict[str, int] | None) -> Iterator[tuple[list[str], dict[str, int]]]:
        offset, number = (position["offset"], position["line"]) if position else (0, 0)
        texts: list[str] = []
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            for raw in handle:
                start, offset, number = offset, offset + len(raw), number + 1
                if (number - 1) % self.world != self.rank:
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{self.where}: {self.path}:{number}: not valid UTF-8 — byte {start + error.start} is "
                        f"0x{raw[error.start]:02x} ({error.reason}); brewer reads UTF-8 text only: re-encode the file"
                    ) from None
                text = (text.removeprefix("\ufeff") if number == 1 else text).strip()
                if text:
                    texts.append(text)
                if len(texts) == LINES_PER_READ:
                    yield texts, {"offset": offset, "line": number}
                    texts = []
        if texts:
            yield texts, {"offset": offset, "line": number}


class HubLines:
    """The non-blank texts of a hub dataset's column, streamed (`load_dataset(streaming=True)`),
    this process's share; the position is `datasets`' own resumable state."""

    def __init__(self, source: DataSource, column: str, where: str, rank: int = 0, world: int = 1):
        import datasets
        from datasets.distributed import split_dataset_by_node

        try:
            stream = datasets.load_dataset(
                source.hub, source.config, split=source.split, revision=source.revision, streaming=True
            )
        except Exception as error:  # the hub raises many kinds: connection, missing config, missing split
            raise DataError(
                f"{where}.hub: could not stream {source.hub!r}, split {source.split!r}: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__} — check the name, config and split"
            ) from None
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
        self.stream, self.column = stream, column
        self.start = stream.state_dict()

    def batches(self, position: dict[str, Any] | None) -> Iterator[tuple[list[str], dict[str, Any]]]:
        self.stream.load_state_dict(position if position is not None else self.start)
        texts: list[str] = []
        for row in self.stream:
            value = row.get(self.column)
            text = str(value).strip() if value is not None else ""
            if text:
                texts.append(text)
            if len(texts) == LINES_PER_READ:
                yield texts, self.stream.state_dict()
                texts = []
        if texts:
            yield texts, self.stream.state_dict()


class PackedStream(IterableDataset):
    """Blocks of `max_length` tokens packed from a line reader without end (module docstring).
    `state_dict` is the position after the last block given out; `load_state_dict` continues there."""

    streamed = True

    def __init__(
        self,
        reader: Any,
        tokenizer: Any,
        max_length: int,
        segments: bool,
        where: str,
        rank: int = 0,
        world: int = 1,
    ):
        self.reader, self.tokenizer, self.where = reader, tokenizer, where
        self.start, self.end = frame_tokens(tokenizer, where)
        self.width, self.segments, self.rank, self.world = max_length - 2, segments, rank, world
        self.state: dict[str, Any] = {"pass": 0, "position": None, "carry": np.zeros(0, dtype=np.int64), "blocks": 0}

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.state)
        state["carry"] = [int(token) for token in state["carry"]]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {**state, "carry": np.asarray(state["carry"], dtype=np.int64)}

    def set_epoch(self, epoch: int) -> None:
        """An epoch of a stream is a number of steps; where it starts is the stream's own state."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state = self.state
        passes, position, carry, blocks = state["pass"], state["position"], state["carry"], state["blocks"]
        while True:
            read_any = False
            for texts, after in self.reader.batches(position):
                read_any = True
                pieces = [carry] + [np.append(np.asarray(ids, dtype=np.int64), self.end) for ids in self._ids(texts)]
                stream = np.concatenate(pieces)
                full = len(stream) // self.width
                for block in range(full):
                    blocks += 1
                    rest = stream[(block + 1) * self.width :]
                    self.state = {"pass": passes, "position": after, "carry": rest, "blocks": blocks}
                    yield self._example(stream[block * self.width : (block + 1) * self.width], blocks - 1)
                carry, position = stream[full * self.width :], after
                self.state = {"pass": passes, "position": after, "carry": carry, "blocks": blocks}
            if not read_any and position is None:
                raise DataError(f"{self.where}: the corpus has no non-blank line — point it at a file or split with text")
            passes, position = passes + 1, None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _example(self, tokens: np.ndarray, number: int) -> dict[str, Any]:
        ids = [self.start, *tokens.tolist(), self.end]
        example = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self.segments:
            example["token_type_ids"] = [0] * len(ids)
        # Unique over the processes: the key of this block's masks (and of nothing cached: a stream is read once).
        example["index"] = number * self.world + self.rank
        return example

    def head(self, count: int) -> list[dict[str, Any]]:
        """The stream's first `count` blocks (ETD-Impt scores the teacher on them), leaving its
        position where it was."""
        saved = self.state
        self.state = {"pass": 0, "position": None, "carry": np.zeros(0, dtype=np.int64), "blocks": 0}
        try:
            examples = []
            for example in self:
                examples.append(example)
                if len(examples) == count:
                    break
            return examples
        finally:
            self.state = saved


class MaskingCollate:
    """The task's collate, then masking on the fly (module docstring) of the batch's input ids."""

    def __init__(self, collate: Callable, tokenizer: Any, probability: float, seed: int, like: MaskingCollate | None = None):
        self.collate, self.probability, self.seed = collate, probability, seed
        if like is not None:
            self.mask_id, self.vocabulary, self.special = like.mask_id, like.vocabulary, like.special
        else:
            self.mask_id = tokenizer.mask_token_id
            self.vocabulary = len(tokenizer)
            self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.epoch = 0
        self.fixed = False

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed:
            self.epoch = epoch

    def for_evaluation(self) -> MaskingCollate:
        """The same masking with the masks of epoch 0 at every evaluation, so that evaluations compare."""
        pinned = MaskingCollate(self.collate, None, self.probability, self.seed, like=self)
        pinned.fixed = True
        return pinned

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        ids = batch["input_ids"].clone()
        counted = (batch["attention_mask"] == 1) & ~torch.isin(ids, self.special)
        for row, index in enumerate(batch["index"].tolist()):
            seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(seed) >> 1)
            length = ids.shape[1]
            chosen = (torch.rand(length, generator=generator) < self.probability) & counted[row]
            choice = torch.rand(length, generator=generator)
            random_ids = torch.randint(self.vocabulary, (length,), generator=generator)
            ids[row] = torch.where(chosen & (choice < 0.8), self.mask_id, ids[row])
            ids[row] = torch.where(chosen & (choice >= 0.8) & (choice < 0.9), random_ids, ids[row])
        batch["input_ids"] = ids
        return batch
