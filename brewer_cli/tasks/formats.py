"""Readers for the task-specific file formats: CoNLL (token classification) and SQuAD JSON
(extractive question answering), plus the selection of SQuAD articles (`data.<split>.articles`).

`brewer_cli.tasks.data.read_source` dispatches here, so every task, `brewer eval --data` and the
teacher-training path read these formats the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brewer_cli.errors import DataError
from brewer_cli.recipe import read_utf8, utf8_lines

# The default column names of token classification and QA rows: the Hugging Face Hub's
# conll2003 / squad conventions, so hub rows and rows read from files look the same.
TOKENS = "tokens"
TAGS = "ner_tags"
DOCUMENT_START = "-DOCSTART-"


def read_conll(path: Path, where: str, tokens_column: str = TOKENS, tags_column: str = TAGS) -> list[dict[str, Any]]:
    """Sentences of a CoNLL file (`conll_sentences`), as a list."""
    return list(conll_sentences(path, where, tokens_column, tags_column))


def conll_sentences(path: Path, where: str, tokens_column: str = TOKENS, tags_column: str = TAGS) -> Iterator[dict[str, Any]]:
    """Sentences of a CoNLL file, one at a time: one token per line, the token in the first column
    and its tag in the last (CoNLL-2003 has POS and chunk columns in between), a blank line between
    sentences.

    `-DOCSTART-` lines are document separators, not sentences, and are skipped. Every token line
    must have the same number of columns as the first one: a line that does not is almost always
    a token containing a space or a stray tab, and reading it anyway would shift a tag onto the
    wrong word. Each row also keeps `line`, the line number its sentence starts at, for messages.
    """
    tokens: list[str] = []
    tags: list[str] = []
    start_line = 0
    expected_columns: int | None = None
    first_line_of_format = 0

    def sentence() -> dict[str, Any]:
        return {tokens_column: list(tokens), tags_column: list(tags), "line": start_line}

    # Lines as a text file reads them (universal newlines), so line numbers match an editor's.
    for number, line in enumerate(utf8_lines(path, DataError, f"{where}: "), 1):
        fields = line.split()
        if not fields or fields[0] == DOCUMENT_START:
            if tokens:
                yield sentence()
            tokens.clear()
            tags.clear()
            continue
        if expected_columns is None:
            if len(fields) < 2:
                raise DataError(
                    f"{where}: {path}:{number}: a CoNLL line needs at least two columns (token … tag), found "
                    f"{len(fields)}: {line.strip()!r} — separate the token and its tag with a space or tab"
                )
            expected_columns, first_line_of_format = len(fields), number
        elif len(fields) != expected_columns:
            raise DataError(
                f"{where}: {path}:{number}: expected {expected_columns} columns (as on line {first_line_of_format}), "
                f"found {len(fields)}: {line.strip()!r} — every token line needs the same columns (token first, "
                f"tag last); a token containing a space must be written without it"
            )
        if not tokens:
            start_line = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        yield sentence()


def read_squad(path: Path, where: str) -> list[dict[str, Any]]:
    """Questions of a SQuAD JSON file, flattened to the hub's `squad` rows."""
    try:
        data = json.loads(read_utf8(path, DataError, f"{where}: "))
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: {path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not is_squad_document(data):
        raise DataError(
            f'{where}: {path}: not a SQuAD file — expected {{"data": [{{"title": …, "paragraphs": '
            f'[{{"context": …, "qas": [...]}}]}}]}}; for one question per row use format jsonl'
        )
    return squad_rows(data, path, where)


def is_squad_document(data: Any) -> bool:
    articles = data.get("data") if isinstance(data, dict) else None
    return isinstance(articles, list) and bool(articles) and isinstance(articles[0], dict) and "paragraphs" in articles[0]


def squad_rows(data: dict[str, Any], path: Path, where: str) -> list[dict[str, Any]]:
    """`data[].paragraphs[].qas[]` → rows {id, title, context, question, answers{text, answer_start},
    article}; SQuAD v2's unanswerable questions (`is_impossible`) get empty answers, as on the hub."""
    rows: list[dict[str, Any]] = []
    for article_number, article in enumerate(data["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs", []), list):
            raise DataError(f'{where}: {path}: data[{article_number}]: an article must be {{"title": …, "paragraphs": [...]}}')
        title = str(article.get("title", article_number))
        for paragraph_number, paragraph in enumerate(article.get("paragraphs", [])):
            place = f"data[{article_number}].paragraphs[{paragraph_number}]"
            if not isinstance(paragraph, dict) or "context" not in paragraph or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{where}: {path}: {place}: a paragraph needs `context` and a list `qas` — fix the file")
            context = paragraph["context"]
            for question_number, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict) or "question" not in qa or "id" not in qa:
                    raise DataError(f"{where}: {path}: {place}.qas[{question_number}]: a question needs `id` and `question`")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                texts, starts = _squad_answers(answers, f"{where}: {path}: {place}.qas[{question_number}] (id {qa['id']!r})")
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": {"text": texts, "answer_start": starts},
                        "article": article_number,
                    }
                )
    return rows


def _squad_answers(answers: Any, place: str) -> tuple[list[Any], list[int]]:
    """A SQuAD question's answers as (texts, character offsets); each needs `text` and an integer
    `answer_start`, the answer's offset in the context."""
    if not isinstance(answers, list):
        raise DataError(f'{place}: `answers` must be a list of {{"text": …, "answer_start": …}}, got {type(answers).__name__}')
    texts: list[Any] = []
    starts: list[int] = []
    for number, answer in enumerate(answers):
        if not isinstance(answer, dict) or "text" not in answer:
            raise DataError(f"{place}: answers[{number}] needs `text` and `answer_start` — fix the file")
        start = answer_start(answer.get("answer_start"))
        if start is None:
            given = "missing" if "answer_start" not in answer else repr(answer["answer_start"])
            raise DataError(
                f"{place}: answers[{number}].answer_start is {given} — give the answer's character offset in the "
                f'context as a whole number, e.g. "answer_start": 42'
            )
        texts.append(answer["text"])
        starts.append(start)
    return texts, starts


def whole_number(value: Any, signed: bool = True) -> int | None:
    """`value` as an int: a whole number, or text of one (as some exports write labels and offsets);
    None for anything else (a fraction, a bool, a list, missing). `signed`: text may carry a minus
    (labels such as -1 for unlabeled rows; an answer offset may not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (value.strip().lstrip("-") if signed else value.strip()).isdigit():
        return int(value)
    return None


def answer_start(value: Any) -> int | None:
    """An answer's character offset as an int (`whole_number`, no minus in text)."""
    return whole_number(value, signed=False)


def parse_article_range(text: str) -> tuple[int | None, int | None]:
    """`"0:38"` → (0, 38); either side may be empty, as in a Python slice."""
    start, _, end = text.partition(":")
    return (int(start) if start.strip() else None, int(end) if end.strip() else None)


def select_articles(rows: Any, articles: str, where: str) -> list[int]:
    """The positions of the questions of articles `start:end` (0-based, end excluded, Python slice
    rules) in `rows` (a Dataset).

    Articles are numbered by their order in a SQuAD file, or — for hub rows, which carry a `title`
    but no article number — by the order in which distinct titles first appear. Splitting by
    article keeps every paragraph on one side of a train/eval split.
    """
    names = rows.column_names
    if "article" in names:
        numbers = [int(number) for number in rows["article"]]
    elif "title" in names:
        order: dict[str, int] = {}
        numbers = [order.setdefault(str(title), len(order)) for title in rows["title"]]
    else:
        found = ", ".join(str(key) for key in names) or "none"
        raise DataError(
            f"{where}.articles: selecting articles needs SQuAD-style rows with an article or `title` — columns found: "
            f"{found}; remove `articles` or use a SQuAD file (format squad)"
        )
    count = max(numbers) + 1 if numbers else 0
    start, end = parse_article_range(articles)
    kept = set(range(count)[slice(start, end)])
    if not kept:
        raise DataError(f"{where}.articles: {articles!r} selects no article — the data has {count} articles (0…{count - 1})")
    return [position for position, number in enumerate(numbers) if number in kept]


def hub_class_names(source: Any, column: str) -> list[str] | None:
    """Names of an integer column's classes from the hub dataset's features (conll2003's
    `ner_tags` is a Sequence of ClassLabel), or None when the dataset does not name them.

    The dataset is already in the local cache (the rows were just read from it), so loading it
    again only reads its metadata and memory-maps the cached files.
    """

    import datasets  # where used, as in data._read_hub: about 80 MiB a process need not carry

    try:
        features = datasets.load_dataset(source.hub, source.config, split=source.split).features
    except Exception:  # rows were read, so this only fails for datasets without features
        return None
    feature = features.get(column) if features is not None else None
    # Sequence(ClassLabel) in datasets < 4, List(ClassLabel) later: both keep it in `.feature`.
    inner = getattr(feature, "feature", feature)
    names = getattr(inner, "names", None)
    return [str(name) for name in names] if names else None
