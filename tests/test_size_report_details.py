"""brewer size-report on runs: the default sequence length from the run's recipe, the run's metric
beside size and latency, `--also` runs, the points the plot draws, every model reference a recipe
accepts, and names printed literally."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from transformers import BertConfig, BertForSequenceClassification
from typer.testing import CliRunner

from brewer_cli import size_report
from brewer_cli.cli import app
from brewer_cli.errors import BrewerError
from tests.test_safe_loading import install_checkpoint_package


def save_bert(directory: Path, hidden: int = 32, layers: int = 2, positions: int = 64, seed: int = 0) -> Path:
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def make_run(
    directory: Path,
    max_length: int | None = 24,
    summary: dict | None = None,
    hidden: int = 32,
    layers: int = 2,
    positions: int = 64,
) -> Path:
    """A run directory as brewer leaves it: final/, recipe.yaml, summary.json."""
    save_bert(directory / "final", hidden=hidden, layers=layers, positions=positions)
    recipe = {"name": directory.name, "task": {"kind": "sequence_classification"}}
    if max_length is not None:
        recipe["data"] = {"train": {"synthetic": "negation_sentiment"}, "max_length": max_length}
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    if summary is not None:
        (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def quiet(width: int = 200) -> Console:
    return Console(file=io.StringIO(), width=width)


# ----------------------------------------------------------------------------- sequence length


def test_seq_len_defaults_to_the_runs_max_length(tmp_path):
    run = make_run(tmp_path / "runs" / "student", max_length=24)
    report = size_report.run(str(run), runs=0, console=quiet())
    assert report["seq_len"] == 24
    assert report["seq_len_source"] == f"data.max_length of {run / 'recipe.yaml'}"
    assert report["models"][0]["flops"]["seq_len"] == 24
    assert f"Sequence length 24: data.max_length of {run / 'recipe.yaml'}." in report["notes"]


def test_seq_len_is_capped_by_the_fewest_positions(tmp_path):
    run = make_run(tmp_path / "runs" / "student", max_length=256, positions=128)
    teacher = save_bert(tmp_path / "teacher", positions=96)
    report = size_report.run(str(run), against=str(teacher), runs=0, console=quiet())
    assert report["seq_len"] == 96
    assert report["seq_len_source"].endswith(f"capped by the 96 positions of {teacher}")


def test_seq_len_without_a_run_is_128_or_the_positions(tmp_path):
    assert size_report.run(str(save_bert(tmp_path / "wide", positions=512)), runs=0, console=quiet())["seq_len"] == 128
    assert size_report.run(str(save_bert(tmp_path / "narrow", positions=64)), runs=0, console=quiet())["seq_len"] == 64
    # Given, it is used as it is.
    assert size_report.run(str(tmp_path / "wide"), runs=0, seq_len=300, console=quiet())["seq_len"] == 300


def test_multi_task_run_uses_its_longest_task(tmp_path):
    run = make_run(tmp_path / "runs" / "multi", max_length=None)
    recipe = {"name": "multi", "tasks": {"a": {"data": {"max_length": 16}}, "b": {"data": {"max_length": 40}}}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert size_report.run(str(run), runs=0, console=quiet())["seq_len"] == 40


# ----------------------------------------------------------------------------- metrics, --also, plot


def runs_with_metrics(tmp_path: Path) -> tuple[Path, Path, Path]:
    teacher = make_run(
        tmp_path / "runs" / "teacher",
        summary={"name": "teacher", "metric": "accuracy", "model": {"metric": 0.95}},
        hidden=64,
        layers=4,
    )
    student = make_run(
        tmp_path / "runs" / "student",
        summary={
            "name": "sst2-student",
            "metric": "accuracy",
            "student": {"metric": 0.8},
            # The teacher as the student's run measured it, on the student's eval data.
            "teacher": {"metric": 0.9, "checkpoint": str(teacher / "final")},
        },
    )
    other = make_run(
        tmp_path / "runs" / "other",
        summary={"name": "other-student", "metric": "accuracy", "student": {"metric": 0.7}},
        hidden=16,
        layers=1,
    )
    return student, teacher, other


def test_runs_metric_beside_size_and_latency(tmp_path):
    student, teacher, other = runs_with_metrics(tmp_path)
    console = quiet()
    report = size_report.run(str(student), against=str(teacher), also=[str(other)], runs=1, batch_sizes=(1,), console=console)
    models = report["models"]
    assert [model["role"] for model in models] == ["target", "against", "also"]
    assert [model["run"] for model in models] == ["sst2-student", "teacher", "other-student"]
    assert [model["metric"]["value"] for model in models] == [0.8, 0.9, 0.7]
    assert models[1]["metric"]["source"] == f"{student / 'summary.json'} (its teacher)"
    assert report["comparison"]["metric_of_teacher"] == pytest.approx(0.8 / 0.9)
    printed = console.file.getvalue()
    row = next(line for line in printed.splitlines() if "accuracy (summary.json)" in line)
    assert "0.8000" in row and "0.9000" in row and "0.7000" in row and f"{0.8 / 0.9:.1%} of teacher" in row
    markdown = size_report.to_markdown(report)
    assert "| accuracy (summary.json) | 0.8000 | 0.9000 | 0.7000 | 88.9% of teacher |" in markdown


def test_teacher_outside_the_students_run_reports_its_own_metric(tmp_path):
    student, teacher, _ = runs_with_metrics(tmp_path)
    summary = json.loads((student / "summary.json").read_text())
    summary["teacher"]["checkpoint"] = "someone/another-teacher"
    (student / "summary.json").write_text(json.dumps(summary))
    report = size_report.build_report(str(student), against=str(teacher), runs=0)
    assert report["models"][1]["metric"] == {"name": "accuracy", "value": 0.95, "source": str(teacher / "summary.json")}


def test_plot_points_are_the_runs_metric_latency_and_parameters(tmp_path):
    student, teacher, other = runs_with_metrics(tmp_path)
    report = size_report.build_report(str(student), against=str(teacher), also=[str(other)], runs=2, batch_sizes=(1, 2))
    points = size_report.plot_points(report)
    assert [(point.label, point.role, point.metric) for point in points] == [
        ("sst2-student", "target", 0.8),
        ("teacher", "against", 0.9),
        ("other-student", "also", 0.7),
    ]
    for point, model in zip(points, report["models"]):
        assert point.parameters_millions == model["parameters"]["total"] / 1e6
        assert point.latency_ms == next(entry["median_ms"] for entry in model["latency"] if entry["batch_size"] == 1)
        assert point.latency_ms > 0
    assert points[0].parameters_millions < points[1].parameters_millions


def test_plot_points_leave_out_another_metric(tmp_path):
    student, teacher, other = runs_with_metrics(tmp_path)
    summary = json.loads((other / "summary.json").read_text())
    summary["metric"] = "f1"
    (other / "summary.json").write_text(json.dumps(summary))
    report = size_report.build_report(str(student), also=[str(other)], runs=1, batch_sizes=(1,))
    assert [point.metric for point in size_report.plot_points(report)] == [0.8, None]


def test_plot_of_runs_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    student, teacher, other = runs_with_metrics(tmp_path)
    path = tmp_path / "plot.png"
    size_report.run(
        str(student), against=str(teacher), also=[str(other)], runs=1, batch_sizes=(1,), plot_path=str(path), console=quiet()
    )
    assert path.read_bytes().startswith(b"\x89PNG")


def test_cli_also_and_default_seq_len(tmp_path):
    student, teacher, other = runs_with_metrics(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "size-report",
            str(student),
            "--against",
            str(teacher),
            "--also",
            str(other),
            "--runs",
            "1",
            "--batch-sizes",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["seq_len"] == 24
    assert [model["run"] for model in report["models"]] == ["sst2-student", "teacher", "other-student"]


# ----------------------------------------------------------------------------- references, markup


def test_python_package_target(tmp_path, monkeypatch):
    name = "brewersizepackage"
    checkpoint = save_bert(tmp_path / "packaged")
    site = tmp_path / "site"
    install_checkpoint_package(site, name, checkpoint, tmp_path / "imported")
    monkeypatch.setattr(sys, "path", [sys.path[0], str(site), *sys.path[1:]])
    monkeypatch.delitem(sys.modules, name, raising=False)
    target = size_report.resolve_target(f"python-package:{name}")
    sys.modules.pop(name, None)
    assert (target.kind, target.location) == ("checkpoint", str(checkpoint))


def test_missing_python_package_is_the_recipes_error():
    with pytest.raises(BrewerError, match="names the Python package 'brewernosuchpackage', which is not installed"):
        size_report.resolve_target("python-package:brewernosuchpackage")


def test_offline_hub_id_through_the_cli_is_one_clear_error():
    result = CliRunner().invoke(app, ["size-report", "brewer-test-owner/no-such-model", "--runs", "0"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert "size-report target 'brewer-test-owner/no-such-model' is not a file or directory here" in flat
    assert "without network only local directories load" in flat


def test_names_and_paths_with_markup_print_literally(tmp_path):
    run = make_run(tmp_path / "runs" / "a[/x]" / "[plot]", summary={"name": "[bold]x", "metric": "f1", "model": {"metric": 0.5}})
    console = quiet(width=400)
    report = size_report.run(str(run), runs=0, console=console)
    printed = console.file.getvalue()
    assert str(run) in printed and "[bold]x" in printed
    assert f"{run / 'final'}" in printed
    assert report["models"][0]["run"] == "[bold]x"
    narrow = quiet(width=80)
    size_report.render_table(report, narrow)
    assert max(len(line) for line in narrow.file.getvalue().splitlines()) <= 80
