"""Recipe settings resolved into the values a distiller computes with: registry names become
functions, schedules become functions of the step, once, when the run is built."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from brewer_cli.distillers import LogitKD
from brewer_cli.losses import KD_LOSSES
from brewer_cli.schedulers import temperature_schedule, weight_schedule

# A KD loss's own parameter (a keyword of its function) → the distillation field that sets it and
# its symbol in the plan. A loss takes the fields its signature names, so adding one is one line.
KD_LOSS_PARAMETERS = {"beta": ("jsd_beta", "β"), "alpha": ("skew_alpha", "α")}


def bound_kd_loss(settings: Any) -> tuple[Callable, dict[str, float]]:
    """The KD loss function with its own parameters bound from the recipe, and those parameters."""
    loss = KD_LOSSES.get(settings.kd_loss)
    accepted = inspect.signature(loss).parameters
    params = {name: getattr(settings, field) for name, (field, _) in KD_LOSS_PARAMETERS.items() if name in accepted}
    return (functools.partial(loss, **params) if params else loss), params


def resolve_logit_kd(settings: Any) -> LogitKD:
    """`settings`: a distillation section with the basic KD fields (basic, general, multi_*)."""
    schedule = settings.temperature_schedule
    params = {name: getattr(schedule, name) for name in ("beta", "gamma") if getattr(schedule, name) is not None}
    loss, loss_params = bound_kd_loss(settings)
    shown = ", ".join(f"{KD_LOSS_PARAMETERS[name][1]} {value}" for name, value in loss_params.items())
    if settings.kd_weight == 0:
        lines = ["no logit KD (kd_weight 0)"]
    else:
        lines = [
            f"KD {settings.kd_loss}{f' ({shown})' if shown else ''} × {settings.kd_weight} ({settings.kd_weight_schedule}), temperature "
            f"{settings.temperature} ({schedule.kind}){', ×τ²' if settings.temperature_squared else ''}"
            f"{', probability shift' if settings.probability_shift else ''}"
        ]
    if settings.hard_label_weight > 0:
        lines.append(f"hard label × {settings.hard_label_weight} ({settings.hard_label_weight_schedule})")
    return LogitKD(
        loss=loss,
        weight=settings.kd_weight,
        weight_at=weight_schedule(settings.kd_weight_schedule, settings.kd_weight),
        temperature_of=temperature_schedule(schedule.kind, settings.temperature, **params),
        temperature_squared=settings.temperature_squared,
        probability_shift=settings.probability_shift,
        hard_label_weight=settings.hard_label_weight,
        hard_label_weight_at=weight_schedule(settings.hard_label_weight_schedule, settings.hard_label_weight),
        describe=tuple(lines),
    )
