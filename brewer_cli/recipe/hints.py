"""What brewer says about a key it cannot take as written: a Hugging Face Trainer argument (with
brewer's name for it), a field written in the wrong section, and a key whose value is empty —
which in YAML is often a value starting with `#`, read as a comment (`text_pair: #2 String`)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from brewer_cli.recipe.distillation import BasicDistillation, UniformMatches
from brewer_cli.recipe.schema import Recipe
from brewer_cli.recipe.sections import DataSpec, TrainingSpec

# Trainer argument → (brewer's `training` field, what to write after it). A hint is given only
# when TrainingSpec has the field, so the table may name fields a version of brewer lacks.
TRAINER_TRAINING_FIELDS: dict[str, tuple[str, str]] = {
    "num_train_epochs": ("epochs", ""),
    "per_device_train_batch_size": ("batch_size", ""),
    "train_batch_size": ("batch_size", ""),
    "per_device_eval_batch_size": ("eval_batch_size", ""),
    "gradient_accumulation_steps": ("gradient_accumulation", ""),
    "warmup_ratio": ("warmup", ""),
    "warmup_steps": ("warmup", " (a fraction of the training steps, e.g. 0.1 — not a number of steps)"),
    "fp16": ("precision", ": fp16"),
    "bf16": ("precision", ": bf16"),
    "lr_scheduler_type": ("lr_schedule", ""),
    "logging_steps": ("log_every", ""),
    "eval_steps": ("eval_every", ""),
    "eval_strategy": ("eval_every", " (steps between evaluations; left out: once per epoch)"),
    "evaluation_strategy": ("eval_every", " (steps between evaluations; left out: once per epoch)"),
    "save_steps": ("save_every", ""),
    "save_strategy": ("save_every", " (steps between checkpoints; left out: at every evaluation)"),
    "save_total_limit": ("keep_checkpoints", ""),
    "metric_for_best_model": ("metric_for_best", ""),
    "load_best_model_at_end": ("load_best_at_end", ""),
    "torch_compile": ("compile", ""),
    "torch_compile_backend": ("compile", ": <backend>"),
    "disable_tqdm": ("progress", ": false"),
}
# Trainer (and TRL) arguments that brewer takes elsewhere → (where, the recipe section it needs:
# the hint is given only when the recipe has that section).
TRAINER_ELSEWHERE: dict[str, tuple[str, str | None]] = {
    "output_dir": ("the command's --output-dir option (`brewer distill RECIPE --output-dir DIR`; the run is DIR/<name>)", None),
    "resume_from_checkpoint": ("the command's --resume option (it continues from the newest complete checkpoint)", None),
    "run_name": ("the recipe's top-level `name`", None),
    "max_seq_length": ("`data.max_length`", None),
    "push_to_hub": ("a `hub: {repo_id: …}` section", "hub"),
    "hub_model_id": ("`hub.repo_id`", "hub"),
    "hub_private_repo": ("`hub.private`", "hub"),
    # TRL's GKDConfig.
    "lmbda": ("`distillation.student_data_fraction` (kind on_policy)", "distillation"),
    "seq_kd": ("`distillation.kind: sequence_kd`", "distillation"),
}
# Fields that have a home section, for a key written elsewhere (`learning_rate` at the top level).
SECTIONS_OF_FIELDS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("training", TrainingSpec),
    ("data", DataSpec),
    ("distillation", BasicDistillation),
)


def unknown_key_hint(key: str, parent: list[Any], parent_model: type[BaseModel] | None) -> str:
    """` — …` naming where brewer takes `key`, written in the mapping at `parent` (of schema
    `parent_model`), or "" when brewer has no such setting."""
    training = _training_path(parent, parent_model)
    if key in TRAINER_TRAINING_FIELDS:
        field, value = TRAINER_TRAINING_FIELDS[key]
        if field in TrainingSpec.model_fields:
            return f" — the Trainer's `{key}` is `{training}.{field}{value}` in brewer"
    if key in TRAINER_ELSEWHERE:
        where, section = TRAINER_ELSEWHERE[key]
        if section is None or section in Recipe.model_fields:
            return f" — the Trainer's `{key}` is {where} in brewer"
    for section, model in SECTIONS_OF_FIELDS:
        if key in model.model_fields and parent_model is not model:
            home = training if section == "training" else section
            return f" — `{key}` belongs in the `{home}` section: `{home}.{key}`"
    return ""


def _training_path(parent: list[Any], parent_model: type[BaseModel] | None) -> str:
    """The `training` section nearest to `parent`: its own, a sibling (`teacher.train.training`),
    or the recipe's."""
    if parent_model is TrainingSpec:
        return ".".join(str(part) for part in parent)
    if parent_model is not None and "training" in parent_model.model_fields:
        return ".".join(str(part) for part in [*parent, "training"])
    return "training"


def null_message(location: list[Any], text: str | None, optional: bool) -> str:
    """Why the key at `location` is refused for its empty value; `text`: the YAML recipe, to tell a
    value cut off by a `#` comment; `optional`: the key may be left out."""
    key = location[-1]
    comment = _comment_after_empty_value(text, location) if text is not None else None
    otherwise = "give a value, or remove the key" if optional else "give a value"
    if comment is not None:
        quoted = comment.replace("\\", "\\\\").replace('"', '\\"')
        return (
            f"the value is empty (null): YAML reads everything from ` #` on as a comment — if the value is `{comment}`, "
            f'quote it: `{key}: "{quoted}"`; otherwise {otherwise}'
        )
    return f"the value is empty (null) — {otherwise}"


def _comment_after_empty_value(text: str, location: list[Any]) -> str | None:
    """The comment on the line of the key at `location` when its value is left empty."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    key_node = None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not pairs:
                return None
            key_node, node = pairs[-1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    if key_node is None or not isinstance(node, yaml.ScalarNode) or node.value != "":
        return None
    line = text.splitlines()[key_node.start_mark.line][key_node.end_mark.column :]
    start = line.find("#")
    return line[start:].rstrip() if start >= 0 else None


# ============================================================================= empty values


# What YAML reads as null when written out; any other text that reads as null was cut off by a `#`.
NULL_WORDS = ("null", "Null", "NULL", "~")


def empty_optional_values(raw: dict[str, Any], path: Path, set_by: dict[str, str]) -> list[str]:
    """Keys present with an empty (null) value whose null means "not given": the schema takes them
    silently, but the author wrote a key, so something was meant — most often a value starting
    with `#` left unquoted in YAML, which reads as a comment (`text_pair: #2 String`). A null
    chosen over another default (`max_grad_norm: null`: no clipping) is a value and is kept, as is
    a null written by `--set` (`--set data.eval=null` removes the eval split)."""
    lines = []
    text: str | None = None
    for location in _null_locations(raw, []):
        dotted = ".".join(str(part) for part in location)
        model = schema_at(location[:-1], raw)
        field = _field_named(model, location[-1]) if model is not None else None
        if field is None or field.is_required() or field.get_default(call_default_factory=True) is not None:
            continue  # an unknown key or a refused null: the schema reports it
        if any(dotted == written or dotted.startswith(written + ".") for written in set_by):
            continue  # `--set data.eval=null`: a null typed on purpose
        if text is None:
            text = yaml_text(path)
        lines.append(f"{path}: {dotted}: {null_message(location, text, optional=True)}")
    return lines


def _null_locations(node: Any, trail: list[Any]) -> list[list[Any]]:
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    found = []
    for key, value in items:
        if value is None:
            found.append([*trail, key])
        else:
            found.extend(_null_locations(value, [*trail, key]))
    return found


def _field_named(model: type[BaseModel], key: Any) -> Any:
    return next((field for name, field in model.model_fields.items() if (field.alias or name) == key), None)


def yaml_text(path: Path) -> str | None:
    """The recipe's text when it is YAML (a JSON null is written out, never a cut-off comment)."""
    if path is None or path.suffix.lower() == ".json":
        return None
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def written_as_null(location: list[Any], raw: dict[str, Any]) -> bool:
    """Whether the user's mapping holds the key at `location` with the value null."""
    node: Any = raw
    for part in location[:-1]:
        if not (isinstance(node, (dict, list)) and _has(node, part)):
            return False
        node = node[part]
    return isinstance(node, dict) and location[-1:] != [] and location[-1] in node and node[location[-1]] is None


def required(location: list[Any], raw: dict[str, Any]) -> bool:
    model = schema_at(location[:-1], raw)
    field = _field_named(model, location[-1]) if model is not None else None
    return field is None or field.is_required()


# ============================================================================= the schema of a place in the recipe


def schema_at(location: list[Any], raw: dict[str, Any]) -> type[BaseModel] | None:
    """The pydantic model that describes the mapping at `location` in the user's data."""
    annotation: Any = Recipe
    node: Any = raw
    for part in location:
        if isinstance(part, int):
            annotation = _element_type(annotation)
        elif _mapping_value_type(annotation) is not None:
            # A key of a user-named mapping (`tasks.<name>`).
            annotation = _mapping_value_type(annotation)
        else:
            model = _model_in(annotation, node)
            if model is None or part not in model.model_fields:
                return None
            annotation = model.model_fields[part].annotation
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    return _model_in(annotation, node)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and part < len(node)


def _mapping_value_type(annotation: Any) -> Any:
    for argument in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(argument) is dict:
            return typing.get_args(argument)[1]
    return None


def _element_type(annotation: Any) -> Any:
    for argument in typing.get_args(annotation):
        if typing.get_origin(argument) in (tuple, list):
            return typing.get_args(argument)[0]
    if typing.get_origin(annotation) in (tuple, list):
        return typing.get_args(annotation)[0]
    return None


def _model_in(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model among `annotation`'s union members that the user's mapping `node` is meant as."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates: list[type[BaseModel]] = []
    stack = list(typing.get_args(annotation))
    while stack:
        argument = stack.pop(0)
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            candidates.append(argument)
        elif typing.get_origin(argument) not in (tuple, list, dict):
            stack.extend(typing.get_args(argument))
    if not isinstance(node, dict) or not candidates:
        return candidates[0] if len(candidates) == 1 else None
    if "kind" in node:
        for candidate in candidates:
            kind_field = candidate.model_fields.get("kind")
            if kind_field is not None and node["kind"] in typing.get_args(kind_field.annotation):
                return candidate
    if "uniform" in node and UniformMatches in candidates:
        return UniformMatches
    return candidates[0]


def field_names(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]
