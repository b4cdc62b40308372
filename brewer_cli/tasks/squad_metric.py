"""The official SQuAD v1.1 / v2.0 evaluation: answer normalization, exact match and token F1, the
best over the gold answers, averaged over questions."""

from __future__ import annotations

import collections
import re
import string


def normalize_answer(text: str) -> str:
    """The official SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    predicted_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    if not predicted_tokens or not truth_tokens:
        # SQuAD v2's rule: an empty answer scores 1 only against an empty answer.
        return float(predicted_tokens == truth_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], gold: dict[str, list[str]], version_2: bool = False) -> dict[str, float]:
    """Exact match and F1 (0…100), each the max over a question's gold answers; an unanswerable
    question's gold is the empty answer."""
    exact, f1 = {}, {}
    for identifier, truths in gold.items():
        truths = [truth for truth in truths if normalize_answer(truth)] or [""]
        prediction = predictions.get(identifier, "")
        exact[identifier] = max(exact_match(prediction, truth) for truth in truths)
        f1[identifier] = max(f1_score(prediction, truth) for truth in truths)
    count = max(len(gold), 1)
    scores = {"exact_match": 100.0 * sum(exact.values()) / count, "f1": 100.0 * sum(f1.values()) / count}
    if version_2:
        for name, keep in (("has_answer", True), ("no_answer", False)):
            subset = [identifier for identifier, truths in gold.items() if bool(truths) == keep]
            if subset:
                scores[f"{name}_exact_match"] = 100.0 * sum(exact[i] for i in subset) / len(subset)
                scores[f"{name}_f1"] = 100.0 * sum(f1[i] for i in subset) / len(subset)
    return scores
