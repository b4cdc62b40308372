"""The WordPiece vocabulary brewer learns when a recipe says `tokenizer: {train_wordpiece: …}`."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from brewer_cli.recipe import WordPieceTraining
from brewer_cli.tokenizers import train_wordpiece, wordpiece_vocabulary

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_merges_the_most_frequent_pair_and_breaks_ties_by_sorted_order():
    words = Counter({"ab": 2, "ac": 2, "bc": 1})
    assert wordpiece_vocabulary(words, 10, 1, SPECIAL) == [*SPECIAL, "##b", "##c", "a", "b", "ab"]
    assert wordpiece_vocabulary(words, 12, 1, SPECIAL) == [*SPECIAL, "##b", "##c", "a", "b", "ab", "ac", "bc"]


def test_min_frequency_stops_the_merges():
    words = Counter({"ab": 2, "ac": 2, "bc": 1})
    assert wordpiece_vocabulary(words, 100, 2, SPECIAL) == [*SPECIAL, "##b", "##c", "a", "b", "ab", "ac"]


def test_a_merge_inside_a_longer_word_updates_its_neighbouring_pairs():
    # "abab" = a ##b ##a ##b: three pairs tied at 3, (##a, ##b) sorts first; then a ##b ##ab,
    # where (##b, ##ab) sorts before (a, ##b); then a ##bab.
    words = Counter({"abab": 3})
    assert wordpiece_vocabulary(words, 100, 1, SPECIAL) == [*SPECIAL, "##a", "##b", "a", "##ab", "##bab", "abab"]


SCRIPT = """
from brewer_cli.tokenizers import train_wordpiece
from brewer_cli.recipe import WordPieceTraining
from brewer_cli.synthetic import negation_sentiment
texts = [row["text"] for row in negation_sentiment(500, 0)]
tokenizer = train_wordpiece(texts, WordPieceTraining(vocab_size=100))
print(sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]))
"""


def test_the_same_texts_give_the_same_vocabulary_in_every_process():
    # tokenizers' own trainer broke ties by a hash order seeded per process: the vocabulary (and
    # with it every model trained on it) changed from one run to the next.
    outputs = {
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout for _ in range(3)
    }
    assert len(outputs) == 1


def test_the_trained_tokenizer_encodes_like_bert():
    texts = ["the movie was great", "the movie was not great", "a great film"] * 5
    tokenizer = train_wordpiece(texts, WordPieceTraining(vocab_size=60))
    encoded = tokenizer("the movie was great", "a film")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "[CLS]",
        "the",
        "movie",
        "was",
        "great",
        "[SEP]",
        "a",
        "film",
        "[SEP]",
    ]
    assert encoded["token_type_ids"] == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert tokenizer.convert_ids_to_tokens(tokenizer("unseen")["input_ids"]) == ["[CLS]", "[UNK]", "[SEP]"]


def test_a_tokenizer_path_may_name_an_installed_package(tmp_path):
    """`tokenizer: {path: python-package:NAME}` resolves as a model checkpoint does: through the
    installed distributions, with the same message when the package is not installed."""
    import pytest

    from brewer_cli.errors import ModelError
    from brewer_cli.recipe import validate_recipe
    from brewer_cli.tokenizers import checkpoint_location_for_tokenizer

    recipe = validate_recipe(
        {
            "name": "x",
            "task": {"kind": "sequence_classification", "num_labels": 2},
            "data": {"train": {"synthetic": "negation_sentiment", "examples": 8}},
            "model": {"config": "configs/quickstart/student.json"},
            "distillation": {"kind": "trainer"},
        },
        tmp_path / "recipe.yaml",
    )
    with pytest.raises(ModelError) as error:
        checkpoint_location_for_tokenizer("python-package:brewernotinstalled", recipe, "model.tokenizer.path")
    assert (
        "model.tokenizer.path: 'python-package:brewernotinstalled' names the Python package 'brewernotinstalled', which is not installed"
        in str(error.value)
    )
