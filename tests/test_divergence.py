"""The divergence guard and the clean stop on SIGINT / SIGTERM, through the command line on tiny
models: a learning rate that really diverges stops the run with exit 2 and a message naming the
step, the non-finite loss parts and the fixes, with only finite weights on disk and metrics.jsonl
strict JSON; `training.on_nan: skip_batch` skips bad batches (and stops after `nan_patience` in a
row); a signal stops the run after the current step with a checkpoint that `--resume` continues
to the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brewer_cli import loop
from brewer_cli.cli import app
from brewer_cli.guards import json_line
from tests.conftest import distill_recipe, save_tiny_model, write_recipe

# AdamW at this rate makes the tiny student's losses overflow within a few steps (a real
# divergence, no injected NaN): steps 1–4 stay finite, step 5 is the first non-finite one.
DIVERGING = {"learning_rate": 1.0e4, "epochs": 3, "save_every": 2, "eval_every": 2, "log_every": 3, "keep_checkpoints": 10}


@pytest.fixture
def teacher(tmp_path, tokenizer_dir) -> Path:
    return save_tiny_model(tmp_path / "teacher", tokenizer_dir)


def _distill(recipe: Path, output: Path, *extra: str):
    return CliRunner().invoke(app, ["distill", str(recipe), "--output-dir", str(output), *extra])


def _strict_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl parsed line by line as strict JSON (a bare NaN or Infinity fails the test)."""

    def refuse(constant: str) -> None:
        pytest.fail(f"bare {constant} in metrics.jsonl")

    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_everything_written_is_finite(run_dir: Path) -> None:
    written = sorted(run_dir.rglob("*.safetensors")) + sorted(run_dir.rglob("optimizer.pt"))
    assert written
    for path in written:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            tensors = {
                f"{index}.{name}": value
                for index, state in torch.load(path, weights_only=True)["state"].items()
                for name, value in state.items()
            }
        for name, tensor in tensors.items():
            assert torch.isfinite(tensor).all(), f"{path}: {name}"


def test_a_diverging_learning_rate_stops_with_exit_2_and_only_finite_weights_on_disk(tmp_path, teacher):
    raw = distill_recipe(teacher)
    raw["training"].update(DIVERGING)
    recipe = write_recipe(tmp_path, raw)
    run_dir = tmp_path / "runs" / "tiny"

    result = _distill(recipe, tmp_path / "runs")

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip() == (
        f"error (divergence): {run_dir}: training diverged at step 5 of 12 (found at the check after step 6) — "
        f"non-finite loss parts kd, hard_label, loss and the gradient norm; nothing non-finite was written and the "
        f"newest checkpoint, {run_dir}/checkpoints/step-4, is the last good one. In {recipe}: lower "
        f"training.learning_rate (now 10000), lower training.max_grad_norm (now 1) or set training.on_nan: "
        f"skip_batch to skip batches with non-finite values; then start again under another name (--set name=…) "
        f"or after removing {run_dir}"
    )
    assert not (run_dir / "summary.json").exists() and not (run_dir / "final").exists()
    # The checkpoints before the divergence stay; none after it was written.
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    _assert_everything_written_is_finite(run_dir)
    records = _strict_records(run_dir)
    window = records[-1]
    assert window["step"] == 6 and window["kd"] is None and window["loss"] is None
    assert window["non_finite"] == ["kd", "hard_label", "loss"]
    assert math.isfinite(records[-3]["loss"]) and records[-3]["step"] == 3


def test_divergence_without_clipping_names_the_clip_fix(tmp_path, teacher):
    raw = distill_recipe(teacher)
    raw["training"].update({**DIVERGING, "max_grad_norm": None, "learning_rate": 1.0e6, "save_every": 1})
    recipe = write_recipe(tmp_path, raw)
    run_dir = tmp_path / "runs" / "tiny"

    result = _distill(recipe, tmp_path / "runs")

    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith(f"error (divergence): {run_dir}: training diverged at step 4 of 12 — non-finite loss parts")
    assert "set training.max_grad_norm (e.g. 1.0)" in message
    assert f"the newest checkpoint, {run_dir}/checkpoints/step-3, is the last good one" in message
    assert not (run_dir / "summary.json").exists()
    # Found between two log lines: the diverged window still gets its line.
    window = _strict_records(run_dir)[-1]
    assert window["step"] == 4 and window["loss"] is None and "loss" in window["non_finite"]
    _assert_everything_written_is_finite(run_dir)


def test_skip_batch_stops_after_nan_patience_batches_in_a_row(tmp_path, teacher):
    raw = distill_recipe(teacher)
    raw["training"].update({**DIVERGING, "on_nan": "skip_batch", "nan_patience": 3})
    recipe = write_recipe(tmp_path, raw)
    run_dir = tmp_path / "runs" / "tiny"

    result = _distill(recipe, tmp_path / "runs")

    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error (divergence): {run_dir}: training diverged — 3 batches in a row (steps 5 to 7) had non-finite "
        f"values (at step 7: loss parts kd, hard_label, loss and the gradient norm) and training.nan_patience is 3; "
        f"nothing non-finite was written and the newest checkpoint, {run_dir}/checkpoints/step-6, is the last good "
        f"one. In {recipe}: lower training.learning_rate (now 10000) or lower training.max_grad_norm (now 1); then "
        f"start again under another name (--set name=…) or after removing {run_dir}"
    )
    assert not (run_dir / "summary.json").exists()
    _assert_everything_written_is_finite(run_dir)
    skipped = [record["step"] for record in _strict_records(run_dir) if record.get("skipped_batch")]
    assert skipped == [5, 6, 7]


def _model_that_fails_on_unknown_words(directory: Path, tokenizer_dir: Path) -> Path:
    """A damaged checkpoint: its [UNK] embedding is NaN, so a batch holding an unknown word gets
    non-finite logits while every other batch is fine."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    save_tiny_model(directory, tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    unknown = AutoTokenizer.from_pretrained(directory).unk_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[unknown] = float("nan")
    model.save_pretrained(directory)
    return directory


def test_skip_batch_skips_each_non_finite_batch_and_counts_them(tmp_path, tokenizer_dir):
    from brewer_cli.synthetic import negation_sentiment

    rows = negation_sentiment(64, 1)
    rows[10]["text"] = "zebra " + rows[10]["text"]  # the only word the tokenizer does not know
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    raw = distill_recipe(_model_that_fails_on_unknown_words(tmp_path / "teacher", tokenizer_dir))
    raw["data"]["train"] = {"path": str(train)}
    raw["training"].update({"epochs": 2, "on_nan": "skip_batch", "log_every": 1})
    run_dir = tmp_path / "runs" / "tiny"

    result = _distill(write_recipe(tmp_path, raw), tmp_path / "runs")

    assert result.exit_code == 0, result.output
    # One batch per epoch holds the example: two epochs, two skipped batches.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_batches"] == 2 and summary["steps"] == 8
    assert "skipped 2 batches with non-finite values (training.on_nan: skip_batch)" in result.stdout
    records = _strict_records(run_dir)
    skipped = [record for record in records if record.get("skipped_batch")]
    assert len(skipped) == 2 and all(record["non_finite"] == ["kd", "loss", "grad_norm"] for record in skipped)
    # The skipped batches' losses are left out of the averages: every logged value is finite.
    assert all(math.isfinite(record["loss"]) for record in records if "loss" in record)
    _assert_everything_written_is_finite(run_dir)


def test_non_finite_weights_are_never_written(tmp_path, teacher, tokenizer_dir):
    # A damaged student: its [UNK] embedding is NaN. No batch holds an unknown word, so every loss
    # and gradient is finite, yet the weights are not: the first checkpoint is refused.
    student = _model_that_fails_on_unknown_words(tmp_path / "student", tokenizer_dir)
    raw = distill_recipe(teacher, student={"checkpoint": str(student)})
    raw["training"].update({"save_every": 2, "eval_every": 100})
    recipe = write_recipe(tmp_path, raw)
    run_dir = tmp_path / "runs" / "tiny"

    result = _distill(recipe, tmp_path / "runs")

    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error (divergence): {run_dir}/checkpoints/step-2: not written — the student's weights at step 2 are "
        f"not finite (NaN or infinite); no checkpoint had been written yet. In {recipe}: lower "
        f"training.learning_rate (now 0.001), lower training.max_grad_norm (now 1) or set training.on_nan: "
        f"skip_batch to skip batches with non-finite values; then start again under another name (--set name=…) "
        f"or after removing {run_dir}"
    )
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


def _signal_at_step(monkeypatch, step: int, *numbers: int) -> None:
    """Send the signals to this process at the end of `step` (from the progress bar's update, which
    the loop calls once a step), as a user pressing Ctrl-C or a scheduler's SIGTERM would."""
    update = loop._Progress.update

    def update_then_signal(self, current: int, learning_rate: float, loss: float | None = None) -> None:
        update(self, current, learning_rate, loss)
        if current == step:
            for number in numbers:
                handler = signal.getsignal(number)
                os.kill(os.getpid(), number)
                # Wait until the handler has run (it puts back the one from before the run) before
                # the next signal: two pending signals of one number would reach Python as one. A
                # fixed pause was not always enough on a loaded machine.
                deadline = time.monotonic() + 2.0
                while signal.getsignal(number) is handler and time.monotonic() < deadline:
                    time.sleep(0.01)

    monkeypatch.setattr(loop._Progress, "update", update_then_signal)


def test_sigint_writes_a_checkpoint_exits_130_and_resume_matches_an_uninterrupted_run(tmp_path, teacher, monkeypatch):
    raw = distill_recipe(teacher)
    raw["training"].update({"epochs": 3, "save_every": 4, "eval_every": 4, "keep_checkpoints": 10})
    recipe = write_recipe(tmp_path, raw)
    assert _distill(recipe, tmp_path / "full").exit_code == 0
    previous = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "runs" / "tiny"

    _signal_at_step(monkeypatch, 5, signal.SIGINT)
    result = _distill(recipe, tmp_path / "runs")

    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == (
        f"error (interrupted): {run_dir}: SIGINT received — training stopped after step 5 of 12 and wrote the "
        f"checkpoint {run_dir}/checkpoints/step-5. Continue the run with `brewer distill {recipe} --resume` "
        f"(the same --set and --output-dir options)"
    )
    assert signal.getsignal(signal.SIGINT) is previous
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-5"]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "final").exists()

    monkeypatch.undo()
    resumed = _distill(recipe, tmp_path / "runs", "--resume")

    assert resumed.exit_code == 0, resumed.output
    uninterrupted = load_file(str(tmp_path / "full" / "tiny" / "final" / "model.safetensors"))
    after_resume = load_file(str(run_dir / "final" / "model.safetensors"))
    assert uninterrupted.keys() == after_resume.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], after_resume[name]), name


def test_sigterm_exits_143_and_a_second_signal_stops_at_once(tmp_path, teacher, monkeypatch):
    raw = distill_recipe(teacher)
    raw["training"].update({"epochs": 3, "save_every": 100, "eval_every": 100})
    recipe = write_recipe(tmp_path, raw)
    # Python's own SIGINT handler: the second SIGINT below must meet the one that raises
    # KeyboardInterrupt. A suite started in the background by a non-interactive shell (`cmd &`)
    # inherits SIGINT ignored, and Python then installs no handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    _signal_at_step(monkeypatch, 3, signal.SIGTERM)
    result = _distill(recipe, tmp_path / "term")
    assert result.exit_code == 143, result.output
    assert "SIGTERM received — training stopped after step 3 of 12" in result.stderr
    assert (tmp_path / "term" / "tiny" / "checkpoints" / "step-3" / "state.json").is_file()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous

    # A second SIGINT gets the handler from before the run: Python's KeyboardInterrupt, at once
    # (typer exits 130 on it), with no checkpoint and no message of the loop's.
    _signal_at_step(monkeypatch, 2, signal.SIGINT, signal.SIGINT)
    twice = _distill(recipe, tmp_path / "twice")
    assert twice.exit_code == 130 and "interrupted" not in twice.output
    assert not (tmp_path / "twice" / "tiny" / "checkpoints").exists()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


def test_json_line_writes_non_finite_values_as_null_with_their_paths():
    line = json_line({"step": 3, "loss": float("nan"), "kd": 0.5, "eval": {"pearson": float("inf"), "f1": [1.0, -math.inf]}})
    assert json.loads(line) == {
        "step": 3,
        "loss": None,
        "kd": 0.5,
        "eval": {"pearson": None, "f1": [1.0, None]},
        "non_finite": ["loss", "eval.pearson", "eval.f1.1"],
    }
