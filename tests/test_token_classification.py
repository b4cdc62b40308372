"""Token classification: CoNLL reading, sub-word label alignment, tag lists, strict IOB2 entity F1,
KD masks, and a tiny end-to-end distillation with `brewer eval --against`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource, validate_recipe
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.formats import read_conll
from brewer_cli.tasks.token_classification import (
    IGNORED,
    align_labels,
    entity_scores,
    tag_list_from,
    word_accuracy,
)
from tests.task_fixtures import TINY_BERT, ner_sentences, tokenizer, write_conll

TAGS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]


@pytest.fixture(scope="module")
def word_tokenizer():
    return tokenizer()


def ner_recipe(tmp_path: Path, teacher: Path | str, **task: object) -> dict:
    train = write_conll(tmp_path / "train.conll", ner_sentences(48, 1))
    evaluation = write_conll(tmp_path / "eval.conll", ner_sentences(16, 2))
    return {
        "name": "ner-tiny",
        "task": {"kind": "token_classification", **task},
        "data": {"train": {"path": str(train)}, "eval": {"path": str(evaluation)}, "max_length": 64},
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(TINY_BERT)},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3},
        "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5},
    }


# ----------------------------------------------------------------------------- CoNLL files


def test_conll_reader_skips_docstart_and_extra_blank_lines(tmp_path):
    path = tmp_path / "data.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "-DOCSTART- -X- -X- O\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n",  # the last sentence has no blank line after it
        encoding="utf-8",
    )
    rows = read_conll(path, "recipe.yaml: data.train")
    assert [row["tokens"] for row in rows] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [row["ner_tags"] for row in rows] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert [row["line"] for row in rows] == [3, 8]


def test_conll_reader_reports_a_line_with_the_wrong_column_count(tmp_path):
    path = tmp_path / "data.conll"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ O\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_conll(path, "recipe.yaml: data.train")
    message = str(error.value)
    assert f"{path}:2: expected 4 columns (as on line 1), found 3: 'rejects VBZ O'" in message
    assert "token first" in message


def test_conll_reader_needs_a_tag_column(tmp_path):
    path = tmp_path / "data.conll"
    path.write_text("\nlonely\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.conll:2: a CoNLL line needs at least two columns"):
        read_conll(path, "recipe.yaml: data.train")


def test_conll_format_goes_through_read_source_with_recipe_column_names(tmp_path):
    from brewer_cli.tasks.data import read_source

    path = write_conll(tmp_path / "data.txt", [(["a", "b"], ["O", "B-X"])])
    raw = ner_recipe(tmp_path, "unused")
    raw["data"].update({"tokens": "words", "tags": "labels"})
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    rows = read_source(DataSource(path=str(path), format="conll"), recipe, "data.train")
    assert rows == [{"words": ["a", "b"], "labels": ["O", "B-X"], "line": 3}]


# ----------------------------------------------------------------------------- alignment


def test_first_piece_gets_the_tag_and_the_other_pieces_are_ignored():
    # [CLS] john sm ##ith works [SEP]: word 1 ("smith") has two pieces.
    word_ids = [None, 0, 1, 1, 2, None]
    labels, starts = align_labels(word_ids, [3, 6, 0], TAGS, label_all_tokens=False)
    assert labels == [IGNORED, 3, 6, IGNORED, 0, IGNORED]
    assert starts == [1, 2, 4]


def test_label_all_tokens_turns_b_into_i_on_continuation_pieces():
    word_ids = [None, 0, 0, 0, 1, None]  # "blackburn" in three pieces, then "o"
    labels, _ = align_labels(word_ids, [TAGS.index("B-PER"), 0], TAGS, label_all_tokens=True)
    assert labels == [IGNORED, TAGS.index("B-PER"), TAGS.index("I-PER"), TAGS.index("I-PER"), 0, IGNORED]


def test_words_cut_off_by_max_length_have_no_start():
    labels, starts = align_labels([None, 0, 1, None], [0, 3, 6], TAGS, label_all_tokens=False)
    assert starts == [1, 2, -1]


def test_prepare_aligns_real_subwords_and_masks_kd_to_first_pieces(tmp_path, word_tokenizer):
    recipe = validate_recipe(ner_recipe(tmp_path, "unused"), tmp_path / "recipe.yaml")
    task = TASKS.get("token_classification")(recipe.task)
    data = task.prepare(recipe, word_tokenizer)
    assert data.label_names == TAGS  # sorted, O first
    item = data.train[0]
    words = ner_sentences(48, 1)[0][0]
    assert len(item["input_ids"]) > len(words) + 2  # the tiny vocabulary splits words into pieces
    tagged = [position for position, label in enumerate(item["labels"]) if label != IGNORED]
    assert tagged == item["word_starts"] and len(tagged) == len(words)
    batch = task.collate(word_tokenizer)([data.train[0], data.train[1]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    mask = task.kd_mask(batch)
    assert mask.sum().item() == len(words) + len(ner_sentences(48, 1)[1][0])
    assert not mask[:, 0].any()  # [CLS] is not counted


def test_tag_list_is_sorted_with_o_first():
    assert tag_list_from([["B-PER", "O"], ["I-PER", "B-LOC"]]) == ["O", "B-LOC", "B-PER", "I-PER"]


def test_an_eval_tag_missing_from_the_tag_list_is_named(tmp_path, word_tokenizer):
    raw = ner_recipe(tmp_path, "unused")
    write_conll(tmp_path / "eval.conll", [(["john", "paris"], ["B-PER", "B-CITY"])])
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    with pytest.raises(DataError) as error:
        TASKS.get("token_classification")(recipe.task).prepare(recipe, word_tokenizer)
    message = str(error.value)
    assert "data.eval" in message and "eval.conll:3" in message and "tag 'B-CITY' is not in the tag list" in message
    assert "the training data's tags" in message


def test_integer_tags_need_names(tmp_path, word_tokenizer):
    rows = [{"tokens": ["john", "paris"], "ner_tags": [1, 0]}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    raw = ner_recipe(tmp_path, "unused")
    raw["data"] = {"train": {"path": str(tmp_path / "train.jsonl")}, "max_length": 32}
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    with pytest.raises(DataError, match=r"integer tags and nothing names them — give the names in id order with `task.labels"):
        TASKS.get("token_classification")(recipe.task).prepare(recipe, word_tokenizer)
    raw["task"]["labels"] = ["O", "B-PER"]
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    data = TASKS.get("token_classification")(recipe.task).prepare(recipe, word_tokenizer)
    assert data.label_names == ["O", "B-PER"]
    assert [label for label in data.train[0]["labels"] if label != IGNORED] == [1, 0]


def test_hub_integer_tags_are_named_by_the_dataset_features(tmp_path, word_tokenizer, monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])),
        }
    )
    dataset = datasets.Dataset.from_dict({"tokens": [["john", "smith", "paris"]], "ner_tags": [[1, 2, 3]]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dataset)
    raw = ner_recipe(tmp_path, "unused")
    raw["data"] = {"train": {"hub": "conll2003", "split": "train"}, "max_length": 32}
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    task = TASKS.get("token_classification")(recipe.task)
    data = task.prepare(recipe, word_tokenizer)
    # The dataset's names in id order, also those no sentence uses.
    assert data.label_names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    tagged = [data.label_names[label] for label in data.train[0]["labels"] if label != IGNORED]
    assert tagged == ["B-PER", "I-PER", "B-LOC"]


# ----------------------------------------------------------------------------- metric


def test_entity_scores_on_hand_made_sequences():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    scores = entity_scores(gold, predicted)
    # Gold: PER, LOC, ORG, PER (4); predicted: PER, ORG, ORG (3); correct: PER and the second ORG (2).
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert scores["f1_PER"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # 1 of 1 predicted right, 1 of 2 found
    assert scores["f1_ORG"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert scores["f1_LOC"] == 0.0


def test_strict_iob2_does_not_accept_an_entity_starting_with_i():
    gold = [["B-PER", "I-PER", "O"]]
    predicted = [["I-PER", "I-PER", "O"]]  # conlleval's lenient rule would count this as correct
    assert entity_scores(gold, predicted)["f1"] == 0.0
    assert entity_scores(gold, [["B-PER", "O", "O"]])["f1"] == 0.0  # wrong end
    assert entity_scores(gold, [["B-PER", "I-PER", "O"]])["f1"] == 1.0


def test_word_accuracy():
    assert word_accuracy([["O", "B-PER"], ["O"]], [["O", "O"], ["O"]]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- end to end


def test_teacher_training_distillation_and_brewer_eval_end_to_end(tmp_path):
    """`teacher.train` with a WordPiece vocabulary trained on the CoNLL words, then `basic` KD, then
    `brewer eval --against` the teacher's run."""
    from brewer_cli.cli import app
    from brewer_cli.commands import distill

    raw = ner_recipe(tmp_path, tmp_path / "runs" / "ner-teacher" / "final")
    raw["teacher"]["train"] = {
        "model": {"config": dict(TINY_BERT), "tokenizer": {"train_wordpiece": {"vocab_size": 100}}},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 3.0e-3, "progress": False},
    }
    summary = distill(validate_recipe(raw, tmp_path / "recipe.yaml"), tmp_path / "runs")
    assert summary["metric"] == "f1"
    for role in ("teacher", "student"):
        metrics = summary[role]["metrics"]
        assert {"precision", "recall", "f1", "accuracy", "f1_PER", "f1_LOC", "f1_ORG"} <= set(metrics)
        assert 0.0 <= metrics["f1"] <= 1.0
    teacher_summary = json.loads((tmp_path / "runs" / "ner-teacher" / "summary.json").read_text())
    assert teacher_summary["model"]["metrics"]["accuracy"] > 0.5  # it learned something from 6 steps
    records = [json.loads(line) for line in (tmp_path / "runs" / "ner-tiny" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(record["kd"])) for record in records if "kd" in record)

    run_dir = tmp_path / "runs" / "ner-tiny"
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--against", str(tmp_path / "runs" / "ner-teacher")])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["metric"] == "f1" and report["examples"] == 16
    assert report["model"]["metrics"]["f1"] == pytest.approx(summary["student"]["metrics"]["f1"])
    assert report["teacher"]["metrics"]["f1"] == pytest.approx(summary["teacher"]["metrics"]["f1"])
    assert "f1_PER" in report["model"]["metrics"]
