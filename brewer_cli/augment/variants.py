"""The augmentation itself: each candidate word's replacements, then the variants drawn from them
(see the package docstring)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from brewer_cli.augment.vectors import WordVectors
from brewer_cli.augment.words import STOP_WORDS, Query, WordSplitter
from brewer_cli.recipe import AugmentSpec


def augment_rows(
    rows: list[dict[str, Any]],
    fields: Sequence[str],
    spec: AugmentSpec,
    tokenizer: Any,
    masked_lm: Any = None,
    word_vectors: WordVectors | None = None,
    console: Any = None,
) -> list[dict[str, Any]]:
    """The original rows, each followed by its variants (see the package docstring)."""
    splitter = WordSplitter(tokenizer)
    stop = STOP_WORDS
    # words[e][f]: the words of field f of example e; candidates[e][f]: word index → replacements.
    words = [[splitter.words(str(row[field]) if row.get(field) is not None else "") for field in fields] for row in rows]
    candidates: list[list[dict[int, list[str]]]] = [[{} for _ in fields] for _ in rows]
    queries: list[Query] = []
    by_vectors: list[tuple[int, int, int, str]] = []
    for example, example_words in enumerate(words):
        for field, field_words in enumerate(example_words):
            pieces = splitter.pieces(field_words) if masked_lm is not None else None
            for index, word in enumerate(field_words):
                if word in stop or not any(character.isalnum() for character in word):
                    continue
                if masked_lm is not None and len(pieces.of_word[index]) == 1:
                    query = pieces.query(example, field, index, masked_lm.max_length)
                    if query is not None:
                        queries.append(query)
                elif word_vectors is not None:
                    by_vectors.append((example, field, index, word))
    if queries:
        for query, replacements in zip(queries, masked_lm.predict(queries, spec.candidates, spec.batch_size, console)):
            if replacements:
                candidates[query.example][query.field][query.word] = replacements
    if by_vectors:
        neighbours = word_vectors.neighbours(sorted({word for *_, word in by_vectors}), spec.candidates)
        for example, field, index, word in by_vectors:
            if neighbours.get(word):
                candidates[example][field][index] = neighbours[word]

    output: list[dict[str, Any]] = []
    for example, row in enumerate(rows):
        output.append(row)
        for variant in _variants(words[example], candidates[example], spec, example):
            output.append({**row, **dict(zip(fields, variant))})
    return output


def _variants(
    words: list[list[str]], candidates: list[dict[int, list[str]]], spec: AugmentSpec, example: int
) -> list[tuple[str, ...]]:
    """Up to N_a distinct variants of one example's fields, none equal to the original."""
    if not any(candidates):
        return []
    generator = random.Random(f"{spec.seed}:{example}")
    seen = {tuple(" ".join(field_words) for field_words in words)}
    variants = []
    for _ in range(spec.variants):
        new_fields = []
        for field_words, field_candidates in zip(words, candidates):
            new = list(field_words)
            for index, replacements in field_candidates.items():
                # Drawn before the coin, as in TinyBERT, so the stream does not depend on p.
                choice = generator.choice(replacements)
                if generator.random() < spec.probability:
                    new[index] = choice
            new_fields.append(" ".join(new))
        key = tuple(new_fields)
        if key not in seen:
            seen.add(key)
            variants.append(key)
    return variants
