"""`brewer compare`: rows read from runs brewer itself finished (a teacher trained on labels, a
student distilled from it, a two-stage run), their Markdown, latency speed-ups, and the errors for
directories that are not finished runs."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from brewer_cli import compare
from brewer_cli.cli import app
from brewer_cli.compare.rows import LatencyMeter
from brewer_cli.errors import BrewerError
from brewer_cli.size_report import analytic_flops, resolve_target
from tests.conftest import TINY_BERT, distill_recipe, write_recipe

runner = CliRunner()
DATA = {
    "train": {"synthetic": "negation_sentiment", "examples": 64, "seed": 1},
    "eval": {"synthetic": "negation_sentiment", "examples": 32, "seed": 2},
    "max_length": 32,
}
TRAINING = {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3}


def _distill(recipe: Path, output: Path) -> None:
    result = runner.invoke(app, ["distill", str(recipe), "--output-dir", str(output)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """A teacher fine-tuned on labels (`trainer`), a student distilled from it and a two-stage run."""
    root = tmp_path_factory.mktemp("compare")
    output = root / "runs"
    teacher = {
        "name": "tiny-teacher",
        "task": {"kind": "sequence_classification", "num_labels": 2},
        "data": DATA,
        "model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}},
        "training": {**TRAINING, "epochs": 2},
        "distillation": {"kind": "trainer"},
    }
    _distill(write_recipe(root, teacher, "teacher.yaml"), output)
    teacher_final = output / "tiny-teacher" / "final"
    _distill(write_recipe(root, distill_recipe(teacher_final, name="tiny-student"), "student.yaml"), output)
    basic = {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5}
    staged = distill_recipe(
        teacher_final,
        name="tiny-staged",
        stages=[
            {"name": "first", "training": {"epochs": 1}, "distillation": basic},
            {"name": "second", "training": {"epochs": 2}, "distillation": basic},
        ],
    )
    del staged["distillation"]
    _distill(write_recipe(root, staged, "staged.yaml"), output)
    return {"teacher": output / "tiny-teacher", "student": output / "tiny-student", "staged": output / "tiny-staged"}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_rows_hold_the_figures_of_summary_json(runs):
    student, teacher = compare.compare_runs([runs["student"], runs["teacher"]], latency=False)
    summary = _summary(runs["student"])
    assert student.name == "tiny-student" and student.kind == "basic" and student.method == "basic, random init"
    assert student.metric == summary["metric"] == "accuracy"
    assert student.value == summary["student"]["metric"]
    assert student.teacher_value == summary["teacher"]["metric"] == _summary(runs["teacher"])["model"]["metric"]
    assert student.of_teacher == summary["student_to_teacher"]
    assert student.parameters == summary["student"]["parameters"]
    assert student.flops == summary["size"]["student"]["flops"]["total"]
    assert student.teacher_flops == summary["size"]["teacher"]["flops"]["total"]
    assert student.steps == summary["steps"] == 4  # 64 examples / batch 16, one epoch
    assert student.epochs == (1.0,)
    assert student.train_time_s == summary.get("train_time_s", summary.get("wall_time_s"))
    assert (student.best, student.best_step) == (summary["best"]["value"], summary["best"]["step"])
    # The final evaluation is the last one metrics.jsonl holds: the last step's.
    history = compare.eval_history(runs["student"])
    assert history[-1][0] == 4 and student.final == history[-1][1]["accuracy"] == summary["last"]["metrics"]["accuracy"]
    assert student.seq_len == 32 and student.latency is None

    teacher_summary = _summary(runs["teacher"])
    assert teacher.kind == "trainer" and teacher.method == "fine-tuning"
    assert teacher.value == teacher_summary["model"]["metric"]
    assert teacher.parameters == teacher_summary["model"]["parameters"]
    assert teacher.flops == teacher_summary["size"]["model"]["flops"]["total"]
    assert teacher.of_teacher is None and teacher.teacher_value is None and teacher.teacher_checkpoint is None
    assert (teacher.steps, teacher.epochs) == (8, (2.0,))


def test_a_staged_run_reads_its_last_stage(runs):
    (row,) = compare.compare_runs([runs["staged"]], latency=False)
    summary = _summary(runs["staged"])
    last_stage = _summary(runs["staged"] / "stage-2")
    assert row.method == "stages: basic → basic"
    assert row.steps == summary["steps"] == 4 + 8
    assert row.epochs == (1.0, 2.0)
    assert row.value == summary["student"]["metric"] and row.of_teacher == summary["student_to_teacher"]
    assert row.flops == last_stage["size"]["student"]["flops"]["total"]
    assert row.best == last_stage["best"]["value"]
    assert compare.format_epochs(row.epochs) == "1+2"


def test_markdown_table(runs):
    student, teacher = compare.compare_runs([runs["student"], runs["teacher"]], latency=False)
    text = compare.to_markdown([student, teacher])
    lines = text.splitlines()
    assert lines[0] == (
        "| run | method | metric | value | of teacher | parameters | FLOPs | latency b1 | speed-up b1 | speed-up b32 "
        "| steps | epochs | train time | ex/s |"
    )
    assert lines[1] == "|:---|:---|:---|" + "---:|" * 11
    summary = _summary(runs["student"])
    parameters = summary["student"]["parameters"]
    flops = summary["size"]["student"]["flops"]["total"]
    assert 1e3 <= parameters < 1e6 and 1e3 <= flops < 1e6  # both print in thousands
    ex_per_s = summary["throughput"]["examples_per_s"]
    assert lines[2] == (
        f"| tiny-student | basic, random init | accuracy | {summary['student']['metric']:.4f} | "
        f"{summary['student_to_teacher']:.1%} | {parameters / 1e3:.2f}K | {flops / 1e3:.2f}K | — | — | — | 4 | 1 | "
        f"{summary['train_time_s']:.0f} s | {ex_per_s:.1f} |"
    )
    # No teacher: no share of one, and no latency without --latency.
    assert lines[3].startswith("| tiny-teacher | fine-tuning | accuracy | ")
    assert " | — | " in lines[3] and "| — | — | — | 8 | 2 |" in lines[3]
    assert (
        "- FLOPs: per example at sequence length 32, as `brewer size-report` counts them; parameters: the whole model." in lines
    )


def test_latency_speedups_measure_each_model_once(runs):
    meter = LatencyMeter(runs=1, batch_sizes=(1, 2))
    rows = meter.measure_rows(compare.compare_runs([runs["student"], runs["teacher"]], latency=False))
    # The student's teacher is the teacher run's final/: one measurement serves both rows.
    assert len(meter.measured) == 2
    student, teacher = rows
    for size in (1, 2):
        entry = student.latency[size]
        assert entry["speedup"] == pytest.approx(entry["teacher_ms"] / entry["student_ms"])
        assert teacher.latency[size]["student_ms"] == entry["teacher_ms"]
        assert teacher.latency[size]["speedup"] is None
        assert entry["threads"] == torch.get_num_threads()
    assert set(student.as_dict()["latency"]) == {"1", "2"}


def test_latency_note_names_the_thread_count_the_figures_were_measured_with(runs):
    """Not the renderer's: a table rendered under OMP_NUM_THREADS=1 once said "1 threads" of
    figures measured on 2."""
    (row,) = compare.compare_runs([runs["student"]], latency=False)
    measured = replace(row, latency={1: {"student_ms": 1.0, "teacher_ms": 2.0, "speedup": 2.0, "threads": 7}})
    assert ", CPU, 7 threads, random token ids" in " ".join(compare.notes([measured]))
    older = replace(row, latency={1: {"student_ms": 1.0, "teacher_ms": 2.0, "speedup": 2.0}})
    assert "CPU, thread count not recorded, random token ids" in " ".join(compare.notes([older]))


def test_runs_of_one_architecture_share_one_latency_figure(runs, tmp_path):
    """Forward time depends on shapes, not weight values: a second run of the student's shape
    (another directory, other weights) is not measured again."""
    twin = tmp_path / "tiny-student-twin"
    shutil.copytree(runs["student"], twin)
    final = twin / "final"
    (weights,) = final.glob("*.safetensors")
    tensors = {name: tensor + 1.0 for name, tensor in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    meter = LatencyMeter(runs=1, batch_sizes=(1,))
    rows = compare.compare_runs([runs["student"], runs["teacher"]], latency=False)
    twin_row = replace(rows[0], run_dir=str(twin))
    student, teacher, again = meter.measure_rows([*rows, twin_row])
    assert len(meter.measured) == 2  # the student's shape and the teacher's
    assert again.latency == student.latency
    assert teacher.latency[1]["student_ms"] == student.latency[1]["teacher_ms"]


def test_seq_len_recounts_flops_and_is_checked_against_positions(runs):
    (row,) = compare.compare_runs([runs["student"]], latency=False, seq_len=16)
    student = resolve_target(str(runs["student"])).build("meta")
    teacher = resolve_target(str(runs["teacher"])).build("meta")
    assert (row.seq_len, row.flops) == (16, analytic_flops(student, 16)["total"])
    assert row.teacher_flops == analytic_flops(teacher, 16)["total"]
    with pytest.raises(BrewerError, match=r"--seq-len 65 is longer than the 64 positions .* give --seq-len 64 or less"):
        compare.compare_runs([runs["student"]], latency=False, seq_len=65)


def test_cli_markdown_and_exit_codes(runs, tmp_path):
    result = runner.invoke(app, ["compare", str(runs["student"]), str(runs["teacher"]), "--no-latency", "--markdown"])
    assert result.exit_code == 0, result.output
    assert "| tiny-student | basic, random init | accuracy |" in result.output

    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["student"], unfinished)
    (unfinished / "summary.json").unlink()
    result = runner.invoke(app, ["compare", str(runs["teacher"]), str(unfinished), "--no-latency"])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert f"{unfinished}: the run has not finished — it has no summary.json (its newest checkpoint is" in flat
    assert "step-4" in flat
    assert "Finish it with `brewer distill RECIPE --resume` (the recipe it was started from" in flat

    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["compare", str(empty), "--no-latency"])
    assert result.exit_code == 2 and "not a run directory" in result.output

    result = runner.invoke(app, ["compare", str(tmp_path / "missing"), "--no-latency"])
    assert result.exit_code == 2 and "no such run directory" in result.output

    result = runner.invoke(app, ["compare", str(runs["student"]), "--no-latency", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "--no-latency skips" in " ".join(result.output.split())


def test_user_text_prints_literally_and_narrow_consoles_get_fewer_columns(runs):
    (row,) = compare.compare_runs([runs["student"]], latency=False)
    row = replace(row, name="odd[/x] [bold]name[/bold]")
    wide = Console(width=200, record=True)
    compare.render_table([row], wide)
    assert "odd[/x] [bold]name[/bold]" in wide.export_text()
    narrow = Console(width=80, record=True)
    compare.render_table([row], narrow)
    text = " ".join(narrow.export_text().split())
    assert "parameters" not in text.split("•")[0]
    assert "left out at this width (80 columns): parameters, FLOPs, latency b1, speed-up b32, epochs, train time, ex/s" in text


def test_plot_needs_matplotlib(runs, monkeypatch):
    (row,) = compare.compare_runs([runs["student"]], latency=False)
    row = replace(row, latency={1: {"student_ms": 1.0, "teacher_ms": 2.0, "speedup": 2.0}})
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BrewerError, match=r"--plot unused.png: the plot needs matplotlib.*pip install 'brewer\[plot\]'"):
        compare.plot([row], "unused.png")


def test_plot_draws_runs_and_teacher(runs, tmp_path):
    pytest.importorskip("matplotlib")
    (row,) = compare.compare_runs([runs["student"]], latency=False)
    row = replace(row, latency={1: {"student_ms": 1.0, "teacher_ms": 2.0, "speedup": 2.0}})
    written = compare.plot([row], tmp_path / "plots" / "compare.png")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_first_step_reaching():
    history = [(10, {"accuracy": 0.5}), (20, {"accuracy": 0.7}), (30, {"accuracy": 0.69})]
    assert compare.first_step_reaching(history, "accuracy", 0.69) == 20
    assert compare.first_step_reaching(history, "accuracy", 0.5) == 10
    assert compare.first_step_reaching(history, "accuracy", 0.71) is None
