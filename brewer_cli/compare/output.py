"""The rows as a rich table, as Markdown and as a plot of metric against latency (matplotlib, an
optional dependency, is imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from brewer_cli.compare.rows import RunRow
from brewer_cli.errors import BrewerError
from brewer_cli.size_report import ScatterPanel, draw_scatter, recorded_threads

COLUMNS = (
    "run",
    "method",
    "metric",
    "value",
    "of teacher",
    "parameters",
    "FLOPs",
    "latency b1",
    "speed-up b1",
    "speed-up b32",
    "steps",
    "epochs",
    "train time",
    "ex/s",
)
TEXT_COLUMNS = ("run", "method", "metric")
# What an 80-column log file can hold; the rest is in --markdown (and on a wider console).
NARROW_COLUMNS = ("run", "method", "metric", "value", "of teacher", "speed-up b1", "steps")
WIDE_CONSOLE = 150


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _count(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}{unit}"
    return f"{value:g}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_epochs(epochs: Sequence[float | None]) -> str:
    if not epochs or all(epoch is None for epoch in epochs):
        return "—"
    return "+".join("—" if epoch is None else f"{epoch:g}" for epoch in epochs)


def row_cells(row: RunRow) -> list[str]:
    """The row's cells in COLUMNS order, as plain text."""
    latency = row.latency or {}

    def speedup(size: int) -> str:
        value = (latency.get(size) or {}).get("speedup")
        return "—" if value is None else f"{value:.2f}×"

    batch_one = (latency.get(1) or {}).get("student_ms")
    return [
        row.name,
        row.method,
        row.metric,
        _number(row.value),
        "—" if row.of_teacher is None else f"{row.of_teacher:.1%}",
        _count(row.parameters),
        _count(row.flops),
        "—" if batch_one is None else f"{batch_one:.1f} ms",
        speedup(1),
        speedup(32),
        "—" if row.steps is None else str(row.steps),
        format_epochs(row.epochs),
        _duration(row.train_time_s),
        _number(row.examples_per_second, 1),
    ]


def notes(rows: Sequence[RunRow]) -> list[str]:
    lengths = sorted({row.seq_len for row in rows if row.seq_len is not None})
    shown = ", ".join(str(length) for length in lengths) or "—"
    lines = [
        "value: the run's headline metric (summary.json); of teacher: value ÷ the teacher's value on the same eval data.",
        f"FLOPs: per example at sequence length {shown}, as `brewer size-report` counts them; parameters: the whole model.",
    ]
    if any(row.latency for row in rows):
        # Figures recorded before the thread count travelled with them say so rather than guess.
        recorded = recorded_threads(entry for row in rows for entry in (row.latency or {}).values())
        threads = f"{recorded} threads" if recorded else "thread count not recorded"
        lines.append(
            f"latency b1: the final model's median ms per forward pass at batch size 1; speed-up bN: the teacher's median "
            f"÷ the run's at batch size N (sequence length {shown}, CPU, {threads}, random token "
            f"ids without padding, eval mode)."
        )
    lines.append("train time: the training loop's wall time; ex/s: training examples per second, when the run recorded it.")
    return lines


def render_table(rows: Sequence[RunRow], console: Any) -> None:
    """A rich table; on a console narrower than WIDE_CONSOLE (an 80-column log file) only the
    NARROW_COLUMNS, which still fit, and a note naming the others."""
    shown = COLUMNS if console.width >= WIDE_CONSOLE else NARROW_COLUMNS
    table = Table(title=f"{len(rows)} run{'s' if len(rows) != 1 else ''} compared", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in shown:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right", overflow="fold")
    for row in rows:
        cells = dict(zip(COLUMNS, row_cells(row)))
        # Run names, methods and metric names are the user's text: printed literally, never as markup.
        table.add_row(*(escape(cells[column]) for column in shown))
    console.print(table)
    lines = notes(rows)
    if shown is NARROW_COLUMNS:
        left_out = ", ".join(column for column in COLUMNS if column not in NARROW_COLUMNS)
        lines.append(f"left out at this width ({console.width} columns): {left_out} — see them with --markdown.")
    for line in lines:
        console.print(f"• {line}", markup=False, highlight=False)


def to_markdown(rows: Sequence[RunRow]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join([":---"] * 3 + ["---:"] * (len(COLUMNS) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(cell(text) for text in row_cells(row)) + " |" for row in rows]
    lines.append("")
    lines += [f"- {line}" for line in notes(rows)]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[RunRow], path: str | Path) -> Path:
    """Metric (y) against median latency at batch size 1 (x): one labelled point per run and one
    (a square) per distinct teacher, drawn by size-report's scatter routine."""
    points: list[tuple[float, float, str, bool]] = []
    teachers: dict[str, tuple[float, float]] = {}
    for row in rows:
        entry = (row.latency or {}).get(1)
        if entry is None or row.value is None:
            raise BrewerError(
                f"--plot: {row.run_dir} has no latency at batch size 1 or no metric — the plot needs both "
                f"(leave out --no-latency)"
            )
        points.append((entry["student_ms"], row.value, row.name, False))
        if entry.get("teacher_ms") is not None and row.teacher_value is not None:
            teachers[str(row.teacher_checkpoint)] = (entry["teacher_ms"], row.teacher_value)
    points += [(ms, value, f"teacher {Path(name).parent.name or name}", True) for name, (ms, value) in teachers.items()]
    metrics = " / ".join(sorted({row.metric for row in rows}))
    panel = ScatterPanel(points, "latency at batch size 1 (ms, median, CPU)", metrics)
    return draw_scatter([panel], f"{metrics} against latency", path)
