"""A run's row: its figures read from summary.json, recipe.yaml and metrics.jsonl, FLOPs at
another sequence length, and the measured latency of its final model and its teacher."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from brewer_cli.checkpoints import newest_checkpoint
from brewer_cli.errors import BrewerError
from brewer_cli.models import PACKAGE_PREFIX, package_checkpoint
from brewer_cli.size_report import DEFAULT_BATCH_SIZES, DEFAULT_SEQ_LEN, analytic_flops, measure_latencies, resolve_target

SUMMARY = "summary.json"
# The student's origin as the method names it, from the recipe's student section.
EXTRACTION_NAMES = {"importance": "ETD-Impt", "random": "ETD-Rand"}


@dataclass(frozen=True)
class RunRow:
    """One finished run's figures. `value` is the run's headline metric (summary.json), `best` and
    `final` the best and the last evaluation in its metrics.jsonl; `latency` maps a batch size to
    {student_ms, teacher_ms, speedup} when measured."""

    name: str
    run_dir: str
    kind: str
    method: str
    metric: str
    value: float | None
    teacher_value: float | None
    of_teacher: float | None
    parameters: int | None
    teacher_parameters: int | None
    flops: int | None
    teacher_flops: int | None
    seq_len: int | None
    steps: int | None
    epochs: tuple[float | None, ...]
    train_time_s: float | None
    total_time_s: float | None
    examples_per_second: float | None
    best: float | None
    best_step: int | None
    final: float | None
    teacher_checkpoint: str | None
    architecture: dict[str, Any] | None
    max_positions: int | None
    latency: dict[int, dict[str, float | None]] | None = None

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["epochs"] = list(self.epochs)
        record["latency"] = {str(size): entry for size, entry in (self.latency or {}).items()} or None
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunRow:
        """The row `as_dict` wrote (JSON turns tuples into lists and batch sizes into strings)."""
        latency = {int(size): entry for size, entry in (record.get("latency") or {}).items()} or None
        return cls(**{**record, "epochs": tuple(record["epochs"]), "latency": latency})


# ============================================================================= reading a run


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """summary.json of a finished run; a clear error naming the directory otherwise."""
    path = Path(run_dir)
    if not path.is_dir():
        raise BrewerError(
            f"{path}: no such run directory — give the directory of a run that `brewer distill` finished "
            f"(runs/<name>, or the --output-dir it was given)"
        )
    summary_file = path / SUMMARY
    if not summary_file.is_file():
        raise BrewerError(_unfinished_message(path))
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BrewerError(f"{summary_file}: cannot be read as JSON ({error}) — the run's summary is damaged") from None
    if not isinstance(summary, dict) or "metric" not in summary:
        raise BrewerError(f"{summary_file}: not a brewer run summary (no `metric`) — give a run directory")
    return summary


def _unfinished_message(path: Path) -> str:
    started = (path / "recipe.yaml").is_file() or (path / "metrics.jsonl").is_file() or any(path.glob("stage-*"))
    if not started:
        return (
            f"{path}: not a run directory — it has no summary.json, recipe.yaml or metrics.jsonl; give the directory "
            f"of a finished run (runs/<name>)"
        )
    found = [checkpoint for checkpoint in map(newest_checkpoint, [path, *_stage_dirs(path)]) if checkpoint is not None]
    progress = f"its newest checkpoint is {found[-1]}" if found else "it has no complete checkpoint yet"
    return (
        f"{path}: the run has not finished — it has no summary.json ({progress}). Finish it with "
        f"`brewer distill RECIPE --resume` (the recipe it was started from, with the same --set and --output-dir "
        f"options; {path / 'recipe.yaml'} holds its resolved copy), then compare it"
    )


def _read_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's resolved recipe as plain data (absent or unreadable: empty — it only names the
    method and the epochs)."""
    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return recipe if isinstance(recipe, dict) else {}


def eval_history(run_dir: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of every evaluation in metrics.jsonl, by step. A resumed run evaluates again
    the steps after its checkpoint: the later record of a step is the one the run continued from."""
    path = Path(run_dir) / "metrics.jsonl"
    by_step: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("eval"), dict) and isinstance(record.get("step"), int):
                by_step[record["step"]] = record["eval"]
    return sorted(by_step.items())


def _stage_dirs(run_dir: Path) -> list[Path]:
    """A staged run's stage directories in the order they ran (run_dir/stage-1, stage-2, …)."""
    stages = [path for path in run_dir.glob("stage-*") if path.is_dir() and path.name[6:].isdigit()]
    return sorted(stages, key=lambda path: int(path.name[6:]))


def first_step_reaching(history: list[tuple[int, dict[str, Any]]], metric: str, value: float) -> int | None:
    """The first evaluated step whose `metric` is at least `value` (None: never reached)."""
    for step, metrics in history:
        reached = metrics.get(metric)
        if isinstance(reached, (int, float)) and reached >= value:
            return step
    return None


def _last_stage(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    """A staged run's last stage directory (stages are run_dir/stage-k)."""
    stages = summary.get("stages")
    if not stages:
        return None
    recorded = Path(str(stages[-1].get("run_dir", "")))
    beside = run_dir / recorded.name
    return beside if beside.is_dir() else recorded


def _epochs(recipe: dict[str, Any]) -> float | None:
    training = recipe.get("training") or {}
    if training.get("max_steps"):
        return None
    epochs = training.get("epochs")
    return float(epochs) if isinstance(epochs, (int, float)) else None


def _method(summary: dict[str, Any], recipe: dict[str, Any]) -> str:
    """The kind of run in words: fine-tuning, or the distillation kind with the student's origin."""
    kind = str(summary.get("kind"))
    student = recipe.get("student") or {}
    extract = (student.get("init") or {}).get("extract") if isinstance(student, dict) else None
    if summary.get("stages"):
        method = "stages: " + " → ".join(str(stage.get("kind")) for stage in summary["stages"])
    elif "model" in summary:
        method = "fine-tuning"
    elif extract:
        method = f"{kind}, {EXTRACTION_NAMES.get(extract.get('strategy'), 'extracted')}"
    elif isinstance(student, dict) and student.get("config") is not None:
        method = f"{kind}, random init"
    else:
        method = kind
    if (recipe.get("data") or {}).get("augment"):
        method += ", augmented"
    return method


def _number(value: Any) -> float | None:
    """A figure only when it is one (summary.json's `best.metric` held the value in older runs and
    names the metric now)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _examples_per_second(summary: dict[str, Any]) -> float | None:
    """Training throughput as summary.json records it (a number, or a mapping with examples/s)."""
    throughput = summary.get("throughput")
    if isinstance(throughput, (int, float)):
        return float(throughput)
    if isinstance(throughput, dict):
        for key in ("examples_per_second", "train_examples_per_second", "examples_per_s"):
            if isinstance(throughput.get(key), (int, float)):
                return float(throughput[key])
    return None


def run_row(run_dir: str | Path) -> RunRow:
    """The figures of one finished run (latency: `LatencyMeter.measure_rows`)."""
    path = Path(run_dir)
    summary = read_summary(path)
    recipe = _read_recipe(path)
    last_stage = _last_stage(path, summary)
    # Size and evaluations live with the run that trained the final model: a staged run's last stage.
    trained = last_stage if last_stage is not None else path
    detail = read_summary(last_stage) if last_stage is not None and (last_stage / SUMMARY).is_file() else summary
    role = "model" if "model" in summary else "student"
    student = summary.get(role) or {}
    teacher = summary.get("teacher") or {}
    size = detail.get("size") or {}
    model_size = size.get(role) or size.get("student") or {}
    teacher_size = size.get("teacher") or {}
    history = eval_history(trained)
    metric = summary["metric"]
    best = detail.get("best") if isinstance(detail.get("best"), dict) else {}
    last = detail.get("last") if isinstance(detail.get("last"), dict) else {}
    if last_stage is not None:
        epochs = tuple(_epochs(_read_recipe(stage)) for stage in _stage_dirs(path))
    else:
        epochs = (_epochs(recipe),)
    positions = [
        figures["architecture"]["max_positions"]
        for figures in (model_size, teacher_size)
        if isinstance((figures.get("architecture") or {}).get("max_positions"), int)
    ]
    ratio = summary.get("student_to_teacher")
    if ratio is None and teacher.get("metric") and student.get("metric") is not None:
        ratio = student["metric"] / teacher["metric"]
    return RunRow(
        name=str(summary.get("name", path.name)),
        run_dir=str(path),
        kind=str(summary.get("kind")),
        method=_method(summary, recipe),
        metric=metric,
        value=student.get("metric"),
        teacher_value=teacher.get("metric"),
        of_teacher=ratio,
        parameters=student.get("parameters"),
        teacher_parameters=teacher.get("parameters"),
        flops=(model_size.get("flops") or {}).get("total"),
        teacher_flops=(teacher_size.get("flops") or {}).get("total"),
        seq_len=size.get("seq_len"),
        steps=summary.get("steps"),
        epochs=epochs,
        train_time_s=summary.get("train_time_s", summary.get("wall_time_s")),
        total_time_s=summary.get("total_time_s"),
        examples_per_second=_examples_per_second(detail),
        best=_number(best.get("value", best.get("metric"))),
        best_step=best.get("step"),
        final=_number((last.get("metrics") or {}).get(metric, last.get("metric")))
        if last
        else (history[-1][1].get(metric) if history else None),
        teacher_checkpoint=teacher.get("checkpoint"),
        architecture=model_size.get("architecture"),
        max_positions=min(positions) if positions else None,
    )


# ============================================================================= latency


class LatencyMeter:
    """The latency of runs' final models and their teachers, measured once per architecture and
    sequence length.

    A dense model's forward time depends on its shapes, not on its weights' values, so runs of one
    shape share one figure: measured one after another, ten passes each, four students of one
    3 × 384 shape came out between 6.9 and 11.0 ms at batch size 1, and that spread read as a
    difference between distillation methods. The models of one `measure_rows` call are timed
    together, interleaved round by round (`measure_latencies`), so a speed-up divides figures taken
    over the same moments."""

    def __init__(self, runs: int = 10, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, rounds: int = 5):
        if runs < 1:
            raise BrewerError(f"--runs must be at least 1 to measure latency, got {runs} — or pass --no-latency")
        self.runs, self.batch_sizes, self.rounds = runs, tuple(batch_sizes), rounds
        # (architecture, sequence length) → batch size → median ms, and the intra-op thread count
        # each was measured with: the figure means nothing without it, and the process that later
        # renders the table may run with another.
        self.measured: dict[tuple[str, int], dict[int, float]] = {}
        self.threads: dict[tuple[str, int], int] = {}
        self._architectures: dict[str, str] = {}

    def measure_rows(self, rows: Sequence[RunRow]) -> list[RunRow]:
        """The rows with their final model's and their teacher's latency and the ratio per batch size."""
        wanted: dict[tuple[str, int], tuple[str, str]] = {}
        keys = []
        for row in rows:
            seq_len = row.seq_len or DEFAULT_SEQ_LEN
            models = [(row.run_dir, f"{row.run_dir} (its final model)")]
            if row.teacher_checkpoint:
                models.append((_local_location(row.teacher_checkpoint), f"{row.run_dir}: its teacher {row.teacher_checkpoint}"))
            row_keys = []
            for location, what in models:
                key = (self._architecture(location, what), seq_len)
                wanted.setdefault(key, (location, what))
                row_keys.append(key)
            keys.append(row_keys)
        missing = [key for key in wanted if key not in self.measured]
        if missing:
            built = [(_build(wanted[key][0], "cpu", wanted[key][1]), key[1]) for key in missing]
            results = measure_latencies(built, runs=self.runs, batch_sizes=self.batch_sizes, device="cpu", rounds=self.rounds)
            for key, entries in zip(missing, results):
                self.measured[key] = {entry["batch_size"]: entry["median_ms"] for entry in entries}
                self.threads[key] = entries[0]["threads"]
            del built
        return [
            _with_latency(
                row,
                self.measured[row_keys[0]],
                self.measured[row_keys[1]] if len(row_keys) > 1 else {},
                self.threads[row_keys[0]],
            )
            for row, row_keys in zip(rows, keys)
        ]

    def _architecture(self, location: str, what: str) -> str:
        """The model's class, parameter names, shapes and dtypes, from its module tree alone (meta device)."""
        location_key = _model_key(location)
        if location_key not in self._architectures:
            model = _build(location, "meta", what)
            layout = [type(model).__name__, str(getattr(getattr(model, "config", None), "_attn_implementation", None))]
            layout += [f"{name}:{tuple(parameter.shape)}:{parameter.dtype}" for name, parameter in model.named_parameters()]
            self._architectures[location_key] = hashlib.sha256("\n".join(layout).encode()).hexdigest()
        return self._architectures[location_key]


def _with_latency(row: RunRow, student: dict[int, float], teacher: dict[int, float], threads: int) -> RunRow:
    latency = {}
    for size, student_ms in student.items():
        teacher_ms = teacher.get(size)
        latency[size] = {
            "student_ms": student_ms,
            "teacher_ms": teacher_ms,
            "speedup": teacher_ms / student_ms if teacher_ms and student_ms else None,
            "threads": threads,
        }
    return replace(row, latency=latency)


def _model_key(location: str) -> str:
    """One key per model directory: a run directory and its final/ (a student's recorded teacher)
    name the same model."""
    path = Path(location)
    if (path / "final" / "config.json").is_file():
        path = path / "final"
    return str(path.resolve()) if path.exists() else location


def _build(location: str, device: str, what: str) -> Any:
    """The model at `location` (weights read only on a real device), as size-report resolves it."""
    try:
        return resolve_target(location).build(device)
    except BrewerError as error:
        raise BrewerError(
            f"{what}: {error.message} — run compare from the directory the run was started in, or pass --no-latency"
        ) from None


def _local_location(checkpoint: str) -> str:
    """A `python-package:NAME` teacher as the directory it names; anything else as recorded."""
    if checkpoint.startswith(PACKAGE_PREFIX):
        return str(package_checkpoint(checkpoint, None, "teacher.checkpoint"))
    return checkpoint


def at_seq_len(row: RunRow, seq_len: int) -> RunRow:
    """The row with FLOPs counted at `seq_len` (--seq-len) instead of the run's max_length."""
    if seq_len < 1:
        raise BrewerError(f"--seq-len must be at least 1, got {seq_len}")
    if row.max_positions is not None and seq_len > row.max_positions:
        raise BrewerError(
            f"--seq-len {seq_len} is longer than the {row.max_positions} positions {row.run_dir}'s models have "
            f"position embeddings for — give --seq-len {row.max_positions} or less"
        )
    # Counts need only the module tree: meta-device models, no weights read.
    flops = analytic_flops(_build(row.run_dir, "meta", f"{row.run_dir} (its final model)"), seq_len)
    teacher_flops = None
    if row.teacher_checkpoint:
        teacher = _build(_local_location(row.teacher_checkpoint), "meta", f"{row.run_dir}: its teacher {row.teacher_checkpoint}")
        teacher_flops = (analytic_flops(teacher, seq_len) or {}).get("total")
    return replace(row, seq_len=seq_len, flops=(flops or {}).get("total"), teacher_flops=teacher_flops)


def compare_runs(
    run_dirs: Sequence[str | Path],
    latency: bool = True,
    seq_len: int | None = None,
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
) -> list[RunRow]:
    """One row per run; every directory is read before any model is loaded."""
    if not run_dirs:
        raise BrewerError("give at least one run directory: brewer compare runs/<name> [runs/<other> …]")
    meter = LatencyMeter(runs=runs, batch_sizes=batch_sizes) if latency else None
    rows = [run_row(run_dir) for run_dir in run_dirs]
    if seq_len is not None:
        rows = [at_seq_len(row, seq_len) for row in rows]
    else:
        # The run's max_length, within the positions both models have (FLOPs were counted there too).
        rows = [replace(row, seq_len=min(row.seq_len, row.max_positions or row.seq_len)) if row.seq_len else row for row in rows]
    return meter.measure_rows(rows) if meter is not None else rows
