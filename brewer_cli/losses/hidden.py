"""Match losses on hidden states (B, L, d): one layer per side, or two (`pair`: FSP, NST)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from brewer_cli.losses.base import WIDTH_HINT, check_same_shape, register_match
from brewer_cli.losses.masks import masked_mean, pair_mask, token_mask


def _squared_error_over_valid_tokens(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    valid = token_mask(mask, teacher)
    squared = (student.float() - teacher.float()).pow(2).sum(dim=-1)
    return (squared * valid).sum() / (valid.sum().clamp_min(1.0) * teacher.shape[-1])


@register_match(
    "hidden_mse",
    "mean squared error between hidden states over real tokens",
    feature="hidden",
    needs_equal_width=True,
    token_local=True,
    formula="Σ_valid ‖h_S − h_T‖² / (n_valid · d)",
)
def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    check_same_shape("hidden_mse", student, teacher, WIDTH_HINT)
    return _squared_error_over_valid_tokens(student, teacher, mask)


@register_match(
    "cos",
    "cosine distance between hidden states over real tokens",
    feature="hidden",
    needs_equal_width=True,
    token_local=True,
    formula="mean over valid tokens of 1 − cos(h_S, h_T)",
)
def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    check_same_shape("cos", student, teacher, WIDTH_HINT)
    # 1 − cos(a, b) = ½‖a/‖a‖ − b/‖b‖‖²: the same value, but exactly 0 for equal inputs where
    # dot / (‖a‖‖b‖) can round to 0.99999994.
    distance = 0.5 * (F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)).pow(2).sum(dim=-1)
    return masked_mean(distance, token_mask(mask, teacher))


@register_match(
    "pkd",
    "patient-KD distance between normalized [CLS] states",
    feature="hidden",
    needs_equal_width=True,
    formula="mean over the batch of ‖h_S[:,0]/‖h_S[:,0]‖ − h_T[:,0]/‖h_T[:,0]‖‖²",
)
def pkd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    # The mask is not needed: position 0 ([CLS]) is a real token in every example.
    check_same_shape("pkd", student, teacher, WIDTH_HINT)
    first_student = F.normalize(student[:, 0].float(), dim=-1)
    first_teacher = F.normalize(teacher[:, 0].float(), dim=-1)
    return (first_student - first_teacher).pow(2).sum(dim=-1).mean()


@register_match(
    "tinybert_hidden",
    "TinyBERT hidden/embedding MSE through one shared projection",
    feature="hidden",
    needs_equal_width=True,
    token_local=True,
    shared_projection=True,
    formula="Σ_valid ‖W h_S − h_T‖² / (n_valid · d), one W for all layers and the embeddings",
)
def tinybert_hidden(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    check_same_shape("tinybert_hidden", student, teacher, WIDTH_HINT)
    return _squared_error_over_valid_tokens(student, teacher, mask)


@register_match(
    "nst_kernel",
    "neuron selectivity transfer: polynomial-kernel MMD² of normalized features",
    feature="hidden",
    formula=(
        "per example, samples = feature channels unit-normalized over valid tokens, k(x,y) = (xᵀy)²: "
        "MMD² = mean k(s,s') + mean k(t,t') − 2 mean k(s,t) = ‖S Sᵀ/d_S − T Tᵀ/d_T‖²_F; mean over the batch"
    ),
)
def nst_kernel(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """True NST (Huang & Wang 2017) with the polynomial kernel of degree 2 and c = 0.

    As in the paper, each feature channel is one sample — its activation pattern over positions,
    here the valid tokens — normalized to unit length. Samples of both models then live in the
    same space (one coordinate per token), so student and teacher widths may differ. With
    k(x, y) = (xᵀy)², Σ_ij k(s_i, t_j) = ‖SᵀT‖²_F = ⟨S Sᵀ, T Tᵀ⟩, hence
    MMD² = ‖S Sᵀ/d_S − T Tᵀ/d_T‖²_F: an (L × L) computation, never negative from rounding.
    """
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"nst_kernel: student tokens {tuple(student.shape[:2])} differ from teacher tokens {tuple(teacher.shape[:2])}"
        )
    valid = token_mask(mask, teacher).unsqueeze(-1)
    # Padding rows are zeroed before normalizing over the token axis, so they neither count in
    # the norms nor appear in the relations.
    student_channels = F.normalize(student.float() * valid, dim=1)
    teacher_channels = F.normalize(teacher.float() * valid, dim=1)
    student_relation = student_channels @ student_channels.transpose(1, 2) / student.shape[-1]
    teacher_relation = teacher_channels @ teacher_channels.transpose(1, 2) / teacher.shape[-1]
    return (student_relation - teacher_relation).pow(2).sum(dim=(1, 2)).mean()


# ── pairs of hidden states ──


def _unpack_pair(what: str, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if len(student) != 2 or len(teacher) != 2:
        raise ValueError(f"{what} reads two layers per side: pass (first, second) for student and teacher")
    return student[0], student[1], teacher[0], teacher[1]


@register_match(
    "fsp",
    "FSP / Gram-matrix MSE between two layers (feature-channel relations)",
    feature="hidden",
    pair=True,
    needs_equal_width=True,
    aliases=("gram",),
    formula="G = X₀ᵀX₁ / n_valid per example (d×d, valid tokens); mean over elements of (G_S − G_T)²",
)
def fsp_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    student_first, student_second, teacher_first, teacher_second = _unpack_pair("fsp", student, teacher)
    check_same_shape("fsp (first layer)", student_first, teacher_first, WIDTH_HINT)
    check_same_shape("fsp (second layer)", student_second, teacher_second, WIDTH_HINT)
    valid = token_mask(mask, teacher_first).unsqueeze(-1)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, 1): n_valid per example

    def gram(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return (first.float() * valid).transpose(1, 2) @ (second.float() * valid) / count

    return F.mse_loss(gram(student_first, student_second), gram(teacher_first, teacher_second))


@register_match(
    "nst",
    "TextBrewer's NST/MMD: MSE between token-relation matrices of two layers",
    feature="hidden",
    pair=True,
    aliases=("mmd",),
    formula="G = X₀X₁ᵀ / d per example (L×L, d each side's width); mean over valid (i, j) of (G_S − G_T)²",
)
def nst_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    student_first, student_second, teacher_first, teacher_second = _unpack_pair("nst", student, teacher)
    if student_first.shape[:2] != teacher_first.shape[:2]:
        raise ValueError(
            f"nst: student tokens {tuple(student_first.shape[:2])} differ from teacher tokens {tuple(teacher_first.shape[:2])}"
        )
    student_relation = student_first.float() @ student_second.float().transpose(1, 2) / student_second.shape[-1]
    teacher_relation = teacher_first.float() @ teacher_second.float().transpose(1, 2) / teacher_second.shape[-1]
    difference = student_relation - teacher_relation
    pairs = pair_mask(mask, teacher_relation)
    return (difference.pow(2) * pairs).sum() / pairs.sum().clamp_min(1.0)
