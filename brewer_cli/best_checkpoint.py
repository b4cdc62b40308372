"""The best checkpoint, as Trainer keeps it: the eval metric that picks it (`training.metric_for_best`,
by default the task's primary metric) and which way is better, reading that metric out of an
evaluation's (possibly nested) metrics, and the copy of best/ into final/ (`training.load_best_at_end`)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.checkpoints import guarded_write
from brewer_cli.errors import RecipeError
from brewer_cli.recipe.base import did_you_mean
from brewer_cli.run import Run

# A metric whose name holds one of these is better when lower (unless it is the task's primary
# metric, whose direction the task declares with `greater_is_better`).
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae", "error")


def flat_metrics(metrics: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The numbers among an evaluation's metrics by dotted name: a multi-task run's
    `{"sentiment": {"accuracy": …}}` gives `sentiment.accuracy`."""
    flat: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flat_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


@dataclass(frozen=True)
class BestMetric:
    """The metric that picks the best checkpoint, and which way is better."""

    name: str
    greater_is_better: bool
    primary: str  # the task's primary metric, named in messages
    source: str  # the recipe file, named in messages

    @classmethod
    def of(cls, run: Run) -> BestMetric:
        task = run.task
        chosen = run.recipe.training.metric_for_best
        name = chosen or task.primary_metric
        if name == task.primary_metric:
            greater = task.greater_is_better
        elif task.measured_by_distillation_loss:
            # Every metric of a task without labels is a loss (general distillation).
            greater = False
        else:
            greater = not any(word in name.lower() for word in LOWER_IS_BETTER)
        source = str(run.recipe.path or "the recipe")
        if chosen is not None and run.data.eval is None:
            raise RecipeError(
                f"{source}: training.metric_for_best: {chosen!r} picks the best checkpoint by an evaluation, and "
                f"the recipe has no eval split — add data.eval, or remove training.metric_for_best"
            )
        return cls(name, greater, task.primary_metric, source)

    def value(self, metrics: dict[str, Any], whose: str = "the student's evaluation") -> float | None:
        """This metric's value in `metrics`; a name the evaluation does not report is a recipe error
        that lists the ones it does."""
        flat = flat_metrics(metrics)
        if self.name in flat:
            return flat[self.name]
        if self.name in (metrics or {}):
            return None  # reported without a value (e.g. a multi-task mean over no task)
        reported = list(flat)
        raise RecipeError(
            f"{self.source}: training.metric_for_best: {self.name!r} is not a metric {whose} "
            f"reports{did_you_mean(self.name, reported)} — it reports: {', '.join(reported)}; name one of them, or "
            f"remove training.metric_for_best to use the task's primary metric ({self.primary})"
        )

    def better(self, value: float | None, best: float | None) -> bool:
        """Whether `value` beats the best so far (a missing or non-finite value never does)."""
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best


def metrics_at(history: list[dict[str, Any]], step: int | None) -> dict[str, Any] | None:
    """The metrics of the evaluation at `step`, from the loop's history (kept in checkpoints)."""
    for entry in reversed(history):
        if entry.get("step") == step:
            return {name: value for name, value in entry.items() if name != "step"}
    return None


def copy_to_final(best: Path, final: Path, run_dir: Path) -> None:
    """final/ as a copy of best/ (`load_best_at_end`): written beside it and renamed into place, a
    failed write (full disk) removed, as every export of a run."""
    temporary = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    size = sum(path.stat().st_size for path in best.rglob("*") if path.is_file())

    def cleanup() -> None:
        shutil.rmtree(temporary, ignore_errors=True)

    with guarded_write(final, size, cleanup, run_dir):
        cleanup()
        shutil.copytree(best, temporary)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        temporary.rename(final)
        shutil.rmtree(old, ignore_errors=True)
