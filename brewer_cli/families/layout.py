"""The vocabulary in which a family declares its layout: module paths, the widths each module's
parameters span, and the parts (embeddings, encoder, pooler, head) a model is made of.

A width names what one tensor dimension indexes. Extraction (extract/) slices every dimension of
a given width with the same kept-index set, so declaring the widths of a family's modules is all
it needs to cut a smaller model out of a larger one; size-report reads the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# Widths. None is a width that is never sliced: labels, vocabulary, positions, token types.
Width = str | None
HIDDEN = "hidden"  # the residual stream's channels
EMBEDDING = "embedding"  # the lookup tables' width: embedding_size where a family has one, else hidden
QUERY_KEY = "query_key"  # a layer's query/key neurons, flattened over heads
VALUE = "value"  # a layer's value neurons, flattened over heads
FFN = "ffn"  # a layer's feed-forward neurons
OUTPUT: Width = None

# Parts of a model. The pooler is reported with the head; FLOPs count it on one token only.
EMBEDDINGS = "embeddings"
ENCODER = "encoder"
POOLER = "pooler"
HEAD = "head"


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
class Norm:
    """A LayerNorm at `path` over `width`; `residual`: it writes the residual stream (post-LN)."""

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


Slot = Linear | Norm | Table


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

    def slots(self) -> tuple[Slot, ...]:
        """Every size-dependent module of the layer with its widths (post-LN: both norms write
        the residual stream)."""
        return (
            Linear(f"{self.attention}.{self.query}", HIDDEN, QUERY_KEY),
            Linear(f"{self.attention}.{self.key}", HIDDEN, QUERY_KEY),
            Linear(f"{self.attention}.{self.value}", HIDDEN, VALUE),
            Linear(self.attention_output, VALUE, HIDDEN),
            Norm(self.attention_norm, HIDDEN, residual=True),
            Linear(self.ffn_input, HIDDEN, FFN),
            Linear(self.ffn_output, FFN, HIDDEN),
            Norm(self.output_norm, HIDDEN, residual=True),
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


def within(path: str, module_path: str | None) -> bool:
    """Whether the parameter/module `path` lies inside the module at `module_path`."""
    return module_path is not None and (path == module_path or path.startswith(module_path + "."))
