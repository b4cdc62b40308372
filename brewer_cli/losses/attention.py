"""Match losses on attention: pre-softmax scores (B, h, L, L), and MiniLM's attention
distribution computed from the layers' query/key projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from brewer_cli.features import AttentionInputs
from brewer_cli.losses.base import HEADS_HINT, check_same_shape, full_precision, register_match
from brewer_cli.losses.masks import EXCLUDED, masked_mean, pair_mask, score_tokens


def _check_scores(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{what}: attention scores must be (batch, heads, length, length)")


def _check_heads(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _check_scores(what, student, teacher)
    check_same_shape(what, student, teacher, HEADS_HINT)


def _scores_mse_over_valid_pairs(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Entries at masked keys (and masked queries) are zeroed on both sides and left out of the
    # count, as in TextBrewer's masked att_mse_loss.
    check_same_shape("attention scores", student, teacher)
    return masked_mean((student.float() - teacher.float()).pow(2), pair_mask(mask, teacher) > 0)


def distribution_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None,
    subtract_teacher_entropy: bool,
) -> torch.Tensor:
    """Per query row: softmax over valid keys; CE (or KL) teacher → student; mean over valid
    query rows and heads. Scores are (B, [h,] L, L)."""
    check_same_shape("attention scores", student_scores, teacher_scores)
    tokens = score_tokens(mask, teacher_scores)
    heads = (1,) * (teacher_scores.dim() - 3)
    valid_keys = tokens.view(tokens.shape[0], *heads, 1, tokens.shape[1]) > 0
    valid_queries = tokens.view(tokens.shape[0], *heads, tokens.shape[1]) > 0
    teacher_log_probabilities = F.log_softmax(teacher_scores.float().masked_fill(~valid_keys, EXCLUDED), dim=-1)
    student_log_probabilities = F.log_softmax(student_scores.float().masked_fill(~valid_keys, EXCLUDED), dim=-1)
    if subtract_teacher_entropy:
        terms = teacher_log_probabilities.exp() * (teacher_log_probabilities - student_log_probabilities)
    else:
        terms = -teacher_log_probabilities.exp() * student_log_probabilities
    per_query = torch.where(valid_keys, terms, torch.zeros_like(terms)).sum(dim=-1)
    return masked_mean(per_query, valid_queries)


@register_match(
    "attention_mse",
    "MSE between attention scores, head by head",
    feature="attention",
    needs_equal_heads=True,
    formula="mean over heads and valid (query, key) pairs of (A_S − A_T)², A = pre-softmax scores",
)
def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_heads("attention_mse", student, teacher)
    return _scores_mse_over_valid_pairs(student, teacher, mask)


@register_match(
    "attention_ce",
    "cross-entropy between attention distributions, head by head",
    feature="attention",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of −Σ_valid keys softmax(A_T) · log softmax(A_S)",
)
def attention_ce(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_heads("attention_ce", student, teacher)
    return distribution_loss(student, teacher, mask, subtract_teacher_entropy=False)


@register_match(
    "attention_mse_sum",
    "MSE between attention scores summed over heads (any head counts)",
    feature="attention",
    formula="mean over valid (query, key) pairs of (Σ_h A_S − Σ_h A_T)²",
)
def attention_mse_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_scores("attention_mse_sum", student, teacher)
    return _scores_mse_over_valid_pairs(student.float().sum(dim=1), teacher.float().sum(dim=1), mask)


@register_match(
    "attention_ce_mean",
    "cross-entropy between head-averaged attention distributions (any head counts)",
    feature="attention",
    formula="mean over valid queries of −Σ_valid keys softmax(mean_h A_T) · log softmax(mean_h A_S)",
)
def attention_ce_mean(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_scores("attention_ce_mean", student, teacher)
    return distribution_loss(student.float().mean(dim=1), teacher.float().mean(dim=1), mask, subtract_teacher_entropy=False)


@register_match(
    "tinybert_attention",
    "TinyBERT MSE between pre-softmax attention scores",
    feature="attention",
    needs_equal_heads=True,
    formula="Σ over heads and valid (query, key) pairs of (A_S − A_T)² / (h · Σ_b n_b²), n_b = valid tokens of example b",
)
def tinybert_attention(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT's attention loss, divided by the number of valid (query, key) pairs per head.

    TinyBERT's code takes the mean over all B·h·L·L entries, padded ones included (zeroed); it pads
    every batch to max_seq_length, so its divisor is a constant. brewer pads each batch to its
    longest example, where that divisor would make the same examples' loss shrink with the padding
    (the attention/hidden balance would change from batch to batch and with `group_by_length`).
    Counting only valid pairs keeps the loss the same however the batch is padded; it then equals
    `attention_mse`, kept as TinyBERT's own name for recipes that follow the paper.
    """
    _check_heads("tinybert_attention", student, teacher)
    return _scores_mse_over_valid_pairs(student, teacher, mask)


# ── attention inputs (MiniLM) ──


def split_heads(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) → (B, heads, L, d / heads)."""
    batch, length, width = projection.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    return projection.float().reshape(batch, length, heads, width // heads).transpose(1, 2)


@full_precision
def attention_scores_from_inputs(inputs: AttentionInputs) -> torch.Tensor:
    """Pre-softmax attention scores QKᵀ/√d_k, (B, h, L, L), fp32, from a layer's query/key projections."""
    query = split_heads(inputs.query, inputs.num_heads)
    key = split_heads(inputs.key, inputs.num_heads)
    return query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])


def check_inputs_heads(what: str, student: AttentionInputs, teacher: AttentionInputs, relation_heads: int | None) -> None:
    if relation_heads is not None:
        raise ValueError(f"{what} compares the models' own heads; relation_heads applies to relation_qq/kk/vv only")
    if student.num_heads != teacher.num_heads:
        raise ValueError(f"{what}: student has {student.num_heads} heads, teacher {teacher.num_heads}{HEADS_HINT}")


@register_match(
    "minilm_attention",
    "MiniLM self-attention distribution KL, head by head",
    feature="attention_inputs",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of KL(softmax(QKᵀ/√d_k)_T ‖ softmax(QKᵀ/√d_k)_S) over valid keys",
)
def minilm_attention(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    check_inputs_heads("minilm_attention", student, teacher, relation_heads)
    return distribution_loss(
        attention_scores_from_inputs(student),
        attention_scores_from_inputs(teacher),
        mask,
        subtract_teacher_entropy=True,
    )
