"""TinyBERT data augmentation (DESIGN.md §8; Jiao et al. 2020, Algorithm 1).

For every example, each text field is split into words by the tokenizer's BERT basic
tokenization (normalizer + pre-tokenizer: lower-casing, accents, punctuation split). A word is a
*candidate* unless it is a stop-word (a built-in English list) or has no letter or digit:

- a word that is a single word piece is masked and the masked LM's top K predictions at that
  position are its replacements (K = 15). As in TinyBERT's code, the masked sentence is paired with
  the original one (`[CLS] masked [SEP] original [SEP]`), so the model sees the context it replaces
  a word of. Word pieces (`##…`), special and `[unused…]` tokens, pieces with no letter or digit and
  the word itself are never candidates;
- a word of several pieces takes its K nearest neighbours by cosine similarity in a word-vector
  file in GloVe text format (`word v1 … vd` per line) when one is given, and otherwise stays. With
  word vectors and no masked LM, every candidate word takes its neighbours.

Then N_a variants are tried (default 20): in each, every candidate word is replaced by one of its
replacements, drawn uniformly, with probability p (default 0.4). Variants equal to the original or
to an earlier variant are dropped, so an example yields at most N_a new ones. The original example
comes first, unchanged; the variants copy every other column (the label, ids) and, for a pair
task, replace each text field. Variant texts are the words joined by spaces (lower-cased for an
uncased tokenizer), as TinyBERT writes them.

Reproducible: example i draws from its own generator seeded by (seed, i), so the result does not
depend on batching. Masked-LM inference is batched, sorted by length. The result is a jsonl or tsv
file keyed by a fingerprint of the data, the masked LM, the word vectors, the tokenizer and the
settings; a second run with the same fingerprint returns the file at once without loading a model
(the fingerprint is stored beside it in `<file>.fingerprint.json`).
"""

from __future__ import annotations

from brewer_cli.augment.command import (
    FINGERPRINT_VERSION,
    OUTPUT_FORMATS,
    AugmentResult,
    augment_command,
    augment_file,
    augment_recipe_data,
    augmented_output,
    cache_directory,
    with_augmented_data,
)
from brewer_cli.augment.masked_lm import MaskedLanguageModel, missing_head_weights
from brewer_cli.augment.variants import augment_rows
from brewer_cli.augment.vectors import EMBEDDINGS_PREFIX, WordVectors
from brewer_cli.augment.words import STOP_WORDS, WordSplitter

__all__ = [
    "EMBEDDINGS_PREFIX",
    "FINGERPRINT_VERSION",
    "OUTPUT_FORMATS",
    "STOP_WORDS",
    "AugmentResult",
    "MaskedLanguageModel",
    "WordSplitter",
    "WordVectors",
    "augment_command",
    "augment_file",
    "augment_recipe_data",
    "augment_rows",
    "augmented_output",
    "cache_directory",
    "missing_head_weights",
    "with_augmented_data",
]
