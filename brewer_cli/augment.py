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

import csv
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from brewer_cli.errors import BrewerError, DataError, ModelError
from brewer_cli.recipe import AugmentSpec, DataSource, Recipe

# NLTK's English stop-word list (179 words), which TinyBERT's own list is built on: function
# words whose replacement changes the grammar rather than the wording.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't
haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
weren weren't won won't wouldn wouldn't
""".split())

FINGERPRINT_VERSION = 1
# `word_vectors: embeddings:CHECKPOINT` reads a model's input embeddings instead of a GloVe file.
EMBEDDINGS_PREFIX = "embeddings:"
OUTPUT_FORMATS = (".jsonl", ".tsv")


@dataclass
class AugmentResult:
    path: Path
    examples: int  # examples read
    rows: int  # rows written: the originals and their variants
    seconds: float  # time the augmentation took when it ran (the cached run's own, on a cache hit)
    cached: bool
    fingerprint: str


@dataclass
class _Query:
    """One masked-LM question: which word of which field of which example, and its input."""

    example: int
    field: int
    word: int
    input_ids: list[int]
    token_type_ids: list[int]
    position: int  # of the [MASK] piece
    original_id: int


# ============================================================================= entry points


def augment_rows(rows: list[dict[str, Any]], fields: Sequence[str], spec: AugmentSpec, tokenizer: Any,
                 masked_lm: Any = None, word_vectors: "WordVectors | None" = None,
                 console: Any = None) -> list[dict[str, Any]]:
    """The original rows, each followed by its variants (see the module docstring)."""
    splitter = WordSplitter(tokenizer)
    stop = STOP_WORDS
    # words[e][f]: the words of field f of example e; candidates[e][f]: word index → replacements.
    words = [[splitter.words(str(row[field]) if row.get(field) is not None else "") for field in fields] for row in rows]
    candidates: list[list[dict[int, list[str]]]] = [[{} for _ in fields] for _ in rows]
    queries: list[_Query] = []
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


def _variants(words: list[list[str]], candidates: list[dict[int, list[str]]], spec: AugmentSpec,
              example: int) -> list[tuple[str, ...]]:
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


def augment_file(data: str | Path, spec: AugmentSpec, text: str, text_pair: str | None = None,
                 data_format: str = "auto", limit: int | None = None, console: Any = None) -> AugmentResult:
    """`brewer augment DATA`: augment a data file's `text` (and `text_pair`) column."""
    from brewer_cli.tasks.data import read_source

    source = DataSource(path=str(data), format=data_format, limit=limit)
    rows = read_source(source, _FileOrigin(Path(data)), "data")
    fields = [text] + ([text_pair] if text_pair else [])
    _check_columns(rows, fields, str(data))
    return _augment_cached(rows, fields, spec, _tokenizer_location(spec, None, None), None, console)


def augment_recipe_data(recipe: Recipe, spec: AugmentSpec | None = None, console: Any = None) -> AugmentResult:
    """`brewer augment RECIPE` and `data.augment`: augment the recipe's training split."""
    from brewer_cli.tasks.data import read_source

    spec = spec or recipe.data.augment
    if spec is None:
        raise BrewerError(f"{recipe.path}: data.augment: the recipe does not say how to augment — add "
                          f"`data.augment: {{model: …}}` (a masked LM) or `{{word_vectors: …}}`, or pass --model / --word-vectors")
    if recipe.task is None or recipe.task.kind != "sequence_classification":
        kind = recipe.task.kind if recipe.task is not None else "multi_task"
        raise BrewerError(f"{recipe.path}: data.augment: augmentation rewrites whole texts, which suits sequence "
                          f"classification (single texts and pairs); task {kind} keeps its labels on tokens or spans "
                          f"— remove `data.augment`")
    rows = read_source(recipe.data.train, recipe, "data.train")
    fields = [recipe.data.train.text or recipe.data.text]
    pair = recipe.data.train.text_pair or recipe.data.text_pair
    if pair:
        fields.append(pair)
    _check_columns(rows, fields, f"{recipe.path}: data.train")
    return _augment_cached(rows, fields, spec, _tokenizer_location(spec, recipe, "data.augment"), recipe, console)


def with_augmented_data(recipe: Recipe, console: Any = None) -> Recipe:
    """The recipe with `data.train` replaced by its augmented file (made now, or found in the cache)."""
    result = augment_recipe_data(recipe, console=console)
    if console is not None:
        state = "found in the cache" if result.cached else f"written in {result.seconds:.0f} s"
        console.print(f"augmented training data: {result.examples:,} examples → {result.rows:,} rows, {state}: {result.path}")
    return recipe_on_augmented_data(recipe, result.path)


def recipe_on_augmented_data(recipe: Recipe, path: Path) -> Recipe:
    train = recipe.data.train
    source = DataSource(path=str(path), format="jsonl" if path.suffix == ".jsonl" else "tsv",
                        text=train.text, text_pair=train.text_pair, label=train.label)
    data = recipe.data.model_copy(update={"train": source, "augment": None})
    updated = recipe.model_copy(update={"data": data})
    updated._path = recipe.path
    return updated


def augmented_output(recipe: Recipe) -> Path:
    """Where `data.augment` writes (or finds) the augmented file, without reading any model: for
    the plan of a dry run."""
    from brewer_cli.tasks.data import read_source

    spec = recipe.data.augment
    rows = read_source(recipe.data.train, recipe, "data.train")
    fields = [recipe.data.train.text or recipe.data.text]
    pair = recipe.data.train.text_pair or recipe.data.text_pair
    if pair:
        fields.append(pair)
    fingerprint = _fingerprint(rows, fields, spec, _tokenizer_location(spec, recipe, "data.augment"), recipe)
    return _output_path(spec, fingerprint, recipe)


# ============================================================================= caching


def cache_directory() -> Path:
    """$BREWER_CACHE, else $XDG_CACHE_HOME/brewer, else ~/.cache/brewer."""
    if os.environ.get("BREWER_CACHE"):
        return Path(os.environ["BREWER_CACHE"]).expanduser()
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "brewer"


def _augment_cached(rows: list[dict[str, Any]], fields: list[str], spec: AugmentSpec, tokenizer_location: str,
                    recipe: Recipe | None, console: Any) -> AugmentResult:
    fingerprint = _fingerprint(rows, fields, spec, tokenizer_location, recipe)
    output = _output_path(spec, fingerprint, recipe)
    record_path = output.with_name(output.name + ".fingerprint.json")
    if output.is_file() and record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError:
            record = {}
        if record.get("fingerprint") == fingerprint:
            return AugmentResult(output, len(rows), int(record.get("rows", 0)), float(record.get("seconds", 0.0)),
                                 True, fingerprint)
    start = time.monotonic()
    field = "data.augment" if recipe is not None else None
    masked_lm = MaskedLanguageModel.load(spec.model, recipe, f"{field}.model" if field else "--model") if spec.model else None
    vectors = WordVectors.load(spec.word_vectors, recipe, f"{field}.word_vectors" if field else "--word-vectors") if spec.word_vectors else None
    # The masked LM's own tokenizer decides which words are one piece; without one, any BERT-style tokenizer splits words.
    tokenizer = masked_lm.tokenizer if masked_lm is not None else _load_tokenizer(
        tokenizer_location, recipe, f"{field}.tokenizer" if field else "--tokenizer")
    augmented = augment_rows(rows, fields, spec, tokenizer, masked_lm, vectors, console)
    seconds = time.monotonic() - start
    _write_rows(augmented, output)
    record_path.write_text(json.dumps({"fingerprint": fingerprint, "examples": len(rows), "rows": len(augmented),
                                       "seconds": round(seconds, 2), "settings": spec.model_dump(mode="json")}, indent=2))
    return AugmentResult(output, len(rows), len(augmented), seconds, False, fingerprint)


def _output_path(spec: AugmentSpec, fingerprint: str, recipe: Recipe | None) -> Path:
    if spec.output is None:
        return cache_directory() / "augment" / f"{fingerprint[:24]}.jsonl"
    path = Path(spec.output).expanduser()
    if not path.is_absolute():
        # An output is created, so it cannot be looked up like an input: relative to the current directory.
        path = Path.cwd() / path
    if path.suffix.lower() not in OUTPUT_FORMATS:
        where = f"{recipe.path}: data.augment.output" if recipe is not None else "--output"
        raise BrewerError(f"{where}: {spec.output!r}: the augmented file is written as .jsonl or .tsv — name it so")
    return path


def _fingerprint(rows: list[dict[str, Any]], fields: list[str], spec: AugmentSpec, tokenizer_location: str,
                 recipe: Recipe | None) -> str:
    digest = hashlib.sha256()
    settings = spec.model_dump(mode="json", exclude={"output", "batch_size"})
    settings["model"] = _identity(spec.model, recipe) if spec.model else None
    vectors = spec.word_vectors
    if vectors is not None and vectors.startswith(EMBEDDINGS_PREFIX):
        settings["word_vectors"] = {"embeddings": _identity(vectors[len(EMBEDDINGS_PREFIX):], recipe)}
    else:
        settings["word_vectors"] = _identity(vectors, recipe) if vectors else None
    header = {"version": FINGERPRINT_VERSION, "fields": fields, "settings": settings,
              "tokenizer": _identity(tokenizer_location, recipe)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _identity(value: str, recipe: Recipe | None) -> Any:
    """What a model, tokenizer or file is, for the fingerprint: a local directory or file by its
    files' names, sizes and modification times (hashing gigabytes of weights on every run would
    cost more than it saves); a hub id by its name."""
    from brewer_cli.models import PACKAGE_PREFIX, package_checkpoint
    from brewer_cli.paths import resolve_path

    path = package_checkpoint(value, recipe, "data.augment") if value.startswith(PACKAGE_PREFIX) else resolve_path(value, recipe)
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "modified": stat.st_mtime_ns}
    if path.is_dir():
        files = sorted(item for item in path.rglob("*") if item.is_file())
        return {"directory": str(path.resolve()),
                "files": [[str(item.relative_to(path)), item.stat().st_size, item.stat().st_mtime_ns] for item in files]}
    return {"hub": value}


# ============================================================================= files


class _FileOrigin:
    """Stands in for a recipe when a data file is read on its own (`brewer augment DATA`): messages
    name the file, and relative paths are read from the current directory."""

    data = None

    def __init__(self, path: Path):
        self.path = path


def _check_columns(rows: list[dict[str, Any]], fields: list[str], where: str) -> None:
    from brewer_cli.tasks.data import column

    for role, field in zip(("text", "text_pair"), fields):
        column(rows, field, where, role)


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """jsonl (one JSON object per line) or tsv (a header, tabs and newlines in values turned into
    spaces); written beside the target and renamed, so a crash never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".tsv":
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([" ".join(str(row.get(column, "")).split()) for column in columns])
        else:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    temporary.replace(path)


# ============================================================================= words


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
            raise ModelError(f"{type(tokenizer).__name__} has neither a pre-tokenizer nor a BasicTokenizer to split words "
                             f"with — use a BERT-style (WordPiece) tokenizer")

    def words(self, text: str) -> list[str]:
        if self.pre_tokenizer is not None:
            normalized = self.normalizer.normalize_str(text) if self.normalizer is not None else text
            return [word for word, _ in self.pre_tokenizer.pre_tokenize_str(normalized)]
        return self.basic.tokenize(text)

    def pieces(self, words: list[str]) -> "_Pieces":
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

    def query(self, example: int, field: int, word: int, max_length: int) -> _Query | None:
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
        return _Query(example, field, word, input_ids, token_types, position + 1, self.ids[position])


# ============================================================================= candidates


class MaskedLanguageModel:
    """A masked LM with its head, predicting replacements for masked single-piece words."""

    def __init__(self, model: Any, tokenizer: Any, source: str):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = min(int(getattr(model.config, "max_position_embeddings", 512)), 512)
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
        special = set(tokenizer.all_special_ids)
        # Only whole words can replace a word: no word pieces, special or [unused] tokens, punctuation.
        excluded = [
            index in special or token is None or token.startswith("##") or (token.startswith("[") and token.endswith("]"))
            or not any(character.isalnum() for character in token)
            for index, token in enumerate(vocabulary)
        ]
        self.excluded = torch.tensor(excluded, dtype=torch.bool)
        self.vocabulary = vocabulary

    @classmethod
    def load(cls, value: str, recipe: Recipe | None, field: str) -> "MaskedLanguageModel":
        from transformers import AutoModelForMaskedLM

        from brewer_cli.models import _quiet_transformers, checkpoint_location, load_tokenizer_dir

        where = f"{recipe.path}: " if recipe is not None and recipe.path is not None else ""
        location = checkpoint_location(value, recipe, field)
        try:
            with _quiet_transformers():
                model, info = AutoModelForMaskedLM.from_pretrained(location, output_loading_info=True)
        except Exception as error:
            raise ModelError(f"{where}{field}: could not load {value!r} as a masked LM: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
        missing_head = missing_head_weights(model, info)
        if missing_head:
            raise ModelError(
                f"{where}{field}: {value!r} has no masked-LM head — its checkpoint lacks {', '.join(missing_head[:3])}"
                f"{' …' if len(missing_head) > 3 else ''}, which transformers would fill with random weights, so its "
                f"'predictions' would be noise. Use a checkpoint saved with its MLM head, e.g. bert-base-uncased, "
                f"or give `word_vectors` (GloVe text format) instead"
            )
        tokenizer = load_tokenizer_dir(location, recipe, field)
        if tokenizer.mask_token_id is None:
            raise ModelError(f"{where}{field}: the tokenizer of {value!r} has no mask token — use a masked LM's tokenizer")
        model.eval()
        return cls(model, tokenizer, location)

    def predict(self, queries: list[_Query], count: int, batch_size: int, console: Any = None) -> list[list[str]]:
        """The top `count` whole-word replacements of each query's masked piece."""
        import torch

        device = next(self.model.parameters()).device
        order = sorted(range(len(queries)), key=lambda index: len(queries[index].input_ids))
        results: list[list[str]] = [[] for _ in queries]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with _progress(console, "augment: masked LM", len(queries)) as advance, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = [queries[index] for index in order[start : start + batch_size]]
                longest = max(len(query.input_ids) for query in chosen)
                input_ids = torch.tensor([q.input_ids + [pad] * (longest - len(q.input_ids)) for q in chosen], device=device)
                token_types = torch.tensor([q.token_type_ids + [0] * (longest - len(q.token_type_ids)) for q in chosen], device=device)
                attention = torch.tensor([[1] * len(q.input_ids) + [0] * (longest - len(q.input_ids)) for q in chosen], device=device)
                positions = torch.tensor([q.position for q in chosen], device=device)
                logits = self._logits_at(input_ids, token_types, attention, positions).float()
                logits[:, self.excluded.to(device)] = float("-inf")
                # The word itself is no replacement: a variant that keeps it would only repeat the original.
                logits[torch.arange(len(chosen), device=device), torch.tensor([q.original_id for q in chosen], device=device)] = float("-inf")
                top = logits.topk(min(count, logits.shape[-1]), dim=-1)
                for row, index in enumerate(order[start : start + batch_size]):
                    results[index] = [self.vocabulary[token] for token, score in zip(top.indices[row].tolist(), top.values[row].tolist())
                                      if score != float("-inf")]
                advance(len(chosen))
        return results

    def _logits_at(self, input_ids: Any, token_types: Any, attention: Any, positions: Any) -> Any:
        """Vocabulary logits at the masked positions only: the encoder runs on the whole batch,
        the head on one vector per query (the head on every position would cost as much again as
        a small encoder, and hold B × L × vocabulary floats)."""
        import torch

        model = self.model
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
            inputs["token_type_ids"] = token_types
        head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        if head is None:
            # A family whose head has another name: the full logits, then the masked rows.
            logits = model(**inputs).logits
            return logits[torch.arange(len(positions), device=logits.device), positions]
        hidden = model.base_model(**inputs).last_hidden_state
        return head(hidden[torch.arange(len(positions), device=hidden.device), positions])


def missing_head_weights(model: Any, loading_info: dict[str, Any]) -> list[str]:
    """The head's weights that the checkpoint lacked (transformers initialized them at random);
    tied weights (the decoder sharing the word embeddings) do not count."""
    prefix = f"{model.base_model_prefix}."
    tied = getattr(model, "_tied_weights_keys", None) or {}
    tied_names = set(tied) | (set(tied.values()) if isinstance(tied, dict) else set())
    return sorted(name for name in loading_info.get("missing_keys", ())
                  if not name.startswith(prefix) and name not in tied_names)


class WordVectors:
    """Word vectors in GloVe text format, for nearest neighbours by cosine similarity."""

    def __init__(self, words: list[str], vectors: Any, source: str):
        import torch

        self.words = words
        self.index = {word: number for number, word in enumerate(words)}
        self.unit = torch.nn.functional.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=-1)
        self.source = source

    @classmethod
    def load(cls, value: str, recipe: Recipe | None, field: str) -> "WordVectors":
        import numpy as np

        from brewer_cli.paths import resolve_path

        if value.startswith(EMBEDDINGS_PREFIX):
            return cls.from_embeddings(value[len(EMBEDDINGS_PREFIX):], recipe, field)
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
                    raise DataError(f"{where}{field}: {path}:{number}: {len(parts) - 1} numbers after the word, but the "
                                    f"first vector has {width} — GloVe text format is `word v1 … v{width}` per line")
                try:
                    rows.append(np.asarray(parts[1:], dtype=np.float32))
                except ValueError:
                    raise DataError(f"{where}{field}: {path}:{number}: not a number among the vector's values — GloVe "
                                    f"text format is `word v1 … vd` per line") from None
                words.append(parts[0])
        if not words:
            raise DataError(f"{where}{field}: {path} holds no vectors — GloVe text format is `word v1 … vd` per line")
        return cls(words, np.stack(rows), str(path))

    @classmethod
    def from_embeddings(cls, value: str, recipe: Recipe | None, field: str) -> "WordVectors":
        """A model's input word embeddings of its whole-word tokens (no `##` pieces, special or
        `[unused]` tokens, nothing without a letter): `embeddings:CHECKPOINT`, the stand-in for
        GloVe where no word-vector file is at hand (e.g. offline). Neighbours in this space are
        often inflections and near-synonyms, but also antonyms, as in any distributional space."""
        from transformers import AutoModel

        from brewer_cli.models import _quiet_transformers, checkpoint_location, load_tokenizer_dir

        location = checkpoint_location(value, recipe, field)
        tokenizer = load_tokenizer_dir(location, recipe, field)
        with _quiet_transformers():
            model = AutoModel.from_pretrained(location)
        matrix = model.get_input_embeddings().weight.detach().float()
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(matrix.shape[0])))
        special = set(tokenizer.all_special_ids)
        keep = [index for index, token in enumerate(vocabulary)
                if token is not None and index not in special and not token.startswith("##")
                and not (token.startswith("[") and token.endswith("]")) and any(character.isalpha() for character in token)]
        return cls([vocabulary[index] for index in keep], matrix[keep].numpy(), f"{EMBEDDINGS_PREFIX}{location}")

    def neighbours(self, words: Iterable[str], count: int) -> dict[str, list[str]]:
        """The `count` nearest other words of each known word, by cosine similarity."""
        import torch

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


# ============================================================================= helpers


def _tokenizer_location(spec: AugmentSpec, recipe: Recipe | None, field: str | None) -> str:
    """Whose tokenizer splits words: the masked LM's, else `tokenizer`, else (in a recipe) the teacher's."""
    if spec.model is not None:
        return spec.model
    if spec.tokenizer is not None:
        return spec.tokenizer
    if recipe is not None and recipe.teacher is not None:
        from brewer_cli.paths import resolve_path

        teacher = recipe.teacher
        if teacher.checkpoint is not None and (resolve_path(teacher.checkpoint, recipe).exists() or teacher.train is None):
            return teacher.checkpoint
        if teacher.train is not None and teacher.train.model.checkpoint is not None:
            # A teacher still to be trained shares the tokenizer of the checkpoint it starts from.
            return teacher.train.model.checkpoint
    where = f"{recipe.path}: {field}.tokenizer" if recipe is not None else "--tokenizer"
    raise BrewerError(f"{where}: with word vectors and no masked LM, name the tokenizer that splits words "
                      f"(a checkpoint directory or hub id)")


def _load_tokenizer(location: str, recipe: Recipe | None, field: str) -> Any:
    from brewer_cli.models import checkpoint_location, load_tokenizer_dir

    return load_tokenizer_dir(checkpoint_location(location, recipe, field), recipe, field)


class _progress:
    """A rich progress bar over the masked-LM queries; silent without a console."""

    def __init__(self, console: Any, label: str, total: int):
        self.console, self.label, self.total = console, label, total

    def __enter__(self):
        if self.console is None or self.total == 0:
            return lambda count: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda count: self.bar.advance(task, count)

    def __exit__(self, *exc: Any) -> bool:
        if getattr(self, "bar", None) is not None:
            self.bar.stop()
        return False


# ============================================================================= brewer augment


def augment_command(target: str, options: dict[str, Any], text: str | None, text_pair: str | None,
                    limit: int | None, overrides: list[str], console: Any) -> AugmentResult:
    """`brewer augment RECIPE_OR_DATA`: with a recipe, its `data.augment` (the options replace its
    fields); with a data file, the options alone. Prints where the file is and what it holds."""
    from brewer_cli.recipe import load_recipe

    path = Path(target)
    if not path.exists():
        raise BrewerError(f"{target}: no such recipe or data file")
    given = {name: value for name, value in options.items() if value is not None}
    if _is_recipe(path):
        recipe = load_recipe(path, overrides)
        if recipe.data is None:
            raise BrewerError(f"{path}: data: the recipe has no `data` section to augment")
        base = recipe.data.augment.model_dump() if recipe.data.augment is not None else {}
        if text or text_pair or limit:
            raise BrewerError(f"{path}: --text, --text-pair and --limit are for a data file; a recipe's columns and "
                              f"limit are its `data` section's")
        spec = _spec({**base, **given}, f"{path}: data.augment")
        result = augment_recipe_data(recipe, spec, console)
    else:
        if overrides:
            raise BrewerError(f"{target}: --set changes a recipe's fields; for a data file give the options themselves")
        spec = _spec(given, "brewer augment")
        result = augment_file(path, spec, text or "text", text_pair, limit=limit, console=console)
    state = "found in the cache (same data, models and settings)" if result.cached else f"written in {result.seconds:.1f} s"
    console.print(f"{result.examples:,} examples → {result.rows:,} rows (originals and up to {spec.variants} variants "
                  f"each), {state}: {result.path}")
    return result


def _is_recipe(path: Path) -> bool:
    """A .yaml/.yml file, or a .json mapping with a distillation or stages section (a .json data
    file is a list of examples)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return True
    if suffix != ".json":
        return False
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and ("distillation" in content or "stages" in content)


def _spec(values: dict[str, Any], where: str) -> AugmentSpec:
    from pydantic import ValidationError

    try:
        return AugmentSpec.model_validate(values)
    except ValidationError as error:
        lines = []
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{where}{'.' + field if field else ''}: {message}")
        raise BrewerError("\n".join(lines)) from None
