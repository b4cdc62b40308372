"""What `brewer size-report` points at — a run directory, a checkpoint directory, a config file,
`python-package:NAME` or a Hugging Face Hub id — resolved to a config, a model class and where the
weights are, before any weight is read. Packages and hub ids resolve through the functions a
recipe's checkpoints go through (brewer_cli.models), so both commands accept the same references."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from brewer_cli.errors import BrewerError, CheckpointError, ModelError
from brewer_cli.models import PACKAGE_PREFIX, checkpoint_location, load_config, load_pretrained, refuse_pickles_only

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Safetensors only: a checkpoint whose weights are pickles is refused (models.refuse_pickles_only).
WEIGHT_FILE_PATTERNS = ("*.safetensors",)


@dataclass(frozen=True)
class SizeTarget:
    """A model to report on, resolved from a run directory, checkpoint, config file or hub id.

    `kind` is "run", "checkpoint", "config" or "hub". `weights_source` is what `from_pretrained`
    reads (a directory or a hub id); None means the target has only a config, so figures come
    from a model built from it and latency, if measured, runs on random weights. `run_dir` is the
    run the model belongs to (its recipe.yaml and summary.json), when it is one's.
    """

    target: str
    kind: str
    location: str
    config: Any
    model_class: type
    weights_source: str | None
    run_dir: Path | None = None

    @property
    def has_weights(self) -> bool:
        return self.weights_source is not None

    def weight_files(self) -> list[Path]:
        """The weight files on disk (local files, or the hub cache for a hub id)."""
        if self.weights_source is None:
            return []
        if self.kind == "hub":
            return _hub_cached_weight_files(self.weights_source)
        return _local_weight_files(Path(self.weights_source))

    def build(self, device: str = "meta") -> nn.Module:
        """The model: loaded with its weights, or built from the config.

        `device="meta"` builds the module tree without memory or initialisation, which is all
        that counts and FLOPs need; weights are then not read even when the target has them.
        """
        if device == "meta":
            with torch.device("meta"):
                return self.model_class(self.config)
        if self.weights_source is None:
            # Random initialisation: timing does not depend on the weight values.
            return self.model_class(self.config)
        try:
            return load_pretrained(self.model_class, self.weights_source, f"size-report target {self.target!r}: ")
        except (OSError, ValueError) as error:
            error_type = ModelError if self.kind == "hub" else CheckpointError
            raise error_type(
                f"could not load the weights of {self.target!r} ({self.location}) as "
                f"{self.model_class.__name__}: {_one_line(error)}"
            ) from error


def resolve_target(target: str) -> SizeTarget:
    """Resolve a run directory, checkpoint directory, config file or hub id to a `SizeTarget`.

    A run directory is reported through `final/` (or `best/` when the run has no `final/`).
    Only the config is read here; weights are read by `SizeTarget.build` when latency needs them.
    """
    if target.startswith(PACKAGE_PREFIX):
        # The package's model directory, found as a recipe's `python-package:NAME` is.
        return _checkpoint_target(target, Path(checkpoint_location(target, None, "size-report target")), kind="checkpoint")
    path = Path(target).expanduser()
    if path.is_dir():
        return _resolve_directory(target, path)
    if path.is_file():
        return _resolve_config_file(target, path)
    if _looks_like_path(target):
        raise BrewerError(
            f"size-report target {target!r} does not exist: no file or directory at {path}. "
            "Give a run directory (runs/<name>), a checkpoint directory (config.json + "
            "model.safetensors), a config file (.json/.yaml with model_type) or a Hugging Face "
            "Hub id."
        )
    return _resolve_hub_id(target)


def _one_line(error: BaseException) -> str:
    # Library messages span several lines; a BrewerError is printed as one paragraph.
    return " ".join(str(error).split())


def _looks_like_path(target: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that is not on disk is a missing path.
    return (
        Path(target).is_absolute()
        or target.startswith((".", "~"))
        or target.count("/") > 1
        or "\\" in target
        or Path(target).suffix.lower() in {*CONFIG_SUFFIXES, ".safetensors", ".bin", ".pt"}
    )


def _resolve_directory(target: str, path: Path) -> SizeTarget:
    for subdirectory in ("final", "best"):
        candidate = path / subdirectory
        if (candidate / "config.json").is_file():
            return _checkpoint_target(target, candidate, kind="run")
    if (path / "config.json").is_file():
        return _checkpoint_target(target, path, kind="checkpoint")
    nested = sorted(str(config.parent) for pattern in ("*/config.json", "*/*/config.json") for config in path.glob(pattern))
    hint = (
        f" Directories below it that hold a model: {', '.join(nested[:5])}."
        if nested
        else " If this is a run that has not finished, point at one of its checkpoints/step-N."
    )
    raise CheckpointError(
        f"size-report target {target!r} is a directory without a model: it has no config.json "
        f"and no final/ or best/ subdirectory with one.{hint}"
    )


def _checkpoint_target(target: str, directory: Path, kind: str) -> SizeTarget:
    refuse_pickles_only(directory, f"size-report target {target!r}: ")
    config = _load_config_dict(target, directory / "config.json")
    has_weights = bool(_local_weight_files(directory))
    return SizeTarget(
        target=target,
        kind=kind if has_weights else "config",
        location=str(directory),
        config=config,
        model_class=_model_class_for(config),
        weights_source=str(directory) if has_weights else None,
        run_dir=run_directory_of(directory),
    )


def run_directory_of(directory: Path) -> Path | None:
    """The run a model directory belongs to: the nearest directory, itself or up to three above
    (final/, best/, final/<task>/, checkpoints/step-N/student), that holds a run's recipe.yaml."""
    for candidate in [directory, *directory.parents][:4]:
        if (candidate / "recipe.yaml").is_file():
            return candidate
    return None


def _resolve_config_file(target: str, path: Path) -> SizeTarget:
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise BrewerError(
            f"size-report target {target!r} is a {path.suffix or 'suffix-less'} file; a file "
            "target must be a model config (.json, .yaml or .yml with model_type). For weights, "
            "point at the directory that holds them and their config.json."
        )
    config = _load_config_dict(target, path)
    return SizeTarget(
        target=target,
        kind="config",
        location=str(path),
        config=config,
        model_class=_model_class_for(config),
        weights_source=None,
    )


def _load_config_dict(target: str, path: Path):
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise BrewerError(f"size-report could not read the config {path} ({target!r}): {_one_line(error)}") from error
    if not isinstance(data, dict) or "model_type" not in data:
        raise BrewerError(
            f"{path} has no `model_type`, so it is not a transformers model config. size-report "
            "reads a run directory, a checkpoint directory, a config file (a config.json or a "
            "student architecture file with model_type) or a Hugging Face Hub id; for a recipe, "
            "point at its run directory (runs/<name>) or the student config it names."
        )
    settings = dict(data)
    model_type = settings.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **settings)
    except (ValueError, TypeError, KeyError) as error:
        raise ModelError(
            f"{path}: cannot build a transformers config of model_type {model_type!r}: {_one_line(error)}"
        ) from error


def _resolve_hub_id(target: str) -> SizeTarget:
    try:
        # The config loader a recipe's hub checkpoint goes through.
        config = load_config(checkpoint_location(target, None, "size-report target"), None, "size-report target")
    except ModelError as error:
        raise ModelError(
            f"size-report target {target!r} is not a file or directory here, and loading it as a "
            "Hugging Face Hub id failed (offline, misspelled, or a private repository without a "
            f"token): {_one_line(error)}"
        ) from None
    return SizeTarget(
        target=target,
        kind="hub",
        location=target,
        config=config,
        model_class=_model_class_for(config),
        weights_source=target,
    )


def _model_class_for(config) -> type:
    """The concrete model class: the architecture the config names, else sequence classification.

    Sequence classification is brewer's default task; a config whose family has no such head
    (a bare encoder) falls back to the base model.
    """
    for architecture in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, architecture, None)
        if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
            return model_class
    for auto_class in (AutoModelForSequenceClassification, AutoModel):
        mapping = auto_class._model_mapping
        if type(config) in mapping:
            return mapping[type(config)]
    raise ModelError(
        f"transformers has no model class for model_type {config.model_type!r} "
        f"(architectures: {getattr(config, 'architectures', None)})."
    )


def _local_weight_files(directory: Path) -> list[Path]:
    for pattern in WEIGHT_FILE_PATTERNS:
        files = sorted(directory.glob(pattern))
        if files:
            return files
    return []


def _hub_cached_weight_files(repo_id: str) -> list[Path]:
    """Weight files of a hub model as far as the local cache holds them (no download)."""

    def cached(filename: str) -> Path | None:
        location = try_to_load_from_cache(repo_id, filename)
        return Path(location) if isinstance(location, str) else None

    single = cached("model.safetensors")
    if single is not None:
        return [single]
    index = cached("model.safetensors.index.json")
    if index is not None:
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [cached(name) for name in shard_names]
        return [shard for shard in shards if shard is not None] if all(shards) else []
    legacy = cached("pytorch_model.bin")
    return [legacy] if legacy is not None else []
