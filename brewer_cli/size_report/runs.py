"""What a run directory adds to a size report: the sequence length its recipe trained at
(`data.max_length`, the default `--seq-len`), the metric its summary.json reports (shown beside
size and latency, and plotted against them), and the run's name to label it by.

Both files are read as plain YAML / JSON, not validated as a recipe: a finished run is reported on
even when its data files have moved since."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from brewer_cli.size_report.figures import usable_positions
from brewer_cli.size_report.latency import DEFAULT_SEQ_LEN
from brewer_cli.size_report.targets import SizeTarget


def recipe_max_length(run_dir: Path | None) -> int | None:
    """`data.max_length` of the run's recipe.yaml; for a multi-task run the longest of its tasks'."""
    if run_dir is None:
        return None
    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(recipe, dict):
        return None
    sections = [recipe.get("data")] + [
        entry.get("data") for entry in (recipe.get("tasks") or {}).values() if isinstance(entry, dict)
    ]
    lengths = [section.get("max_length") for section in sections if isinstance(section, dict)]
    lengths = [length for length in lengths if isinstance(length, int) and not isinstance(length, bool)]
    return max(lengths) if lengths else None


def choose_seq_len(given: int | None, targets: Sequence[SizeTarget], models: Sequence[nn.Module]) -> tuple[int, str]:
    """The sequence length and where it comes from: `--seq-len`, else the first run's
    `data.max_length` (the target's, then the teacher's, then the others'), else 128 — capped by
    the fewest positions any of the models has (a longer length cannot be run)."""
    if given is not None:
        return given, "--seq-len"
    lengths = [(target, recipe_max_length(target.run_dir)) for target in targets]
    named = [(target, length) for target, length in lengths if length is not None]
    if named:
        target, length = named[0]
        source = f"data.max_length of {target.run_dir / 'recipe.yaml'}"
    else:
        length, source = DEFAULT_SEQ_LEN, f"the default {DEFAULT_SEQ_LEN} (no run's recipe.yaml names data.max_length)"
    limits = [(positions, target) for target, model in zip(targets, models) if (positions := usable_positions(model))]
    if limits:
        positions, target = min(limits, key=lambda item: item[0])
        if positions < length:
            return positions, f"{source}, capped by the {positions} positions of {target.target}"
    return length, source


def run_summary(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_name(target: SizeTarget) -> str:
    """The name a run was given (summary.json's `name`), else its directory's, else the target."""
    summary = run_summary(target.run_dir) or {}
    if isinstance(summary.get("name"), str):
        return summary["name"]
    return target.run_dir.name if target.run_dir is not None else target.target


def run_metric(target: SizeTarget) -> dict[str, Any] | None:
    """The run's headline metric from its summary.json: the student's (or a trainer run's model's)."""
    summary = run_summary(target.run_dir)
    if summary is None:
        return None
    entry = summary.get("student") or summary.get("model") or {}
    return _metric(summary.get("metric"), entry.get("metric"), target.run_dir / "summary.json")


def teacher_metric(student: SizeTarget, teacher: SizeTarget) -> dict[str, Any] | None:
    """The teacher's metric as the student's run measured it — on the student's eval data, so the
    two compare — when that run's teacher is this model; else the teacher run's own."""
    summary = run_summary(student.run_dir) or {}
    entry = summary.get("teacher") or {}
    checkpoint = entry.get("checkpoint")
    if isinstance(checkpoint, str) and _same_model(checkpoint, teacher):
        found = _metric(summary.get("metric"), entry.get("metric"), student.run_dir / "summary.json")
        if found is not None:
            return {**found, "source": f"{found['source']} (its teacher)"}
    return run_metric(teacher)


def _same_model(checkpoint: str, target: SizeTarget) -> bool:
    if target.kind == "hub":
        return checkpoint == target.location
    return Path(checkpoint).expanduser().resolve() == Path(target.location).resolve()


def _metric(name: Any, value: Any, source: Path) -> dict[str, Any] | None:
    if not isinstance(name, str) or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return {"name": name, "value": float(value), "source": str(source)}
