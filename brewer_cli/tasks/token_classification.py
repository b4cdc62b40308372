"""Token classification (NER, chunking, POS): one tag per word, predicted on the word's sub-words.

Data: CoNLL files (`format: conll`, or a `.conll` name), jsonl/json rows and hub datasets with a
list of words and a list of tags per sentence (`data.tokens`, default `tokens`; `data.tags`,
default `ner_tags`). Integer tags are named by the hub dataset's features (conll2003's ClassLabel
names), or by `task.labels`.

Labels: the tag list is `task.labels`, else the teacher's (`id2label`), else every tag of the
training data sorted with `O` first (for a hub dataset whose tags are named ClassLabel ids: its
names, in id order). Each word's tag goes on its first sub-word; the other pieces
get -100 (ignored), or with `task.label_all_tokens: true` the word's tag (B-X turned into I-X, so
one entity never gets two beginnings).

KD: on the token logits (B, L, C) at the positions that carry a label (`labels != -100`): every
real word's first piece (and with `label_all_tokens` its other pieces too). Not the attention
mask: [CLS], [SEP] and continuation pieces are trained with -100, so the teacher's outputs there
are untrained noise, and counting them would also shrink the weight of the real words in the mean.

Tagging schemes: entity tags in IOB1 (the original CoNLL-2003 files: entities may start with
I-), IOB2 or BIOES are detected per split on load and converted to IOB2 for training and scoring
(tasks/tag_schemes.py); the tag list is IOB2. The scheme and the number of converted tags are in
the --dry-run plan and in summary.json (`data.tag_scheme`).

Metric: entity-level precision / recall / F1 with strict IOB2 matching (seqeval `mode="strict",
scheme=IOB2`: an entity counts only when its type, its B- start and its exact end all match),
F1 per entity type (`f1_<TYPE>`) and word accuracy, all as fractions 0…1. When the eval file was
not IOB2, predictions are first read as conlleval reads them (an I- after O or another type starts
an entity), so the scores equal conlleval's on the original file. Words cut off by
`data.max_length` count as predicted `O`, so truncation shows in the score instead of being hidden.
When the tags are not IOB2 (e.g. POS tags), only word accuracy is reported and is the primary metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from brewer_cli.errors import DataError, ModelError
from brewer_cli.recipe import DataSource, Recipe
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset, split_as_written
from brewer_cli.tasks.data import column, read_source
from brewer_cli.tasks.formats import TAGS, TOKENS, hub_class_names
from brewer_cli.tasks.tag_schemes import IOB2, TagConversion, convert_to_iob2, iob2_tag_list, to_iob2
from brewer_cli.tasks.tokenized_cache import batched_map

logger = logging.getLogger(__name__)

OUTSIDE = "O"
IGNORED = -100


class TokenClassification(Task):
    name = "token_classification"
    auto_class_name = "AutoModelForTokenClassification"

    def __init__(self, spec):
        super().__init__(spec)
        # Whether the tags follow IOB2 (O, B-TYPE, I-TYPE); decided by `prepare` from the tag list.
        self.entity_tags = True
        # The tag names of a hub dataset's ClassLabel feature, found while reading it.
        self.dataset_tag_names: list[str] | None = None

    @property
    def primary_metric(self) -> str:  # type: ignore[override]
        return "f1" if self.entity_tags else "accuracy"

    # -- data -----------------------------------------------------------------------------------

    def prepared_state(self) -> dict[str, Any]:
        return {"entity_tags": self.entity_tags, "dataset_tag_names": self.dataset_tag_names}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.entity_tags = state["entity_tags"]
        self.dataset_tag_names = state["dataset_tag_names"]

    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        return self._prepare(recipe, tokenizer, label_names, work, with_train=True)

    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        return self._prepare(recipe, tokenizer, label_names, work, with_train=False)

    def _prepare(
        self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None, with_train: bool
    ) -> PreparedData:
        data = recipe.data
        check_fast_tokenizer(tokenizer, recipe)
        given = list(self.spec.labels) if self.spec.labels else label_names
        self.dataset_tag_names = None
        train = self.read_sentences(data.train, recipe, "data.train", given) if with_train else []
        # A hub dataset that names its tag ids (ClassLabel) fixes the list and its order.
        dataset_names = self.dataset_tag_names
        evaluation = self.read_sentences(data.eval, recipe, "data.eval", given) if data.eval is not None else None
        # Evaluating alone: the tag list comes from the model, else from the eval split.
        dataset_names = dataset_names if with_train else self.dataset_tag_names
        # Entity tags are trained and scored in IOB2 whatever scheme the files use (tag_schemes.py).
        train, train_conversion = in_iob2(train) if with_train else ([], None)
        evaluation, eval_conversion = in_iob2(evaluation) if evaluation is not None else (None, None)
        conversions = {"data.train": train_conversion, "data.eval": eval_conversion}
        converted = {field: found for field, found in conversions.items() if found is not None and found.scheme != IOB2}
        if dataset_names and converted:
            used = [tags for _, tags, _ in train + (evaluation or [])]
            dataset_names = iob2_tag_list(dataset_names, used)
        names = given or dataset_names or tag_list_from([tags for _, tags, _ in (train if with_train else evaluation)])
        if self.spec.num_labels is not None and len(names) != self.spec.num_labels:
            field = "task.labels" if self.spec.labels else "task.num_labels"
            raise DataError(
                f"{recipe.path}: {field}: the tag list has {len(names)} tags ({', '.join(names[:20])}) but "
                f"task.num_labels is {self.spec.num_labels} — make them agree, or leave num_labels out"
            )
        origin = (
            "task.labels"
            if self.spec.labels
            else ("the teacher's labels" if with_train else "the model's labels")
            if label_names
            else "the dataset's tag names"
            if dataset_names
            else ("the training data's tags" if with_train else "the eval data's tags")
        )
        if given and converted:
            check_iob2_list(names, recipe, origin, next(iter(converted.items())))
        check_tags(train, names, recipe, "data.train", origin, train_conversion)
        if evaluation is not None:
            check_tags(evaluation, names, recipe, "data.eval", origin, eval_conversion)
        self.entity_tags = all(is_iob2(tag) for tag in names)
        train_set = (
            self.tokenize(train, names, tokenizer, data.max_length, recipe, "data.train", work)
            if with_train
            else TokenizedDataset({})
        )
        eval_set = (
            self.tokenize(evaluation, names, tokenizer, data.max_length, recipe, "data.eval", work)
            if evaluation is not None
            else None
        )
        extra: dict[str, Any] = {"eval_tags": [tags for _, tags, _ in evaluation]} if evaluation is not None else {}
        schemes = {field: found for field, found in conversions.items() if found is not None}
        if schemes:
            # Read by the --dry-run plan and summary.json (`data`): which scheme each split came in.
            extra["tag_scheme"] = {field: found.report() for field, found in schemes.items()}
            extra["plan_lines"] = ["tags: " + "; ".join(f"{field} {found.describe()}" for field, found in schemes.items())]
            extra["summary"] = {"tag_scheme": extra["tag_scheme"]}
        return PreparedData(
            train=train_set,
            eval=eval_set,
            label_names=names,
            eval_examples=[{"tokens": words, "tags": tags} for words, tags, _ in evaluation] if evaluation is not None else None,
            extra=extra,
        )

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        return [
            " ".join(words)
            for words, _, _ in self.read_sentences(recipe.data.train, recipe, "data.train", None, names_needed=False)
        ]

    def read_sentences(
        self, source: DataSource, recipe: Recipe, field: str, given: list[str] | None, names_needed: bool = True
    ) -> list[tuple[list[str], list[str], str]]:
        """(words, tags as names, where-in-the-file) per sentence; with `names_needed` false, integer
        tags stay ids (for reading the words only)."""
        rows = read_source(source, recipe, field)
        where = f"{recipe.path}: {field}"
        tokens_column = recipe.data.tokens or TOKENS
        tags_column = recipe.data.tags or TAGS
        all_words = column(rows, tokens_column, where, "tokens")
        all_tags = column(rows, tags_column, where, "tags")
        class_names: list[str] | None = None
        sentences = []
        for number, (row, words, tags) in enumerate(zip(rows, all_words, all_tags)):
            place = _place(source, recipe, row, number)
            if not isinstance(words, (list, tuple)) or not isinstance(tags, (list, tuple)):
                raise DataError(
                    f"{where}: {place}: `{tokens_column}` and `{tags_column}` must be lists (one entry per word), got "
                    f"{type(words).__name__} and {type(tags).__name__}"
                )
            if len(words) != len(tags):
                raise DataError(f"{where}: {place}: {len(words)} words but {len(tags)} tags — give one tag per word")
            if names_needed and any(_is_integer(tag) for tag in tags):
                if class_names is None:
                    class_names = self._class_names(source, tags_column, given, where)
                tags = [_tag_name(tag, class_names, where, place, tags_column) for tag in tags]
            sentences.append(([str(word) for word in words], [str(tag) for tag in tags], place))
        return sentences

    def _class_names(self, source: DataSource, tags_column: str, given: list[str] | None, where: str) -> list[str]:
        # Hub datasets store tags as ClassLabel ids; their names are in the dataset's features.
        names = hub_class_names(source, tags_column) if source.hub is not None else None
        if names is not None:
            self.dataset_tag_names = self.dataset_tag_names or names
        names = names or given
        if names is None:
            raise DataError(
                f"{where}: the `{tags_column}` column holds integer tags and nothing names them — give the names in "
                f"id order with `task.labels: [O, B-PER, I-PER, …]`"
            )
        return names

    def tokenize(
        self,
        sentences: list[tuple[list[str], list[str], str]],
        names: list[str],
        tokenizer: Any,
        max_length: int,
        recipe: Recipe,
        field: str,
        work: Path | None = None,
    ) -> TokenizedDataset:
        """Sentences (their tags checked and in IOB2) → token ids and per-token labels, as a batched
        `datasets` map; the count of sentences cut by max_length is gathered after it, for one warning."""
        import datasets

        rows = datasets.Dataset.from_dict(
            {"words": [words for words, _, _ in sentences], "tags": [tags for _, tags, _ in sentences]}
        )
        encode = _EncodeSentences(tokenizer, names, bool(self.spec.label_all_tokens), max_length, f"{recipe.path}: {field}")
        table = batched_map(rows, encode, recipe.data, field, work, remove_columns=rows.column_names)
        truncated = sum(table["truncated"])
        if truncated:
            logger.warning(
                "%s: %d of %d sentences are longer than data.max_length=%d tokens; their last words are cut "
                "off (and count as predicted O in the metric) — raise data.max_length to keep them",
                split_as_written(recipe, field),
                truncated,
                len(sentences),
                max_length,
            )
        return TokenizedDataset(table.remove_columns(["truncated"]))

    # -- model ----------------------------------------------------------------------------------

    def model_kwargs(self, label_names: list[str] | None) -> dict[str, Any]:
        names = label_names or [str(i) for i in range(self.spec.num_labels or 2)]
        return {
            "num_labels": len(names),
            "id2label": {i: name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)},
        }

    def check_model(self, model: Any, label_names: list[str] | None, role: str) -> None:
        expected = len(label_names or []) or self.spec.num_labels
        if expected and model.config.num_labels != expected:
            raise ModelError(
                f"{role}: the checkpoint's token classifier has {model.config.num_labels} tags but the task has "
                f"{expected} — use a checkpoint trained on this tag set, or set task.labels"
            )

    def kd_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L): the positions that carry a tag (see the module docstring for why not the attention mask)."""
        return batch["labels"] != IGNORED

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("labels")

    # -- evaluation -----------------------------------------------------------------------------

    def prediction_of(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Only the arg-max is needed: (B, L) instead of (B, L, C) kept for the whole eval set.
        return logits.argmax(dim=-1)

    def compute_metrics(self, predictions, indices, data: PreparedData, output_dir=None) -> dict[str, Any]:
        names = data.label_names or []
        fill = OUTSIDE if OUTSIDE in names else names[0]
        predicted_ids: dict[int, torch.Tensor] = {}
        rows = (row for batch in predictions for row in batch)
        for index, row in zip(indices, rows):
            predicted_ids[index] = row
        gold_sequences, predicted_sequences = [], []
        for index in sorted(predicted_ids):
            gold = data.extra["eval_tags"][index]
            starts = data.eval.columns["word_starts"][index]
            row = predicted_ids[index]
            # A word the model never saw (cut off by max_length) counts as predicted O.
            predicted = [names[int(row[position])] if position >= 0 else fill for position in starts]
            gold_sequences.append(gold)
            predicted_sequences.append(predicted)
        metrics = {"accuracy": word_accuracy(gold_sequences, predicted_sequences)}
        if self.entity_tags:
            scheme = data.extra.get("tag_scheme", {}).get("data.eval", {}).get("scheme", IOB2)
            if scheme != IOB2:
                # The eval file's scheme lets an I- after O start an entity: predictions are read that
                # way too (as conlleval reads them), so the score equals conlleval's on the original file.
                predicted_sequences = [to_iob2(tags) for tags in predicted_sequences]
            metrics = {**entity_scores(gold_sequences, predicted_sequences), **metrics}
        return metrics


# ============================================================================= helpers


def check_fast_tokenizer(tokenizer: Any, recipe: Recipe) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{recipe.path}: {recipe.task.kind} needs a fast (Rust) tokenizer, which maps sub-words to words and "
            f"characters, but the checkpoint's {type(tokenizer).__name__} is a slow one — save the checkpoint with "
            f"its tokenizer.json (AutoTokenizer.from_pretrained(…, use_fast=True).save_pretrained(…))"
        )


def tag_list_from(tag_sequences: Sequence[Sequence[str]]) -> list[str]:
    """Every tag seen, sorted, with `O` first (the usual id 0 of NER tag sets)."""
    seen = {tag for tags in tag_sequences for tag in tags}
    return ([OUTSIDE] if OUTSIDE in seen else []) + sorted(seen - {OUTSIDE})


def in_iob2(
    sentences: list[tuple[list[str], list[str], str]],
) -> tuple[list[tuple[list[str], list[str], str]], TagConversion | None]:
    """The sentences with their entity tags in IOB2, and the conversion (None for tags that are not
    entity tags, e.g. POS tags, which stay as they are)."""
    conversion = convert_to_iob2([tags for _, tags, _ in sentences])
    if conversion is None:
        return sentences, None
    return [(words, tags, place) for (words, _, place), tags in zip(sentences, conversion.tags)], conversion


def check_iob2_list(names: list[str], recipe: Recipe, origin: str, converted: tuple[str, TagConversion]) -> None:
    """A given tag list (task.labels, the teacher's) must be IOB2 when the data was converted to IOB2:
    a teacher whose head predicts E-/S- tags cannot be scored or matched against IOB2 labels."""
    others = [name for name in names if not is_iob2(name)]
    if others:
        field, conversion = converted
        raise DataError(
            f"{recipe.path}: {field}: the data's tags are {conversion.scheme} and are converted to IOB2 for training "
            f"and scoring, but the tag list from {origin} is not IOB2 ({', '.join(others[:10])}) — give IOB2 tags "
            f"(O, B-TYPE, I-TYPE) in task.labels, or use a teacher trained on IOB2 tags"
        )


def check_tags(
    sentences, names: list[str], recipe: Recipe, field: str, origin: str, conversion: TagConversion | None = None
) -> None:
    known = set(names)
    converted = conversion is not None and conversion.scheme != IOB2
    note = (
        f" (the data's {conversion.scheme} tags were converted to IOB2, where every entity starts with B-)" if converted else ""
    )
    for _, tags, place in sentences:
        for tag in tags:
            if tag not in known:
                raise DataError(
                    f"{recipe.path}: {field}: {place}: tag {tag!r} is not in the tag list ({', '.join(names)}), which "
                    f"comes from {origin}{note} — add it to task.labels (and retrain the teacher) or fix the data"
                )


def is_iob2(tag: str) -> bool:
    return tag == OUTSIDE or (tag[:2] in ("B-", "I-") and len(tag) > 2)


def align_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], names: Sequence[str], label_all_tokens: bool
) -> tuple[list[int], list[int]]:
    """Per-token labels for one tokenized sentence, and per word the position of its first piece
    (-1 for a word with no piece: cut off by max_length, or made only of characters the tokenizer drops).

    Special tokens get -100. A word's first piece gets the word's tag; its other pieces get -100,
    or with `label_all_tokens` the tag with B- turned into I- (when that tag exists).
    """
    index_of = {name: index for index, name in enumerate(names)}
    labels: list[int] = []
    starts: list[int] = [-1] * len(word_labels)
    previous: int | None = None
    for position, word in enumerate(word_ids):
        if word is None:
            labels.append(IGNORED)
        elif word != previous:
            labels.append(word_labels[word])
            starts[word] = position
        elif label_all_tokens:
            tag = names[word_labels[word]]
            inside = "I-" + tag[2:] if tag.startswith("B-") else tag
            labels.append(index_of.get(inside, word_labels[word]))
        else:
            labels.append(IGNORED)
        previous = word
    return labels, starts


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 with strict IOB2 matching, and F1 per entity type."""
    # brewer's one NER scorer is seqeval, not a hand-written strict IOB2 matcher: seqeval is the
    # maintained library behind Hugging Face's `seqeval` metric (what Trainer examples report), its
    # strict IOB2 mode is the CoNLL-2003 entity definition, and on tags converted to IOB2
    # (tag_schemes.py, conlleval's chunk rules) it gives conlleval's scores on the original file —
    # so a second scorer could only disagree with the numbers users compare against.
    # Imported here, at the first evaluation: seqeval pulls in scikit-learn (about 90 MiB per process).
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2 as STRICT_IOB2

    options = {"mode": "strict", "scheme": STRICT_IOB2, "zero_division": 0}
    scores = {
        "precision": float(precision_score(gold, predicted, **options)),
        "recall": float(recall_score(gold, predicted, **options)),
        "f1": float(f1_score(gold, predicted, **options)),
    }
    report = classification_report(gold, predicted, output_dict=True, **options)
    for entity_type in sorted(key for key in report if not key.endswith(" avg")):
        scores[f"f1_{entity_type}"] = float(report[entity_type]["f1-score"])
    return scores


def word_accuracy(gold: list[list[str]], predicted: list[list[str]]) -> float:
    total = sum(len(tags) for tags in gold)
    correct = sum(g == p for gold_tags, predicted_tags in zip(gold, predicted) for g, p in zip(gold_tags, predicted_tags))
    return correct / total if total else 0.0


def _place(source: DataSource, recipe: Recipe, row: dict[str, Any], number: int) -> str:
    """Where a sentence is, for messages: file and line for CoNLL, example number otherwise."""
    if "line" in row and source.path is not None:
        return f"{source.path}:{row['line']}"
    return f"example {number}"


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tag_name(value: Any, names: list[str], where: str, place: str, tags_column: str) -> str:
    if not _is_integer(value):
        return str(value)
    if not 0 <= value < len(names):
        raise DataError(
            f"{where}: {place}: tag id {value} in `{tags_column}` is outside the {len(names)} named tags "
            f"({', '.join(names)}) — fix the data or task.labels"
        )
    return names[value]


class _EncodeSentences:
    """A batch of sentences → token ids, labels on each word's first piece (`align_labels`), the
    position of each word's first piece, and whether max_length cut the sentence: the function of
    the tokenizing map (a class, so worker processes receive it by pickling)."""

    def __init__(self, tokenizer: Any, names: list[str], label_all_tokens: bool, max_length: int, where: str):
        self.tokenizer, self.names, self.label_all_tokens = tokenizer, names, label_all_tokens
        self.label_ids = {name: index for index, name in enumerate(names)}
        self.max_length, self.where = max_length, where

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        try:
            encoded = self.tokenizer(batch["words"], is_split_into_words=True, truncation=True, max_length=self.max_length)
        except ValueError as error:  # e.g. byte-level BPE (RoBERTa) saved without add_prefix_space
            raise ModelError(
                f"{self.where}: the tokenizer cannot read pre-split words: {str(error).splitlines()[0]} — for "
                f"RoBERTa-style tokenizers save the checkpoint's tokenizer with add_prefix_space=True"
            ) from None
        columns: dict[str, list[Any]] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        columns.update(labels=[], word_starts=[], truncated=[])
        for number, (words, tags) in enumerate(zip(batch["words"], batch["tags"])):
            word_ids = encoded.word_ids(number)
            labels, starts = align_labels(word_ids, [self.label_ids[tag] for tag in tags], self.names, self.label_all_tokens)
            columns["labels"].append(labels)
            columns["word_starts"].append(starts)
            # Cut off: the sequence is full and its last word is not the sentence's last word. (A word
            # with no piece at all, e.g. only control characters, also leaves a gap, but not this one.)
            last_word = max((word for word in word_ids if word is not None), default=-1)
            columns["truncated"].append(len(word_ids) >= self.max_length and last_word < len(words) - 1)
        return columns
