"""Multi-teacher distillation: the weighted mean of the teachers' logits, teachers with their own
tokenizers, intermediate matches against one teacher, training the teachers, recipe errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.recipe import WordPieceTraining, load_recipe
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe
from tests.test_training import losses_on_repeated_batch, one_batch


def multi_recipe(*teachers: dict, **distillation) -> dict:
    raw = distill_recipe("unused")
    del raw["teacher"]
    raw["teachers"] = list(teachers)
    raw["distillation"] = {"kind": "multi_teacher", "temperature": 2.0, "hard_label_weight": 0.5, **distillation}
    return raw


def make_confident(models: list, biases: tuple) -> None:
    """Random tiny models are all but uniform: give them confident, different opinions."""
    with torch.no_grad():
        for model, bias in zip(models, biases):
            model.classifier.weight.mul_(30.0)
            model.classifier.bias.copy_(torch.tensor(bias))


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    """A second WordPiece vocabulary (cased, 60 entries) over the same text: other ids, other splits."""
    from brewer_cli.synthetic import negation_sentiment
    from brewer_cli.tokenizers import train_wordpiece

    texts = [row["text"].upper() if index % 2 else row["text"] for index, row in enumerate(negation_sentiment(400, 5))]
    tokenizer = train_wordpiece(texts, WordPieceTraining(vocab_size=60, lowercase=False))
    directory = tmp_path_factory.mktemp("other-tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return (save_tiny_model(root / "t0", tokenizer_dir, seed=0), save_tiny_model(root / "t1", tokenizer_dir, seed=1))


def test_loss_is_kd_against_the_weighted_mean_of_the_logits(tmp_path, two_teachers):
    first, second = two_teachers
    raw = multi_recipe(
        {"checkpoint": str(first)}, {"checkpoint": str(second), "weight": 3.0}, temperature=2.0, hard_label_weight=0.5
    )
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert run.distiller.prefixes == [None, None] and run.distiller.weights == [1.0, 3.0]
    make_confident([run.teachers[0].model, run.teachers[1].model, run.student.model], ([4.0, -4.0], [-3.0, 3.0], [1.0, -1.0]))
    distiller = run.distiller
    distiller.eval()  # no dropout: the hand computation sees the same student logits
    batch = one_batch(run)
    parts = distiller(batch)

    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        z1 = run.teachers[0].model(**inputs).logits
        z2 = run.teachers[1].model(**inputs).logits
        student = run.student.model(**inputs).logits
    target = (1.0 * z1 + 3.0 * z2) / 4.0  # TextBrewer: the mean of the logits, then the temperature
    kd = -(F.softmax(target / 2.0, -1) * F.log_softmax(student / 2.0, -1)).sum(-1).mean()
    hard = F.cross_entropy(student, batch["labels"])
    assert float(parts["kd"].detach()) == pytest.approx(float(kd), rel=1e-5)
    assert float(parts["hard_label"].detach()) == pytest.approx(float(hard), rel=1e-5)
    assert float(parts["loss"].detach()) == pytest.approx(float(kd + 0.5 * hard), rel=1e-5)
    # Not the mean of the teachers' probabilities, which gives another target.
    probabilities = (F.softmax(z1 / 2.0, -1) + 3.0 * F.softmax(z2 / 2.0, -1)) / 4.0
    other = -(probabilities * F.log_softmax(student / 2.0, -1)).sum(-1).mean()
    assert abs(float(other) - float(kd)) > 1e-2


def test_loss_goes_down_on_a_repeated_batch(tmp_path, two_teachers):
    first, second = two_teachers
    # KL to the teachers' mean: zero when the student matches it.
    raw = multi_recipe(
        {"checkpoint": str(first)},
        {"checkpoint": str(second), "weight": 2.0},
        temperature=1.0,
        kd_loss="kl",
        hard_label_weight=0.0,
    )
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    make_confident([run.teachers[0].model, run.teachers[1].model], ([1.0, -1.0], [-0.5, 0.5]))
    losses = losses_on_repeated_batch(run, steps=15, learning_rate=1e-2)
    assert losses[-1] < 0.3 * losses[0], losses


def test_teachers_with_their_own_tokenizers(tmp_path, tokenizer_dir, other_tokenizer_dir, quiet_console):
    from transformers import AutoTokenizer

    from brewer_cli.commands import distill
    from brewer_cli.synthetic import negation_sentiment

    first = save_tiny_model(tmp_path / "t0", tokenizer_dir, seed=0)
    second = save_tiny_model(tmp_path / "t1", other_tokenizer_dir, seed=1)
    third = save_tiny_model(tmp_path / "t2", other_tokenizer_dir, seed=2)
    raw = multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(second)}, {"checkpoint": str(third), "weight": 2})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    run = build_run(recipe, tmp_path / "out")
    # The student takes teachers[0]'s tokenizer; teachers 1 and 2 share one set of columns.
    assert run.distiller.prefixes == [None, "teacher_1_", "teacher_1_"]
    assert "teacher_1_input_ids" in run.data.train.columns and "teacher_2_input_ids" not in run.data.train.columns
    assert "teacher_1_input_ids" in run.data.eval.columns

    batch = one_batch(run, size=8)
    other = AutoTokenizer.from_pretrained(other_tokenizer_dir)
    texts = [row["text"] for row in negation_sentiment(64, 1)[:8]]
    expected = other(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert torch.equal(batch["teacher_1_input_ids"], expected["input_ids"])
    assert torch.equal(batch["teacher_1_attention_mask"], expected["attention_mask"])
    assert not torch.equal(batch["input_ids"][:, :4], batch["teacher_1_input_ids"][:, :4])

    # Each teacher's logits come from its own tokenization of the batch.
    distiller = run.distiller
    with torch.no_grad():
        direct = run.teachers[2].model.eval()(**expected).logits
    assert torch.allclose(distiller.teacher_logits(batch, 2), direct, atol=1e-5)

    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    assert [entry["weight"] for entry in summary["teachers"]] == [1.0, 1.0, 2.0]
    assert all(0.0 <= entry["metric"] <= 1.0 for entry in summary["teachers"])
    assert summary["teacher"]["checkpoint"] == "weighted mean of the logits of 3 teachers"
    assert summary["teacher"]["parameters"] == sum(entry["parameters"] for entry in summary["teachers"])
    assert 0.0 <= summary["student"]["metric"] <= 1.0
    written = json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())
    assert written["kind"] == "multi_teacher" and len(written["teachers"]) == 3


def test_the_ensemble_metric_is_the_mean_of_the_logits(tmp_path, two_teachers):
    first, second = two_teachers
    raw = multi_recipe({"checkpoint": str(first), "weight": 2.0}, {"checkpoint": str(second)})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    ensemble = run.distiller.evaluate_teachers(torch.device("cpu"))
    each = run.distiller.each_teacher_metrics
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(run.data.eval, batch_size=len(run.data.eval), collate_fn=run.collate)))
    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = [teacher.model(**inputs).logits for teacher in run.teachers]
    labels = batch["labels"]
    assert each[0]["accuracy"] == pytest.approx(float((logits[0].argmax(-1) == labels).float().mean()))
    mean = (2.0 * logits[0] + logits[1]) / 3.0
    assert ensemble["accuracy"] == pytest.approx(float((mean.argmax(-1) == labels).float().mean()))


def test_matches_read_the_named_teacher(tmp_path, two_teachers, tokenizer_dir, other_tokenizer_dir):
    first, second = two_teachers
    match = {"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse", "projection": "linear"}
    raw = multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(second)}, matches=[match], match_teacher=1)
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    distiller = run.distiller
    assert distiller.teachers[1] is run.teachers[1] and distiller.match_index == 1
    parts = distiller(one_batch(run))
    parts = {name: float(value.detach()) for name, value in parts.items()}
    assert "intermediate" in parts and parts["intermediate"] > 0
    assert parts["loss"] == pytest.approx(parts["kd"] + 0.5 * parts["hard_label"] + parts["intermediate"], rel=1e-5)
    assert set(distiller.projections) == {"match_0"}

    # The student reads the match teacher's tokenizer unless the recipe gives it another one,
    # which the match teacher would not share.
    third = save_tiny_model(tmp_path / "t2", other_tokenizer_dir, seed=2)
    raw = multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(third)}, matches=[match], match_teacher=1)
    run = build_run(load_recipe(write_recipe(tmp_path, raw, "other.yaml")), tmp_path / "out")
    assert run.distiller.prefixes == ["teacher_0_", None]
    raw["student"]["tokenizer"] = {"path": str(tokenizer_dir)}
    with pytest.raises(RecipeError) as error:
        build_run(load_recipe(write_recipe(tmp_path, raw, "other.yaml")), tmp_path / "out")
    assert "distillation.matches: intermediate matches compare teacher and student features token by token" in str(error.value)


def test_token_level_task_needs_one_tokenizer(tmp_path, other_tokenizer_dir):
    import transformers

    from tests.task_fixtures import ner_sentences, tokenizer, write_conll
    from tests.task_fixtures import save_tiny_model as save_task_model

    tags = ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    head = {"num_labels": 7, "id2label": dict(enumerate(tags)), "label2id": {tag: i for i, tag in enumerate(tags)}}
    from transformers import AutoTokenizer

    first = save_task_model(tmp_path / "t0", transformers.AutoModelForTokenClassification, tokenizer(), **head)
    second = save_task_model(
        tmp_path / "t1",
        transformers.AutoModelForTokenClassification,
        AutoTokenizer.from_pretrained(other_tokenizer_dir),
        seed=1,
        **head,
    )
    raw = multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(first)})
    raw["task"] = {"kind": "token_classification"}
    raw["data"] = {"train": {"path": str(write_conll(tmp_path / "train.conll", ner_sentences(16, 1)))}, "max_length": 64}
    # Sharing one tokenizer, token-level logits average position by position.
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    parts = run.distiller(one_batch(run))
    assert torch.isfinite(parts["loss"]) and float(parts["kd"].detach()) > 0

    raw["teachers"][1] = {"checkpoint": str(second)}
    with pytest.raises(ModelError) as error:
        build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    message = str(error.value)
    assert "teachers.1: this teacher's tokenizer differs from the student's" in message
    assert "compared token by token, which needs one tokenizer" in message


def test_teachers_disagreeing_on_label_order_is_an_error(tmp_path, tokenizer_dir):
    first = save_tiny_model(tmp_path / "t0", tokenizer_dir)
    second = save_tiny_model(tmp_path / "t1", tokenizer_dir, labels=["positive", "negative"], seed=1)
    raw = multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(second)})
    with pytest.raises(ModelError) as error:
        build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert "teachers.1.checkpoint: its labels are positive, negative (in id order)" in str(error.value)


def test_recipe_errors(tmp_path):
    def problems(raw: dict) -> str:
        with pytest.raises(RecipeError) as error:
            load_recipe(write_recipe(tmp_path, raw))
        return "\n".join(error.value.problems)

    path = tmp_path / "recipe.yaml"
    # `teacher` instead of `teachers`.
    raw = distill_recipe("runs/t/final", distillation={"kind": "multi_teacher"})
    text = problems(raw)
    assert f"{path}: teacher: kind `multi_teacher` reads `teachers: [{{checkpoint: …}}, …]` (a list)" in text
    assert f"{path}: teachers: kind `multi_teacher` needs `teachers:" in text
    # `teachers` with a single-teacher kind.
    raw = distill_recipe("runs/t/final")
    raw["teachers"] = [{"checkpoint": "runs/a/final"}]
    assert f"{path}: teachers: `teachers` (a list) is for kind `multi_teacher`; kind `basic` names one `teacher`" in problems(raw)
    # Out-of-range match teacher, a zero weight and a misspelled key, all at once.
    raw = multi_recipe({"checkpoint": "a", "weight": 0}, {"checkpoint": "b", "wieght": 2}, match_teacher=2)
    text = problems(raw)
    assert f"{path}: teachers.0.weight: Input should be greater than 0" in text
    assert f"{path}: teachers.1.wieght: unknown key (did you mean 'weight'?)" in text
    raw = multi_recipe({"checkpoint": "a"}, {"checkpoint": "b"}, match_teacher=2)
    assert f"{path}: distillation.match_teacher: 2 is not an index of `teachers` (0…1)" in problems(raw)


def test_missing_teachers_are_named_or_trained(tmp_path, tokenizer_dir, monkeypatch, quiet_console):
    """Teachers trained one command each (`train-teacher` on a trainer recipe with --set), then a
    multi-teacher recipe whose last teacher `distill` trains itself from its `train` section."""
    from brewer_cli.cli import app
    from brewer_cli.commands import distill, train_teacher
    from brewer_cli.errors import BrewerError

    monkeypatch.chdir(tmp_path)
    trainer = distill_recipe("unused")
    del trainer["teacher"], trainer["student"]
    trainer["name"] = "teacher"
    trainer["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    trainer["distillation"] = {"kind": "trainer"}
    trainer_path = write_recipe(tmp_path, trainer, "teacher.yaml")
    runner = CliRunner()
    result = runner.invoke(app, ["train-teacher", str(trainer_path), "--set", "training.seed=1", "--set", "name=teacher-seed1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "teacher-seed1" / "final" / "config.json").is_file()
    assert load_recipe(tmp_path / "runs" / "teacher-seed1" / "recipe.yaml").training.seed == 1

    raw = multi_recipe(
        {"checkpoint": "runs/teacher-seed1/final"},
        {"checkpoint": "runs/teacher-seed2/final"},
        {"checkpoint": "runs/elsewhere/final"},
    )
    recipe = load_recipe(write_recipe(tmp_path, raw))
    with pytest.raises(ModelError) as error:
        distill(recipe, console=quiet_console)
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith(
        f"{recipe.path}: teachers.1.checkpoint: 'runs/teacher-seed2/final' does not exist"
    )
    with pytest.raises(BrewerError, match="no teacher of this recipe has a `train` section"):
        train_teacher(recipe, console=quiet_console)

    raw["teachers"] = raw["teachers"][:2]
    raw["teachers"][1]["train"] = {"model": trainer["model"], "training": {**trainer["training"], "seed": 2}}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    result = runner.invoke(app, ["distill", str(recipe.path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "teachers.1 runs/teacher-seed2/final is missing: it will be trained first" in result.output
    assert not (tmp_path / "runs" / "teacher-seed2").exists()
    summary = distill(recipe, console=quiet_console)
    assert (tmp_path / "runs" / "teacher-seed2" / "summary.json").is_file()
    assert len(summary["teachers"]) == 2
    with pytest.raises(BrewerError, match="every teacher with a `train` section exists already"):
        train_teacher(recipe, console=quiet_console)


def test_shipped_multi_teacher_recipe_names_the_three_seeds():
    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "quickstart-multi-teacher.yaml")
    assert [spec.checkpoint for spec in recipe.teachers] == [f"runs/quickstart-teacher-seed{n}/final" for n in (1, 2, 3)]
    teacher = load_recipe(root / "recipes" / "quickstart-teacher.yaml", ["training.seed=2", "name=quickstart-teacher-seed2"])
    assert teacher.distillation.kind == "trainer" and teacher.name == "quickstart-teacher-seed2"
    assert teacher.data == recipe.data and teacher.task == recipe.task
    assert yaml.safe_load((root / "recipes" / "quickstart-teacher.yaml").read_text())["training"]["seed"] == 42
