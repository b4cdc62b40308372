"""Loading a model together with the family that reads its features: a checkpoint, or a randomly
initialized model from a config file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig

from brewer_cli.errors import ModelError
from brewer_cli.families import Family, family_for
from brewer_cli.families.registered import registered_model_types, unknown_model_type_message
from brewer_cli.models import (
    ModelHead,
    checkpoint_location,
    first_line,
    load_config,
    load_pretrained,
    quiet_transformers,
    read_config_spec,
    recipe_prefix,
)
from brewer_cli.recipe import ModelSpec, Recipe
from brewer_cli.tokenizers import load_tokenizer_dir


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    family: Family
    role: str  # "teacher", "student" or "model": used in messages and the plan
    source: str
    extraction: Any = None  # ETD: what was kept, when the student was extracted from the teacher
    # A teacher's `teacher.device` (brewer_cli/families/placement.py): "auto" runs it where training runs.
    device: str = "auto"
    # Its `teacher.dtype` as the recipe gives it ("auto": as saved); the cache fingerprint names it
    # only when it is not the default, so caches written before the setting existed still resume.
    dtype: str = "auto"


def load_checkpoint(
    value: str,
    task: ModelHead,
    label_names: list[str] | None,
    recipe: Recipe | None,
    field: str,
    role: str,
    shape_head: bool,
    dtype: Any = "auto",
) -> LoadedModel:
    """Load a model and its tokenizer. `shape_head` passes the task's label settings, for a
    checkpoint that will be trained (its head is created or must fit); a teacher's head is checked
    instead. `dtype`: from_pretrained's (`auto`: as saved), a teacher's `teacher.dtype`."""
    location = checkpoint_location(value, recipe, field)
    config = load_config(location, recipe, field)
    family = family_for(config)
    kwargs = {**(task.model_kwargs(label_names) if shape_head else {}), "dtype": dtype}
    try:
        with quiet_transformers():
            model = load_pretrained(task.auto_class, location, f"{recipe_prefix(recipe)}{field}: ", **kwargs)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: could not load {location!r} as a {task.name} model: {first_line(error)}"
        ) from None
    if not shape_head:
        task.check_model(model, label_names, f"{recipe_prefix(recipe)}{field}")
    tokenizer = load_tokenizer_dir(location, recipe, field, required=False)
    return LoadedModel(model, tokenizer, family, role, location)


def model_from_config(
    spec: ModelSpec, task: ModelHead, label_names: list[str] | None, tokenizer: Any, recipe: Recipe, field: str, role: str
) -> LoadedModel:
    """A randomly initialized model whose vocabulary is the tokenizer's (the teacher's, for a
    student: teacher and student must read the same token ids)."""

    settings = read_config_spec(spec.config, recipe, f"{field}.config")
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}.config: the config has no `model_type` (e.g. bert, roberta, distilbert)"
        )
    if model_type not in registered_model_types():
        # Before transformers, whose message lists every model type it knows (hundreds).
        raise ModelError(f"{recipe_prefix(recipe)}{field}.config.model_type: {unknown_model_type_message(model_type)}")
    settings.pop("architectures", None)
    settings.pop("transformers_version", None)
    try:
        config = AutoConfig.for_model(model_type, **settings)
    except Exception as error:
        raise ModelError(f"{recipe_prefix(recipe)}{field}.config: {first_line(error)}") from None
    family = family_for(config)
    config.vocab_size = len(tokenizer)
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    # A language model stops generating at the config's end token: take the tokenizer's, and drop
    # defaults that index past this vocabulary (GPT-2's 50256 in a 300-token model).
    for name in ("bos_token_id", "eos_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            setattr(config, name, token_id)
        elif isinstance(getattr(config, name, None), int) and getattr(config, name) >= config.vocab_size:
            setattr(config, name, None)
    for key, value in task.model_kwargs(label_names).items():
        setattr(config, key, value)
    with quiet_transformers():
        model = task.auto_class.from_config(config)
    return LoadedModel(model, tokenizer, family, role, f"config {spec.config if isinstance(spec.config, str) else 'inline'}")
