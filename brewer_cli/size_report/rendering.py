"""Rendering a report: a rich table, JSON, Markdown, and a plot of the runs' metric against
latency and parameters (matplotlib, an optional dependency, is imported only when a plot is asked
for). Names, paths and values are printed as text, never read as rich markup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from brewer_cli.errors import BrewerError


def _format_count(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return str(value)


def _format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= threshold:
            return f"{value / threshold:.1f} {suffix}"
    return f"{value} B"


def _format_flops(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "KFLOPs")):
        if value >= threshold:
            return f"{value / threshold:.2f} {suffix}"
    return f"{value} FLOPs"


def _format_ratio(value: float | None, word: str = "") -> str:
    if value is None:
        return ""
    return f"{value:.2f}×{' ' + word if word else ''}"


def _format_value(value: Any) -> str:
    return "—" if value is None else str(value)


def metric_name(report: dict[str, Any]) -> str | None:
    """The metric the report shows: the target's, else the first model's that has one."""
    found = [model["metric"] for model in report["models"] if model.get("metric")]
    return found[0]["name"] if found else None


def _format_metric(metric: dict[str, Any] | None, name: str) -> str:
    if metric is None:
        return "—"
    # A model reporting another metric than the row's shows which.
    return f"{metric['value']:.4f}" if metric["name"] == name else f"{metric['name']} {metric['value']:.4f}"


def _rows(report: dict[str, Any]) -> list[list[str]]:
    """Label, one cell per model and (with a teacher) the ratio cell, for table and markdown."""
    models = report["models"]
    comparison = report["comparison"]
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], ratio: str = "") -> None:
        rows.append([label, *cells] + ([ratio] if comparison else []))

    add("source", [f"{model['source']}: {model['location']}" for model in models])
    if any(model.get("run", model["name"]) != model["name"] for model in models):
        add("run", [model.get("run", model["name"]) for model in models])
    name = metric_name(report)
    if name is not None:
        share = (comparison or {}).get("metric_of_teacher")
        add(
            f"{name} (summary.json)",
            [_format_metric(model.get("metric"), name) for model in models],
            "" if share is None else f"{share:.1%} of teacher",
        )
    architectures = [model["architecture"] for model in models]
    add("model class", [architecture["model_class"] for architecture in architectures])
    add("family", [_format_value(architecture["family"]) for architecture in architectures])
    for label, key in (
        ("layers", "layers"),
        ("hidden", "hidden"),
        ("heads", "heads"),
        ("FFN", "ffn"),
        ("vocab", "vocab"),
        ("max positions", "max_positions"),
        ("embedding size", "embedding_size"),
    ):
        if key == "embedding_size" and all(architecture[key] is None for architecture in architectures):
            continue
        add(label, [_format_value(architecture[key]) for architecture in architectures])

    parameters = [model["parameters"] for model in models]
    add(
        "parameters",
        [_format_count(count["total"]) for count in parameters],
        _format_ratio(comparison and comparison["parameters_smaller_by"], "smaller"),
    )
    add("  embeddings", [_format_count(count["embeddings"]) for count in parameters])
    add("  layers (encoder/decoder)", [_format_count(count["encoder"]) for count in parameters])
    # Only pre-LN decoders have a norm after the last layer; encoder tables keep their rows.
    if any(count.get("final_norm") for count in parameters):
        add("  final norm", [_format_count(count.get("final_norm", 0)) for count in parameters])
    add("  head (incl. pooler)", [_format_count(count["head"]) for count in parameters])
    add(
        "excluding output layers",
        [_format_count(count["excluding_output_layers"]) for count in parameters],
        _format_ratio(comparison and comparison["excluding_output_layers_smaller_by"], "smaller"),
    )
    add(
        "weights on disk",
        [_format_bytes(model["disk_bytes"]) for model in models],
        _format_ratio(comparison and comparison["disk_smaller_by"], "smaller"),
    )
    add(
        f"FLOPs / example @ {report['seq_len']}",
        [_format_flops((model["flops"] or {}).get("total")) for model in models],
        _format_ratio(comparison and comparison["flops_fewer_by"], "fewer"),
    )
    ratios_by_batch = {entry["batch_size"]: entry for entry in (comparison or {}).get("latency") or []}
    for batch_size in report["batch_sizes"]:
        entries = [
            next((entry for entry in model["latency"] or [] if entry["batch_size"] == batch_size), None) for model in models
        ]
        ratio = ratios_by_batch.get(batch_size, {})
        add(
            f"latency batch {batch_size} (median / p90)",
            [f"{entry['median_ms']:.2f} / {entry['p90_ms']:.2f} ms" if entry else "—" for entry in entries],
            _format_ratio(ratio.get("faster_by"), "faster"),
        )
        add(
            f"throughput batch {batch_size}",
            [f"{entry['examples_per_second']:.1f} ex/s" if entry else "—" for entry in entries],
            _format_ratio(ratio.get("throughput_ratio")),
        )
    return rows


def _headers(report: dict[str, Any]) -> list[str]:
    headers = [""] + [model["name"] for model in report["models"]]
    if report["comparison"]:
        headers.append("teacher ÷ student")
    return headers


def render_table(report: dict[str, Any], console) -> None:
    """Print the report as a rich table followed by the definitions behind its figures."""
    table = Table(title=Text(f"size report (sequence length {report['seq_len']}, {report['device']})"))
    for index, header in enumerate(_headers(report)):
        table.add_column(Text(header), justify="left" if index == 0 else "right", overflow="fold")
    for row in _rows(report):
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
    for note in report["notes"]:
        console.print(f"• {note}", markup=False, highlight=False)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)


def to_markdown(report: dict[str, Any]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    headers = _headers(report)
    lines = [
        "| " + " | ".join(cell(header) for header in headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in _rows(report)]
    lines.append("")
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PlotPoint:
    """One model in the plot: labelled by its run's name, at its parameters (millions), its median
    latency at batch size 1 (ms) and its run's metric (None when it has none, or another one)."""

    label: str
    role: str
    parameters_millions: float
    latency_ms: float
    metric: float | None


def plot_points(report: dict[str, Any]) -> list[PlotPoint]:
    """What the plot draws, one point per model of the report (target, teacher, `--also` runs)."""
    name = metric_name(report)
    points = []
    for model in report["models"]:
        batch_one = next((entry for entry in model["latency"] or [] if entry["batch_size"] == 1), None)
        if batch_one is None:
            raise BrewerError(
                f"the plot shows latency at batch size 1, which was not measured for {model['name']}; "
                "measure it with runs > 0 and 1 among the batch sizes."
            )
        metric = model.get("metric")
        points.append(
            PlotPoint(
                label=model.get("run", model["name"]) + (" (random weights)" if model["random_weights"] else ""),
                role=model["role"],
                parameters_millions=model["parameters"]["total"] / 1e6,
                latency_ms=batch_one["median_ms"],
                metric=metric["value"] if metric and metric["name"] == name else None,
            )
        )
    return points


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """The runs' metric against median latency at batch size 1 and against parameters, one
    labelled point per model; when no model has a metric (checkpoints outside a run), parameters
    against latency."""
    points = plot_points(report)
    name = metric_name(report)
    measured = [point for point in points if point.metric is not None]
    latency_label = "latency at batch size 1 (ms, median)"
    parameters_label = "parameters (millions)"
    if measured:
        missing = [point.label for point in points if point.metric is None]
        title = f"{name} against latency and size, sequence length {report['seq_len']} on {report['device']}"
        panels = [
            ScatterPanel([(point.latency_ms, point.metric, point.label, False) for point in measured], latency_label, name),
            ScatterPanel([(point.parameters_millions, point.metric, point.label, False) for point in measured], parameters_label),
        ]
        return draw_scatter(panels, title + (f" (no {name}: {', '.join(missing)})" if missing else ""), path)
    title = f"sequence length {report['seq_len']} on {report['device']}"
    panels = [
        ScatterPanel(
            [(point.parameters_millions, point.latency_ms, point.label, False) for point in points],
            parameters_label,
            latency_label,
        )
    ]
    return draw_scatter(panels, title, path)


@dataclass(frozen=True)
class ScatterPanel:
    """One panel of a plot: labelled points (x, y, label, drawn as a square: a teacher) and its axes."""

    points: list[tuple[float, float, str, bool]]
    x_label: str
    y_label: str | None = None


def draw_scatter(panels: list[ScatterPanel], title: str, path: str | Path) -> Path:
    """Side-by-side labelled scatter panels sharing the y axis, written to `path` (PNG, SVG, … by
    its suffix). The one drawing routine of size-report and compare."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise BrewerError(
            f"--plot {path}: the plot needs matplotlib, which is not installed; install it with "
            "pip install 'brewer[plot]' (or pip install matplotlib), or leave out --plot"
        ) from error
    # Figure + Agg canvas instead of pyplot: no global backend state, no display needed.
    figure = Figure(figsize=(5.5 * len(panels) + 1, 4.8))
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for axes, panel in zip(axes_list, panels):
        for x, y, label, square in panel.points:
            axes.scatter([x], [y], marker="s" if square else "o")
            axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        axes.set_xlabel(panel.x_label)
        if panel.y_label is not None:
            axes.set_ylabel(panel.y_label)
        # The x axis starts at zero so that distances read as ratios; room is left for the labels.
        axes.set_xlim(0, max(point[0] for point in panel.points) * 1.3)
        axes.grid(True, alpha=0.3)
    figure.suptitle(title)
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, bbox_inches="tight")
    except (ValueError, OSError) as error:
        raise BrewerError(f"--plot {output}: could not write the plot: {error}") from error
    return output
