"""The commands' library functions: train a teacher, distill, write the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from brewer_cli.build import Run, build_run, plan_lines, teacher_missing, teacher_run_parent, teacher_training_recipe
from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.models import parameter_count
from brewer_cli.recipe import Recipe, resolved_mapping


def distill(recipe: Recipe, output_dir: str | Path = "runs", resume: bool = False, dry_run: bool = False,
            console: Any = None) -> dict[str, Any] | None:
    """`brewer distill` and, for kind `trainer`, `brewer train-teacher`."""
    console = console or _console()
    if recipe.stages is not None or (recipe.data is not None and recipe.data.augment is not None):
        from brewer_cli.stages import prepare_and_distill

        # Augmentation first, then each stage as a run of its own (each comes back here).
        return prepare_and_distill(recipe, output_dir, resume, dry_run, console)
    teacher_override = None
    teacher_overrides = None
    if recipe.distillation.kind in ("multi_teacher", "multi_task"):
        from brewer_cli.teacher_slots import train_missing_teachers

        teacher_overrides = train_missing_teachers(recipe, resume, dry_run, console)
    elif recipe.distillation.kind != "trainer" and teacher_missing(recipe):
        if recipe.teacher.train is None:
            raise ModelError(
                f"{recipe.path}: teacher.checkpoint: {recipe.teacher.checkpoint!r} does not exist and the recipe has no "
                f"`teacher.train` section — train it first with `brewer train-teacher`, add `teacher.train`, or fix the path"
            )
        if recipe.distillation.kind == "general":
            from brewer_cli.build import check_names
            from brewer_cli.matches import validate_before_loading

            # A bad match should fail now, not after the teacher has been trained.
            check_names(recipe)
            validate_before_loading(recipe)
        if recipe.student is not None and recipe.student.init is not None:
            from brewer_cli.build import extraction_plan

            # Likewise a malformed student.init.extract; sizes against the teacher wait for its weights.
            extraction_plan(recipe)
        teacher_recipe = teacher_training_recipe(recipe)
        if dry_run:
            console.print(f"[bold]teacher {recipe.teacher.checkpoint} is missing: it will be trained first[/bold]")
            teacher_run = build_run(teacher_recipe, teacher_run_parent(recipe))
            _print_plan(teacher_run, console)
            teacher_override = teacher_run.student
            teacher_override.role = "teacher"
            teacher_override.source += " (untrained in this plan)"
        else:
            console.print(f"[bold]teacher {recipe.teacher.checkpoint} is missing: training it first[/bold]")
            distill(teacher_recipe, teacher_run_parent(recipe), resume=resume, console=console)
    run = build_run(recipe, output_dir, teacher_override=teacher_override, teacher_overrides=teacher_overrides)
    if dry_run:
        _print_plan(run, console)
        return None
    return execute(run, resume, console)


def train_teacher(recipe: Recipe, output_dir: str | Path = "runs", resume: bool = False, dry_run: bool = False,
                  console: Any = None) -> dict[str, Any] | None:
    """`brewer train-teacher`: a `trainer` recipe, or a distillation recipe's `teacher.train`."""
    if recipe.distillation.kind == "trainer":
        return distill(recipe, output_dir, resume, dry_run, console)
    if recipe.distillation.kind in ("multi_teacher", "multi_task"):
        from brewer_cli.teacher_slots import train_teachers

        return {"teachers": train_teachers(recipe, resume, dry_run, console or _console())}
    if recipe.teacher is None or recipe.teacher.train is None:
        raise BrewerError(
            f"{recipe.path}: teacher.train: this recipe does not say how to train its teacher — give a recipe with "
            f"`distillation: {{kind: trainer}}` and `model:`, or add `teacher.train: {{model: …, training: …}}`"
        )
    return distill(teacher_training_recipe(recipe), teacher_run_parent(recipe), resume, dry_run, console)


def extract(recipe: Recipe, output: str | Path | None = None, console: Any = None) -> Path:
    """`brewer extract`: cut the student out of the teacher and write it, to inspect before distilling."""
    from brewer_cli.extract import describe
    from brewer_cli.models import save_model_dir

    console = console or _console()
    if recipe.student is None or recipe.student.init is None:
        raise BrewerError(f"{recipe.path}: student.init.extract: this recipe does not extract its student — add "
                          f"`student: {{init: {{extract: {{layers: …, hidden: …}}}}}}`")
    if teacher_missing(recipe):
        raise ModelError(f"{recipe.path}: teacher.checkpoint: {recipe.teacher.checkpoint!r} does not exist — train it "
                         f"first with `brewer train-teacher {recipe.path}`")
    target = Path(output) if output is not None else Path("runs") / f"{recipe.name}-extracted"
    # Checked before the (possibly long) importance scoring; a file in the way would otherwise
    # fail inside save_pretrained with a traceback.
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BrewerError(f"{target}: already exists — choose another --output")
    run = build_run(recipe, "runs")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model_dir(run.student.model, run.student.tokenizer, target)
    extraction = run.student.extraction
    (target / "extraction.json").write_text(json.dumps(
        {"kept": extraction.kept, "importance": extraction.importance_summary}, indent=2, default=str))
    console.print(describe(extraction))
    console.print(f"written: {target} (a transformers model directory) and {target / 'extraction.json'}")
    return target


def execute(run: Run, resume: bool, console: Any) -> dict[str, Any]:
    from accelerate import PartialState

    from brewer_cli.distillers import TrainingLoop

    import torch

    # Without CUDA, Accelerate only joins a multi-process launch (gloo) when told it runs on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    _prepare_run_dir(run, resume, state.is_main_process)
    state.wait_for_everyone()
    distiller = run.distiller_class(run)
    # The distiller knows its teachers: one, several (and their ensemble), or one per task.
    teacher_metrics = distiller.evaluate_teachers(state.device)
    if teacher_metrics is not None and state.is_main_process:
        console.print(f"teacher {run.task.primary_metric}: {teacher_metrics[run.task.primary_metric]:.4f}")
    loop = TrainingLoop(run, distiller, resume=resume, console=console)
    result = loop.fit()
    summary = _summary(run, result, teacher_metrics, loop)
    if state.is_main_process:
        _write_json(run.run_dir / "summary.json", summary)
        _print_summary(summary, console, run)
    return summary


def _prepare_run_dir(run: Run, resume: bool, main: bool) -> None:
    """Every process checks (they all read the same directory, so they agree): a refusal raised on
    the main process alone would leave the others waiting for it at the next barrier. Only the
    main process writes."""
    run_dir = run.run_dir
    started = (run_dir / "checkpoints").exists() or (run_dir / "summary.json").exists()
    if started and not resume:
        complete = (run_dir / "summary.json").exists()
        raise BrewerError(
            f"{run_dir}: the run directory already exists{' and holds a finished run' if complete else ''} — "
            f"continue it with --resume, choose another name with --set name=…, or another --output-dir; "
            f"brewer never overwrites checkpoints"
        )
    if resume and not (run_dir / "checkpoints").exists():
        raise BrewerError(f"{run_dir}: --resume: nothing to resume (no checkpoints/) — run without --resume")
    if not main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        # A start that failed before its first checkpoint left nothing worth keeping but its log.
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    # A finished run is recognized by summary.json, written last; a resumed run removes it first.
    if (run_dir / "summary.json").exists():
        (run_dir / "summary.json").unlink()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved_mapping(run.recipe), sort_keys=False))


def _summary(run: Run, result: dict[str, Any], teacher_metrics: dict[str, Any] | None, loop: Any) -> dict[str, Any]:
    import torch

    metric = run.task.primary_metric
    student_metrics = result["student_metrics"] or {}
    student = {"metric": student_metrics.get(metric), "metrics": student_metrics,
               "parameters": parameter_count(run.student.model), "checkpoint": str(run.run_dir / "final")}
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
        summary["teacher"] = {"metric": teacher_value, "metrics": teacher_metrics, "parameters": parameter_count(run.teacher.model),
                              "checkpoint": run.teacher.source}
        summary["student"] = student
        summary["student_to_teacher"] = (
            student["metric"] / teacher_value if teacher_value and student["metric"] is not None else None
        )
        summary["parameters_ratio"] = student["parameters"] / summary["teacher"]["parameters"]
    summary["size"] = _size_figures(run)
    summary.update({
        "best": result["best"], "steps": result["steps"], "wall_time_s": round(result["wall_time_s"], 2),
        "precision": result["precision"], "processes": result["processes"],
        "peak_memory_bytes": _peak_memory(torch, loop.accelerator.device),
    })
    if loop.distiller.compiled is not None:
        summary["compile"] = loop.distiller.compiled
    if loop.distiller.teacher_cache is not None:
        summary["teacher_cache"] = _teacher_cache_report(loop.distiller.teacher_cache, torch, loop.accelerator.device)
    loop.distiller.update_summary(summary, teacher_metrics)
    return summary


def _size_figures(run: Run) -> dict[str, Any]:
    """The size report's cheap figures (architecture, parameters by part, FLOPs at the run's
    max_length) for each model, so a summary says what the student saves."""
    from brewer_cli.size_report import summary_figures

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


def _peak_memory(torch: Any, device: Any) -> dict[str, int]:
    """Peak resident memory of the process (ru_maxrss: KiB on Linux, bytes on macOS) and, on a
    GPU, the most CUDA memory tensors held; with several processes, the largest process's (each
    holds its own models, data and batches). Called on every process: the maximum is a collective."""
    import resource
    import sys

    peak = {"host_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    if torch.cuda.is_available():
        peak["cuda_allocated"] = int(torch.cuda.max_memory_allocated())
    return dict(zip(peak, _across_processes(torch, device, list(peak.values()), "max")))


def _teacher_cache_report(cache: Any, torch: Any, device: Any) -> dict[str, Any]:
    """The cache's mode and size, and how often it answered, summed over the processes."""
    report = cache.report()
    counted = ["hits", "misses", "teacher_forwards", "teacher_forwards_skipped"]
    report.update(zip(counted, _across_processes(torch, device, [report[name] for name in counted], "sum")))
    return report


def _across_processes(torch: Any, device: Any, values: list[int], operation: str) -> list[int]:
    import torch.distributed as distributed

    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    distributed.all_reduce(tensor, op=distributed.ReduceOp.MAX if operation == "max" else distributed.ReduceOp.SUM)
    return [int(value) for value in tensor.tolist()]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def _print_plan(run: Run, console: Any) -> None:
    console.print(f"[bold]plan for {run.recipe.name}[/bold]")
    for line in plan_lines(run):
        console.print(f"  {line}")


def _print_summary(summary: dict[str, Any], console: Any, run: Run) -> None:
    from rich.table import Table

    metric = summary["metric"]
    table = Table(title=f"{summary['name']} ({summary['kind']}, {summary['steps']} steps, {summary['wall_time_s']:.0f} s)")
    table.add_column("model")
    table.add_column("parameters", justify="right")
    table.add_column(metric, justify="right")
    table.add_column("of teacher", justify="right")
    def row(label: str, entry: dict[str, Any], share: float | None = None) -> None:
        value = entry["metric"]
        table.add_row(label, f"{entry['parameters']:,}", "" if value is None else f"{value:.4f}",
                      "" if share is None else f"{share:.1%}")

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
    written = "final/<task>/ (a transformers model directory per task)" if "tasks" in summary else "final (a transformers model directory)"
    console.print(f"written: {run.run_dir}/{written}, summary.json, metrics.jsonl")


def _console() -> Any:
    from rich.console import Console

    return Console()
