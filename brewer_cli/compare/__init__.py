"""`brewer compare RUN…`: finished runs side by side — one row per run with its metric, the share
of its teacher's it keeps, its size and cost, its measured speed-up over its teacher and what
training it took — as a table, Markdown or a plot of metric against latency.

Every figure but latency is read from the run's own records, so a row says exactly what the run
reported: the metric, the teacher's metric and their ratio, parameters and FLOPs from summary.json
(FLOPs per example at the run's max_length, as brewer_cli.size_report counts them); steps, time and
throughput from summary.json; epochs from the run's recipe.yaml; the best and the final evaluation
from metrics.jsonl. A staged run reads its size and evaluations from its last stage. Latency is
measured here, by brewer_cli.size_report's measurement (median of `runs` forward passes after
warm-up, random token ids without padding, eval mode, on the CPU), for the run's final model and its
teacher in the same process, so that the speed-up compares like with like; a teacher shared by
several rows is measured once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from brewer_cli.compare.output import COLUMNS, format_epochs, notes, plot, render_table, row_cells, to_markdown
from brewer_cli.compare.rows import (
    RunRow,
    at_seq_len,
    compare_runs,
    eval_history,
    first_step_reaching,
    read_summary,
    run_row,
)
from brewer_cli.errors import BrewerError

__all__ = [
    "COLUMNS",
    "RunRow",
    "at_seq_len",
    "compare_runs",
    "eval_history",
    "first_step_reaching",
    "format_epochs",
    "notes",
    "plot",
    "read_summary",
    "render_table",
    "row_cells",
    "run",
    "run_row",
    "to_markdown",
]


def run(
    run_dirs: Sequence[str | Path],
    markdown: bool = False,
    plot_path: str | Path | None = None,
    latency: bool = True,
    seq_len: int | None = None,
    runs: int = 10,
    console: Any = None,
) -> list[RunRow]:
    """`brewer compare`: build the rows, print them (table or Markdown), draw the plot if asked."""
    if plot_path is not None and not latency:
        raise BrewerError("--plot draws each run's metric against its measured latency, which --no-latency skips — drop one")
    console = console or Console()
    rows = compare_runs(run_dirs, latency=latency, seq_len=seq_len, runs=runs)
    if markdown:
        # Machine-readable output: no markup, highlighting, emoji codes or hard wrapping.
        console.print(to_markdown(rows), markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        render_table(rows, console)
    if plot_path is not None:
        written = plot(rows, plot_path)
        console.print(f"plot written to {written}", markup=False, highlight=False)
    return rows
