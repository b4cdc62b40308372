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


def _review(rng: random.Random) -> tuple[str, str, bool]:
    """A review, the clause about the film that decides it, and its sentiment."""
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
    return text, main, positive


def negation_sentiment(examples: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(examples):
        text, _, positive = _review(rng)
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


def review_verdicts(examples: int, seed: int) -> list[dict]:
    """The `negation_sentiment` reviews as prompt/completion pairs for a causal language model: the
    prompt is the review, the completion its verdict and the clause it rests on (the one about the
    film that "but" or the sentence's order makes count). A small decoder has to read the whole
    review to complete it, and the completion is short enough to score by token accuracy; `text`
    (prompt and completion) serves plain-text language modelling of the same data."""
    rng = random.Random(seed)
    rows = []
    for _ in range(examples):
        review, main, positive = _review(rng)
        prompt = f"review : {review} . verdict :"
        completion = f"{'positive' if positive else 'negative'} , because {main} ."
        rows.append({"prompt": prompt, "completion": completion, "text": f"{prompt} {completion}"})
    return rows


GENERATORS.add(
    "review_verdicts",
    review_verdicts,
    "the negation_sentiment reviews as prompt/completion pairs for causal LMs: prompt the review, completion its "
    "verdict and the clause it rests on; `text` holds both",
)


# ----------------------------------------------------------------------------- named entities

FIRST_NAMES = ["anna", "peter", "maria", "james", "lena", "omar", "sofia", "daniel", "chen", "laura", "ivan", "grace"]
SURNAMES = ["smith", "novak", "garcia", "okafor", "larsen", "tanaka", "moreau", "kowalski", "silva", "brennan"]
PLACES = ["paris", "lagos", "oslo", "lima", "cairo", "denver", "porto", "kyoto", "dublin", "nairobi", "new delhi", "san diego"]
ORGANISATION_HEADS = ["acme", "northwind", "bluebird", "helix", "summit", "orion", "cedar", "falcon"]
ORGANISATION_TAILS = [["corp"], ["bank"], ["airlines"], ["university"], ["football", "club"], ["labs"], ["group"]]
# Words that are a person in one sentence and a place in another: only the context tells them apart.
AMBIGUOUS = ["jordan", "washington", "georgia", "chad", "austin", "florence"]
DAYS = ["on monday", "on friday", "last week", "in march", "yesterday", "this morning"]


def _person(rng: random.Random) -> list[tuple[str, str]]:
    words = [rng.choice(FIRST_NAMES)] + ([rng.choice(SURNAMES)] if rng.random() < 0.7 else [])
    return [(word, ("B-PER" if index == 0 else "I-PER")) for index, word in enumerate(words)]


def _organisation(rng: random.Random) -> list[tuple[str, str]]:
    words = [rng.choice(ORGANISATION_HEADS), *rng.choice(ORGANISATION_TAILS)]
    return [(word, ("B-ORG" if index == 0 else "I-ORG")) for index, word in enumerate(words)]


def _place(rng: random.Random) -> list[tuple[str, str]]:
    words = rng.choice(PLACES).split()
    return [(word, ("B-LOC" if index == 0 else "I-LOC")) for index, word in enumerate(words)]


def _plain(text: str) -> list[tuple[str, str]]:
    return [(word, "O") for word in text.split()]


def entity_sentences(examples: int, seed: int) -> list[dict]:
    """Sentences with people, places and organisations tagged in IOB2 (PER, LOC, ORG), lower-cased
    like the rest of the generated data so that capitalization gives nothing away. Ambiguous names
    ("jordan", "washington") are a person as the subject of "said" / "met" and a place after
    "in" / "to", so a tagger has to read the context, not memorize a word list."""
    rng = random.Random(seed)
    rows = []
    for _ in range(examples):
        ambiguous = rng.choice(AMBIGUOUS)
        patterns = [
            lambda: _person(rng) + _plain("met") + _person(rng) + _plain("in") + _place(rng) + _plain(rng.choice(DAYS)),
            lambda: _person(rng) + _plain("joined") + _organisation(rng) + _plain("after years in") + _place(rng),
            lambda: _organisation(rng) + _plain("opened an office in") + _place(rng) + _plain(rng.choice(DAYS)),
            lambda: [(ambiguous, "B-PER")] + _plain("said that") + _organisation(rng) + _plain("would grow"),
            lambda: _person(rng) + _plain("flew to") + [(ambiguous, "B-LOC")] + _plain(rng.choice(DAYS)),
            lambda: _plain("in") + [(ambiguous, "B-LOC")] + _plain(",") + _person(rng) + _plain("praised") + _organisation(rng),
            lambda: [(ambiguous, "B-PER")] + _plain("met") + _person(rng) + _plain("at") + _organisation(rng),
            lambda: _plain("the weather in") + _place(rng) + _plain("was mild") + _plain(rng.choice(DAYS)),
        ]
        pairs = rng.choice(patterns)()
        rows.append({"tokens": [word for word, _ in pairs], "tags": [tag for _, tag in pairs]})
    return rows


GENERATORS.add(
    "entity_sentences",
    entity_sentences,
    "sentences with people, places and organisations tagged in IOB2 (PER, LOC, ORG); names such as "
    "'jordan' are a person or a place by context",
)
