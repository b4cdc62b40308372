"""The run directory: one writer at a time (a lock naming its holder; a killed holder blocks
nothing), --resume checked against the stored recipe before anything is written, a directory
holding only a partial first checkpoint counted as not started, and resource faults (a file in the
way, a read-only directory, a full disk) reported as clear errors with the newest checkpoint intact.

Each runs the `brewer` command line on tiny models and asserts the exit code and the message."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brewer_cli.cli import app
from brewer_cli.recipe import load_recipe
from tests.conftest import distill_recipe, save_tiny_model, write_recipe

ROOT = Path(__file__).resolve().parent.parent

# Holds the run directory's lock the way a running brewer does, until killed.
HOLDER = """
import sys, time, types
from pathlib import Path
from brewer_cli.run_directory import run_directory_lock

with run_directory_lock(Path(sys.argv[1]), types.SimpleNamespace(is_main_process=True, num_processes=1)):
    print("locked", flush=True)
    time.sleep(600)
"""


def _brewer(*arguments: str | Path) -> tuple[int, str]:
    """Exit code and output (stdout and stderr, whitespace collapsed: rich wraps long lines)."""
    result = CliRunner().invoke(app, [str(argument) for argument in arguments])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def _recipe(directory: Path, teacher: Path, name: str = "recipe.yaml", **training) -> Path:
    raw = distill_recipe(teacher)
    raw["training"].update({"save_every": 2, "keep_checkpoints": 10, "eval_every": 100, **training})
    return write_recipe(directory, raw, name)


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("run-directory") / "teacher", tokenizer_dir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, teacher) -> Path:
    """A finished run (4 steps, checkpoints at 2 and 4): copy it before changing it."""
    directory = tmp_path_factory.mktemp("finished")
    code, output = _brewer("distill", _recipe(directory, teacher), "--output-dir", directory / "runs")
    assert code == 0, output
    return directory / "runs" / "tiny"


def _copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(run_dir, copy)
    return copy


# ───────────────────────────────────────── one writer ─────────────────────────────────────────


def test_a_run_directory_held_by_a_live_process_is_refused_and_a_killed_ones_lock_blocks_nothing(tmp_path, teacher):
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ((), ("--resume",)):
            code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs", *extra)
            assert code == 2, output
            assert f"{run_dir}: another brewer process is writing this run directory — pid {holder.pid} on " in output
            assert "Wait for it to finish (or stop it), or give this run another name (--set name=…)" in output
        # Nothing was written beside the holder's lock.
        assert sorted(path.name for path in run_dir.iterdir()) == [".lock"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)

    # The killed holder's lock file stays, with its pid; the kernel released the lock itself.
    assert str(holder.pid) in (run_dir / ".lock").read_text()
    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
    assert code == 0, output
    assert (run_dir / "summary.json").is_file() and not (run_dir / ".lock").exists()


def test_every_process_of_a_launch_stops_when_the_directory_is_held(tmp_path, teacher):
    """Two processes started by hand (gloo): only the main one locks, and its refusal reaches the
    other, so that neither waits at a barrier for a process that stopped."""
    from tests.test_distributed import environment, free_port

    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    base = {**environment(), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=base)
    ranks = []
    try:
        assert holder.stdout.readline().strip() == "locked"
        port = str(free_port())
        for rank in (0, 1):
            ranked = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
            ranked.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
            command = [sys.executable, "-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(tmp_path / "runs")]
            ranks.append(subprocess.Popen(command, env=ranked, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [process.communicate(timeout=300) for process in ranks]
    finally:
        for process in [holder, *ranks]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=60)
    for process, (stdout, stderr) in zip(ranks, outputs):
        assert process.returncode == 2, stdout[-2000:] + stderr[-2000:]
        assert f"another brewer process is writing this run directory — pid {holder.pid}" in " ".join((stdout + stderr).split())


def test_a_staged_run_locks_its_parent_directory(tmp_path, teacher):
    raw = distill_recipe(teacher, name="two-stage")
    del raw["distillation"]
    raw["stages"] = [{"name": "only", "distillation": {"kind": "basic"}}]
    recipe = write_recipe(tmp_path, raw)
    parent = tmp_path / "runs" / "two-stage"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
        assert code == 2, output
        assert f"{parent}: another brewer process is writing this run directory — pid {holder.pid}" in output
        assert not (parent / "stage-1").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)


# ───────────────────────────────────────── resume checks ─────────────────────────────────────────


def test_resume_with_changed_results_is_refused_and_leaves_the_finished_run_as_it_was(tmp_path, teacher, finished):
    run_dir = _copy_of(finished, tmp_path)
    before = _contents(run_dir)
    raw = distill_recipe(teacher)
    raw["training"].update({"save_every": 2, "keep_checkpoints": 10, "eval_every": 100, "learning_rate": 2.0e-3})
    raw["student"]["config"]["hidden_size"] = 32
    changed = write_recipe(tmp_path, raw, "changed.yaml")

    code, output = _brewer("distill", changed, "--output-dir", tmp_path / "runs", "--resume")
    assert code == 2, output
    assert f"{changed}: --resume would continue {run_dir} with settings that change what it computes" in output
    assert "student.config.hidden_size: 16 → 32" in output
    assert "training.learning_rate: 0.001 → 0.002" in output
    assert "Resume with the recipe the run started with, or start a new run under another name" in output
    assert "Traceback" not in output
    # summary.json, recipe.yaml, the checkpoints, metrics.jsonl: byte for byte as they were; no lock left.
    assert _contents(run_dir) == before
    assert not (run_dir / ".lock").exists()


def test_resume_with_a_changed_evaluation_frequency_is_allowed_and_recorded(tmp_path, teacher, finished):
    run_dir = _copy_of(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "step-4")  # stopped after step 2
    (run_dir / "summary.json").unlink()
    recipe = _recipe(tmp_path, teacher, "more-often.yaml", eval_every=1, log_every=1)

    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs", "--resume")
    assert code == 0, output
    assert "resuming with changed settings: training.eval_every: 100 → 1; training.log_every: 10 → 1" in output
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    changes = [record["resume_changes"] for record in records if "resume_changes" in record]
    assert changes == [{"training.eval_every": {"stored": 100, "new": 1}, "training.log_every": {"stored": 10, "new": 1}}]
    assert load_recipe(run_dir / "recipe.yaml").training.eval_every == 1
    assert (run_dir / "summary.json").is_file()
    # Evaluated at the resumed steps 3 and 4 only, as the new frequency says.
    assert [record["step"] for record in records if "eval" in record][-2:] == [3, 4]


def test_a_directory_with_only_a_partial_first_checkpoint_has_not_started(tmp_path, teacher):
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    (run_dir / "checkpoints" / ".step-2.tmp" / "student").mkdir(parents=True)
    (run_dir / "checkpoints" / ".step-2.tmp" / "optimizer.pt").write_bytes(b"half")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _contents(run_dir)

    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs", "--resume")
    assert code == 2, output
    assert (
        f"{run_dir}: --resume: nothing to resume yet — the run stopped while writing its first checkpoint "
        f"(.step-2.tmp, incomplete) — run without --resume to start it afresh"
    ) in output
    assert _contents(run_dir) == before

    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
    assert code == 0, output
    assert f"note: {run_dir} held only an incomplete first checkpoint (.step-2.tmp) from a run stopped" in output
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (run_dir / "summary.json").is_file()


# ───────────────────────────────────────── resource faults ─────────────────────────────────────────


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, teacher):
    recipe = _recipe(tmp_path, teacher)
    (tmp_path / "runs").write_text("not a directory")
    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
    assert code == 2, output
    assert f"{tmp_path / 'runs'}: is a file, not a directory, so the run directory {tmp_path / 'runs' / 'tiny'}" in output
    assert "give --output-dir a directory" in output and "Traceback" not in output


@pytest.fixture
def read_only_directory(tmp_path) -> Iterator[Path]:
    directory = tmp_path / "read-only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    # Root ignores permission bits; a read-only mount refuses root too.
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)], capture_output=True).returncode:
        pytest.skip("running as root, which permission bits cannot stop, and mounting a read-only tmpfs is not allowed")
    yield directory
    subprocess.run(["umount", "--lazy", str(directory)], check=True)  # lazy: a failed writer may hold a file open


def test_a_read_only_output_dir_is_refused(tmp_path, teacher, read_only_directory):
    recipe = _recipe(tmp_path, teacher)
    code, output = _brewer("distill", recipe, "--output-dir", read_only_directory)
    assert code == 2, output
    assert f"{read_only_directory / 'tiny'}: the run directory cannot be made (" in output
    assert "give --output-dir a directory you may write" in output and "Traceback" not in output


def test_too_little_free_space_is_refused_before_training(tmp_path, teacher, monkeypatch):
    recipe = _recipe(tmp_path, teacher)
    # The file system's answer, at the OS boundary: 1000 bytes free.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000))
    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
    assert code == 2, output
    assert (
        f"{tmp_path / 'runs' / 'tiny'}: not enough free disk space for this run — a checkpoint and the best/ and final/" in output
    )
    assert "bytes), 1000 B free" in output and "give --output-dir a disk with room" in output
    assert not (tmp_path / "runs" / "tiny").exists()


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_newest_one(tmp_path, teacher, monkeypatch):
    recipe = _recipe(tmp_path, teacher)
    run_dir = tmp_path / "runs" / "tiny"
    save = torch.save

    def disk_full_at_step_4(obj, path, *args, **kwargs):
        # The write starts, then the disk fills: what is half-written must go.
        if ".step-4.tmp" in str(path):
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    code, output = _brewer("distill", recipe, "--output-dir", tmp_path / "runs")
    assert code == 2, output
    assert (
        f"{run_dir / 'checkpoints' / 'step-4'}: could not be written: the disk is full (no space left on device); about "
        in output
    )
    assert (
        f"The partial write was removed; the newest complete checkpoint ({run_dir / 'checkpoints' / 'step-2'}) is "
        f"untouched: continue with --resume"
    ) in output
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert json.loads((run_dir / "checkpoints" / "step-2" / "state.json").read_text())["step"] == 2
    assert not (run_dir / "summary.json").exists() and not (run_dir / ".lock").exists()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 2 MiB file system, to fill: tmpfs, where mounting is allowed."""
    directory = tmp_path / "small-disk"
    directory.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not allowed here (the monkeypatched full disk above still runs)")
    yield directory
    subprocess.run(["umount", "--lazy", str(directory)], check=True)  # lazy: a failed writer may hold a file open


def test_a_really_full_disk_ends_with_a_clear_error_and_resume_finishes_once_there_is_room(tmp_path, teacher, small_disk):
    # A checkpoint every step, all kept: the disk fills in the middle of the run.
    recipe = _recipe(tmp_path, teacher, epochs=5, save_every=1, keep_checkpoints=30)
    run_dir = small_disk / "tiny"
    code, output = _brewer("distill", recipe, "--output-dir", small_disk)
    assert code == 2, output
    assert "could not be written: the disk is full (no space left on device); about " in output
    assert " free when it failed — free space there, or give --output-dir a disk with room" in output
    assert "Traceback" not in output and "The partial write was removed" in output
    checkpoints = run_dir / "checkpoints"
    assert not list(checkpoints.glob(".*.tmp")) and not list(run_dir.glob("*.tmp"))
    kept = sorted(checkpoints.iterdir(), key=lambda path: int(path.name.split("-")[1]))
    assert kept, "the disk must fill after the first checkpoint"
    for checkpoint in kept:
        assert json.loads((checkpoint / "state.json").read_text())["step"] == int(checkpoint.name.split("-")[1])
        load_file(str(checkpoint / "student" / "model.safetensors"))

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    code, output = _brewer("distill", recipe, "--output-dir", small_disk, "--resume")
    assert code == 0, output
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20


def test_torchs_own_writer_failing_on_a_full_disk_is_recognized(tmp_path, small_disk):
    """torch.save to a path reports a full disk as a bare RuntimeError (no errno): the guard
    recognizes it by the space left, and removes the partial file."""
    from brewer_cli.checkpoints import guarded_write
    from brewer_cli.errors import ResourceError

    target = small_disk / "optimizer.pt"
    with pytest.raises(ResourceError) as error:
        with guarded_write(target, 4 << 20, lambda: target.unlink(missing_ok=True)):
            torch.save({"moments": torch.zeros(1 << 20)}, target)  # 4 MiB on a 2 MiB disk
    assert isinstance(error.value.__cause__, RuntimeError) and not isinstance(error.value.__cause__, OSError)
    assert str(error.value).startswith(f"{target}: could not be written: the disk is full (no space left on device)")
    assert not target.exists()
