"""Faults a real run meets, each against a real `python -m brewer_cli` process on tiny models:
kill -9 at a step and in the middle of a checkpoint write, SIGINT, divergence, a second run on the
same directory, a full disk. After each, what is on disk is either a complete checkpoint or nothing
that looks like one, and `--resume` ends with the weights an uninterrupted run ends with, bit for bit.

Faults inside a write are injected at the OS boundary by a `sitecustomize` module on the child's
PYTHONPATH (the child kills itself, or gets ENOSPC, when it writes one named file)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import distill_recipe, save_tiny_model, write_recipe

ROOT = Path(__file__).resolve().parent.parent

# Write `file_name` inside a checkpoint of step `BREWER_FAULT_STEP` → the fault in BREWER_FAULT.
SITECUSTOMIZE = """
import errno, os, signal
import torch

_save = torch.save


def _faulty_save(obj, path, *args, **kwargs):
    path_text = str(path)
    step = os.environ["BREWER_FAULT_STEP"]
    if f".step-{step}.tmp" in path_text and path_text.endswith(os.environ["BREWER_FAULT_FILE"]):
        if os.environ["BREWER_FAULT"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device", path_text)
    return _save(obj, path, *args, **kwargs)


torch.save = _faulty_save
"""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("faults") / "teacher", tokenizer_dir)


def _recipe(directory: Path, teacher: Path, **training) -> Path:
    raw = distill_recipe(teacher)
    raw["training"].update({"epochs": 3, "save_every": 2, "keep_checkpoints": 10, "eval_every": 100, "log_every": 1, **training})
    return write_recipe(directory, raw)


def _command(recipe: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(output), *extra]


def _environment(fault: dict[str, str] | None = None, hooks: Path | None = None) -> dict[str, str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    paths = [str(ROOT)] + ([str(hooks)] if hooks is not None else [])
    environment["PYTHONPATH"] = os.pathsep.join(paths + [environment.get("PYTHONPATH", "")])
    environment.update(fault or {})
    return environment


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=kwargs.pop("env", _environment()), **kwargs)


def _steps_logged(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _wait_for_step(process: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.time() + 240
    while _steps_logged(run_dir) < step:
        assert process.poll() is None, process.stderr.read() if process.stderr else "the run ended early"
        assert time.time() < deadline, "the run did not reach the step in time"
        time.sleep(0.05)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, teacher) -> dict[str, torch.Tensor]:
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = _run(_command(_recipe(directory, teacher), directory / "runs"))
    assert result.returncode == 0, result.stderr
    return _final_weights(directory / "runs" / "tiny")


def _complete_checkpoints(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(path.name for path in root.glob("step-*") if (path / "state.json").is_file())


def test_kill_at_a_step_then_resume_is_bit_identical(tmp_path, teacher, uninterrupted):
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    process = subprocess.Popen(
        _command(recipe, tmp_path / "runs"), env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(process, run_dir, 7)
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists() and _complete_checkpoints(run_dir)

    resumed = _run(_command(recipe, tmp_path / "runs", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(uninterrupted, _final_weights(run_dir))


def test_kill_during_a_checkpoint_write_then_resume_is_bit_identical(tmp_path, teacher, uninterrupted):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    fault = {"BREWER_FAULT": "kill", "BREWER_FAULT_STEP": "6", "BREWER_FAULT_FILE": "optimizer.pt"}
    killed = _run(_command(recipe, tmp_path / "runs"), env=_environment(fault, hooks))
    assert killed.returncode == -signal.SIGKILL
    # The interrupted write left its temporary directory, never a checkpoint that looks complete.
    assert (run_dir / "checkpoints" / ".step-6.tmp").is_dir()
    assert _complete_checkpoints(run_dir) == ["step-2", "step-4"]

    resumed = _run(_command(recipe, tmp_path / "runs", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert not (run_dir / "checkpoints" / ".step-6.tmp").exists()
    _assert_same_weights(uninterrupted, _final_weights(run_dir))


def test_sigint_checkpoints_then_resume_is_bit_identical(tmp_path, teacher, uninterrupted):
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    process = subprocess.Popen(
        _command(recipe, tmp_path / "runs"), env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for_step(process, run_dir, 5)
    process.send_signal(signal.SIGINT)
    output, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors
    assert "--resume" in output + errors
    stopped_at = _steps_logged(run_dir)
    assert f"step-{stopped_at}" in _complete_checkpoints(run_dir)
    assert not (run_dir / "summary.json").exists()

    resumed = _run(_command(recipe, tmp_path / "runs", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(uninterrupted, _final_weights(run_dir))


def test_divergence_stops_with_exit_2_and_only_finite_weights_on_disk(tmp_path, teacher):
    recipe = _recipe(tmp_path, teacher, learning_rate=1.0e6, max_grad_norm=None)
    run_dir = tmp_path / "runs" / "tiny"
    result = _run(_command(recipe, tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "non-finite" in result.stdout + result.stderr
    assert not (run_dir / "summary.json").exists()
    written = sorted(run_dir.rglob("*.safetensors"))
    for path in written:
        for name, tensor in load_file(str(path)).items():
            assert torch.isfinite(tensor).all(), f"{path}: {name}"
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=lambda constant: pytest.fail(f"bare {constant} in metrics.jsonl"))
        assert all(not (isinstance(value, float) and not math.isfinite(value)) for value in record.values())


def test_a_second_run_on_the_same_directory_exits_2(tmp_path, teacher):
    # Long enough that the first run still holds the directory when the second one starts.
    recipe = _recipe(tmp_path, teacher, epochs=2000)
    run_dir = tmp_path / "runs" / "tiny"
    first = subprocess.Popen(
        _command(recipe, tmp_path / "runs"), env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_step(first, run_dir, 1)
        for extra in ((), ("--resume",)):
            second = _run(_command(recipe, tmp_path / "runs", *extra))
            assert second.returncode == 2, second.stderr
            assert str(first.pid) in second.stdout + second.stderr
    finally:
        first.kill()
        first.wait(timeout=60)


def test_a_full_disk_exits_2_and_keeps_the_newest_checkpoint(tmp_path, teacher):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    fault = {"BREWER_FAULT": "disk full", "BREWER_FAULT_STEP": "6", "BREWER_FAULT_FILE": "optimizer.pt"}
    result = _run(_command(recipe, tmp_path / "runs"), env=_environment(fault, hooks))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "No space left" in result.stdout + result.stderr or "disk" in (result.stdout + result.stderr).lower()
    assert _complete_checkpoints(run_dir) == ["step-2", "step-4"]
    assert not list((run_dir / "checkpoints").glob(".step-*.tmp"))
    state = json.loads((run_dir / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["step"] == 4
    load_file(str(run_dir / "checkpoints" / "step-4" / "student" / "model.safetensors"))
