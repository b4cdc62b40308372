"""`Family`: one architecture's layout — where its layers, attention projections, feed-forward
block, embeddings, pooler and task heads live, which config fields hold its sizes — and how its
raw outputs become `Features`.

Extraction (extract/) slices the modules the layout declares; size-report reads its parts; the
distillers read features through it. Nothing else in brewer knows a family's module names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from brewer_cli.errors import ModelError
from brewer_cli.families.capture import AttentionCapture, attention_scores
from brewer_cli.families.layout import (
    EMBEDDING,
    EMBEDDINGS,
    ENCODER,
    FINAL_NORM,
    HEAD,
    HIDDEN,
    POOLER,
    LayerLayout,
    Linear,
    Norm,
    Slot,
    Table,
    find_path,
    get_path,
    join,
    module_prefix,
    within,
)
from brewer_cli.features import FeatureNeeds, Features

# A forward pass that reads logits only (features are immutable, so one instance serves all).
_LOGITS_ONLY = FeatureNeeds()

# Why DeBERTa's attention cannot be captured from its projections (the default refusal).
RELATIVE_POSITION_REFUSAL = "its attention adds relative-position terms that plain query/key projections do not capture"


@dataclass(frozen=True)
class Family:
    """An architecture, by the paths of its modules and the names of its config fields.

    Paths are dotted attribute paths. `base_model` is relative to the task model; `layers`,
    `embeddings`, `embedding_projection`, `final_norm` and `pooler` to the base model;
    `embedding_tables`, `position_table` and `embedding_norm` to the embeddings (an empty
    `embeddings`: the tables sit directly in the base model, as GPT-2's wte/wpe); `layer` to one
    layer; `task_heads` to the task model (they sit outside the base model).

    The defaults describe a post-LN encoder (BERT). A pre-LN decoder declares what differs: no
    embedding norm, a final norm, no learned position table under RoPE, grouped key/value heads
    and a head size of its own (Llama), and heads that read every token.
    """

    name: str
    model_types: tuple[str, ...]
    title: str  # how messages name the family ("DistilBERT")
    layers: str
    layer: LayerLayout
    base_model: str = "base_model"
    embeddings: str = "embeddings"
    embedding_tables: tuple[str, ...] = ("word_embeddings", "position_embeddings", "token_type_embeddings")
    # Learned positions: the longest input it can read (None: rotary positions, no table).
    position_table: str | None = "position_embeddings"
    embedding_norm: str | None = "LayerNorm"  # None: pre-LN decoders add the tables into the stream as is
    final_norm: str | None = None  # pre-LN decoders: the norm after the last layer
    # ALBERT and ELECTRA project factorized embeddings up to the hidden width; it writes the stream.
    embedding_projection: str | None = None
    pooler: str | None = None  # the linear map of the pooled first token
    task_heads: tuple[Slot, ...] = ()
    # Config fields of the sizes that transformers does not map to one standard name.
    intermediate_field: str = "intermediate_size"
    # GPT-2 stores n_inner=None for the conventional FFN width of 4 × hidden.
    default_ffn_multiple: int | None = None
    embedding_field: str | None = None  # the lookup tables' width, where it may differ from hidden
    # Grouped-query attention (Llama): the number of key/value heads.
    key_value_heads_field: str | None = None
    # A head size of its own, independent of hidden / heads (Llama: q_proj maps hidden to heads × head_dim).
    head_dim_field: str | None = None
    # Why the head size must stay whole (RoPE), or None where extraction may shrink it.
    whole_heads_reason: str | None = None
    # Config lists with one entry per layer (Qwen2's layer_types), cut to the kept layers.
    per_layer_fields: tuple[str, ...] = ()
    # Config flags that, when true, make a layer compute by its own index (GPT-2's
    # scale_attn_by_inverse_layer_idx divides layer i's scores by i + 1): such a layer cannot move.
    layer_index_flags: tuple[str, ...] = ()
    # Heads that run on every token before one is picked (GPT-2/Llama `score`), for FLOPs.
    every_token_heads: tuple[str, ...] = ()
    uses_token_type_ids: bool = True
    # ALBERT: one shared layer block applied `num_hidden_layers` times.
    shared_layers: bool = False
    supports_attention_capture: bool = True
    attention_capture_refusal: str = RELATIVE_POSITION_REFUSAL  # why, when not supported
    # ETD extraction: whether every size-dependent module is declared above, and otherwise why
    # the method itself cannot apply (None: the family is simply not covered).
    extractable: bool = True
    extraction_refusal: str | None = None

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

    def ffn_width(self, config: Any) -> int:
        value = getattr(config, self.intermediate_field)
        if value is None and self.default_ffn_multiple is not None:
            return self.default_ffn_multiple * self.width(config)
        return int(value)

    def key_value_heads(self, config: Any) -> int | None:
        """The key/value heads of grouped-query attention; None where every head has its own."""
        if self.key_value_heads_field is None:
            return None
        value = getattr(config, self.key_value_heads_field, None)
        return int(value) if value is not None else self.heads(config)

    def head_dim(self, config: Any) -> int:
        value = getattr(config, self.head_dim_field, None) if self.head_dim_field is not None else None
        return int(value) if value is not None else self.width(config) // self.heads(config)

    def embedding_size(self, config: Any) -> int | None:
        """The lookup tables' width where the family has a field for it (else they are hidden wide)."""
        if self.embedding_field is None:
            return None
        return getattr(config, self.embedding_field, None)

    def write_sizes(
        self,
        config: Any,
        *,
        layers: int,
        hidden: int,
        heads: int,
        intermediate: int,
        embedding: int,
        head_dim: int | None = None,
        key_value_heads: int | None = None,
    ) -> None:
        """Set the sizes on `config` (a copy the caller owns)."""
        # The configs map hidden_size/num_attention_heads/num_hidden_layers to DistilBERT's own names.
        config.hidden_size = hidden
        config.num_attention_heads = heads
        config.num_hidden_layers = layers
        setattr(config, self.intermediate_field, intermediate)
        if self.embedding_field is not None:
            setattr(config, self.embedding_field, embedding)
        if self.head_dim_field is not None and head_dim is not None:
            # Written even when unchanged: Qwen2 derives it from hidden / heads when it is absent.
            setattr(config, self.head_dim_field, head_dim)
        if self.key_value_heads_field is not None and key_value_heads is not None:
            setattr(config, self.key_value_heads_field, key_value_heads)

    def keep_layers(self, config: Any, kept: list[int]) -> None:
        """Cut the per-layer config lists to the kept (0-based) layers."""
        for field in self.per_layer_fields:
            values = getattr(config, field, None)
            if isinstance(values, (list, tuple)):
                setattr(config, field, [values[layer] for layer in kept])

    # -- modules --------------------------------------------------------------------------------

    def base_module(self, model: nn.Module) -> nn.Module:
        return get_path(model, self.base_model)

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        layers = get_path(self.base_module(model), self.layers)
        if self.shared_layers:
            return [layers] * self.depth(model.config)
        return list(layers)

    def attention_projections(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
        """(query, key, value) linear modules per layer, in layer order (ALBERT repeats one)."""
        paths = self.layer.attention_paths()
        return [tuple(get_path(layer, path) for path in paths) for layer in self.layer_modules(model)]

    def base_slots(self) -> tuple[Slot, ...]:
        """The size-dependent modules of the base model outside its layers, relative to the base."""
        # Without an embedding norm (pre-LN) the tables themselves write the residual stream.
        tables_write = self.embedding_norm is None
        slots: list[Slot] = [
            Table(join(self.embeddings, table), EMBEDDING, residual=tables_write) for table in self.embedding_tables
        ]
        if self.embedding_norm is not None:
            # The embedding norm writes the residual stream unless a projection follows it; its width
            # is the embeddings', which is the hidden width exactly when there is no projection.
            slots.append(Norm(f"{self.embeddings}.{self.embedding_norm}", EMBEDDING, residual=True))
        if self.final_norm is not None:
            slots.append(Norm(self.final_norm, HIDDEN))
        if self.embedding_projection is not None:
            slots.append(Linear(self.embedding_projection, EMBEDDING, HIDDEN, residual=True))
        if self.pooler is not None:
            # Not the residual stream, but it feeds the head with the same width: ETD keeps the
            # hidden set there too, which keeps the pooler square.
            slots.append(Linear(self.pooler, HIDDEN, HIDDEN))
        return tuple(slots)

    def position_embeddings(self, model: nn.Module) -> nn.Embedding | None:
        if self.position_table is None:
            return None
        table = find_path(self.base_module(model), join(self.embeddings, self.position_table))
        return table if isinstance(table, nn.Embedding) else None

    def embedding_paths(self) -> tuple[str, ...]:
        """The modules, relative to the base, that are the embeddings part."""
        if self.embeddings:
            return (self.embeddings,)
        return self.embedding_tables

    def part_classifier(self, model: nn.Module) -> Callable[[str], str]:
        """A function from a parameter or module path of `model` to the part it belongs to."""
        prefix = module_prefix(model, self.base_module(model))

        def classify(path: str) -> str:
            if prefix:
                if not path.startswith(prefix + "."):
                    return HEAD
                path = path[len(prefix) + 1 :]
            if within(path, self.pooler):
                return POOLER
            if within(path, self.final_norm):
                return FINAL_NORM
            if any(within(path, module) for module in self.embedding_paths()) or within(path, self.embedding_projection):
                return EMBEDDINGS
            return ENCODER

        return classify

    def ffn_matrices(self, model: nn.Module) -> int:
        return self.layer.ffn_matrices

    def head_reads_every_token(self, module_name: str) -> bool:
        # A pooled head of an encoder reads the first token only; a decoder's `score` runs on every
        # token and the last one is picked afterwards.
        return module_name.rsplit(".", 1)[-1] in self.every_token_heads

    # -- features -------------------------------------------------------------------------------

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_token_type_ids else [])
        return {name: batch[name] for name in names if name in batch}

    def features(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        needs: FeatureNeeds = _LOGITS_ONLY,
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
        attention_inputs = captured.attention_inputs(self.heads(model.config)) if captured else None
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
    def capture(self, model: nn.Module, needs: FeatureNeeds) -> Iterator[AttentionCapture | None]:
        if not (needs.attention_scores or needs.attention_inputs):
            yield None
            return
        if not self.supports_attention_capture:
            raise ModelError(
                f"attention losses are not available for the {self.name} family: {self.attention_capture_refusal}; "
                f"use hidden-state matches for this model"
            )
        capture = AttentionCapture(
            self.attention_projections(model),
            with_values=needs.attention_inputs,
            fused=self.layer.fused_query_key_value,
        )
        try:
            yield capture
        finally:
            capture.remove()
