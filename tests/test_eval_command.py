"""`brewer eval`: every model reference a recipe accepts, `--data` and its source options, one eval
file per model and data set beside the run, errors that name the options, tables that fit 80
columns and print names literally, and the truncation warning once for the eval split."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import transformers
from rich.console import Console
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from brewer_cli.cli import app
from brewer_cli.errors import BrewerError
from brewer_cli.evaluate_command import evaluate
from brewer_cli.synthetic import negation_sentiment
from tests.conftest import distill_recipe, save_tiny_model, write_recipe
from tests.task_fixtures import ner_sentences, tokenizer, write_conll
from tests.test_safe_loading import install_checkpoint_package

runner = CliRunner()
LABELS = ["negative", "positive"]


def make_run(parent: Path, name: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A finished run as `brewer distill` leaves it, without training: recipe.yaml and final/."""
    run_dir = parent / name
    run_dir.mkdir(parents=True)
    save_tiny_model(run_dir / "final", tokenizer_dir, seed=seed)
    write_recipe(run_dir, distill_recipe(str(run_dir / "final"), name=name))
    return run_dir


def expected_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """The accuracy computed here with transformers alone, to hold brewer's number to."""
    tokenizer_ = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    correct = 0
    with torch.inference_mode():
        for row in rows:
            encoded = tokenizer_(row["text"], truncation=True, max_length=32, return_tensors="pt")
            predicted = int(model(**encoded).logits.argmax(-1))
            correct += LABELS[predicted] == row["label"]
    return correct / len(rows)


def write_tsv(path: Path, rows: list[dict], text: str = "sentence", label: str = "polarity") -> Path:
    lines = [f"{text}\t{label}"] + [f"{row['text']}\t{row['label']}" for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=80)


def assert_clean_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in {flat!r}"
    return flat


# ----------------------------------------------------------------------------- where it is written


def test_run_directory_eval_is_written_beside_the_run_with_the_right_accuracy(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    result = runner.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert not (run_dir / "final" / "eval.json").exists()
    rows = negation_sentiment(32, 2)  # the recipe's eval split
    assert report["examples"] == 32
    assert report["metric"] == "accuracy"
    assert report["model"]["metrics"]["accuracy"] == pytest.approx(expected_accuracy(run_dir / "final", rows))
    assert {"accuracy", "f1", "macro_f1", "matthews_correlation"} <= set(report["model"]["metrics"])
    assert report["data"]["name"] == "data.eval"
    source = report["data"]["source"]
    assert (source["synthetic"], source["examples"], source["seed"]) == ("negation_sentiment", 32, 2)
    assert report["model"]["checkpoint"] == str((run_dir / "final").resolve())

    # The same model and data again: the same file, rewritten.
    again = runner.invoke(app, ["eval", str(run_dir / "final")])
    assert again.exit_code == 0, again.output
    assert sorted(path.name for path in run_dir.glob("eval*.json")) == ["eval.json"]


def test_each_data_set_and_checkpoint_gets_its_own_file(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    save_tiny_model(run_dir / "best", tokenizer_dir, seed=5)
    rows = negation_sentiment(20, 7)
    dev = write_tsv(tmp_path / "data" / "dev.tsv", rows)
    other_dev = write_tsv(tmp_path / "other" / "dev.tsv", rows[:10])

    evaluate(str(run_dir), console=quiet())
    first = evaluate(str(run_dir), data_path=str(dev), source_options={"text": "sentence", "label": "polarity"}, console=quiet())
    evaluate(str(run_dir / "best"), console=quiet())
    second = evaluate(
        str(run_dir), data_path=str(other_dev), source_options={"text": "sentence", "label": "polarity"}, console=quiet()
    )
    again = evaluate(str(run_dir), data_path=str(dev), source_options={"text": "sentence", "label": "polarity"}, console=quiet())

    assert sorted(path.name for path in run_dir.glob("eval*.json")) == [
        "eval-best.json",
        "eval-dev-2.json",  # another dev.tsv: a new number, not the first one's file
        "eval-dev.json",
        "eval.json",
    ]
    assert not list((run_dir / "final").glob("eval*")) and not list((run_dir / "best").glob("eval*"))
    recorded = json.loads((run_dir / "eval-dev.json").read_text())
    assert recorded["data"]["name"] == f"--data {dev}"
    assert recorded["data"]["source"]["path"] == str(dev.resolve())
    assert recorded["data"]["format"] == "tsv"
    assert recorded["examples"] == 20 and second["examples"] == 10
    assert json.loads((run_dir / "eval-dev-2.json").read_text())["data"]["source"]["path"] == str(other_dev.resolve())
    assert first["model"]["metrics"] == again["model"]["metrics"]
    assert first["model"]["metrics"]["accuracy"] == pytest.approx(expected_accuracy(run_dir / "final", rows))
    assert json.loads((run_dir / "eval-best.json").read_text())["model"]["checkpoint"] == str((run_dir / "best").resolve())


def test_source_options_shape_the_data(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    rows = negation_sentiment(20, 7)
    dev = write_tsv(tmp_path / "dev.txt", rows, text="review", label="sentiment")
    result = runner.invoke(
        app,
        ["eval", str(run_dir), "--data", str(dev), "--format", "tsv", "--text", "review", "--label", "sentiment", "--limit", "6"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval-dev.json").read_text())
    assert report["examples"] == 6
    assert report["data"]["format"] == "tsv"
    assert report["data"]["source"]["limit"] == 6
    assert report["model"]["metrics"]["accuracy"] == pytest.approx(expected_accuracy(run_dir / "final", rows[:6]))


def test_bare_model_directory_with_a_recipe_writes_inside_it(tmp_path, tokenizer_dir, teacher_dir):
    recipe = write_recipe(tmp_path, distill_recipe(teacher_dir), "task.yaml")
    result = runner.invoke(app, ["eval", str(teacher_dir), "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert json.loads((teacher_dir / "eval.json").read_text())["examples"] == 32


# ----------------------------------------------------------------------------- model references


def test_python_package_model_is_evaluated_through_the_recipe_loader(tmp_path, tokenizer_dir, teacher_dir, monkeypatch):
    name = "brewerevalpackage"
    site = tmp_path / "site"
    install_checkpoint_package(site, name, teacher_dir, tmp_path / "imported")
    # sys.path[0] is the script's directory, which installed-package lookup leaves out.
    monkeypatch.setattr(sys, "path", [sys.path[0], str(site), *sys.path[1:]])
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, distill_recipe(teacher_dir), "task.yaml")

    report = evaluate(f"python-package:{name}", recipe_path=str(recipe), console=quiet())
    sys.modules.pop(name, None)
    # Not written into the package's directory: into the current one, named by the package.
    written = tmp_path / f"eval-{name}.json"
    assert json.loads(written.read_text())["model"]["checkpoint"] == f"python-package:{name}"
    assert not (teacher_dir / "eval.json").exists()
    assert report["model"]["metrics"]["accuracy"] == pytest.approx(expected_accuracy(teacher_dir, negation_sentiment(32, 2)))


def test_hub_id_offline_is_one_clear_error(tmp_path, teacher_dir):
    recipe = write_recipe(tmp_path, distill_recipe(teacher_dir))
    result = runner.invoke(app, ["eval", "brewer-test-owner/no-such-model", "--recipe", str(recipe)])
    # The message of models.load_config, the loader a recipe's hub checkpoint goes through.
    assert_clean_error(
        result,
        "TARGET: could not load the config of 'brewer-test-owner/no-such-model'",
        "without network only local directories load",
    )


def test_hub_id_without_a_recipe_asks_for_one(tmp_path):
    result = runner.invoke(app, ["eval", "brewer-test-owner/no-such-model"])
    assert_clean_error(result, "brewer-test-owner/no-such-model: no recipe.yaml found beside this model — pass --recipe RECIPE")


def test_missing_against_names_the_option(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    result = runner.invoke(app, ["eval", str(run_dir), "--against", str(tmp_path / "nothing")])
    assert_clean_error(result, f"--against {tmp_path / 'nothing'}: no such run directory or checkpoint")


# ----------------------------------------------------------------------------- errors name --data


def test_data_errors_name_the_options(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    dev = write_tsv(tmp_path / "dev.tsv", negation_sentiment(4, 7))

    missing = tmp_path / "nothing.tsv"
    assert_clean_error(runner.invoke(app, ["eval", str(run_dir), "--data", str(missing)]), f"--data {missing}: no such file")

    column = assert_clean_error(
        runner.invoke(app, ["eval", str(run_dir), "--data", str(dev)]),
        f"--data {dev}: text column 'text' not found — columns found: sentence, polarity",
    )
    assert "data.eval" not in column and "data.train" not in column

    unknown = tmp_path / "dev.dat"
    unknown.write_text("a\tb\n")
    assert_clean_error(
        runner.invoke(app, ["eval", str(run_dir), "--data", str(unknown)]),
        f"--data {unknown}: cannot tell the format from the file name — give --format",
    )
    assert_clean_error(
        runner.invoke(app, ["eval", str(run_dir), "--data", str(dev), "--limit", "0"]), "--limit 0: Input should be greater than"
    )
    assert_clean_error(runner.invoke(app, ["eval", str(run_dir), "--limit", "3"]), "--limit: describe the file given with --data")
    assert not list(run_dir.glob("eval*"))


# ----------------------------------------------------------------------------- printing


def test_table_fits_80_columns_and_prints_names_literally(tmp_path, tokenizer_dir):
    # A run directory whose path holds rich markup: `[/x]` would crash a markup reader.
    run_dir = make_run(tmp_path / "runs" / "tiny[/x]" / "[bold]", "run", tokenizer_dir)
    teacher = save_tiny_model(tmp_path / "teacher [plot]", tokenizer_dir, seed=3)
    console = Console(file=io.StringIO(), width=80)
    report = evaluate(str(run_dir), against=str(teacher), console=console)
    printed = console.file.getvalue()
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= 80
    for role in ("model", "teacher"):
        for name in ("accuracy", "macro_f1", "matthews_correlation"):
            value = report[role]["metrics"][name]
            assert any(name in line and f"{value:.4f}" in line for line in lines), (name, printed)
    share = report["model"]["metrics"]["accuracy"] / report["teacher"]["metrics"]["accuracy"]
    assert f"{share:.1%}" in printed
    flat = "".join(printed.split())
    assert "tiny[/x]/[bold]/run" in flat and "teacher[plot]" in flat
    assert (run_dir / "eval.json").is_file()


# ----------------------------------------------------------------------------- NER: the warning


def test_truncation_warning_prints_once_naming_the_eval_split(tmp_path, caplog):
    from tests.task_fixtures import save_tiny_model as save_task_model

    words = tokenizer()
    tags = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    run_dir = tmp_path / "runs" / "ner"
    labels = {"num_labels": len(tags), "id2label": dict(enumerate(tags)), "label2id": {t: i for i, t in enumerate(tags)}}
    save_task_model(run_dir / "final", transformers.AutoModelForTokenClassification, words, **labels)
    train = write_conll(tmp_path / "train.conll", ner_sentences(8, 1))
    long_sentences = [(sentence * 4, tag_list * 4) for sentence, tag_list in ner_sentences(6, 2)]
    evaluation = write_conll(tmp_path / "eval.conll", long_sentences)
    recipe = {
        "name": "ner",
        "task": {"kind": "token_classification"},
        "data": {"train": {"path": str(train)}, "eval": {"path": str(evaluation)}, "max_length": 8},
        "teacher": {"checkpoint": str(run_dir / "final")},
        "student": {"checkpoint": str(run_dir / "final")},
        "distillation": {"kind": "basic"},
    }
    write_recipe(run_dir, recipe)
    with caplog.at_level(logging.WARNING):
        report = evaluate(str(run_dir), against=str(run_dir / "final"), console=quiet())
    warnings = [record.getMessage() for record in caplog.records if "longer than data.max_length" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert ": data.eval: 6 of 6 sentences" in warnings[0] and "data.train" not in warnings[0]
    assert report["metric"] == "f1" and report["examples"] == 6
    # The same file given with --data: the warning names the option, not the recipe's split.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate(str(run_dir), data_path=str(evaluation), console=quiet())
    warnings = [record.getMessage() for record in caplog.records if "longer than data.max_length" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("--data: 6 of 6 sentences"), warnings


def test_general_corpus_has_no_metric_to_evaluate(tmp_path, tokenizer_dir):
    run_dir = make_run(tmp_path / "runs", "tiny", tokenizer_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence\nanother one\n")
    recipe = write_recipe(
        tmp_path,
        distill_recipe(
            str(run_dir / "final"),
            task={"kind": "masked_lm"},
            data={"train": {"path": str(corpus)}, "eval": {"path": str(corpus)}, "max_length": 16},
        ),
    )
    with pytest.raises(BrewerError, match="has no metric of its own"):
        evaluate(str(run_dir), recipe_path=str(recipe), console=quiet())


# ----------------------------------------------------------------------------- --version, -h


def test_version_and_short_help():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"brewer {version('brewer')}"
    for arguments in (["-h"], ["eval", "-h"], ["size-report", "-h"]):
        short, long = runner.invoke(app, arguments), runner.invoke(app, [*arguments[:-1], "--help"])
        assert short.exit_code == 0 and short.output == long.output, arguments
    eval_help = " ".join(runner.invoke(app, ["eval", "-h"], terminal_width=200).output.split())
    for option in ("--data", "--format", "--quoting", "--text", "--text-pair", "--label", "--limit", "--articles", "--output"):
        assert option in eval_help
    # Help text is not read as rich markup: brackets print as written.
    assert "brewer[plot]" in runner.invoke(app, ["size-report", "-h"], terminal_width=200).output
