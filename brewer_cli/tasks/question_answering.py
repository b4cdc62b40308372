"""Extractive question answering (SQuAD v1.1, and v2-style unanswerable questions).

Data: SQuAD JSON files (`data[].paragraphs[].qas[].answers[]`; `format: squad`, or any `.json`
file of that shape; `articles: "0:38"` keeps some articles), jsonl/json rows and hub datasets in
the hub's `squad` layout: `id`, `context`, `question`, `answers: {text: [...], answer_start:
[...]}` (column names `data.question`, `data.context`, `data.answers`; answers may also be a list
of `{text, answer_start}`).

Windows: a context longer than `data.max_length` is split into windows (the question is repeated
in each) that share `task.doc_stride` context tokens — Hugging Face's meaning of the stride (the
tokenizer's `stride`), default min(128, max_length // 3). A question too long to leave room for
that overlap is cut, with a warning.

Training targets: the token positions of the answer's first and last characters, or the [CLS]
position when the answer is not wholly inside the window (and for unanswerable questions). An
answer whose `answer_start` does not point at its text is moved to the nearest occurrence of the
text in the context, or — when the text does not occur — dropped; a question left without answers
is not trained on (never a wrong span, never a wrong "unanswerable"). A span that cuts a word
("two" found inside "Westwood", as in a few of SQuAD's dev offsets) moves to the nearest whole-word
occurrence. The counts are logged and kept in `PreparedData.extra["answer_alignment"]`.

KD: on the start and end logits, summed (`kd_loss` over the (start, end) tuple). The softmax of
each runs over the context tokens and [CLS] only (`kd_mask`: the `context_mask` column). The
answer can only be a context span or the null answer at [CLS]; question tokens, [SEP] and padding
are never predicted, and leaving them in would let the student spend capacity matching the
teacher's arbitrary scores there.

Evaluation: per window the `n_best` highest start and end logits are paired into spans of at most
`max_answer_length` tokens inside the context, scored by start + end logit; the best span over all
windows of a question wins. With `task.version_2_with_negative`, the null answer (score of [CLS]
start + end, the lowest over the windows) wins when it beats the best span, and predicts "".
Metrics: the official SQuAD scripts' (tasks/squad_metric.py): exact match and F1 with the official
answer normalization, max over the gold answers, on the 0…100 scale; v1.1 as `exact_match`, `f1`;
v2.0 with the script's keys (`exact`, `f1`, `HasAns_f1`, `NoAns_f1`, …) and the best no-answer
thresholds (`best_f1`, `best_f1_thresh`, …) from each question's null score minus its best span's.
`predictions.json` ({id: answer}; v2 also `null_odds.json`, the script's --na-prob-file) is
written into the output directory when one is given.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource, Recipe
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset, split_as_written
from brewer_cli.tasks.data import column, read_source
from brewer_cli.tasks.formats import answer_start
from brewer_cli.tasks.qa_windows import EncodeWindows
from brewer_cli.tasks.squad_metric import squad_scores
from brewer_cli.tasks.token_classification import check_fast_tokenizer
from brewer_cli.tasks.tokenized_cache import batched_map

logger = logging.getLogger(__name__)

DEFAULT_MAX_ANSWER_LENGTH = 30
DEFAULT_N_BEST = 20


@dataclass
class QuestionExample:
    id: str
    question: str
    context: str
    answer_texts: list[str]
    answer_starts: list[int]


@dataclass
class Window:
    """What decoding needs from one window: its logits and where its context tokens are."""

    start_logits: Sequence[float]
    end_logits: Sequence[float]
    # Character span in the context per token; None for question, special and padding tokens.
    offsets: Sequence[tuple[int, int] | None]
    cls_index: int = 0


class QuestionAnswering(Task):
    name = "question_answering"
    auto_class_name = "AutoModelForQuestionAnswering"
    primary_metric = "f1"
    writes_predictions = True

    @property
    def version_2(self) -> bool:
        return bool(self.spec.version_2_with_negative)

    @property
    def max_answer_length(self) -> int:
        return self.spec.max_answer_length or DEFAULT_MAX_ANSWER_LENGTH

    @property
    def n_best(self) -> int:
        return self.spec.n_best or DEFAULT_N_BEST

    def doc_stride(self, recipe: Recipe) -> int:
        max_length = recipe.data.max_length
        stride = self.spec.doc_stride if self.spec.doc_stride is not None else min(128, max_length // 3)
        if stride >= max_length:
            raise DataError(
                f"{recipe.path}: task.doc_stride: {stride} must be smaller than data.max_length ({max_length}) — "
                f"it is the number of context tokens consecutive windows share; e.g. doc_stride {max_length // 3}"
            )
        return stride

    # -- data -----------------------------------------------------------------------------------

    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        check_fast_tokenizer(tokenizer, recipe)
        stride = self.doc_stride(recipe)
        data = recipe.data
        train_examples = self.read_examples(data.train, recipe, "data.train")
        train_examples, alignment = self.align_answers(train_examples, recipe, "data.train")
        train = self.windows(train_examples, tokenizer, data.max_length, stride, recipe, "data.train", False, work)
        evaluation, eval_examples = None, None
        if data.eval is not None:
            eval_examples = self.read_examples(data.eval, recipe, "data.eval")
            evaluation = self.windows(eval_examples, tokenizer, data.max_length, stride, recipe, "data.eval", True, work)
        return PreparedData(
            train=train,
            eval=evaluation,
            label_names=None,
            eval_examples=[vars(example) for example in eval_examples] if eval_examples is not None else None,
            extra={"answer_alignment": alignment, "eval_question_examples": eval_examples},
        )

    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        check_fast_tokenizer(tokenizer, recipe)
        data = recipe.data
        examples = self.read_examples(data.eval, recipe, "data.eval")
        stride = self.doc_stride(recipe)
        evaluation = self.windows(examples, tokenizer, data.max_length, stride, recipe, "data.eval", True, work)
        return PreparedData(
            train=TokenizedDataset({}),
            eval=evaluation,
            label_names=None,
            eval_examples=[vars(example) for example in examples],
            extra={"eval_question_examples": examples},
        )

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        examples = self.read_examples(recipe.data.train, recipe, "data.train")
        # Each context once: SQuAD asks several questions about the same paragraph.
        return [example.question for example in examples] + list(dict.fromkeys(example.context for example in examples))

    def read_examples(self, source: DataSource, recipe: Recipe, field: str) -> list[QuestionExample]:
        rows = read_source(source, recipe, field)
        where = f"{recipe.path}: {field}"
        data = recipe.data
        questions = column(rows, data.question or "question", where, "question")
        contexts = column(rows, data.context or "context", where, "context")
        answers = column(rows, data.answers or "answers", where, "answers")
        examples = []
        seen: set[str] = set()
        for number, (row, question, context, answer) in enumerate(zip(rows, questions, contexts, answers)):
            identifier = str(row.get("id", number))
            if identifier in seen:
                # Predictions and scores are kept per id: a repeated id would overwrite another question.
                raise DataError(f"{where}: question id {identifier!r} appears twice — give every question its own `id`")
            seen.add(identifier)
            if not isinstance(question, str) or not isinstance(context, str):
                raise DataError(f"{where}: question {identifier!r}: `question` and `context` must be text")
            texts, starts = _answer_lists(answer, where, identifier)
            if not texts and not self.version_2 and field == "data.eval":
                # Scoring it would need the v2 rule (empty answer is right); training only skips it.
                raise DataError(
                    f"{where}: question {identifier!r} has no answer — set task.version_2_with_negative: true for "
                    f"data with unanswerable questions (SQuAD v2), or fix the data"
                )
            examples.append(QuestionExample(identifier, question.lstrip(), context, texts, starts))
        return examples

    def align_answers(
        self, examples: list[QuestionExample], recipe: Recipe, field: str
    ) -> tuple[list[QuestionExample], dict[str, int]]:
        """Training examples whose answer spans are right: see the module docstring."""
        counts = {"relocated": 0, "word_boundary": 0, "dropped": 0, "questions_skipped": 0}
        kept = []
        for example in examples:
            answers: list[tuple[bool, str, int]] = []
            for text, start in zip(example.answer_texts, example.answer_starts):
                position, outcome = locate_answer(example.context, text, start)
                if outcome in counts:
                    counts[outcome] += 1
                if position is not None:
                    answers.append((outcome == "partial_word", text, position))
            had_answers = bool(example.answer_texts)
            if not answers and (had_answers or not self.version_2):
                # All its answers were wrong, or a v1 question without an answer: no right target.
                counts["questions_skipped"] += 1
                continue
            # Training uses the first answer; one on word boundaries goes first (stable sort).
            answers.sort(key=lambda answer: answer[0])
            kept.append(
                QuestionExample(
                    example.id,
                    example.question,
                    example.context,
                    [text for _, text, _ in answers],
                    [position for _, _, position in answers],
                )
            )
        descriptions = {
            "relocated": "answer_start values that did not point at their text moved to the nearest occurrence",
            "word_boundary": "spans that cut a word moved to the nearest whole-word occurrence",
            "dropped": "answers dropped (text not in the context)",
            "questions_skipped": "questions left without an answer not trained on",
        }
        found = [f"{count} {descriptions[name]}" for name, count in counts.items() if count]
        if found:
            logger.warning("%s: %s: answer spans fixed for training: %s", recipe.path, field, "; ".join(found))
        if not kept:
            raise DataError(f"{recipe.path}: {field}: no question with a usable answer is left to train on — check the answers")
        return kept, counts

    def windows(
        self,
        examples: list[QuestionExample],
        tokenizer: Any,
        max_length: int,
        stride: int,
        recipe: Recipe,
        field: str,
        for_eval: bool,
        work: Path | None = None,
    ) -> TokenizedDataset:
        """Questions → windows of max_length tokens over their contexts, sharing `stride` tokens
        (a batched `datasets` map: tasks/qa_windows.py)."""
        import datasets

        questions = self._fit_questions(examples, tokenizer, max_length, stride, recipe, field)
        rows = datasets.Dataset.from_dict(
            {
                "question": questions,
                "context": [example.context for example in examples],
                "answer_texts": [example.answer_texts for example in examples],
                "answer_starts": [example.answer_starts for example in examples],
            },
            features=datasets.Features(
                {
                    "question": datasets.Value("string"),
                    "context": datasets.Value("string"),
                    "answer_texts": datasets.Sequence(datasets.Value("string")),
                    "answer_starts": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )
        encode = EncodeWindows(tokenizer, max_length, stride, for_eval, f"{recipe.path}: task.doc_stride")
        # Windows are padded to max_length: 20,000 questions a batch would be over a GB of Python
        # lists in each worker. QA sets hold about 10^5 questions, so 1,000 a batch keeps the
        # files' record batches few (batched_map's docstring says why that matters).
        windows = batched_map(
            rows, encode, recipe.data, field, work, with_indices=True, remove_columns=rows.column_names, batch_size=1000
        )
        return TokenizedDataset(windows)

    def _fit_questions(
        self, examples: list[QuestionExample], tokenizer: Any, max_length: int, stride: int, recipe: Recipe, field: str
    ) -> list[str]:
        """Questions, cut where needed so that each window keeps more context tokens than the stride
        (the tokenizer cannot make windows otherwise)."""
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride - 1
        if room < 1:
            raise DataError(
                f"{recipe.path}: task.doc_stride: {stride} leaves no room for the question in windows of "
                f"data.max_length={max_length} tokens — lower task.doc_stride (e.g. {max_length // 3})"
            )
        questions = [example.question for example in examples]
        encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        cut = 0
        for number, offsets in enumerate(encoded["offset_mapping"]):
            if len(offsets) > room:
                questions[number] = questions[number][: offsets[room - 1][1]]
                cut += 1
        if cut:
            logger.warning(
                "%s: %d questions are longer than %d tokens and were cut to fit windows of data.max_length=%d "
                "sharing task.doc_stride=%d tokens",
                split_as_written(recipe, field),
                cut,
                room,
                max_length,
                stride,
            )
        return questions

    def collate(self, tokenizer: Any):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
            # Only tensors go into a batch: offsets and example ids stay in the dataset columns,
            # where compute_metrics reads them by window index.
            longest = max(len(item["input_ids"]) for item in items)
            batch: dict[str, torch.Tensor] = {}
            for key in ("input_ids", "attention_mask", "token_type_ids", "context_mask"):
                if key in items[0]:
                    fill = pad_id if key == "input_ids" else 0
                    batch[key] = torch.tensor(
                        [list(item[key]) + [fill] * (longest - len(item[key])) for item in items], dtype=torch.long
                    )
            for key in ("start_positions", "end_positions"):
                if key in items[0]:
                    batch[key] = torch.tensor([item[key] for item in items], dtype=torch.long)
            batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
            return batch

        return collate

    # -- model ----------------------------------------------------------------------------------

    def logits(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.start_logits, outputs.end_logits

    def kd_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L): context tokens and [CLS] — the positions an answer can start or end at."""
        return batch["context_mask"]

    def labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if "start_positions" not in batch:
            return None
        return batch["start_positions"], batch["end_positions"]

    # -- evaluation -----------------------------------------------------------------------------

    def prediction_of(
        self, logits: tuple[torch.Tensor, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[0].float(), logits[1].float()

    def compute_metrics(self, predictions, indices, data: PreparedData, output_dir=None) -> dict[str, Any]:
        examples: list[QuestionExample] = data.extra["eval_question_examples"]
        columns = data.eval.columns
        windows_of: dict[int, list[Window]] = collections.defaultdict(list)
        rows = ((start, end) for starts, ends in predictions for start, end in zip(starts, ends))
        for window, (start, end) in zip(indices, rows):
            offsets = columns["offset_mapping"][window]
            # Logits past the window's own length are padding (of the batch or across processes).
            windows_of[columns["example_index"][window]].append(
                Window(start[: len(offsets)].tolist(), end[: len(offsets)].tolist(), offsets, columns["cls_index"][window])
            )
        answers: dict[str, str] = {}
        no_answer_scores: dict[str, float] = {}
        gold: dict[str, list[str]] = {}
        for example_index in sorted(windows_of):
            example = examples[example_index]
            answers[example.id], no_answer_scores[example.id] = decode(
                windows_of[example_index], example.context, self.n_best, self.max_answer_length, self.version_2
            )
            gold[example.id] = example.answer_texts
        if output_dir is not None:
            path = Path(output_dir) / "predictions.json"
            path.write_text(json.dumps(answers, indent=2, ensure_ascii=False), encoding="utf-8")
            if self.version_2:
                # The official v2 script's --na-prob-file, to reproduce the report with it.
                (Path(output_dir) / "null_odds.json").write_text(json.dumps(no_answer_scores, indent=2), encoding="utf-8")
        return squad_scores(answers, gold, self.version_2, no_answer_scores if self.version_2 else None)


# ============================================================================= helpers


def _answer_lists(value: Any, where: str, identifier: str) -> tuple[list[str], list[int]]:
    """The hub's {text: [...], answer_start: [...]} or a list of {text, answer_start}."""
    try:
        if isinstance(value, dict):
            texts, given = list(value["text"]), list(value["answer_start"])
        elif isinstance(value, list):
            texts, given = [answer["text"] for answer in value], [answer["answer_start"] for answer in value]
        else:
            raise TypeError
    except (KeyError, TypeError):
        raise DataError(
            f"{where}: question {identifier!r}: answers must be {{text: [...], answer_start: [...]}} or a list of "
            f"{{text, answer_start}}, got {str(value)[:80]!r}"
        ) from None
    starts = [answer_start(start) for start in given]
    if None in starts:
        bad = given[starts.index(None)]
        raise DataError(
            f"{where}: question {identifier!r}: answer_start {bad!r} is not a whole number — give each answer's "
            f"character offset in the context, e.g. 42"
        )
    if len(texts) != len(starts):
        raise DataError(f"{where}: question {identifier!r}: {len(texts)} answer texts but {len(starts)} answer_start values")
    return [str(text) for text in texts], starts


def locate_answer(context: str, text: str, start: int) -> tuple[int | None, str]:
    """Where `text` really starts, and how that was decided:

    - "ok": at `start`, on word boundaries;
    - "relocated": `start` does not point at the text; its occurrence nearest to `start` (whole-word
      occurrences first);
    - "word_boundary": the text is at `start` but cuts a word there ("two" inside "Westwood": SQuAD's
      dev file has such offsets, found by substring search); moved to the nearest whole-word occurrence;
    - "partial_word": at `start`, cutting a word, and no whole-word occurrence exists (kept: the
      annotator chose part of a word, e.g. "10" of "2010");
    - "dropped" (position None): the text is empty or not in the context.
    """
    if not text:
        return None, "dropped"
    occurrences = [match.start() for match in re.finditer(re.escape(text), context)]
    if not occurrences:
        return None, "dropped"
    whole = [occurrence for occurrence in occurrences if _on_word_boundaries(context, occurrence, len(text))]

    def nearest(candidates: list[int]) -> int:
        return min(candidates, key=lambda occurrence: (abs(occurrence - start), occurrence))

    if start in occurrences:
        if start in whole:
            return start, "ok"
        return (nearest(whole), "word_boundary") if whole else (start, "partial_word")
    return nearest(whole or occurrences), "relocated"


def _on_word_boundaries(context: str, start: int, length: int) -> bool:
    """No letter or digit of the same word just before the start or just after the end."""
    end = start + length
    before = start > 0 and context[start - 1].isalnum() and context[start].isalnum()
    after = end < len(context) and context[end].isalnum() and context[end - 1].isalnum()
    return not before and not after


def decode_answer(windows: Sequence[Window], context: str, n_best: int, max_answer_length: int, allow_null: bool) -> str:
    """The best answer over a question's windows; "" when the null answer wins (v2 only)."""
    return decode(windows, context, n_best, max_answer_length, allow_null)[0]


def decode(windows: Sequence[Window], context: str, n_best: int, max_answer_length: int, allow_null: bool) -> tuple[str, float]:
    """The answer (as `decode_answer`) and its no-answer score: the null score minus the best span's
    score (BERT's `null_odds`; the official v2 script's na-prob), +inf when no span is possible."""
    best_score, best_text = float("-inf"), ""
    null_score = float("inf")
    for window in windows:
        start_logits, end_logits, offsets = window.start_logits, window.end_logits, window.offsets
        null_score = min(null_score, start_logits[window.cls_index] + end_logits[window.cls_index])
        starts = _top(start_logits, n_best)
        ends = _top(end_logits, n_best)
        for start in starts:
            if offsets[start] is None:
                continue
            for end in ends:
                if offsets[end] is None or end < start or end - start + 1 > max_answer_length:
                    continue
                score = start_logits[start] + end_logits[end]
                if score > best_score:
                    best_score, best_text = score, context[offsets[start][0] : offsets[end][1]]
    no_answer_score = null_score - best_score
    if allow_null and null_score > best_score:
        return "", no_answer_score
    return best_text, no_answer_score


def _top(values: Sequence[float], count: int) -> list[int]:
    return sorted(range(len(values)), key=lambda position: values[position], reverse=True)[:count]
