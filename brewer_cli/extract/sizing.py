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

Grouped-query teachers (Llama; grouped.py) have a hidden width of its own and whole heads of the
teacher's size, so a layer's size also depends on the query heads (q and o projections, the
scores) and the key/value groups (k and v), affinely in each at a given hidden width: two more
probes per hidden width (2 heads in 1 group, 2 heads in 2 groups, against 1 in 1) give those terms.
"""

from __future__ import annotations

import copy
from dataclasses import astuple, dataclass, replace
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
    # Grouped-query teachers only: the key/value groups kept, and the hidden width, which is then its
    # own size rather than heads × head size.
    key_value_heads: int | None = None
    width: int | None = None

    @property
    def hidden(self) -> int:
        return self.width if self.width is not None else self.heads * self.head_dim

    def as_dict(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "intermediate": self.intermediate,
            **({"key_value_heads": self.key_value_heads} if self.key_value_heads is not None else {}),
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
        key_value_heads=shape.key_value_heads,
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
    """Exact parameters and FLOPs of every candidate from nine meta-device probes (fifteen for a
    grouped-query teacher; see the module docstring): size = fixed + layers × (per layer + per FFN
    neuron × FFN), where per layer = base + heads × per head + groups × per group for grouped-query
    teachers, and each term is a polynomial of degree ≤ 2 in the hidden width, read at three hidden
    widths. `widths` are the candidates' shapes at any depth and FFN width (probe_at)."""

    def __init__(self, teacher_model: nn.Module, family: Family, teacher: Sizes, seq_len: int, smallest_ffn: int):
        self.teacher_model, self.family, self.teacher, self.seq_len = teacher_model, family, teacher, seq_len
        self.smallest_ffn = smallest_ffn
        self.grouped = teacher.key_value_heads is not None
        # Per probed hidden width, for parameters then FLOPs: (fixed, base per layer, per FFN neuron,
        # per query head, per key/value group) — the last two zero where heads × head size is the hidden width.
        self._points: dict[int, tuple[tuple[int, ...], ...]] = {}
        self._terms: dict[int, tuple[tuple[int, ...], ...]] = {}

    def probe_at(self, widths: list[Shape]) -> None:
        """Probe three hidden widths of the candidates: the smallest, the middle and the largest."""
        by_hidden = {width.hidden: width for width in sorted(widths, key=astuple)}
        hiddens = sorted(by_hidden)
        for hidden in sorted({hiddens[0], hiddens[len(hiddens) // 2], hiddens[-1]}):
            self._points[hidden] = self._probe_terms(by_hidden[hidden])

    def _probe(self, width: Shape, layers: int, intermediate: int) -> tuple[int, int]:
        shape = replace(width, layers=layers, intermediate=intermediate)
        return measure(meta_model(self.teacher_model, self.family, sizes_of(shape, self.teacher)), self.seq_len)

    def _probe_terms(self, width: Shape) -> tuple[tuple[int, ...], ...]:
        full, small = self.teacher.intermediate, self.smallest_ffn
        if self.grouped:
            width = replace(width, heads=1, key_value_heads=1)
        one = self._probe(width, 1, full)
        two = self._probe(width, 2, full)
        narrow = self._probe(width, 1, small) if small != full else one
        more_heads = self._probe(replace(width, heads=2), 1, full) if self.grouped else one
        more_groups = self._probe(replace(width, heads=2, key_value_heads=2), 1, full) if self.grouped else more_heads
        terms = []
        for at_one, at_two, at_narrow, at_heads, at_groups in zip(one, two, narrow, more_heads, more_groups):
            layer = at_two - at_one
            # Integer division: a size not linear in the FFN width is caught by `exact`.
            per_neuron = (at_one - at_narrow) // (full - small) if full != small else 0
            per_head, per_group = at_heads - at_one, at_groups - at_heads
            # The probe's own heads and groups (1 and 1) are in `layer`: the base is what remains.
            base = layer - per_neuron * full - (per_head + per_group if self.grouped else 0)
            terms.append((at_one - layer, base, per_neuron, per_head, per_group))
        return tuple(terms)

    def _terms_at(self, hidden: int) -> tuple[tuple[int, ...], ...]:
        """The probes' terms at `hidden`, by exact (rational) Lagrange interpolation."""
        if hidden not in self._terms:
            points = list(self._points.items())

            def weight(index: int) -> Fraction:
                value = Fraction(1)
                for other, (other_hidden, _) in enumerate(points):
                    if other != index:
                        value *= Fraction(hidden - other_hidden, points[index][0] - other_hidden)
                return value

            weights = [weight(index) for index in range(len(points))]
            self._terms[hidden] = tuple(
                tuple(
                    round(sum(weights[index] * points[index][1][which][term] for index in range(len(points))))
                    for term in range(5)
                )
                for which in range(2)
            )
        return self._terms[hidden]

    def coefficients(self, width: Shape) -> tuple[tuple[int, int, int], ...]:
        """(fixed, per layer, per FFN neuron) of parameters, then of FLOPs, at the width's hidden size,
        query heads and key/value groups."""
        heads, groups = (width.heads, width.key_value_heads or 0) if self.grouped else (0, 0)
        return tuple(
            (fixed, base + heads * per_head + groups * per_group, per_neuron)
            for fixed, base, per_neuron, per_head, per_group in self._terms_at(width.hidden)
        )

    def estimate(self, shape: Shape) -> tuple[int, int]:
        (fixed, layer, neuron), (flops_fixed, flops_layer, flops_neuron) = self.coefficients(shape)
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
    return shape_dict_text(shape.as_dict())


def shape_dict_text(shape: dict[str, int]) -> str:
    """A shape as extraction reports it (`Shape.as_dict`, and the budget entries of extraction.json)."""
    layers = f"{shape['layers']} layer" + ("s" if shape["layers"] != 1 else "")
    heads = f"{shape['heads']} head" + ("s" if shape["heads"] != 1 else "")
    groups = shape.get("key_value_heads")
    grouped = "" if groups is None else f" in {groups} key/value group" + ("s" if groups != 1 else "")
    return f"{layers} × {shape['hidden']} hidden ({heads} × {shape['head_dim']}{grouped}), FFN {shape['intermediate']}"


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
    if (teacher.key_value_heads is None) != (named.key_value_heads is None):
        kind = "grouped-query (Llama-style)" if teacher.key_value_heads is not None else "BERT-style"
        raise BrewerError(
            f"{where}: {target.size_of!r} is a {model_type} config, but a student of this {family.title} teacher is "
            f"counted with the teacher's attention layout — name a {kind} config, or use parameters"
        )
    embedding = named.embedding if not teacher.embedding_tied else named.hidden
    return parameter_count(meta_model(teacher_model, family, replace(named, embedding=embedding)))
