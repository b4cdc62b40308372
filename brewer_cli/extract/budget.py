"""Extraction to a budget (`student.init.extract.target`): choose the student's layers, hidden
width, heads, head size and FFN width from the teacher's importance scores, then extract.

Candidates. Every shape extraction can cut from the teacher: layers 1..N (placed by `selection`),
heads 1..h, a head size from a grid of at most `HEAD_DIM_STEPS` sizes up to the teacher's (hidden =
heads × head size, the only hidden widths BERT-style attention accepts), and an FFN width from a
grid of at most `FFN_STEPS` widths up to the teacher's. (ELECTRA with a separate embedding size
leaves out the hidden width equal to it, see `plan.check_electra_projection`.)

Size. Parameters are brewer's one counter (`families.parameter_count`) and FLOPs size-report's
analytic count (`size_report.analytic_flops`, per example at `target.seq_len` tokens), both exact
for every candidate (sizing.py: nine meta-device probes, the reported shapes counted again).

Latency. `latency_fewer_by` is read through FLOPs: the shape must have at least that many times
fewer FLOPs than the teacher. The choice then depends on the recipe alone, so the same recipe gives
the same student on any machine (which `brewer extract`, dry runs and --resume rely on); a timing
taken while choosing would not. FLOPs understate what depth costs at small batches on a GPU
(every layer adds kernel launches), so measure the result with `brewer size-report --runs`.

Importance kept. With `strategy: importance` the teacher is scored once (scoring.py), and a shape
keeps what extraction would cut: the top hidden channels; in each kept layer the top heads by head
score and, inside them, the top query/key and value neurons; the top FFN neurons. Scores of one
kind compare with each other (each is a first-order estimate of the loss change when its structure
is removed) but not across kinds: a hidden channel spans every write to the residual stream, a
neuron one column, and in a tiny BERT the hidden channels carried 99% of the raw sum, which then
ignored depth and heads altogether. So each part counts by the share of its own total that the
shape keeps — `hidden`, `attention` (the query/key and value neurons of every layer) and `ffn` —
and the importance kept is the mean of the three shares. A dropped layer loses all its attention
and FFN importance; `layers` reports the share of the attention and FFN importance in the kept
layers.

The choice. The shapes meeting the target are those within it (parameters: at most the count;
flops/latency: at least the factor; size_of: at most the named config's count as a student of
this teacher) and at least `WINDOW` × the largest size that fits — a student far below the budget
is not what was asked for. Among them the one with the most importance kept per parameter (per
FLOP for flops and latency targets) is chosen; the next best are reported as alternatives,
together with the uniform shape of the same budget for comparison.

Without scores (`strategy: random`, or scores that are all zero) the shape is the uniform one: the
teacher's head count, and layers, head size and FFN width shrunk by one factor (ETD and TinyBERT
keep all 12 heads of BERT-base and shrink their size: 312 = 12 × 26), the largest such shape that
meets the target.

Grouped-query teachers (Llama, Mistral, Qwen2, Qwen3; grouped.py). Heads stay whole (RoPE), and the
hidden width is independent of the heads, so the candidates are layers 1..N, a hidden width from a
grid of at most `HIDDEN_STEPS`, every valid pair of key/value groups g′ and query heads h′ (h′/g′
of its own heads per kept group, at most the teacher's group size) and the FFN grid. Attention
importance is counted by head scores, as extraction keeps heads: the top g′ groups by the sum of
their heads' scores, and inside each the top h′/g′ heads. The uniform shape keeps every head and
group and shrinks layers, hidden width and FFN width by one factor.
"""

from __future__ import annotations

import math
from dataclasses import astuple, replace
from typing import Any

import torch
from torch import nn

from brewer_cli.errors import BrewerError
from brewer_cli.extract.plan import FIELD, ExtractPlan, Sizes, Target, round_half_up, select_layers
from brewer_cli.extract.scoring import Scores
from brewer_cli.extract.sizing import Costs, Shape, grid, measure, shape_text, size_of_parameters
from brewer_cli.families.family import Family

HEAD_DIM_STEPS = 16
HIDDEN_STEPS = 16
FFN_STEPS = 32
WINDOW = 0.95
ALTERNATIVES = 4

# A width: a candidate's shape at any depth and FFN width (sizing.Costs.probe_at) — heads and head
# size, and for grouped-query teachers the hidden width and key/value groups.
Width = Shape


# --------------------------------------------------------------------------------------------
# Importance kept by a shape
# --------------------------------------------------------------------------------------------


def _cumulative_top(scores: torch.Tensor) -> torch.Tensor:
    """(n + 1,): entry i is the sum of the i largest scores."""
    ordered = torch.sort(scores.double(), descending=True, stable=True).values
    return torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])


def _attention_cell(width: Shape) -> tuple[int, int]:
    """Where a width reads its kept attention importance in a layer's table (_Importance):
    [heads, head size], or for grouped-query teachers [key/value groups, heads per group]."""
    if width.key_value_heads is not None:
        return width.key_value_heads, width.heads // width.key_value_heads
    return width.heads, width.head_dim


def _attention_table(scores: Scores, teacher: Sizes, layer: int) -> torch.Tensor:
    """One layer's kept attention importance, indexed as `_attention_cell` says."""
    if teacher.key_value_heads is not None:
        # Whole heads: the top groups by their heads' summed score, the top heads inside each.
        group_size = teacher.heads // teacher.key_value_heads
        by_group = scores.heads[layer].view(teacher.key_value_heads, group_size)
        per_unit = torch.stack([_cumulative_top(by_group[group]) for group in range(teacher.key_value_heads)])
        order = torch.argsort(by_group.sum(dim=1), descending=True, stable=True)
    else:
        query_key = scores.query_key[layer].view(teacher.heads, teacher.head_dim)
        value = scores.value[layer].view(teacher.heads, teacher.head_dim)
        # Query/key and value neurons are each kept by their own ranking inside a head.
        per_unit = torch.stack([_cumulative_top(query_key[head]) + _cumulative_top(value[head]) for head in range(teacher.heads)])
        order = torch.argsort(scores.heads[layer], descending=True, stable=True)
    cumulative = per_unit[order].cumsum(0)
    return torch.cat([torch.zeros(1, per_unit.shape[1], dtype=torch.float64), cumulative])


class _Importance:
    """Tables of the share of each part's importance a shape keeps, as extraction cuts it (see
    the module docstring)."""

    def __init__(self, scores: Scores, teacher: Sizes, plan: ExtractPlan):
        self.teacher, self.plan = teacher, plan
        hidden = _cumulative_top(scores.hidden)
        attention = [_attention_table(scores, teacher, layer) for layer in range(teacher.layers)]
        ffn = [_cumulative_top(scores.ffn[layer]) for layer in range(teacher.layers)]  # per layer, (intermediate + 1,)
        self.totals = {
            "hidden": float(hidden[-1]),
            "attention": sum(float(table[-1, -1]) for table in attention),
            "ffn": sum(float(table[-1]) for table in ffn),
        }
        self.total = sum(self.totals.values())
        # Shares of each part's total; a part without importance loses nothing (share 1).
        self.hidden = hidden / self.totals["hidden"] if self.totals["hidden"] > 0 else torch.ones_like(hidden)
        self.attention = [table / self.totals["attention"] for table in attention] if self.totals["attention"] > 0 else None
        self.ffn = [table / self.totals["ffn"] for table in ffn] if self.totals["ffn"] > 0 else None
        self.layer_totals = [float(a[-1, -1]) + float(f[-1]) for a, f in zip(attention, ffn)]
        self._layers: dict[int, list[int]] = {}

    def kept_layers(self, layers: int) -> list[int]:
        if layers not in self._layers:
            self._layers[layers] = _kept_layers(self.plan, layers, self.teacher.layers)
        return self._layers[layers]

    def shares(self, shape: Shape) -> dict[str, float]:
        """The shares the shape keeps, per part and `total` (their mean), and `layers`: the share
        of the attention and FFN importance that sits in the kept layers."""
        layers = self.kept_layers(shape.layers)
        cell = _attention_cell(shape)
        kept = {
            "hidden": float(self.hidden[shape.hidden]),
            "attention": sum(float(self.attention[layer][cell]) for layer in layers) if self.attention is not None else 1.0,
            "ffn": sum(float(self.ffn[layer][shape.intermediate]) for layer in layers) if self.ffn is not None else 1.0,
        }
        in_layers = sum(self.layer_totals[layer] for layer in layers)
        all_layers = sum(self.layer_totals)
        return {
            "total": sum(kept.values()) / len(kept),
            **kept,
            "layers": in_layers / all_layers if all_layers > 0 else 1.0,
        }

    def all_kept(
        self, layers: int, hiddens: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor], intermediates: torch.Tensor
    ) -> torch.Tensor:
        """The `total` share for one depth, over every width × FFN width at once (`cells`: each
        width's `_attention_cell`)."""
        kept_layers = self.kept_layers(layers)
        attention = sum(self.attention[layer] for layer in kept_layers)[cells] if self.attention is not None else 1.0
        ffn = sum(self.ffn[layer] for layer in kept_layers)[intermediates] if self.ffn is not None else 1.0
        pairs = self.hidden[hiddens] + attention
        return (pairs[:, None] + torch.as_tensor(ffn, dtype=torch.float64).expand(len(intermediates))[None, :]) / 3


# --------------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------------


class _Fits:
    """The candidates within the limit, one depth at a time (tensors over widths × FFN width), and
    the window of those near the largest that fits (see the module docstring)."""

    def __init__(self, costs: Costs, widths: list[Width], ffn_widths: list[int], depth: int, index: int, limit: float):
        self.candidate_widths, self.ffn_widths, self.depth = widths, ffn_widths, depth
        # A FLOPs limit is the teacher's FLOPs over a factor: allow for the division's rounding.
        self.limit = limit * (1 + 1e-12)
        self.hiddens = torch.tensor([width.hidden for width in widths])
        rows, columns = zip(*map(_attention_cell, widths))
        self.cells = (torch.tensor(rows), torch.tensor(columns))
        self.widths = torch.tensor(ffn_widths)
        # float64 holds these integers exactly (below 2^53).
        coefficients = torch.tensor([costs.coefficients(width)[index] for width in widths], dtype=torch.float64)
        self.fixed, self.per_layer, self.per_neuron = coefficients.unbind(dim=1)
        fitting = [
            float(size[size <= self.limit].max())
            for size in map(self.sizes, range(1, depth + 1))
            if bool((size <= self.limit).any())
        ]
        self.largest = max(fitting) if fitting else None

    def sizes(self, layers: int) -> torch.Tensor:
        return self.fixed[:, None] + layers * (self.per_layer[:, None] + self.per_neuron[:, None] * self.widths[None, :].double())

    def window(self, importance: _Importance) -> list[tuple[Shape, float, float]]:
        """(shape, importance kept, size) of every shape within the limit and ≥ WINDOW × the largest."""
        assert self.largest is not None
        found = []
        for layers in range(1, self.depth + 1):
            sizes = self.sizes(layers)
            inside = (sizes <= self.limit) & (sizes >= WINDOW * self.largest)
            if not bool(inside.any()):
                continue
            kept = importance.all_kept(layers, self.hiddens, self.cells, self.widths)
            for row, ffn in inside.nonzero().tolist():
                shape = replace(self.candidate_widths[row], layers=layers, intermediate=self.ffn_widths[ffn])
                found.append((shape, float(kept[row, ffn]), float(sizes[row, ffn])))
        return found


def _limit(target: Target, teacher_figures: tuple[int, int], named_parameters: int | None) -> tuple[str, float]:
    """(the measure the target bounds, its largest allowed value)."""
    if target.parameters is not None:
        return "parameters", float(target.parameters)
    if target.size_of is not None:
        assert named_parameters is not None
        return "parameters", float(named_parameters)
    factor = target.flops_fewer_by if target.flops_fewer_by is not None else target.latency_fewer_by
    return "flops", teacher_figures[1] / float(factor)


def uniform_shapes(teacher: Sizes, ffn_widths: list[int], widths: list[Width]) -> list[Shape]:
    """The uniform family, smallest first: each width (the teacher's heads at a smaller head size,
    or for grouped-query teachers every head and group at a smaller hidden width) with layers and
    FFN width shrunk by the same factor (hidden / the teacher's), each rounded to its grid."""
    shapes = []
    for width in widths:
        factor = width.hidden / teacher.hidden
        layers = max(1, round_half_up(factor * teacher.layers))
        intermediate = min(ffn_widths, key=lambda ffn: (abs(ffn - factor * teacher.intermediate), ffn))
        shapes.append(replace(width, layers=layers, intermediate=intermediate))
    return shapes


def _widths(teacher: Sizes, smallest_ffn: int) -> tuple[list[Width], list[Width], str]:
    """(every candidate width, the uniform family's widths, what the uniform shape keeps whole)."""
    if teacher.key_value_heads is not None:
        groups, group_size = teacher.key_value_heads, teacher.heads // teacher.key_value_heads
        hiddens = grid(teacher.hidden, HIDDEN_STEPS)
        widths = [
            Shape(1, kept * per_group, teacher.head_dim, smallest_ffn, kept, hidden)
            for hidden in hiddens
            for kept in range(1, groups + 1)
            for per_group in range(1, group_size + 1)
        ]
        uniform = [Shape(1, teacher.heads, teacher.head_dim, smallest_ffn, groups, hidden) for hidden in hiddens]
        kept_whole = f"the teacher's {teacher.heads} heads in {groups} key/value groups, with layers, hidden width"
        return widths, uniform, kept_whole
    head_dims = grid(teacher.head_dim, HEAD_DIM_STEPS)
    widths = [Shape(1, heads, head_dim, smallest_ffn) for heads in range(1, teacher.heads + 1) for head_dim in head_dims]
    uniform = [Shape(1, teacher.heads, head_dim, smallest_ffn) for head_dim in head_dims]
    return widths, uniform, f"the teacher's {teacher.heads} heads, with layers, head size"


def choose_shape(
    teacher_model: nn.Module, family: Family, teacher: Sizes, plan: ExtractPlan, scores: Scores | None
) -> tuple[ExtractPlan, dict[str, Any]]:
    """The plan with the chosen sizes (and no target), and the record of the choice for
    extraction.json and the report (see the module docstring)."""
    target = plan.target
    assert target is not None
    ffn_widths = grid(teacher.intermediate, FFN_STEPS)
    costs = Costs(teacher_model, family, teacher, target.seq_len, ffn_widths[0])
    teacher_figures = measure(teacher_model, target.seq_len)
    named_parameters = size_of_parameters(teacher_model, family, target) if target.size_of is not None else None
    measure_name, limit = _limit(target, teacher_figures, named_parameters)
    index = 0 if measure_name == "parameters" else 1

    def allowed(hidden: int) -> bool:
        # ELECTRA builds no embedding projection when hidden equals embedding_size.
        return teacher.embedding_tied or hidden != teacher.embedding

    all_widths, uniform_widths, kept_whole = _widths(teacher, ffn_widths[0])
    widths = [width for width in all_widths if allowed(width.hidden)]
    costs.probe_at(widths)
    importance = _Importance(scores, teacher, plan) if scores is not None else None
    scored = importance is not None and importance.total > 0
    fits = _Fits(costs, widths, ffn_widths, teacher.layers, index, limit)
    uniform = [shape for shape in uniform_shapes(teacher, ffn_widths, uniform_widths) if allowed(shape.hidden)]
    uniform_fits = [shape for shape in uniform if costs.estimate(shape)[index] <= fits.limit]
    if fits.largest is None or (not scored and not uniform_fits):
        raise _unreachable(target, measure_name, limit, teacher_figures, costs, widths, ffn_widths, uniform, scored)

    if scored:
        assert importance is not None
        window = fits.window(importance)
        ranked = sorted(
            window, key=lambda item: (-item[1] / item[2], -item[2], *(-size for size in astuple(item[0]) if size is not None))
        )
        chosen = ranked[0][0]
        alternatives = [shape for shape, _, _ in ranked[1 : 1 + ALTERNATIVES]]
        per = "parameter" if measure_name == "parameters" else "FLOP"
        rule = (
            f"the most importance kept per {per} among the shapes within the target and within "
            f"{1 - WINDOW:.0%} of the largest that fits"
        )
        meeting = len(window)
    else:
        chosen = uniform_fits[-1]
        position = uniform.index(chosen)
        alternatives = list(reversed(uniform[max(0, position - ALTERNATIVES + 1) : position]))
        if position + 1 < len(uniform):
            alternatives.insert(0, uniform[position + 1])  # the next larger one, which misses the target
        reason = "strategy random has no importance scores" if importance is None else "every importance score is zero"
        rule = (
            f"the uniform shape ({reason}): {kept_whole} and FFN width shrunk by one factor — the largest such shape "
            f"that meets the target"
        )
        meeting = len(uniform_fits)

    def entry(shape: Shape) -> dict[str, Any]:
        parameters, flops = costs.exact(shape)
        record: dict[str, Any] = {
            **shape.as_dict(),
            "kept_layers": [layer + 1 for layer in _kept_layers(plan, shape.layers, teacher.layers)],
            "parameters": parameters,
            "flops": flops,
            "parameters_share_of_teacher": parameters / teacher_figures[0] if teacher_figures[0] else None,
            "flops_fewer_by": teacher_figures[1] / flops if flops else None,
            "meets_target": (parameters if index == 0 else flops) <= fits.limit,
            "importance_kept": importance.shares(shape) if importance is not None else None,
        }
        return record

    record: dict[str, Any] = {
        "target": target.as_dict(),
        "measure": measure_name,
        "limit": limit,
        "rule": rule,
        "teacher": {"parameters": teacher_figures[0], "flops": teacher_figures[1], "seq_len": target.seq_len},
        # Without scores only the uniform family is a candidate.
        "candidates": len(widths) * len(ffn_widths) * teacher.layers if scored else len(uniform),
        "meeting_target": meeting,
        "chosen": entry(chosen),
        "alternatives": [entry(shape) for shape in alternatives],
    }
    if target.size_of is not None:
        record["size_of_parameters"] = named_parameters
    if target.latency_fewer_by is not None:
        record["latency"] = "FLOPs proxy: at least latency_fewer_by times fewer FLOPs than the teacher"
    if scored:
        # The uniform shape of the same budget, for comparison (what random extraction would cut).
        record["uniform"] = entry(uniform_fits[-1]) if uniform_fits else None
    explicit = replace(
        plan,
        target=None,
        layers=chosen.layers,
        hidden=chosen.hidden,
        heads=chosen.heads,
        head_dim=chosen.head_dim,
        intermediate=chosen.intermediate,
        key_value_heads=chosen.key_value_heads,
    )
    return explicit, record


def _kept_layers(plan: ExtractPlan, layers: int, teacher_layers: int) -> list[int]:
    """0-based teacher layers a student of `layers` keeps, by the plan's `selection`."""
    return [layer - 1 for layer in select_layers(replace(plan, target=None, layers=layers), teacher_layers)]


def _unreachable(
    target: Target,
    measure_name: str,
    limit: float,
    teacher_figures: tuple[int, int],
    costs: Costs,
    widths: list[Width],
    ffn_widths: list[int],
    uniform: list[Shape],
    scored: bool,
) -> BrewerError:
    index = 0 if measure_name == "parameters" else 1
    if scored or not uniform:
        smallest = min(
            (replace(width, layers=1, intermediate=ffn_widths[0]) for width in widths),
            key=lambda shape: costs.estimate(shape)[index],
        )
        what = "the smallest student extraction can cut from this teacher"
    else:
        smallest = uniform[0]
        what = "the smallest uniform shape (strategy random keeps the teacher's head count)"
    parameters, flops = costs.estimate(smallest)
    key = target.key
    field = f"{FIELD}.target.{key}"
    if measure_name == "parameters":
        asked = f"{int(limit):,} parameters" + (f" ({target.size_of} as a student of this teacher)" if key == "size_of" else "")
        fix = f"raise {key} to at least {parameters:,}" if key == "parameters" else "name a larger config, or use parameters"
        # At one layer and the narrowest width, what remains is mostly the vocabulary × hidden table.
        detail = f"{parameters:,} parameters (the embeddings take vocabulary × hidden at any depth)"
    else:
        factor = getattr(target, key)
        reachable = math.floor(teacher_figures[1] / flops * 100) / 100  # rounded down, so that it is reachable
        asked = f"{factor:g}× fewer FLOPs than the teacher (at most {int(limit):,})"
        fix = f"lower {key} to at most {reachable:g}"
        detail = f"{flops:,} FLOPs, {reachable:g}× fewer than the teacher"
    hint = "" if scored or not uniform else ", or use strategy: importance, which may also cut heads"
    return BrewerError(f"{field}: no student meets {asked} — {what} is {shape_text(smallest)} with {detail}; {fix}{hint}")
