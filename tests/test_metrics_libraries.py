"""Metrics from the libraries (scikit-learn, scipy, seqeval) against values computed by hand on
small fixed predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from brewer_cli.recipe import TaskSpec
from brewer_cli.tasks import PreparedData, TokenizedDataset
from brewer_cli.tasks.sequence_classification import SequenceClassification, classification_metrics, regression_metrics
from brewer_cli.tasks.token_classification import entity_scores


def one_hot_logits(predicted: list[int], classes: int) -> torch.Tensor:
    logits = torch.zeros(len(predicted), classes)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 1.0
    return logits


def test_binary_classification_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    predicted = [1, 0, 1, 0, 1, 0, 1, 1]
    # TP 3 (0, 2, 6), FN 1 (1), FP 2 (4, 7), TN 2 (3, 5).
    metrics = classification_metrics(np.array(predicted), np.array(labels), 2)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    # class 1: P 3/5, R 3/4 → F1 2/3; class 0: P 2/3, R 2/4 → F1 4/7.
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    # (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 − 2) / √(5·4·4·3)
    assert metrics["matthews_correlation"] == pytest.approx(4 / math.sqrt(240))


def test_three_classes_by_hand_through_the_task():
    labels = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 1, 2, 0]
    task = SequenceClassification(TaskSpec(kind="sequence_classification", num_labels=3))
    data = PreparedData(train=TokenizedDataset({}), eval=TokenizedDataset({"labels": labels}), label_names=["a", "b", "c"])
    # Two batches, the second's examples listed first: metrics follow the indices, not the order.
    logits = one_hot_logits(predicted, 3)
    metrics = task.compute_metrics([logits[3:], logits[:3]], [3, 4, 5, 0, 1, 2], data)
    assert set(metrics) == {"accuracy", "macro_f1", "matthews_correlation"}  # binary F1 only for two classes
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: a 1/2 (P 1/2, R 1/2), b 4/5 (P 2/3, R 1), c 2/3 (P 1, R 1/2).
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # Multi-class MCC: (c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²)), c = 4 correct, s = 6,
    # predicted counts p = (2, 3, 1), true counts t = (2, 2, 2).
    assert metrics["matthews_correlation"] == pytest.approx((4 * 6 - 12) / math.sqrt((36 - 14) * (36 - 12)))
    assert task.primary_metric == "accuracy"


def test_regression_correlations_with_ties_by_hand():
    scores = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    labels = np.array([2.0, 1.0, 3.0, 3.0, 4.0])
    metrics = regression_metrics(scores, labels)
    # Pearson: deviations from 2.6 each; Σdxdy 5.2, Σdx² 9.2, Σdy² 5.2.
    assert metrics["pearson"] == pytest.approx(5.2 / math.sqrt(9.2 * 5.2))
    # Spearman on mean ranks of ties: (1, 2.5, 2.5, 4, 5) and (2, 1, 3.5, 3.5, 5) → 7.25 / 9.5.
    assert metrics["spearman"] == pytest.approx(7.25 / 9.5)
    assert metrics["mse"] == pytest.approx(4 / 5)


def test_regression_through_the_task_is_primary_pearson():
    task = SequenceClassification(TaskSpec(kind="sequence_classification", num_labels=1))
    labels = [2.0, 1.0, 3.0, 3.0, 4.0]
    data = PreparedData(train=TokenizedDataset({}), eval=TokenizedDataset({"labels": labels}), label_names=None)
    metrics = task.compute_metrics([torch.tensor([[1.0], [2.0], [2.0], [3.0], [5.0]])], [0, 1, 2, 3, 4], data)
    assert task.primary_metric == "pearson"
    assert metrics["pearson"] == pytest.approx(math.sqrt(5.2 / 9.2))
    assert metrics["spearman"] == pytest.approx(29 / 38)


def test_constant_predictions_have_no_correlation_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = regression_metrics(np.full(4, 0.5), np.array([0.0, 1.0, 2.0, 3.0]))
    assert metrics["pearson"] == 0.0 and metrics["spearman"] == 0.0
    assert metrics["mse"] == pytest.approx((0.25 + 0.25 + 2.25 + 6.25) / 4)


def test_one_predicted_class_scores_zero_not_an_error():
    metrics = classification_metrics(np.zeros(4, dtype=int), np.array([0, 1, 0, 1]), 2)
    assert metrics == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3) / 2), "matthews_correlation": 0.0, "f1": 0.0}


def test_ner_scores_strict_entities_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]
    scores = entity_scores(gold, predicted)
    # Gold entities: PER(0-1), LOC(3), ORG(0). Predicted: PER(0-1), ORG(3) and, under strict IOB2,
    # nothing for the I-ORG that starts without B-: 1 correct of 2 predicted and 3 gold.
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert (scores["f1_PER"], scores["f1_LOC"], scores["f1_ORG"]) == (1.0, 0.0, 0.0)
