"""What a finished run reports: summary.json (metrics, sizes, steps, time, memory, the teacher
cache's figures, and what each kind of distillation adds), the staged run's summary, and the tables
printed for a run, a staged run and `brewer eval`."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as distributed
from rich.table import Table
from rich.text import Text

from brewer_cli.best_checkpoint import flat_metrics
from brewer_cli.families import parameter_count
from brewer_cli.models import load_pretrained
from brewer_cli.recipe import Recipe, stage_directory
from brewer_cli.run import Run
from brewer_cli.sharding import is_sharded
from brewer_cli.size_report import summary_figures


def run_summary(
    run: Run, result: dict[str, Any], teacher_metrics: dict[str, Any] | None, device: Any, started: float | None = None
) -> dict[str, Any]:
    """summary.json of one run; `result` is what the loop returns, `started` the time.monotonic()
    when the command began this run (building its models), for `total_time_s`.

    `metric` is the one that picks the best checkpoint (training.metric_for_best, by default the
    task's primary metric); with load_best_at_end the student's figures are the best checkpoint's,
    which final/ holds, and `last` keeps the last step's."""
    distiller = run.distiller
    metric = result.get("metric") or run.task.primary_metric
    student_metrics = result["student_metrics"] or {}
    student = {
        "metric": flat_metrics(student_metrics).get(metric),
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
        # A student distilled from a teacher store (teacher.store) has no teacher model here: its
        # distiller fills `teacher` in (Distiller.update_summary).
        summary[run.role] = student
    else:
        teacher_value = flat_metrics(teacher_metrics).get(metric)
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
    if run.task.generates_text:
        # Greedy completions of the same fixed eval prompts, by the student and by the teacher.
        student["generations"] = _student_generations(run, result)
        if run.teacher is not None and "teacher" in summary:
            summary["teacher"]["generations"] = _generations(run, run.teacher.model, run.teacher.tokenizer)
    summary["size"] = _size_figures(run)
    if run.data.extra.get("summary"):
        # What the task found while reading the data (e.g. the NER tagging scheme and its conversion).
        summary["data"] = run.data.extra["summary"]
    summary.update(
        {
            # best: {step, metric, value, metrics}; last: {step, metrics}; final: {step, is_best}.
            "best": result["best"],
            "last": result["last"],
            "final": result["final"],
            "steps": result["steps"],
            # training.on_nan: skip_batch — optimizer steps not taken because of non-finite values.
            "skipped_batches": result["skipped_batches"],
            # The loop alone (steps, evaluations, checkpoints) …
            "train_time_s": round(result["train_time_s"], 2),
            # … and the whole command for this run: models built (extraction), teacher evaluated,
            # data tokenized, the loop, the exports and these figures.
            "total_time_s": round(time.monotonic() - started, 2) if started is not None else None,
            # The loop's time under its former name, which the benchmark scripts and stage summaries read.
            "wall_time_s": round(result["train_time_s"], 2),
            # Training steps only (evaluations and checkpoint writes left out), over all processes.
            "throughput": result["throughput"],
            "threads": result["threads"],
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
    if metric != run.task.primary_metric and "teacher" in summary and teacher_metrics is not None:
        # A kind's summary may fill the teacher in by the primary metric: the ratio is the chosen one's.
        teacher_value = flat_metrics(teacher_metrics).get(metric)
        summary["teacher"]["metric"] = teacher_value
        student_value = summary["student"]["metric"]
        summary["student_to_teacher"] = student_value / teacher_value if teacher_value and student_value is not None else None
    return summary


def _student_generations(run: Run, result: dict[str, Any]) -> list[dict[str, str]]:
    """The generations of final/'s student: the model in memory is the last step's, so when
    load_best_at_end made final/ an earlier (best) checkpoint, that one is loaded to generate.

    A student sharded by FSDP is not generated from in memory: its parameters are shards (DTensors),
    so every forward of generate would be a collective all processes must join in lockstep, with the
    distiller's own parameter group (embeddings, head) gathered outside the distiller's forward.
    final/ holds it whole (the main process wrote it before the loop returned), so the main process
    — the one that writes summary.json — loads it and generates; the other processes generate nothing."""
    sharded = is_sharded(run.distiller)
    if result["final"]["step"] == result["steps"] and not sharded:
        return _generations(run, run.student.model, run.student.tokenizer)
    if sharded and not _is_main_process():
        return []
    device = next(run.student.model.parameters()).device
    final = load_pretrained(run.task.auto_class, str(run.run_dir / "final"), f"{run.run_dir / 'final'}: ").to(device)
    return _generations(run, final, run.student.tokenizer)


def _is_main_process() -> bool:
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


def _generations(run: Run, model: Any, tokenizer: Any) -> list[dict[str, str]]:
    return run.task.generations(model, tokenizer or run.student.tokenizer, run.data)


def _size_figures(run: Run) -> dict[str, Any]:
    """The size report's cheap figures (architecture, parameters by part, FLOPs at the run's
    max_length) for each model, so a summary says what the student saves."""
    recipe = run.recipe
    # A multi-task recipe has one data section per task: the longest of their lengths.
    length = recipe.data.max_length if recipe.data is not None else max(entry.data.max_length for entry in recipe.tasks.values())
    figures = {"seq_len": length}
    models = [("teacher", run.teacher), (run.role, run.student)]
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
    looked_up = report["hits"] + report["misses"]
    report["hit_rate"] = round(report["hits"] / looked_up, 4) if looked_up else None
    return report


def _across_processes(device: Any, values: list[int], operation: str) -> list[int]:
    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    distributed.all_reduce(tensor, op=distributed.ReduceOp.MAX if operation == "max" else distributed.ReduceOp.SUM)
    return [int(value) for value in tensor.tolist()]


def print_summary(summary: dict[str, Any], console: Any, run: Run) -> None:
    metric = summary["metric"]
    final = summary.get("final") or {}
    best = summary.get("best") or {}
    # The table's student is final/'s: the best checkpoint's (by `metric`) unless load_best_at_end is off.
    chosen = f", best {metric} at step {final['step']}" if final.get("is_best") and best.get("step") is not None else ""
    timing = f"train {summary['train_time_s']:.0f} s"
    if summary.get("total_time_s") is not None:
        timing += f" of {summary['total_time_s']:.0f} s"
    table = Table(title=Text(f"{summary['name']} ({summary['kind']}, {summary['steps']} steps{chosen}, {timing})"))
    table.add_column("model")
    table.add_column("parameters", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("of teacher", justify="right")

    def row(label: str, entry: dict[str, Any], share: float | None = None) -> None:
        value = entry["metric"]
        table.add_row(
            Text(label),
            f"{entry['parameters']:,}",
            "" if value is None else f"{value:.4f}",
            "" if share is None else f"{share:.1%}",
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
    last = summary.get("last") or {}
    if final.get("step") is not None and final["step"] != last.get("step"):
        last_value = flat_metrics(last.get("metrics")).get(metric)
        shown = "n/a" if last_value is None else f"{last_value:.4f}"
        console.print(
            f"final/ holds the best checkpoint (step {final['step']} by {metric}); the last step ({last['step']}) had "
            f"{metric} {shown} (training.load_best_at_end: false keeps the last step)",
            markup=False,
        )
    if summary.get("skipped_batches"):
        console.print(f"skipped {summary['skipped_batches']} batches with non-finite values (training.on_nan: skip_batch)")
    written = (
        "final/<task>/ (a transformers model directory per task)"
        if run.distiller.exports_several_students
        else "final (a transformers model directory)"
    )
    console.print(f"written: {run.run_dir}/{written}, summary.json, metrics.jsonl", markup=False)


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
        # A stage finished by an earlier brewer may lack the two: its loop time stands in.
        "train_time_s": round(sum(summary.get("train_time_s", summary["wall_time_s"]) for summary in summaries), 2),
        "total_time_s": round(sum(summary.get("total_time_s") or summary["wall_time_s"] for summary in summaries), 2),
    }
    if recipe.data is not None:
        # The augmented file when `data.augment` made one.
        result["train_data"] = recipe.data.train.path or recipe.data.train.hub
    return result


def print_stages(summary: dict[str, Any], console: Any) -> None:
    metric = summary["metric"]
    table = Table(
        title=Text(
            f"{summary['name']} ({len(summary['stages'])} stages, {summary['steps']} steps, {summary['wall_time_s']:.0f} s)"
        )
    )
    for column, justify in (("stage", "left"), ("kind", "left"), ("steps", "right"), (f"student {metric}", "right")):
        table.add_column(column, justify=justify)
    for entry in summary["stages"]:
        value = entry["student_metric"]
        table.add_row(
            Text(f"{entry['stage']}: {entry['name']}"),
            entry["kind"],
            str(entry["steps"]),
            "" if value is None else f"{value:.4f}",
        )
    console.print(table)
    teacher = (summary.get("teacher") or {}).get("metric")
    if teacher is not None:
        console.print(
            f"teacher {metric}: {teacher:.4f}; final student: {summary['student']['metric']:.4f} "
            f"({summary['student_to_teacher']:.1%} of the teacher)"
        )
    console.print(f"written: {summary['student']['checkpoint']} (→ the last stage's final/), summary.json", markup=False)


def print_eval(report: dict[str, Any], console: Any, output: Path) -> None:
    """`brewer eval`'s table: one row per metric (NER reports one per entity type), one column per
    model, so that it fits 80 columns; names, paths and values are text, never rich markup."""
    roles = [role for role in ("model", "teacher") if role in report]
    metric = report["metric"]
    names = [metric] + [name for name in report["model"]["metrics"] if name != metric]
    table = Table(title=Text(f"evaluation on {report['data']['name']}: {report['examples']:,} examples"))
    table.add_column("metric")
    for role in roles:
        table.add_column(role, justify="right")
    if "teacher" in report:
        table.add_column("model ÷ teacher", justify="right")
    for name in names:
        values = [report[role]["metrics"].get(name) for role in roles]
        cells = [Text(name), *(Text(_format(value)) for value in values)]
        if "teacher" in report:
            model, teacher = values
            share = model / teacher if isinstance(model, float) and isinstance(teacher, float) and teacher else None
            cells.append(Text("" if share is None else f"{share:.1%}"))
        table.add_row(*cells)
    table.add_row("parameters", *(f"{report[role]['parameters']:,}" for role in roles), *([""] if "teacher" in report else []))
    console.print(table)
    for role in roles:
        console.print(Text(f"{role}: {report[role]['given']} ({report[role]['checkpoint']})"))
    source = report["data"]["source"]
    place = source.get("path") or source.get("hub") or source.get("synthetic")
    shown_format = f", {report['data']['format']}" if report["data"].get("format") else ""
    console.print(Text(f"data: {place}{shown_format}"))
    console.print(Text(f"written: {output}"))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
