"""General distillation over unlabeled text (TinyBERT's first phase, DESIGN.md §8).

The corpus is one document or sentence per line: a plain-text file (`.txt`), a column of a
tsv / csv / jsonl file, or a hub dataset's text column (e.g. wikitext's `text`). There are no
labels; every line is tokenized and cut at `data.max_length` (blank lines are dropped).

The models are the bare encoders (`AutoModel`), not `AutoModelForMaskedLM`: general distillation
reads attention scores, hidden states and the embeddings only, so the masked-LM head's
(B, L, vocabulary) logits — 30,522 columns for BERT — are never computed, not merely unused, and
the teacher's decoder is not even loaded. The student's MLM head would never be trained either
(no logit loss), so the general student is written without one; a task recipe that names it
(`student: {checkpoint: runs/<general>/final}`) builds its task head on the encoder.

ETD-Impt (`student.init.extract.strategy: importance`) has no labels and no task head to take
gradients of here: it scores the teacher with its own pre-training objective on masked corpus
text — its masked-LM loss when the checkpoint has the head (loaded for scoring only), otherwise
masked hidden-state reconstruction (brewer_cli/extract/objectives.py).

Evaluation: a student with no head has no metric of its own. The measure of a general
distillation run is the distiller's loss on the eval split (the weighted intermediate losses
against the teacher, averaged over examples): `eval.loss` in metrics.jsonl, lower is better,
which also selects `best/`. MLM perplexity was the alternative, but it needs an MLM head that
this phase does not train (and the offline MiniLM checkpoint does not have one).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from brewer_cli.errors import BrewerError, DataError
from brewer_cli.recipe import DataSource, Recipe
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset
from brewer_cli.tasks.data import TEXT_SUFFIXES, column, local_path, read_source
from brewer_cli.tasks.streams import FileLines, HubLines, PackedStream
from brewer_cli.tasks.text_blocks import BlockShape, frame_tokens, line, line_examples, packed_blocks


class GeneralCorpus(Task):
    name = "masked_lm"
    auto_class_name = "AutoModel"
    primary_metric = "loss"
    greater_is_better = False
    # The training loop asks the distiller for its loss on the eval split instead of task metrics.
    measured_by_distillation_loss = True
    # Importance extraction scores the teacher with its pre-training objective (build/loading.py).
    scored_by_pretraining_objective = True
    masks_inputs = True

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        """General distillation has no labels and no logits: only intermediate matches can teach."""
        if recipe.task is None or recipe.distillation is None:
            return []
        distillation = recipe.distillation
        where = f"{recipe.path}: distillation"
        if not distillation.learns_without_logits:
            return [
                f"{where}.kind: task {recipe.task.kind} (general distillation over unlabeled text) has no labels "
                f"and no logits — use `kind: general` with intermediate matches (tinybert_attention, "
                f"tinybert_hidden), kd_weight: 0"
            ]
        problems = []
        if distillation.kd_weight != 0:
            problems.append(
                f"{where}.kd_weight: task {recipe.task.kind} runs the encoders without their masked-LM "
                f"head, so there are no logits to distill — set `kd_weight: 0` (TinyBERT's general "
                f"distillation uses attention and hidden-state losses only)"
            )
        if distillation.hard_label_weight != 0:
            problems.append(f"{where}.hard_label_weight: task {recipe.task.kind} has no labels — set `hard_label_weight: 0`")
        if not distillation.matches:
            problems.append(
                f"{where}.matches: general distillation learns from intermediate matches only, and none "
                f"are given — e.g. `matches: [{{uniform: true, loss: tinybert_attention}}, {{uniform: true, "
                f"loss: tinybert_hidden, projection: linear, include_embeddings: true}}]`"
            )
        if recipe.data is not None and recipe.data.text_pair is not None:
            problems.append(f"{recipe.path}: data.text_pair: a general corpus is single texts — remove `text_pair`")
        return problems + _stream_problems(recipe)

    # -- data -----------------------------------------------------------------------------------

    def prepare(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        """The splits from the tokenization cache, except a streamed training split: read as the
        run goes (tasks/streams.py)."""
        prepared = super().prepare(recipe, tokenizer, label_names)
        source = recipe.data.train
        if not source.streaming:
            return prepared
        where = f"{recipe.path}: data.train"
        # The process's place among those of a torchrun / accelerate launch (set before any Accelerator).
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if source.hub is not None:
            reader = HubLines(source, source.text or recipe.data.text, where, rank, world)
        else:
            reader = FileLines(local_path(source, recipe, where), where, rank, world)
        segments = "token_type_ids" in tokenizer.model_input_names
        stream = PackedStream(reader, tokenizer, recipe.data.max_length, segments, where, rank, world)
        return replace(prepared, train=stream)

    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        data = recipe.data
        if data.train.streaming:
            # Read as the run goes (`prepare`); only the eval split is tokenized and kept here.
            train = TokenizedDataset({})
        else:
            train = self._tokenize(corpus_rows(data.train, recipe, "data.train"), tokenizer, recipe, "data.train", work)
        evaluation = None
        if data.eval is not None:
            evaluation = self._tokenize(corpus_rows(data.eval, recipe, "data.eval"), tokenizer, recipe, "data.eval", work)
        return PreparedData(train=train, eval=evaluation, label_names=None)

    def prepare_eval(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        raise _no_metric_of_its_own(self.name)

    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        raise _no_metric_of_its_own(self.name)

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        return read_texts(recipe.data.train, recipe, "data.train")

    @staticmethod
    def _tokenize(rows: Any, tokenizer: Any, recipe: Recipe, field: str, work: Path | None) -> TokenizedDataset:
        """Lines → blocks of max_length tokens with `data.packing` (tasks/text_blocks.py), else one
        example per line, cut at max_length."""
        data = recipe.data
        start, end = frame_tokens(tokenizer, f"{recipe.path}: {field}")
        segments = "token_type_ids" in tokenizer.model_input_names
        shape = BlockShape(data.max_length, separator=end, start=start, end=end, segments=segments)
        make = packed_blocks if data.packing else line_examples
        return _non_empty(make(rows, tokenizer, shape, data, field, work), recipe, field)

    # -- model ----------------------------------------------------------------------------------

    def logits(self, outputs: Any) -> None:
        # The bare encoder has no logits; every loss of this task reads intermediate features.
        return None

    def labels(self, batch: Any) -> None:
        return None

    # -- evaluation -----------------------------------------------------------------------------

    # Both are reached only by evaluating a model alone (`brewer eval`), which this task cannot do.

    def prediction_of(self, logits: Any, batch: Any) -> Any:
        raise _no_metric_of_its_own(self.name)

    def compute_metrics(self, predictions, indices, data: PreparedData, output_dir=None) -> dict[str, Any]:
        raise _no_metric_of_its_own(self.name)


def _no_metric_of_its_own(task: str) -> BrewerError:
    return BrewerError(
        f"task {task}: a general-distillation student has no head, so it has no metric of its own — its measure "
        f"is the distillation loss against the teacher on the eval split (eval.loss in the run's metrics.jsonl "
        f"and summary.json); evaluate it after task distillation (a task recipe with "
        f"`student: {{checkpoint: …/final}}`)"
    )


def _stream_problems(recipe: Recipe) -> list[str]:
    """What a streamed training split needs: an epoch defined by steps, a source that can stream."""
    data, where = recipe.data, f"{recipe.path}: data"
    if data is None:
        return []
    problems = []
    if data.eval is not None and data.eval.streaming:
        problems.append(
            f"{where}.eval.streaming: the eval split is read whole, every evaluation the same — remove `streaming` "
            f"(and set `limit: N` for a sample of a large split)"
        )
    cache = getattr(recipe.distillation, "teacher_cache", "off")
    if recipe.task.mask_probability > 0 and cache not in ("auto", "off"):
        problems.append(
            f"{recipe.path}: distillation.teacher_cache: {cache} keeps outputs to reuse, and task.mask_probability "
            f"masks the inputs afresh every epoch — set it to auto or off"
        )
    source = data.train
    if not source.streaming:
        return problems
    if source.synthetic is not None or (source.path is not None and not _is_text_file(source, recipe)):
        problems.append(
            f"{where}.train.streaming: streams read text files (.txt / format: text) or hub datasets — remove "
            f"`streaming` for this source, which is read into Arrow (memory-mapped) instead"
        )
    if source.limit is not None or source.articles is not None:
        problems.append(f"{where}.train.limit: a stream has no length to cut — remove `limit`, or `streaming`")
    if cache not in ("auto", "off"):
        problems.append(
            f"{recipe.path}: distillation.teacher_cache: {cache} keeps outputs to reuse, and a stream gives every "
            f"block once — set it to auto or off"
        )
    training = recipe.training
    if training.max_steps is None and training.steps_per_epoch is None:
        problems.append(
            f"{recipe.path}: training.steps_per_epoch: a stream has no end to define an epoch — set "
            f"training.steps_per_epoch (with training.epochs) or training.max_steps"
        )
    return problems


def _non_empty(examples: TokenizedDataset, recipe: Recipe, field: str) -> TokenizedDataset:
    if not len(examples):
        raise DataError(f"{recipe.path}: {field}: the corpus has no non-blank line — point it at a file or split with text")
    return examples


def corpus_rows(source: DataSource, recipe: Recipe, field: str) -> Any:
    """A corpus split as a Dataset with one column, `text`: the lines of a text file, or the text
    column of any other source (blank lines are dropped when tokenizing)."""
    rows = read_source(source, recipe, field)
    name = "text" if _is_text_file(source, recipe) else source.text or recipe.data.text
    column(rows.select(range(1)), name, f"{recipe.path}: {field}", "text")
    return rows.select_columns([name]).rename_columns({name: "text"}) if name != "text" else rows.select_columns(["text"])


def _is_text_file(source: DataSource, recipe: Recipe) -> bool:
    if source.path is None:
        return False
    return source.format == "text" or (source.format == "auto" and Path(source.path).suffix.lower() in TEXT_SUFFIXES)


def read_texts(source: DataSource, recipe: Recipe, field: str) -> list[str]:
    """The non-blank lines of a plain-text file, or of the text column of any other source."""
    texts = [text for text in (line(value) for value in corpus_rows(source, recipe, field)["text"]) if text]
    if not texts:
        raise DataError(f"{recipe.path}: {field}: the corpus has no non-blank line — point it at a file or split with text")
    return texts
