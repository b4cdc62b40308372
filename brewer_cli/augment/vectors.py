"""Replacements from word vectors: nearest neighbours by cosine similarity, in a GloVe text file
or in a model's input embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from brewer_cli.errors import DataError
from brewer_cli.models import checkpoint_location, load_pretrained, quiet_transformers, recipe_prefix
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import Recipe
from brewer_cli.tokenizers import load_tokenizer_dir

# `word_vectors: embeddings:CHECKPOINT` reads a model's input embeddings instead of a GloVe file.
EMBEDDINGS_PREFIX = "embeddings:"


class WordVectors:
    """Word vectors in GloVe text format, for nearest neighbours by cosine similarity."""

    def __init__(self, words: list[str], vectors: Any, source: str):
        self.words = words
        self.index = {word: number for number, word in enumerate(words)}
        self.unit = torch.nn.functional.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=-1)
        self.source = source

    @classmethod
    def load(cls, value: str, recipe: Recipe | None, field: str) -> WordVectors:
        if value.startswith(EMBEDDINGS_PREFIX):
            return cls.from_embeddings(value[len(EMBEDDINGS_PREFIX) :], recipe, field)
        where = f"{recipe.path}: " if recipe is not None and recipe.path is not None else ""
        path = resolve_path(value, recipe)
        if not path.is_file():
            raise DataError(f"{where}{field}: word-vector file {value!r} not found (looked at {path})")
        words: list[str] = []
        rows: list[Any] = []
        width = None
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                parts = line.rstrip().split(" ")
                if len(parts) < 3:
                    # word2vec's text format starts with a "count width" line; blank lines say nothing.
                    continue
                if width is None:
                    width = len(parts) - 1
                if len(parts) - 1 != width:
                    raise DataError(
                        f"{where}{field}: {path}:{number}: {len(parts) - 1} numbers after the word, but the "
                        f"first vector has {width} — GloVe text format is `word v1 … v{width}` per line"
                    )
                try:
                    rows.append(np.asarray(parts[1:], dtype=np.float32))
                except ValueError:
                    raise DataError(
                        f"{where}{field}: {path}:{number}: not a number among the vector's values — GloVe "
                        f"text format is `word v1 … vd` per line"
                    ) from None
                words.append(parts[0])
        if not words:
            raise DataError(f"{where}{field}: {path} holds no vectors — GloVe text format is `word v1 … vd` per line")
        return cls(words, np.stack(rows), str(path))

    @classmethod
    def from_embeddings(cls, value: str, recipe: Recipe | None, field: str) -> WordVectors:
        """A model's input word embeddings of its whole-word tokens (no `##` pieces, special or
        `[unused]` tokens, nothing without a letter): `embeddings:CHECKPOINT`, the stand-in for
        GloVe where no word-vector file is at hand (e.g. offline). Neighbours in this space are
        often inflections and near-synonyms, but also antonyms, as in any distributional space."""

        location = checkpoint_location(value, recipe, field)
        tokenizer = load_tokenizer_dir(location, recipe, field)
        with quiet_transformers():
            model = load_pretrained(AutoModel, location, f"{recipe_prefix(recipe)}{field}: ")
        matrix = model.get_input_embeddings().weight.detach().float()
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(matrix.shape[0])))
        special = set(tokenizer.all_special_ids)
        keep = [
            index
            for index, token in enumerate(vocabulary)
            if token is not None
            and index not in special
            and not token.startswith("##")
            and not (token.startswith("[") and token.endswith("]"))
            and any(character.isalpha() for character in token)
        ]
        return cls([vocabulary[index] for index in keep], matrix[keep].numpy(), f"{EMBEDDINGS_PREFIX}{location}")

    def neighbours(self, words: Iterable[str], count: int) -> dict[str, list[str]]:
        """The `count` nearest other words of each known word, by cosine similarity."""
        known = [word for word in words if word in self.index]
        result: dict[str, list[str]] = {}
        for start in range(0, len(known), 256):
            chunk = known[start : start + 256]
            rows = torch.tensor([self.index[word] for word in chunk])
            similarity = self.unit[rows] @ self.unit.T
            similarity[torch.arange(len(chunk)), rows] = float("-inf")
            top = similarity.topk(min(count, len(self.words) - 1), dim=-1).indices
            for word, indices in zip(chunk, top.tolist()):
                result[word] = [self.words[index] for index in indices]
        return result
