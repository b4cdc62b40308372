"""What distillation losses read from a forward pass: typed containers of tensors, shared by the
model families (which fill them) and the losses (which read them), so that losses need no model code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class AttentionInputs:
    """The query, key and value projections of one layer, before they are split into heads.

    Each tensor is (B, L, d_model); `num_heads` says how the model splits them. MiniLM losses
    read these (value relations, re-split relation heads); attention scores are derived from them.
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor | None
    num_heads: int


@dataclass
class Features:
    """What distillation losses read from a forward pass.

    logits: (B, C) for sequence tasks, (B, L, C) for token tasks, a tuple (start, end) for QA.
    hidden_states: hidden_states[0] is the embedding output, hidden_states[i] layer i; (B, L, d).
    attention_scores: pre-softmax QKᵀ/√d_k per layer, (B, h, L, L), only when a loss needs them.
    attention_inputs: per-layer query/key/value projections, only when a loss needs them.
    attention_mask: (B, L), 1 for real tokens.
    """

    logits: torch.Tensor | tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None
    attention_inputs: tuple[AttentionInputs, ...] | None = None
    labels: torch.Tensor | None = None
    task_loss: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureNeeds:
    """Which features a distiller's losses read; anything not needed is not computed."""

    hidden_states: bool = False
    attention_scores: bool = False
    attention_inputs: bool = False

    def __or__(self, other: FeatureNeeds) -> FeatureNeeds:
        return FeatureNeeds(
            self.hidden_states or other.hidden_states,
            self.attention_scores or other.attention_scores,
            self.attention_inputs or other.attention_inputs,
        )


@dataclass(frozen=True)
class SparseLogits:
    """A teacher's next-token distributions kept sparse (a store written by `brewer capture`):
    per position the top-k token ids and their log-probabilities at the capture temperature, and
    the log of the mass left to the other tokens, spread over them as `tail` says (`zero`: dropped,
    `uniform`: evenly over the V − k others). Every token KD loss accepts it in place of dense
    teacher logits; the temperature has been applied at capture."""

    ids: torch.Tensor  # (B, L, k) long: the teacher's top-k token ids per position
    log_probs: torch.Tensor  # (B, L, k) float: log p_T at the capture temperature
    tail_log_mass: torch.Tensor  # (B, L) float: log(1 − Σ_top-k p_T); -inf when nothing remains
    vocabulary_size: int
    tail: str  # "zero" | "uniform"
