"""Extraction from grouped-query attention (Llama, Mistral, Qwen2, Qwen3): the student's sizes and
which query heads and key/value groups it keeps.

Groups. Query heads share key/value heads in groups: with h query heads and g key/value heads,
query head i reads key/value head i // (h/g). A student is a valid model of the teacher's class
only when every kept group keeps the same number of query heads (num_key_value_heads must divide
num_attention_heads), so extraction keeps g′ groups and, inside each kept group, h′/g′ of its
query heads. Kept groups and kept heads are both in the teacher's order, so student head i reads
student group i // (h′/g′), which is the teacher's group of that head.

Head size. RoPE rotates each head's channel pairs (i, i + head_dim/2) by angles set by the pair
index, so a subset of a head's channels is not a smaller rotary head: the head size stays whole
(the family's `whole_heads_reason` says why when a plan asks otherwise). Query heads are kept or
dropped whole, and so are key/value groups.

Hidden. q_proj maps hidden to heads × head_dim, so the hidden width is independent of the heads
and may shrink alone (one channel set for the embeddings, every RMSNorm, every projection's
hidden side, the final norm and the LM head).

Sizes a plan may leave out: hidden and intermediate stay the teacher's; heads stays the teacher's;
key_value_heads keeps the teacher's group size (h′ / (h/g)) when that divides, else it must be set.

Scores. A query head's score is its head score (importance: the Taylor sum over the o_proj input
columns that read it; activation: its mean output norm); a group's is the sum of its query heads'
scores, since a group contributes only through the heads that read it. `random` draws groups, then
heads inside each kept group, from the extraction's seeded generator.
"""

from __future__ import annotations

import torch

from brewer_cli.errors import BrewerError
from brewer_cli.extract.plan import FIELD, ExtractPlan, Sizes
from brewer_cli.families import Family


def resolve_grouped_sizes(plan: ExtractPlan, teacher: Sizes, family: Family) -> Sizes:
    """The student's sizes for a grouped-query teacher (see the module docstring)."""
    assert teacher.key_value_heads is not None
    group_size = teacher.heads // teacher.key_value_heads
    if plan.head_dim is not None and plan.head_dim != teacher.head_dim:
        raise BrewerError(
            f"{FIELD}.head_dim: {plan.head_dim} differs from the teacher's head size {teacher.head_dim}, but "
            f"{family.title} heads cannot be cut: {family.whole_heads_reason}"
        )
    if plan.rounds != 1:
        raise BrewerError(
            f"{FIELD}.rounds: {family.title} extraction runs in one round (got {plan.rounds}): its query heads and "
            f"key/value groups are kept whole, so there are no intermediate head sizes to step through — use rounds: 1"
        )
    for name, value, limit, what in (
        ("hidden", plan.hidden, teacher.hidden, "hidden size"),
        ("heads", plan.heads, teacher.heads, "number of attention heads"),
        ("key_value_heads", plan.key_value_heads, teacher.key_value_heads, "number of key/value heads"),
        ("intermediate", plan.intermediate, teacher.intermediate, "intermediate (FFN) size"),
    ):
        if value is not None and value > limit:
            raise BrewerError(
                f"{FIELD}.{name}: {value} is larger than the teacher's {what} ({limit}); extraction keeps a subset "
                f"of the teacher's parameters, so a size can only stay or shrink"
            )
    heads = plan.heads if plan.heads is not None else teacher.heads
    key_value_heads = plan.key_value_heads
    if key_value_heads is None:
        if heads % group_size:
            raise BrewerError(
                f"{FIELD}.heads: {heads} query heads do not fill groups of the teacher's {group_size} query heads per "
                f"key/value head — set key_value_heads to a divisor of {heads} of at most {teacher.key_value_heads} "
                f"with at most {group_size} heads per group: {_valid_groups(heads, teacher)}"
            )
        key_value_heads = heads // group_size
    elif heads % key_value_heads or heads // key_value_heads > group_size:
        raise BrewerError(
            f"{FIELD}.key_value_heads: {heads} query heads in {key_value_heads} key/value groups is not possible — each "
            f"kept group keeps the same number of its own query heads (at most the teacher's {group_size}), so "
            f"key_value_heads must divide heads with at most {group_size} heads per group; valid for {heads} heads: "
            f"{_valid_groups(heads, teacher)}"
        )
    return Sizes(
        layers=teacher.layers,
        hidden=plan.hidden if plan.hidden is not None else teacher.hidden,
        heads=heads,
        head_dim=teacher.head_dim,
        intermediate=plan.intermediate if plan.intermediate is not None else teacher.intermediate,
        embedding=plan.hidden if plan.hidden is not None else teacher.hidden,
        key_value_heads=key_value_heads,
    )


def _valid_groups(heads: int, teacher: Sizes) -> str:
    assert teacher.key_value_heads is not None
    group_size = teacher.heads // teacher.key_value_heads
    valid = [groups for groups in range(1, teacher.key_value_heads + 1) if heads % groups == 0 and heads // groups <= group_size]
    return ", ".join(map(str, valid)) if valid else "none (choose fewer heads)"


def choose_grouped_heads(
    source: Sizes,
    target: Sizes,
    head_scores: torch.Tensor | None,
    choose,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept query heads, kept key/value groups) of one layer, both sorted; `choose(count, total,
    scores)` picks the top-scored or, without scores, random indices."""
    assert source.key_value_heads is not None and target.key_value_heads is not None
    group_size = source.heads // source.key_value_heads
    per_group = target.heads // target.key_value_heads
    group_scores = head_scores.view(source.key_value_heads, group_size).sum(dim=1) if head_scores is not None else None
    groups = choose(target.key_value_heads, source.key_value_heads, group_scores)
    heads = []
    for group in groups.tolist():
        members = head_scores[group * group_size : (group + 1) * group_size] if head_scores is not None else None
        heads.append(group * group_size + choose(per_group, group_size, members))
    return torch.cat(heads), groups


def whole_heads(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The flattened neuron indices of whole heads (or groups)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
