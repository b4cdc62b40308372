"""Figures of one model: architecture summary, parameters by part, analytic FLOPs, disk size and,
when asked, latency. Where each part of a model lives is the family's knowledge
(brewer_cli/families): a registered family (GPT-2 and Llama among them) answers from its declared layout, any other model
(OPT, a BiGRU student) from the generic layout there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.families import layout_for, parameter_counts_by_part
from brewer_cli.families.generic import config_value
from brewer_cli.families.layout import EMBEDDINGS, HEAD, POOLER
from brewer_cli.size_report.latency import DEFAULT_BATCH_SIZES, DEFAULT_SEQ_LEN, measure_latency

# Task heads that read one pooled token (the first, or the pooler's output), by transformers'
# class naming; other heads (token classification, LM) read every token.
_POOLED_HEAD_CLASS_SUFFIXES = ("ForSequenceClassification", "ForMultipleChoice")


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
        "parameters": parameter_counts_by_part(model),
        "flops": analytic_flops(model, seq_len),
        "disk_bytes": sum(file.stat().st_size for file in files) if files else None,
        "latency": None,
    }
    if runs > 0:
        figures["latency"] = measure_latency(model, seq_len=seq_len, runs=runs, batch_sizes=batch_sizes, device=device)
    return figures


def summary_figures(model: nn.Module, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, Any]:
    """The cheap figures for a run's summary.json: architecture, parameters, FLOPs; no timing."""
    figures = model_figures(model, seq_len=seq_len, runs=0)
    return {key: figures[key] for key in ("architecture", "parameters", "flops")}


def architecture_summary(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    layout = layout_for(model)
    parameter = next(model.parameters(), None)
    summary: dict[str, Any] = {
        "model_class": type(model).__name__,
        "family": getattr(config, "model_type", None) or type(model).__name__,
        "layers": config_value(config, "num_hidden_layers"),
        "hidden": config_value(config, "hidden_size"),
        "heads": config_value(config, "num_attention_heads"),
        "ffn": layout.ffn_width(config) if config is not None else None,
        "vocab": config_value(config, "vocab_size"),
        "max_positions": config_value(config, "max_position_embeddings"),
        "embedding_size": layout.embedding_size(config) if config is not None else None,
        "dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
    }
    # The embedding width is only informative where it differs (ALBERT, ELECTRA-small).
    if summary["embedding_size"] == summary["hidden"]:
        summary["embedding_size"] = None
    return summary


def analytic_flops(model: nn.Module, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, int] | None:
    """FLOPs per example at `seq_len` (see the package docstring for what is and is not counted).

    The encoder follows from the config (an ALBERT layer applied 12 times costs 12 layers even
    though its weights exist once); embeddings projections and heads from their linear modules.
    None for a model without a transformer config (a BiGRU student).
    """
    config = getattr(model, "config", None)
    if config is None or config_value(config, "num_hidden_layers") is None:
        return None
    layout = layout_for(model)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = config_value(config, "head_dim") or hidden // heads
    key_value_heads = config_value(config, "num_key_value_heads") or heads
    attention_width = heads * head_dim
    key_value_width = key_value_heads * head_dim
    tokens = seq_len

    projections = 2 * tokens * hidden * attention_width  # Q
    projections += 2 * 2 * tokens * hidden * key_value_width  # K and V
    projections += 2 * tokens * attention_width * hidden  # O
    attention = 2 * 2 * tokens * tokens * attention_width  # QKᵀ and attention·V, all heads
    feed_forward = layout.ffn_matrices(model) * 2 * tokens * hidden * layout.ffn_width(config)
    encoder = config.num_hidden_layers * (projections + attention + feed_forward)

    part_of = layout.part_classifier(model)
    pooled_head = type(model).__name__.endswith(_POOLED_HEAD_CLASS_SUFFIXES)
    embeddings = head = 0
    for name, module in model.named_modules():
        shape = _matmul_shape(module)
        if shape is None:
            continue
        part = part_of(name + ".weight")
        if part == EMBEDDINGS:
            embeddings += 2 * tokens * shape[0] * shape[1]
        elif part in (POOLER, HEAD):
            reads_one_token = part == POOLER or (pooled_head and not layout.head_reads_every_token(name))
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


def _check_seq_len(model: nn.Module, seq_len: int) -> None:
    if seq_len < 1:
        raise BrewerError(f"seq_len must be at least 1, got {seq_len}.")
    usable = usable_positions(model)
    if usable is not None and seq_len > usable:
        raise ModelError(
            f"seq_len {seq_len} is longer than the {usable} positions {type(model).__name__} has "
            f"position embeddings for; choose a seq_len of at most {usable}."
        )


def usable_positions(model: nn.Module) -> int | None:
    """How many tokens the learned position table covers; None when there is no such table.

    Only a learned table is a hard limit (rotary models merely degrade beyond their nominal
    length). RoBERTa-style tables start counting after the padding index, so 514 rows hold 512
    positions.
    """
    table = layout_for(model).position_embeddings(model)
    if table is None:
        return None
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    return table.num_embeddings - offset
