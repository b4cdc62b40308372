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

import io
from pathlib import Path
from typing import Any

from brewer_cli.errors import BrewerError, DataError
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import DataSource, Recipe, read_utf8
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset
from brewer_cli.tasks.data import column, read_source

# Plain-text corpora: one document or sentence per line, whatever the other formats say about .txt.
TEXT_SUFFIXES = (".txt", ".text")


class GeneralCorpus(Task):
    name = "masked_lm"
    auto_class_name = "AutoModel"
    primary_metric = "loss"
    greater_is_better = False
    # The training loop asks the distiller for its loss on the eval split instead of task metrics.
    measured_by_distillation_loss = True
    # Importance extraction scores the teacher with its pre-training objective (build/loading.py).
    scored_by_pretraining_objective = True

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
        return problems

    # -- data -----------------------------------------------------------------------------------

    def prepare(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        data = recipe.data
        train = self._tokenize(read_texts(data.train, recipe, "data.train"), tokenizer, data.max_length)
        evaluation = None
        if data.eval is not None:
            evaluation = self._tokenize(read_texts(data.eval, recipe, "data.eval"), tokenizer, data.max_length)
        return PreparedData(train=train, eval=evaluation, label_names=None)

    def prepare_eval(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None = None) -> PreparedData:
        raise _no_metric_of_its_own(self.name)

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        return read_texts(recipe.data.train, recipe, "data.train")

    @staticmethod
    def _tokenize(texts: list[str], tokenizer: Any, max_length: int) -> TokenizedDataset:
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        return TokenizedDataset(columns)

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


def read_texts(source: DataSource, recipe: Recipe, field: str) -> list[str]:
    """The non-blank lines of a plain-text file, or the text column of any other source."""
    where = f"{recipe.path}: {field}"
    if source.path is not None and source.format == "auto" and Path(source.path).suffix.lower() in TEXT_SUFFIXES:
        path = resolve_path(source.path, recipe)
        if not path.is_file():
            raise DataError(
                f"{where}.path: corpus file {source.path!r} not found (looked at {path}) — check the path; "
                f"relative paths are read from the current directory or the recipe's folder"
            )
        with io.StringIO(read_utf8(path, DataError, f"{where}: "), newline=None) as handle:
            texts = [line.strip() for line in handle]
        texts = [text for text in texts if text]
        if source.limit is not None:
            texts = texts[: source.limit]
    else:
        rows = read_source(source, recipe, field)
        name = source.text or recipe.data.text
        texts = [str(value).strip() for value in column(rows, name, where, "text") if value is not None]
        # Hub corpora such as wikitext hold blank lines between paragraphs.
        texts = [text for text in texts if text]
    if not texts:
        raise DataError(f"{where}: the corpus has no non-blank line — point it at a file or split with text")
    return texts
