"""Every model brewer writes loads in transformers' `pipeline()` and takes a long input: the saved
tokenizer carries `model_max_length` = the model's position limit (final/, best/, the checkpoints'
student/, `brewer extract`'s output, a teacher trained by brewer, a multi-task run's models).

What each pipeline does with a text longer than the model reads (transformers 5):
- text-classification does not truncate unless told: `truncation=True` cuts at model_max_length
  (before, model_max_length was transformers' "unknown" 1e30, so even truncation=True crashed);
- token-classification truncates at model_max_length by itself;
- feature-extraction truncates with `tokenize_kwargs={"truncation": True}`;
- transformers 5 has no question-answering pipeline: its windowing (the tokenizer's
  `return_overflowing_tokens` with a stride, `truncation="only_second"`) is run here by hand.
The runs are tiny models trained for a few steps by brewer's own commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertConfig, pipeline

from brewer_cli.commands import distill, extract, train_teacher
from brewer_cli.models import save_tokenizer
from brewer_cli.recipe import load_recipe
from tests import test_multi_task
from tests.conftest import TINY_BERT, TINY_STUDENT, distill_recipe, write_recipe
from tests.task_fixtures import TINY_BERT as TASK_BERT
from tests.task_fixtures import ner_sentences, qa_article, squad_file, write_conll
from tests.task_fixtures import save_tiny_model as save_task_model
from tests.task_fixtures import tokenizer as task_tokenizer
from tests.test_tinybert import STUDENT as GENERAL_STUDENT
from tests.test_tinybert import general_recipe

# test_multi_task's fixture: its two tasks, their teachers and data.
two_tasks = test_multi_task.two_tasks

TAGS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
SHORT = {"max_steps": 2, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3, "eval_every": 1}
# 500 words, many times the tiny models' 64 or 128 positions.
LONG_TEXT = " ".join(["the movie was not good but the actors were great"] * 50)


def run_dir(root: Path, recipe: dict, console) -> Path:
    distill(load_recipe(write_recipe(root, recipe)), root / "runs", console=console)
    return root / "runs" / recipe["name"]


def saved_length(directory: Path) -> int:
    return json.loads((directory / "tokenizer_config.json").read_text())["model_max_length"]


def checkpoint_student(run: Path) -> Path:
    """The newest checkpoint's student/."""
    newest = max((run / "checkpoints").glob("step-*"), key=lambda path: int(path.name.split("-")[1]))
    return newest / "student"


@pytest.fixture(scope="module")
def console():
    import os

    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=120)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, tokenizer_dir, console) -> Path:
    from tests.conftest import save_tiny_model

    root = tmp_path_factory.mktemp("classification")
    teacher = save_tiny_model(root / "teacher", tokenizer_dir)
    return run_dir(root, distill_recipe(teacher, training=dict(SHORT)), console)


# ----------------------------------------------------------------------------- the limit itself


def test_every_export_of_a_run_carries_the_position_limit(classification_run):
    assert TINY_STUDENT["max_position_embeddings"] == 64
    for directory in (classification_run / "final", classification_run / "best", checkpoint_student(classification_run)):
        assert saved_length(directory) == 64
        assert AutoTokenizer.from_pretrained(directory).model_max_length == 64


def test_a_smaller_limit_is_kept_and_the_live_tokenizer_is_left_as_it_was(tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    unknown = tokenizer.model_max_length
    assert unknown == transformers.tokenization_utils_base.VERY_LARGE_INTEGER  # the trained WordPiece says nothing
    save_tokenizer(tokenizer, BertConfig(max_position_embeddings=64), tmp_path / "bert")
    assert saved_length(tmp_path / "bert") == 64
    assert tokenizer.model_max_length == unknown  # the run keeps tokenizing as before

    tokenizer.model_max_length = 32  # a pretrained tokenizer's own, smaller limit
    save_tokenizer(tokenizer, BertConfig(max_position_embeddings=64), tmp_path / "smaller")
    assert saved_length(tmp_path / "smaller") == 32

    # RoBERTa's positions start after the padding index: 66 rows with pad id 1 hold 64 tokens.
    tokenizer.model_max_length = unknown
    roberta = transformers.RobertaConfig(max_position_embeddings=66, pad_token_id=1)
    save_tokenizer(tokenizer, roberta, tmp_path / "roberta")
    assert saved_length(tmp_path / "roberta") == 64


# ----------------------------------------------------------------------------- each task's pipeline


def test_text_classification_pipeline_truncates_a_long_input(classification_run):
    labels = {"negative", "positive"}
    for directory in (classification_run / "final", checkpoint_student(classification_run)):
        classifier = pipeline("text-classification", model=str(directory), device="cpu")
        assert len(classifier.tokenizer(LONG_TEXT)["input_ids"]) > 64  # the input is longer than the model reads
        (result,) = classifier(LONG_TEXT, truncation=True)
        assert result["label"] in labels and 0.0 <= result["score"] <= 1.0


def test_token_classification_pipeline_truncates_by_itself(tmp_path, console):
    shared = task_tokenizer()
    head = {"num_labels": len(TAGS), "id2label": dict(enumerate(TAGS)), "label2id": {tag: i for i, tag in enumerate(TAGS)}}
    teacher = save_task_model(tmp_path / "teacher", transformers.AutoModelForTokenClassification, shared, **head)
    recipe = {
        "name": "ner",
        "task": {"kind": "token_classification"},
        "data": {
            "train": {"path": str(write_conll(tmp_path / "train.conll", ner_sentences(32, 1)))},
            "eval": {"path": str(write_conll(tmp_path / "eval.conll", ner_sentences(8, 2)))},
            "max_length": 48,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(TASK_BERT)},
        "training": dict(SHORT),
        "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5},
    }
    final = run_dir(tmp_path, recipe, console) / "final"
    assert saved_length(final) == TASK_BERT["max_position_embeddings"] == 128
    tagger = pipeline("token-classification", model=str(final), device="cpu")
    text = " ".join(["john smith works for acme in paris ."] * 70)  # 560 words
    entities = tagger(text)
    # Whatever the 2-step model tags lies in the first 128 tokens: the text was cut there.
    kept = tagger.tokenizer(text, truncation=True, return_offsets_mapping=True)
    assert len(kept["input_ids"]) == 128
    last_character = max(end for _, end in kept["offset_mapping"])
    assert last_character < len(text) / 2
    assert all(entity["entity"] in TAGS and entity["end"] <= last_character for entity in entities)


def test_question_answering_export_windows_a_long_context(tmp_path, console):
    shared = task_tokenizer()
    teacher = save_task_model(tmp_path / "teacher", AutoModelForQuestionAnswering, shared)
    path = squad_file(tmp_path / "squad.json", 4, seed=3)
    recipe = {
        "name": "qa",
        "task": {"kind": "question_answering", "doc_stride": 16},
        "data": {
            "train": {"path": str(path), "articles": "0:3"},
            "eval": {"path": str(path), "articles": "3:"},
            "max_length": 48,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(TASK_BERT)},
        "training": dict(SHORT),
        "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5},
    }
    final = run_dir(tmp_path, recipe, console) / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForQuestionAnswering.from_pretrained(final).eval()
    assert tokenizer.model_max_length == 128
    import random

    context, questions = qa_article(random.Random(0), facts=25)  # about 175 words
    question = questions[0][0]
    # The QA pipeline's windows: no max_length given, so the tokenizer's model_max_length bounds them.
    windows = tokenizer(
        question, context, truncation="only_second", stride=16, return_overflowing_tokens=True, padding=True, return_tensors="pt"
    )
    windows.pop("overflow_to_sample_mapping")
    assert windows["input_ids"].shape[0] > 1 and windows["input_ids"].shape[1] == 128
    with torch.no_grad():
        output = model(**windows)
    assert output.start_logits.shape == windows["input_ids"].shape and torch.isfinite(output.start_logits).all()


def test_general_export_feature_extraction_truncates(tmp_path, tokenizer_dir, console):
    from tests.test_augment import save_masked_lm

    teacher = save_masked_lm(tmp_path / "teacher", tokenizer_dir, with_head=False)
    raw = general_recipe(tmp_path, teacher, training=dict(SHORT))
    final = run_dir(tmp_path, raw, console) / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["BertModel"]
    assert saved_length(final) == GENERAL_STUDENT["max_position_embeddings"] == 64
    extractor = pipeline("feature-extraction", model=str(final), device="cpu", tokenize_kwargs={"truncation": True})
    (features,) = extractor(LONG_TEXT)
    assert len(features) == 64 and len(features[0]) == GENERAL_STUDENT["hidden_size"]


# ----------------------------------------------------------------------------- other writers


def test_extract_output_and_a_trained_teacher_carry_the_limit(tmp_path, tokenizer_dir, monkeypatch, console):
    from tests.conftest import save_tiny_model

    monkeypatch.chdir(tmp_path)
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir)
    extract_raw = distill_recipe(
        teacher, student={"init": {"extract": {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "strategy": "random"}}}
    )
    output = extract(load_recipe(write_recipe(tmp_path, extract_raw)), tmp_path / "extracted", console=console)
    assert saved_length(output) == TINY_BERT["max_position_embeddings"] == 64

    trainer = distill_recipe("unused", name="tiny-teacher", training=dict(SHORT))
    del trainer["teacher"], trainer["student"]
    trainer["model"] = {
        "config": {**TINY_BERT, "max_position_embeddings": 48},
        "tokenizer": {"train_wordpiece": {"vocab_size": 90}},
    }
    trainer["distillation"] = {"kind": "trainer"}
    train_teacher(load_recipe(write_recipe(tmp_path, trainer, "trainer.yaml")), tmp_path / "runs", console=console)
    final = tmp_path / "runs" / "tiny-teacher" / "final"
    assert saved_length(final) == 48
    (result,) = pipeline("text-classification", model=str(final), device="cpu")(LONG_TEXT, truncation=True)
    assert result["label"] in {"negative", "positive"}


def test_multi_task_models_each_carry_the_limit(tmp_path, two_tasks, console):
    final = run_dir(tmp_path, test_multi_task.multi_task_recipe(two_tasks, training=dict(SHORT, batch_size=8)), console) / "final"
    for task in ("ner", "sentiment"):
        assert saved_length(final / task) == TINY_STUDENT["max_position_embeddings"]
    (result,) = pipeline("text-classification", model=str(final / "sentiment"), device="cpu")(LONG_TEXT, truncation=True)
    assert result["label"] in {"negative", "positive"}
    assert pipeline("token-classification", model=str(final / "ner"), device="cpu")(LONG_TEXT) is not None
