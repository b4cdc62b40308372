"""What a run reports while it runs and how it is set up: trackers (`training.report_to`, read back
from TensorBoard's event file), the evaluation lines and plain step lines off a terminal,
throughput, the thread count, the learning-rate schedules, the precision `accelerate launch` was
told, and DDP's search for unused parameters only where a distiller declares it."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.cli import app
from brewer_cli.commands import distill
from brewer_cli.distillers import DISTILLERS
from brewer_cli.errors import RecipeError
from brewer_cli.recipe import load_recipe
from brewer_cli.recipe.sections import LR_SCHEDULES, TRACKERS
from brewer_cli.training_setup import (
    choose_threads,
    environment_threads,
    learning_rate_schedule,
    resolve_precision,
    tracker_config,
)
from tests.conftest import TINY_STUDENT, distill_recipe, write_recipe

# transformers' schedules that get_scheduler cannot build from the warmup and total steps alone.
LEFT_OUT_SCHEDULES = {
    "reduce_lr_on_plateau": "steps on an evaluation metric, not on the step count",
    "greedy": "adapts the rate to the loss it is given each step",
    "cosine_with_min_lr": "needs min_lr or min_lr_rate",
    "cosine_warmup_with_min_lr": "needs min_lr or min_lr_rate",
    "warmup_stable_decay": "needs num_decay_steps",
}


def lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- names in the recipe


def test_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert sorted(TRACKERS) == sorted(LOGGER_TYPE_TO_CLASS)


def test_schedules_are_transformers_that_build_from_warmup_and_total_steps():
    from transformers import SchedulerType

    values = {member.value for member in SchedulerType}
    assert set(LR_SCHEDULES) <= values
    # Every schedule transformers has is either offered or left out with its reason.
    assert values - set(LR_SCHEDULES) == set(LEFT_OUT_SCHEDULES)
    for name in LR_SCHEDULES:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = learning_rate_schedule(optimizer, name, 0.25, 8)
        rates = []
        for _ in range(8):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        assert all(0.0 <= rate <= 1.0 for rate in rates), (name, rates)


def test_the_default_linear_schedule_is_the_one_brewer_always_used():
    from transformers import get_linear_schedule_with_warmup

    def rates(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        scheduler = make(optimizer)
        found = []
        for _ in range(20):
            optimizer.step()
            scheduler.step()
            found.append(scheduler.get_last_lr()[0])
        return found

    assert rates(lambda o: learning_rate_schedule(o, "linear", 0.1, 20)) == rates(
        lambda o: get_linear_schedule_with_warmup(o, 2, 20)
    )


def test_cosine_schedule_reaches_the_run(tmp_path, teacher_dir, quiet_console):
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"lr_schedule": "cosine", "warmup": 0.0, "log_every": 1})
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    rates = [record["learning_rate"] for record in lines(tmp_path / "out" / "tiny") if "learning_rate" in record]
    # Cosine from 1e-3 to 0 over 4 steps: 1e-3 · ½(1 + cos(π·k/4)) after step k.
    assert rates == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)])
    assert summary["steps"] == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "report_to",
            ["tensorbord"],
            "training.report_to.0: 'tensorbord' is not allowed (did you mean 'tensorboard'?) — valid: ",
        ),
        ("lr_schedule", "cosin", "training.lr_schedule: 'cosin' is not allowed (did you mean 'cosine'?) — valid: linear, cosine"),
    ],
)
def test_unknown_tracker_or_schedule_names_the_field_and_the_valid_names(tmp_path, field, value, message):
    raw = distill_recipe("unused")
    raw["training"][field] = value
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert any(problem.startswith(f"{path}: {message}") for problem in error.value.problems), error.value.problems


def test_report_to_takes_one_name_as_trainer_does(tmp_path):
    raw = distill_recipe("unused")
    raw["training"]["report_to"] = "tensorboard"
    assert load_recipe(write_recipe(tmp_path, raw)).training.report_to == ("tensorboard",)
    raw["training"]["report_to"] = "none"
    assert load_recipe(write_recipe(tmp_path, raw)).training.report_to == ()


def test_a_tracker_that_is_not_installed_stops_the_run_before_it_starts(tmp_path, teacher_dir):
    from accelerate.tracking import get_available_trackers

    installed = {str(tracker) for tracker in get_available_trackers()}
    absent = [name for name in ("wandb", "aim") if name not in installed]
    if len(absent) < 2:
        pytest.skip("wandb and aim are both installed here: no tracker to miss")
    raw = distill_recipe(teacher_dir)
    raw["training"]["report_to"] = absent
    recipe = write_recipe(tmp_path, raw)
    result = CliRunner().invoke(app, ["distill", str(recipe), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert " ".join(result.stderr.split()).endswith(
        f'{recipe}: training.report_to: wandb, aim are not installed — run `pip install "brewer[wandb]"` and '
        f"`pip install aim`, or remove them from training.report_to"
    )
    assert not (tmp_path / "out" / "tiny").exists()


def test_the_tracker_configuration_is_the_resolved_recipe_as_scalars():
    flat = tracker_config({"training": {"learning_rate": 0.001, "report_to": ["tensorboard"], "max_steps": None}, "name": "x"})
    assert flat == {
        "training.learning_rate": 0.001,
        "training.report_to": "[tensorboard]",
        "training.max_steps": "null",
        "name": "x",
    }


# ----------------------------------------------------------------------------- tensorboard


def test_tensorboard_gets_exactly_the_metrics_jsonl_records(tmp_path, teacher_dir, quiet_console):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra: pip install -e '.[dev]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = distill_recipe(teacher_dir)
    raw["training"].update({"epochs": 2, "log_every": 3, "eval_every": 4, "report_to": ["tensorboard"]})
    distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "tiny"

    expected: dict[str, list[tuple[int, float]]] = {}
    for record in lines(run_dir):
        for name, value in record.items():
            if name in ("time", "step"):
                continue
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for inner, number in values:
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    expected.setdefault(f"{name}/{inner}" if inner else name, []).append((record["step"], number))
    assert {"loss", "kd", "hard_label", "learning_rate", "examples_per_s", "tokens_per_s", "eval/accuracy", "eval/f1"} <= set(
        expected
    )
    assert expected["loss"][-1][0] == 8 and [step for step, _ in expected["eval/accuracy"]] == [4, 8]

    event_files = list((run_dir / "logs" / "tiny").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0]))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for name, points in expected.items():
        read = [(event.step, event.value) for event in events.Scalars(name)]
        assert [step for step, _ in read] == [step for step, _ in points], name
        # TensorBoard stores float32.
        assert [value for _, value in read] == pytest.approx([value for _, value in points], rel=1e-6), name


# ----------------------------------------------------------------------------- readable logs


def test_off_a_terminal_the_bar_becomes_plain_lines_and_each_evaluation_prints_one(tmp_path, teacher_dir):
    output = io.StringIO()
    console = Console(file=output, width=80)
    assert not console.is_terminal
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"epochs": 2, "log_every": 2, "eval_every": 4, "progress": True})
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=console)
    text = output.getvalue()
    assert not re.search(r"^train\b", text, re.MULTILINE)  # no bar ("train ━━━━ 8/8 loss …")
    step_lines = [line for line in text.splitlines() if re.match(r"step \d+/8 · loss ", line)]
    assert [int(re.match(r"step (\d+)", line).group(1)) for line in step_lines] == [2, 4, 6, 8]
    assert re.fullmatch(
        r"step 2/8 · loss \d+\.\d{4} · lr \d\.\d\de-\d\d · [\d,.]+ ex/s · elapsed 0:00:\d\d · ETA \d:\d\d:\d\d", step_lines[0]
    ), step_lines[0]
    records = lines(tmp_path / "out" / "tiny")
    evaluations = [record for record in records if "eval" in record]
    eval_lines = [line for line in text.splitlines() if re.match(r"step \d+/8 · accuracy ", line)]
    assert len(eval_lines) == len(evaluations) == 2
    best_so_far = None
    for line, record in zip(eval_lines, evaluations):
        accuracy = record["eval"]["accuracy"]
        if best_so_far is None or accuracy > best_so_far[1]:
            best_so_far = (record["step"], accuracy)
        assert line.startswith(
            f"step {record['step']}/8 · accuracy {accuracy:.4g} · best {best_so_far[1]:.4g} @ {best_so_far[0]} · "
        ), line
        assert line.endswith(" ex/s")
    assert summary["steps"] == 8


def test_progress_false_prints_no_step_lines(tmp_path, teacher_dir):
    output = io.StringIO()
    raw = distill_recipe(teacher_dir)  # progress: false
    distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=Console(file=output, width=80))
    assert not re.search(r"^step \d+/4 · loss", output.getvalue(), re.MULTILINE)
    assert re.search(r"^step 4/4 · accuracy ", output.getvalue(), re.MULTILINE)


# ----------------------------------------------------------------------------- throughput, threads, times


def test_throughput_counts_examples_and_non_padding_tokens(tmp_path, teacher_dir, quiet_console):
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"epochs": 2, "log_every": 2, "threads": 1})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    run = build_run(recipe, tmp_path / "probe")
    tokens_per_epoch = sum(len(ids) for ids in run.data.train.columns["input_ids"])
    summary = distill(recipe, tmp_path / "out", console=quiet_console)

    throughput = summary["throughput"]
    assert throughput["examples"] == 2 * 64
    assert throughput["tokens"] == 2 * tokens_per_epoch  # attention_mask sums: padding not counted
    assert throughput["examples_per_s"] == pytest.approx(throughput["examples"] / throughput["seconds"])
    assert throughput["tokens_per_s"] == pytest.approx(throughput["tokens"] / throughput["seconds"])
    logged = [record for record in lines(tmp_path / "out" / "tiny") if "loss" in record]
    assert len(logged) == 4 and all(record["examples_per_s"] > 0 and record["tokens_per_s"] > 0 for record in logged)
    # The teacher cache (auto → prefill) answers every example; its counts are in the records.
    assert logged[-1]["teacher_cache_hits"] == 128 and logged[-1]["teacher_cache_misses"] == 0
    assert summary["threads"] == 1 == torch.get_num_threads()
    assert summary["total_time_s"] >= summary["train_time_s"] == summary["wall_time_s"] > 0


def test_threads_are_the_cores_divided_among_the_local_processes_unless_set():
    assert choose_threads(None, cores=16, local_processes=1) == 16
    assert choose_threads(None, cores=16, local_processes=4) == 4
    assert choose_threads(None, cores=6, local_processes=4) == 1
    assert choose_threads(None, cores=2, local_processes=8) == 1  # at least one
    assert choose_threads(3, cores=16, local_processes=4) == 3  # training.threads wins
    assert choose_threads(3, cores=16, local_processes=4, environment_threads=8) == 3
    assert choose_threads(None, cores=16, local_processes=1, environment_threads=2) == 2
    # OMP_NUM_THREADS is the user's choice, except under a launcher, which sets it to 1 itself.
    assert environment_threads({"OMP_NUM_THREADS": "2"}) == 2
    assert environment_threads({"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}) is None
    assert environment_threads({}) is None


# ----------------------------------------------------------------------------- precision


def test_auto_precision_follows_what_accelerate_was_told():
    assert resolve_precision("auto", {"ACCELERATE_MIXED_PRECISION": "bf16"}) == "bf16"
    assert resolve_precision("auto", {"ACCELERATE_MIXED_PRECISION": "no"}) == "no"
    assert resolve_precision("fp16", {"ACCELERATE_MIXED_PRECISION": "bf16"}) == "fp16"  # the recipe's own choice
    if not torch.cuda.is_available():
        assert resolve_precision("auto", {}) == "no"


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one precision per process: the runs below each start from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path: bf16 told by accelerate on a machine without GPU")
@pytest.mark.parametrize("told", ["bf16", "no"])
def test_accelerate_launch_precision_is_honoured_when_the_recipe_says_auto(
    tmp_path, teacher_dir, quiet_console, monkeypatch, fresh_accelerate_state, told
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", told)
    raw = distill_recipe(teacher_dir, student={"config": dict(TINY_STUDENT)})
    raw["training"].update({"max_steps": 2, "precision": "auto"})
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    assert summary["precision"] == told
    assert json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())["precision"] == told


# ----------------------------------------------------------------------------- DDP's unused parameters


def test_only_distillers_that_leave_parameters_unused_make_ddp_look_for_them():
    declared = {kind: DISTILLERS.get(kind).leaves_parameters_unused for kind in DISTILLERS.names()}
    assert declared == {
        "trainer": False,
        "basic": False,
        "general": True,
        "multi_teacher": True,
        "multi_task": True,
        "sequence_kd": False,
        "on_policy": False,
    }


def _unused_after_backward(run) -> list[str]:
    from torch.utils.data import DataLoader

    distiller = run.distiller
    distiller.train()
    batch = next(iter(DataLoader(run.data.train, batch_size=8, collate_fn=run.collate)))
    distiller(batch)["loss"].backward()
    return [name for name, parameter in distiller.named_parameters() if parameter.requires_grad and parameter.grad is None]


def test_basic_uses_every_student_parameter_and_general_may_not(tmp_path, teacher_dir, quiet_console):
    from brewer_cli.loop import TrainingLoop

    basic = build_run(load_recipe(write_recipe(tmp_path, distill_recipe(teacher_dir))), tmp_path / "basic")
    assert _unused_after_backward(basic) == []
    assert TrainingLoop(basic, resume=False, console=quiet_console).accelerator.ddp_handler.find_unused_parameters is False

    # Hidden-state matches only, no logit KD and no hard label: the pooler and classifier learn nothing.
    raw = distill_recipe(teacher_dir)
    raw["distillation"] = {
        "kind": "general",
        "kd_weight": 0,
        "hard_label_weight": 0,
        "matches": [{"student_layer": 1, "teacher_layer": 2, "loss": "hidden_mse", "projection": "linear"}],
    }
    general = build_run(load_recipe(write_recipe(tmp_path, raw, "general.yaml")), tmp_path / "general")
    unused = _unused_after_backward(general)
    assert any(name.startswith("student.classifier.") for name in unused), unused
    assert TrainingLoop(general, resume=False, console=quiet_console).accelerator.ddp_handler.find_unused_parameters is True
