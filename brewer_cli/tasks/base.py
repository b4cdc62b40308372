"""The task interface: data → tokenized examples, batches, logits for KD, metrics.

A task owns everything that differs between sequence classification, token classification and
question answering; the distillers and the loop never look at task-specific fields.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from brewer_cli.recipe import Recipe, TaskSpec
from brewer_cli.tasks.data import column, read_source, split_as_written
from brewer_cli.tasks.examples import PreparedData, TokenizedDataset
from brewer_cli.tasks.tokenized_cache import cached_preparation

# The examples' types live in tasks/examples.py (the tokenization cache stores them); every task
# imports them from here, with the interface they serve.
__all__ = ["PreparedData", "Task", "TokenizedDataset", "pad_batch", "split_as_written"]


def pad_batch(
    items: Sequence[dict[str, Any]],
    pad_token_id: int,
    sequence_keys: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
    label_key: str | None = "labels",
    label_pad: int = -100,
) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch, never to max_length."""
    longest = max(len(item["input_ids"]) for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key in sequence_keys:
        if key not in items[0]:
            continue
        fill = pad_token_id if key == "input_ids" else 0
        batch[key] = torch.tensor([list(item[key]) + [fill] * (longest - len(item[key])) for item in items], dtype=torch.long)
    if label_key and label_key in items[0]:
        first = items[0][label_key]
        if isinstance(first, (list, tuple)):
            batch[label_key] = torch.tensor(
                [list(item[label_key]) + [label_pad] * (longest - len(item[label_key])) for item in items], dtype=torch.long
            )
        elif isinstance(first, float):
            batch[label_key] = torch.tensor([item[label_key] for item in items], dtype=torch.float)
        else:
            batch[label_key] = torch.tensor([item[label_key] for item in items], dtype=torch.long)
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    return batch


class Task(ABC):
    """Base class; subclasses are registered in `brewer_cli.tasks.TASKS`."""

    name: str = ""
    # The transformers Auto class name for this task's head.
    auto_class_name: str = "AutoModelForSequenceClassification"
    primary_metric: str = "accuracy"
    greater_is_better: bool = True
    # One row of logits per example: teacher and student logits can then be compared however
    # each model splits the text, so a teacher may read it with its own tokenizer (tasks/views.py).
    sequence_level: bool = False
    # A task without labels (general distillation) has no metric of the student alone: the loop
    # measures the distiller's own loss on the eval split instead (`Distiller.evaluate`).
    measured_by_distillation_loss: bool = False
    # ETD importance is scored with the teacher's own pre-training objective (masked LM, or masked
    # hidden-state reconstruction) instead of the task's loss: unlabeled text for general distillation.
    scored_by_pretraining_objective: bool = False
    # compute_metrics writes its predictions into the `output_dir` it is given (QA's predictions.json).
    writes_predictions: bool = False
    # A few greedy generations of fixed eval prompts go into summary.json (`generations`): decoder LMs.
    generates_text: bool = False
    # `distillation.teacher_cache: auto` may keep the teacher's logits: false where they are dense
    # over a vocabulary per token (L × V per example) — a causal LM's; `brewer capture` keeps them sparse.
    caches_teacher_logits: bool = True
    # `task.mask_probability` may mask its inputs on the fly (tasks/streams.py: MaskingCollate).
    masks_inputs: bool = False

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        """Problems only this task can see in a recipe (`file: dotted.path: problem — fix` lines),
        reported by `build.check_names` with every other name problem, before any weight is read."""
        return []

    # -- data -----------------------------------------------------------------------------------

    def prepare(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        """The recipe's splits, tokenized: from the tokenization cache, or built (`build_data`) and
        kept there (brewer_cli.tasks.tokenized_cache)."""
        return cached_preparation(
            self, recipe, tokenizer, label_names, "prepare", lambda work: self.build_data(recipe, tokenizer, label_names, work)
        )

    def prepare_eval(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        """Only the eval split (`brewer eval`: the labels are the trained model's); the train split
        is left empty, so it is neither read nor reported on. Cached like `prepare`."""
        return cached_preparation(
            self,
            recipe,
            tokenizer,
            label_names,
            "prepare_eval",
            lambda work: self.build_eval_data(recipe, tokenizer, label_names, work),
        )

    @abstractmethod
    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        """Read and tokenize the recipe's splits; `work` is a folder for intermediate files (Arrow
        files of a large split's map), removed once the result is stored."""

    @abstractmethod
    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        """Read and tokenize only the eval split."""

    def prepared_state(self) -> dict[str, Any]:
        """What preparing the data sets on the task itself, stored with a cache entry (`restore_state`
        puts it back on a hit)."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Put back what `prepared_state` returned."""

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        """The training split's text, for a WordPiece vocabulary trained on it (`train_wordpiece`)."""
        rows = read_source(recipe.data.train, recipe, "data.train")
        where = f"{recipe.path}: data.train"
        texts = [str(value) for value in column(rows, recipe.data.train.text or recipe.data.text, where, "text")]
        pair = recipe.data.train.text_pair or recipe.data.text_pair
        if pair:
            texts += [str(value) for value in column(rows, pair, where, "text_pair")]
        return texts

    def collate(self, tokenizer: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return lambda items: pad_batch(items, pad_id)

    # -- model ----------------------------------------------------------------------------------

    @property
    def auto_class(self):

        return getattr(transformers, self.auto_class_name)

    def model_kwargs(self, label_names: list[str] | None) -> dict[str, Any]:
        """Arguments for `from_pretrained` / `from_config` that shape the head."""
        return {}

    def logits(self, outputs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return outputs.logits

    def kd_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Which logits positions KD counts: None for one row per example."""
        return None

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("labels")

    def check_model(self, model: Any, label_names: list[str] | None, role: str) -> None:  # noqa: B027 (optional hook)
        """Raise a clear error when a loaded checkpoint's head does not fit the task."""

    # -- evaluation -----------------------------------------------------------------------------

    @abstractmethod
    def compute_metrics(
        self, predictions: list[Any], indices: list[int], data: PreparedData, output_dir: Any = None
    ) -> dict[str, Any]:
        """Metrics from the eval loop's per-batch predictions and the examples' indices."""

    def prediction_of(self, logits: Any, batch: dict[str, torch.Tensor]) -> Any:
        """What the eval loop keeps from a batch's logits, computed on each process BEFORE the
        predictions are gathered across processes (then moved to CPU): a task reduces here what it
        need not keep whole — token-level arg-max, or a language model's per-example loss sums
        instead of (B, L, vocabulary) logits. A tensor of two or more dimensions may differ in its
        second dimension between processes (it is padded there to gather)."""
        return logits

    def generations(self, model: Any, tokenizer: Any, data: PreparedData) -> list[dict[str, str]]:
        """Greedy completions of a few fixed eval prompts, for summary.json (`generates_text`)."""
        return []
