"""What a finished run reports: summary.json (metrics, sizes, steps, time, memory, the teacher
cache's figures, and what each kind of distillation adds), the staged run's summary, and the tables
printed for a run, a staged run and `brewer eval`."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as distributed
from rich.table import Table

from brewer_cli.families import parameter_count
from brewer_cli.recipe import Recipe, stage_directory
from brewer_cli.run import Run
from brewer_cli.size_report import summary_figures


def run_summary(run: Run, result: dict[str, Any], teacher_metrics: dict[str, Any] | None, device: Any) -> dict[str, Any]:
    """summary.json of one run; `result` is what the loop returns."""
    distiller = run.distiller
    metric = run.task.primary_metric
    student_metrics = result["student_metrics"] or {}
    student = {
        "metric": student_metrics.get(metric),
        "metrics": student_metrics,
        "parameters": parameter_count(run.student.model),
        "checkpoint": str(run.run_dir / "final"),
    }
    extraction = run.student.extraction
    if extraction is not None:
        # An extracted student's starting point is part of the result: which teacher layers,
        # channels and heads it began from (the same content `brewer extract` writes).
        student["extraction"] = {"kept": extraction.kept, "importance": extraction.importance_summary}
    summary: dict[str, Any] = {"name": run.recipe.name, "kind": run.recipe.distillation.kind, "metric": metric}
    if run.teacher is None:
        summary["model"] = student
    else:
        teacher_value = (teacher_metrics or {}).get(metric)
        summary["teacher"] = {
            "metric": teacher_value,
            "metrics": teacher_metrics,
            "parameters": parameter_count(run.teacher.model),
            "checkpoint": run.teacher.source,
        }
        summary["student"] = student
        summary["student_to_teacher"] = (
            student["metric"] / teacher_value if teacher_value and student["metric"] is not None else None
        )
        summary["parameters_ratio"] = student["parameters"] / summary["teacher"]["parameters"]
    summary["size"] = _size_figures(run)
    if run.data.extra.get("summary"):
        # What the task found while reading the data (e.g. the NER tagging scheme and its conversion).
        summary["data"] = run.data.extra["summary"]
    summary.update(
        {
            "best": result["best"],
            "steps": result["steps"],
            # training.on_nan: skip_batch — optimizer steps not taken because of non-finite values.
            "skipped_batches": result["skipped_batches"],
            "wall_time_s": round(result["wall_time_s"], 2),
            "precision": result["precision"],
            "processes": result["processes"],
            "peak_memory_bytes": _peak_memory(device),
        }
    )
    if distiller.compiled is not None:
        summary["compile"] = distiller.compiled
    if distiller.teacher_cache is not None:
        summary["teacher_cache"] = _teacher_cache_report(distiller.teacher_cache, device)
    distiller.update_summary(summary, teacher_metrics)
    return summary


def _size_figures(run: Run) -> dict[str, Any]:
    """The size report's cheap figures (architecture, parameters by part, FLOPs at the run's
    max_length) for each model, so a summary says what the student saves."""
    recipe = run.recipe
    # A multi-task recipe has one data section per task: the longest of their lengths.
    length = recipe.data.max_length if recipe.data is not None else max(entry.data.max_length for entry in recipe.tasks.values())
    figures = {"seq_len": length}
    models = [("teacher", run.teacher), ("student" if run.teacher else "model", run.student)]
    for role, loaded in models:
        if loaded is not None:
            figures[role] = summary_figures(loaded.model, seq_len=min(length, loaded.model.config.max_position_embeddings))
    if run.teacher is not None:
        teacher_flops = (figures["teacher"].get("flops") or {}).get("total")
        student_flops = (figures["student"].get("flops") or {}).get("total")
        if teacher_flops and student_flops:
            figures["flops_fewer_by"] = teacher_flops / student_flops
    return figures


def _peak_memory(device: Any) -> dict[str, int]:
    """Peak resident memory of the process (ru_maxrss: KiB on Linux, bytes on macOS) and, on a
    GPU, the most CUDA memory tensors held; with several processes, the largest process's (each
    holds its own models, data and batches). Called on every process: the maximum is a collective."""
    peak = {"host_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available():
        peak["cuda_allocated"] = int(torch.cuda.max_memory_allocated())
    return dict(zip(peak, _across_processes(device, list(peak.values()), "max")))


def _teacher_cache_report(cache: Any, device: Any) -> dict[str, Any]:
    """The cache's mode and size, and how often it answered, summed over the processes."""
    report = cache.report()
    counted = ["hits", "misses", "teacher_forwards", "teacher_forwards_skipped"]
    report.update(zip(counted, _across_processes(device, [report[name] for name in counted], "sum")))
    return report


def _across_processes(device: Any, values: list[int], operation: str) -> list[int]:
    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    distributed.all_reduce(tensor, op=distributed.ReduceOp.MAX if operation == "max" else distributed.ReduceOp.SUM)
    return [int(value) for value in tensor.tolist()]


def print_summary(summary: dict[str, Any], console: Any, run: Run) -> None:
    metric = summary["metric"]
    table = Table(title=f"{summary['name']} ({summary['kind']}, {summary['steps']} steps, {summary['wall_time_s']:.0f} s)")
    table.add_column("model")
    table.add_column("parameters", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("of teacher", justify="right")

    def row(label: str, entry: dict[str, Any], share: float | None = None) -> None:
        value = entry["metric"]
        table.add_row(
            label, f"{entry['parameters']:,}", "" if value is None else f"{value:.4f}", "" if share is None else f"{share:.1%}"
        )

    # Several teachers (multi_teacher): each, then their ensemble as "teacher".
    for index, entry in enumerate(summary.get("teachers", [])):
        row(f"teacher {index} (weight {entry['weight']:g})", entry)
    for role in ("teacher", "student", "model"):
        if role in summary:
            label = role
            if role == "teacher" and "teachers" in summary:
                label = "teachers' mean logits"
            elif "tasks" in summary:
                label = f"{role} (mean over tasks)"
            row(label, summary[role], summary.get("student_to_teacher") if role == "student" else None)
    # Several tasks (multi_task): each task's teacher and student, in the task's own metric.
    for name, entry in summary.get("tasks", {}).items():
        row(f"{name}: teacher ({entry['metric']})", entry["teacher"])
        row(f"{name}: student ({entry['metric']})", entry["student"], entry.get("student_to_teacher"))
    console.print(table)
    if summary.get("skipped_batches"):
        console.print(f"skipped {summary['skipped_batches']} batches with non-finite values (training.on_nan: skip_batch)")
    written = (
        "final/<task>/ (a transformers model directory per task)"
        if run.distiller.exports_several_students
        else "final (a transformers model directory)"
    )
    console.print(f"written: {run.run_dir}/{written}, summary.json, metrics.jsonl")


def staged_summary(
    recipe: Recipe, stages: list[tuple[str, Recipe]], summaries: list[dict[str, Any]], parent: Path
) -> dict[str, Any]:
    last = summaries[-1]
    entries = []
    for index, ((label, stage_recipe), summary) in enumerate(zip(stages, summaries), 1):
        entries.append(
            {
                "stage": index,
                "name": label,
                "kind": stage_recipe.distillation.kind,
                "run_dir": str(stage_directory(parent, index)),
                "steps": summary["steps"],
                "wall_time_s": summary["wall_time_s"],
                "student_metric": (summary.get("student") or {}).get("metric"),
            }
        )
    result: dict[str, Any] = {
        "name": recipe.name,
        "kind": "stages",
        "metric": last["metric"],
        "stages": entries,
        "teacher": last.get("teacher"),
        "student": {**last["student"], "checkpoint": str(parent / "final")},
        "student_to_teacher": last.get("student_to_teacher"),
        "parameters_ratio": last.get("parameters_ratio"),
        "steps": sum(entry["steps"] for entry in entries),
        "wall_time_s": round(sum(entry["wall_time_s"] for entry in entries), 2),
    }
    if recipe.data is not None:
        # The augmented file when `data.augment` made one.
        result["train_data"] = recipe.data.train.path or recipe.data.train.hub
    return result


def print_stages(summary: dict[str, Any], console: Any) -> None:
    metric = summary["metric"]
    table = Table(
        title=f"{summary['name']} ({len(summary['stages'])} stages, {summary['steps']} steps, {summary['wall_time_s']:.0f} s)"
    )
    for column, justify in (("stage", "left"), ("kind", "left"), ("steps", "right"), (f"student {metric}", "right")):
        table.add_column(column, justify=justify)
    for entry in summary["stages"]:
        value = entry["student_metric"]
        table.add_row(
            f"{entry['stage']}: {entry['name']}", entry["kind"], str(entry["steps"]), "" if value is None else f"{value:.4f}"
        )
    console.print(table)
    teacher = (summary.get("teacher") or {}).get("metric")
    if teacher is not None:
        console.print(
            f"teacher {metric}: {teacher:.4f}; final student: {summary['student']['metric']:.4f} "
            f"({summary['student_to_teacher']:.1%} of the teacher)"
        )
    console.print(f"written: {summary['student']['checkpoint']} (→ the last stage's final/), summary.json")


def print_eval(report: dict[str, Any], console: Any, output: Path) -> None:
    table = Table(title=f"evaluation ({report['examples']} examples)")
    names = list(report["model"]["metrics"])
    table.add_column("model")
    table.add_column("parameters", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for role in ("teacher", "model"):
        if role in report:
            entry = report[role]
            table.add_row(
                f"{role} ({entry['checkpoint']})", f"{entry['parameters']:,}", *(_format(entry["metrics"].get(n)) for n in names)
            )
    console.print(table)
    if report.get("model_to_teacher") is not None:
        console.print(f"model / teacher {report['metric']}: {report['model_to_teacher']:.1%}")
    console.print(f"written: {output}")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
