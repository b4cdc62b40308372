"""Which kept-index set slices each dimension of each parameter, and building the student from the
sliced weights.

The rules come from the family's declared layout (brewer_cli/families): every module there states
the widths its parameters span, and every dimension of a width is sliced with that width's index
set; a fused dimension (GPT-2's q|k|v) is sliced block by block, each block with its width's set
shifted by the blocks before it. The Taylor scores a parameter feeds follow from the same
declaration (see `_score_kinds`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from functools import cache

import torch
from torch import nn

from brewer_cli.errors import ModelError
from brewer_cli.extract.plan import Sizes, write_sizes
from brewer_cli.families import FAMILIES, Family, registered_family
from brewer_cli.families.layout import EMBEDDING, FFN, HIDDEN, KEY_VALUE, QUERY_KEY, VALUE, Slot, Width, blocks

# What a parameter contributes to the Taylor importance scores.
SCORE_QUERY_KEY = "query_key"  # Q/K rows: per query/key neuron
SCORE_ATTENTION_OUTPUT = "attention_output"  # O columns: per value neuron and per head
SCORE_FFN_OUTPUT = "ffn_output"  # FFN output columns: per FFN neuron
SCORE_RESIDUAL = "residual"  # writes the residual stream: per hidden channel

# The families extraction covers, by name (each is named after its main model_type).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(entry.value.name for entry in FAMILIES if entry.value.extractable))


@dataclass(frozen=True)
class Rule:
    """How one parameter depends on the sizes: the width of each dimension, and its score."""

    roles: tuple[Width, ...]
    scores: tuple[str, ...] = ()


def _score_kinds(slot: Slot, parameter: str) -> tuple[str, ...]:
    """Which Taylor scores a parameter feeds (see the package docstring): the weights whose
    zeroing removes a structure. A pre-LN block's output projection writes the residual stream
    and reads the heads (or FFN neurons), so it feeds both."""
    kinds = []
    if slot.residual:
        kinds.append(SCORE_RESIDUAL)
    if QUERY_KEY in blocks(slot.writes):
        kinds.append(SCORE_QUERY_KEY)
    if parameter == "weight" and slot.reads == VALUE:
        kinds.append(SCORE_ATTENTION_OUTPUT)
    if parameter == "weight" and slot.reads == FFN:
        kinds.append(SCORE_FFN_OUTPUT)
    return tuple(kinds)


def _rules(slots: tuple[Slot, ...]) -> dict[str, Rule]:
    return {
        f"{slot.path}.{parameter}": Rule(roles, _score_kinds(slot, parameter))
        for slot in slots
        for parameter, roles in slot.parameter_widths().items()
    }


@dataclass(frozen=True)
class FamilyRules:
    layer_pattern: re.Pattern[str]  # a parameter inside a layer, without the base prefix
    layer: dict[str, Rule]  # by the name inside the layer
    outside: dict[str, Rule]  # by the name without the base prefix (base modules and task heads)


@cache
def family_rules(family: Family) -> FamilyRules:
    return FamilyRules(
        layer_pattern=re.compile(rf"{re.escape(family.layers)}\.(\d+)\.(.+)"),
        layer=_rules(family.layer.slots()),
        outside=_rules(family.base_slots() + family.task_heads),
    )


def extraction_family(model: nn.Module) -> Family:
    """The teacher's family, refusing the ones extraction cannot cut."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or model_type is None:
        raise ModelError(f"extraction needs a Hugging Face transformers model with a config; got {type(model).__name__}")
    family = registered_family(config)
    if family is not None and family.extraction_refusal is not None:
        raise ModelError(
            f"extraction does not support {family.title}: {family.extraction_refusal}. Distill into a "
            "student built from a config instead (student.config), or extract from a BERT-style "
            f"teacher — supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if family is not None and family.extractable:
        return family
    raise ModelError(
        f"extraction does not know the model type '{model_type}' ({type(model).__name__}) — "
        f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


@dataclass(frozen=True)
class ParsedName:
    rule: Rule | None
    layer: int | None  # layer index in the model the name belongs to (0-based)
    prefix: str  # "bert." or "" — the base model prefix the name carries
    rest: str  # the name inside the layer, or without the base prefix


def parse_name(family: Family, name: str, base_prefix: str) -> ParsedName:
    rules = family_rules(family)
    prefix = ""
    stripped = name
    if base_prefix and name.startswith(base_prefix + "."):
        prefix = base_prefix + "."
        stripped = name[len(prefix) :]
    match = rules.layer_pattern.fullmatch(stripped)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        return ParsedName(rules.layer.get(rest), layer, prefix, rest)
    return ParsedName(rules.outside.get(stripped), None, prefix, stripped)


@dataclass
class IndexSets:
    """Kept indices relative to one source model; per-layer lists follow the source's layers."""

    hidden: torch.Tensor
    heads: list[torch.Tensor]
    query_key: list[torch.Tensor]  # flattened over heads × head size
    value: list[torch.Tensor]
    ffn: list[torch.Tensor]
    # Grouped-query attention: the key/value groups' neurons (whole groups); else the value set.
    key_value: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.key_value is None:
            self.key_value = self.value

    @classmethod
    def full(cls, sizes: Sizes) -> IndexSets:
        attention = sizes.heads * sizes.head_dim
        key_value = (sizes.key_value_heads or sizes.heads) * sizes.head_dim
        return cls(
            hidden=torch.arange(sizes.hidden),
            heads=[torch.arange(sizes.heads) for _ in range(sizes.layers)],
            query_key=[torch.arange(attention) for _ in range(sizes.layers)],
            value=[torch.arange(attention) for _ in range(sizes.layers)],
            ffn=[torch.arange(sizes.intermediate) for _ in range(sizes.layers)],
            key_value=[torch.arange(key_value) for _ in range(sizes.layers)],
        )

    def compose(self, later: IndexSets) -> IndexSets:
        """Indices of `later` (relative to the model this set produced) in this set's source."""
        return IndexSets(
            hidden=self.hidden[later.hidden],
            heads=[mine[theirs] for mine, theirs in zip(self.heads, later.heads)],
            query_key=[mine[theirs] for mine, theirs in zip(self.query_key, later.query_key)],
            value=[mine[theirs] for mine, theirs in zip(self.value, later.value)],
            ffn=[mine[theirs] for mine, theirs in zip(self.ffn, later.ffn)],
            key_value=[mine[theirs] for mine, theirs in zip(self.key_value, later.key_value)],
        )

    def for_width(self, width: Width, layer: int | None, sizes: Sizes) -> torch.Tensor | None:
        """The indices that slice a dimension of `width` (None: kept whole)."""
        if isinstance(width, tuple):
            # A fused dimension: each block sliced by its own width, shifted past the blocks before.
            pieces, offset = [], 0
            for block in width:
                index = self.for_width(block, layer, sizes)
                size = width_size(block, sizes)
                pieces.append(offset + (index if index is not None else torch.arange(size)))
                offset += size
            return torch.cat(pieces)
        if width is None:
            return None
        if width == HIDDEN:
            return self.hidden
        if width == EMBEDDING:
            return self.hidden if sizes.embedding_tied else None
        assert layer is not None, f"width {width} outside a layer"
        per_layer = {QUERY_KEY: self.query_key, VALUE: self.value, FFN: self.ffn, KEY_VALUE: self.key_value}[width]
        return per_layer[layer]


def width_size(width: str | None, sizes: Sizes) -> int:
    """How many indices a (block) width has in a model of `sizes`."""
    if width in (QUERY_KEY, VALUE):
        return sizes.heads * sizes.head_dim
    if width == KEY_VALUE:
        return (sizes.key_value_heads or sizes.heads) * sizes.head_dim
    if width == FFN:
        return sizes.intermediate
    if width == HIDDEN:
        return sizes.hidden
    raise ValueError(f"width {width!r} has no size of its own")


def build_student(
    source: nn.Module,
    family: Family,
    source_sizes: Sizes,
    target: Sizes,
    index_sets: IndexSets,
    layer_map: list[int],
) -> nn.Module:
    """A fresh model of the source's class with `target` sizes, holding the sliced weights.

    layer_map: for each student layer, the 0-based source layer it copies.
    """
    config = copy.deepcopy(source.config)
    write_sizes(family, config, replace(target, layers=len(layer_map)))
    family.keep_layers(config, layer_map)
    reference = next(source.parameters())
    student = type(source)._from_config(config, dtype=reference.dtype)
    source_state = source.state_dict()
    base_prefix = getattr(source, "base_model_prefix", "")
    state: dict[str, torch.Tensor] = {}
    for name, expected in student.state_dict().items():
        parsed = parse_name(family, name, base_prefix)
        source_layer = None
        source_name = name
        if parsed.layer is not None:
            source_layer = layer_map[parsed.layer]
            source_name = f"{parsed.prefix}{family.layers}.{source_layer}.{parsed.rest}"
        if source_name not in source_state:
            raise ModelError(f"extraction cannot find the teacher's parameter '{source_name}' for '{name}'")
        tensor = source_state[source_name].detach()
        if parsed.rule is None:
            # Not size-dependent as far as brewer knows (buffers, unusual heads): copy it when the
            # shape is unchanged, which also holds for every size-dependent tensor whose sizes stay.
            if tensor.shape != expected.shape:
                raise ModelError(
                    f"extraction does not know how '{name}' of {type(source).__name__} depends on the "
                    f"model's sizes (shape {tuple(tensor.shape)} in the teacher, {tuple(expected.shape)} "
                    f"in the student); supported: the models of {', '.join(SUPPORTED_MODEL_TYPES)} with "
                    f"their sequence/token classification, QA, multiple-choice, masked-LM and causal-LM heads"
                )
            state[name] = tensor.clone()
            continue
        sliced = tensor
        for dimension, role in enumerate(parsed.rule.roles):
            index = index_sets.for_width(role, source_layer, source_sizes)
            if index is not None:
                sliced = sliced.index_select(dimension, index.to(sliced.device))
        if sliced.shape != expected.shape:
            raise ModelError(
                f"extraction sliced '{name}' to {tuple(sliced.shape)} but the student expects "
                f"{tuple(expected.shape)}; this head layout of {type(source).__name__} is not supported"
            )
        state[name] = sliced.clone() if sliced is tensor else sliced
    # Tied weights (MLM decoder = word embeddings) appear under both names with equal slices, so a
    # strict load keeps the tie and fills both.
    student.load_state_dict(state, strict=True)
    student.to(reference.device)
    student.train(source.training)
    return student
