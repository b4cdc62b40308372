"""Exact sizes of the shapes extraction to a budget considers (budget.py): parameters by brewer's
one counter and FLOPs by size-report's analytic count, read from models of the teacher's class built
on the meta device (no memory, no initialization).

Every layer has the same size, every parameter and FLOP is affine in the FFN width and at most
quadratic in the hidden width (matrices hidden × hidden or hidden × FFN, tables vocabulary ×
hidden), so nine probes — 1 layer and 2 layers at the teacher's FFN width and 1 layer at the
smallest, each at the smallest, a middle and the largest hidden width — give the exact size of every
candidate (about 0.2 s, where a model per candidate would take minutes). `Costs.exact` counts a
shape directly and refuses a disagreement, so a family that broke these rules would be caught on
the shapes that are reported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
from torch import nn
from transformers import AutoConfig

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.extract.plan import FIELD, Sizes, Target, read_sizes, write_sizes
from brewer_cli.families import parameter_count, registered_family
from brewer_cli.families.family import Family
from brewer_cli.models import first_line, quiet_transformers
from brewer_cli.size_report.figures import analytic_flops


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    head_dim: int
    intermediate: int

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    def as_dict(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "intermediate": self.intermediate,
        }


def grid(full: int, steps: int) -> list[int]:
    """At most `steps` (+1) evenly spaced sizes from full/steps up to `full`, `full` included."""
    step = max(1, full // steps)
    values = list(range(step, full + 1, step))
    if values[-1] != full:
        values.append(full)
    return values


def sizes_of(shape: Shape, teacher: Sizes) -> Sizes:
    return Sizes(
        layers=shape.layers,
        hidden=shape.hidden,
        heads=shape.heads,
        head_dim=shape.head_dim,
        intermediate=shape.intermediate,
        embedding=shape.hidden if teacher.embedding_tied else teacher.embedding,
    )


def meta_model(teacher_model: nn.Module, family: Family, sizes: Sizes) -> nn.Module:
    """A model of the teacher's class and config with `sizes`, on the meta device."""
    config = copy.deepcopy(teacher_model.config)
    write_sizes(family, config, sizes)
    with quiet_transformers(), torch.device("meta"):
        return type(teacher_model)(config)


def measure(model: nn.Module, seq_len: int) -> tuple[int, int]:
    """(parameters, FLOPs per example at `seq_len` tokens), as run summaries and size-report count them."""
    flops = analytic_flops(model, seq_len)
    return parameter_count(model), int(flops["total"]) if flops is not None else 0


class Costs:
    """Exact parameters and FLOPs of every candidate from nine meta-device probes (see the module
    docstring): size = fixed + layers × (per layer + per FFN neuron × FFN), where each of the three
    coefficients is a polynomial of degree ≤ 2 in the hidden width, read at three hidden widths."""

    def __init__(self, teacher_model: nn.Module, family: Family, teacher: Sizes, seq_len: int, smallest_ffn: int):
        self.teacher_model, self.family, self.teacher, self.seq_len = teacher_model, family, teacher, seq_len
        self.smallest_ffn = smallest_ffn
        self._points: dict[int, tuple[tuple[int, int, int], ...]] = {}
        self._coefficients: dict[int, tuple[tuple[int, int, int], ...]] = {}

    def probe_at(self, pairs: list[tuple[int, int]]) -> None:
        """Probe three hidden widths of the candidates: the smallest, the middle and the largest."""
        by_hidden = {heads * head_dim: (heads, head_dim) for heads, head_dim in sorted(pairs)}
        hiddens = sorted(by_hidden)
        for hidden in sorted({hiddens[0], hiddens[len(hiddens) // 2], hiddens[-1]}):
            self._points[hidden] = self._probe_coefficients(*by_hidden[hidden])

    def _probe(self, heads: int, head_dim: int, layers: int, intermediate: int) -> tuple[int, int]:
        shape = Shape(layers, heads, head_dim, intermediate)
        return measure(meta_model(self.teacher_model, self.family, sizes_of(shape, self.teacher)), self.seq_len)

    def _probe_coefficients(self, heads: int, head_dim: int) -> tuple[tuple[int, int, int], ...]:
        """(fixed, per layer without FFN neurons, per FFN neuron) of parameters, then of FLOPs."""
        full, small = self.teacher.intermediate, self.smallest_ffn
        one = self._probe(heads, head_dim, 1, full)
        two = self._probe(heads, head_dim, 2, full)
        narrow = self._probe(heads, head_dim, 1, small) if small != full else one
        coefficients = []
        for at_one, at_two, at_narrow in zip(one, two, narrow):
            layer = at_two - at_one
            # Integer division: a size not linear in the FFN width is caught by `exact`.
            per_neuron = (at_one - at_narrow) // (full - small) if full != small else 0
            coefficients.append((at_one - layer, layer - per_neuron * full, per_neuron))
        return tuple(coefficients)

    def coefficients(self, hidden: int) -> tuple[tuple[int, int, int], ...]:
        """The probes' coefficients at `hidden`, by exact (rational) Lagrange interpolation."""
        if hidden not in self._coefficients:
            points = list(self._points.items())

            def weight(index: int) -> Fraction:
                value = Fraction(1)
                for other, (other_hidden, _) in enumerate(points):
                    if other != index:
                        value *= Fraction(hidden - other_hidden, points[index][0] - other_hidden)
                return value

            weights = [weight(index) for index in range(len(points))]
            self._coefficients[hidden] = tuple(
                tuple(
                    round(sum(weights[index] * points[index][1][which][term] for index in range(len(points))))
                    for term in range(3)
                )
                for which in range(2)
            )
        return self._coefficients[hidden]

    def estimate(self, shape: Shape) -> tuple[int, int]:
        (fixed, layer, neuron), (flops_fixed, flops_layer, flops_neuron) = self.coefficients(shape.hidden)
        return (
            fixed + shape.layers * (layer + neuron * shape.intermediate),
            flops_fixed + shape.layers * (flops_layer + flops_neuron * shape.intermediate),
        )

    def exact(self, shape: Shape) -> tuple[int, int]:
        """The counter on the shape itself; a disagreement with the estimate is a bug, said so."""
        counted = measure(meta_model(self.teacher_model, self.family, sizes_of(shape, self.teacher)), self.seq_len)
        estimated = self.estimate(shape)
        if counted != estimated:
            raise ModelError(
                f"extraction to a target estimated {estimated[0]:,} parameters and {estimated[1]:,} FLOPs for "
                f"{shape_text(shape)} but the counter gives {counted[0]:,} and {counted[1]:,}: this model's layers are "
                f"not all the same size, or its size is not affine in the FFN width and quadratic in the hidden width — give the sizes explicitly instead "
                f"of a target"
            )
        return counted


def shape_text(shape: Shape) -> str:
    layers = f"{shape.layers} layer" + ("s" if shape.layers != 1 else "")
    heads = f"{shape.heads} head" + ("s" if shape.heads != 1 else "")
    return f"{layers} × {shape.hidden} hidden ({heads} × {shape.head_dim}), FFN {shape.intermediate}"


def size_of_parameters(teacher_model: nn.Module, family: Family, target: Target) -> int:
    """The named config's shape (layers, hidden, heads, FFN) as a student of this teacher: with the
    teacher's class, vocabulary, positions and head, as `student.config` would build it."""
    settings = dict(target.size_of_config or {})
    where = f"{FIELD}.target.size_of"
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise BrewerError(
            f"{where}: {target.size_of!r} has no `model_type`, so it is not a model config — name a student config such as configs/students/t4-tiny.json"
        )
    for key in ("architectures", "transformers_version"):
        settings.pop(key, None)
    try:
        config = AutoConfig.for_model(model_type, **settings)
    except Exception as error:  # transformers raises many kinds for a bad value
        raise BrewerError(f"{where}: {target.size_of!r} is not a valid {model_type} config: {first_line(error)}") from None
    named_family = registered_family(config)
    if named_family is None:
        raise BrewerError(
            f"{where}: {target.size_of!r} is a {model_type} config, which brewer cannot read the sizes of — name a BERT-style student config"
        )
    try:
        named = read_sizes(named_family, config)
    except ModelError as error:
        raise BrewerError(f"{where}: {target.size_of!r}: {error}") from None
    teacher = read_sizes(family, teacher_model.config)
    embedding = named.embedding if not teacher.embedding_tied else named.hidden
    return parameter_count(meta_model(teacher_model, family, replace(named, embedding=embedding)))
