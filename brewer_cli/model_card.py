"""Model cards: a README.md in the Hub's model-card format for each model a run exports — final/,
best/, and each task's model of a multi-task run (with a card for the whole run at the top of
final/ and best/, the root of a pushed repository). Built with huggingface_hub's ModelCard,
ModelCardData and EvalResult, so the front matter is what the Hub and `ModelCard.load` read:
`base_model` (the teacher, when it is a hub id), `library_name`, `tags`, `datasets` (hub datasets
only), `pipeline_tag` and a `model-index` with the student's and the teacher's metrics. The body
says what the student is, how much smaller and faster than its teacher (summary.json's ratios),
how it was distilled, and the resolved recipe.

Everything comes from files — summary.json, the run's recipe.yaml, each export's config.json —
so `brewer push` can write the card of a run that finished before cards existed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig
from transformers.modelcard import TASK_MAPPING, TASK_TAG_TO_NAME_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

from brewer_cli.checkpoints import write_text
from brewer_cli.models import PACKAGE_PREFIX
from brewer_cli.paths import looks_like_hub_id

CARD_FILE = "README.md"
EXPORTS = ("final", "best")
DISTILLED_TAGS = ["distillation", "brewer"]
# A `trainer` run (a teacher fine-tuned by brewer) distills nothing.
TRAINED_TAGS = ["brewer"]
# The Hub's task tag for a model class, as transformers' own cards infer it (TASK_MAPPING, used by
# Trainer.create_model_card); a bare encoder (general distillation) gives features.
PIPELINE_TAGS = {**TASK_MAPPING, "feature-extraction": MODEL_MAPPING_NAMES}
TASK_NAMES = {**TASK_TAG_TO_NAME_MAPPING, "feature-extraction": "Feature Extraction"}


@dataclass(frozen=True)
class _Figures:
    """One model's figures on one task, as the card reports them."""

    task: str | None  # a multi-task run's task name; None for a single-task run
    model_dir: Path
    data: dict[str, Any]  # the recipe's data section for this task
    task_kind: str | None
    student: dict[str, Any]  # metrics and parameters of the exported student
    teacher: dict[str, Any] | None  # checkpoint, metrics and parameters
    metric: str


def write_model_cards(
    run_dir: Path,
    summary: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    losses: list[str] | None = None,
) -> list[Path]:
    """README.md into each export of the run (final/, best/, final/<task>/ …); returns the files
    written. `summary` and `recipe` default to the run's summary.json and recipe.yaml; `losses` are
    the distiller's own lines for its loss terms (the recipe's `distillation` section otherwise)."""
    run_dir = Path(run_dir)
    summary = summary if summary is not None else json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if recipe is None:
        recipe_file = run_dir / "recipe.yaml"
        recipe = (yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}) if recipe_file.is_file() else {}
    written = []
    for export in EXPORTS:
        directory = run_dir / export
        if not directory.is_dir():
            continue
        cards = {directory: model_card(summary, recipe, directory, export, losses)}
        for name in summary.get("tasks") or {}:
            if (directory / name / "config.json").is_file():
                cards[directory / name] = model_card(summary, recipe, directory / name, export, losses, task=name)
        for model_dir, card in cards.items():
            write_text(model_dir / CARD_FILE, str(card), run_dir)
            written.append(model_dir / CARD_FILE)
    return written


def model_card(
    summary: dict[str, Any],
    recipe: dict[str, Any],
    directory: Path,
    export: str = "final",
    losses: list[str] | None = None,
    task: str | None = None,
) -> ModelCard:
    """The card of one export: `directory` is final/ or best/ (for a multi-task run, the whole run,
    unless `task` names one of its models, in directory/<task>)."""
    figures = _figures(summary, recipe, Path(directory), export, task)
    distilled = any(entry.teacher is not None for entry in figures)
    tags = [_pipeline_tag(entry.model_dir) for entry in figures]
    name = summary.get("name") or Path(directory).parent.name
    model_name = f"{name}-{task}" if task else name
    results = [result for entry in figures for result in _eval_results(entry, tags[figures.index(entry)])]
    data = ModelCardData(
        base_model=_one_or_many(_base_models(summary, recipe, task)),
        library_name="transformers",
        tags=list(DISTILLED_TAGS if distilled else TRAINED_TAGS),
        datasets=_hub_datasets(entry.data for entry in figures) or None,
        pipeline_tag=tags[0] if len(set(tags)) == 1 else None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    body = _body(summary, recipe, figures, tags, export, losses, model_name, distilled)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ============================================================================= front matter


def is_hub_id(value: Any) -> bool:
    """A checkpoint that names a Hub repository: not a local path, not a python-package: one."""
    if not isinstance(value, str) or value.startswith(PACKAGE_PREFIX) or not looks_like_hub_id(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return not Path(value).expanduser().exists()


def _base_models(summary: dict[str, Any], recipe: dict[str, Any], task: str | None) -> list[str]:
    """The teachers that are hub ids; for a `trainer` run, the checkpoint it fine-tuned."""
    if task is not None:
        candidates = [((summary.get("tasks") or {}).get(task, {}).get("teacher") or {}).get("checkpoint")]
    elif summary.get("tasks"):
        candidates = [(entry.get("teacher") or {}).get("checkpoint") for entry in summary["tasks"].values()]
    elif summary.get("teachers"):
        candidates = [entry.get("checkpoint") for entry in summary["teachers"]]
    elif summary.get("teacher"):
        candidates = [summary["teacher"].get("checkpoint")]
    else:
        candidates = [(recipe.get("model") or {}).get("checkpoint")]
    return list(dict.fromkeys(value for value in candidates if is_hub_id(value)))


def _hub_datasets(sections: Any) -> list[str]:
    """Hub datasets the run read (train and eval); local files and generated data are left out."""
    names = [(section.get(split) or {}).get("hub") for section in sections for split in ("train", "eval")]
    return list(dict.fromkeys(name for name in names if name))


def _one_or_many(values: list[str]) -> str | list[str] | None:
    return None if not values else values[0] if len(values) == 1 else values


def _pipeline_tag(model_dir: Path) -> str | None:
    """The Hub task of the exported model's class (config.json `architectures`)."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return None
    architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    for tag, mapping in PIPELINE_TAGS.items():
        for names in mapping.values():
            if any(architecture in ((names,) if isinstance(names, str) else names) for architecture in architectures):
                return tag
    return None


def _eval_results(entry: _Figures, pipeline_tag: str | None) -> list[EvalResult]:
    """The student's metrics, then the teacher's (named `… (teacher)`), on the eval split."""
    source = entry.data.get("eval") or {}
    dataset = _dataset(source)
    if dataset is None:
        return []
    task_type = pipeline_tag or entry.task_kind or "other"
    results = []
    rows = [("", entry.student.get("metrics"))]
    if entry.teacher is not None:
        rows.append((" (teacher)", entry.teacher.get("metrics")))
    for suffix, metrics in rows:
        for metric, value in _numbers(metrics).items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=TASK_NAMES.get(task_type, task_type),
                    dataset_type=dataset[0],
                    dataset_name=dataset[1],
                    dataset_config=source.get("config"),
                    dataset_split=source.get("split"),
                    metric_type=metric,
                    metric_name=f"{metric}{suffix}",
                    metric_value=value,
                )
            )
    return results


def _dataset(source: dict[str, Any]) -> tuple[str, str] | None:
    """(type, name) of an eval source: a hub id, a local file's name (never its path), or the
    name of a generated data set."""
    if source.get("hub"):
        return source["hub"], source["hub"]
    if source.get("path"):
        name = Path(source["path"]).name
        return name, name
    if source.get("synthetic"):
        return source["synthetic"], f"{source['synthetic']} (generated by brewer)"
    return None


def _numbers(metrics: Any) -> dict[str, float]:
    """The finite numbers of a metrics mapping (counts and nested entries are not metrics)."""
    if not isinstance(metrics, dict):
        return {}
    return {
        str(name): value
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


# ============================================================================= figures


def _figures(summary: dict[str, Any], recipe: dict[str, Any], directory: Path, export: str, task: str | None) -> list[_Figures]:
    """One entry per task the card covers, with the export's metrics: final/'s are the summary's
    student; best/'s are the best evaluation's."""
    tasks = summary.get("tasks") or {}
    best_metrics = _best_metrics(summary) if export == "best" else None
    if not tasks:
        student = summary.get("student") or summary.get("model") or {}
        if export == "best":
            student = {**student, "metrics": best_metrics}
        return [
            _Figures(
                None,
                directory,
                recipe.get("data") or {},
                (recipe.get("task") or {}).get("kind"),
                student,
                summary.get("teacher"),
                summary.get("metric") or "",
            )
        ]
    entries = []
    for name, entry in tasks.items():
        if task is not None and name != task:
            continue
        student = entry.get("student") or {}
        if export == "best":
            student = {**student, "metrics": (best_metrics or {}).get(name)}
        section = (recipe.get("tasks") or {}).get(name) or {}
        entries.append(
            _Figures(
                name,
                directory / name if task is None else directory,
                section.get("data") or {},
                (section.get("task") or {}).get("kind"),
                student,
                entry.get("teacher"),
                entry.get("metric") or summary.get("metric") or "",
            )
        )
    return entries


def _best_metrics(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of the evaluation that chose best/: summary.json's `best.metrics`; without them,
    the final student's when final/ is the best checkpoint (or was taken at the best step)."""
    best = summary.get("best") or {}
    if isinstance(best.get("metrics"), dict):
        return best["metrics"]
    final = summary.get("final") or {}
    final_step = final.get("step", (summary.get("last") or {}).get("step", summary.get("steps")))
    if final.get("is_best") or (best.get("step") is not None and best.get("step") == final_step):
        return (summary.get("student") or summary.get("model") or {}).get("metrics")
    return None


# ============================================================================= body


def _body(
    summary: dict[str, Any],
    recipe: dict[str, Any],
    figures: list[_Figures],
    tags: list[str | None],
    export: str,
    losses: list[str] | None,
    model_name: str,
    distilled: bool,
) -> str:
    kind = summary.get("kind") or (recipe.get("distillation") or {}).get("kind") or ""
    lines = [f"# {model_name}", ""]
    lines += _introduction(summary, figures, export, kind, distilled)
    lines += _size_section(summary, figures)
    lines += _results_section(figures)
    lines += _usage_section(figures, tags)
    lines += _distillation_section(recipe, losses, kind, distilled)
    recipe_text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip()
    lines += [
        "## Recipe",
        "",
        "The resolved recipe (every default filled in) this run was made with; `brewer distill recipe.yaml` runs it again.",
        "",
        "```yaml",
        recipe_text,
        "```",
        "",
    ]
    return "\n".join(lines)


def _introduction(summary: dict[str, Any], figures: list[_Figures], export: str, kind: str, distilled: bool) -> list[str]:
    teachers = [entry.teacher.get("checkpoint") for entry in figures if entry.teacher is not None]
    if summary.get("teachers"):
        # Several teachers (multi_teacher): each one, not their ensemble's description.
        teachers = [entry.get("checkpoint") for entry in summary["teachers"]]
    teacher_text = ", ".join(f"`{value}`" for value in dict.fromkeys(str(value) for value in teachers if value))
    what = f"distilled from {teacher_text} with brewer's `{kind}` distillation" if distilled else "fine-tuned with brewer"
    lines = [f"A {'student' if distilled else 'model'} {what}."]
    if len(figures) > 1:
        lines[0] += (
            f" One model per task ({', '.join(entry.task for entry in figures)}), sharing one encoder: each task's model is in its own folder."
        )
    best = summary.get("best") or {}
    final = summary.get("final") or {}
    if export == "best":
        # summary.json names the metric that chose it (older runs wrote its value there).
        chosen = best.get("metric") if isinstance(best.get("metric"), str) else summary.get("metric")
        lines.append(f"This is the best checkpoint (step {best.get('step')}), chosen by the eval split's `{chosen}`.")
    elif final.get("is_best") and final.get("step") != summary.get("steps"):
        lines.append(
            f"This is the best checkpoint (step {final.get('step')} of {summary.get('steps')}), as `training.load_best_at_end` chose it."
        )
    elif summary.get("steps") is not None:
        lines.append(f"This is the student after its last step ({summary.get('steps')}).")
    return [" ".join(lines), ""]


def _size_section(summary: dict[str, Any], figures: list[_Figures]) -> list[str]:
    """Student beside teacher: parameters, shape, FLOPs, and summary.json's ratios. A card for one
    task of a multi-task run has that task's parameters and metric ratio; the shapes and FLOPs
    summary.json measures are the run's single student and teacher."""
    one_task = len(figures) == 1 and figures[0].task is not None
    student = figures[0].student if len(figures) == 1 else summary.get("student") or {}
    teacher = (figures[0].teacher if len(figures) == 1 else summary.get("teacher")) or {}
    size = {} if summary.get("tasks") else summary.get("size") or {}
    has_teacher = any(entry.teacher is not None for entry in figures)
    architectures = [
        _architecture(figures[0].model_dir) if len(figures) == 1 else {},
        (size.get("teacher") or {}).get("architecture") or {},
    ]
    rows = [("parameters", student.get("parameters"), teacher.get("parameters"))]
    for label, key in (
        ("layers", "layers"),
        ("hidden size", "hidden"),
        ("attention heads", "heads"),
        ("FFN size", "ffn"),
        ("max positions", "max_positions"),
    ):
        rows.append((label, architectures[0].get(key), architectures[1].get(key)))
    flops = [((size.get(role) or {}).get("flops") or {}).get("total") for role in ("student", "teacher")]
    rows.append((f"FLOPs per example at {size.get('seq_len')} tokens", *flops))
    lines = ["## The model", ""]
    if architectures[0].get("model_type"):
        lines += [f"A `{architectures[0]['model_type']}` model (`{architectures[0].get('model_class')}`).", ""]
    lines += ["| | student | teacher |" if has_teacher else "| | model |", "|---|---:|---:|" if has_teacher else "|---|---:|"]
    for label, student_value, teacher_value in rows:
        if student_value is None and teacher_value is None:
            continue
        lines.append(
            f"| {label} | {_count(student_value)} | {_count(teacher_value)} |"
            if has_teacher
            else f"| {label} | {_count(student_value)} |"
        )
    lines.append("")
    ratios = []
    parameters_ratio = summary.get("parameters_ratio") if not one_task else None
    if one_task and student.get("parameters") and teacher.get("parameters"):
        parameters_ratio = student["parameters"] / teacher["parameters"]
    if parameters_ratio:
        ratios.append(f"- parameters: {parameters_ratio:.1%} of the teacher's ({1 / parameters_ratio:.1f}× fewer)")
    if size.get("flops_fewer_by") is not None:
        ratios.append(f"- FLOPs per example: {size['flops_fewer_by']:.1f}× fewer than the teacher's")
    source = (summary.get("tasks") or {}).get(figures[0].task) if one_task else summary
    if (source or {}).get("student_to_teacher") is not None:
        ratios.append(f"- {figures[0].metric}: {source['student_to_teacher']:.1%} of the teacher's")
    for key, label in (("train_time_s", "training loop"), ("wall_time_s", "training")):
        if isinstance(summary.get(key), (int, float)):
            ratios.append(f"- {label}: {summary[key]:.0f} s, {summary.get('steps')} steps, precision {summary.get('precision')}")
            break
    if isinstance(summary.get("total_time_s"), (int, float)):
        ratios.append(f"- the whole command (data, teacher evaluation, training): {summary['total_time_s']:.0f} s")
    # The rates only (examples_per_s, tokens_per_s); the counts behind them are in summary.json.
    rates = {
        name.removesuffix("_per_s"): value
        for name, value in _numbers(summary.get("throughput")).items()
        if name.endswith("_per_s")
    }
    if rates:
        ratios.append("- training throughput: " + ", ".join(f"{value:,.1f} {name}/s" for name, value in rates.items()))
    return lines + ratios + ([""] if ratios else [])


def _results_section(figures: list[_Figures]) -> list[str]:
    lines: list[str] = []
    for entry in figures:
        student, teacher = _numbers(entry.student.get("metrics")), _numbers((entry.teacher or {}).get("metrics"))
        names = list(dict.fromkeys([*student, *teacher]))
        if not names:
            continue
        dataset = _dataset(entry.data.get("eval") or {})
        title = f"## Results{f' — {entry.task}' if entry.task else ''}"
        lines += [
            title,
            "",
            f"On the eval split ({dataset[1] if dataset else 'the recipe’s eval data'}); `{entry.metric}` is the metric that chose the checkpoint.",
            "",
        ]
        lines += ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label, metrics in (("student" if entry.teacher is not None else "model", student), ("teacher", teacher)):
            if metrics:
                lines.append(f"| {label} | " + " | ".join(_number(metrics.get(name)) for name in names) + " |")
        lines.append("")
    return lines


def _usage_section(figures: list[_Figures], tags: list[str | None]) -> list[str]:
    lines = ["## Use", ""]
    for entry, tag in zip(figures, tags):
        where = f"`{entry.task}/`: " if entry.task and len(figures) > 1 else ""
        limit = _model_max_length(entry.model_dir)
        truncation = f"; its tokenizer cuts inputs at {limit} tokens with `truncation=True`" if limit else ""
        if tag:
            lines.append(f'- {where}`pipeline("{tag}", model=…)` or the matching `AutoModelFor…` class{truncation}.')
        else:
            lines.append(f"- {where}`AutoModel.from_pretrained(…)`{truncation}.")
    return lines + [""]


def _distillation_section(recipe: dict[str, Any], losses: list[str] | None, kind: str, distilled: bool) -> list[str]:
    settings = recipe.get("distillation") or {}
    lines = ["## Distillation" if distilled else "## Training", "", f"Kind: `{kind}`.", ""]
    if losses:
        lines += ["Loss terms:", ""] + [f"- {line}" for line in losses] + [""]
    elif settings:
        lines += ["Settings (the recipe's `distillation`):", ""]
        lines += [f"- `{key}`: `{json.dumps(value)}`" for key, value in settings.items() if key != "kind"] + [""]
    stages = recipe.get("stages")
    if stages:
        lines += [f"Stages: {len(stages)} (see the recipe)."]
    training = recipe.get("training") or {}
    keys = ("epochs", "max_steps", "batch_size", "learning_rate", "seed")
    shown = [f"{key} {training[key]}" for key in keys if training.get(key) is not None]
    if shown:
        lines += [f"Training: {', '.join(shown)}.", ""]
    return lines


def _architecture(model_dir: Path) -> dict[str, Any]:
    """Layers, width and heads of an exported model, through transformers' config (which maps each
    family's own names, e.g. DistilBERT's n_layers, onto the common ones)."""
    if not (model_dir / "config.json").is_file():
        return {}
    config = AutoConfig.from_pretrained(model_dir)
    architectures = getattr(config, "architectures", None) or []
    return {
        "model_type": config.model_type,
        "model_class": architectures[0] if architectures else None,
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden": getattr(config, "hidden_size", None),
        "heads": getattr(config, "num_attention_heads", None),
        "ffn": getattr(config, "intermediate_size", None),
        "max_positions": getattr(config, "max_position_embeddings", None),
    }


def _model_max_length(model_dir: Path) -> int | None:
    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    value = json.loads(config_file.read_text(encoding="utf-8")).get("model_max_length")
    return value if isinstance(value, int) and value < 10**9 else None


def _count(value: Any) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"
