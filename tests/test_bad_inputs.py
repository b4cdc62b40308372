"""Every bad input is one clear paragraph and exit code 2 (issue 15, point 5).

One table: each case writes its inputs under a fresh directory, runs the command line in-process
(typer's CliRunner) and expects exit code 2, the file:line or dotted path of the problem in the
message, no traceback, and nothing in the output directory that looks like a finished run. Cases
use `--dry-run` where it reaches the check, so that nothing trains. Nothing downloads: hub names
fail offline (HF_HUB_OFFLINE=1, set by conftest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from brewer_cli.cli import app
from tests.conftest import TINY_BERT, TINY_STUDENT, distill_recipe, save_tiny_model, write_recipe

runner = CliRunner()
LATIN_1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


@dataclass
class Models:
    tokenizer: Path
    teacher: Path  # a tiny BERT sequence classifier, 64 positions
    short_teacher: Path  # 16 positions
    small_vocabulary: Path  # a student whose vocabulary is smaller than the tokenizer's
    without_model_type: Path  # a checkpoint directory whose config.json has no model_type
    without_config: Path  # a directory with no config.json


@dataclass
class Case:
    root: Path  # this case's own directory
    models: Models

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def distill(self, raw: dict[str, Any], *extra: str, dry_run: bool = True) -> list[str]:
        path = write_recipe(self.root, raw)
        return ["distill", str(path), "--output-dir", str(self.out), *(["--dry-run"] if dry_run else []), *extra]

    def recipe(self, **sections: Any) -> dict[str, Any]:
        raw = distill_recipe(self.models.teacher)
        raw.update(sections)
        return raw

    def trainer(self, task: str, data: dict[str, Any], **task_settings: Any) -> list[str]:
        """A teacher-training recipe: its data is read before any model is built."""
        raw = distill_recipe("unused")
        del raw["teacher"], raw["student"]
        raw["task"] = {"kind": task, **task_settings}
        raw["data"] = {"max_length": 32, **data}
        raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(self.models.tokenizer)}}
        raw["distillation"] = {"kind": "trainer"}
        return self.distill(raw)

    def classification_data(self, name: str, content: str | bytes, **source: Any) -> list[str]:
        return self.trainer("sequence_classification", {"train": {"path": str(self.file(name, content)), **source}}, num_labels=2)


# Each case: (its directory and the shared models) → (the command's arguments, fragments the message must hold).
CaseFunction = Callable[[Case], tuple[list[str], list[str]]]


def _save_model(directory: Path, tokenizer_dir: Path, **config: Any) -> Path:
    """A BERT sequence classifier with exactly `config` (save_tiny_model sets the vocabulary itself)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

    settings = {key: value for key, value in TINY_BERT.items() if key != "model_type"}
    model = AutoModelForSequenceClassification.from_config(BertConfig(**{**settings, "num_labels": 2, **config}))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> Models:
    root = tmp_path_factory.mktemp("bad-input-models")
    without_model_type = root / "without-model-type"
    without_model_type.mkdir()
    (without_model_type / "config.json").write_text(json.dumps({"hidden_size": 32}))
    (root / "without-config").mkdir()
    return Models(
        tokenizer=tokenizer_dir,
        teacher=save_tiny_model(root / "teacher", tokenizer_dir),
        short_teacher=_save_model(root / "short-teacher", tokenizer_dir, vocab_size=100, max_position_embeddings=16),
        small_vocabulary=_save_model(
            root / "small-vocabulary", tokenizer_dir, vocab_size=20, hidden_size=16, num_attention_heads=2
        ),
        without_model_type=without_model_type,
        without_config=root / "without-config",
    )


def _squad(answer: dict[str, Any] | None = None, paragraph: dict[str, Any] | None = None) -> str:
    qa = {"id": "q7", "question": "who works?", "answers": [answer if answer is not None else {"text": "anna"}]}
    return json.dumps({"data": [{"title": "t", "paragraphs": [paragraph or {"context": "anna works.", "qas": [qa]}]}]})


def _qa(case: Case, name: str, content: str, **source: Any) -> list[str]:
    return case.trainer("question_answering", {"train": {"path": str(case.file(name, content)), **source}}, doc_stride=8)


def _ner(case: Case, name: str, content: str | bytes) -> list[str]:
    return case.trainer("token_classification", {"train": {"path": str(case.file(name, content))}}, labels=["O", "B-PER"])


def _student(case: Case, **config: Any) -> dict[str, Any]:
    return case.recipe(student={"config": {**TINY_STUDENT, **config}})


# ----------------------------------------------------------------------------- recipe files


def recipe_not_found(c: Case):
    return ["distill", str(c.root / "nope.yaml")], [f"{c.root / 'nope.yaml'}: recipe file not found"]


def recipe_is_a_directory(c: Case):
    c.file("inside.yaml", "name: x\n")
    return ["distill", str(c.root)], [f"{c.root}: is a directory, not a recipe file", "inside.yaml"]


def recipe_not_utf8(c: Case):
    path = c.file("recipe.yaml", b"name: tiny\ntask: " + LATIN_1 + b"\n")
    return ["distill", str(path)], [f"{path}:2: not valid UTF-8", "byte 20 (line 2, column 10) is 0xe9", "iconv"]


def recipe_malformed_yaml(c: Case):
    path = c.file("recipe.yaml", "name: tiny\ntraining: [1\n")
    return ["distill", str(path)], [f"{path}:3:1: malformed YAML"]


def recipe_malformed_json(c: Case):
    path = c.file("recipe.json", '{"name": "tiny",\n "task": }')
    return ["distill", str(path)], [f"{path}:2:10: malformed JSON"]


def recipe_duplicate_yaml_key(c: Case):
    path = c.file("recipe.yaml", "name: tiny\ntraining:\n  epochs: 1\n  seed: 2\n  epochs: 3\n")
    return ["distill", str(path)], [f"{path}:5: training.epochs: key 'epochs' is given twice in one mapping (lines 3 and 5)"]


def recipe_duplicate_yaml_key_in_flow(c: Case):
    path = c.file("recipe.yaml", "name: tiny\ntask: {kind: a, kind: b}\n")
    return ["distill", str(path)], [f"{path}:2: task.kind: key 'kind' is given twice in one mapping (line 2)"]


def recipe_duplicate_json_key(c: Case):
    path = c.file("recipe.json", '{"name": "a",\n "task": {},\n "name": "b"}')
    return ["distill", str(path)], [f"{path}:3: key 'name' is given twice in one mapping (lines 1 and 3)"]


def recipe_not_a_mapping(c: Case):
    path = c.file("recipe.yaml", "- name: tiny\n")
    return ["distill", str(path)], [f"{path}: a recipe must be a mapping of fields", "got list"]


def recipe_unknown_key(c: Case):
    raw = c.recipe()
    raw["trainnig"] = raw.pop("training")
    return c.distill(raw), ["recipe.yaml: trainnig: unknown key (did you mean 'training'?)"]


def epochs_infinite(c: Case):
    return c.distill(c.recipe(training={"epochs": float("inf")})), ["recipe.yaml: training.epochs: inf is not a finite number"]


def epochs_nan(c: Case):
    path = write_recipe(c.root, c.recipe())
    path.write_text(path.read_text().replace("epochs: 1", "epochs: .nan"))
    return ["distill", str(path), "--dry-run"], [f"{path}: training.epochs: nan is not a finite number"]


def learning_rate_negative(c: Case):
    return c.distill(c.recipe(training={"learning_rate": -1})), ["training.learning_rate: Input should be greater than 0"]


def batch_size_zero(c: Case):
    return c.distill(c.recipe(training={"batch_size": 0})), ["training.batch_size: Input should be greater than or equal to 1"]


def warmup_above_one(c: Case):
    return c.distill(c.recipe(training={"warmup": 2})), ["training.warmup: Input should be less than or equal to 1"]


def precision_unknown(c: Case):
    return c.distill(c.recipe(training={"precision": "fp8"})), ["training.precision: 'fp8' is not allowed"]


def temperature_infinite(c: Case):
    raw = c.recipe(distillation={"kind": "basic", "temperature": float("inf")})
    return c.distill(raw), ["distillation.temperature: inf is not a finite number"]


def distiller_kind_unknown(c: Case):
    return c.distill(c.recipe(distillation={"kind": "basik"})), ["distillation.kind: unknown distiller kind 'basik'"]


def run_name_invalid(c: Case):
    raw = c.recipe()
    raw["name"] = "a/b"
    return c.distill(raw), ["recipe.yaml: name: String should match pattern"]


def task_kind_unknown(c: Case):
    return c.distill(c.recipe(task={"kind": "sequence_clasification"})), ["recipe.yaml: task.kind: unknown task"]


def max_length_too_small(c: Case):
    data = {**c.recipe()["data"], "max_length": 4}
    return c.distill(c.recipe(data=data)), ["data.max_length: Input should be greater than or equal to 8"]


def data_source_two_origins(c: Case):
    data = {**c.recipe()["data"], "train": {"synthetic": "negation_sentiment", "path": "x.csv"}}
    return c.distill(c.recipe(data=data)), [
        "data.train: give exactly one of `hub`, `path` or `synthetic` (found path, synthetic)"
    ]


def data_format_unknown(c: Case):
    data = {**c.recipe()["data"], "train": {"path": "x.xml", "format": "xml"}}
    return c.distill(c.recipe(data=data)), ["data.train.format: 'xml' is not allowed"]


def article_range_malformed(c: Case):
    data = {**c.recipe()["data"], "train": {"path": "x.json", "articles": "first"}}
    return c.distill(c.recipe(data=data)), ["data.train.articles: 'first' is not an article range"]


def student_without_origin(c: Case):
    return c.distill(c.recipe(student={})), ["recipe.yaml: student: give exactly one of `checkpoint`, `config` or `init`"]


def synthetic_generator_unknown(c: Case):
    data = {**c.recipe()["data"], "train": {"synthetic": "negation_sentimnt"}}
    return c.distill(c.recipe(data=data)), ["data.train.synthetic: unknown synthetic dataset 'negation_sentimnt'"]


def hub_without_split(c: Case):
    data = {**c.recipe()["data"], "train": {"hub": "glue", "config": "sst2"}}
    return c.distill(c.recipe(data=data)), ["data.train: a hub source needs `split`"]


def hub_dataset_offline(c: Case):
    data = {**c.recipe()["data"], "train": {"hub": "nobody/no-such-dataset", "split": "train"}}
    return c.distill(c.recipe(data=data)), ["recipe.yaml: data.train.hub: could not load 'nobody/no-such-dataset', split 'train'"]


def hub_teacher_offline(c: Case):
    return c.distill(c.recipe(teacher={"checkpoint": "nobody/no-such-model"})), [
        "recipe.yaml: teacher.checkpoint: could not load the config of 'nobody/no-such-model'"
    ]


# ----------------------------------------------------------------------------- the command line


def set_without_equals(c: Case):
    return c.distill(c.recipe(), "--set", "training.epochs"), ["--set 'training.epochs': expected DOTTED.PATH=VALUE"]


def set_with_empty_path(c: Case):
    return c.distill(c.recipe(), "--set", "=3"), ["--set '=3': the path before '=' is empty"]


def set_value_not_yaml(c: Case):
    return c.distill(c.recipe(), "--set", "training.epochs=[1"), [
        "recipe.yaml: training.epochs: Input should be a valid number",
        "the value comes from `--set training.epochs=[1`, not from the file",
        "not valid YAML",
    ]


def set_through_a_value(c: Case):
    return c.distill(c.recipe(), "--set", "name.first=x"), ["--set name.first: `name` is a value, not a section"]


def set_list_index_out_of_range(c: Case):
    raw = c.recipe(teachers=[{"checkpoint": str(c.models.teacher)}], distillation={"kind": "multi_teacher"})
    del raw["teacher"]
    return c.distill(raw, "--set", "teachers.3.weight=2"), ["--set teachers.3: `3` is not an index of a list of 1 entries"]


def set_bad_value_blamed_on_option(c: Case):
    return c.distill(c.recipe(), "--set", "training.epochs=.nan"), [
        "training.epochs: nan is not a finite number",
        "the value comes from `--set training.epochs=.nan`",
    ]


def size_report_batch_sizes_not_numbers(c: Case):
    return ["size-report", str(c.models.teacher), "--batch-sizes", "1,x"], [
        "--batch-sizes '1,x': expected comma-separated whole numbers"
    ]


def size_report_batch_size_zero(c: Case):
    return ["size-report", str(c.models.teacher), "--batch-sizes", "0"], ["batch sizes must be positive, got [0]"]


def size_report_device_unknown(c: Case):
    return ["size-report", str(c.models.teacher), "--device", "tpu"], ["device must be 'cpu' or 'cuda'"]


def size_report_config_without_model_type(c: Case):
    path = c.models.without_model_type / "config.json"
    return ["size-report", str(path)], [f"{path} has no `model_type`"]


def eval_on_a_directory_that_is_no_run(c: Case):
    return ["eval", str(c.models.tokenizer)], [f"{c.models.tokenizer}: not a run directory (no final/ or best/) nor a checkpoint"]


def eval_on_a_missing_run(c: Case):
    return ["eval", str(c.root / "runs" / "gone")], [f"{c.root / 'runs' / 'gone'}: no such run directory or checkpoint"]


def eval_checkpoint_without_recipe(c: Case):
    return ["eval", str(c.models.teacher)], [f"{c.models.teacher}: no recipe.yaml found beside this model — pass --recipe"]


def eval_data_not_utf8(c: Case):
    path = c.file("eval.csv", b"text,label\n" + LATIN_1 + b",1\n")
    recipe = write_recipe(c.root, c.recipe())
    return ["eval", str(c.models.teacher), "--recipe", str(recipe), "--data", str(path)], [f"{path}:2: not valid UTF-8"]


def eval_data_row_not_an_object(c: Case):
    path = c.file("eval.jsonl", '{"text": "good", "label": 1}\n["bad", 0]\n')
    recipe = write_recipe(c.root, c.recipe())
    return ["eval", str(c.models.teacher), "--recipe", str(recipe), "--data", str(path)], [
        f"{path}:2: a JSON Lines row must be an object",
        "found a list",
    ]


def message_with_markup_prints_literally(c: Case):
    path = c.root / "[/b] :x: [bold]recipe.yaml"
    return ["distill", str(path)], [f"{path}: recipe file not found"]


# ----------------------------------------------------------------------------- data files


def csv_not_utf8(c: Case):
    path = c.root / "train.csv"
    return c.classification_data("train.csv", b"text,label\ngood,1\n" + LATIN_1 + b",0\n"), [
        f"recipe.yaml: data.train: {path}:3: not valid UTF-8 — byte 21 (line 3, column 4) is 0xe9"
    ]


def tsv_not_utf8(c: Case):
    path = c.root / "train.tsv"
    return c.classification_data("train.tsv", b"text\tlabel\n" + LATIN_1 + b"\t0\n"), [f"{path}:2: not valid UTF-8"]


def jsonl_not_utf8(c: Case):
    path = c.root / "train.jsonl"
    return c.classification_data("train.jsonl", b'{"text": "' + LATIN_1 + b'", "label": 0}\n'), [f"{path}:1: not valid UTF-8"]


def json_not_utf8(c: Case):
    path = c.root / "train.json"
    return c.classification_data("train.json", b'[\n {"text": "' + LATIN_1 + b'", "label": 0}\n]'), [f"{path}:2: not valid UTF-8"]


def conll_not_utf8(c: Case):
    path = c.root / "train.conll"
    return _ner(c, "train.conll", b"anna B-PER\n" + LATIN_1 + b" O\n"), [f"{path}:2: not valid UTF-8"]


def squad_not_utf8(c: Case):
    path = c.root / "train.json"
    content = _squad().replace("anna works.", "caf\u00e9 anna works.").encode("latin-1")
    return c.trainer("question_answering", {"train": {"path": str(c.file("train.json", content)), "format": "squad"}}), [
        f"{path}:1: not valid UTF-8"
    ]


def text_corpus_not_utf8(c: Case):
    path = c.file("corpus.txt", b"a good line\n" + LATIN_1 + b"\n")
    matches = [{"uniform": True, "loss": "hidden_mse", "projection": "linear"}]
    raw = c.recipe(task={"kind": "masked_lm"}, distillation={"kind": "general", "kd_weight": 0, "matches": matches})
    raw["data"] = {"train": {"path": str(path)}, "max_length": 32}
    return c.distill(raw), [f"{path}:2: not valid UTF-8"]


def csv_short_row(c: Case):
    path = c.root / "train.csv"
    return c.classification_data("train.csv", "text,label\ngood,1\nbad\n"), [
        f"recipe.yaml: data.train: {path}:3: has 1 fields, expected 2 (text, label)"
    ]


def csv_long_row(c: Case):
    path = c.root / "train.csv"
    return c.classification_data("train.csv", "text,label\ngood, really,1\n"), [
        f"{path}:2: has 3 fields, expected 2",
        "quote a value that contains a comma",
    ]


def tsv_stray_tab(c: Case):
    path = c.root / "train.tsv"
    return c.classification_data("train.tsv", "text\tlabel\ngood\tvery\t1\n"), [
        f"{path}:2: has 3 fields, expected 2",
        "set `quoting: true`",
    ]


def csv_unterminated_quote(c: Case):
    path = c.root / "train.csv"
    content = 'text,label\n"good,1\n' + "x" * 10 + "\n"
    return c.classification_data("train.csv", content, limit=1), [
        f"{path}:2: has 1 fields, expected 2 (text, label) — this record runs from line 2 to line 3: a quote opened on "
        "line 2 is probably not closed"
    ]


def jsonl_row_not_an_object(c: Case):
    path = c.root / "train.jsonl"
    return c.classification_data("train.jsonl", '{"text": "good", "label": 1}\n\n"bad"\n'), [
        f"{path}:3: a JSON Lines row must be an object",
        "found a string",
    ]


def jsonl_invalid_json(c: Case):
    path = c.root / "train.jsonl"
    return c.classification_data("train.jsonl", '{"text": "good", "label": 1}\n{"text": }\n'), [f"{path}:2: not valid JSON"]


def jsonl_row_without_label(c: Case):
    path = c.root / "train.jsonl"
    return c.classification_data("train.jsonl", '{"text": "good", "label": 1}\n{"text": "bad"}\n'), [
        f"recipe.yaml: data.train: {path}: example 1 (0-based) has no 'label', which example 0 has — give every "
        "example the same keys"
    ]


def json_example_not_an_object(c: Case):
    path = c.root / "train.json"
    return c.classification_data("train.json", '[{"text": "good", "label": 1}, 3]'), [
        f"{path}: example 1 (0-based) is a number, not an object"
    ]


def json_not_a_list(c: Case):
    path = c.root / "train.json"
    return c.classification_data("train.json", '{"text": "good"}'), [f"{path}: expected a JSON list of examples"]


def json_invalid(c: Case):
    path = c.root / "train.json"
    return c.classification_data("train.json", '[\n{"text": "good",\n'), [f"{path}:3: not valid JSON"]


def data_file_missing(c: Case):
    return c.trainer("sequence_classification", {"train": {"path": str(c.root / "gone.csv")}}), [
        "recipe.yaml: data.train.path: data file",
        "gone.csv' not found",
    ]


def data_format_not_guessable(c: Case):
    return c.classification_data("train.data", "text,label\n"), [
        "recipe.yaml: data.train.format: cannot tell the format of 'train.data'"
    ]


def data_directory_given_as_csv(c: Case):
    (c.root / "folder").mkdir()
    return c.trainer("sequence_classification", {"train": {"path": str(c.root / "folder"), "format": "csv"}}), [
        f"recipe.yaml: data.train.path: {c.root / 'folder'} is a directory, but `format` is csv"
    ]


def text_column_missing(c: Case):
    return c.classification_data("train.csv", "sentence,label\ngood,1\n"), [
        "recipe.yaml: data.text: text column 'text' is not in data.train (",
        "train.csv) — columns found: sentence, label; set data.text to one of them",
    ]


def label_outside_num_labels(c: Case):
    return c.classification_data("train.csv", "text,label\ngood,1\nbad,5\n"), [
        "data.train: example 1: label '5' is outside task.num_labels=2"
    ]


def dataset_empty(c: Case):
    return c.classification_data("train.csv", "text,label\n"), ["recipe.yaml: data.train: the dataset is empty"]


def articles_on_rows_without_articles(c: Case):
    return c.classification_data("train.csv", "text,label\ngood,1\n", articles="0:1"), [
        "recipe.yaml: data.train.articles: selecting articles needs SQuAD-style rows"
    ]


def conll_single_column(c: Case):
    path = c.root / "train.conll"
    return _ner(c, "train.conll", "anna\n"), [f"{path}:1: a CoNLL line needs at least two columns"]


def conll_uneven_columns(c: Case):
    path = c.root / "train.conll"
    return _ner(c, "train.conll", "anna B-PER\n\nnew york O\n"), [f"{path}:3: expected 2 columns (as on line 1), found 3"]


def tokens_not_a_list(c: Case):
    return _ner(c, "train.jsonl", '{"tokens": "anna works", "ner_tags": ["B-PER", "O"]}\n'), [
        "data.train: example 0: `tokens` and `ner_tags` must be lists"
    ]


def tags_fewer_than_words(c: Case):
    return _ner(c, "train.jsonl", '{"tokens": ["anna", "works"], "ner_tags": ["B-PER"]}\n'), [
        "data.train: example 0: 2 words but 1 tags"
    ]


def squad_answer_start_missing(c: Case):
    path = c.root / "train.json"
    return _qa(c, "train.json", _squad({"text": "anna"}), format="squad"), [
        f"{path}: data[0].paragraphs[0].qas[0] (id 'q7'): answers[0].answer_start is missing"
    ]


def squad_answer_start_not_an_integer(c: Case):
    path = c.root / "train.json"
    return _qa(c, "train.json", _squad({"text": "anna", "answer_start": "first"}), format="squad"), [
        f"{path}: data[0].paragraphs[0].qas[0] (id 'q7'): answers[0].answer_start is 'first'"
    ]


def squad_answer_start_a_fraction(c: Case):
    return _qa(c, "train.json", _squad({"text": "anna", "answer_start": 0.5})), ["(id 'q7'): answers[0].answer_start is 0.5"]


def squad_paragraph_without_questions(c: Case):
    path = c.root / "train.json"
    return _qa(c, "train.json", _squad(paragraph={"context": "anna works."}), format="squad"), [
        f"{path}: data[0].paragraphs[0]: a paragraph needs `context` and a list `qas`"
    ]


def squad_format_on_plain_rows(c: Case):
    path = c.root / "train.json"
    return _qa(c, "train.json", '[{"question": "q", "context": "c"}]', format="squad"), [f"{path}: not a SQuAD file"]


def qa_rows_answer_start_not_an_integer(c: Case):
    row = {"id": "q9", "question": "who?", "context": "anna works.", "answers": {"text": ["anna"], "answer_start": [1.5]}}
    return _qa(c, "train.jsonl", json.dumps(row) + "\n"), ["data.train: question 'q9': answer_start 1.5 is not a whole number"]


# ----------------------------------------------------------------------------- models


def teacher_missing(c: Case):
    return c.distill(c.recipe(teacher={"checkpoint": str(c.root / "teacher")})), [
        "recipe.yaml: teacher.checkpoint:",
        "does not exist and the recipe has no `teacher.train` section",
    ]


def teacher_directory_without_config(c: Case):
    return c.distill(c.recipe(teacher={"checkpoint": str(c.models.without_config)})), [
        "recipe.yaml: teacher.checkpoint:",
        "is a directory without config.json",
    ]


def teacher_config_without_model_type(c: Case):
    return c.distill(c.recipe(teacher={"checkpoint": str(c.models.without_model_type)})), [
        "recipe.yaml: teacher.checkpoint: could not load the config",
        f"fix {c.models.without_model_type / 'config.json'}: it must be UTF-8 JSON with a `model_type`",
    ]


def student_checkpoint_missing(c: Case):
    return c.distill(c.recipe(student={"checkpoint": str(c.root / "student")})), [
        "recipe.yaml: student.checkpoint: checkpoint",
        "not found",
    ]


def student_config_file_missing(c: Case):
    return c.distill(c.recipe(student={"config": "no-such-student.yaml"})), [
        "recipe.yaml: student.config: config file 'no-such-student.yaml' not found"
    ]


def student_config_without_model_type(c: Case):
    config = {key: value for key, value in TINY_STUDENT.items() if key != "model_type"}
    return c.distill(c.recipe(student={"config": config})), ["recipe.yaml: student.config: the config has no `model_type`"]


def student_model_type_unknown(c: Case):
    return c.distill(_student(c, model_type="bertt")), [
        "recipe.yaml: student.config.model_type: model_type 'bertt' has no registered family (did you mean 'bert' or 'albert'?)",
        "registered: albert, bert, camembert",
    ]


def student_heads_do_not_divide_width(c: Case):
    return c.distill(_student(c, num_attention_heads=3)), [
        "recipe.yaml: student.config: hidden_size 16 is not a multiple of num_attention_heads 3",
        "use num_attention_heads: 2",
    ]


def student_distilbert_heads_do_not_divide_width(c: Case):
    config = {"model_type": "distilbert", "dim": 16, "n_heads": 3, "n_layers": 1, "hidden_dim": 32}
    return c.distill(c.recipe(student={"config": config})), ["recipe.yaml: student.config: dim 16 is not a multiple of n_heads 3"]


def student_positions_below_max_length(c: Case):
    return c.distill(_student(c, max_position_embeddings=16)), [
        "recipe.yaml: data.max_length: 32 tokens do not fit student.config, which reads at most 16",
        "raise max_position_embeddings in student.config to 32",
    ]


def student_roberta_positions_below_max_length(c: Case):
    return c.distill(_student(c, model_type="roberta", max_position_embeddings=32)), [
        "data.max_length: 32 tokens do not fit student.config, which reads at most 31",
        "minus the 1 position roberta reserves before the first token",
    ]


def teacher_positions_below_max_length(c: Case):
    return c.distill(c.recipe(teacher={"checkpoint": str(c.models.short_teacher)})), [
        "recipe.yaml: data.max_length: 32 tokens do not fit teacher.checkpoint, which reads at most 16",
        "use a model with max_position_embeddings ≥ 32",
    ]


def student_vocabulary_below_tokenizer(c: Case):
    return c.distill(c.recipe(student={"checkpoint": str(c.models.small_vocabulary)})), [
        "recipe.yaml: student.checkpoint: the model's vocabulary has 20 tokens but its tokenizer makes",
    ]


def missing_teacher_config_heads_checked_before_training(c: Case):
    teacher = {
        "checkpoint": str(c.root / "runs" / "teacher" / "final"),
        "train": {"model": {"config": {**TINY_BERT, "num_attention_heads": 5}}},
    }
    return c.distill(c.recipe(teacher=teacher)), [
        "recipe.yaml: teacher.train.model.config: hidden_size 32 is not a multiple of num_attention_heads 5"
    ]


def trainer_model_positions_below_max_length(c: Case):
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["model"] = {"config": {**TINY_BERT, "max_position_embeddings": 8}, "tokenizer": {"path": str(c.models.tokenizer)}}
    raw["distillation"] = {"kind": "trainer"}
    return c.distill(raw), ["recipe.yaml: data.max_length: 32 tokens do not fit model.config, which reads at most 8"]


def _multi_task(c: Case, teacher: Path, student: dict[str, Any]) -> list[str]:
    sentiment = {"kind": "sequence_classification", "num_labels": 2}
    data = {"train": {"synthetic": "negation_sentiment", "examples": 16, "seed": 1}, "max_length": 32}
    raw = c.recipe(
        tasks={"sentiment": {"task": sentiment, "data": data, "teacher": {"checkpoint": str(teacher)}}},
        student={"config": student},
        distillation={"kind": "multi_task"},
    )
    del raw["task"], raw["data"], raw["teacher"]
    return c.distill(raw)


def multi_task_teacher_positions_below_max_length(c: Case):
    return _multi_task(c, c.models.short_teacher, dict(TINY_STUDENT)), [
        "recipe.yaml: tasks.sentiment.data.max_length: 32 tokens do not fit tasks.sentiment.teacher.checkpoint, which reads at most 16"
    ]


def multi_task_student_positions_below_max_length(c: Case):
    return _multi_task(c, c.models.teacher, {**TINY_STUDENT, "max_position_embeddings": 20}), [
        "recipe.yaml: tasks.sentiment.data.max_length: 32 tokens do not fit student.config, which reads at most 20"
    ]


CASES: list[CaseFunction] = [
    # recipe files and fields
    recipe_not_found,
    recipe_is_a_directory,
    recipe_not_utf8,
    recipe_malformed_yaml,
    recipe_malformed_json,
    recipe_duplicate_yaml_key,
    recipe_duplicate_yaml_key_in_flow,
    recipe_duplicate_json_key,
    recipe_not_a_mapping,
    recipe_unknown_key,
    epochs_infinite,
    epochs_nan,
    learning_rate_negative,
    batch_size_zero,
    warmup_above_one,
    precision_unknown,
    temperature_infinite,
    distiller_kind_unknown,
    run_name_invalid,
    task_kind_unknown,
    max_length_too_small,
    data_source_two_origins,
    data_format_unknown,
    article_range_malformed,
    student_without_origin,
    synthetic_generator_unknown,
    hub_without_split,
    hub_dataset_offline,
    hub_teacher_offline,
    # the command line
    set_without_equals,
    set_with_empty_path,
    set_value_not_yaml,
    set_through_a_value,
    set_list_index_out_of_range,
    set_bad_value_blamed_on_option,
    size_report_batch_sizes_not_numbers,
    size_report_batch_size_zero,
    size_report_device_unknown,
    size_report_config_without_model_type,
    eval_on_a_directory_that_is_no_run,
    eval_on_a_missing_run,
    eval_checkpoint_without_recipe,
    eval_data_not_utf8,
    eval_data_row_not_an_object,
    message_with_markup_prints_literally,
    # data files of every format
    csv_not_utf8,
    tsv_not_utf8,
    jsonl_not_utf8,
    json_not_utf8,
    conll_not_utf8,
    squad_not_utf8,
    text_corpus_not_utf8,
    csv_short_row,
    csv_long_row,
    tsv_stray_tab,
    csv_unterminated_quote,
    jsonl_row_not_an_object,
    jsonl_invalid_json,
    jsonl_row_without_label,
    json_example_not_an_object,
    json_not_a_list,
    json_invalid,
    data_file_missing,
    data_format_not_guessable,
    data_directory_given_as_csv,
    text_column_missing,
    label_outside_num_labels,
    dataset_empty,
    articles_on_rows_without_articles,
    conll_single_column,
    conll_uneven_columns,
    tokens_not_a_list,
    tags_fewer_than_words,
    squad_answer_start_missing,
    squad_answer_start_not_an_integer,
    squad_answer_start_a_fraction,
    squad_paragraph_without_questions,
    squad_format_on_plain_rows,
    qa_rows_answer_start_not_an_integer,
    # models
    teacher_missing,
    teacher_directory_without_config,
    teacher_config_without_model_type,
    student_checkpoint_missing,
    student_config_file_missing,
    student_config_without_model_type,
    student_model_type_unknown,
    student_heads_do_not_divide_width,
    student_distilbert_heads_do_not_divide_width,
    student_positions_below_max_length,
    student_roberta_positions_below_max_length,
    teacher_positions_below_max_length,
    student_vocabulary_below_tokenizer,
    missing_teacher_config_heads_checked_before_training,
    trainer_model_positions_below_max_length,
    multi_task_teacher_positions_below_max_length,
    multi_task_student_positions_below_max_length,
]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("make", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_clear_error(make: CaseFunction, models: Models, tmp_path: Path):
    case = Case(tmp_path, models)
    arguments, fragments = make(case)
    result = runner.invoke(app, arguments)
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    flat = _flat(output)
    assert flat.startswith("error ("), flat
    for fragment in fragments:
        assert _flat(fragment) in flat, f"{fragment!r} not in {flat!r}"
    # Nothing that looks like a finished (or started) run was left behind.
    left = [path for path in case.root.rglob("*") if path.name in ("summary.json", "final", "best", "checkpoints")]
    assert not left, left


def test_the_table_holds_at_least_sixty_distinct_inputs():
    assert len({case.__name__ for case in CASES}) == len(CASES) >= 60


def test_markup_and_emoji_codes_print_as_written(tmp_path):
    path = tmp_path / "[/b] :x: [bold]recipe.yaml"
    result = runner.invoke(app, ["distill", str(path)])
    assert result.exit_code == 2
    assert f"{path}: recipe file not found" in _flat(result.output)
    assert "❌" not in result.output


def test_duplicate_keys_merged_with_yaml_anchors_are_allowed(tmp_path, models):
    # `<<: *base` then overriding one key is YAML's own way to reuse a section, not a duplicate.
    raw = distill_recipe(models.teacher)
    text = yaml.safe_dump(raw, sort_keys=False)
    text = text.replace("training:\n", "base: &base\n  epochs: 1\ntraining:\n  <<: *base\n", 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["distill", str(path), "--dry-run", "--output-dir", str(tmp_path / "out")])
    # The anchor's own key is not a recipe field: that is the only complaint.
    assert "recipe.yaml: base: unknown key" in _flat(result.output)
    assert "given twice" not in result.output
