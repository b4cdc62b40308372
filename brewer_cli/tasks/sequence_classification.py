"""Sequence classification: single sentences and sentence pairs, classification and regression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewer_cli.errors import DataError, ModelError
from brewer_cli.recipe import Recipe
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset
from brewer_cli.tasks.data import column, read_source
from brewer_cli.tasks.formats import whole_number
from brewer_cli.tasks.tokenized_cache import batched_map


class _Encode:
    """A batch of rows → token ids and label ids: the function of the tokenizing `datasets.map`
    (a class, not a closure, so worker processes receive it by pickling)."""

    def __init__(self, task, tokenizer, max_length, text_column, pair_column, label_column, names, where):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.text_column, self.pair_column, self.label_column = text_column, pair_column, label_column
        self.names, self.where = names, where

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        texts = [str(value) for value in batch[self.text_column]]
        pairs = [str(value) for value in batch[self.pair_column]] if self.pair_column else None
        labels = [
            self.task._label_id(value, number, self.names, self.where, self.label_column)
            for number, value in zip(indices, batch[self.label_column])
        ]
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        return columns


def _listed(rows: Any) -> list[dict[str, Any]] | None:
    """The raw eval rows as plain dicts: kept with a cache entry, apart from any file."""
    return rows.to_list() if rows is not None else None


class SequenceClassification(Task):
    name = "sequence_classification"
    auto_class_name = "AutoModelForSequenceClassification"
    sequence_level = True

    @property
    def is_regression(self) -> bool:
        return self.spec.num_labels == 1

    @property
    def primary_metric(self) -> str:  # type: ignore[override]
        return "pearson" if self.is_regression else "accuracy"

    # -- data -----------------------------------------------------------------------------------

    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        data = recipe.data
        train_rows = read_source(data.train, recipe, "data.train")
        eval_rows = read_source(data.eval, recipe, "data.eval") if data.eval is not None else None
        names = list(self.spec.labels) if self.spec.labels else label_names
        if not self.is_regression and names is None:
            names = self._label_names_from(train_rows, data.train.label or data.label, recipe, "data.train")
        if not self.is_regression and self.spec.num_labels is not None and len(names) != self.spec.num_labels:
            field = "task.labels" if self.spec.labels else "task.num_labels"
            raise DataError(
                f"{recipe.path}: {field}: the data has {len(names)} labels ({', '.join(names[:20])}) but "
                f"task.num_labels is {self.spec.num_labels} — make them agree"
            )
        train = self._tokenize(train_rows, recipe, "data.train", data.train, tokenizer, names, work)
        evaluation = (
            self._tokenize(eval_rows, recipe, "data.eval", data.eval, tokenizer, names, work) if eval_rows is not None else None
        )
        return PreparedData(train=train, eval=evaluation, label_names=names, eval_examples=_listed(eval_rows))

    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        data = recipe.data
        rows = read_source(data.eval, recipe, "data.eval")
        names = list(self.spec.labels) if self.spec.labels else label_names
        if not self.is_regression and names is None:
            names = self._label_names_from(rows, data.eval.label or data.label, recipe, "data.eval")
        evaluation = self._tokenize(rows, recipe, "data.eval", data.eval, tokenizer, names, work)
        return PreparedData(train=TokenizedDataset({}), eval=evaluation, label_names=names, eval_examples=_listed(rows))

    def _label_names_from(self, rows, label_column: str, recipe: Recipe, field: str) -> list[str] | None:
        values = column(rows, label_column, f"{recipe.path}: {field}", "label")
        if all(whole_number(value) is not None for value in values):
            # Integer labels keep their ids; names are the ids as text unless the recipe names them.
            count = self.spec.num_labels or (max(whole_number(v) for v in values) + 1)
            return [str(i) for i in range(count)]
        return sorted({str(value) for value in values})

    def _tokenize(self, rows, recipe, field, source, tokenizer, names, work: Path | None) -> TokenizedDataset:
        data = recipe.data
        where = f"{recipe.path}: {field}"
        text_column = source.text or data.text
        pair_column = source.text_pair or data.text_pair
        label_column = source.label or data.label
        for name, role in ((text_column, "text"), (pair_column, "text_pair"), (label_column, "label")):
            if name:
                column(rows.select(range(1)), name, where, role)
        encode = _Encode(self, tokenizer, data.max_length, text_column, pair_column, label_column, names, where)
        return TokenizedDataset(batched_map(rows, encode, data, field, work, with_indices=True, remove_columns=rows.column_names))

    def _label_id(self, value: Any, number: int, names: list[str] | None, where: str, label_column: str):
        if self.is_regression:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise DataError(
                    f"{where}: example {number}: regression label {value!r} in column {label_column!r} is not a number"
                ) from None
        names = names or []
        if str(value) in names:
            return names.index(str(value))
        as_int = whole_number(value)
        if as_int is not None:
            if 0 <= as_int < len(names):
                return as_int
            raise DataError(
                f"{where}: example {number}: label {value!r} is outside task.num_labels={len(names)} "
                f"(valid ids 0…{len(names) - 1}) — fix the data or raise task.num_labels"
            )
        raise DataError(
            f"{where}: example {number}: label {value!r} is not one of the labels ({', '.join(names)}) — "
            f"add it to task.labels or fix the data"
        )

    # -- model ----------------------------------------------------------------------------------

    def model_kwargs(self, label_names: list[str] | None) -> dict[str, Any]:
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        names = label_names or [str(i) for i in range(self.spec.num_labels or 2)]
        return {
            "num_labels": len(names),
            "id2label": {i: name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
            "problem_type": "single_label_classification",
        }

    def check_model(self, model: Any, label_names: list[str] | None, role: str) -> None:
        expected = 1 if self.is_regression else len(label_names or []) or self.spec.num_labels
        if expected and model.config.num_labels != expected:
            raise ModelError(
                f"{role}: the checkpoint's classifier has {model.config.num_labels} labels but the task has "
                f"{expected} — use a checkpoint trained for this task, or set task.num_labels"
            )

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("labels")

    # -- evaluation -----------------------------------------------------------------------------

    def prediction_of(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return logits.float()

    def compute_metrics(self, predictions, indices, data: PreparedData, output_dir=None) -> dict[str, Any]:
        logits = torch.cat(predictions).numpy()
        labels = np.asarray(data.eval.column("labels"))[np.asarray(indices, dtype=np.int64)]
        if self.is_regression:
            return regression_metrics(logits.reshape(-1), labels)
        return classification_metrics(logits.argmax(-1), labels, logits.shape[-1])


def classification_metrics(predicted: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, float]:
    """Accuracy, macro F1 and Matthews correlation (CoLA's metric) from scikit-learn, and with two
    classes the F1 of class 1 (GLUE's F1 for MRPC and QQP, where 1 means paraphrase / duplicate)."""
    # Imported here, at the first evaluation: scikit-learn and scipy add about 100 MiB to a process,
    # which a run without an eval split never needs.
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        # The mean over the classes that occur in the labels or the predictions (scikit-learn's).
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "matthews_correlation": float(matthews_corrcoef(labels, predicted)),
    }
    if classes == 2:
        metrics["f1"] = float(f1_score(labels, predicted, pos_label=1, average="binary", zero_division=0))
    return metrics


def regression_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations (scipy; Spearman ranks ties by their mean rank) and the
    mean squared error. A constant prediction or label column has no correlation: it is reported as
    0.0, not NaN, so that the metric stays comparable for the best checkpoint and writable as JSON."""
    from scipy.stats import pearsonr, spearmanr  # at the first evaluation, as classification_metrics

    scores = scores.astype(np.float64)
    labels = labels.astype(np.float64)
    constant = bool(np.ptp(scores) == 0 or np.ptp(labels) == 0)
    return {
        "pearson": 0.0 if constant else float(pearsonr(scores, labels).statistic),
        "spearman": 0.0 if constant else float(spearmanr(scores, labels).statistic),
        "mse": float(np.mean((scores - labels) ** 2)),
    }
