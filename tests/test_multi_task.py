"""Multi-task distillation: task sampling ∝ |D_k|^τ, one shared encoder with a head per task,
per-task exports that reproduce the multi-task model, per-task metrics, resume, recipe errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.recipe import WordPieceTraining, load_recipe
from brewer_cli.tasks.ordering import MultiTaskBatchSampler, task_probabilities
from tests.conftest import TINY_STUDENT, save_tiny_model, write_recipe
from tests.task_fixtures import corpus, ner_sentences, write_conll
from tests.task_fixtures import save_tiny_model as save_task_model
from tests.test_multi_teacher import make_confident
from tests.test_training import losses_on_repeated_batch

TAGS = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]


# ----------------------------------------------------------------------------- sampling


def test_task_probabilities():
    assert task_probabilities([100, 400], 1.0) == pytest.approx([0.2, 0.8])
    assert task_probabilities([100, 400], 0.5) == pytest.approx([1 / 3, 2 / 3])
    assert task_probabilities([100, 400, 7], 0.0) == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_batches_are_drawn_per_task_in_proportion_to_size_to_the_tau(temperature):
    sizes = [300, 100, 20]
    sampler = MultiTaskBatchSampler(sizes, batch_size=4, seed=7, temperature=temperature)
    assert len(sampler) == 105  # ⌈420 / 4⌉: as many examples as one pass over every task
    counts = [0, 0, 0]
    bounds = [(0, 300), (300, 400), (400, 420)]
    for epoch in range(40):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 4
            task = next(number for number, (low, high) in enumerate(bounds) if low <= batch[0] < high)
            assert all(bounds[task][0] <= index < bounds[task][1] for index in batch)
            counts[task] += 1
    draws = sum(counts)
    expected = task_probabilities(sizes, temperature)
    for count, probability in zip(counts, expected):
        assert count / draws == pytest.approx(probability, abs=0.02), (counts, expected)


def test_sampling_is_seeded_and_covers_each_task():
    sampler = MultiTaskBatchSampler([10, 6], batch_size=4, seed=3, temperature=1.0)
    again = MultiTaskBatchSampler([10, 6], batch_size=4, seed=3, temperature=1.0)
    assert list(sampler) == list(again)
    sampler.set_epoch(1)
    assert list(sampler) != list(again)
    # Within a task, every example comes once before any comes again (τ = 0: the small task is
    # drawn as often as the large one, so it runs through its data several times in an epoch).
    uniform = MultiTaskBatchSampler([10, 100], batch_size=4, seed=0, temperature=0.0)
    small = [index for batch in uniform for index in batch if index < 10]
    assert len(small) >= 30
    for start in range(0, len(small) - 9, 10):
        assert sorted(small[start : start + 10]) == list(range(10))


# ----------------------------------------------------------------------------- a tiny two-task run


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory, tokenizer_dir) -> dict:
    """A NER teacher reading tokenizer A (trained on both tasks' text) and a sentiment teacher
    reading the conftest tokenizer B; NER comes first, so the student reads A and the sentiment
    teacher its own tokenization."""
    from brewer_cli.synthetic import negation_sentiment
    from brewer_cli.tokenizers import train_wordpiece

    root = tmp_path_factory.mktemp("multi-task")
    texts = corpus() + [row["text"] for row in negation_sentiment(300, 0)]
    shared = train_wordpiece(texts, WordPieceTraining(vocab_size=100))
    head = {"num_labels": 7, "id2label": dict(enumerate(TAGS)), "label2id": {tag: i for i, tag in enumerate(TAGS)}}
    ner_teacher = save_task_model(root / "ner-teacher", transformers.AutoModelForTokenClassification, shared, seed=1, **head)
    sentiment_teacher = save_tiny_model(root / "sentiment-teacher", tokenizer_dir, seed=2)
    return {
        "root": root,
        "ner": {
            "task": {"kind": "token_classification"},
            "data": {
                "train": {"path": str(write_conll(root / "train.conll", ner_sentences(40, 1)))},
                "eval": {"path": str(write_conll(root / "eval.conll", ner_sentences(16, 2)))},
                "max_length": 48,
            },
            "teacher": {"checkpoint": str(ner_teacher)},
        },
        "sentiment": {
            "task": {"kind": "sequence_classification", "num_labels": 2},
            "data": {
                "train": {"synthetic": "negation_sentiment", "examples": 56, "seed": 1},
                "eval": {"synthetic": "negation_sentiment", "examples": 24, "seed": 2},
                "max_length": 32,
            },
            "teacher": {"checkpoint": str(sentiment_teacher)},
        },
    }


def multi_task_recipe(tasks: dict, **sections) -> dict:
    raw = {
        "name": "tiny-mt",
        "tasks": {"ner": tasks["ner"], "sentiment": tasks["sentiment"]},
        "student": {"config": dict(TINY_STUDENT)},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1.0e-3, "progress": False, "seed": 3},
        "distillation": {"kind": "multi_task", "temperature": 2.0, "hard_label_weight": 0.5, "sampling_temperature": 0.5},
    }
    raw.update(sections)
    return raw


def test_multi_task_run_exports_one_model_per_task(tmp_path, two_tasks, quiet_console):
    from brewer_cli.commands import execute

    recipe = load_recipe(write_recipe(tmp_path, multi_task_recipe(two_tasks)))
    run = build_run(recipe, tmp_path / "out")
    ner, sentiment = run.distiller.slots
    assert (ner.teacher_prefix, sentiment.teacher_prefix) == (None, "teacher_0_")
    assert type(ner.model).__name__ == "BertForTokenClassification"
    assert type(sentiment.model).__name__ == "BertForSequenceClassification"
    # One encoder: the same modules in both task models; the heads (and the pooler) apart.
    assert ner.model.bert.encoder is sentiment.model.bert.encoder
    assert ner.model.bert.embeddings is sentiment.model.bert.embeddings
    assert ner.model.bert.pooler is None and sentiment.model.bert.pooler is not None
    assert run.distiller.probabilities == pytest.approx(task_probabilities([40, 56], 0.5))

    summary = execute(run, resume=False, console=quiet_console)
    run_dir = tmp_path / "out" / "tiny-mt"
    assert summary["metric"] == "task_mean"
    assert set(summary["tasks"]) == {"ner", "sentiment"}
    assert summary["tasks"]["ner"]["metric"] == "f1" and summary["tasks"]["sentiment"]["metric"] == "accuracy"
    for name, entry in summary["tasks"].items():
        for role in ("teacher", "student"):
            assert 0.0 <= entry[role]["metric"] <= 1.0, (name, role)
        assert entry["student"]["checkpoint"] == str(run_dir / "final" / name)
    mean = (summary["tasks"]["ner"]["student"]["metric"] + summary["tasks"]["sentiment"]["student"]["metric"]) / 2
    assert summary["student"]["metric"] == pytest.approx(mean)
    counted = summary["student"]["parameters"]
    assert (
        max(e["student"]["parameters"] for e in summary["tasks"].values())
        < counted
        < sum(e["student"]["parameters"] for e in summary["tasks"].values())
    )
    # The sentiment teacher was evaluated on its own tokenization of the eval split.
    from brewer_cli.evaluation import EvalSetup, evaluate_model
    from brewer_cli.recipe import task_recipe

    own = sentiment.task.prepare(task_recipe(recipe, "sentiment"), sentiment.teacher.tokenizer, sentiment.data.label_names)
    direct = evaluate_model(
        EvalSetup(sentiment.task, own, sentiment.task.collate(sentiment.teacher.tokenizer), 16),
        sentiment.teacher.model,
        sentiment.teacher.family,
    )
    assert summary["tasks"]["sentiment"]["teacher"]["metrics"] == direct
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["tasks"]["sentiment"]["teacher"]["metric"] == summary["tasks"]["sentiment"]["teacher"]["metric"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record["eval"] for record in records if "eval" in record]
    assert evaluations and {"task_mean", "ner", "sentiment"} <= set(evaluations[-1])

    # Each exported task model is a plain transformers directory reproducing the multi-task model.
    assert json.loads((run_dir / "final" / "tasks.json").read_text())["tasks"] == {
        "ner": "BertForTokenClassification",
        "sentiment": "BertForSequenceClassification",
    }
    for slot in run.distiller.slots:
        exported = slot.task.auto_class.from_pretrained(run_dir / "final" / slot.name).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "final" / slot.name)
        batch = slot.collate([slot.data.eval[i] for i in range(6)])
        inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
        slot.model.eval()
        with torch.no_grad():
            assert torch.allclose(exported(**inputs).logits, slot.model(**inputs).logits, atol=1e-6), slot.name
        assert len(tokenizer) == len(run.student.tokenizer)

    # `brewer eval` takes a task's directory; the run directory says which ones exist.
    runner = CliRunner()
    from brewer_cli.cli import app

    result = runner.invoke(app, ["eval", str(run_dir / "final" / "ner")])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval-ner.json").read_text())
    assert report["model"]["metrics"]["f1"] == pytest.approx(summary["tasks"]["ner"]["student"]["metric"])
    result = runner.invoke(app, ["eval", str(run_dir)])
    assert result.exit_code == 2
    assert "a multi-task run holds one model per task — give one of:" in result.output
    assert str(run_dir / "final" / "ner") in result.output.replace("\n", "")


def test_loss_goes_down_on_a_repeated_batch(tmp_path, two_tasks):
    raw = multi_task_recipe(two_tasks)
    raw["distillation"].update({"kd_loss": "kl", "temperature": 1.0, "hard_label_weight": 0.0})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    ner, sentiment = run.distiller.slots
    make_confident([ner.teacher.model], ([0.5] * 7,))
    # one_batch takes the first examples: NER's, the first task.
    losses = losses_on_repeated_batch(run, steps=15, learning_rate=1e-2)
    assert losses[-1] < 0.3 * losses[0], losses
    distiller = run.distiller
    batch = run.collate([run.data.train[index] for index in range(40, 48)])
    assert batch["task"].tolist() == [1] * 8 and "teacher_0_input_ids" in batch
    parts = distiller(batch)
    assert torch.isfinite(parts["loss"]) and float(parts["loss"].detach()) > 0


# ----------------------------------------------------------------------------- errors


def test_recipe_errors(tmp_path, two_tasks):
    path = tmp_path / "recipe.yaml"

    def problems(raw: dict) -> str:
        with pytest.raises(RecipeError) as error:
            load_recipe(write_recipe(tmp_path, raw))
        return "\n".join(error.value.problems)

    raw = multi_task_recipe(two_tasks, task={"kind": "sequence_classification"}, teacher={"checkpoint": "x"})
    text = problems(raw)
    assert f"{path}: task: kind `multi_task` takes each task's `task` under `tasks.<name>.task`" in text
    assert f"{path}: teacher: kind `multi_task` takes each task's `teacher` under `tasks.<name>.teacher`" in text
    raw = multi_task_recipe(two_tasks)
    raw["tasks"] = {"bad name": two_tasks["ner"], "ok": {**two_tasks["sentiment"], "teacher": {"checkpoint": "x", "wieght": 1}}}
    text = problems(raw)
    assert f"{path}: tasks.bad name: a task name becomes the directory final/<name>/" in text
    assert f"{path}: tasks.ok.teacher.wieght: unknown key" in text
    raw = multi_task_recipe(two_tasks)
    raw["tasks"] = {}
    assert f"{path}: tasks: kind `multi_task` needs `tasks:" in problems(raw)
    raw = multi_task_recipe(two_tasks)
    raw["distillation"] = {"kind": "basic"}
    text = problems(raw)
    assert f"{path}: tasks: `tasks` is for kind `multi_task`" in text
    assert f"{path}: task: required field is missing" in text and f"{path}: data: required field is missing" in text


def test_build_errors(tmp_path, two_tasks, tokenizer_dir):
    raw = multi_task_recipe(two_tasks)
    raw["training"]["group_by_length"] = True
    with pytest.raises(RecipeError, match="training.group_by_length: not available with kind multi_task"):
        build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    # Sentiment first: the student reads the conftest tokenizer, which the NER teacher does not.
    raw = multi_task_recipe(two_tasks)
    raw["tasks"] = {"sentiment": two_tasks["sentiment"], "ner": two_tasks["ner"]}
    with pytest.raises(ModelError) as error:
        build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert "tasks.ner.teacher: this teacher's tokenizer differs from the student's" in str(error.value)
