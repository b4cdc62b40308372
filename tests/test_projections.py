"""Projections from student width to teacher width."""

from __future__ import annotations

import pytest
import torch

from brewer_cli.errors import BrewerError
from brewer_cli.losses import MATCH_LOSSES
from brewer_cli.projections import INITIAL_STANDARD_DEVIATION, PROJECTIONS, build_projection


@pytest.mark.parametrize("kind", ["linear", "relu", "tanh"])
def test_projection_maps_student_width_to_teacher_width(kind: str) -> None:
    torch.manual_seed(0)
    projection = build_projection(kind, 8, 12)
    hidden = torch.randn(2, 5, 8)
    output = projection(hidden)
    assert output.shape == (2, 5, 12)
    # The activation follows the linear map.
    linear = hidden @ projection.linear.weight.T + projection.linear.bias
    expected = {"linear": linear, "relu": torch.relu(linear), "tanh": torch.tanh(linear)}[kind]
    torch.testing.assert_close(output, expected)


def test_projection_initialization_and_checkpoint_keys() -> None:
    torch.manual_seed(0)
    projection = build_projection("linear", 256, 384)
    assert projection.linear.bias.abs().max().item() == 0.0
    assert projection.linear.weight.std().item() == pytest.approx(INITIAL_STANDARD_DEVIATION, rel=0.05)
    assert set(projection.state_dict()) == {"linear.weight", "linear.bias"}


def test_gradient_reaches_projection_and_student() -> None:
    torch.manual_seed(0)
    projection = build_projection("tanh", 4, 6)
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 6)
    loss = MATCH_LOSSES.get("hidden_mse").fn(projection(student), teacher, torch.tensor([[1, 1, 1], [1, 0, 0]]))
    loss.backward()
    assert projection.linear.weight.grad.abs().sum().item() > 0
    assert projection.linear.bias.grad.abs().sum().item() > 0
    assert student.grad[0].abs().sum().item() > 0
    assert student.grad[1, 1:].abs().max().item() == 0.0  # padding gets nothing


def test_projection_errors() -> None:
    assert PROJECTIONS.names() == ["linear", "relu", "tanh"]
    with pytest.raises(BrewerError, match="unknown projection 'gelu'"):
        build_projection("gelu", 4, 8)
    with pytest.raises(ValueError, match="positive"):
        build_projection("linear", 0, 8)
