"""The report: figures of the target (and of its teacher, `against`, and any `also` runs), the
runs' metrics, their ratios, the notes that define them, and `run`, which prints it in the chosen
format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console

from brewer_cli.errors import BrewerError
from brewer_cli.size_report.figures import model_figures
from brewer_cli.size_report.latency import DEFAULT_BATCH_SIZES, WARMUP_RUNS, check_device, measure_latencies, recorded_threads
from brewer_cli.size_report.rendering import plot, render_table, to_json, to_markdown
from brewer_cli.size_report.runs import choose_seq_len, run_metric, run_name, teacher_metric
from brewer_cli.size_report.targets import SizeTarget, resolve_target

# Each model's timed passes are spread over this many rounds (fewer when there are fewer passes).
LATENCY_ROUNDS = 5


def _target_figures(size_target: SizeTarget, role: str, model: Any, seq_len: int, timed: bool) -> dict[str, Any]:
    # Counts and FLOPs need only the module tree; latency is measured for all targets together.
    figures = model_figures(model, seq_len=seq_len, runs=0, weight_files=size_target.weight_files())
    return {
        "name": size_target.target,
        "run": run_name(size_target),
        "role": role,
        "source": size_target.kind,
        "location": size_target.location,
        "config_only": not size_target.has_weights,
        "random_weights": not size_target.has_weights and timed,
        **figures,
    }


def compare(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Teacher ÷ student for sizes and costs (bigger = better student); student ÷ teacher for speed."""
    latency = None
    if student["latency"] and teacher["latency"]:
        teacher_by_batch = {entry["batch_size"]: entry for entry in teacher["latency"]}
        latency = []
        for entry in student["latency"]:
            other = teacher_by_batch.get(entry["batch_size"])
            if other is None:
                continue
            latency.append(
                {
                    "batch_size": entry["batch_size"],
                    "faster_by": _ratio(other["median_ms"], entry["median_ms"]),
                    "faster_by_p90": _ratio(other["p90_ms"], entry["p90_ms"]),
                    "throughput_ratio": _ratio(entry["examples_per_second"], other["examples_per_second"]),
                }
            )
    student_metric, teacher_metric_found = student.get("metric"), teacher.get("metric")
    same_metric = student_metric and teacher_metric_found and student_metric["name"] == teacher_metric_found["name"]
    return {
        # The student's metric as a share of the teacher's (bigger = better student).
        "metric_of_teacher": _ratio(student_metric["value"], teacher_metric_found["value"]) if same_metric else None,
        "parameters_smaller_by": _ratio(teacher["parameters"]["total"], student["parameters"]["total"]),
        "excluding_output_layers_smaller_by": _ratio(
            teacher["parameters"]["excluding_output_layers"], student["parameters"]["excluding_output_layers"]
        ),
        "disk_smaller_by": _ratio(teacher["disk_bytes"], student["disk_bytes"]),
        "flops_fewer_by": _ratio((teacher["flops"] or {}).get("total"), (student["flops"] or {}).get("total")),
        "latency": latency,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _notes(report: dict[str, Any]) -> list[str]:
    notes = [
        f"Sequence length {report['seq_len']}: {report['seq_len_source']}.",
        "Excluding output layers = embeddings + encoder (no pooler, no task head), the figure TextBrewer's Table 3 reports.",
        f"FLOPs per example at {report['seq_len']} tokens = 2 × multiply-adds of every matrix "
        "product (Q/K/V/O, QKᵀ, attention·V, feed-forward, factorized-embedding projection, head); "
        "embedding lookups, softmax, LayerNorm, activations, biases and residual additions are "
        "not counted.",
    ]
    if report["runs"] > 0:
        threads = ""
        if report["device"] == "cpu":
            counts = recorded_threads(entry for model in report["models"] for entry in model["latency"] or ())
            threads = f", {counts} CPU threads"
        together = ""
        if len(report["models"]) > 1:
            together = f", the models timed in turn in {min(LATENCY_ROUNDS, report['runs'])} rounds"
        notes.append(
            f"Latency: median and p90 ms per batch over {report['runs']} runs after {WARMUP_RUNS} warm-up runs{together}, "
            f"random token ids of length {report['seq_len']} without padding, torch.inference_mode, eval mode, "
            f"on {report['device']}{threads}."
        )
    for model in report["models"]:
        if model["random_weights"]:
            notes.append(
                f"{model['name']} is a config without weights: it was timed with random weights "
                "(the timing does not depend on the values)."
            )
        elif model["config_only"]:
            notes.append(f"{model['name']} is a config without weights: no size on disk.")
        if model["parameters"]["shared_counted_once"]:
            notes.append(
                f"{model['name']}: {model['parameters']['shared_counted_once']:,} tied or shared "
                "parameter values are counted once."
            )
        if model["metric"] is not None:
            metric = model["metric"]
            notes.append(f"{model['name']}: {metric['name']} {metric['value']:.4f} from {metric['source']}.")
    return notes


def build_report(
    target: str,
    against: str | None = None,
    seq_len: int | None = None,
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
    also: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as a JSON-ready dict, without printing anything. `seq_len` None: the run's
    `data.max_length`, capped by the models' positions (runs.choose_seq_len)."""
    if seq_len is not None and seq_len < 1:
        raise BrewerError(f"--seq-len must be at least 1, got {seq_len}.")
    if runs < 0:
        raise BrewerError(f"--runs must be 0 (skip latency) or more, got {runs}.")
    batch_sizes = tuple(int(size) for size in batch_sizes)
    if runs > 0 and not batch_sizes:
        raise BrewerError("latency needs at least one batch size; pass --runs 0 to skip latency.")
    if any(size < 1 for size in batch_sizes):
        raise BrewerError(f"batch sizes must be positive, got {list(batch_sizes)}.")
    check_device(device)
    # Resolve every target before building any, so a misspelled teacher fails before any loading.
    targets = [(resolve_target(target), "target")]
    if against is not None:
        targets.append((resolve_target(against), "against"))
    targets += [(resolve_target(run), "also") for run in also]
    # Module trees on the meta device: their position tables, without memory or weights.
    seq_len, seq_len_source = choose_seq_len(
        seq_len, [size_target for size_target, _ in targets], [size_target.build("meta") for size_target, _ in targets]
    )
    # Weights are read only to time the models.
    built = [size_target.build("cpu" if runs > 0 else "meta") for size_target, _ in targets]
    models = [
        _target_figures(size_target, role, model, seq_len, timed=runs > 0) for (size_target, role), model in zip(targets, built)
    ]
    if runs > 0:
        # Timed together, round by round, so that the speed-up divides figures taken over the same
        # moments rather than over two spells of a machine whose speed drifts.
        timed = measure_latencies(
            [(model, seq_len) for model in built], runs=runs, batch_sizes=batch_sizes, device=device, rounds=LATENCY_ROUNDS
        )
        for figures, latency in zip(models, timed):
            figures["latency"] = latency
    del built
    student = targets[0][0]
    for model, (size_target, role) in zip(models, targets):
        model["metric"] = teacher_metric(student, size_target) if role == "against" else run_metric(size_target)
    report: dict[str, Any] = {
        "seq_len": seq_len,
        "seq_len_source": seq_len_source,
        "runs": runs,
        "batch_sizes": list(batch_sizes) if runs > 0 else [],
        "device": device,
        "models": models,
        "comparison": compare(models[0], models[1]) if against is not None else None,
    }
    report["notes"] = _notes(report)
    return report


def run(
    target: str,
    against: str | None = None,
    seq_len: int | None = None,
    runs: int = 10,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
    as_json: bool = False,
    markdown: bool = False,
    plot_path: str | None = None,
    console=None,
    also: Sequence[str] = (),
) -> dict:
    """Build the report for `target` (and `against`, its teacher, and the `also` runs), print it
    and return it."""
    if as_json and markdown:
        raise BrewerError("choose one output format: --json or --markdown, not both.")
    if plot_path is not None and runs == 0:
        raise BrewerError("the plot shows latency at batch size 1, which --runs 0 skips; use --runs 1 or more.")
    if plot_path is not None and 1 not in batch_sizes:
        raise BrewerError("the plot shows latency at batch size 1; include 1 among the batch sizes.")
    if console is None:
        console = Console()
    report = build_report(target, against, seq_len=seq_len, runs=runs, batch_sizes=batch_sizes, device=device, also=also)
    if as_json:
        _print_plain(console, to_json(report))
    elif markdown:
        _print_plain(console, to_markdown(report))
    else:
        render_table(report, console)
    if plot_path is not None:
        written = plot(report, plot_path)
        if not as_json:
            console.print(f"plot written to {written}", markup=False, highlight=False)
    return report


def _print_plain(console, text: str) -> None:
    # Machine-readable output: no markup, highlighting, emoji codes or hard wrapping.
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
