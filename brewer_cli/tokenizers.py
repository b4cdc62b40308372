"""Tokenizers: loading one from a checkpoint or tokenizer directory, the student's own, and the
deterministic WordPiece vocabulary brewer trains when a recipe says `train_wordpiece`."""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from brewer_cli.errors import ModelError
from brewer_cli.models import PACKAGE_PREFIX, checkpoint_location, first_line, recipe_prefix
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import Recipe, TokenizerSpec, WordPieceTraining


def load_tokenizer_dir(location: str, recipe: Recipe | None, field: str, required: bool = True) -> Any:

    try:
        return AutoTokenizer.from_pretrained(location)
    except Exception as error:
        if not required:
            return None
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: could not load a tokenizer from {location!r}: {first_line(error)}"
        ) from None


def build_tokenizer(spec: TokenizerSpec, texts: list[str], recipe: Recipe, field: str, generates_text: bool = False) -> Any:
    """`generates_text`: the tokenizer of a language model (task causal_lm), see `train_wordpiece`."""
    if spec.path is not None:
        location = checkpoint_location_for_tokenizer(spec.path, recipe, f"{field}.path")
        return load_tokenizer_dir(location, recipe, f"{field}.path")
    return train_wordpiece(texts, spec.train_wordpiece, generates_text)


def own_student_tokenizer(recipe: Recipe, texts: Callable[[], list[str]], generates_text: bool = False) -> Any | None:
    """The student's own tokenizer when the recipe gives it one — `student.tokenizer` (a WordPiece
    vocabulary trained on `texts()`, called only then) or the tokenizer saved with a student
    checkpoint — else None, and the caller falls back to a teacher's. `generates_text`: the task's
    (a language model's trained WordPiece does not wrap text in [CLS] … [SEP], see `train_wordpiece`)."""
    spec = recipe.student
    if spec.tokenizer is not None:
        return build_tokenizer(
            spec.tokenizer,
            texts() if spec.tokenizer.train_wordpiece is not None else [],
            recipe,
            "student.tokenizer",
            generates_text=generates_text,
        )
    if spec.checkpoint is not None:
        location = checkpoint_location(spec.checkpoint, recipe, "student.checkpoint")
        return load_tokenizer_dir(location, recipe, "student.checkpoint", required=False)
    return None


def checkpoint_location_for_tokenizer(value: str, recipe: Recipe, field: str) -> str:
    if value.startswith(PACKAGE_PREFIX):
        # A tokenizer shipped with a checkpoint in an installed package, named as models are.
        return checkpoint_location(value, recipe, field)
    path = resolve_path(value, recipe)
    if path.exists() or looks_like_hub_id(value):
        return str(path) if path.exists() else value
    raise ModelError(f"{recipe_prefix(recipe)}{field}: tokenizer {value!r} not found (looked at {path})")


def train_wordpiece(texts: list[str], settings: WordPieceTraining, generates_text: bool = False) -> Any:
    """A BERT-style WordPiece tokenizer trained on the given texts, built locally (no hub).

    The vocabulary is learnt by `wordpiece_vocabulary`, not by `tokenizers`' WordPieceTrainer:
    that trainer breaks ties between equally frequent pairs by hash-map order, which is seeded
    afresh in every process, so the same texts gave a different vocabulary (and a different
    model) from one run to the next.

    `generates_text`: for a language model, text is not wrapped in [CLS] … [SEP] (a decoder reads
    plain text and learns where it ends), and [SEP] is the end-of-sequence token that closes each
    document and completion and stops generation."""

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=settings.lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocabulary = wordpiece_vocabulary(words, settings.vocab_size, settings.min_frequency, special)
    tokenizer = Tokenizer(models.WordPiece({token: number for number, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.add_special_tokens(special)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if not generates_text:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        **({"eos_token": "[SEP]"} if generates_text else {}),
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def wordpiece_vocabulary(words: Counter[str], vocab_size: int, min_frequency: int, special: list[str]) -> list[str]:
    """The WordPiece vocabulary BERT's recipe learns, deterministically.

    Each word starts as its characters (pieces after the first carry `##`); the most frequent
    adjacent pair is merged, again and again, until the vocabulary (special tokens, every
    character, every merge) reaches `vocab_size` or no pair occurs `min_frequency` times. Ties
    go to the pair that sorts first, so the same words always give the same vocabulary. Pair
    counts are updated only for the words a merge touches, as in `tokenizers`' trainer."""

    ordered = sorted(words)
    splits = [[word[0], *(f"##{character}" for character in word[1:])] for word in ordered]
    counts = [words[word] for word in ordered]
    vocabulary = list(special)
    known = set(vocabulary)
    for symbol in sorted({symbol for split in splits for symbol in split}):
        if symbol not in known:
            known.add(symbol)
            vocabulary.append(symbol)
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for number, split in enumerate(splits):
        for pair in zip(split, split[1:]):
            pair_counts[pair] += counts[number]
            where[pair].add(number)
    # Max-heap on count, then the pair in sorted order; entries whose count changed are stale
    # and skipped when popped (the current count was pushed when it changed).
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocabulary) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue
        if -negative < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]
        changed: set[tuple[str, str]] = set()
        for number in sorted(where.pop(pair, ())):
            split, count = splits[number], counts[number]
            for old in zip(split, split[1:]):
                pair_counts[old] -= count
                changed.add(old)
            position, joined = 0, []
            while position < len(split):
                if position + 1 < len(split) and split[position] == first and split[position + 1] == second:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(split[position])
                    position += 1
            splits[number] = joined
            for new in zip(joined, joined[1:]):
                pair_counts[new] += count
                where[new].add(number)
                changed.add(new)
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count <= 0:
                pair_counts.pop(changed_pair, None)
                where.pop(changed_pair, None)
            else:
                heapq.heappush(heap, (-count, changed_pair))
        if merged not in known:
            known.add(merged)
            vocabulary.append(merged)
    return vocabulary


def tokenizer_definition(tokenizer: Any) -> Any:
    """What decides the ids a tokenizer gives, in a comparable form (the teacher cache's
    fingerprint hashes it too)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation and padding are the settings of the last call, not part of the tokenizer.
        state.pop("truncation", None)
        state.pop("padding", None)
        return ("fast", state)
    return (type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), getattr(tokenizer, "do_lower_case", None))
