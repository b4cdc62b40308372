"""Evaluation: the eval loop shared by training and `brewer eval`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from brewer_cli.errors import BrewerError
from brewer_cli.families import Family
from brewer_cli.recipe import DataSource, Recipe, load_recipe
from brewer_cli.tasks import TASKS, PreparedData, Task


@dataclass
class EvalSetup:
    """What evaluating needs; a training `Run` has the same attributes."""

    recipe: Recipe
    task: Task
    data: PreparedData
    collate: Callable


def evaluate_model(setup: Any, model: Any, family: Family, accelerator: Any = None, output_dir: Path | None = None) -> dict[str, Any]:
    """Metrics of `model` on the setup's eval split. With an Accelerator over several processes,
    each evaluates a shard and the predictions are gathered."""
    data = setup.data.eval
    batch_size = setup.recipe.training.eval_batch_size or setup.recipe.training.batch_size * 2
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=setup.collate)
    distributed = accelerator is not None and accelerator.num_processes > 1
    if distributed:
        loader = accelerator.prepare_data_loader(loader) if hasattr(accelerator, "prepare_data_loader") else accelerator.prepare(loader)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions: list[Any] = []
    indices: list[int] = []
    with torch.inference_mode():
        for batch in loader:
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            features = family.features(model, batch, logits_of=setup.task.logits)
            logits = features.logits
            index = batch["index"]
            if distributed:
                logits, index = _gather(accelerator, logits, index)
            predictions.append(_to_cpu(setup.task.prediction_of(logits)))
            indices.extend(int(i) for i in index.tolist())
    if was_training:
        model.train()
    return setup.task.compute_metrics(predictions, indices, setup.data, output_dir=output_dir)


def _gather(accelerator: Any, logits: Any, index: torch.Tensor) -> tuple[Any, torch.Tensor]:
    def one(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() > 2 or isinstance(logits, tuple):
            # Token-level (B, L, C) and QA span (B, L) logits differ in length between processes'
            # batches; the tasks read only each window's own length back.
            tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=-1e4)
        return accelerator.gather_for_metrics(tensor.contiguous())

    gathered = tuple(one(item) for item in logits) if isinstance(logits, tuple) else one(logits)
    return gathered, accelerator.gather_for_metrics(index)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(item.detach().float().cpu() for item in value)
    return value.detach().float().cpu()


# ============================================================================= brewer eval


def find_run_recipe(target: Path) -> Path | None:
    """The resolved recipe of the run a checkpoint belongs to (final/, best/, checkpoints/step-N/student)."""
    for directory in [target, *target.parents][:4]:
        candidate = directory / "recipe.yaml"
        if candidate.is_file():
            return candidate
    return None


def checkpoint_of(target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    for directory in (target, target / "final", target / "best"):
        if (directory / "tasks.json").is_file():
            # A multi-task run: one model directory per task.
            choices = sorted(str(path.parent) for path in directory.glob("*/config.json"))
            raise BrewerError(f"{target}: a multi-task run holds one model per task — give one of: {', '.join(choices)}")
    for name in ("final", "best"):
        if (target / name / "config.json").is_file():
            return target / name
    raise BrewerError(
        f"{target}: not a run directory (no final/ or best/) nor a checkpoint (no config.json) — give a run "
        f"directory such as runs/<name> or a model directory"
    )


def eval_command(
    target: str, recipe_path: str | None, data_path: str | None, against: str | None, overrides: list[str], console: Any
) -> dict[str, Any]:
    from brewer_cli.models import load_checkpoint, parameter_count

    target_path = Path(target)
    if not target_path.exists():
        raise BrewerError(f"{target}: no such run directory or checkpoint — give runs/<name> or a model directory")
    checkpoint = checkpoint_of(target_path)
    recipe_file = Path(recipe_path) if recipe_path else find_run_recipe(checkpoint)
    if recipe_file is None:
        raise BrewerError(f"{target}: no recipe.yaml found beside this checkpoint — pass --recipe RECIPE so brewer knows the task and data")
    recipe = load_recipe(recipe_file, overrides)
    if recipe.tasks is not None:
        recipe = _one_task(recipe, checkpoint)
    if data_path is not None:
        eval_source = DataSource(path=data_path, format="auto")
        recipe = _with_eval(recipe, eval_source)
    if recipe.data.eval is None:
        raise BrewerError(f"{recipe_file}: data.eval: the recipe has no eval split — give --data FILE")
    task = TASKS.get(recipe.task.kind)(recipe.task)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    results: dict[str, Any] = {}
    models = [("model", str(checkpoint))] + ([("teacher", against)] if against else [])
    for role, location in models:
        location_path = Path(location)
        if role == "teacher" and location_path.exists():
            location = str(checkpoint_of(location_path))
        loaded = load_checkpoint(location, task, None, None, f"--against {location}" if role == "teacher" else str(location), role, shape_head=False)
        if loaded.tokenizer is None:
            raise BrewerError(f"{location}: no tokenizer files in this checkpoint — save the tokenizer with the model")
        label_names = _label_names(loaded.model)
        data = task.prepare(_eval_only(recipe), loaded.tokenizer, label_names)
        setup = EvalSetup(recipe, task, data, task.collate(loaded.tokenizer))
        loaded.model.to(device)
        metrics = evaluate_model(setup, loaded.model, loaded.family, output_dir=Path(location) if Path(location).is_dir() else None)
        results[role] = {"checkpoint": str(location), "parameters": parameter_count(loaded.model), "metrics": metrics}
    primary = task.primary_metric
    # Examples as the user counts them: questions for QA, not the windows they were split into.
    examples = len(data.eval_examples) if data.eval_examples is not None else len(data.eval)
    report: dict[str, Any] = {"metric": primary, **results, "examples": examples}
    if against:
        teacher_value = results["teacher"]["metrics"][primary]
        report["model_to_teacher"] = results["model"]["metrics"][primary] / teacher_value if teacher_value else None
    output = (target_path if target_path.is_dir() else checkpoint) / "eval.json"
    output.write_text(json.dumps(report, indent=2))
    _print_eval(report, console, output)
    return report


def _one_task(recipe: Recipe, checkpoint: Path) -> Recipe:
    """A multi-task recipe's task whose exported model this is (final/<task>/)."""
    from brewer_cli.multi_task import task_recipe

    if checkpoint.name not in recipe.tasks:
        raise BrewerError(
            f"{checkpoint}: {recipe.path} is a multi-task recipe and this directory is not one of its tasks' models "
            f"(final/<task>/ with a task among {', '.join(recipe.tasks)}) — give a task's directory"
        )
    return task_recipe(recipe, checkpoint.name)


def _label_names(model: Any) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] or None


def _with_eval(recipe: Recipe, source: DataSource) -> Recipe:
    data = recipe.data.model_copy(update={"eval": source})
    updated = recipe.model_copy(update={"data": data})
    updated._path = recipe.path
    return updated


def _eval_only(recipe: Recipe) -> Recipe:
    """Evaluation reads only the eval split: the train source is replaced by it."""
    data = recipe.data.model_copy(update={"train": recipe.data.eval})
    updated = recipe.model_copy(update={"data": data})
    updated._path = recipe.path
    return updated


def _print_eval(report: dict[str, Any], console: Any, output: Path) -> None:
    from rich.table import Table

    table = Table(title=f"evaluation ({report['examples']} examples)")
    names = list(report["model"]["metrics"])
    table.add_column("model")
    table.add_column("parameters", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for role in ("teacher", "model"):
        if role in report:
            entry = report[role]
            table.add_row(f"{role} ({entry['checkpoint']})", f"{entry['parameters']:,}", *(_format(entry["metrics"].get(n)) for n in names))
    console.print(table)
    if report.get("model_to_teacher") is not None:
        console.print(f"model / teacher {report['metric']}: {report['model_to_teacher']:.1%}")
    console.print(f"written: {output}")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
