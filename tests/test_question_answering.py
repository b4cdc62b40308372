"""Extractive QA: SQuAD reading and article selection, answer re-location, windows with doc_stride,
span decoding, the official EM/F1, v2 null answers, and a tiny end-to-end distillation with
`brewer eval --against`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource, validate_recipe
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.data import read_source
from brewer_cli.tasks.question_answering import QuestionExample, Window, decode_answer, locate_answer
from brewer_cli.tasks.squad_metric import exact_match, f1_score, normalize_answer, squad_scores
from tests.task_fixtures import TINY_BERT, save_tiny_model, squad_file, tokenizer


@pytest.fixture(scope="module")
def word_tokenizer():
    return tokenizer()


def qa_recipe(tmp_path: Path, teacher: Path | str, **task: object) -> dict:
    path = squad_file(tmp_path / "squad.json", 6, seed=3)
    return {
        "name": "qa-tiny",
        "task": {"kind": "question_answering", "doc_stride": 16, **task},
        "data": {
            "train": {"path": str(path), "articles": "0:4"},
            "eval": {"path": str(path), "articles": "4:"},
            "max_length": 48,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(TINY_BERT)},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3},
        "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5},
    }


def load(tmp_path: Path, raw: dict):
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    return recipe, TASKS.get("question_answering")(recipe.task)


# ----------------------------------------------------------------------------- reading


def test_squad_file_rows_and_article_selection(tmp_path):
    recipe, _ = load(tmp_path, qa_recipe(tmp_path, "unused"))
    path = squad_file(tmp_path / "small.json", 5, seed=1, facts=2)
    rows = read_source(DataSource(path=str(path)), recipe, "data.train")  # a .json file of SQuAD's shape
    assert len(rows) == 10 and set(rows[0]) == {"id", "title", "context", "question", "answers", "article"}
    assert rows[0]["answers"]["text"][0] in rows[0]["context"]
    train = read_source(DataSource(path=str(path), format="squad", articles="0:3"), recipe, "data.train")
    evaluation = read_source(DataSource(path=str(path), format="squad", articles="3:"), recipe, "data.eval")
    assert {row["title"] for row in train} == {"article_0", "article_1", "article_2"}
    assert {row["title"] for row in evaluation} == {"article_3", "article_4"}
    assert not {row["context"] for row in train} & {row["context"] for row in evaluation}
    with pytest.raises(DataError, match=r"articles: '7:9' selects no article — the data has 5 articles"):
        read_source(DataSource(path=str(path), articles="7:9"), recipe, "data.train")


def test_hub_rows_select_articles_by_title_order(tmp_path):
    import datasets

    from brewer_cli.tasks.formats import select_articles

    rows = datasets.Dataset.from_list([{"title": title, "id": str(number)} for number, title in enumerate("aabbbc")])
    assert select_articles(rows, "1:2", "r: data.train") == [2, 3, 4]
    with pytest.raises(DataError, match="needs SQuAD-style rows"):
        select_articles(datasets.Dataset.from_list([{"text": "x"}]), "0:1", "r: data.train")


def test_squad_v2_unanswerable_questions_get_empty_answers(tmp_path):
    from brewer_cli.tasks.formats import read_squad

    document = {
        "version": "v2.0",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "the cat is red .",
                        "qas": [
                            {"id": "a", "question": "what color is the cat ?", "answers": [{"text": "red", "answer_start": 11}]},
                            {
                                "id": "b",
                                "question": "what color is the dog ?",
                                "answers": [],
                                "is_impossible": True,
                                "plausible_answers": [{"text": "red", "answer_start": 11}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(document))
    rows = read_squad(path, "r: data.train")
    assert rows[1]["answers"] == {"text": [], "answer_start": []}


# ----------------------------------------------------------------------------- answers


def test_locate_answer_outcomes():
    context = "two cats met Westwood and two dogs"
    assert locate_answer(context, "cats", 4) == (4, "ok")
    assert locate_answer(context, "dogs", 2) == (30, "relocated")  # wrong offset: nearest occurrence
    assert locate_answer(context, "two", 20) == (26, "relocated")  # nearest of 0 and 26
    assert locate_answer(context, "two", 16) == (26, "word_boundary")  # "two" inside "Westwood"
    assert locate_answer(context, "two", 12) == (0, "relocated")  # whole-word occurrences first
    assert locate_answer("in 2010 it", "10", 5) == (5, "partial_word")  # no whole-word "10": kept
    assert locate_answer(context, "horses", 0) == (None, "dropped")


def test_misaligned_answers_are_relocated_or_skipped_never_trained_wrong(tmp_path, caplog):
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused"))
    context = "the cat of john is red . the dog of mary is blue ."
    examples = [
        QuestionExample("ok", "cat ?", context, ["red"], [19]),
        QuestionExample("moved", "dog ?", context, ["blue"], [3]),
        QuestionExample("gone", "horse ?", context, ["green"], [5]),
        QuestionExample("half", "who ?", context, ["green", "mary"], [5, 0]),
    ]
    with caplog.at_level("WARNING"):
        kept, counts = task.align_answers(examples, recipe, "data.train")
    assert [example.id for example in kept] == ["ok", "moved", "half"]
    assert kept[1].answer_starts == [context.index("blue")]
    assert kept[2].answer_texts == ["mary"] and kept[2].answer_starts == [context.index("mary")]
    assert counts == {"relocated": 2, "word_boundary": 0, "dropped": 2, "questions_skipped": 1}
    assert "2 answer_start values that did not point at their text moved to the nearest occurrence" in caplog.text
    assert "1 questions left without an answer not trained on" in caplog.text


# ----------------------------------------------------------------------------- windows


def test_doc_stride_must_be_smaller_than_max_length(tmp_path, word_tokenizer):
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused", doc_stride=48))
    with pytest.raises(DataError, match=r"task.doc_stride: 48 must be smaller than data.max_length \(48\)"):
        task.prepare(recipe, word_tokenizer)
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused", doc_stride=45))
    with pytest.raises(DataError, match=r"task.doc_stride: 45 leaves no room for the question"):
        task.prepare(recipe, word_tokenizer)


def window_texts(task, example, tokenizer, max_length, stride, recipe):
    train = task.windows([example], tokenizer, max_length, stride, recipe, "data.train", for_eval=False)
    evaluation = task.windows([example], tokenizer, max_length, stride, recipe, "data.eval", for_eval=True)
    found = []
    for window in range(len(train)):
        start, end = train.columns["start_positions"][window], train.columns["end_positions"][window]
        offsets = evaluation.columns["offset_mapping"][window]
        found.append(None if start == 0 else example.context[offsets[start][0] : offsets[end][1]])
    return found, evaluation


def test_windows_share_doc_stride_tokens_and_answers_across_a_boundary(tmp_path, word_tokenizer):
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused"))
    # "the cat of john is red ." is 7 tokens, the dog's sentence 9 ("bl ##u ##e"). Windows of 32
    # tokens hold 23 context tokens (the question takes 6 + 3 special), sharing 8: context tokens
    # 0-22, 15-37, 30-43. The answer is tokens 21-28, so the first window cuts it.
    assert [
        len(word_tokenizer.tokenize(text))
        for text in ("the cat of john is red .", "the dog of mary is blue .", "what color is the dog ?")
    ] == [7, 9, 6]
    context = " ".join(["the cat of john is red ."] * 3 + ["the dog of mary is blue ."] + ["the cat of john is red ."] * 2)
    answer = "the dog of mary is blue"
    example = QuestionExample("q", "what color is the dog ?", context, [answer], [context.index(answer)])
    start = example.answer_starts[0]
    found, evaluation = window_texts(task, example, word_tokenizer, 32, 8, recipe)
    assert len(found) == 3
    # Consecutive windows share exactly doc_stride context tokens.
    first = [offset for offset in evaluation.columns["offset_mapping"][0] if offset is not None]
    second = [offset for offset in evaluation.columns["offset_mapping"][1] if offset is not None]
    assert first[-8:] == second[:8]
    # Windows that hold the whole answer point at it; the others (also one that holds only a part) at [CLS].
    # The first window holds only "the dog" of it: [CLS]; the second the whole answer.
    assert found[:2] == [None, answer] and set(found[2:]) == {None}
    offsets = [offset for offset in evaluation.columns["offset_mapping"][0] if offset is not None]
    assert start < offsets[-1][1] < start + len(answer)


def test_answer_at_the_end_of_the_context(tmp_path, word_tokenizer):
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused"))
    context = " ".join(["the cat of john is red ."] * 4) + " the dog of mary is blue"
    example = QuestionExample("q", "what color is the dog ?", context, ["blue"], [len(context) - 4])
    found, _ = window_texts(task, example, word_tokenizer, 32, 8, recipe)
    assert found[-1] == "blue"


def test_collate_drops_offsets_and_example_ids(tmp_path, word_tokenizer):
    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused"))
    data = task.prepare(recipe, word_tokenizer)
    assert len(data.train) > data.extra["answer_alignment"]["relocated"]
    batch = task.collate(word_tokenizer)([data.eval[0], data.eval[1]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "context_mask", "index"}
    train_batch = task.collate(word_tokenizer)([data.train[0], data.train[1]])
    assert {"start_positions", "end_positions"} <= set(train_batch)
    starts, ends = task.labels(train_batch)
    mask = task.kd_mask(train_batch)
    # Targets are always positions KD can see: [CLS] or context tokens.
    assert mask.gather(1, starts[:, None]).all() and mask.gather(1, ends[:, None]).all()
    # The question is not in the KD softmax: token type 0 after [CLS] and before the context.
    question = (train_batch["token_type_ids"] == 0) & (train_batch["attention_mask"] == 1)
    question[:, 0] = False
    assert not (mask.bool() & question).any()


def test_logits_peaked_at_the_training_targets_decode_to_the_gold_answers(tmp_path, word_tokenizer):
    """Windows, offsets, targets, n-best decoding over windows and the metric agree with each other."""
    from brewer_cli.tasks.qa_windows import answer_positions

    recipe, task = load(tmp_path, qa_recipe(tmp_path, "unused"))
    data = task.prepare(recipe, word_tokenizer)
    examples, columns = data.extra["eval_question_examples"], data.eval.columns
    assert len(data.eval) > len(examples)  # contexts are split into several windows
    predictions, indices = [], []
    for window in range(len(data.eval)):
        example = examples[columns["example_index"][window]]
        start, end = answer_positions(example, columns["offset_mapping"][window], columns["cls_index"][window])
        length = len(columns["input_ids"][window]) + 3  # as if padded in its batch
        start_logits, end_logits = torch.full((1, length), -5.0), torch.full((1, length), -5.0)
        start_logits[0, start] = end_logits[0, end] = 10.0
        predictions.append((start_logits, end_logits))
        indices.append(window)
    output = tmp_path / "out"
    output.mkdir()
    assert task.compute_metrics(predictions, indices, data, output_dir=output) == {"exact_match": 100.0, "f1": 100.0}
    written = json.loads((output / "predictions.json").read_text())
    assert written == {example.id: example.answer_texts[0] for example in examples}


# ----------------------------------------------------------------------------- decoding


def test_decode_picks_the_best_span_over_windows():
    context = "alpha beta gamma delta"
    offsets = [None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    first = Window([0, 1, 2, 0, 0, 0], [0, 0, 3, 0, 0, 0], offsets)  # best "beta": 2 + 3 = 5
    second = Window([0, 0, 0, 4, 0, 0], [0, 0, 0, 0, 4, 0], offsets)  # best "gamma delta": 8
    assert decode_answer([first], context, 20, 30, allow_null=False) == "beta"
    assert decode_answer([first, second], context, 20, 30, allow_null=False) == "gamma delta"
    assert decode_answer([second], context, 20, 1, allow_null=False) in {"gamma", "delta"}  # max one token


def test_decode_never_returns_an_end_before_the_start_or_a_question_token():
    context = "alpha beta"
    offsets = [None, None, (0, 5), (6, 10), None]
    window = Window([0, 9, 0, 1, 0], [0, 0, 5, 0, 0], offsets)  # best start is a question token
    assert decode_answer([window], context, 20, 30, allow_null=False) == "alpha"  # 0 + 5 beats 1 + (end < start)


def test_v2_null_answer_wins_when_it_beats_every_span():
    context = "alpha beta"
    offsets = [None, (0, 5), (6, 10), None]
    unsure = Window([6, 1, 0, 0], [6, 1, 0, 0], offsets)  # null 12 > best span 2
    sure = Window([0, 5, 0, 0], [0, 5, 0, 0], offsets)  # null 0 < 10
    assert decode_answer([unsure], context, 20, 30, allow_null=True) == ""
    assert decode_answer([unsure], context, 20, 30, allow_null=False) == "alpha"
    # Over windows the null score is the lowest one, so a sure window decides.
    assert decode_answer([unsure, sure], context, 20, 30, allow_null=True) == "alpha"


# ----------------------------------------------------------------------------- metric


def test_official_normalization_and_scores():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    assert f1_score("the big cat", "cat") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1_score("cat cat", "cat") == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # counts, not sets
    assert f1_score("dog", "cat") == 0.0
    scores = squad_scores({"a": "Denver", "b": "blue whale"}, {"a": ["Denver Broncos", "Denver"], "b": ["the whale"]})
    assert scores["exact_match"] == pytest.approx(50.0)  # a matches its second answer; b does not match
    assert scores["f1"] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5) / 2 * 100)


def test_v2_scores_of_empty_answers():
    gold = {"answerable": ["red"], "unanswerable": []}
    scores = squad_scores({"answerable": "", "unanswerable": ""}, gold, version_2=True)
    assert scores["exact_match"] == 50.0 and scores["f1"] == 50.0
    assert scores["no_answer_exact_match"] == 100.0 and scores["has_answer_f1"] == 0.0
    assert squad_scores({"unanswerable": "red"}, {"unanswerable": []}, version_2=True)["f1"] == 0.0


def test_v1_keeps_a_gold_answer_that_normalizes_to_nothing():
    """evaluate-v1.1.py keeps every gold answer: "The" normalizes to "" like the prediction "the", so
    exact match is 1; its F1 is 0 (no token shared, the v1.1 rule even for two empty answers)."""
    assert squad_scores({"q": "the"}, {"q": ["The", "Denver"]}) == {"exact_match": 100.0, "f1": 0.0}
    assert f1_score("the", "The") == 0.0 and f1_score("the", "The", version_2=True) == 1.0
    # v1.1: a question without a prediction scores 0 and counts (an empty prediction would match "The").
    assert squad_scores({"other": "x"}, {"q": ["The"], "other": ["x"]}) == {"exact_match": 50.0, "f1": 50.0}


def test_v2_report_is_the_official_scripts_with_best_thresholds():
    """Values of evaluate-v2.0.py with --na-prob-file (no-answer scores) and its default threshold 1.0,
    computed by hand:
    a: answerable, exact answer, score -3.0           raw EM 1, F1 1
    b: answerable, "whale" for "blue whale", 0.5       raw EM 0, F1 2/3 (precision 1, recall 1/2)
    c: unanswerable, predicted "", 2.0                 raw EM 1, F1 1 (above 1.0: predicted unanswerable, right)
    d: unanswerable, predicted "red", -1.0             raw EM 0, F1 0
    e: answerable, gold "the" (normalizes to "", dropped by v2, so its gold is ""), "", 1.5
                                                       raw EM 1, F1 1; above 1.0 on an answerable question: 0
    exact = 2/5, f1 = (1 + 2/3 + 1)/5; HasAns (a, b, e): 1/3 and (1 + 2/3)/3; NoAns (c, d): 1/2 and 1/2.
    Best threshold, from every question unanswered (2 right) in rising score order a, d, b, e, c:
    EM 3 after a (best, at -3.0), 2, 2, 3, 3; F1 3 after a, 2, 2 + 2/3, 3 + 2/3 after e (best, at 1.5), same."""
    gold = {"a": ["Denver Broncos"], "b": ["blue whale"], "c": [], "d": [], "e": ["the"]}
    predictions = {"a": "Denver Broncos", "b": "whale", "c": "", "d": "red", "e": ""}
    scores = {"a": -3.0, "b": 0.5, "c": 2.0, "d": -1.0, "e": 1.5}
    official = {
        "exact": 40.0,
        "f1": 100 * (8 / 3) / 5,
        "total": 5,
        "HasAns_exact": 100 / 3,
        "HasAns_f1": 100 * (5 / 3) / 3,
        "HasAns_total": 3,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
        "best_exact": 60.0,
        "best_exact_thresh": -3.0,
        "best_f1": 100 * (11 / 3) / 5,
        "best_f1_thresh": 1.5,
    }
    brewer_names = {
        "exact_match": 40.0,
        "has_answer_exact_match": 100 / 3,
        "has_answer_f1": 100 * (5 / 3) / 3,
        "no_answer_exact_match": 50.0,
        "no_answer_f1": 50.0,
    }
    assert squad_scores(predictions, gold, version_2=True, no_answer_scores=scores) == pytest.approx({**official, **brewer_names})
    # Without no-answer scores (the script without --na-prob-file): no thresholds, no best_* keys.
    plain = squad_scores(predictions, gold, version_2=True)
    assert "best_f1" not in plain and plain["exact"] == 60.0  # c and e keep their raw scores


def test_decode_gives_the_null_score_minus_the_best_span_score():
    from brewer_cli.tasks.question_answering import decode

    context = "alpha beta"
    offsets = [None, (0, 5), (6, 10), None]
    unsure = Window([6, 1, 0, 0], [6, 1, 0, 0], offsets)  # null 12, best span "alpha" 2
    sure = Window([0, 5, 0, 0], [0, 5, 0, 0], offsets)  # null 0, best span 10
    assert decode([unsure], context, 20, 30, allow_null=True) == ("", 10.0)
    assert decode([unsure], context, 20, 30, allow_null=False) == ("alpha", 10.0)
    assert decode([unsure, sure], context, 20, 30, allow_null=True) == ("alpha", -10.0)  # lowest null, best span


def test_v2_metrics_and_null_odds_from_the_task(tmp_path, word_tokenizer):
    """Peaked logits at the training targets: every answer right, the unanswerable question's null
    answer wins; the report has the official v2 keys and null_odds.json the no-answer scores."""
    from brewer_cli.tasks.qa_windows import answer_positions

    raw = qa_recipe(tmp_path, "unused", version_2_with_negative=True)
    document = json.loads(Path(raw["data"]["eval"]["path"]).read_text())
    document["data"][5]["paragraphs"][0]["qas"].append({"id": "none", "question": "what color is the sky ?", "answers": []})
    Path(raw["data"]["eval"]["path"]).write_text(json.dumps(document))
    recipe, task = load(tmp_path, raw)
    data = task.prepare(recipe, word_tokenizer)
    examples, columns = data.extra["eval_question_examples"], data.eval.columns
    predictions, indices = [], []
    for window in range(len(data.eval)):
        example = examples[columns["example_index"][window]]
        start, end = answer_positions(example, columns["offset_mapping"][window], columns["cls_index"][window])
        start_logits, end_logits = (
            torch.full((1, len(columns["input_ids"][window])), -5.0),
            torch.full((1, len(columns["input_ids"][window])), -5.0),
        )
        start_logits[0, start] = end_logits[0, end] = 10.0
        predictions.append((start_logits, end_logits))
        indices.append(window)
    output = tmp_path / "out"
    output.mkdir()
    metrics = task.compute_metrics(predictions, indices, data, output_dir=output)
    assert metrics["exact"] == metrics["f1"] == metrics["HasAns_f1"] == metrics["NoAns_f1"] == 100.0
    assert metrics["total"] == 13 and metrics["NoAns_total"] == 1 and metrics["exact_match"] == 100.0
    # Answerable: the answer's window has null -5 + -5 and the span 10 + 10: -30; the unanswerable
    # question's windows have null 20 and best span -10: 30. Answering up to -30 is already best.
    odds = json.loads((output / "null_odds.json").read_text())
    assert odds["none"] == 30.0 and {value for key, value in odds.items() if key != "none"} == {-30.0}
    assert metrics["best_f1"] == 100.0 and metrics["best_f1_thresh"] == -30.0
    assert json.loads((output / "predictions.json").read_text())["none"] == ""


# ----------------------------------------------------------------------------- end to end


def test_distill_and_brewer_eval_end_to_end(tmp_path, word_tokenizer):
    from brewer_cli.cli import app
    from brewer_cli.commands import distill

    teacher = save_tiny_model(tmp_path / "teacher", transformers.AutoModelForQuestionAnswering, word_tokenizer)
    raw = qa_recipe(tmp_path, teacher)
    raw["distillation"]["probability_shift"] = True
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    summary = distill(recipe, tmp_path / "runs")
    assert summary["metric"] == "f1"
    for role in ("teacher", "student"):
        assert set(summary[role]["metrics"]) == {"exact_match", "f1"}
    records = [json.loads(line) for line in (tmp_path / "runs" / "qa-tiny" / "metrics.jsonl").read_text().splitlines()]
    losses = [record for record in records if "kd" in record]
    assert losses and all(torch.isfinite(torch.tensor([r["kd"], r["hard_label"]])).all() for r in losses)

    run_dir = tmp_path / "runs" / "qa-tiny"
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--against", str(teacher)])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["metric"] == "f1"
    assert report["examples"] == 12  # questions (2 articles × 6), not the windows long contexts are split into
    assert report["model"]["metrics"]["f1"] == pytest.approx(summary["student"]["metrics"]["f1"])
    assert report["teacher"]["metrics"]["f1"] == pytest.approx(summary["teacher"]["metrics"]["f1"])
    # Beside the eval file, one folder per model: never inside final/ or the teacher's checkpoint.
    predictions = json.loads((run_dir / "eval-predictions" / "model" / "predictions.json").read_text())
    assert len(predictions) == 12 and all(isinstance(text, str) for text in predictions.values())
    assert (run_dir / "eval-predictions" / "teacher" / "predictions.json").is_file()
    assert not (run_dir / "final" / "predictions.json").exists() and not (teacher / "predictions.json").exists()


def test_teacher_training_on_qa_learns_the_task(tmp_path, word_tokenizer):
    """The trainer path passes (start, end) positions to the QA head: its loss falls on a repeated batch."""
    from brewer_cli.build import build_run
    from brewer_cli.distillers.trainer import TrainerDistiller

    model_dir = save_tiny_model(tmp_path / "model", transformers.AutoModelForQuestionAnswering, word_tokenizer)
    raw = qa_recipe(tmp_path, "unused")
    raw.pop("teacher")
    raw.pop("student")
    raw["model"] = {"checkpoint": str(model_dir)}
    raw["distillation"] = {"kind": "trainer"}
    run = build_run(validate_recipe(raw, tmp_path / "recipe.yaml"), tmp_path / "runs")
    distiller = run.distiller
    assert isinstance(distiller, TrainerDistiller)
    batch = run.collate([run.data.train[i] for i in range(4)])
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = distiller(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.7
