"""Importance scores (ETD-Impt): first-order Taylor estimates of the loss change when a head,
a query/key or value neuron, an FFN neuron or a hidden channel is removed, and the loss they are
taken of (see the package docstring; without labels and task head, objectives.py)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.extract.objectives import PretrainingObjective
from brewer_cli.extract.plan import Sizes
from brewer_cli.extract.slicing import (
    SCORE_ATTENTION_OUTPUT,
    SCORE_FFN_OUTPUT,
    SCORE_QUERY_KEY,
    SCORE_RESIDUAL,
    ParsedName,
    parse_name,
    width_size,
)
from brewer_cli.families import Family
from brewer_cli.families.layout import EMBEDDING, FFN, HIDDEN, QUERY_KEY, VALUE, blocks


@dataclass
class Scores:
    """Importance of every structure of one model, summed over the scored batches."""

    heads: list[torch.Tensor]  # per layer, (heads,)
    query_key: list[torch.Tensor]  # per layer, (heads × head size,)
    value: list[torch.Tensor]
    ffn: list[torch.Tensor]
    hidden: torch.Tensor  # (hidden,)
    examples: int
    losses: set[str]
    # The objectives' short names, for extraction.json: task_loss, own_predictions, or a
    # pre-training objective's (masked_lm, masked_hidden_reconstruction).
    objectives: set[str] = field(default_factory=set)


def collect_batches(batches: Iterable[dict[str, Any]], max_examples: int) -> list[dict[str, Any]]:
    """The first `max_examples` examples, kept so that every round scores the same data."""
    collected: list[dict[str, Any]] = []
    remaining = max_examples
    for batch in batches:
        if remaining <= 0:
            break
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise BrewerError(
                "importance extraction needs batches as dicts of tensors with at least 'input_ids' "
                f"(and 'attention_mask', optional 'token_type_ids' and labels); got {type(batch).__name__}"
                + (f" with keys {sorted(batch)}" if isinstance(batch, dict) else "")
            )
        size = int(batch["input_ids"].shape[0])
        if size > remaining:
            batch = {
                key: (value[:remaining] if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size else value)
                for key, value in batch.items()
            }
            size = remaining
        collected.append(batch)
        remaining -= size
    return collected


def _model_inputs(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    # Only the forward's named parameters: brewer's collate may add bookkeeping keys, and a key
    # such as token_type_ids must not slip into DistilBERT's **kwargs.
    accepted = {
        name
        for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return {key: value.to(device) for key, value in batch.items() if key in accepted and torch.is_tensor(value)}


def _hard_cross_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy to the model's own arg-max, over the last dimension, valid positions only."""
    logits = logits.float()
    flat = logits.reshape(-1, logits.shape[-1])
    losses = functional.cross_entropy(flat, flat.detach().argmax(dim=-1), reduction="none")
    if mask is None:
        return losses.mean()
    weights = mask.reshape(-1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def _own_prediction_loss(model: nn.Module, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The no-label loss: cross-entropy to the model's own hard predictions (see module docstring)."""
    mask = inputs.get("attention_mask")
    token_mask = mask.reshape(-1, mask.shape[-1]) if mask is not None else None
    start = outputs.get("start_logits")
    if start is not None:
        return (_hard_cross_entropy(start) + _hard_cross_entropy(outputs["end_logits"])) / 2
    prediction = outputs.get("prediction_logits")
    if prediction is not None:  # BERT pre-training: masked LM + next sentence prediction
        loss = _hard_cross_entropy(prediction, token_mask)
        relationship = outputs.get("seq_relationship_logits")
        return loss + _hard_cross_entropy(relationship) if relationship is not None else loss
    logits = outputs.get("logits")
    if logits is None:
        raise ModelError(f"{type(model).__name__} returns no logits to score importance with")
    if type(model).__name__ == "ElectraForPreTraining":  # per-token replaced/original logit
        logits = logits.float()
        targets = (logits.detach() > 0).float()
        losses = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        weights = token_mask.to(losses.dtype) if token_mask is not None else torch.ones_like(losses)
        return (losses * weights).sum() / weights.sum().clamp_min(1.0)
    if logits.dim() == 3:  # token classification, masked LM
        return _hard_cross_entropy(logits, token_mask)
    problem_type = getattr(model.config, "problem_type", None)
    if problem_type == "regression" or logits.shape[-1] == 1:
        return 0.5 * logits.float().pow(2).mean()
    if problem_type == "multi_label_classification":
        logits = logits.float()
        return functional.binary_cross_entropy_with_logits(logits, (logits.detach() > 0).float())
    return _hard_cross_entropy(logits)


@contextmanager
def _scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) with gradients, restoring everything the forward may touch."""
    modes = [(module, module.training) for module in model.modules()]
    # Sequence classification writes config.problem_type on its first labelled forward.
    problem_type = getattr(model.config, "problem_type", None)
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        model.config.problem_type = problem_type


def score_model(
    model: nn.Module,
    family: Family,
    sizes: Sizes,
    batches: list[dict[str, Any]],
    hidden_scoring: str,
    objective: PretrainingObjective | None = None,
) -> Scores:
    """Taylor scores (and activation scores for hidden channels) of one model; see module docstring.
    `objective`: score with it (on batches it masked) instead of the task loss or own predictions."""
    base_prefix = getattr(model, "base_model_prefix", "")
    scored: list[tuple[str, ParsedName]] = []
    for name, _ in model.named_parameters():
        parsed = parse_name(family, name, base_prefix)
        if parsed.rule is not None and parsed.rule.scores:
            scored.append((name, parsed))
    if not scored:
        raise ModelError(f"extraction found no scorable parameters in {type(model).__name__}")
    parameters = dict(model.named_parameters())
    device = next(model.parameters()).device
    attention = sizes.heads * sizes.head_dim

    def zeros(count: int) -> torch.Tensor:
        return torch.zeros(count, dtype=torch.float64)

    scores = Scores(
        heads=[zeros(sizes.heads) for _ in range(sizes.layers)],
        query_key=[zeros(attention) for _ in range(sizes.layers)],
        value=[zeros(attention) for _ in range(sizes.layers)],
        ffn=[zeros(sizes.intermediate) for _ in range(sizes.layers)],
        hidden=zeros(sizes.hidden),
        examples=0,
        losses=set(),
    )
    activation_sum = zeros(sizes.hidden)
    token_count = 0
    with _scoring_mode(model):
        for batch in batches:
            inputs = _model_inputs(model, batch, device)
            if hidden_scoring == "activation" or (objective is not None and objective.reads_hidden_states):
                inputs["output_hidden_states"] = True
            # Fresh leaves that share the weights' storage: gradients land on them, never on the
            # model's own parameters (which may be frozen and must stay untouched).
            leaves = {name: parameters[name].detach().requires_grad_(True) for name, _ in scored}
            outputs = torch.func.functional_call(model, leaves, args=(), kwargs=inputs)
            loss = outputs.get("loss")
            if objective is not None:
                loss = objective.loss(model, outputs, inputs, batch)
                scores.losses.add(objective.description)
                scores.objectives.add(objective.name)
            elif loss is not None:
                scores.losses.add("task loss")
                scores.objectives.add("task_loss")
            else:
                loss = _own_prediction_loss(model, outputs, inputs)
                scores.losses.add("cross-entropy to the model's own predictions")
                scores.objectives.add("own_predictions")
            gradients = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)

            query_key = [zeros(attention) for _ in range(sizes.layers)]
            value = [zeros(attention) for _ in range(sizes.layers)]
            ffn = [zeros(sizes.intermediate) for _ in range(sizes.layers)]
            hidden = zeros(sizes.hidden)
            for (name, parsed), gradient in zip(scored, gradients):
                if gradient is None:
                    continue
                product = (leaves[name].detach().double() * gradient.double()).cpu()
                roles = parsed.rule.roles
                for kind in parsed.rule.scores:
                    if kind == SCORE_QUERY_KEY:
                        query_key[parsed.layer] += _sum_width(product, roles, QUERY_KEY, sizes)
                    elif kind == SCORE_ATTENTION_OUTPUT:
                        value[parsed.layer] += _sum_except(product, roles.index(VALUE))
                    elif kind == SCORE_FFN_OUTPUT:
                        ffn[parsed.layer] += _sum_except(product, roles.index(FFN))
                    elif kind == SCORE_RESIDUAL:
                        hidden_dimensions = [
                            dimension
                            for dimension, role in enumerate(roles)
                            if role == HIDDEN or (role == EMBEDDING and sizes.embedding_tied)
                        ]
                        if hidden_dimensions:
                            hidden += _sum_except(product, hidden_dimensions[0])
            for layer in range(sizes.layers):
                scores.heads[layer] += value[layer].view(sizes.heads, sizes.head_dim).sum(dim=1).abs()
                scores.query_key[layer] += query_key[layer].abs()
                scores.value[layer] += value[layer].abs()
                scores.ffn[layer] += ffn[layer].abs()
            scores.hidden += hidden.abs()

            if hidden_scoring == "activation":
                states = outputs.get("hidden_states")
                if not states:
                    raise ModelError(f"{type(model).__name__} returns no hidden states for activation scoring")
                mask = inputs.get("attention_mask")
                for state in states:
                    state = state.detach().double()
                    flat_mask = (
                        mask.reshape(-1, mask.shape[-1]).to(state.dtype)
                        if mask is not None
                        else torch.ones(state.shape[:-1], dtype=state.dtype, device=state.device)
                    )
                    activation_sum += (state.abs() * flat_mask.unsqueeze(-1)).sum(dim=(0, 1)).cpu()
                token_count += int(mask.sum()) if mask is not None else int(states[0].shape[0] * states[0].shape[1])
            scores.examples += int(batch["input_ids"].shape[0])
    if hidden_scoring == "activation":
        # Σ over hidden states of the mean |activation| per valid token.
        scores.hidden = activation_sum / max(token_count, 1)
    return scores


def _sum_width(product: torch.Tensor, roles: tuple, width: str, sizes: Sizes) -> torch.Tensor:
    """Per index of `width`: `product` summed over every other dimension, and over every block of
    that width in a fused dimension (GPT-2's q|k|v: the q and k blocks both feed query/key scores)."""
    dimension = next(index for index, role in enumerate(roles) if width in blocks(role))
    summed = _sum_except(product, dimension)
    if not isinstance(roles[dimension], tuple):
        return summed
    total, offset = None, 0
    for block in roles[dimension]:
        size = width_size(block, sizes)
        if block == width:
            piece = summed[offset : offset + size]
            total = piece if total is None else total + piece
        offset += size
    return total


def _sum_except(tensor: torch.Tensor, keep: int) -> torch.Tensor:
    dimensions = [dimension for dimension in range(tensor.dim()) if dimension != keep]
    return tensor.sum(dim=dimensions) if dimensions else tensor
