"""Words and their pieces: BERT basic tokenization into words, the word pieces of each word, and
the masked-LM query that masks one of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brewer_cli.errors import ModelError

# NLTK's English stop-word list (179 words), which TinyBERT's own list is built on: function
# words whose replacement changes the grammar rather than the wording.
STOP_WORDS = frozenset(
    """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't
haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
weren weren't won won't wouldn wouldn't
""".split()
)


@dataclass
class Query:
    """One masked-LM question: which word of which field of which example, and its input."""

    example: int
    field: int
    word: int
    input_ids: list[int]
    token_type_ids: list[int]
    position: int  # of the [MASK] piece
    original_id: int


class WordSplitter:
    """BERT basic tokenization (the fast tokenizer's normalizer and pre-tokenizer, or the slow
    tokenizer's BasicTokenizer) and the word pieces of each word."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.normalizer = getattr(backend, "normalizer", None) if backend is not None else None
        self.pre_tokenizer = getattr(backend, "pre_tokenizer", None) if backend is not None else None
        self.basic = getattr(tokenizer, "basic_tokenizer", None)
        if self.pre_tokenizer is None and self.basic is None:
            raise ModelError(
                f"{type(tokenizer).__name__} has neither a pre-tokenizer nor a BasicTokenizer to split words "
                f"with — use a BERT-style (WordPiece) tokenizer"
            )

    def words(self, text: str) -> list[str]:
        if self.pre_tokenizer is not None:
            normalized = self.normalizer.normalize_str(text) if self.normalizer is not None else text
            return [word for word, _ in self.pre_tokenizer.pre_tokenize_str(normalized)]
        return self.basic.tokenize(text)

    def pieces(self, words: list[str]) -> _Pieces:
        return _Pieces(self.tokenizer, words)


class _Pieces:
    """The word-piece ids of one field's words, and masked-LM queries over them."""

    def __init__(self, tokenizer: Any, words: list[str]):
        self.tokenizer = tokenizer
        encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False) if words else {"input_ids": []}
        self.ids: list[int] = list(encoded["input_ids"])
        self.of_word: list[list[int]] = [[] for _ in words]
        if words:
            for position, word in enumerate(encoded.word_ids()):
                if word is not None:
                    self.of_word[word].append(position)

    def query(self, example: int, field: int, word: int, max_length: int) -> Query | None:
        """`[CLS] masked [SEP] original [SEP]` (TinyBERT), or `[CLS] masked [SEP]` when the pair is
        too long; None when the word lies beyond what fits."""
        tokenizer = self.tokenizer
        position = self.of_word[word][0]
        masked = list(self.ids)
        masked[position] = tokenizer.mask_token_id
        first = [tokenizer.cls_token_id] + masked + [tokenizer.sep_token_id]
        if len(first) + len(self.ids) + 1 <= max_length:
            input_ids = first + self.ids + [tokenizer.sep_token_id]
            token_types = [0] * len(first) + [1] * (len(self.ids) + 1)
        else:
            if position + 2 >= max_length:
                return None
            input_ids = first[: max_length - 1] + [tokenizer.sep_token_id]
            token_types = [0] * len(input_ids)
        return Query(example, field, word, input_ids, token_types, position + 1, self.ids[position])
