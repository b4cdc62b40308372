"""`--resume` on a composite run — a teacher trained first, then the student; stages — continues
each part that has a checkpoint, starts afresh each part that has none and skips the finished
ones. Interruptions are simulated as a killed process leaves them (a complete step-N checkpoint
and the recorded recipe, nothing after); the resumed run must end with the weights of an
uninterrupted one, bit for bit."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brewer_cli.cli import app
from tests.conftest import TINY_BERT, distill_recipe, write_recipe

runner = CliRunner(env={"COLUMNS": "200"})
TEACHER = "runs/tiny-teacher/final"
# Both parts run 8 steps (2 epochs of 4) with a checkpoint every 2, evaluated at the end only (so
# that best/ and final/ are the last step's, whatever a crash left of best/).
CHECKPOINTS = {"epochs": 2, "save_every": 2, "keep_checkpoints": 10, "eval_every": 100}


def _brewer(root: Path, *arguments: str | Path) -> str:
    """Run `brewer` in `root` (the recipe names its teacher relative to it); returns the output."""
    with contextlib.chdir(root):
        result = runner.invoke(app, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for path in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(str(path)).items()}


def _assert_same_weights(first: Path, second: Path) -> None:
    expected, found = _weights(first), _weights(second)
    assert expected and expected.keys() == found.keys()
    for name in expected:
        assert torch.equal(expected[name], found[name]), name


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def _crashed_copy(run_dir: Path, target: Path, step: int) -> None:
    """What a run killed after its step-`step` checkpoint leaves: that checkpoint and recipe.yaml."""
    target.mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    shutil.copy(run_dir / "recipe.yaml", target / "recipe.yaml")


def _resumed_from(run_dir: Path) -> list[str]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["resumed_from"] for line in lines if "resumed_from" in line]


def _teacher_then_student(tokenizer_dir: Path) -> dict:
    raw = distill_recipe(TEACHER)
    raw["training"].update(CHECKPOINTS)
    raw["teacher"]["train"] = {
        "model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}},
        "training": {"batch_size": 16, "learning_rate": 1.0e-3, "progress": False, **CHECKPOINTS},
    }
    return raw


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tokenizer_dir) -> Path:
    """The teacher, then the student, in one uninterrupted `brewer distill`."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _brewer(root, "distill", write_recipe(root, _teacher_then_student(tokenizer_dir)))
    return root


def test_a_finished_teacher_is_reused_and_a_student_that_never_started_starts_afresh(tmp_path, tokenizer_dir, uninterrupted):
    # As after `brewer train-teacher`, then an interrupted distill that stopped before the student's first checkpoint.
    shutil.copytree(uninterrupted / "runs" / "tiny-teacher", tmp_path / "runs" / "tiny-teacher")
    (tmp_path / "runs" / "tiny" / "checkpoints" / ".step-2.tmp").mkdir(parents=True)
    teacher_before = _contents(tmp_path / "runs" / "tiny-teacher")
    output = _brewer(tmp_path, "distill", write_recipe(tmp_path, _teacher_then_student(tokenizer_dir)), "--resume")
    assert "teacher: runs/tiny-teacher/final was trained with the settings `teacher.train` gives" in output
    assert "runs/tiny: no checkpoint to resume: training it from the start" in output
    assert _contents(tmp_path / "runs" / "tiny-teacher") == teacher_before
    assert _resumed_from(tmp_path / "runs" / "tiny") == []
    _assert_same_weights(uninterrupted / "runs" / "tiny" / "final", tmp_path / "runs" / "tiny" / "final")


def test_a_finished_teacher_is_skipped_and_an_interrupted_student_resumes(tmp_path, tokenizer_dir, uninterrupted):
    shutil.copytree(uninterrupted / "runs" / "tiny-teacher", tmp_path / "runs" / "tiny-teacher")
    _crashed_copy(uninterrupted / "runs" / "tiny", tmp_path / "runs" / "tiny", 4)
    teacher_before = _contents(tmp_path / "runs" / "tiny-teacher")
    _brewer(tmp_path, "distill", write_recipe(tmp_path, _teacher_then_student(tokenizer_dir)), "--resume")
    assert _contents(tmp_path / "runs" / "tiny-teacher") == teacher_before
    assert _resumed_from(tmp_path / "runs" / "tiny") == [str(Path("runs/tiny/checkpoints/step-4"))]
    _assert_same_weights(uninterrupted / "runs" / "tiny" / "final", tmp_path / "runs" / "tiny" / "final")


def test_an_interrupted_teacher_resumes_then_the_student_starts_afresh(tmp_path, tokenizer_dir, uninterrupted):
    _crashed_copy(uninterrupted / "runs" / "tiny-teacher", tmp_path / "runs" / "tiny-teacher", 4)
    output = _brewer(tmp_path, "distill", write_recipe(tmp_path, _teacher_then_student(tokenizer_dir)), "--resume")
    assert f"teacher {TEACHER} continuing its training" in output
    assert "runs/tiny: no checkpoint to resume: training it from the start" in output
    assert len(_resumed_from(tmp_path / "runs" / "tiny-teacher")) == 1
    _assert_same_weights(uninterrupted / "runs" / "tiny-teacher" / "final", tmp_path / "runs" / "tiny-teacher" / "final")
    _assert_same_weights(uninterrupted / "runs" / "tiny" / "final", tmp_path / "runs" / "tiny" / "final")


def test_a_teacher_that_never_started_is_trained_from_the_start_on_resume(tmp_path, tokenizer_dir, uninterrupted):
    output = _brewer(tmp_path, "distill", write_recipe(tmp_path, _teacher_then_student(tokenizer_dir)), "--resume")
    assert f"teacher {TEACHER} has no checkpoint to resume: training it from the start" in output
    _assert_same_weights(uninterrupted / "runs" / "tiny" / "final", tmp_path / "runs" / "tiny" / "final")


def _staged(teacher: Path) -> dict:
    raw = distill_recipe(teacher)
    raw["training"].update(CHECKPOINTS)
    del raw["distillation"]
    raw["stages"] = [
        {"name": "soft", "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.0}},
        {"name": "mixed", "distillation": {"kind": "basic", "temperature": 1.0, "hard_label_weight": 0.5}},
    ]
    return raw


def test_a_staged_run_resumes_its_interrupted_stage_and_starts_the_next_afresh(tmp_path, teacher_dir):
    full = tmp_path / "full"
    full.mkdir()
    _brewer(full, "distill", write_recipe(full, _staged(teacher_dir)))
    staged = full / "runs" / "tiny"

    # Stage 1 killed after its step-4 checkpoint; stage 2 never started.
    crashed = tmp_path / "crashed"
    _crashed_copy(staged / "stage-1", crashed / "runs" / "tiny" / "stage-1", 4)
    shutil.copy(staged / "recipe.yaml", crashed / "runs" / "tiny" / "recipe.yaml")
    output = _brewer(crashed, "distill", write_recipe(crashed, _staged(teacher_dir)), "--resume")
    assert "runs/tiny/stage-2: no checkpoint to resume: training it from the start" in output
    assert _resumed_from(crashed / "runs" / "tiny" / "stage-1") == [str(Path("runs/tiny/stage-1/checkpoints/step-4"))]
    _assert_same_weights(staged / "final", crashed / "runs" / "tiny" / "final")

    # Stage 1 finished, stage 2 left nothing but a partial first checkpoint.
    again = tmp_path / "again"
    shutil.copytree(staged / "stage-1", again / "runs" / "tiny" / "stage-1")
    shutil.copy(staged / "recipe.yaml", again / "runs" / "tiny" / "recipe.yaml")
    (again / "runs" / "tiny" / "stage-2" / "checkpoints" / ".step-2.tmp").mkdir(parents=True)
    output = _brewer(again, "distill", write_recipe(again, _staged(teacher_dir)), "--resume")
    assert "stage 1/2: soft → runs/tiny/stage-1 finished already: skipped" in output
    assert "runs/tiny/stage-2: no checkpoint to resume: training it from the start" in output
    _assert_same_weights(staged / "final", again / "runs" / "tiny" / "final")
