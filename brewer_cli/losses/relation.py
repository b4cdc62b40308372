"""MiniLM's self-relation losses over the attention inputs: the value relation head by head
(MiniLM), and query/key/value relations over re-split relation heads (MiniLMv2)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from brewer_cli.features import AttentionInputs
from brewer_cli.losses.attention import check_inputs_heads, distribution_loss, split_heads
from brewer_cli.losses.base import register_match


def _self_relation(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax input XXᵀ/√(d/heads) per head: (B, heads, L, L)."""
    split = split_heads(projection, heads)
    return split @ split.transpose(-1, -2) / math.sqrt(split.shape[-1])


def _value(what: str, inputs: AttentionInputs, side: str) -> torch.Tensor:
    if inputs.value is None:
        raise ValueError(f"{what} needs the value projections, but the {side}'s attention inputs carry none")
    return inputs.value


@register_match(
    "minilm_value_relation",
    "MiniLM value-relation KL, head by head",
    feature="attention_inputs",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of KL(softmax(VVᵀ/√d_k)_T ‖ softmax(VVᵀ/√d_k)_S) over valid keys",
)
def minilm_value_relation(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    check_inputs_heads("minilm_value_relation", student, teacher, relation_heads)
    return distribution_loss(
        _self_relation(_value("minilm_value_relation", student, "student"), student.num_heads),
        _self_relation(_value("minilm_value_relation", teacher, "teacher"), teacher.num_heads),
        mask,
        subtract_teacher_entropy=True,
    )


def _relation_loss(
    what: str,
    pick: Callable[[AttentionInputs, str], torch.Tensor],
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None,
    relation_heads: int | None,
) -> torch.Tensor:
    # MiniLMv2 re-splits both models' projections into the same number of relation heads, so the
    # models' own head counts (and widths) may differ; the default follows the teacher.
    heads = teacher.num_heads if relation_heads is None else relation_heads
    student_projection, teacher_projection = pick(student, "student"), pick(teacher, "teacher")
    for side, projection in (("student", student_projection), ("teacher", teacher_projection)):
        if heads < 1 or projection.shape[-1] % heads:
            raise ValueError(
                f"{what}: the {side}'s width {projection.shape[-1]} is not divisible by relation_heads={heads}; "
                "choose a relation head count that divides both the student and the teacher width"
            )
    return distribution_loss(
        _self_relation(student_projection, heads),
        _self_relation(teacher_projection, heads),
        mask,
        subtract_teacher_entropy=True,
    )


_RELATION_FORMULA = (
    "split d into r relation heads (default r = teacher heads); mean over r heads and valid queries of "
    "KL(softmax(XXᵀ/√(d/r))_T ‖ softmax(XXᵀ/√(d/r))_S) over valid keys, X = {}"
)


@register_match(
    "relation_qq",
    "MiniLMv2 query-query self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("queries"),
)
def relation_qq(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss("relation_qq", lambda inputs, side: inputs.query, student, teacher, mask, relation_heads)


@register_match(
    "relation_kk",
    "MiniLMv2 key-key self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("keys"),
)
def relation_kk(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss("relation_kk", lambda inputs, side: inputs.key, student, teacher, mask, relation_heads)


@register_match(
    "relation_vv",
    "MiniLMv2 value-value self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("values"),
)
def relation_vv(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss(
        "relation_vv", lambda inputs, side: _value("relation_vv", inputs, side), student, teacher, mask, relation_heads
    )
