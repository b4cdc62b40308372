"""Rendering a report: a rich table, JSON, Markdown, and a parameters-against-latency plot
(matplotlib, an optional dependency, is imported only when a plot is asked for)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

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


def _rows(report: dict[str, Any]) -> list[list[str]]:
    """Label, one cell per model and (with a teacher) the ratio cell, for table and markdown."""
    models = report["models"]
    comparison = report["comparison"]
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], ratio: str = "") -> None:
        rows.append([label, *cells] + ([ratio] if comparison else []))

    add("source", [f"{model['source']}: {model['location']}" for model in models])
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
    add("  encoder", [_format_count(count["encoder"]) for count in parameters])
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
    table = Table(title=f"size report (sequence length {report['seq_len']}, {report['device']})")
    for index, header in enumerate(_headers(report)):
        table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
    for row in _rows(report):
        table.add_row(*row)
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


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Parameters (x) against median latency at batch size 1 (y), one labelled point per model."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise BrewerError(
            "the size-report plot needs matplotlib, which is not installed; install it with "
            "pip install 'brewer[plot]' (or pip install matplotlib)."
        ) from error
    points = []
    for model in report["models"]:
        batch_one = next((entry for entry in model["latency"] or [] if entry["batch_size"] == 1), None)
        if batch_one is None:
            raise BrewerError(
                f"the plot shows latency at batch size 1, which was not measured for {model['name']}; "
                "measure it with runs > 0 and 1 among the batch sizes."
            )
        label = model["name"] + (" (random weights)" if model["random_weights"] else "")
        points.append((model["parameters"]["total"] / 1e6, batch_one["median_ms"], label))

    # Figure + Agg canvas instead of pyplot: no global backend state, no display needed.
    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for parameters, latency, label in points:
        axes.scatter([parameters], [latency])
        axes.annotate(label, (parameters, latency), textcoords="offset points", xytext=(6, 6))
    axes.set_xlabel("parameters (millions)")
    axes.set_ylabel("latency at batch size 1 (ms, median)")
    axes.set_title(f"sequence length {report['seq_len']} on {report['device']}")
    # Start both axes at zero so distances read as ratios; leave room for the labels.
    axes.set_xlim(0, max(point[0] for point in points) * 1.3)
    axes.set_ylim(0, max(point[1] for point in points) * 1.3)
    axes.grid(True, alpha=0.3)
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, bbox_inches="tight")
    except (ValueError, OSError) as error:
        raise BrewerError(f"could not write the plot to {output}: {error}") from error
    return output
