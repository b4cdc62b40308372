"""The official SQuAD evaluation scripts, v1.1 (`evaluate-v1.1.py`) and v2.0 (`evaluate-v2.0.py`):
answer normalization, exact match and token F1, the best over the gold answers, averaged over
questions, and for v2 the scores on answerable / unanswerable questions and the best no-answer
thresholds.

The two scripts differ on empty answers, and each is followed exactly:
- v1.1 keeps every gold answer, also one that normalizes to the empty string (gold `The`,
  prediction `the`: exact match 1), and its F1 is 0 when no token is shared, even between two
  empty answers; a question without a prediction scores 0.
- v2.0 drops gold answers that normalize to the empty string (an unanswerable question's only
  right answer is ""), and its F1 of two empty answers is 1.
"""

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


def f1_score(prediction: str, truth: str, version_2: bool = False) -> float:
    """Token F1 of the normalized answers. An empty side: v1.1 gives 0 (no shared token), v2.0
    gives 1 when both are empty and 0 otherwise."""
    predicted_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    if version_2 and (not predicted_tokens or not truth_tokens):
        return float(predicted_tokens == truth_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: dict[str, str],
    gold: dict[str, list[str]],
    version_2: bool = False,
    no_answer_scores: dict[str, float] | None = None,
) -> dict[str, float]:
    """The official script's report, on the 0…100 scale.

    v1.1: `exact_match` and `f1`. v2.0: `exact`, `f1`, `total`, `HasAns_exact` / `HasAns_f1` /
    `HasAns_total` and `NoAns_…` (each when such questions exist), and — given a no-answer score per
    question (`no_answer_scores`, the script's `--na-prob-file`: higher means more likely
    unanswerable) — `best_exact`, `best_exact_thresh`, `best_f1`, `best_f1_thresh`. The v2 report
    also keeps brewer's own names: `exact_match`, `has_answer_exact_match`, `has_answer_f1`,
    `no_answer_exact_match`, `no_answer_f1`.
    """
    if not version_2:
        return _v1_scores(predictions, gold)
    return _v2_scores(predictions, gold, no_answer_scores)


def _v1_scores(predictions: dict[str, str], gold: dict[str, list[str]]) -> dict[str, float]:
    exact = f1 = 0.0
    for identifier, truths in gold.items():
        # The official script: an unanswered question scores 0 (and still counts in the total).
        if identifier not in predictions or not truths:
            continue
        prediction = predictions[identifier]
        exact += max(exact_match(prediction, truth) for truth in truths)
        f1 += max(f1_score(prediction, truth) for truth in truths)
    count = max(len(gold), 1)
    return {"exact_match": 100.0 * exact / count, "f1": 100.0 * f1 / count}


def _v2_scores(
    predictions: dict[str, str], gold: dict[str, list[str]], no_answer_scores: dict[str, float] | None
) -> dict[str, float]:
    # A question without a prediction is scored as the empty answer (the official script would
    # fail on it); brewer predicts every question it evaluates.
    answers = {identifier: predictions.get(identifier, "") for identifier in gold}
    exact_raw, f1_raw = {}, {}
    for identifier, truths in gold.items():
        truths = [truth for truth in truths if normalize_answer(truth)] or [""]
        exact_raw[identifier] = max(exact_match(answers[identifier], truth) for truth in truths)
        f1_raw[identifier] = max(f1_score(answers[identifier], truth, version_2=True) for truth in truths)
    has_answer = {identifier: bool(truths) for identifier, truths in gold.items()}
    # The script's no-answer threshold (default 1.0): a question whose no-answer score is above it
    # counts as predicted unanswerable, right only when it is.
    scores = no_answer_scores or {}
    exact = _apply_threshold(exact_raw, scores, has_answer)
    f1 = _apply_threshold(f1_raw, scores, has_answer)
    report = _averages(exact, f1, list(gold))
    for prefix, keep in (("HasAns", True), ("NoAns", False)):
        subset = [identifier for identifier, answerable in has_answer.items() if answerable == keep]
        if subset:
            report.update({f"{prefix}_{name}": value for name, value in _averages(exact, f1, subset).items()})
    if no_answer_scores is not None:
        report["best_exact"], report["best_exact_thresh"] = _best_threshold(answers, exact_raw, scores, has_answer)
        report["best_f1"], report["best_f1_thresh"] = _best_threshold(answers, f1_raw, scores, has_answer)
    # brewer's own names for the same figures (read by earlier reports and benchmarks).
    aliases = {"exact_match": "exact"}
    for prefix, name in (("HasAns", "has_answer"), ("NoAns", "no_answer")):
        aliases.update({f"{name}_exact_match": f"{prefix}_exact", f"{name}_f1": f"{prefix}_f1"})
    report.update({alias: report[official] for alias, official in aliases.items() if official in report})
    return report


NO_ANSWER_THRESHOLD = 1.0


def _apply_threshold(raw: dict[str, float], no_answer_scores: dict[str, float], has_answer: dict[str, bool]) -> dict[str, float]:
    return {
        identifier: float(not has_answer[identifier]) if no_answer_scores.get(identifier, 0.0) > NO_ANSWER_THRESHOLD else score
        for identifier, score in raw.items()
    }


def _averages(exact: dict[str, float], f1: dict[str, float], identifiers: list[str]) -> dict[str, float]:
    total = len(identifiers)
    if not total:
        return {"exact": 0.0, "f1": 0.0, "total": 0}
    return {
        "exact": 100.0 * sum(exact[i] for i in identifiers) / total,
        "f1": 100.0 * sum(f1[i] for i in identifiers) / total,
        "total": total,
    }


def _best_threshold(
    answers: dict[str, str], raw: dict[str, float], no_answer_scores: dict[str, float], has_answer: dict[str, bool]
) -> tuple[float, float]:
    """The official `find_best_thresh`: start with every question predicted unanswerable, then, in
    rising order of no-answer score, let each keep its prediction; the best score on the way and the
    no-answer score where it was reached (answering questions with a score up to it is best)."""
    score = best = sum(1 for answerable in has_answer.values() if not answerable)
    threshold = 0.0
    for identifier in sorted(raw, key=lambda key: no_answer_scores.get(key, 0.0)):
        if has_answer[identifier]:
            score += raw[identifier]
        elif answers[identifier]:
            score -= 1
        if score > best:
            best, threshold = score, no_answer_scores.get(identifier, 0.0)
    return 100.0 * best / max(len(raw), 1), threshold
