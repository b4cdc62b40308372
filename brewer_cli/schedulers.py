"""Temperature and loss-weight schedules (DESIGN §5).

Temperature schedules turn the configured temperature τ0 into a temperature per row (per token
for token logits) from the current logits; weight schedules scale a configured loss weight by the
training progress t = step / total_steps. Neither ever replaces a configured value: the recipe's
number is the base, the schedule adjusts around (or multiplies) it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from brewer_cli.losses.masks import logits_masks
from brewer_cli.registry import Registry

# A per-row temperature below this floor is raised to it. τ0 + β(mean(w) − w_i) can reach 0 or
# go negative for large β (cwsm's w grows with the class count); a non-positive temperature
# would divide by zero or invert the teacher's distribution. Typical settings never reach it.
MINIMUM_TEMPERATURE = 0.05

TEMPERATURE_SCHEDULES: Registry[Callable[..., float | torch.Tensor]] = Registry("temperature schedule")
WEIGHT_SCHEDULES: Registry[Callable[[float], float]] = Registry("weight schedule")


def _spread_around_base(base: float, weights: torch.Tensor, row_mask: torch.Tensor | None, beta: float) -> torch.Tensor:
    """τ_i = τ0 + β(mean(w) − w_i), the mean taken over valid rows only so padding cannot shift it."""
    if row_mask is None:
        mean = weights.mean()
    else:
        valid = row_mask.to(weights.dtype)
        mean = (weights * valid).sum() / valid.sum().clamp_min(1.0)
    return (base + beta * (mean - weights)).clamp_min(MINIMUM_TEMPERATURE)


@TEMPERATURE_SCHEDULES.register("constant", "the configured temperature for every row")
def constant_temperature(
    base: float, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    return float(base)


@TEMPERATURE_SCHEDULES.register("flsw", "higher temperature where student and teacher logits agree (FLSW)")
@torch.no_grad()
def flsw_temperature(
    base: float,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    gamma: float = 2.0,
) -> torch.Tensor:
    """w = (1 − v_S·v_T)^γ with v the unit-normalized logits; τ_i = τ0 + β(mean(w) − w_i)."""
    row_mask, class_mask = logits_masks(student_logits, mask)
    student, teacher = student_logits.detach().float(), teacher_logits.detach().float()
    if class_mask is not None:
        # Span logits: padding positions are not classes, so they take no part in the direction.
        student, teacher = student * class_mask, teacher * class_mask
    # The clamp guards against 1 − cos rounding to a tiny negative number, whose fractional
    # power would be NaN.
    distance = (1.0 - (F.normalize(student, dim=-1) * F.normalize(teacher, dim=-1)).sum(dim=-1)).clamp_min(0.0)
    return _spread_around_base(base, distance.pow(gamma), row_mask, beta)


@TEMPERATURE_SCHEDULES.register("cwsm", "higher temperature where the student is confident (CWSM)")
@torch.no_grad()
def cwsm_temperature(
    base: float,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
) -> torch.Tensor:
    """w = 1 / (max softmax(z_S) + 1e-3); τ_i = τ0 + β(mean(w) − w_i)."""
    row_mask, class_mask = logits_masks(student_logits, mask)
    student = student_logits.detach().float()
    if class_mask is not None:
        student = student.masked_fill(~class_mask, torch.finfo(torch.float32).min)
    confidence = F.softmax(student, dim=-1).amax(dim=-1)
    return _spread_around_base(base, 1.0 / (confidence + 1e-3), row_mask, beta)


def schedule_parameters(name: str) -> list[str]:
    """The keyword parameters a temperature schedule accepts (for recipe validation and the catalog)."""
    signature = inspect.signature(TEMPERATURE_SCHEDULES.get(name))
    return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def temperature_schedule(name: str, base: float, **params: Any) -> Callable[..., Any]:
    """Schedule `name` around base τ0, resolved once: a function of (student logits, teacher
    logits, mask) giving the temperature.

    It returns a float for `constant`, else a detached tensor with one temperature per row: (B,)
    for sequence logits (B, C) and span logits (B, L), (B, L) for token logits (B, L, C). For a
    tuple of logits heads (QA start/end) each head gets its own temperatures, returned as a tuple
    — the form `kd_loss` accepts.
    """
    schedule = TEMPERATURE_SCHEDULES.get(name)
    unknown = sorted(set(params) - set(schedule_parameters(name)))
    if unknown:
        valid = ", ".join(schedule_parameters(name)) or "none"
        raise ValueError(f"temperature schedule {name!r} has no parameter {', '.join(unknown)} — valid: {valid}")
    if not base > 0:
        raise ValueError(f"base temperature must be positive, got {base}")

    def temperature(
        student_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_logits: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> float | torch.Tensor | tuple[float | torch.Tensor, ...]:
        if isinstance(student_logits, torch.Tensor):
            return schedule(base, student_logits, teacher_logits, mask, **params)
        return tuple(
            schedule(base, student, teacher, mask, **params)
            for student, teacher in zip(student_logits, teacher_logits, strict=True)
        )

    return temperature


def temperature_for(
    name: str,
    base: float,
    student_logits: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    **params: Any,
) -> float | torch.Tensor | tuple[float | torch.Tensor, ...]:
    """The temperature from schedule `name` around base τ0 for these logits (`temperature_schedule`)."""
    return temperature_schedule(name, base, **params)(student_logits, teacher_logits, mask)


@WEIGHT_SCHEDULES.register("constant", "the configured weight throughout")
def constant_weight(progress: float) -> float:
    return 1.0


@WEIGHT_SCHEDULES.register("linear_decay", "weight × (1 − step/total_steps)")
def linear_decay(progress: float) -> float:
    return 1.0 - progress


@WEIGHT_SCHEDULES.register("linear_growth", "weight × step/total_steps")
def linear_growth(progress: float) -> float:
    return progress


def weight_schedule(name: str, configured_weight: float) -> Callable[[int, int], float]:
    """Schedule `name` resolved once: a function of (step, total_steps) giving the configured weight
    multiplied by the schedule at t = step / total_steps.

    t is clamped to [0, 1] so that steps past the planned total (a resumed run with more epochs)
    never turn a decaying weight negative.
    """
    schedule = WEIGHT_SCHEDULES.get(name)

    def weight(step: int, total_steps: int) -> float:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        return configured_weight * schedule(min(max(step / total_steps, 0.0), 1.0))

    return weight


def weight_for(name: str, configured_weight: float, step: int, total_steps: int) -> float:
    """The configured weight multiplied by schedule `name` at t = step / total_steps (`weight_schedule`)."""
    return weight_schedule(name, configured_weight)(step, total_steps)
