"""Counting parameters: in all, and by part (embeddings, layers, final norm, head), each tensor once.

Tied parameters (an MLM decoder sharing the word embeddings) and shared layers (ALBERT) are one
tensor reached through several module paths: they are counted once, where they are registered
first. Buffers (position ids, masks) are never counted. This is the one parameter counter of
brewer: run summaries, plans, extraction and size-report all read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from brewer_cli.families.layout import EMBEDDINGS, ENCODER, FINAL_NORM, HEAD, POOLER
from brewer_cli.families.registered import layout_for


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


def distinct_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, parameter, repeat) for every path to a parameter, in registration order; `repeat`
    is True when the same tensor was already reached through an earlier path."""
    seen: set[Any] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        key = _tensor_identity(parameter)
        yield name, parameter, key in seen
        seen.add(key)


def parameter_count(model: nn.Module) -> int:
    """How many parameter values `model` holds, shared tensors counted once."""
    return sum(parameter.numel() for _, parameter, repeat in distinct_parameters(model) if not repeat)


def parameter_counts_by_part(model: nn.Module) -> dict[str, int]:
    """Parameters by part: `embeddings` (lookup tables, their norm, a factorized-embedding
    projection), `encoder` (the layers, of an encoder or a decoder), `final_norm` (a pre-LN
    decoder's norm after the last layer; 0 for encoders), `head` (the pooler and everything outside
    the base model; an LM head tied to the token embeddings is the embeddings' matrix, counted
    there once); `excluding_output_layers` = embeddings + encoder + final norm;
    `shared_counted_once` = values reached again through a second path (tied or shared), which
    `total` leaves out."""
    part_of = layout_for(model).part_classifier(model)
    parts = {EMBEDDINGS: 0, ENCODER: 0, FINAL_NORM: 0, HEAD: 0}
    shared = 0
    for name, parameter, repeat in distinct_parameters(model):
        if repeat:
            shared += parameter.numel()
            continue
        part = part_of(name)
        parts[HEAD if part == POOLER else part] += parameter.numel()
    return {
        "total": sum(parts.values()),
        **parts,
        "excluding_output_layers": parts[EMBEDDINGS] + parts[ENCODER] + parts[FINAL_NORM],
        "shared_counted_once": shared,
    }
