"""Temperature and weight schedules against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from brewer_cli.errors import BrewerError
from brewer_cli.losses import kd_loss
from brewer_cli.schedulers import (
    MINIMUM_TEMPERATURE,
    TEMPERATURE_SCHEDULES,
    WEIGHT_SCHEDULES,
    schedule_parameters,
    temperature_for,
    weight_for,
)

SQRT3 = math.sqrt(3.0)


def test_constant_temperature_is_the_base() -> None:
    logits = torch.randn(2, 3)
    assert temperature_for("constant", 4.0, logits, logits) == 4.0


@pytest.mark.parametrize("gamma, expected", [(1.0, [4.5, 3.5]), (2.0, [4.25, 3.75])])
def test_flsw_by_hand(gamma: float, expected: list[float]) -> None:
    # Row 0: same direction → cos 1 → w = 0. Row 1: (1, 0) vs (1, √3) → cos ½ → w = ½^γ.
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, SQRT3]])
    # γ = 1: w = (0, ½), mean ¼ → τ = 4 + 2(¼ − w) = (4.5, 3.5); γ = 2: w = (0, ¼) → (4.25, 3.75).
    temperature = temperature_for("flsw", 4.0, student, teacher, beta=2.0, gamma=gamma)
    assert temperature.shape == (2,)
    assert temperature.tolist() == pytest.approx(expected, rel=1e-6)


def test_cwsm_by_hand() -> None:
    # Row 0 uniform → max p ½; row 1 (ln 3, 0) → max p ¾.
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    weights = [1 / (0.5 + 1e-3), 1 / (0.75 + 1e-3)]
    mean = sum(weights) / 2
    expected = [2.0 + 1.5 * (mean - w) for w in weights]
    temperature = temperature_for("cwsm", 2.0, student, torch.zeros(2, 2), beta=1.5)
    assert temperature.tolist() == pytest.approx(expected, rel=1e-6)
    # The confident row gets the higher temperature.
    assert temperature[1] > temperature[0]


def test_token_level_temperature_uses_valid_tokens_for_the_mean() -> None:
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [1.0, SQRT3], [1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # γ = 1: w = (0, ½, 1); the mean over valid tokens is ¼, so τ = 4 + 2(¼ − w).
    temperature = temperature_for("flsw", 4.0, student, teacher, mask, beta=2.0, gamma=1.0)
    assert temperature.shape == (1, 3)
    assert temperature[0].tolist() == pytest.approx([4.5, 3.5, 2.5], rel=1e-6)
    # And the (B, L) result feeds the KD loss directly.
    assert torch.isfinite(kd_loss("kl", student, teacher, temperature, mask))


def test_span_logits_get_one_temperature_per_head() -> None:
    start, end = torch.randn(2, 5), torch.randn(2, 5)
    temperatures = temperature_for("cwsm", 3.0, (start, end), (end, start), torch.ones(2, 5))
    assert isinstance(temperatures, tuple) and [t.shape for t in temperatures] == [(2,), (2,)]
    assert torch.isfinite(kd_loss("ce", (start, end), (end, start), temperatures, torch.ones(2, 5)))


def test_schedule_temperatures_are_detached_and_floored() -> None:
    student = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    temperature = temperature_for("cwsm", 1.0, student, student.detach(), beta=10.0)
    assert not temperature.requires_grad
    # w ≈ (1.03, 3.98): τ = 1 + 10(mean − w) → row 1 would be ≈ −13.8; it is floored instead.
    assert temperature[1].item() == pytest.approx(MINIMUM_TEMPERATURE)
    assert temperature[0].item() > 1.0


def test_schedule_errors() -> None:
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match="no parameter gamma — valid: beta"):
        temperature_for("cwsm", 2.0, logits, logits, gamma=1.0)
    with pytest.raises(BrewerError, match="unknown temperature schedule 'flws'.*did you mean 'flsw'"):
        temperature_for("flws", 2.0, logits, logits)
    with pytest.raises(ValueError, match="positive"):
        temperature_for("constant", 0.0, logits, logits)
    assert schedule_parameters("flsw") == ["beta", "gamma"]
    assert schedule_parameters("constant") == []
    assert set(TEMPERATURE_SCHEDULES.names()) == {"constant", "flsw", "cwsm"}


@pytest.mark.parametrize(
    "name, step, expected",
    [
        ("constant", 30, 0.5),
        ("linear_decay", 0, 0.5),
        ("linear_decay", 30, 0.5 * 0.7),
        ("linear_decay", 100, 0.0),
        ("linear_growth", 30, 0.5 * 0.3),
        ("linear_growth", 100, 0.5),
        ("linear_decay", 150, 0.0),  # past the planned total: clamped, never negative
    ],
)
def test_weight_schedules_multiply_the_configured_weight(name: str, step: int, expected: float) -> None:
    assert weight_for(name, 0.5, step, 100) == pytest.approx(expected)


def test_weight_schedule_errors() -> None:
    assert set(WEIGHT_SCHEDULES.names()) == {"constant", "linear_decay", "linear_growth"}
    with pytest.raises(ValueError, match="total_steps"):
        weight_for("linear_decay", 1.0, 0, 0)
    with pytest.raises(BrewerError, match="unknown weight schedule"):
        weight_for("cosine", 1.0, 0, 10)
