"""The prefilled teacher-output store (`distillation.teacher_cache: prefill`, what `auto` picks;
brewer_cli/teacher_cache/prefill.py): one teacher pass before training, results equal to the
cache filled as examples are first seen, a store that later runs and --resume reuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brewer_cli.build import build_run
from brewer_cli.commands import distill, execute
from brewer_cli.recipe import load_recipe
from brewer_cli.teacher_cache.prefill import batch_end
from tests.conftest import write_recipe
from tests.test_teacher_cache import final_weights, general_raw, step_losses


def only_store(output: Path) -> Path:
    """The one store folder beside the runs (and its lock file, which stays: it holds no data)."""
    entries = sorted(path.name for path in (output / "teacher_outputs").iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock", entries
    return output / "teacher_outputs" / entries[0]


def test_a_prefilled_run_matches_the_lazy_cache_and_training_never_runs_the_teacher(tmp_path, teacher_dir, quiet_console):
    summaries = {}
    for cache in ("memory", "prefill"):
        recipe = load_recipe(write_recipe(tmp_path, {**general_raw(teacher_dir, cache), "name": f"run-{cache}"}))
        summaries[cache] = distill(recipe, tmp_path / "out", console=quiet_console)
    lazy, prefilled = tmp_path / "out" / "run-memory", tmp_path / "out" / "run-prefill"
    losses, losses_prefilled = step_losses(lazy), step_losses(prefilled)
    assert sorted(losses_prefilled) == list(range(1, 9))
    # Training differs in epoch 1 only, where the prefilled run reads the features back as stored
    # (hidden states int8 with a scale per token, layout.INT8_ROW) and the lazy cache hands the
    # teacher's fresh fp32 ones on: the losses within the cache tests' tolerance, the weights after 8
    # steps (lr 1e-3) within 1e-3 of their norm (measured: 2.5e-4).
    for step in losses:
        assert losses_prefilled[step] == pytest.approx(losses[step], rel=2e-3, abs=1e-5), step
    lazy_weights, prefilled_weights = final_weights(lazy), final_weights(prefilled)
    apart = sum(float((prefilled_weights[name] - tensor).pow(2).sum()) for name, tensor in lazy_weights.items()) ** 0.5
    assert 0 < apart <= 1e-3 * sum(float(tensor.pow(2).sum()) for tensor in lazy_weights.values()) ** 0.5

    report = summaries["prefill"]["teacher_cache"]
    store = only_store(tmp_path / "out")
    assert (report["mode"], report["requested"], report["fill"]) == ("memory", "prefill", "prefill")
    assert report["prefill"]["directory"] == str(store) and report["prefill"]["filled_now"] is True
    # 2 epochs of 64 examples, every one answered by the store: no teacher forward while training.
    assert (report["hits"], report["misses"], report["hit_rate"]) == (128, 0, 1.0)
    assert (report["teacher_forwards"], report["teacher_forwards_skipped"]) == (0, 8)
    assert report["bytes_per_example"] == pytest.approx(report["estimated_bytes"] / 64, abs=0.1)
    assert not (prefilled / "teacher_cache").exists()
    assert sorted(path.name for path in (store / "teacher-0").iterdir()) == ["features.f16", "filled_step.npy", "logits.f32"]
    assert (np.load(store / "teacher-0" / "filled_step.npy") == 0).all()

    # The stored values are the lazily cached ones (here bit for bit: this tiny teacher's outputs
    # do not depend on the batch they ran in; in general they may differ by float-sum order).
    lazy_files = lazy / "teacher_cache" / "process-0" / "teacher-0"
    logits = [np.fromfile(folder / "logits.f32", dtype=np.float32) for folder in (store / "teacher-0", lazy_files)]
    assert logits[0].shape == logits[1].shape and logits[0].size > 0
    np.testing.assert_allclose(logits[0].astype(np.float64), logits[1].astype(np.float64), rtol=1e-6, atol=1e-7)
    # The features file holds int8 rows beside fp16 values: compared byte for byte.
    stored, kept = (np.fromfile(folder / "features.f16", dtype=np.uint8) for folder in (store / "teacher-0", lazy_files))
    assert stored.size > 0 and np.array_equal(stored, kept)


def test_a_complete_store_lets_the_teacher_go_and_the_summary_still_describes_it(tmp_path, teacher_dir, quiet_console):
    runs, summaries = {}, {}
    for cache in ("memory", "prefill"):
        recipe = load_recipe(write_recipe(tmp_path, {**general_raw(teacher_dir, cache), "name": f"run-{cache}"}))
        runs[cache] = build_run(recipe, tmp_path / "out")
        summaries[cache] = execute(runs[cache], resume=False, console=quiet_console)
    # The lazy cache may still need the teacher (an example not yet seen); the prefilled store never does.
    devices = {cache: {parameter.device.type for parameter in run.teacher.model.parameters()} for cache, run in runs.items()}
    assert devices == {"memory": {"cpu"}, "prefill": {"meta"}}
    assert runs["prefill"].distiller.teachers_run_after_prefill is False
    # Evaluated before training; counted, described and costed from the released module as from the whole one.
    lazy, prefilled = summaries["memory"], summaries["prefill"]
    assert prefilled["teacher"]["metrics"]["accuracy"] == lazy["teacher"]["metrics"]["accuracy"] > 0
    assert prefilled["teacher"]["parameters"] == lazy["teacher"]["parameters"] > 0
    assert prefilled["size"]["teacher"] == lazy["size"]["teacher"]
    assert prefilled["size"]["flops_fewer_by"] == lazy["size"]["flops_fewer_by"]


def test_a_store_read_from_disk_gives_the_run_it_gives_from_memory(tmp_path, teacher_dir, quiet_console, monkeypatch):
    import brewer_cli.teacher_cache.plan as plan

    summaries = {}
    for mode, margin in (("memory", 0.1), ("disk", 0.0)):
        # No margin over the run's own peak: `auto` reads the store from disk, example by example.
        monkeypatch.setattr(plan, "MEMORY_MARGIN", margin)
        recipe = load_recipe(write_recipe(tmp_path, {**general_raw(teacher_dir, "auto"), "name": f"run-{mode}"}))
        summaries[mode] = distill(recipe, tmp_path / "out", console=quiet_console)["teacher_cache"]
    assert (summaries["memory"]["mode"], summaries["disk"]["mode"]) == ("memory", "disk")
    # One store: filled by the first run, read by the second from the same files.
    assert summaries["memory"]["prefill"]["filled_now"] and not summaries["disk"]["prefill"]["filled_now"]
    assert summaries["disk"]["hit_rate"] == 1.0 and summaries["disk"]["teacher_forwards"] == 0
    assert step_losses(tmp_path / "out" / "run-disk") == step_losses(tmp_path / "out" / "run-memory")


def test_later_runs_and_a_resume_reuse_the_store(tmp_path, teacher_dir, quiet_console):
    raw = general_raw(teacher_dir, "auto", save_every=5, keep_checkpoints=5)
    recipe = load_recipe(write_recipe(tmp_path, raw))
    first = distill(recipe, tmp_path / "full", console=quiet_console)["teacher_cache"]
    assert (first["requested"], first["fill"], first["prefill"]["filled_now"]) == ("auto", "prefill", True)
    store = only_store(tmp_path / "full")
    written = {path.name: path.stat().st_mtime_ns for path in (store / "teacher-0").iterdir()}

    # Another seed and name: the same teacher and data, so the same store, not filled again.
    other = load_recipe(write_recipe(tmp_path, {**raw, "name": "seed-7", "training": {**raw["training"], "seed": 7}}, "b.yaml"))
    again = distill(other, tmp_path / "full", console=quiet_console)["teacher_cache"]
    assert again["prefill"] == {"directory": str(store), "filled_now": False}
    assert again["teacher_forwards"] == 0
    assert {path.name: path.stat().st_mtime_ns for path in (store / "teacher-0").iterdir()} == written

    # A crash after step 5, beside the store: the resumed run reads it and ends bit for bit as the full run.
    crashed = tmp_path / "crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "tiny" / "checkpoints" / "step-5", crashed / "checkpoints" / "step-5")
    shutil.copy(tmp_path / "full" / "tiny" / "recipe.yaml", crashed / "recipe.yaml")
    shutil.copytree(tmp_path / "full" / "teacher_outputs", tmp_path / "crashed" / "teacher_outputs")
    resumed = distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)["teacher_cache"]
    assert resumed["prefill"]["filled_now"] is False and resumed["teacher_forwards"] == 0
    full_weights = final_weights(tmp_path / "full" / "tiny")
    for name, tensor in final_weights(crashed).items():
        assert torch.equal(tensor, full_weights[name]), name


def test_an_interrupted_pass_is_filled_again_and_a_store_is_only_where_complete(tmp_path, teacher_dir, quiet_console):
    raw = general_raw(teacher_dir, "prefill", epochs=1)

    def run(name: str) -> dict:
        recipe = load_recipe(write_recipe(tmp_path, {**raw, "name": name}))
        return distill(recipe, tmp_path / "out", console=quiet_console)["teacher_cache"]

    run("first")
    store = only_store(tmp_path / "out")
    reference = np.fromfile(store / "teacher-0" / "logits.f32", dtype=np.float32)
    # An interrupted pass leaves `<hash>.partial` (here: garbage in it), never `<hash>`.
    partial = store.with_name(store.name + ".partial")
    store.rename(partial)
    (partial / "teacher-0" / "logits.f32").write_bytes(b"\x00" * 12)
    assert run("second")["prefill"]["filled_now"] is True
    assert sorted(path.name for path in (tmp_path / "out" / "teacher_outputs").iterdir()) == [store.name, f"{store.name}.lock"]
    np.testing.assert_allclose(np.fromfile(store / "teacher-0" / "logits.f32", dtype=np.float32), reference, rtol=1e-6)
    # A store whose fingerprint file differs (another brewer's format under this hash) is filled again.
    fingerprint = json.loads((store / "fingerprint.json").read_text())
    (store / "fingerprint.json").write_text(json.dumps({**fingerprint, "format": 0}))
    assert run("third")["prefill"]["filled_now"] is True


def test_batches_hold_at_most_the_token_budget_padded_to_their_longest():
    lengths = np.array([5, 40, 12, 40, 3, 12, 1])
    order = np.argsort(-lengths, kind="stable").tolist()
    assert order == [1, 3, 2, 5, 0, 4, 6]
    cuts, start = [], 0
    while start < len(order):
        end = batch_end(order, start, lengths, tokens=80)
        cuts.append(order[start:end])
        start = end
    # 80 tokens: two of 40, then up to six padded to 12 (the five left).
    assert cuts == [[1, 3], [2, 5, 0, 4, 6]]
    assert batch_end(order, 0, lengths, tokens=10) == 1  # one example at least, even above the budget


class _Processes:
    """What `_together` reads of an Accelerator: this process's device and the gather of one flag
    per process (here: the flags of a 3-process run, given)."""

    device = torch.device("cpu")

    def __init__(self, flags: list[int]):
        self.flags = flags

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        assert tensor.tolist() == [self.flags[0]]  # this process is rank 0
        return torch.tensor(self.flags)


def test_an_error_on_one_process_is_raised_on_every_process():
    from brewer_cli.errors import ModelError
    from brewer_cli.teacher_cache.prefill import _together

    _together(_Processes([0, 0, 0]), lambda: None)
    with pytest.raises(ModelError) as error:
        _together(_Processes([0, 0, 1]), lambda: None)
    assert str(error.value) == (
        "teacher-output prefill: process 2 stopped with an error (its message is above); the store was not "
        "completed, and the next run fills it again"
    )

    def fails() -> None:
        raise ValueError("the teacher's hidden states are beyond fp16")

    with pytest.raises(ValueError, match="beyond fp16"):  # the failing process raises its own error
        _together(_Processes([1, 0, 0]), fails)


def test_two_runs_started_together_fill_the_store_once(tmp_path, teacher_dir):
    """A seed sweep launched in parallel into one output folder: the second run waits on the lock
    and then reads the store the first one filled."""
    import os
    import subprocess
    import sys

    processes = []
    for seed in (1, 2):
        raw = general_raw(teacher_dir, "prefill", seed=seed)
        path = write_recipe(tmp_path, {**raw, "name": f"seed-{seed}"}, f"seed-{seed}.yaml")
        command = [sys.executable, "-m", "brewer_cli", "distill", str(path), "--output-dir", str(tmp_path / "out")]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        processes.append(
            subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    reports = [json.loads((tmp_path / "out" / f"seed-{seed}" / "summary.json").read_text())["teacher_cache"] for seed in (1, 2)]
    assert sorted(report["prefill"]["filled_now"] for report in reports) == [False, True]
    assert reports[0]["prefill"]["directory"] == reports[1]["prefill"]["directory"]
    assert (np.load(only_store(tmp_path / "out") / "teacher-0" / "filled_step.npy") == 0).all()


def test_the_prefill_progress_prints_a_line_at_each_tenth_off_a_terminal():
    import io

    from rich.console import Console

    from brewer_cli.reporting import PrefillDisplay

    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    display = PrefillDisplay(True, console)
    for done in range(0, 101, 5):
        display(done, 100)
    display.close()
    counts = [line.split()[2] for line in console.file.getvalue().splitlines()]
    assert counts == [
        "0/100",
        "10/100",
        "20/100",
        "30/100",
        "40/100",
        "50/100",
        "60/100",
        "70/100",
        "80/100",
        "90/100",
        "100/100",
    ]
    silent = Console(file=io.StringIO(), force_terminal=False)
    PrefillDisplay(False, silent)(50, 100)
    assert silent.file.getvalue() == ""


def test_prefill_batches_are_sized_for_the_teachers_device():
    """Large batches keep a GPU busy; on a CPU they are slower per example and grow the peak
    memory (benchmarks/prefill_batch.py), so a CPU teacher gets 2,048 padded tokens a batch."""
    from brewer_cli.teacher_cache.prefill import prefill_tokens

    assert prefill_tokens(torch.device("cpu")) == 2048
    assert prefill_tokens(torch.device("cuda")) == 16384
    # A batch of 2,048 padded tokens: 16 examples of 128 tokens, longest first.
    lengths = np.array([128] * 40)
    assert batch_end(list(range(40)), 0, lengths, prefill_tokens(torch.device("cpu"))) == 16
