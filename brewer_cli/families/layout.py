"""The vocabulary in which a family declares its layout: module paths, the widths each module's
parameters span, and the parts (embeddings, encoder, pooler, head) a model is made of.

A width names what one tensor dimension indexes. Extraction (extract/) slices every dimension of
a given width with the same kept-index set, so declaring the widths of a family's modules is all
it needs to cut a smaller model out of a larger one; size-report reads the parts.

Encoders and decoders differ here only by what their layer layout declares: where the norms sit
(post-LN: the norms write the residual stream; pre-LN: the blocks' output projections write it and
the norms only read it), a gated feed-forward block (a second input projection), one fused
query/key/value projection (GPT-2's c_attn, a width made of three blocks), grouped key/value heads
(GQA: k and v span the key/value groups, not the query heads) and transposed Conv1D weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Widths. None is a width that is never sliced: labels, vocabulary, positions, token types. A tuple
# is one dimension made of blocks, each of its own width, in order (GPT-2's fused q|k|v output).
Width = str | tuple[str, ...] | None
HIDDEN = "hidden"  # the residual stream's channels
EMBEDDING = "embedding"  # the lookup tables' width: embedding_size where a family has one, else hidden
QUERY_KEY = "query_key"  # a layer's query/key neurons, flattened over heads
VALUE = "value"  # a layer's value neurons, flattened over (query) heads
KEY_VALUE = "key_value"  # grouped-query attention: the key/value groups' neurons, flattened over groups
FFN = "ffn"  # a layer's feed-forward neurons
OUTPUT: Width = None

# Parts of a model. The pooler is reported with the head; FLOPs count it on one token only.
EMBEDDINGS = "embeddings"
ENCODER = "encoder"
POOLER = "pooler"
FINAL_NORM = "final_norm"  # pre-LN decoders: the norm after the last layer
HEAD = "head"


def blocks(width: Width) -> tuple[str | None, ...]:
    """The widths along one dimension: the blocks of a fused width, or the width alone."""
    return width if isinstance(width, tuple) else (width,)


@dataclass(frozen=True)
class Linear:
    """A linear map at `path`: its weight is (writes, reads), its bias (writes,).

    `residual`: its output is the residual stream itself (ELECTRA's embedding projection).
    """

    path: str
    reads: Width
    writes: Width
    residual: bool = False

    def parameter_widths(self) -> dict[str, tuple[Width, ...]]:
        return {"weight": (self.writes, self.reads), "bias": (self.writes,)}


@dataclass(frozen=True)
class Conv1D:
    """GPT-2's Conv1D at `path`: a linear map whose weight is stored transposed, (reads, writes)."""

    path: str
    reads: Width
    writes: Width
    residual: bool = False

    def parameter_widths(self) -> dict[str, tuple[Width, ...]]:
        return {"weight": (self.reads, self.writes), "bias": (self.writes,)}


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (weight and bias) or RMSNorm (weight only) at `path` over `width`; `residual`:
    it writes the residual stream (post-LN)."""

    path: str
    width: Width
    residual: bool = False

    @property
    def reads(self) -> Width:
        return self.width

    @property
    def writes(self) -> Width:
        return self.width

    def parameter_widths(self) -> dict[str, tuple[Width, ...]]:
        return {"weight": (self.width,), "bias": (self.width,)}


@dataclass(frozen=True)
class Table:
    """An embedding lookup table at `path`: one row per id, `width` columns."""

    path: str
    width: Width
    residual: bool = False
    reads: Width = OUTPUT  # token ids, positions or token types: never sliced

    @property
    def writes(self) -> Width:
        return self.width

    def parameter_widths(self) -> dict[str, tuple[Width, ...]]:
        return {"weight": (OUTPUT, self.width)}


Slot = Linear | Conv1D | Norm | Table


@dataclass(frozen=True)
class LayerLayout:
    """Where one transformer layer keeps its modules, as paths relative to the layer."""

    attention: str  # the module that holds the query/key/value projections
    attention_output: str  # the projection of the heads' values back to the residual stream
    attention_norm: str
    ffn_input: str
    ffn_output: str
    output_norm: str
    query: str = "query"  # names inside `attention`
    key: str = "key"
    value: str = "value"
    # Pre-LN (GPT-2, Llama): each norm reads the residual stream before its block, and the
    # blocks' output projections write it. Post-LN (BERT): the norms write it.
    pre_norm: bool = False
    # A gated feed-forward block (Llama: down(act(gate(x)) · up(x))): the gate's path; `ffn_input`
    # is then the up projection. Gate and up rows are one FFN neuron and are kept together.
    ffn_gate: str | None = None
    # GPT-2: `query` names one projection writing q|k|v (key and value are not used).
    fused_query_key_value: bool = False
    # Grouped-query attention: k and v have num_key_value_heads heads, shared by groups of query heads.
    grouped_key_value: bool = False
    # GPT-2's Conv1D stores weights as (in, out).
    transposed: bool = False

    @property
    def ffn_matrices(self) -> int:
        """The matrices of one feed-forward block (FLOPs): input (and gate) and output."""
        return 3 if self.ffn_gate is not None else 2

    def attention_paths(self) -> tuple[str, str, str]:
        """The paths, relative to the layer, of the modules whose outputs are q, k and v (one
        module three times when fused)."""
        if self.fused_query_key_value:
            return (f"{self.attention}.{self.query}",) * 3
        return tuple(f"{self.attention}.{name}" for name in (self.query, self.key, self.value))

    def slots(self) -> tuple[Slot, ...]:
        """Every size-dependent module of the layer with its widths."""
        project = Conv1D if self.transposed else Linear
        query, key, value = self.attention_paths()
        if self.fused_query_key_value:
            attention_inputs: tuple[Slot, ...] = (project(query, HIDDEN, (QUERY_KEY, QUERY_KEY, VALUE)),)
        else:
            grouped = KEY_VALUE if self.grouped_key_value else None
            attention_inputs = (
                project(query, HIDDEN, QUERY_KEY),
                project(key, HIDDEN, grouped or QUERY_KEY),
                project(value, HIDDEN, grouped or VALUE),
            )
        gate = (project(self.ffn_gate, HIDDEN, FFN),) if self.ffn_gate is not None else ()
        return (
            *attention_inputs,
            project(self.attention_output, VALUE, HIDDEN, residual=self.pre_norm),
            Norm(self.attention_norm, HIDDEN, residual=not self.pre_norm),
            *gate,
            project(self.ffn_input, HIDDEN, FFN),
            project(self.ffn_output, FFN, HIDDEN, residual=self.pre_norm),
            Norm(self.output_norm, HIDDEN, residual=not self.pre_norm),
        )


def get_path(obj: Any, path: str) -> Any:
    """The attribute at a dotted path ("encoder.layer"); the object itself for an empty path."""
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


def find_path(obj: Any, path: str) -> Any:
    """Like `get_path`, but None where an attribute along the path is missing (an optional module)."""
    for part in path.split(".") if path else []:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def module_prefix(model: nn.Module, module: nn.Module) -> str:
    """The parameter-name prefix of `module` inside `model` ("bert"); "" for the model itself."""
    if module is model:
        return ""
    return next((name for name, candidate in model.named_modules() if candidate is module), "")


def join(*paths: str | None) -> str:
    """Dotted paths joined, empty ones left out ("" + "wte" is "wte")."""
    return ".".join(path for path in paths if path)


def within(path: str, module_path: str | None) -> bool:
    """Whether the parameter/module `path` lies inside the module at `module_path`."""
    return module_path is not None and (path == module_path or path.startswith(module_path + "."))
