"""Model families: where each architecture keeps its layers and attention projections, and how
its raw outputs become `Features`.

Every family loads through the `transformers` Auto classes, so a local directory and a hub id take
the same path. What differs between families is only where the query/key/value projections live
(needed to capture pre-softmax attention scores with hooks, leaving the fast SDPA kernel on) and a
few config names; that is all a `Family` holds.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from brewer_cli.errors import ModelError
from brewer_cli.families.base import AttentionInputs, Features
from brewer_cli.registry import Registry

__all__ = ["FAMILIES", "Family", "FeatureNeeds", "Features", "AttentionInputs", "family_for"]


@dataclass(frozen=True)
class FeatureNeeds:
    """Which features a distiller's losses read; anything not needed is not computed."""

    hidden_states: bool = False
    attention_scores: bool = False
    attention_inputs: bool = False

    def __or__(self, other: "FeatureNeeds") -> "FeatureNeeds":
        return FeatureNeeds(
            self.hidden_states or other.hidden_states,
            self.attention_scores or other.attention_scores,
            self.attention_inputs or other.attention_inputs,
        )


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # Attribute path from the task model to the base model, and from there to the layer list.
    base_model: str
    layers: str
    # Attribute path from one layer to its attention module, and the projections' names there.
    attention: str
    query: str = "query"
    key: str = "key"
    value: str = "value"
    uses_token_type_ids: bool = True
    # ALBERT: one shared layer block applied `num_hidden_layers` times.
    shared_layers: bool = False
    supports_attention_capture: bool = True

    # -- config ---------------------------------------------------------------------------------

    @staticmethod
    def depth(config: Any) -> int:
        return int(config.num_hidden_layers)

    @staticmethod
    def width(config: Any) -> int:
        return int(config.hidden_size)

    @staticmethod
    def heads(config: Any) -> int:
        return int(config.num_attention_heads)

    @staticmethod
    def embedding_width(config: Any) -> int:
        # hidden_states[0] is the encoder's input; ALBERT and ELECTRA project the embeddings to
        # the hidden width before it, so it always has the hidden width.
        return int(config.hidden_size)

    # -- modules --------------------------------------------------------------------------------

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        base = _get_path(model, self.base_model)
        layers = _get_path(base, self.layers)
        if self.shared_layers:
            return [layers] * self.depth(model.config)
        return list(layers)

    def attention_projections(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
        """(query, key, value) linear modules per layer, in layer order (ALBERT repeats one)."""
        result = []
        for layer in self.layer_modules(model):
            attention = _get_path(layer, self.attention)
            result.append((getattr(attention, self.query), getattr(attention, self.key), getattr(attention, self.value)))
        return result

    # -- features -------------------------------------------------------------------------------

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_token_type_ids else [])
        return {name: batch[name] for name in names if name in batch}

    def features(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        needs: FeatureNeeds = FeatureNeeds(),
        labels: torch.Tensor | None = None,
        logits_of=None,
    ) -> Features:
        """Run `model` on `batch` and return the features `needs` asks for.

        `labels`, when given, are passed to the model so that its own task loss is computed.
        `logits_of(outputs)` picks the task's logits (QA returns a (start, end) tuple).
        """
        inputs = self.model_inputs(batch)
        if isinstance(labels, tuple):
            # Extractive QA: (start, end) answer positions, under the QA heads' own argument names.
            inputs["start_positions"], inputs["end_positions"] = labels
        elif labels is not None:
            inputs["labels"] = labels
        with self.capture(model, needs) as captured:
            outputs = model(**inputs, output_hidden_states=needs.hidden_states, return_dict=True)
        logits = logits_of(outputs) if logits_of is not None else outputs.logits
        attention_inputs = captured.attention_inputs(model.config, self) if captured else None
        scores = None
        if needs.attention_scores and attention_inputs is not None:
            scores = tuple(attention_scores(item) for item in attention_inputs)
        return Features(
            logits=logits,
            attention_mask=batch["attention_mask"],
            hidden_states=tuple(outputs.hidden_states) if needs.hidden_states else None,
            attention_scores=scores,
            attention_inputs=attention_inputs if needs.attention_inputs else None,
            labels=labels,
            task_loss=getattr(outputs, "loss", None),
        )

    @contextmanager
    def capture(self, model: nn.Module, needs: FeatureNeeds) -> Iterator["_Capture | None"]:
        if not (needs.attention_scores or needs.attention_inputs):
            yield None
            return
        if not self.supports_attention_capture:
            raise ModelError(
                f"attention losses are not available for the {self.name} family: its attention "
                f"adds relative-position terms that plain query/key projections do not capture; "
                f"use hidden-state matches for this model"
            )
        capture = _Capture(self.attention_projections(model), with_values=needs.attention_inputs)
        try:
            yield capture
        finally:
            capture.remove()


class _Capture:
    """Forward hooks on the query/key(/value) projections, recording each call in order.

    A module used by several layers (ALBERT) is called once per layer, so per-module call lists
    rebuild the per-layer order without knowing anything about sharing.
    """

    def __init__(self, projections: list[tuple[nn.Module, nn.Module, nn.Module]], with_values: bool):
        self.projections = projections
        self.with_values = with_values
        self.calls: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        seen: set[int] = set()
        for query, key, value in projections:
            for module in (query, key, value) if with_values else (query, key):
                if id(module) in seen:
                    continue
                seen.add(id(module))
                self.calls[id(module)] = []
                self.handles.append(module.register_forward_hook(self._hook(id(module))))

    def _hook(self, module_id: int):
        def record(_module, _inputs, output):
            self.calls[module_id].append(output)

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def attention_inputs(self, config: Any, family: Family) -> tuple[AttentionInputs, ...]:
        used: dict[int, int] = {}
        result = []
        heads = family.heads(config)

        def take(module: nn.Module) -> torch.Tensor:
            index = used.get(id(module), 0)
            used[id(module)] = index + 1
            return self.calls[id(module)][index]

        for query, key, value in self.projections:
            result.append(
                AttentionInputs(
                    query=take(query),
                    key=take(key),
                    value=take(value) if self.with_values else None,
                    num_heads=heads,
                )
            )
        return tuple(result)


def split_heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = tensor.shape
    return tensor.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def attention_scores(inputs: AttentionInputs) -> torch.Tensor:
    """Pre-softmax scores QKᵀ/√d_k, (B, h, L, L), without the additive mask."""
    query = split_heads(inputs.query, inputs.num_heads)
    key = split_heads(inputs.key, inputs.num_heads)
    return query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


FAMILIES: Registry[Family] = Registry("model family")


def _register(family: Family, description: str) -> None:
    FAMILIES.add(family.name, family, description)


_register(
    Family("bert", ("bert",), base_model="base_model", layers="encoder.layer", attention="attention.self"),
    "BERT (and any bert model_type checkpoint): token types, post-LN encoder",
)
_register(
    Family("roberta", ("roberta", "camembert"), base_model="base_model", layers="encoder.layer",
           attention="attention.self", uses_token_type_ids=False),
    "RoBERTa / CamemBERT: BPE vocabulary, no token types",
)
_register(
    Family("xlm-roberta", ("xlm-roberta",), base_model="base_model", layers="encoder.layer",
           attention="attention.self", uses_token_type_ids=False),
    "XLM-RoBERTa: multilingual RoBERTa with a SentencePiece vocabulary",
)
_register(
    Family("electra", ("electra",), base_model="base_model", layers="encoder.layer", attention="attention.self"),
    "ELECTRA discriminators (embeddings projected to the hidden width when smaller)",
)
_register(
    Family("distilbert", ("distilbert",), base_model="base_model", layers="transformer.layer", attention="attention",
           query="q_lin", key="k_lin", value="v_lin", uses_token_type_ids=False),
    "DistilBERT: 6-layer BERT without token types or pooler",
)
_register(
    Family("albert", ("albert",), base_model="base_model", layers="encoder.albert_layer_groups.0.albert_layers.0",
           attention="attention", shared_layers=True),
    "ALBERT: one shared layer block, factorized embeddings (counted once in sizes)",
)
_register(
    Family("deberta-v2", ("deberta-v2",), base_model="base_model", layers="encoder.layer", attention="attention.self",
           query="query_proj", key="key_proj", value="value_proj", supports_attention_capture=False),
    "DeBERTa-v2/v3: disentangled attention; hidden-state and logit losses only",
)


def family_for(config: Any) -> Family:
    """The family of a transformers config, by its `model_type`."""
    model_type = getattr(config, "model_type", None)
    for entry in FAMILIES:
        if model_type in entry.value.model_types:
            if entry.value.shared_layers and getattr(config, "num_hidden_groups", 1) != 1:
                raise ModelError(
                    f"ALBERT with num_hidden_groups={config.num_hidden_groups} is not supported: brewer "
                    f"maps layers to one shared group; use a checkpoint with num_hidden_groups=1"
                )
            return entry.value
    known = sorted(t for entry in FAMILIES for t in entry.value.model_types)
    raise ModelError(
        f"model_type {model_type!r} has no registered family — registered: {', '.join(known)}. "
        f"Use a checkpoint of one of these architectures."
    )
