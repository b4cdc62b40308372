"""KD on logits: cross-entropy, KL and MSE to the teacher's temperature-scaled logits, summed
over logits heads (`kd_loss`), and the probability shift of the teacher's logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from brewer_cli.features import SparseLogits
from brewer_cli.losses.base import check_same_shape
from brewer_cli.losses.masks import EXCLUDED, logits_masks, masked_mean
from brewer_cli.registry import Registry

Logits = torch.Tensor | Sequence[torch.Tensor]
Temperature = float | torch.Tensor

KD_LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("KD loss")

# The KD losses that compare softmax distributions over the classes. With one logit (a regression
# head) the softmax is the constant 1, so these losses are 0 with zero gradient: validation refuses
# them for a one-logit task (distillers/basic.py). The token KD losses (token_kd.py) are all of them.
SOFTMAX_KD_LOSSES = frozenset({"ce", "kl", "forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"})


def _row_temperature(temperature: Temperature, row_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """τ as an fp32 tensor of the logits' row shape (every axis but the class axis).

    A (B,) temperature on token logits (B, L, C) is one temperature per sequence, so the missing
    trailing axes are added before broadcasting (plain broadcasting would align B with L).
    """
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    tau = torch.as_tensor(temperature, dtype=torch.float32, device=device)
    if tau.dim() > len(row_shape):
        raise ValueError(f"temperature of shape {tuple(tau.shape)} has more axes than the logits' rows {tuple(row_shape)}")
    tau = tau.reshape(tuple(tau.shape) + (1,) * (len(row_shape) - tau.dim()))
    try:
        return tau.expand(row_shape)
    except RuntimeError:
        raise ValueError(
            f"temperature of shape {tuple(tau.shape)} does not broadcast to the logits' rows {tuple(row_shape)}"
        ) from None


def _log_probabilities(logits: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    if class_mask is None:
        return F.log_softmax(logits, dim=-1)
    return F.log_softmax(logits.masked_fill(~class_mask, EXCLUDED), dim=-1)


def _drop_excluded(terms: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    return terms if class_mask is None else torch.where(class_mask, terms, torch.zeros_like(terms))


def _cross_entropy_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    teacher_log_probabilities = _log_probabilities(teacher, class_mask)
    student_log_probabilities = _log_probabilities(student, class_mask)
    terms = teacher_log_probabilities.exp() * student_log_probabilities
    return -_drop_excluded(terms, class_mask).sum(dim=-1)


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    # Written as Σ p_T (log p_T − log p_S) rather than CE − H(T): exactly 0 for equal logits.
    teacher_log_probabilities = _log_probabilities(teacher, class_mask)
    student_log_probabilities = _log_probabilities(student, class_mask)
    terms = teacher_log_probabilities.exp() * (teacher_log_probabilities - student_log_probabilities)
    return _drop_excluded(terms, class_mask).sum(dim=-1)


def _mse_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    squared = _drop_excluded((student - teacher).pow(2), class_mask)
    if class_mask is None:
        return squared.mean(dim=-1)
    return squared.sum(dim=-1) / class_mask.sum(dim=-1).clamp_min(1)


def _kd(
    rows: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None,
    temperature_squared: bool,
) -> torch.Tensor:
    if isinstance(teacher_logits, SparseLogits):
        raise ValueError(
            "a sparse teacher (top-k log-probabilities from a store) needs a token KD loss that reads them — "
            "forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl or tv; ce, kl and mse read dense logits"
        )
    check_same_shape("KD logits", student_logits, teacher_logits)
    row_mask, class_mask = logits_masks(student_logits, mask)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):  # see base.full_precision
        tau = _row_temperature(temperature, student_logits.shape[:-1], student_logits.device)
        scaled_student = student_logits.float() / tau.unsqueeze(-1)
        scaled_teacher = teacher_logits.float() / tau.unsqueeze(-1)
        per_row = rows(scaled_student, scaled_teacher, class_mask)
        if temperature_squared:
            # Hinton's τ² keeps the gradient scale independent of τ; per row when τ is per row.
            per_row = per_row * tau.pow(2)
        return masked_mean(per_row, row_mask)


@KD_LOSSES.register("ce", "cross-entropy to the teacher's softened distribution (TextBrewer's default)")
def kd_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows of −Σ_c softmax(z_T/τ)_c · log softmax(z_S/τ)_c."""
    return _kd(_cross_entropy_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


@KD_LOSSES.register("kl", "KL divergence teacher ‖ student on softened distributions")
def kd_kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows of Σ_c p_T,c (log p_T,c − log p_S,c), p = softmax(z/τ): `ce` minus H(p_T)."""
    return _kd(_kl_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


@KD_LOSSES.register("mse", "mean squared error between temperature-scaled logits")
def kd_mean_squared_error(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows and classes of (z_S/τ − z_T/τ)²."""
    return _kd(_mse_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


def kd_loss(
    loss: str | Callable[..., torch.Tensor],
    student_logits: Logits,
    teacher_logits: Logits,
    temperature: Temperature | Sequence[Temperature],
    mask: torch.Tensor | None = None,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """KD loss `loss` (a registered name, or the function it names — what a distiller holds,
    resolved once), summed over logits heads when the logits are a tuple (QA start/end).

    `temperature` is a float, a per-row tensor, or — for several heads — one of those per head
    (a per-row schedule computes a temperature from each head's own logits).
    """
    if isinstance(loss, str):
        loss = KD_LOSSES.get(loss)
    # A sparse teacher (SparseLogits) stands for one head of dense logits.
    if isinstance(student_logits, torch.Tensor) != isinstance(teacher_logits, (torch.Tensor, SparseLogits)):
        raise ValueError("student and teacher logits must both be tensors or both be tuples of heads")
    if isinstance(student_logits, torch.Tensor):
        if isinstance(temperature, (tuple, list)):
            raise ValueError("one temperature per head was given, but the logits are a single tensor")
        return loss(student_logits, teacher_logits, temperature, mask, temperature_squared=temperature_squared)
    if len(student_logits) != len(teacher_logits):
        raise ValueError(f"student has {len(student_logits)} logits heads, teacher has {len(teacher_logits)}")
    if isinstance(temperature, (tuple, list)):
        if len(temperature) != len(student_logits):
            raise ValueError(f"{len(temperature)} temperatures given for {len(student_logits)} logits heads")
        temperatures = list(temperature)
    else:
        temperatures = [temperature] * len(student_logits)
    return sum(
        (
            loss(student, teacher, tau, mask, temperature_squared=temperature_squared)
            for student, teacher, tau in zip(student_logits, teacher_logits, temperatures)
        ),
        start=torch.zeros((), device=student_logits[0].device),
    )


def probability_shift(
    teacher_logits: Logits,
    labels: torch.Tensor | Sequence[torch.Tensor],
    ignore_index: int = -100,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Swap, per row (or per token), the teacher's arg-max logit with the gold label's logit.

    After the swap the teacher's most confident class is always the gold one, while the rest of
    its "dark knowledge" is kept. Rows whose label is `ignore_index` are returned unchanged.
    Works for (B, C) with (B,) labels, (B, L, C) with (B, L) labels, and tuples of heads.
    """
    if not isinstance(teacher_logits, torch.Tensor):
        if isinstance(labels, torch.Tensor) or len(labels) != len(teacher_logits):
            raise ValueError("tuple logits need one label tensor per head")
        return tuple(probability_shift(head, head_labels, ignore_index) for head, head_labels in zip(teacher_logits, labels))
    if labels.is_floating_point():
        raise ValueError("probability shift needs class labels, not regression targets")
    if labels.shape != teacher_logits.shape[:-1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(teacher_logits.shape)}")
    valid = labels != ignore_index
    # Ignored rows need some in-range index for gather/scatter; their result is discarded below.
    gold = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    top = teacher_logits.argmax(dim=-1, keepdim=True)
    gold_value = teacher_logits.gather(-1, gold)
    top_value = teacher_logits.gather(-1, top)
    # When gold == top both writes put back the same value, so the row is unchanged.
    shifted = teacher_logits.clone().scatter(-1, gold, top_value).scatter(-1, top, gold_value)
    return torch.where(valid.unsqueeze(-1), shifted, teacher_logits)
