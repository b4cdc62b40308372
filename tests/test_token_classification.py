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
    assert rows.to_list() == [{"words": ["a", "b"], "labels": ["O", "B-X"], "line": 3}]


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


# ----------------------------------------------------------------------------- tagging schemes


def to_iob1(tags: list[str]) -> list[str]:
    """IOB2 → IOB1 (the original CoNLL-2003 files): B- only where an entity follows one of its type."""
    result, previous = [], "O"
    for tag in tags:
        follows_same_type = previous != "O" and previous[2:] == tag[2:]
        result.append("I-" + tag[2:] if tag.startswith("B-") and not follows_same_type else tag)
        previous = tag
    return result


def test_schemes_are_detected_and_converted_to_iob2():
    from brewer_cli.tasks.tag_schemes import convert_to_iob2, scheme_of

    bioes = convert_to_iob2([["S-PER", "O", "B-LOC", "E-LOC", "B-ORG", "I-ORG", "E-ORG"]])
    assert (bioes.scheme, bioes.converted) == ("BIOES", 3)  # S→B, E→I twice
    assert bioes.tags == [["B-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG"]]
    iob1 = convert_to_iob2([["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]])
    assert (iob1.scheme, iob1.converted) == ("IOB1", 3)  # the entities that start with I- (B-PER already does)
    assert iob1.tags == [["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]]
    iob2 = convert_to_iob2([["B-PER", "I-PER", "B-PER", "O"]])
    assert (iob2.scheme, iob2.converted, iob2.tags) == ("IOB2", 0, [["B-PER", "I-PER", "B-PER", "O"]])
    assert scheme_of([["B-PER", "O", "I-LOC"]]) == "IOB1/IOB2 mixed"  # a lone B- and an I- start
    assert convert_to_iob2([["NN", "VBZ"]]) is None  # POS tags: not entity tags, left alone


def test_iob1_eval_data_scores_as_conlleval(tmp_path, word_tokenizer):
    """The issue's small case. Gold (IOB1) has 6 entities: PER john, PER mary (B- after a PER), LOC
    paris; ORG acme, MISC new york, MISC rome. The predictions, IOB1-style, find 6 and get 5 right
    (MISC "new" instead of "new york"): conlleval P = R = F1 = 5/6 — conlleval's chunk rules are
    seqeval's default mode. Strict IOB2 on the raw tags sees only the B- entities (PER mary, MISC
    rome) in both and gives 1.000: the defect. brewer converts the gold to IOB2 and, as the eval
    file is IOB1, reads the predictions as conlleval does: 5/6."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    gold = [
        (["john", "smith", "mary", "in", "paris"], ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]),
        (["acme", "in", "new", "york", "rome"], ["I-ORG", "O", "I-MISC", "I-MISC", "B-MISC"]),
    ]
    predicted = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["I-ORG", "O", "I-MISC", "O", "B-MISC"]]
    gold_tags = [tags for _, tags in gold]
    assert f1_score(gold_tags, predicted) == pytest.approx(5 / 6)  # conlleval
    assert f1_score(gold_tags, predicted, mode="strict", scheme=IOB2) == 1.0  # strict on raw IOB1: wrong

    raw = ner_recipe(tmp_path, "unused")
    more = (["globex", "corp", "in", "new", "york"], ["I-ORG", "I-ORG", "O", "I-LOC", "I-LOC"])
    write_conll(tmp_path / "train.conll", [*gold, more])
    write_conll(tmp_path / "eval.conll", gold)
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    task = TASKS.get("token_classification")(recipe.task)
    data = task.prepare(recipe, word_tokenizer)
    assert data.extra["tag_scheme"] == {
        "data.train": {"scheme": "IOB1", "converted_tags": 6},  # john, paris, acme, new; globex, new
        "data.eval": {"scheme": "IOB1", "converted_tags": 4},
    }
    # The label list is IOB2: B-LOC and B-ORG, which the IOB1 files never use, are in it.
    assert data.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert data.extra["eval_tags"][1] == ["B-ORG", "O", "B-MISC", "I-MISC", "B-MISC"]
    assert data.extra["plan_lines"][0] == (
        "tags: data.train IOB1, 6 tags converted to IOB2; data.eval IOB1, 4 tags converted to IOB2"
    )
    rows = []
    for number, tags in enumerate(predicted):
        row = torch.zeros(1, len(data.eval[number]["input_ids"]), dtype=torch.long)
        for position, tag in zip(data.eval.columns["word_starts"][number], tags):
            row[0, position] = data.label_names.index(tag)
        rows.append(row)
    metrics = task.compute_metrics(rows, [0, 1], data)
    assert metrics["f1"] == pytest.approx(5 / 6) and metrics["precision"] == pytest.approx(5 / 6)
    assert metrics["f1_MISC"] == pytest.approx(0.5)  # 1 of 2 right on each side


def test_bioes_data_against_a_bioes_tag_list_is_refused(tmp_path, word_tokenizer):
    raw = ner_recipe(tmp_path, "unused", labels=["O", "B-PER", "I-PER", "E-PER", "S-PER"])
    write_conll(tmp_path / "train.conll", [(["john", "smith", "mary"], ["B-PER", "E-PER", "S-PER"])])
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    with pytest.raises(DataError) as error:
        TASKS.get("token_classification")(recipe.task).prepare(recipe, word_tokenizer)
    assert str(error.value) == (
        f"{tmp_path / 'recipe.yaml'}: data.train: the data's tags are BIOES and are converted to IOB2 for training and "
        f"scoring, but the tag list from task.labels is not IOB2 (E-PER, S-PER) — give IOB2 tags (O, B-TYPE, "
        f"I-TYPE) in task.labels, or use a teacher trained on IOB2 tags"
    )


def test_an_iob1_tag_list_missing_the_b_tags_is_named_with_the_conversion(tmp_path, word_tokenizer):
    raw = ner_recipe(tmp_path, "unused", labels=["O", "I-PER"])
    write_conll(tmp_path / "train.conll", [(["john", "smith", "works"], ["I-PER", "I-PER", "O"])])
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    with pytest.raises(DataError) as error:
        TASKS.get("token_classification")(recipe.task).prepare(recipe, word_tokenizer)
    assert "train.conll:3: tag 'B-PER' is not in the tag list (O, I-PER), which comes from task.labels (the data's " in str(
        error.value
    )
    assert "IOB1 tags were converted to IOB2, where every entity starts with B-) — add it to task.labels" in str(error.value)


def test_iob1_files_in_the_plan_and_summary(tmp_path):
    """A run on IOB1 files says so in the --dry-run plan and in summary.json."""
    import io

    from rich.console import Console

    from brewer_cli.commands import distill

    train = [(words, to_iob1(tags)) for words, tags in ner_sentences(48, 1)]
    evaluation = [(words, to_iob1(tags)) for words, tags in ner_sentences(16, 2)]
    changed = sum(a != b for (_, tags), (_, new) in zip(ner_sentences(48, 1), train) for a, b in zip(tags, new))
    assert changed == 48 * 3  # every entity of these sentences follows an O
    raw = ner_recipe(tmp_path, "unused")
    write_conll(tmp_path / "train.conll", train)
    write_conll(tmp_path / "eval.conll", evaluation)
    del raw["teacher"], raw["student"]
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"train_wordpiece": {"vocab_size": 100}}}
    raw["distillation"] = {"kind": "trainer"}
    raw["training"]["max_steps"] = 2
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    output = io.StringIO()
    distill(recipe, tmp_path / "runs", dry_run=True, console=Console(file=output, width=200))
    assert "  tags: data.train IOB1, 144 tags converted to IOB2; data.eval IOB1, 48 tags converted to IOB2" in output.getvalue()
    summary = distill(recipe, tmp_path / "runs", console=Console(file=io.StringIO(), width=200))
    assert summary["data"]["tag_scheme"] == {
        "data.train": {"scheme": "IOB1", "converted_tags": 144},
        "data.eval": {"scheme": "IOB1", "converted_tags": 48},
    }
    # The second run read the tokenized splits the dry run had written.
    assert summary["data"]["tokenization_cache"]["hit"] is True
    written = json.loads((tmp_path / "runs" / "ner-tiny" / "summary.json").read_text())
    assert written["data"] == summary["data"]
    assert {"B-PER", "B-ORG", "B-LOC"} <= set(
        json.loads((tmp_path / "runs" / "ner-tiny" / "final" / "config.json").read_text())["label2id"]
    )


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
