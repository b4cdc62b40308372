"""Extractive QA's windows (tasks/question_answering.py): each question with its context, cut into
windows of max_length tokens that share `doc_stride` context tokens, as the function of a batched
`datasets` map; and where the answer lies in a window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brewer_cli.errors import DataError


class EncodeWindows:
    """A batch of questions → their windows (a class, so worker processes receive it by
    pickling). A training window carries the answer's token positions (the [CLS] position when the
    answer is not wholly inside it); an eval window its offsets, question and [CLS] position, for
    decoding spans back into the context."""

    def __init__(self, tokenizer: Any, max_length: int, stride: int, for_eval: bool, where: str):
        self.tokenizer, self.max_length, self.stride, self.for_eval, self.where = tokenizer, max_length, stride, for_eval, where

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        tokenizer = self.tokenizer
        try:
            encoded = tokenizer(
                batch["question"],
                batch["context"],
                truncation="only_second",
                max_length=self.max_length,
                stride=self.stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
            )
        except Exception as error:  # the Rust tokenizer reports a stride it cannot honour this way
            raise DataError(
                f"{self.where}: the tokenizer could not split the contexts into windows of {self.max_length} tokens "
                f"sharing {self.stride}: {error} — lower task.doc_stride or raise data.max_length"
            ) from None
        cls_id = tokenizer.cls_token_id
        columns: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "context_mask": []}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = []
        if self.for_eval:
            columns.update(offset_mapping=[], example_index=[], cls_index=[])
        else:
            columns.update(start_positions=[], end_positions=[])
        for window in range(len(encoded["input_ids"])):
            question = encoded["overflow_to_sample_mapping"][window]
            input_ids = encoded["input_ids"][window]
            sequence_ids = encoded.sequence_ids(window)
            cls_index = input_ids.index(cls_id) if cls_id in input_ids else 0
            context_mask = [1 if sequence == 1 else 0 for sequence in sequence_ids]
            context_mask[cls_index] = 1
            offsets = [
                tuple(offset) if sequence == 1 else None
                for offset, sequence in zip(encoded["offset_mapping"][window], sequence_ids)
            ]
            columns["input_ids"].append(input_ids)
            columns["attention_mask"].append(encoded["attention_mask"][window])
            if "token_type_ids" in encoded:
                columns["token_type_ids"].append(encoded["token_type_ids"][window])
            columns["context_mask"].append(context_mask)
            if self.for_eval:
                columns["offset_mapping"].append(offsets)
                columns["example_index"].append(indices[question])
                columns["cls_index"].append(cls_index)
            else:
                answer = _Answer(batch["answer_texts"][question], batch["answer_starts"][question])
                start, end = answer_positions(answer, offsets, cls_index)
                columns["start_positions"].append(start)
                columns["end_positions"].append(end)
        return columns


class _Answer:
    """A question's answers as `answer_positions` reads them."""

    def __init__(self, texts: list[str], starts: list[int]):
        self.answer_texts, self.answer_starts = texts, starts


def answer_positions(example: Any, offsets: Sequence[tuple[int, int] | None], cls_index: int) -> tuple[int, int]:
    """Token positions of the (first) answer in one window; (cls, cls) when it is not wholly inside."""
    if not example.answer_texts:
        return cls_index, cls_index
    char_start = example.answer_starts[0]
    char_end = char_start + len(example.answer_texts[0])
    context_tokens = [position for position, offset in enumerate(offsets) if offset is not None]
    if not context_tokens:
        return cls_index, cls_index
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > char_start or offsets[last][1] < char_end:
        return cls_index, cls_index
    # The first token that ends after the answer's start, the last that starts before its end.
    start = next(position for position in context_tokens if offsets[position][1] > char_start)
    end = next(position for position in reversed(context_tokens) if offsets[position][0] < char_end)
    return start, end
