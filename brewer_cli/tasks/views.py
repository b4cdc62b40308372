"""Teachers that read the text through a different tokenizer than the student.

Sequence-level outputs (one row of logits per example) can be combined however each model splits
the text, so a teacher with its own tokenizer reads the same examples tokenized its way. They are
tokenized once, when the run is built, into extra columns beside the student's —
`teacher_<k>_input_ids`, `teacher_<k>_attention_mask` and `teacher_<k>_token_type_ids` — and each
batch pads them to their own longest length. Teachers that share one tokenizer share one set of
columns (k is the first of them); teachers that share the student's read the student's columns.

Token-level tasks compare logits position by position, which only means something when teacher
and student split the text the same way: they need the student's tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from brewer_cli.errors import DataError, ModelError
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.base import PreparedData
from brewer_cli.tokenizers import tokenizer_definition

SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def column_prefix(owner: int) -> str:
    return f"teacher_{owner}_"


def same_tokenizer(first: Any, second: Any) -> bool:
    """Whether two tokenizers turn every text into the same ids: the same normalizer,
    pre-tokenizer, model (vocabulary) and post-processor."""
    if first is second:
        return True
    return tokenizer_definition(first) == tokenizer_definition(second)


def column_owners(teacher_tokenizers: Sequence[Any], student_tokenizer: Any) -> list[int | None]:
    """For each teacher, the index of the teacher whose columns it reads, or None when it reads
    the student's (same tokenizer)."""
    owners: list[int | None] = []
    for index, tokenizer in enumerate(teacher_tokenizers):
        if same_tokenizer(tokenizer, student_tokenizer):
            owners.append(None)
            continue
        shared = next(
            (
                earlier
                for earlier in range(index)
                if owners[earlier] == earlier and same_tokenizer(teacher_tokenizers[earlier], tokenizer)
            ),
            index,
        )
        owners.append(shared)
    return owners


def sequence_level_task_names() -> list[str]:
    """The registered tasks with one row of logits per example (`Task.sequence_level`): the only
    ones whose teachers may tokenize differently."""
    return [entry.name for entry in TASKS if entry.value.sequence_level]


def require_sequence_level(task: Any, field: str, where: str) -> None:
    """A token-level task with a teacher whose tokenizer differs from the student's: say why not."""
    if not task.sequence_level:
        raise ModelError(
            f"{where}{field}: this teacher's tokenizer differs from the student's; for {task.name} the teacher's and "
            f"the student's logits are compared token by token, which needs one tokenizer — use teachers that share "
            f"the student's tokenizer (different tokenizers work for {', '.join(sequence_level_task_names())} only)"
        )


def add_view_columns(data: PreparedData, view: PreparedData, prefix: str, where: str) -> None:
    """Copy `view`'s token columns (the same examples, tokenized the teacher's way) into `data`
    under `prefix`."""
    for split in ("train", "eval"):
        target, source = getattr(data, split), getattr(view, split)
        if target is None:
            continue
        if source is None or len(source) != len(target):
            raise DataError(
                f"{where}: data.{split}: the teacher's tokenizer gives {0 if source is None else len(source)} examples "
                f"but the student's {len(target)}; a teacher with its own tokenizer needs one example per row"
            )
        setattr(data, split, target.with_columns(source, prefix, SEQUENCE_KEYS))


def view_batch(batch: dict[str, torch.Tensor], prefix: str | None) -> dict[str, torch.Tensor]:
    """The batch as a teacher reads it: its own token columns under the usual names."""
    if prefix is None:
        return batch
    view = {key: value for key, value in batch.items() if key not in SEQUENCE_KEYS}
    for key in SEQUENCE_KEYS:
        if prefix + key in batch:
            view[key] = batch[prefix + key]
    return view


class ViewCollate:
    """The task's collate plus the teachers' own token columns, each padded to its own longest
    sequence (dynamic padding, as for the student's)."""

    def __init__(self, collate: Callable, pad_ids: dict[str, int]):
        self.collate = collate
        self.pad_ids = pad_ids

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        for prefix, pad_id in self.pad_ids.items():
            longest = max(len(item[prefix + "input_ids"]) for item in items)
            for key in SEQUENCE_KEYS:
                name = prefix + key
                if name not in items[0]:
                    continue
                fill = pad_id if key == "input_ids" else 0
                batch[name] = torch.tensor(
                    [list(item[name]) + [fill] * (longest - len(item[name])) for item in items], dtype=torch.long
                )
        return batch


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
