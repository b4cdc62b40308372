"""`extract_student`: the rounds of choosing index sets (by score or at random) and slicing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.extract.activation import activation_scores
from brewer_cli.extract.budget import choose_shape
from brewer_cli.extract.grouped import choose_grouped_heads, resolve_grouped_sizes, whole_heads
from brewer_cli.extract.objectives import PretrainingObjective
from brewer_cli.extract.plan import (
    FIELD,
    ExtractPlan,
    ExtractResult,
    Sizes,
    check_electra_projection,
    read_sizes,
    resolve_sizes,
    round_sizes,
    select_layers,
)
from brewer_cli.extract.report import importance_summary
from brewer_cli.extract.scoring import Scores, collect_batches, score_model
from brewer_cli.extract.slicing import IndexSets, build_student, extraction_family
from brewer_cli.families import Family, parameter_count


def _choose(count: int, total: int, scores: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """`count` sorted indices of `total`: the top-scored, or uniformly random without scores."""
    if count >= total:
        return torch.arange(total)
    if scores is None:
        chosen = torch.randperm(total, generator=generator)[:count]
    else:
        # Stable sort: equal scores keep the lower index, so results do not depend on the kernel.
        chosen = torch.argsort(scores, descending=True, stable=True)[:count]
    return chosen.sort().values


def _choose_index_sets(source: Sizes, target: Sizes, scores: Scores | None, generator: torch.Generator) -> IndexSets:
    hidden = _choose(target.hidden, source.hidden, scores.hidden if scores else None, generator)
    if source.key_value_heads is not None:
        return _choose_grouped_index_sets(source, target, scores, generator, hidden)
    heads, query_key, value, ffn = [], [], [], []
    for layer in range(source.layers):
        kept_heads = _choose(target.heads, source.heads, scores.heads[layer] if scores else None, generator)
        layer_query_key, layer_value = [], []
        for head in kept_heads.tolist():
            start = head * source.head_dim
            head_slice = slice(start, start + source.head_dim)
            layer_query_key.append(
                start
                + _choose(
                    target.head_dim,
                    source.head_dim,
                    scores.query_key[layer][head_slice] if scores else None,
                    generator,
                )
            )
            layer_value.append(
                start
                + _choose(
                    target.head_dim,
                    source.head_dim,
                    scores.value[layer][head_slice] if scores else None,
                    generator,
                )
            )
        heads.append(kept_heads)
        query_key.append(torch.cat(layer_query_key))
        value.append(torch.cat(layer_value))
        ffn.append(
            _choose(
                target.intermediate,
                source.intermediate,
                scores.ffn[layer] if scores else None,
                generator,
            )
        )
    return IndexSets(hidden, heads, query_key, value, ffn)


def _choose_grouped_index_sets(
    source: Sizes, target: Sizes, scores: Scores | None, generator: torch.Generator, hidden: torch.Tensor
) -> IndexSets:
    """Grouped-query attention: whole key/value groups, then whole query heads inside each (grouped.py)."""

    def choose(count: int, total: int, ranking: torch.Tensor | None) -> torch.Tensor:
        return _choose(count, total, ranking, generator)

    heads, attention, key_value, ffn = [], [], [], []
    for layer in range(source.layers):
        kept_heads, kept_groups = choose_grouped_heads(source, target, scores.heads[layer] if scores else None, choose)
        heads.append(kept_heads)
        attention.append(whole_heads(kept_heads, source.head_dim))
        key_value.append(whole_heads(kept_groups, source.head_dim))
        ffn.append(choose(target.intermediate, source.intermediate, scores.ffn[layer] if scores else None))
    # Whole heads: the query/key and value neurons are those of the kept query heads.
    return IndexSets(hidden, heads, attention, attention, ffn, key_value=key_value)


def check_layer_positions(family: Family, config: Any, kept_layers: list[int]) -> None:
    """Refuse to move a layer whose computation depends on its index (`Family.layer_index_flags`)."""
    flags = [flag for flag in family.layer_index_flags if getattr(config, flag, False)]
    moved = [(old, new) for new, old in enumerate(kept_layers, start=1) if old != new]
    if flags and moved:
        old, new = moved[0]
        raise BrewerError(
            f"{FIELD}.layers: the {family.title} teacher has {flags[0]}=true, so each layer scales its attention "
            f"scores by its own position — teacher layer {old} kept as student layer {new} would attend differently. "
            f"Keep the first layers (`selection: first`), keep every layer, or extract from a teacher without {flags[0]}"
        )


def extract_student(
    teacher_model: nn.Module,
    plan: ExtractPlan,
    batches: Iterable[dict[str, Any]] | None = None,
    max_examples: int = 256,
    objective: PretrainingObjective | None = None,
) -> ExtractResult:
    """Build a student from the teacher's parameters following `plan` (ETD).

    batches: dicts of tensors the teacher's forward takes (`input_ids`, `attention_mask`, optional
        `token_type_ids`, optional `labels`/`start_positions`/`end_positions`); keys the forward
        does not name are ignored. Required for `strategy="importance"`; at most `max_examples`
        examples are scored (read once, reused by every round).
    objective: for `importance` on data without labels and a teacher without a task head (ETD's
        task-agnostic setting): score with this pre-training objective, on batches it masks with
        `plan.seed`. With its masked-LM model (the teacher with its head), that model is scored and
        sliced alongside the teacher, whose sliced copy is the student.
    The teacher is not modified: scores are computed through detached copies of its weights, its
    modes are restored, and every student tensor is a new tensor. The student starts in the
    teacher's train/eval mode.
    """
    if not isinstance(plan, ExtractPlan):
        raise TypeError(f"plan must be an ExtractPlan, got {type(plan).__name__}")
    family = extraction_family(teacher_model)
    teacher_sizes = read_sizes(family, teacher_model.config)

    objective = objective if plan.strategy == "importance" else None
    scored = plan.strategy in ("importance", "activation")
    # The model whose loss is scored: the teacher itself, or the teacher with its masked-LM head.
    scorer = _masked_lm_scorer(objective, family, teacher_sizes) if objective is not None else None

    collected: list[dict[str, Any]] = []
    if scored:
        if batches is None:
            raise BrewerError(
                f"{FIELD}.strategy: '{plan.strategy}' scores the teacher's heads, neurons and channels on "
                f"data, but no batches were given — pass training batches, or use strategy: random"
            )
        if max_examples < 1:
            raise BrewerError(f"importance extraction needs max_examples ≥ 1, got {max_examples}")
        collected = collect_batches(batches, max_examples)
        if not collected:
            raise BrewerError("importance extraction got no batches to score (the data is empty)")
        if objective is not None:
            collected = objective.mask_batches(collected, plan.seed)

    teacher_scores: Scores | None = None
    budget: dict[str, Any] | None = None
    if plan.target is not None:
        # A target: the sizes are chosen from the teacher's own scores, which are round 1's too (budget.py).
        if scored:
            teacher_scores = _scores(plan, scorer or teacher_model, family, teacher_sizes, collected, objective)
        plan, budget = choose_shape(teacher_model, family, teacher_sizes, plan, teacher_scores)
    if teacher_sizes.key_value_heads is not None:
        # Grouped-query attention keeps whole heads and groups, in one round (grouped.py).
        target = resolve_grouped_sizes(plan, teacher_sizes, family)
        per_round = [target]
    else:
        target = resolve_sizes(plan, teacher_sizes)
        per_round = round_sizes(teacher_sizes, target, plan.rounds)
    kept_layers = select_layers(plan, teacher_sizes.layers)
    check_layer_positions(family, teacher_model.config, kept_layers)
    check_electra_projection(teacher_sizes, per_round)

    generator = torch.Generator().manual_seed(plan.seed)
    source, source_sizes = teacher_model, teacher_sizes
    in_teacher = IndexSets.full(teacher_sizes)  # the current source's indices, in teacher space
    first_scores: Scores | None = None
    for round_number, sizes in enumerate(per_round, start=1):
        scores = None
        if scored:
            scores = (
                teacher_scores
                if round_number == 1 and teacher_scores is not None
                else _scores(plan, scorer or source, family, source_sizes, collected, objective)
            )
            if first_scores is None:
                first_scores = scores
        index_sets = _choose_index_sets(source_sizes, sizes, scores, generator)
        last = round_number == len(per_round)
        layer_map = [layer - 1 for layer in kept_layers] if last else list(range(source_sizes.layers))
        student = build_student(source, family, source_sizes, sizes, index_sets, layer_map)
        if scorer is not None and not last:
            # The next round scores the intermediate model with its head, cut the same way.
            scorer = build_student(scorer, family, source_sizes, sizes, index_sets, layer_map)
        in_teacher = in_teacher.compose(index_sets)
        source, source_sizes = student, replace(sizes, layers=len(layer_map))

    student_sizes = source_sizes
    kept = {
        "model_class": type(teacher_model).__name__,
        "strategy": plan.strategy,
        "seed": plan.seed,
        "selection": "explicit" if isinstance(plan.layers, tuple) else plan.selection,
        "rounds": plan.rounds,
        "layers": kept_layers,
        "hidden": student_sizes.hidden,
        "hidden_indices": in_teacher.hidden.tolist(),
        "heads": [in_teacher.heads[layer - 1].tolist() for layer in kept_layers],
        "head_dim": student_sizes.head_dim,
        "ffn_neurons": [int(in_teacher.ffn[layer - 1].numel()) for layer in kept_layers],
        # Grouped-query attention: per kept layer, the 0-based teacher key/value groups kept.
        **(
            {"key_value_groups": [_groups(in_teacher.key_value[layer - 1], teacher_sizes.head_dim) for layer in kept_layers]}
            if teacher_sizes.key_value_heads is not None
            else {}
        ),
        # The loss importance was scored with (None for random): task_loss, own_predictions,
        # masked_lm or masked_hidden_reconstruction.
        "objective": " + ".join(sorted(first_scores.objectives)) if first_scores is not None else None,
        "sizes": {
            "teacher": {**teacher_sizes.as_dict(), "parameters": parameter_count(teacher_model)},
            "student": {**student_sizes.as_dict(), "parameters": parameter_count(source)},
        },
    }
    if budget is not None:
        kept["budget"] = budget  # the target, the chosen shape, its size figures and the alternatives
    summary = None
    if first_scores is not None:
        summary = importance_summary(first_scores, in_teacher, kept_layers, teacher_sizes, target, plan)
        summary["objective"] = kept["objective"]
    return ExtractResult(model=source, kept=kept, importance_summary=summary)


def _groups(neurons: torch.Tensor, head_dim: int) -> list[int]:
    return (neurons[::head_dim] // head_dim).tolist()


def _scores(
    plan: ExtractPlan,
    model: nn.Module,
    family: Family,
    sizes: Sizes,
    batches: list[dict[str, Any]],
    objective: PretrainingObjective | None,
) -> Scores:
    """Taylor scores (`importance`) or activation magnitudes (`activation`) of one model."""
    if plan.strategy == "activation":
        return activation_scores(model, family, sizes, batches)
    return score_model(model, family, sizes, batches, plan.hidden_scoring, objective)


def _masked_lm_scorer(objective: PretrainingObjective, family: Family, teacher_sizes: Sizes) -> nn.Module | None:
    """The objective's masked-LM model, checked to be the teacher's own network with a head."""
    model = objective.masked_lm
    if model is None:
        return None
    if extraction_family(model) != family or read_sizes(family, model.config) != teacher_sizes:
        raise ModelError(
            f"the masked-LM model scored for importance ({type(model).__name__}) is not the teacher's network: its "
            f"family or sizes differ — load it from the teacher's own checkpoint"
        )
    return model
