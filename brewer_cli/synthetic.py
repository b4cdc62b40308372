"""Synthetic datasets the project generates itself, so that the quickstart and the tests run offline.

`negation_sentiment`: movie-review-like sentences whose label is the sentiment of the clause about
the film, with negation ("was not great"), contrast ("everyone said it was great but it was dull":
the clause after "but" wins), distractor clauses about other things ("the popcorn was awful") and
3% label noise, so that no model reaches 100% and a small model has to learn word order, not
keywords.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from brewer_cli.registry import Registry

GENERATORS: Registry[Callable[[int, int], list[dict]]] = Registry("synthetic dataset")

POSITIVE = [
    "great",
    "wonderful",
    "brilliant",
    "moving",
    "superb",
    "delightful",
    "charming",
    "gripping",
    "clever",
    "beautiful",
    "fun",
    "touching",
]
NEGATIVE = ["boring", "awful", "dull", "terrible", "clumsy", "tedious", "bland", "messy", "painful", "silly", "weak", "lifeless"]
TARGETS = ["the movie", "the film", "this picture", "the story", "the plot", "the acting", "the script", "the ending"]
OTHERS = [
    "the popcorn",
    "the seats",
    "the weather",
    "the trailer",
    "the parking",
    "the ticket price",
    "the sound in the hall",
    "my neighbour",
]
NEGATORS = ["not", "never", "hardly", "not at all"]
INTENSIFIERS = ["", "", "very", "really", "quite", "truly", "rather", "so"]
OPENERS = ["", "", "honestly ,", "to be fair ,", "in the end ,", "overall ,", "i think", "sadly ,", "frankly ,"]
HEARSAY = ["everyone said", "the critics claimed", "i expected that", "my friend told me", "the poster promised"]
VERBS = ["was", "is", "felt", "seemed"]


def _clause(rng: random.Random, subject: str, positive: bool, allow_negation: bool = True) -> tuple[str, bool]:
    """A clause about `subject`; returns its text and the sentiment it expresses."""
    negated = allow_negation and rng.random() < 0.35
    # A negated clause expresses the opposite of its adjective's polarity.
    adjective_positive = positive != negated
    adjective = rng.choice(POSITIVE if adjective_positive else NEGATIVE)
    words = [subject, rng.choice(VERBS)]
    if negated:
        words.append(rng.choice(NEGATORS))
    intensifier = rng.choice(INTENSIFIERS)
    if intensifier:
        words.append(intensifier)
    words.append(adjective)
    return " ".join(words), positive


def negation_sentiment(examples: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(examples):
        positive = rng.random() < 0.5
        main, _ = _clause(rng, rng.choice(TARGETS), positive)
        form = rng.random()
        if form < 0.3:
            text = main
        elif form < 0.55:
            distractor, _ = _clause(rng, rng.choice(OTHERS), rng.random() < 0.5)
            text = f"{distractor} but {main}" if rng.random() < 0.5 else f"{main} although {distractor}"
        elif form < 0.8:
            # Hearsay states the opposite of the verdict; the clause after "but" is what counts.
            claim, _ = _clause(rng, rng.choice(TARGETS), not positive, allow_negation=False)
            text = f"{rng.choice(HEARSAY)} {claim} but {main}"
        else:
            distractor, _ = _clause(rng, rng.choice(OTHERS), rng.random() < 0.5)
            claim, _ = _clause(rng, rng.choice(TARGETS), not positive, allow_negation=False)
            text = f"{distractor} and {rng.choice(HEARSAY)} {claim} , but {main}"
        opener = rng.choice(OPENERS)
        text = f"{opener} {text}".strip()
        label = positive if rng.random() >= 0.03 else not positive
        rows.append({"text": text, "label": "positive" if label else "negative"})
    return rows


GENERATORS.add(
    "negation_sentiment",
    negation_sentiment,
    "movie-review sentences with negation, contrast and distractor clauses; labels positive/negative, 3% noise",
)
