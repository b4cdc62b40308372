"""Projections from the student's width to the teacher's, for matches between models of
different widths (DESIGN §5). The distiller creates them, trains them with the student, clips
them with the student and saves them in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brewer_cli.registry import Registry

# Registry values build the activation that follows the linear map.
PROJECTIONS: Registry[Callable[[], nn.Module]] = Registry("projection")
PROJECTIONS.add("linear", nn.Identity, "Linear(student width → teacher width)")
PROJECTIONS.add("relu", nn.ReLU, "Linear(student width → teacher width) then ReLU")
PROJECTIONS.add("tanh", nn.Tanh, "Linear(student width → teacher width) then tanh")

# Weights ~ N(0, 0.02²) and zero bias: the BERT initializer, which TextBrewer also applies to its
# projections. The student's hidden states are LayerNorm outputs of order 1, so the projected
# states start small (std ≈ 0.02·√d_student) and near the origin of the teacher's space instead
# of at a large random offset that the first steps would have to undo.
INITIAL_STANDARD_DEVIATION = 0.02


class Projection(nn.Module):
    """activation(W x + b), mapping (…, student_width) to (…, teacher_width).

    Named submodules (`linear`, `activation`) keep checkpoint keys readable: `linear.weight`.
    """

    def __init__(self, kind: str, student_width: int, teacher_width: int):
        super().__init__()
        make_activation = PROJECTIONS.get(kind)
        if student_width < 1 or teacher_width < 1:
            raise ValueError(f"projection widths must be positive, got {student_width} → {teacher_width}")
        self.kind = kind
        self.linear = nn.Linear(student_width, teacher_width)
        self.activation = make_activation()
        nn.init.normal_(self.linear.weight, mean=0.0, std=INITIAL_STANDARD_DEVIATION)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(hidden))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def build_projection(kind: str, student_width: int, teacher_width: int) -> nn.Module:
    """A fresh projection of the registered `kind` (`linear`, `relu`, `tanh`)."""
    return Projection(kind, student_width, teacher_width)
