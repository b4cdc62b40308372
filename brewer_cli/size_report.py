"""`brewer size-report`: how big, how costly and how fast a model is, alone or against its teacher.

Users pick a student by the figures TextBrewer's paper prints (Table 3: T6 65M, T3 44M, T3-small
17M, T4-tiny 14M parameters), so this module reproduces them exactly as the paper defines them and
adds what the paper leaves out: FLOPs, bytes on disk and measured latency.

Figures and their definitions:

- Parameters are counted once per tensor: tied weights (an MLM decoder sharing the word
  embeddings) and shared layers (ALBERT) appear once, buffers (position ids, masks) never.
  Every parameter belongs to one part, decided by its module path: *embeddings* (lookup tables,
  their LayerNorm and any factorized-embedding projection such as ALBERT's
  `embedding_hidden_mapping_in` or ELECTRA's `embeddings_project`), *encoder* (the transformer
  layers and a final norm), *head* (the pooler and everything outside the base model).
- "Excluding output layers" = embeddings + encoder: the pooler and the task head are left out.
  This is the figure TextBrewer's Table 3 reports. (The paper's numbers are reproduced to within
  0.35M with the cased BERT vocabulary of 28996 tokens its English experiments used; with the
  uncased 30522-token vocabulary T6 and T3 come out 1.4M and 1.1M larger.)
- FLOPs per example at `seq_len` tokens are analytic: 2 × the multiply-adds of every matrix
  product: per layer the Q/K/V/O projections, QKᵀ and attention·V, the feed-forward block
  (three matrices when gated, as in Llama), plus factorized-embedding projections and the head
  (which reads one pooled token for sequence classification). Not counted: embedding lookups,
  softmax, LayerNorm, activations, biases, residual additions, masking, rotary or relative
  position terms (DeBERTa's disentangled attention). This is what
  `torch.utils.flop_counter.FlopCounterMode` reports for the eager attention implementation; on
  CPU it does not see the fused SDPA kernel, so under SDPA it reports less than this count.
- Latency is the median and 90th percentile wall time of one forward pass per batch, after
  warm-up, on random token ids of length `seq_len` without padding, under `torch.inference_mode`
  with the model in eval mode; throughput is examples per second at the median.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from brewer_cli.errors import BrewerError, CheckpointError, ModelError

DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32)
# Two untimed passes absorb one-off costs (allocator growth, kernel selection, lazy init).
WARMUP_RUNS = 2

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin")

# Top-level children of a model without a transformers base model that are task heads.
_HEAD_MODULE_NAMES = {"classifier", "head", "heads", "score", "qa_outputs", "lm_head", "output_layer"}
# Projections that live inside the encoder module but belong to the factorized embedding.
_EMBEDDING_PROJECTION_NAMES = {"embedding_hidden_mapping_in", "embeddings_project"}
# Sequence-classification heads that run on every token and pick the last one afterwards
# (GPT-2, Llama), unlike BERT-style heads that read the first token only.
_EVERY_TOKEN_HEAD_NAMES = {"score"}
_POOLED_HEAD_CLASS_SUFFIXES = ("ForSequenceClassification", "ForMultipleChoice")


# ---------------------------------------------------------------------------------------------
# Targets: what the user points at, resolved before any weight is read.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeTarget:
    """A model to report on, resolved from a run directory, checkpoint, config file or hub id.

    `kind` is "run", "checkpoint", "config" or "hub". `weights_source` is what `from_pretrained`
    reads (a directory or a hub id); None means the target has only a config, so figures come
    from a model built from it and latency, if measured, runs on random weights.
    """

    target: str
    kind: str
    location: str
    config: Any
    model_class: type
    weights_source: str | None

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
            return self.model_class.from_pretrained(self.weights_source)
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
    nested = sorted(
        str(config.parent)
        for pattern in ("*/config.json", "*/*/config.json")
        for config in path.glob(pattern)
    )
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
    config = _load_config_dict(target, directory / "config.json")
    has_weights = bool(_local_weight_files(directory))
    return SizeTarget(
        target=target,
        kind=kind if has_weights else "config",
        location=str(directory),
        config=config,
        model_class=_model_class_for(config),
        weights_source=str(directory) if has_weights else None,
    )


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
    from transformers import AutoConfig

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise BrewerError(
            f"size-report could not read the config {path} ({target!r}): {_one_line(error)}"
        ) from error
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
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(target)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"size-report target {target!r} is not a file or directory here, and loading it as a "
            "Hugging Face Hub id failed (offline, misspelled, or a private repository without a "
            f"token): {_one_line(error)}"
        ) from error
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
    import transformers
    from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

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
    from huggingface_hub import try_to_load_from_cache

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


# ---------------------------------------------------------------------------------------------
# Figures of one model.
# ---------------------------------------------------------------------------------------------


def model_figures(
    model: nn.Module,
    seq_len: int = DEFAULT_SEQ_LEN,
    runs: int = 0,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
    weight_files: Iterable[Path] = (),
) -> dict[str, Any]:
    """Architecture, parameters, FLOPs, disk size and (when `runs` > 0) latency of `model`.

    Latency needs real tensors, so a meta-device model only gets the cheap figures; measuring
    moves the model to `device`.
    """
    _check_seq_len(model, seq_len)
    files = [Path(file) for file in weight_files]
    figures: dict[str, Any] = {
        "architecture": architecture_summary(model),
        "parameters": count_parameters(model),
        "flops": analytic_flops(model, seq_len),
        "disk_bytes": sum(file.stat().st_size for file in files) if files else None,
        "latency": None,
    }
    if runs > 0:
        figures["latency"] = measure_latency(
            model, seq_len=seq_len, runs=runs, batch_sizes=batch_sizes, device=device
        )
    return figures


def summary_figures(model: nn.Module, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, Any]:
    """The cheap figures for a run's summary.json: architecture, parameters, FLOPs; no timing."""
    figures = model_figures(model, seq_len=seq_len, runs=0)
    return {key: figures[key] for key in ("architecture", "parameters", "flops")}


def architecture_summary(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    parameter = next(model.parameters(), None)
    summary: dict[str, Any] = {
        "model_class": type(model).__name__,
        "family": getattr(config, "model_type", None) or type(model).__name__,
        "layers": _config_value(config, "num_hidden_layers"),
        "hidden": _config_value(config, "hidden_size"),
        "heads": _config_value(config, "num_attention_heads"),
        "ffn": _ffn_width(config) if config is not None else None,
        "vocab": _config_value(config, "vocab_size"),
        "max_positions": _config_value(config, "max_position_embeddings"),
        "embedding_size": _config_value(config, "embedding_size"),
        "dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
    }
    # The embedding width is only informative where it differs (ALBERT, ELECTRA-small).
    if summary["embedding_size"] == summary["hidden"]:
        summary["embedding_size"] = None
    return summary


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters by part, each tensor counted once, buffers excluded.

    Tied parameters are the same tensor reached through two module paths; `named_parameters`
    yields both when asked to keep duplicates, and registration order attributes the tensor to
    the part that owns it first (the embeddings, for a tied MLM decoder).
    """
    classify = _part_classifier(model)
    parts = {"embeddings": 0, "encoder": 0, "head": 0}
    seen: set[Any] = set()
    shared = 0
    for name, parameter in model.named_parameters(remove_duplicate=False):
        key = _tensor_identity(parameter)
        if key in seen:
            shared += parameter.numel()
            continue
        seen.add(key)
        parts[classify(name)] += parameter.numel()
    return {
        "total": sum(parts.values()),
        **parts,
        "excluding_output_layers": parts["embeddings"] + parts["encoder"],
        "shared_counted_once": shared,
    }


def _tensor_identity(parameter: torch.Tensor) -> Any:
    # Meta tensors have no storage (every data_ptr is 0), but tied ones are the same object.
    if parameter.device.type == "meta":
        return ("object", id(parameter))
    # Distinct Parameter objects over one storage (views, manual sharing) are one tensor.
    return (
        parameter.device.type,
        parameter.data_ptr(),
        parameter.dtype,
        tuple(parameter.shape),
        tuple(parameter.stride()),
    )


def analytic_flops(model: nn.Module, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, int] | None:
    """FLOPs per example at `seq_len` (see the module docstring for what is and is not counted).

    The encoder follows from the config (an ALBERT layer applied 12 times costs 12 layers even
    though its weights exist once); embeddings projections and heads from their linear modules.
    None for a model without a transformer config (a BiGRU student).
    """
    config = getattr(model, "config", None)
    if config is None or _config_value(config, "num_hidden_layers") is None:
        return None
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = _config_value(config, "head_dim") or hidden // heads
    key_value_heads = _config_value(config, "num_key_value_heads") or heads
    attention_width = heads * head_dim
    key_value_width = key_value_heads * head_dim
    tokens = seq_len

    projections = 2 * tokens * hidden * attention_width  # Q
    projections += 2 * 2 * tokens * hidden * key_value_width  # K and V
    projections += 2 * tokens * attention_width * hidden  # O
    attention = 2 * 2 * tokens * tokens * attention_width  # QKᵀ and attention·V, all heads
    matrices = 3 if _has_gated_ffn(model) else 2
    feed_forward = matrices * 2 * tokens * hidden * _ffn_width(config)
    encoder = config.num_hidden_layers * (projections + attention + feed_forward)

    classify = _part_classifier(model)
    pooled_head = type(model).__name__.endswith(_POOLED_HEAD_CLASS_SUFFIXES)
    embeddings = head = 0
    for name, module in model.named_modules():
        shape = _matmul_shape(module)
        if shape is None:
            continue
        part = classify(name + ".weight")
        if part == "embeddings":
            embeddings += 2 * tokens * shape[0] * shape[1]
        elif part == "head":
            leaf = name.rsplit(".", 1)[-1]
            reads_one_token = "pooler" in name or (pooled_head and leaf not in _EVERY_TOKEN_HEAD_NAMES)
            head += 2 * (1 if reads_one_token else tokens) * shape[0] * shape[1]
    return {
        "seq_len": seq_len,
        "total": embeddings + encoder + head,
        "embeddings": embeddings,
        "encoder": encoder,
        "head": head,
    }


def _matmul_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a module that is one matrix product per token, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    # GPT-2's Conv1D is a linear layer with a transposed (in, out) weight.
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        weight = module.weight
        if weight.dim() == 2:
            return int(weight.shape[0]), int(weight.shape[1])
    return None


def _has_gated_ffn(model: nn.Module) -> bool:
    return any(name.rsplit(".", 1)[-1] in {"gate_proj", "gate_up_proj"} for name, _ in model.named_modules())


def _ffn_width(config) -> int | None:
    for field in ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "hidden_dim"):
        value = _config_value(config, field)
        if isinstance(value, int):
            return value
    hidden = _config_value(config, "hidden_size")
    # GPT-2 stores n_inner=None to mean the conventional 4 × hidden.
    return 4 * hidden if isinstance(hidden, int) else None


def _config_value(config, field: str) -> Any:
    if config is None:
        return None
    try:
        return getattr(config, field, None)
    except AttributeError:
        return None


def _part_classifier(model: nn.Module) -> Callable[[str], str]:
    """A function from a parameter path to "embeddings", "encoder" or "head"."""
    base = getattr(model, "base_model", model)
    base_prefix = ""
    if isinstance(base, nn.Module) and base is not model:
        base_prefix = next((name for name, module in model.named_modules() if module is base), "")
    else:
        base = model
    # Lookup tables whose names do not say "embed" (GPT-2's wte and wpe).
    embedding_children = {name for name, child in base.named_children() if isinstance(child, nn.Embedding)}
    has_distinct_base = bool(base_prefix)

    def classify(path: str) -> str:
        if has_distinct_base:
            if not path.startswith(base_prefix + "."):
                return "head"
            path = path[len(base_prefix) + 1 :]
        segments = path.split(".")
        first = segments[0]
        if "pooler" in first or (not has_distinct_base and first in _HEAD_MODULE_NAMES):
            return "head"
        if "embed" in first.lower() or first in embedding_children:
            return "embeddings"
        if any(segment in _EMBEDDING_PROJECTION_NAMES for segment in segments):
            return "embeddings"
        return "encoder"

    return classify


def _check_seq_len(model: nn.Module, seq_len: int) -> None:
    if seq_len < 1:
        raise BrewerError(f"seq_len must be at least 1, got {seq_len}.")
    usable = _usable_positions(model)
    if usable is not None and seq_len > usable:
        raise ModelError(
            f"seq_len {seq_len} is longer than the {usable} positions {type(model).__name__} has "
            f"position embeddings for; choose a seq_len of at most {usable}."
        )


def _usable_positions(model: nn.Module) -> int | None:
    """How many tokens the learned position table covers; None when there is no such table.

    Only a learned table is a hard limit (rotary models merely degrade beyond their nominal
    length). RoBERTa-style tables start counting after the padding index, so 514 rows hold 512
    positions.
    """
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and (leaf in {"position_embeddings", "wpe", "embed_positions"}):
            offset = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - offset
    return None


# ---------------------------------------------------------------------------------------------
# Latency.
# ---------------------------------------------------------------------------------------------


def check_device(device: str) -> None:
    if device != "cpu" and not device.startswith("cuda"):
        raise BrewerError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BrewerError(
            f"device {device!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu."
        )


def measure_latency(
    model: nn.Module,
    seq_len: int = DEFAULT_SEQ_LEN,
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Median and p90 milliseconds per batch and examples per second, for each batch size."""
    check_device(device)
    if runs < 1:
        raise BrewerError(f"latency needs at least one timed run, got runs={runs}.")
    if any(parameter.device.type == "meta" for parameter in model.parameters()):
        raise ValueError("latency needs a model with real tensors, not one on the meta device")
    vocab_size = _config_value(getattr(model, "config", None), "vocab_size")
    if not isinstance(vocab_size, int):
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab_size = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else 2
    was_training = model.training
    model.to(device).eval()
    # Fixed inputs so two models in one report see the same token ids.
    generator = torch.Generator().manual_seed(0)
    results = []
    try:
        for batch_size in batch_sizes:
            if batch_size < 1:
                raise BrewerError(f"batch sizes must be positive, got {batch_size}.")
            input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
            attention_mask = torch.ones_like(input_ids)
            timings_ms = []
            with torch.inference_mode():
                for index in range(WARMUP_RUNS + runs):
                    _synchronize(device)
                    start = time.perf_counter()
                    model(input_ids=input_ids, attention_mask=attention_mask)
                    _synchronize(device)
                    if index >= WARMUP_RUNS:
                        timings_ms.append((time.perf_counter() - start) * 1000.0)
            median_ms = statistics.median(timings_ms)
            results.append(
                {
                    "batch_size": batch_size,
                    "median_ms": median_ms,
                    "p90_ms": _percentile(timings_ms, 90.0),
                    "examples_per_second": batch_size / (median_ms / 1000.0),
                }
            )
    finally:
        model.train(was_training)
    return results


def _synchronize(device: str) -> None:
    # CUDA kernels run asynchronously; without a sync the timer measures only the launch.
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _percentile(values: Sequence[float], percent: float) -> float:
    """Linear interpolation between closest ranks (numpy's default definition)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------


def _target_figures(
    size_target: SizeTarget,
    role: str,
    seq_len: int,
    runs: int,
    batch_sizes: Sequence[int],
    device: str,
) -> dict[str, Any]:
    # Counts and FLOPs need only the module tree; weights are read only to time the model.
    model = size_target.build("cpu" if runs > 0 else "meta")
    figures = model_figures(
        model,
        seq_len=seq_len,
        runs=runs,
        batch_sizes=batch_sizes,
        device=device,
        weight_files=size_target.weight_files(),
    )
    return {
        "name": size_target.target,
        "role": role,
        "source": size_target.kind,
        "location": size_target.location,
        "config_only": not size_target.has_weights,
        "random_weights": not size_target.has_weights and runs > 0,
        **figures,
    }


def compare(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Teacher ÷ student for sizes and costs (bigger = better student); student ÷ teacher for speed."""
    latency = None
    if student["latency"] and teacher["latency"]:
        teacher_by_batch = {entry["batch_size"]: entry for entry in teacher["latency"]}
        latency = []
        for entry in student["latency"]:
            other = teacher_by_batch.get(entry["batch_size"])
            if other is None:
                continue
            latency.append(
                {
                    "batch_size": entry["batch_size"],
                    "faster_by": _ratio(other["median_ms"], entry["median_ms"]),
                    "faster_by_p90": _ratio(other["p90_ms"], entry["p90_ms"]),
                    "throughput_ratio": _ratio(entry["examples_per_second"], other["examples_per_second"]),
                }
            )
    return {
        "parameters_smaller_by": _ratio(teacher["parameters"]["total"], student["parameters"]["total"]),
        "excluding_output_layers_smaller_by": _ratio(
            teacher["parameters"]["excluding_output_layers"], student["parameters"]["excluding_output_layers"]
        ),
        "disk_smaller_by": _ratio(teacher["disk_bytes"], student["disk_bytes"]),
        "flops_fewer_by": _ratio(
            (teacher["flops"] or {}).get("total"), (student["flops"] or {}).get("total")
        ),
        "latency": latency,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _notes(report: dict[str, Any]) -> list[str]:
    notes = [
        "Excluding output layers = embeddings + encoder (no pooler, no task head), the figure "
        "TextBrewer's Table 3 reports.",
        f"FLOPs per example at {report['seq_len']} tokens = 2 × multiply-adds of every matrix "
        "product (Q/K/V/O, QKᵀ, attention·V, feed-forward, factorized-embedding projection, head); "
        "embedding lookups, softmax, LayerNorm, activations, biases and residual additions are "
        "not counted.",
    ]
    if report["runs"] > 0:
        threads = f", {torch.get_num_threads()} CPU threads" if report["device"] == "cpu" else ""
        notes.append(
            f"Latency: median and p90 ms per batch over {report['runs']} runs after "
            f"{WARMUP_RUNS} warm-up runs, random token ids of length {report['seq_len']} without "
            f"padding, torch.inference_mode, eval mode, on {report['device']}{threads}."
        )
    for model in report["models"]:
        if model["random_weights"]:
            notes.append(
                f"{model['name']} is a config without weights: it was timed with random weights "
                "(the timing does not depend on the values)."
            )
        elif model["config_only"]:
            notes.append(f"{model['name']} is a config without weights: no size on disk.")
        if model["parameters"]["shared_counted_once"]:
            notes.append(
                f"{model['name']}: {model['parameters']['shared_counted_once']:,} tied or shared "
                "parameter values are counted once."
            )
    return notes


def build_report(
    target: str,
    against: str | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
) -> dict[str, Any]:
    """The report as a JSON-ready dict, without printing anything."""
    if seq_len < 1:
        raise BrewerError(f"--seq-len must be at least 1, got {seq_len}.")
    if runs < 0:
        raise BrewerError(f"--runs must be 0 (skip latency) or more, got {runs}.")
    batch_sizes = tuple(int(size) for size in batch_sizes)
    if runs > 0 and not batch_sizes:
        raise BrewerError("latency needs at least one batch size; pass --runs 0 to skip latency.")
    if any(size < 1 for size in batch_sizes):
        raise BrewerError(f"batch sizes must be positive, got {list(batch_sizes)}.")
    check_device(device)
    # Resolve both before building either, so a misspelled teacher fails before any loading.
    targets = [(resolve_target(target), "target")]
    if against is not None:
        targets.append((resolve_target(against), "against"))
    models = [
        _target_figures(size_target, role, seq_len, runs, batch_sizes, device)
        for size_target, role in targets
    ]
    report: dict[str, Any] = {
        "seq_len": seq_len,
        "runs": runs,
        "batch_sizes": list(batch_sizes) if runs > 0 else [],
        "device": device,
        "models": models,
        "comparison": compare(models[0], models[1]) if len(models) == 2 else None,
    }
    report["notes"] = _notes(report)
    return report


def run(
    target: str,
    against: str | None = None,
    seq_len: int = DEFAULT_SEQ_LEN,
    runs: int = 10,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
    as_json: bool = False,
    markdown: bool = False,
    plot_path: str | None = None,
    console=None,
) -> dict:
    """Build the report for `target` (and `against`, its teacher), print it and return it."""
    if as_json and markdown:
        raise BrewerError("choose one output format: --json or --markdown, not both.")
    if plot_path is not None and runs == 0:
        raise BrewerError("the plot shows latency at batch size 1, which --runs 0 skips; use --runs 1 or more.")
    if plot_path is not None and 1 not in batch_sizes:
        raise BrewerError("the plot shows latency at batch size 1; include 1 among the batch sizes.")
    if console is None:
        from rich.console import Console

        console = Console()
    report = build_report(target, against, seq_len=seq_len, runs=runs, batch_sizes=batch_sizes, device=device)
    if as_json:
        _print_plain(console, to_json(report))
    elif markdown:
        _print_plain(console, to_markdown(report))
    else:
        render_table(report, console)
    if plot_path is not None:
        written = plot(report, plot_path)
        if not as_json:
            console.print(f"plot written to {written}", markup=False, highlight=False)
    return report


def _print_plain(console, text: str) -> None:
    # Machine-readable output: no markup, highlighting, emoji codes or hard wrapping.
    console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------


def _format_count(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return str(value)


def _format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if value >= threshold:
            return f"{value / threshold:.1f} {suffix}"
    return f"{value} B"


def _format_flops(value: int | None) -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "KFLOPs")):
        if value >= threshold:
            return f"{value / threshold:.2f} {suffix}"
    return f"{value} FLOPs"


def _format_ratio(value: float | None, word: str = "") -> str:
    if value is None:
        return ""
    return f"{value:.2f}×{' ' + word if word else ''}"


def _format_value(value: Any) -> str:
    return "—" if value is None else str(value)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    """Label, one cell per model and (with a teacher) the ratio cell, for table and markdown."""
    models = report["models"]
    comparison = report["comparison"]
    rows: list[list[str]] = []

    def add(label: str, cells: list[str], ratio: str = "") -> None:
        rows.append([label, *cells] + ([ratio] if comparison else []))

    add("source", [f"{model['source']}: {model['location']}" for model in models])
    architectures = [model["architecture"] for model in models]
    add("model class", [architecture["model_class"] for architecture in architectures])
    add("family", [_format_value(architecture["family"]) for architecture in architectures])
    for label, key in (
        ("layers", "layers"),
        ("hidden", "hidden"),
        ("heads", "heads"),
        ("FFN", "ffn"),
        ("vocab", "vocab"),
        ("max positions", "max_positions"),
        ("embedding size", "embedding_size"),
    ):
        if key == "embedding_size" and all(architecture[key] is None for architecture in architectures):
            continue
        add(label, [_format_value(architecture[key]) for architecture in architectures])

    parameters = [model["parameters"] for model in models]
    add(
        "parameters",
        [_format_count(count["total"]) for count in parameters],
        _format_ratio(comparison and comparison["parameters_smaller_by"], "smaller"),
    )
    add("  embeddings", [_format_count(count["embeddings"]) for count in parameters])
    add("  encoder", [_format_count(count["encoder"]) for count in parameters])
    add("  head (incl. pooler)", [_format_count(count["head"]) for count in parameters])
    add(
        "excluding output layers",
        [_format_count(count["excluding_output_layers"]) for count in parameters],
        _format_ratio(comparison and comparison["excluding_output_layers_smaller_by"], "smaller"),
    )
    add(
        "weights on disk",
        [_format_bytes(model["disk_bytes"]) for model in models],
        _format_ratio(comparison and comparison["disk_smaller_by"], "smaller"),
    )
    add(
        f"FLOPs / example @ {report['seq_len']}",
        [_format_flops((model["flops"] or {}).get("total")) for model in models],
        _format_ratio(comparison and comparison["flops_fewer_by"], "fewer"),
    )
    ratios_by_batch = {entry["batch_size"]: entry for entry in (comparison or {}).get("latency") or []}
    for batch_size in report["batch_sizes"]:
        entries = [
            next((entry for entry in model["latency"] or [] if entry["batch_size"] == batch_size), None)
            for model in models
        ]
        ratio = ratios_by_batch.get(batch_size, {})
        add(
            f"latency batch {batch_size} (median / p90)",
            [f"{entry['median_ms']:.2f} / {entry['p90_ms']:.2f} ms" if entry else "—" for entry in entries],
            _format_ratio(ratio.get("faster_by"), "faster"),
        )
        add(
            f"throughput batch {batch_size}",
            [f"{entry['examples_per_second']:.1f} ex/s" if entry else "—" for entry in entries],
            _format_ratio(ratio.get("throughput_ratio")),
        )
    return rows


def _headers(report: dict[str, Any]) -> list[str]:
    headers = [""] + [model["name"] for model in report["models"]]
    if report["comparison"]:
        headers.append("teacher ÷ student")
    return headers


def render_table(report: dict[str, Any], console) -> None:
    """Print the report as a rich table followed by the definitions behind its figures."""
    from rich.table import Table

    table = Table(title=f"size report (sequence length {report['seq_len']}, {report['device']})")
    for index, header in enumerate(_headers(report)):
        table.add_column(header, justify="left" if index == 0 else "right", overflow="fold")
    for row in _rows(report):
        table.add_row(*row)
    console.print(table)
    for note in report["notes"]:
        console.print(f"• {note}", markup=False, highlight=False)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)


def to_markdown(report: dict[str, Any]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    headers = _headers(report)
    lines = [
        "| " + " | ".join(cell(header) for header in headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in _rows(report)]
    lines.append("")
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Parameters (x) against median latency at batch size 1 (y), one labelled point per model."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise BrewerError(
            "the size-report plot needs matplotlib, which is not installed; install it with "
            "pip install 'brewer[plot]' (or pip install matplotlib)."
        ) from error
    points = []
    for model in report["models"]:
        batch_one = next((entry for entry in model["latency"] or [] if entry["batch_size"] == 1), None)
        if batch_one is None:
            raise BrewerError(
                f"the plot shows latency at batch size 1, which was not measured for {model['name']}; "
                "measure it with runs > 0 and 1 among the batch sizes."
            )
        label = model["name"] + (" (random weights)" if model["random_weights"] else "")
        points.append((model["parameters"]["total"] / 1e6, batch_one["median_ms"], label))

    # Figure + Agg canvas instead of pyplot: no global backend state, no display needed.
    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for parameters, latency, label in points:
        axes.scatter([parameters], [latency])
        axes.annotate(label, (parameters, latency), textcoords="offset points", xytext=(6, 6))
    axes.set_xlabel("parameters (millions)")
    axes.set_ylabel("latency at batch size 1 (ms, median)")
    axes.set_title(f"sequence length {report['seq_len']} on {report['device']}")
    # Start both axes at zero so distances read as ratios; leave room for the labels.
    axes.set_xlim(0, max(point[0] for point in points) * 1.3)
    axes.set_ylim(0, max(point[1] for point in points) * 1.3)
    axes.grid(True, alpha=0.3)
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(output, bbox_inches="tight")
    except (ValueError, OSError) as error:
        raise BrewerError(f"could not write the plot to {output}: {error}") from error
    return output
