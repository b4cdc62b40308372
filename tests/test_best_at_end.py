"""The best checkpoint is the headline (Trainer's `metric_for_best` / `load_best_at_end`): final/,
the printed table, summary.json's student and `student_to_teacher` are the best evaluation's;
`best` and `last` are both recorded; `load_best_at_end: false` keeps the last step."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from brewer_cli.best_checkpoint import BestMetric, flat_metrics
from brewer_cli.cli import app
from brewer_cli.commands import distill
from brewer_cli.errors import RecipeError
from brewer_cli.recipe import load_recipe
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe


def flipped_data(directory: Path) -> dict:
    """Train on reviews whose verdict is one word and evaluate on the same reviews with their
    labels flipped: the better the model learns, the worse it scores, so the best evaluation comes
    before the last."""
    verdicts = {"positive": ("great", "good", "fun", "brilliant"), "negative": ("awful", "bad", "dull", "boring")}
    subjects = ("the movie", "the film", "the plot", "the acting")
    rows = [
        {"text": f"{subject} was {word}", "label": label}
        for label, words in verdicts.items()
        for word in words
        for subject in subjects
    ] * 2
    flip = {"positive": "negative", "negative": "positive"}
    (directory / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    (directory / "eval.jsonl").write_text("\n".join(json.dumps({**row, "label": flip[row["label"]]}) for row in rows))
    return {"train": {"path": str(directory / "train.jsonl")}, "eval": {"path": str(directory / "eval.jsonl")}, "max_length": 32}


def trainer_recipe(directory: Path, tokenizer_dir: Path, **training) -> dict:
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    raw["distillation"] = {"kind": "trainer"}
    raw["data"] = flipped_data(directory)
    # It learns the words by about step 20 (accuracy on the flipped labels falls from 0.5 to 0).
    raw["training"].update({"epochs": 10, "eval_every": 8, "learning_rate": 2e-3, "lr_schedule": "constant", **training})
    return raw


def evaluations(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "eval" in record]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(first: Path, second: Path) -> bool:
    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_final_is_the_best_checkpoint_and_the_summary_says_which(tmp_path, tokenizer_dir):
    output = io.StringIO()
    raw = trainer_recipe(tmp_path, tokenizer_dir)
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=Console(file=output, width=200))
    run_dir = tmp_path / "out" / "tiny"

    evaluated = evaluations(run_dir)
    accuracies = [(record["step"], record["eval"]["accuracy"]) for record in evaluated]
    best_step, best_value = max(accuracies, key=lambda pair: (pair[1], -pair[0]))  # the first of equals
    last_step, last_metrics = evaluated[-1]["step"], evaluated[-1]["eval"]
    assert last_step == summary["steps"] == 40
    assert best_step < last_step and best_value > last_metrics["accuracy"], accuracies  # what the data is built for

    assert summary["metric"] == "accuracy"
    assert summary["best"] == {
        "step": best_step,
        "metric": "accuracy",
        "value": best_value,
        "metrics": evaluated[[s for s, _ in accuracies].index(best_step)]["eval"],
    }
    assert summary["last"] == {"step": last_step, "metrics": last_metrics}
    assert summary["final"] == {"step": best_step, "is_best": True}
    assert summary["model"]["metric"] == best_value and summary["model"]["metrics"] == summary["best"]["metrics"]
    assert same_weights(run_dir / "final", run_dir / "best")
    assert not same_weights(run_dir / "final", run_dir / "checkpoints" / f"step-{last_step}" / "student")

    text = " ".join(output.getvalue().split())
    assert f"tiny (trainer, 40 steps, best accuracy at step {best_step}, train " in text
    assert (
        f"final/ holds the best checkpoint (step {best_step} by accuracy); the last step ({last_step}) had accuracy "
        f"{last_metrics['accuracy']:.4f} (training.load_best_at_end: false keeps the last step)"
    ) in text

    # final/ loads and scores what the summary says.
    result = CliRunner().invoke(app, ["eval", str(run_dir / "final")])
    assert result.exit_code == 0, result.output
    found = list(run_dir.rglob("eval*.json"))
    assert found, "brewer eval wrote no report"
    report = json.loads(found[0].read_text())
    assert report["model"]["metrics"]["accuracy"] == pytest.approx(best_value)


def test_load_best_at_end_false_keeps_the_last_step(tmp_path, tokenizer_dir, quiet_console):
    raw = trainer_recipe(tmp_path, tokenizer_dir, load_best_at_end=False)
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "tiny"
    assert summary["final"] == {"step": 40, "is_best": False}
    assert summary["best"]["step"] < 40
    assert summary["model"]["metrics"] == summary["last"]["metrics"] == evaluations(run_dir)[-1]["eval"]
    assert same_weights(run_dir / "final", run_dir / "checkpoints" / "step-40" / "student")
    assert not same_weights(run_dir / "final", run_dir / "best")


def test_metric_for_best_picks_by_that_metric_and_heads_the_table(tmp_path, tokenizer_dir):
    output = io.StringIO()
    # Large initial weights: a teacher whose predictions depend on the example (its F1 is not 0).
    teacher_dir = save_tiny_model(tmp_path / "teacher", tokenizer_dir, config={**TINY_BERT, "initializer_range": 0.5})
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"epochs": 3, "eval_every": 2, "metric_for_best": "f1"})
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=Console(file=output, width=200))
    run_dir = tmp_path / "out" / "tiny"
    scores = [(record["step"], record["eval"]["f1"]) for record in evaluations(run_dir)]
    best_step, best_f1 = max(scores, key=lambda pair: (pair[1], -pair[0]))
    assert summary["metric"] == "f1"
    assert summary["best"]["step"] == best_step and summary["best"]["value"] == best_f1
    assert summary["student"]["metric"] == best_f1
    assert summary["teacher"]["metric"] == summary["teacher"]["metrics"]["f1"]
    assert summary["student_to_teacher"] == pytest.approx(best_f1 / summary["teacher"]["metrics"]["f1"])
    header = next(line for line in output.getvalue().splitlines() if "parameters" in line)
    assert "f1" in header.split() and "accuracy" not in header
    assert all(f"· f1 {value:.4g} · best" in output.getvalue() for _, value in scores)


def test_an_unknown_metric_for_best_stops_before_training_when_the_teacher_shows_the_metrics(tmp_path, teacher_dir):
    raw = distill_recipe(teacher_dir)
    raw["training"]["metric_for_best"] = "f_1"
    recipe = write_recipe(tmp_path, raw)
    result = CliRunner().invoke(app, ["distill", str(recipe), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    found = re.search(
        rf"{re.escape(str(recipe))}: training\.metric_for_best: 'f_1' is not a metric the teacher's evaluation reports "
        r"\(did you mean 'f1'\?\) — it reports: (.+); name one of them, or remove training\.metric_for_best to use the "
        r"task's primary metric \(accuracy\)",
        message,
    )
    assert found, message
    assert {"accuracy", "f1"} <= set(found.group(1).split(", "))
    run_dir = tmp_path / "out" / "tiny"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_an_unknown_metric_for_best_stops_at_the_first_evaluation_without_a_teacher(tmp_path, tokenizer_dir, quiet_console):
    raw = trainer_recipe(tmp_path, tokenizer_dir, metric_for_best="matthews")
    recipe = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        distill(load_recipe(recipe), tmp_path / "out", console=quiet_console)
    (problem,) = error.value.problems
    found = re.fullmatch(
        rf"{re.escape(str(recipe))}: training\.metric_for_best: 'matthews' is not a metric the student's evaluation "
        r"reports(?: \(did you mean '[a-z_]+'\?\))? — it reports: (.+); name one of them, or remove "
        r"training\.metric_for_best to use the task's primary metric \(accuracy\)",
        problem,
    )
    assert found, problem
    assert {"accuracy", "f1"} <= set(found.group(1).split(", "))
    assert [record["step"] for record in evaluations(tmp_path / "out" / "tiny")] == [8]
    assert not (tmp_path / "out" / "tiny" / "summary.json").exists()


def test_metric_for_best_needs_an_eval_split(tmp_path, teacher_dir, quiet_console):
    raw = distill_recipe(teacher_dir)
    del raw["data"]["eval"]
    raw["training"]["metric_for_best"] = "f1"
    recipe = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        distill(load_recipe(recipe), tmp_path / "out", console=quiet_console)
    assert error.value.problems == [
        f"{recipe}: training.metric_for_best: 'f1' picks the best checkpoint by an evaluation, and the recipe has no "
        f"eval split — add data.eval, or remove training.metric_for_best"
    ]


def _run(primary: str = "accuracy", greater: bool = True, without_labels: bool = False, chosen: str | None = None):
    task = SimpleNamespace(primary_metric=primary, greater_is_better=greater, measured_by_distillation_loss=without_labels)
    training = SimpleNamespace(metric_for_best=chosen)
    return SimpleNamespace(task=task, recipe=SimpleNamespace(training=training, path="r.yaml"), data=SimpleNamespace(eval=[1]))


@pytest.mark.parametrize(
    ("run", "name", "greater"),
    [
        (_run(), "accuracy", True),
        (_run(chosen="f1"), "f1", True),
        (_run(primary="pearson", chosen="mse"), "mse", False),
        (_run(primary="loss", greater=False), "loss", False),
        (_run(primary="loss", greater=False, without_labels=True, chosen="intermediate"), "intermediate", False),
        (_run(primary="task_mean", chosen="sentiment.accuracy"), "sentiment.accuracy", True),
        (_run(primary="f1", chosen="eval_loss"), "eval_loss", False),
    ],
)
def test_which_way_is_better(run, name, greater):
    best = BestMetric.of(run)
    assert (best.name, best.greater_is_better) == (name, greater)
    assert best.better(2.0, 1.0) is greater and best.better(1.0, 2.0) is not greater
    assert best.better(1.0, None) and not best.better(float("nan"), None) and not best.better(None, 1.0)


def test_nested_metrics_are_read_by_dotted_name():
    metrics = {"task_mean": 0.5, "sentiment": {"accuracy": 0.75, "f1": 0.5}, "ner": {"f1": 0.25, "f1_PER": 0.5}}
    assert flat_metrics(metrics) == {
        "task_mean": 0.5,
        "sentiment.accuracy": 0.75,
        "sentiment.f1": 0.5,
        "ner.f1": 0.25,
        "ner.f1_PER": 0.5,
    }
    assert BestMetric("ner.f1", True, "task_mean", "r.yaml").value(metrics) == 0.25


def test_a_resumed_run_ends_with_the_same_best_final(tmp_path, tokenizer_dir, quiet_console):
    raw = trainer_recipe(tmp_path, tokenizer_dir, save_every=8, keep_checkpoints=10)
    recipe = load_recipe(write_recipe(tmp_path, raw))
    summary = distill(recipe, tmp_path / "full", console=quiet_console)
    full = tmp_path / "full" / "tiny"
    best_step = summary["best"]["step"]
    assert best_step < 24 < summary["steps"]

    # A crash after step 24: its checkpoint, best/ (written at the best step) and the recipe survive.
    crashed = tmp_path / "crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-24", crashed / "checkpoints" / "step-24")
    shutil.copytree(full / "best", crashed / "best")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    resumed = distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)

    assert resumed["best"] == summary["best"] and resumed["final"] == summary["final"] == {"step": best_step, "is_best": True}
    assert resumed["model"]["metrics"] == summary["model"]["metrics"]
    assert same_weights(crashed / "final", full / "final")
