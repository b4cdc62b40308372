"""ETD, "Extract Then Distill" (Chen et al., ICANN 2021): build a student from the teacher's weights.

A student built this way starts from a subset of the teacher's parameters instead of a random
initialization, so distillation begins close to the teacher. Extraction has two parts:

Width. One set of hidden channels is kept for the whole network, because the residual stream ties
every module that reads or writes it: the embeddings (word, position, token type), every
LayerNorm, the input columns of Q/K/V, the output rows of the attention projection, both ends of
the feed-forward block, the pooler and the task head. Inside each layer the FFN keeps its own
subset of neurons, and attention keeps either fewer heads (same head size) or a subset of neurons
inside every head (smaller head size, same head count), or both. For a head-neuron subset the
query and key of a head share one subset, because only matching coordinates contribute to the
dot product q·k; the value projection has its own subset, and the attention output projection
keeps the input columns of that value subset.

Depth. M of the teacher's N layers are kept. `uniform` keeps layers round(i·N/M) for i = 1..M
(1-based, round half up): with k = N/M an integer that is exactly k, 2k, …, N as in ETD; when N/M
is not an integer the kept layers are the nearest to even spacing and always include the last
layer (N=4, M=3 keeps 1, 3, 4). `first` keeps 1..M and `last` keeps N-M+1..N; an explicit tuple of
1-based layer numbers is kept as given. Width is decided on the full-depth model, then the layers
are dropped, in ETD's order.

Things inherent to the method, stated so nobody mistakes them for bugs:
- A LayerNorm over a subset of channels computes its mean and variance over that subset, so even
  with perfect channel choice the student's activations differ from the teacher's. Distillation
  repairs this; ETD reports the same.
- A head with a smaller head size scales its scores by 1/√d′ instead of the teacher's 1/√d, so the
  kept partial dot product is √(d/d′) sharper than it was inside the teacher. This is what ETD
  does; no compensation is applied.
- heads × head_dim must equal hidden: BERT-style attention in `transformers` splits hidden_size
  into num_attention_heads heads of hidden_size / num_attention_heads each. See `_resolve_sizes`
  for which combinations of the three fields are accepted.

Strategies. `random` (ETD-Rand) draws every subset uniformly with a `torch.Generator` seeded with
`seed`; kept indices are sorted, so the student's channel order follows the teacher's.
`importance` (ETD-Impt) ranks structures by the first-order Taylor estimate of the loss change
when the structure is removed, |Σ w·∂L/∂w| over the weights whose zeroing removes it, computed per
batch (absolute value per batch, summed over batches so that batches of opposite sign do not
cancel):
- a head: the input columns of the attention output projection that read the head; this sum is
  exactly ∂L/∂m for a mask m multiplying the head's output (the head_mask gradient of Michel et
  al., 2019);
- a query/key neuron of a head: its row (and bias) in Q and in K; a value neuron: its column in the
  output projection;
- an FFN neuron: its input column in the FFN output projection (exactly the neuron's mask gradient,
  since GELU(0) = 0);
- a hidden channel: the LayerNorm weights and biases of that channel in every LayerNorm that writes
  the residual stream (and the rows of ELECTRA's embedding projection), summed before the absolute
  value: this is the gradient of one mask shared by every write to the channel, the form that
  matches the single hidden index set. With `hidden_scoring="activation"` the channel's score is
  instead its mean |activation| over valid tokens, summed over the embedding output and every
  layer output.

The loss L is the task loss the model computes itself when the batch carries labels (`labels`, or
`start_positions`/`end_positions` for QA). Without labels, ETD asks for the divergence to the
teacher's own output; at the teacher's own weights that divergence (KL, or soft cross-entropy) is
at its minimum and has zero gradient, so every Taylor score would be zero. brewer instead uses the
cross-entropy to the model's own arg-max predictions (hard pseudo-labels; for masked LM and token
tasks per valid token, for QA on start and end positions). Its gradient, softmax(z) − onehot(argmax),
is non-zero, and the score then measures how much removing a structure would change the
confidence of the teacher's own decisions. Regression heads have no arg-max; for them L = ½·f²
(mean over the batch), whose gradient f·∂f/∂w measures how much a structure moves the prediction.

`rounds` > 1 shrinks the width in equal steps (heads, head size and FFN size interpolated
linearly, hidden = heads × head size at every step), re-scoring the intermediate model each time;
layers are dropped after the last round. With `random`, rounds only change which random subset
is drawn (a random subset of a random subset is still uniform).

Families: BERT, RoBERTa, XLM-RoBERTa, ELECTRA (whose embedding size may differ from the hidden
size: the embeddings then keep all their channels and the hidden channels are taken on the output
side of `embeddings_project`) and DistilBERT, with any of their standard heads. ALBERT is refused:
all its layers share one block of weights, so per-layer head and neuron subsets cannot be applied.
The result is an ordinary `transformers` model of the teacher's class, built with `_from_config`
from the smaller config and loaded strictly with the sliced state dict; `save_pretrained` writes it
and `AutoModelFor….from_pretrained` reloads it. The teacher is never modified.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional

from brewer_cli.errors import BrewerError, ModelError

FIELD = "student.init.extract"

Selection = Literal["uniform", "first", "last"]
Strategy = Literal["random", "importance"]
HiddenScoring = Literal["taylor", "activation"]

_SELECTIONS = ("uniform", "first", "last")
_STRATEGIES = ("random", "importance")
_HIDDEN_SCORINGS = ("taylor", "activation")


# --------------------------------------------------------------------------------------------
# The plan and the result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractPlan:
    """What to keep of the teacher. None for a size keeps the teacher's size.

    layers: how many layers to keep (placed by `selection`), or the explicit 1-based teacher layer
        numbers in increasing order (then `selection` is not used).
    hidden, heads, head_dim, intermediate: the student's sizes. heads × head_dim must equal hidden;
        fields left out are derived (see `_resolve_sizes`), e.g. hidden 312 of a 768/12-head
        teacher keeps 12 heads of size 26.
    strategy: `random` (ETD-Rand) or `importance` (ETD-Impt, needs batches).
    hidden_scoring: how hidden channels are ranked under `importance`.
    rounds: shrink the width in this many equal steps, re-scoring in between.
    """

    layers: int | tuple[int, ...] | None = None
    selection: Selection = "uniform"
    hidden: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None
    strategy: Strategy = "importance"
    seed: int = 0
    hidden_scoring: HiddenScoring = "taylor"
    rounds: int = 1

    def __post_init__(self) -> None:
        problems: list[str] = []
        layers = self.layers
        if isinstance(layers, list):
            # A list from YAML/JSON is the natural spelling; freeze it so the plan stays hashable.
            layers = tuple(layers)
            object.__setattr__(self, "layers", layers)
        if isinstance(layers, tuple):
            if not layers:
                problems.append(f"{FIELD}.layers: the list of layers to keep is empty")
            elif not all(_is_int(value) for value in layers):
                problems.append(
                    f"{FIELD}.layers: layer numbers must be integers, got {list(layers)}"
                )
            elif any(value < 1 for value in layers):
                problems.append(
                    f"{FIELD}.layers: layer numbers are 1-based (1 is the first layer), got {list(layers)}"
                )
            elif any(later <= earlier for earlier, later in zip(layers, layers[1:])):
                problems.append(
                    f"{FIELD}.layers: layer numbers must be strictly increasing (the student stacks "
                    f"them in order), got {list(layers)}"
                )
        elif layers is not None and not (_is_int(layers) and layers >= 1):
            problems.append(
                f"{FIELD}.layers: expected a layer count ≥ 1 or a list of 1-based layer numbers, got {layers!r}"
            )
        for name in ("hidden", "heads", "head_dim", "intermediate"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                problems.append(f"{FIELD}.{name}: expected a positive integer, got {value!r}")
        if self.selection not in _SELECTIONS:
            problems.append(_choice_problem("selection", self.selection, _SELECTIONS))
        if self.strategy not in _STRATEGIES:
            problems.append(_choice_problem("strategy", self.strategy, _STRATEGIES))
        if self.hidden_scoring not in _HIDDEN_SCORINGS:
            problems.append(
                _choice_problem("hidden_scoring", self.hidden_scoring, _HIDDEN_SCORINGS)
            )
        if not (_is_int(self.rounds) and self.rounds >= 1):
            problems.append(f"{FIELD}.rounds: expected an integer ≥ 1, got {self.rounds!r}")
        if not _is_int(self.seed):
            problems.append(f"{FIELD}.seed: expected an integer, got {self.seed!r}")
        if problems:
            raise BrewerError("\n".join(problems))


@dataclass
class ExtractResult:
    """The extracted student and what was kept.

    kept: `layers` (1-based teacher layer numbers), `hidden` (count) and `hidden_indices` (teacher
        channel indices), `heads` (per kept layer, the 0-based teacher head numbers kept),
        `head_dim`, `ffn_neurons` (per kept layer, the count), `sizes` (teacher and student sizes
        and parameter counts), `strategy`, `seed`, `selection`, `model_class`.
    importance_summary: for `importance`, the loss used, examples scored, round-1 head scores
        per teacher layer, the top hidden channels and the share of each structure's importance
        that the student retained; None for `random`.
    """

    model: nn.Module
    kept: dict[str, Any]
    importance_summary: dict[str, Any] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice_problem(name: str, value: Any, choices: tuple[str, ...]) -> str:
    return f"{FIELD}.{name}: {value!r} is not one of the choices — valid: {', '.join(choices)}"


# --------------------------------------------------------------------------------------------
# Families: how each parameter depends on the model's sizes
# --------------------------------------------------------------------------------------------

# The role of one tensor dimension: which index set slices it (None: kept whole).
HIDDEN = "hidden"  # the residual stream's channels
EMBEDDING = "embedding"  # ELECTRA's embedding channels: the hidden set when embedding == hidden
QUERY_KEY = "query_key"  # a layer's query/key neurons, flattened over heads
VALUE = "value"  # a layer's value neurons, flattened over heads
FFN = "ffn"  # a layer's feed-forward neurons

# What a parameter contributes to the Taylor importance scores.
SCORE_QUERY_KEY = "query_key"  # Q/K rows: per query/key neuron
SCORE_ATTENTION_OUTPUT = "attention_output"  # O columns: per value neuron and per head
SCORE_FFN_OUTPUT = "ffn_output"  # FFN output columns: per FFN neuron
SCORE_RESIDUAL = "residual"  # writes the residual stream: per hidden channel


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    roles: tuple[str | None, ...]
    score: str | None = None


def _rule(pattern: str, *roles: str | None, score: str | None = None) -> _Rule:
    return _Rule(re.compile(pattern), roles, score)


_BERT_LAYER_RULES = (
    _rule(r"attention\.self\.(query|key)\.weight", QUERY_KEY, HIDDEN, score=SCORE_QUERY_KEY),
    _rule(r"attention\.self\.(query|key)\.bias", QUERY_KEY, score=SCORE_QUERY_KEY),
    _rule(r"attention\.self\.value\.weight", VALUE, HIDDEN),
    _rule(r"attention\.self\.value\.bias", VALUE),
    _rule(r"attention\.output\.dense\.weight", HIDDEN, VALUE, score=SCORE_ATTENTION_OUTPUT),
    _rule(r"attention\.output\.dense\.bias", HIDDEN),
    _rule(r"attention\.output\.LayerNorm\.(weight|bias)", HIDDEN, score=SCORE_RESIDUAL),
    _rule(r"intermediate\.dense\.weight", FFN, HIDDEN),
    _rule(r"intermediate\.dense\.bias", FFN),
    _rule(r"output\.dense\.weight", HIDDEN, FFN, score=SCORE_FFN_OUTPUT),
    _rule(r"output\.dense\.bias", HIDDEN),
    _rule(r"output\.LayerNorm\.(weight|bias)", HIDDEN, score=SCORE_RESIDUAL),
)

_DISTILBERT_LAYER_RULES = (
    _rule(r"attention\.(q_lin|k_lin)\.weight", QUERY_KEY, HIDDEN, score=SCORE_QUERY_KEY),
    _rule(r"attention\.(q_lin|k_lin)\.bias", QUERY_KEY, score=SCORE_QUERY_KEY),
    _rule(r"attention\.v_lin\.weight", VALUE, HIDDEN),
    _rule(r"attention\.v_lin\.bias", VALUE),
    _rule(r"attention\.out_lin\.weight", HIDDEN, VALUE, score=SCORE_ATTENTION_OUTPUT),
    _rule(r"attention\.out_lin\.bias", HIDDEN),
    _rule(r"sa_layer_norm\.(weight|bias)", HIDDEN, score=SCORE_RESIDUAL),
    _rule(r"ffn\.lin1\.weight", FFN, HIDDEN),
    _rule(r"ffn\.lin1\.bias", FFN),
    _rule(r"ffn\.lin2\.weight", HIDDEN, FFN, score=SCORE_FFN_OUTPUT),
    _rule(r"ffn\.lin2\.bias", HIDDEN),
    _rule(r"output_layer_norm\.(weight|bias)", HIDDEN, score=SCORE_RESIDUAL),
)

# Outside the layers, names are matched without the base model prefix ("bert.", "roberta.", …).
_BASE_RULES = (
    _rule(r"embeddings\.(word|position|token_type)_embeddings\.weight", None, EMBEDDING),
    # The embedding LayerNorm writes the residual stream unless ELECTRA projects it afterwards;
    # the residual score only counts dimensions that resolve to the hidden set, which handles both.
    _rule(r"embeddings\.LayerNorm\.(weight|bias)", EMBEDDING, score=SCORE_RESIDUAL),
    # ELECTRA with embedding_size != hidden_size: the projection's output is the residual stream.
    _rule(r"embeddings_project\.weight", HIDDEN, EMBEDDING, score=SCORE_RESIDUAL),
    _rule(r"embeddings_project\.bias", HIDDEN, score=SCORE_RESIDUAL),
    # The pooler's output is not the residual stream, but it feeds the classifier with the same
    # width; ETD keeps the hidden set there too, which keeps the pooler square.
    _rule(r"pooler\.dense\.weight", HIDDEN, HIDDEN),
    _rule(r"pooler\.dense\.bias", HIDDEN),
)

_HEAD_RULES = (
    # BERT/ELECTRA/DistilBERT sequence and token classification, multiple choice.
    _rule(r"classifier\.weight", None, HIDDEN),
    _rule(r"classifier\.bias", None),
    # RoBERTa/XLM-R/ELECTRA sequence classification: dense + out_proj.
    _rule(r"classifier\.dense\.weight", HIDDEN, HIDDEN),
    _rule(r"classifier\.dense\.bias", HIDDEN),
    _rule(r"classifier\.out_proj\.weight", None, HIDDEN),
    _rule(r"classifier\.out_proj\.bias", None),
    # DistilBERT sequence classification and multiple choice.
    _rule(r"pre_classifier\.weight", HIDDEN, HIDDEN),
    _rule(r"pre_classifier\.bias", HIDDEN),
    # Extractive QA.
    _rule(r"qa_outputs\.weight", None, HIDDEN),
    _rule(r"qa_outputs\.bias", None),
    # BERT masked LM / pre-training; the decoder is tied to the word embeddings and sliced alike.
    _rule(r"cls\.predictions\.transform\.dense\.weight", HIDDEN, HIDDEN),
    _rule(r"cls\.predictions\.transform\.dense\.bias", HIDDEN),
    _rule(r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", HIDDEN),
    _rule(r"cls\.predictions\.decoder\.weight", None, HIDDEN),
    _rule(r"cls\.predictions\.(decoder\.)?bias", None),
    _rule(r"cls\.seq_relationship\.weight", None, HIDDEN),
    _rule(r"cls\.seq_relationship\.bias", None),
    # RoBERTa/XLM-R masked and causal LM.
    _rule(r"lm_head\.dense\.weight", HIDDEN, HIDDEN),
    _rule(r"lm_head\.dense\.bias", HIDDEN),
    _rule(r"lm_head\.layer_norm\.(weight|bias)", HIDDEN),
    _rule(r"lm_head\.decoder\.weight", None, HIDDEN),
    _rule(r"lm_head\.(decoder\.)?bias", None),
    # ELECTRA generator (masked LM): hidden → embedding size, then the tied embedding matrix.
    _rule(r"generator_predictions\.dense\.weight", EMBEDDING, HIDDEN),
    _rule(r"generator_predictions\.dense\.bias", EMBEDDING),
    _rule(r"generator_predictions\.LayerNorm\.(weight|bias)", EMBEDDING),
    _rule(r"generator_lm_head\.weight", None, EMBEDDING),
    _rule(r"generator_lm_head\.bias", None),
    # ELECTRA discriminator (pre-training) and multiple choice.
    _rule(r"discriminator_predictions\.dense\.weight", HIDDEN, HIDDEN),
    _rule(r"discriminator_predictions\.dense\.bias", HIDDEN),
    _rule(r"discriminator_predictions\.dense_prediction\.weight", None, HIDDEN),
    _rule(r"discriminator_predictions\.dense_prediction\.bias", None),
    _rule(r"sequence_summary\.summary\.weight", HIDDEN, HIDDEN),
    _rule(r"sequence_summary\.summary\.bias", HIDDEN),
    # DistilBERT masked LM.
    _rule(r"vocab_transform\.weight", HIDDEN, HIDDEN),
    _rule(r"vocab_transform\.bias", HIDDEN),
    _rule(r"vocab_layer_norm\.(weight|bias)", HIDDEN),
    _rule(r"vocab_projector\.weight", None, HIDDEN),
    _rule(r"vocab_projector\.bias", None),
)


@dataclass(frozen=True)
class _Family:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # the layer ModuleList, relative to the base model
    layer_rules: tuple[_Rule, ...]
    intermediate_key: str  # config attribute of the FFN size
    has_embedding_size: bool = False  # ELECTRA's separate embedding_size

    @property
    def layer_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.layers_path)}\.(\d+)\.(.+)")


_FAMILIES = (
    _Family("BERT", ("bert",), "encoder.layer", _BERT_LAYER_RULES, "intermediate_size"),
    _Family("RoBERTa", ("roberta",), "encoder.layer", _BERT_LAYER_RULES, "intermediate_size"),
    _Family(
        "XLM-RoBERTa", ("xlm-roberta",), "encoder.layer", _BERT_LAYER_RULES, "intermediate_size"
    ),
    _Family(
        "ELECTRA",
        ("electra",),
        "encoder.layer",
        _BERT_LAYER_RULES,
        "intermediate_size",
        has_embedding_size=True,
    ),
    _Family(
        "DistilBERT", ("distilbert",), "transformer.layer", _DISTILBERT_LAYER_RULES, "hidden_dim"
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(
    sorted(t for family in _FAMILIES for t in family.model_types)
)


def _family_of(model: nn.Module) -> _Family:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or model_type is None:
        raise ModelError(
            f"extraction needs a Hugging Face transformers model with a config; got {type(model).__name__}"
        )
    if model_type == "albert":
        raise ModelError(
            "extraction does not support ALBERT: all its layers share one block of weights and its "
            "embeddings are factorized, so per-layer head and FFN-neuron subsets cannot be applied to "
            "the shared weights, and dropping layers does not remove parameters. Distill into a "
            "student built from a config instead (student.config), or extract from a BERT-style "
            f"teacher — supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for family in _FAMILIES:
        if model_type in family.model_types:
            return family
    raise ModelError(
        f"extraction does not know the model type '{model_type}' ({type(model).__name__}) — "
        f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


@dataclass(frozen=True)
class _Sizes:
    layers: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    embedding: int  # equals hidden except for ELECTRA with a separate embedding_size

    @property
    def embedding_tied(self) -> bool:
        """True when the embeddings live in the residual stream (no ELECTRA projection)."""
        return self.embedding == self.hidden

    def as_dict(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "intermediate": self.intermediate,
            "embedding": self.embedding,
        }


def _read_sizes(family: _Family, config: Any) -> _Sizes:
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    if hidden % heads:
        raise ModelError(
            f"the teacher's hidden size {hidden} is not divisible by its {heads} attention heads"
        )
    embedding = int(config.embedding_size) if family.has_embedding_size else hidden
    return _Sizes(
        layers=int(config.num_hidden_layers),
        hidden=hidden,
        heads=heads,
        head_dim=hidden // heads,
        intermediate=int(getattr(config, family.intermediate_key)),
        embedding=embedding,
    )


def _write_sizes(family: _Family, config: Any, sizes: _Sizes) -> None:
    # The configs map hidden_size/num_attention_heads/num_hidden_layers to DistilBERT's own names.
    config.hidden_size = sizes.hidden
    config.num_attention_heads = sizes.heads
    config.num_hidden_layers = sizes.layers
    setattr(config, family.intermediate_key, sizes.intermediate)
    if family.has_embedding_size:
        config.embedding_size = sizes.embedding


@dataclass(frozen=True)
class _Parsed:
    rule: _Rule | None
    layer: int | None  # layer index in the model the name belongs to (0-based)
    prefix: str  # "bert." or "" — the base model prefix the name carries
    rest: str  # the name inside the layer, or without the base prefix


def _parse(family: _Family, name: str, base_prefix: str) -> _Parsed:
    prefix = ""
    stripped = name
    if base_prefix and name.startswith(base_prefix + "."):
        prefix = base_prefix + "."
        stripped = name[len(prefix) :]
    match = family.layer_pattern.fullmatch(stripped)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        rules = family.layer_rules
    else:
        layer, rest = None, stripped
        rules = _BASE_RULES + _HEAD_RULES
    rule = next((candidate for candidate in rules if candidate.pattern.fullmatch(rest)), None)
    return _Parsed(rule, layer, prefix, rest)


# --------------------------------------------------------------------------------------------
# Sizes and layers: validation against the teacher
# --------------------------------------------------------------------------------------------


def _too_large(name: str, value: int, teacher_value: int, what: str) -> BrewerError:
    return BrewerError(
        f"{FIELD}.{name}: {value} is larger than the teacher's {what} ({teacher_value}); extraction "
        f"keeps a subset of the teacher's parameters, so a size can only stay or shrink"
    )


def _valid_head_counts(hidden: int, teacher: _Sizes) -> list[int]:
    return [
        count
        for count in range(1, teacher.heads + 1)
        if hidden % count == 0 and hidden // count <= teacher.head_dim
    ]


def _heads_problem(name: str, message: str, hidden: int, teacher: _Sizes) -> BrewerError:
    valid = _valid_head_counts(hidden, teacher)
    hint = (
        f"with hidden {hidden}, valid heads are {', '.join(map(str, valid))}"
        if valid
        else f"no head count of at most {teacher.heads} splits hidden {hidden} into heads of at most "
        f"{teacher.head_dim} channels; choose hidden as heads × head_dim"
    )
    return BrewerError(
        f"{FIELD}.{name}: {message}; BERT-style attention splits hidden into heads, so heads × head_dim "
        f"must equal hidden, with heads ≤ {teacher.heads} and head_dim ≤ {teacher.head_dim} "
        f"(the teacher's) — {hint}"
    )


def _resolve_sizes(plan: ExtractPlan, teacher: _Sizes, family: _Family) -> _Sizes:
    """The student's sizes; the layer count is filled in by `_select_layers`.

    Accepted combinations of hidden (H), heads (h) and head_dim (d); a missing one is derived:
    - none: the teacher's;      - H only: the teacher's head count, d = H / h (ETD: 312 → 12 × 26);
    - H and h: d = H / h;       - H and d: h = H / d;       - h and d: H = h × d;
    - all three: h × d must equal H;
    - h only or d only: refused unless h × d equals the teacher's hidden, because keeping the
      teacher's hidden would need a head size (or count) the teacher does not have — set hidden too.
    Every derived value must divide exactly and stay within the teacher's heads and head size.
    """
    for name, value, teacher_value, what in (
        ("hidden", plan.hidden, teacher.hidden, "hidden size"),
        ("heads", plan.heads, teacher.heads, "number of attention heads"),
        ("head_dim", plan.head_dim, teacher.head_dim, "head size"),
        ("intermediate", plan.intermediate, teacher.intermediate, "intermediate (FFN) size"),
    ):
        if value is not None and value > teacher_value:
            raise _too_large(name, value, teacher_value, what)

    hidden, heads, head_dim = plan.hidden, plan.heads, plan.head_dim
    if hidden is None and heads is None and head_dim is None:
        hidden, heads, head_dim = teacher.hidden, teacher.heads, teacher.head_dim
    elif heads is not None and head_dim is not None:
        if hidden is not None and heads * head_dim != hidden:
            raise _heads_problem(
                "hidden",
                f"{heads} heads × head_dim {head_dim} = {heads * head_dim}, not {hidden}",
                hidden,
                teacher,
            )
        hidden = heads * head_dim
    elif hidden is not None and heads is not None:
        if hidden % heads:
            raise _heads_problem(
                "heads", f"hidden {hidden} is not divisible by {heads} heads", hidden, teacher
            )
        head_dim = hidden // heads
        if head_dim > teacher.head_dim:
            raise _heads_problem(
                "heads",
                f"hidden {hidden} in {heads} heads needs head_dim {head_dim}",
                hidden,
                teacher,
            )
    elif hidden is not None and head_dim is not None:
        if hidden % head_dim:
            raise _heads_problem(
                "head_dim",
                f"hidden {hidden} is not divisible by head_dim {head_dim}",
                hidden,
                teacher,
            )
        heads = hidden // head_dim
        if heads > teacher.heads:
            raise _heads_problem(
                "head_dim",
                f"hidden {hidden} with head_dim {head_dim} needs {heads} heads",
                hidden,
                teacher,
            )
    elif hidden is not None:
        heads = teacher.heads
        if hidden % heads:
            raise _heads_problem(
                "hidden",
                f"hidden {hidden} is not divisible by the teacher's {heads} heads (set heads or head_dim)",
                hidden,
                teacher,
            )
        head_dim = hidden // heads
    elif heads is not None:
        head_dim = teacher.head_dim
        hidden = heads * head_dim
        if hidden != teacher.hidden:
            raise BrewerError(
                f"{FIELD}.heads: {heads} heads of the teacher's head_dim {head_dim} make hidden "
                f"{hidden}, but hidden is kept at the teacher's {teacher.hidden}; heads × head_dim must "
                f"equal hidden — also set hidden: {hidden} (fewer heads, same head size), or hidden "
                f"{teacher.hidden} with head_dim to keep the width"
            )
    else:
        assert head_dim is not None
        heads = teacher.heads
        hidden = heads * head_dim
        if hidden != teacher.hidden:
            raise BrewerError(
                f"{FIELD}.head_dim: {teacher.heads} heads of head_dim {head_dim} make hidden {hidden}, "
                f"but hidden is kept at the teacher's {teacher.hidden}; heads × head_dim must equal "
                f"hidden — also set hidden: {hidden} (smaller heads, same head count)"
            )

    if family.has_embedding_size and not teacher.embedding_tied:
        embedding = teacher.embedding
    else:
        embedding = hidden
    return _Sizes(
        layers=teacher.layers,
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        intermediate=plan.intermediate if plan.intermediate is not None else teacher.intermediate,
        embedding=embedding,
    )


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even; extraction documents "nearest, halves up".
    return int(math.floor(value + 0.5))


def _select_layers(plan: ExtractPlan, teacher_layers: int) -> list[int]:
    """The kept teacher layers, 1-based, in increasing order."""
    layers = plan.layers
    if layers is None:
        return list(range(1, teacher_layers + 1))
    if isinstance(layers, tuple):
        beyond = [value for value in layers if value > teacher_layers]
        if beyond:
            raise BrewerError(
                f"{FIELD}.layers: layer {beyond[0]} does not exist — the teacher has {teacher_layers} "
                f"layers, numbered 1 to {teacher_layers}"
            )
        return list(layers)
    if layers > teacher_layers:
        raise _too_large("layers", layers, teacher_layers, "number of layers")
    if plan.selection == "first":
        return list(range(1, layers + 1))
    if plan.selection == "last":
        return list(range(teacher_layers - layers + 1, teacher_layers + 1))
    # Steps of N/M ≥ 1 rounded half up never collide, and i = M gives exactly N.
    return [_round_half_up(index * teacher_layers / layers) for index in range(1, layers + 1)]


def _round_sizes(teacher: _Sizes, target: _Sizes, rounds: int) -> list[_Sizes]:
    """Width after each round: linear steps in heads, head size and FFN size; all layers kept."""

    def step(start: int, end: int, fraction: float) -> int:
        return start - _round_half_up((start - end) * fraction)

    sizes = []
    for round_number in range(1, rounds + 1):
        fraction = round_number / rounds
        heads = step(teacher.heads, target.heads, fraction)
        head_dim = step(teacher.head_dim, target.head_dim, fraction)
        hidden = heads * head_dim
        sizes.append(
            _Sizes(
                layers=teacher.layers,
                hidden=hidden,
                heads=heads,
                head_dim=head_dim,
                intermediate=step(teacher.intermediate, target.intermediate, fraction),
                embedding=hidden if teacher.embedding_tied else teacher.embedding,
            )
        )
    return sizes


def _check_electra_projection(teacher: _Sizes, round_sizes: list[_Sizes]) -> None:
    if teacher.embedding_tied:
        return
    for round_number, sizes in enumerate(round_sizes, start=1):
        if sizes.hidden == teacher.embedding:
            where = "" if round_number == len(round_sizes) else f" after round {round_number}"
            raise BrewerError(
                f"{FIELD}.hidden: a student hidden size{where} of {sizes.hidden} equals the teacher's "
                f"embedding_size, and transformers then builds ELECTRA without its embedding projection, "
                f"which the extracted weights need — choose another hidden size or number of rounds"
            )


# --------------------------------------------------------------------------------------------
# Index sets and slicing
# --------------------------------------------------------------------------------------------


@dataclass
class _IndexSets:
    """Kept indices relative to one source model; per-layer lists follow the source's layers."""

    hidden: torch.Tensor
    heads: list[torch.Tensor]
    query_key: list[torch.Tensor]  # flattened over heads × head size
    value: list[torch.Tensor]
    ffn: list[torch.Tensor]

    @classmethod
    def full(cls, sizes: _Sizes) -> _IndexSets:
        attention = sizes.heads * sizes.head_dim
        return cls(
            hidden=torch.arange(sizes.hidden),
            heads=[torch.arange(sizes.heads) for _ in range(sizes.layers)],
            query_key=[torch.arange(attention) for _ in range(sizes.layers)],
            value=[torch.arange(attention) for _ in range(sizes.layers)],
            ffn=[torch.arange(sizes.intermediate) for _ in range(sizes.layers)],
        )

    def compose(self, later: _IndexSets) -> _IndexSets:
        """Indices of `later` (relative to the model this set produced) in this set's source."""
        return _IndexSets(
            hidden=self.hidden[later.hidden],
            heads=[mine[theirs] for mine, theirs in zip(self.heads, later.heads)],
            query_key=[mine[theirs] for mine, theirs in zip(self.query_key, later.query_key)],
            value=[mine[theirs] for mine, theirs in zip(self.value, later.value)],
            ffn=[mine[theirs] for mine, theirs in zip(self.ffn, later.ffn)],
        )


def _index_for(
    role: str | None, layer: int | None, index_sets: _IndexSets, sizes: _Sizes
) -> torch.Tensor | None:
    if role is None:
        return None
    if role == HIDDEN:
        return index_sets.hidden
    if role == EMBEDDING:
        return index_sets.hidden if sizes.embedding_tied else None
    assert layer is not None, f"role {role} outside a layer"
    return {QUERY_KEY: index_sets.query_key, VALUE: index_sets.value, FFN: index_sets.ffn}[role][
        layer
    ]


def _build_student(
    source: nn.Module,
    family: _Family,
    source_sizes: _Sizes,
    target: _Sizes,
    index_sets: _IndexSets,
    layer_map: list[int],
) -> nn.Module:
    """A fresh model of the source's class with `target` sizes, holding the sliced weights.

    layer_map: for each student layer, the 0-based source layer it copies.
    """
    config = copy.deepcopy(source.config)
    _write_sizes(family, config, _replace_layers(target, len(layer_map)))
    reference = next(source.parameters())
    student = type(source)._from_config(config, dtype=reference.dtype)
    source_state = source.state_dict()
    base_prefix = getattr(source, "base_model_prefix", "")
    state: dict[str, torch.Tensor] = {}
    for name, expected in student.state_dict().items():
        parsed = _parse(family, name, base_prefix)
        source_layer = None
        source_name = name
        if parsed.layer is not None:
            source_layer = layer_map[parsed.layer]
            source_name = f"{parsed.prefix}{family.layers_path}.{source_layer}.{parsed.rest}"
        if source_name not in source_state:
            raise ModelError(
                f"extraction cannot find the teacher's parameter '{source_name}' for '{name}'"
            )
        tensor = source_state[source_name].detach()
        if parsed.rule is None:
            # Not size-dependent as far as brewer knows (buffers, unusual heads): copy it when the
            # shape is unchanged, which also holds for every size-dependent tensor whose sizes stay.
            if tensor.shape != expected.shape:
                raise ModelError(
                    f"extraction does not know how '{name}' of {type(source).__name__} depends on the "
                    f"model's sizes (shape {tuple(tensor.shape)} in the teacher, {tuple(expected.shape)} "
                    f"in the student); supported: the encoders of {', '.join(SUPPORTED_MODEL_TYPES)} with "
                    f"their sequence/token classification, QA, multiple-choice and masked-LM heads"
                )
            state[name] = tensor.clone()
            continue
        sliced = tensor
        for dimension, role in enumerate(parsed.rule.roles):
            index = _index_for(role, source_layer, index_sets, source_sizes)
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


def _replace_layers(sizes: _Sizes, layers: int) -> _Sizes:
    return _Sizes(
        layers, sizes.hidden, sizes.heads, sizes.head_dim, sizes.intermediate, sizes.embedding
    )


# --------------------------------------------------------------------------------------------
# Importance scores
# --------------------------------------------------------------------------------------------


@dataclass
class _Scores:
    heads: list[torch.Tensor]  # per layer, (heads,)
    query_key: list[torch.Tensor]  # per layer, (heads × head size,)
    value: list[torch.Tensor]
    ffn: list[torch.Tensor]
    hidden: torch.Tensor  # (hidden,)
    examples: int
    losses: set[str]


_LABEL_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")


def _collect_batches(batches: Iterable[dict[str, Any]], max_examples: int) -> list[dict[str, Any]]:
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
                key: (
                    value[:remaining]
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size
                    else value
                )
                for key, value in batch.items()
            }
            size = remaining
        collected.append(batch)
        remaining -= size
    return collected


def _model_inputs(
    model: nn.Module, batch: dict[str, Any], device: torch.device
) -> dict[str, torch.Tensor]:
    # Only the forward's named parameters: brewer's collate may add bookkeeping keys, and a key
    # such as token_type_ids must not slip into DistilBERT's **kwargs.
    accepted = {
        name
        for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return {
        key: value.to(device)
        for key, value in batch.items()
        if key in accepted and torch.is_tensor(value)
    }


def _hard_cross_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy to the model's own arg-max, over the last dimension, valid positions only."""
    logits = logits.float()
    flat = logits.reshape(-1, logits.shape[-1])
    losses = functional.cross_entropy(flat, flat.detach().argmax(dim=-1), reduction="none")
    if mask is None:
        return losses.mean()
    weights = mask.reshape(-1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def _own_prediction_loss(
    model: nn.Module, outputs: Any, inputs: dict[str, torch.Tensor]
) -> torch.Tensor:
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


def _score(
    model: nn.Module,
    family: _Family,
    sizes: _Sizes,
    batches: list[dict[str, Any]],
    hidden_scoring: str,
) -> _Scores:
    """Taylor scores (and activation scores for hidden channels) of one model; see module docstring."""
    base_prefix = getattr(model, "base_model_prefix", "")
    scored: list[tuple[str, _Parsed]] = []
    for name, _ in model.named_parameters():
        parsed = _parse(family, name, base_prefix)
        if parsed.rule is not None and parsed.rule.score is not None:
            scored.append((name, parsed))
    if not scored:
        raise ModelError(f"extraction found no scorable parameters in {type(model).__name__}")
    parameters = dict(model.named_parameters())
    device = next(model.parameters()).device
    attention = sizes.heads * sizes.head_dim

    def zeros(count: int) -> torch.Tensor:
        return torch.zeros(count, dtype=torch.float64)

    scores = _Scores(
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
            if hidden_scoring == "activation":
                inputs["output_hidden_states"] = True
            # Fresh leaves that share the weights' storage: gradients land on them, never on the
            # model's own parameters (which may be frozen and must stay untouched).
            leaves = {name: parameters[name].detach().requires_grad_(True) for name, _ in scored}
            outputs = torch.func.functional_call(model, leaves, args=(), kwargs=inputs)
            loss = outputs.get("loss")
            if loss is not None:
                scores.losses.add("task loss")
            else:
                loss = _own_prediction_loss(model, outputs, inputs)
                scores.losses.add("cross-entropy to the model's own predictions")
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
                kind = parsed.rule.score
                if kind == SCORE_QUERY_KEY:
                    query_key[parsed.layer] += _sum_except(product, 0)
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
                scores.heads[layer] += (
                    value[layer].view(sizes.heads, sizes.head_dim).sum(dim=1).abs()
                )
                scores.query_key[layer] += query_key[layer].abs()
                scores.value[layer] += value[layer].abs()
                scores.ffn[layer] += ffn[layer].abs()
            scores.hidden += hidden.abs()

            if hidden_scoring == "activation":
                states = outputs.get("hidden_states")
                if not states:
                    raise ModelError(
                        f"{type(model).__name__} returns no hidden states for activation scoring"
                    )
                mask = inputs.get("attention_mask")
                for state in states:
                    state = state.detach().double()
                    flat_mask = (
                        mask.reshape(-1, mask.shape[-1]).to(state.dtype)
                        if mask is not None
                        else torch.ones(state.shape[:-1], dtype=state.dtype, device=state.device)
                    )
                    activation_sum += (state.abs() * flat_mask.unsqueeze(-1)).sum(dim=(0, 1)).cpu()
                token_count += (
                    int(mask.sum())
                    if mask is not None
                    else int(states[0].shape[0] * states[0].shape[1])
                )
            scores.examples += int(batch["input_ids"].shape[0])
    if hidden_scoring == "activation":
        # Σ over hidden states of the mean |activation| per valid token.
        scores.hidden = activation_sum / max(token_count, 1)
    return scores


def _sum_except(tensor: torch.Tensor, keep: int) -> torch.Tensor:
    dimensions = [dimension for dimension in range(tensor.dim()) if dimension != keep]
    return tensor.sum(dim=dimensions) if dimensions else tensor


# --------------------------------------------------------------------------------------------
# Choosing subsets
# --------------------------------------------------------------------------------------------


def _choose(
    count: int, total: int, scores: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """`count` sorted indices of `total`: the top-scored, or uniformly random without scores."""
    if count >= total:
        return torch.arange(total)
    if scores is None:
        chosen = torch.randperm(total, generator=generator)[:count]
    else:
        # Stable sort: equal scores keep the lower index, so results do not depend on the kernel.
        chosen = torch.argsort(scores, descending=True, stable=True)[:count]
    return chosen.sort().values


def _choose_index_sets(
    source: _Sizes, target: _Sizes, scores: _Scores | None, generator: torch.Generator
) -> _IndexSets:
    hidden = _choose(target.hidden, source.hidden, scores.hidden if scores else None, generator)
    heads, query_key, value, ffn = [], [], [], []
    for layer in range(source.layers):
        kept_heads = _choose(
            target.heads, source.heads, scores.heads[layer] if scores else None, generator
        )
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
    return _IndexSets(hidden, heads, query_key, value, ffn)


# --------------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------------


def extract_student(
    teacher_model: nn.Module,
    plan: ExtractPlan,
    batches: Iterable[dict[str, Any]] | None = None,
    max_examples: int = 256,
) -> ExtractResult:
    """Build a student from the teacher's parameters following `plan` (ETD).

    batches: dicts of tensors the teacher's forward takes (`input_ids`, `attention_mask`, optional
        `token_type_ids`, optional `labels`/`start_positions`/`end_positions`); keys the forward
        does not name are ignored. Required for `strategy="importance"`; at most `max_examples`
        examples are scored (read once, reused by every round).
    The teacher is not modified: scores are computed through detached copies of its weights, its
    modes are restored, and every student tensor is a new tensor. The student starts in the
    teacher's train/eval mode.
    """
    if not isinstance(plan, ExtractPlan):
        raise TypeError(f"plan must be an ExtractPlan, got {type(plan).__name__}")
    family = _family_of(teacher_model)
    teacher_sizes = _read_sizes(family, teacher_model.config)
    target = _resolve_sizes(plan, teacher_sizes, family)
    kept_layers = _select_layers(plan, teacher_sizes.layers)
    round_sizes = _round_sizes(teacher_sizes, target, plan.rounds)
    _check_electra_projection(teacher_sizes, round_sizes)

    collected: list[dict[str, Any]] = []
    if plan.strategy == "importance":
        if batches is None:
            raise BrewerError(
                f"{FIELD}.strategy: 'importance' scores the teacher's heads, neurons and channels on "
                f"data, but no batches were given — pass training batches, or use strategy: random"
            )
        if max_examples < 1:
            raise BrewerError(f"importance extraction needs max_examples ≥ 1, got {max_examples}")
        collected = _collect_batches(batches, max_examples)
        if not collected:
            raise BrewerError("importance extraction got no batches to score (the data is empty)")

    generator = torch.Generator().manual_seed(plan.seed)
    source, source_sizes = teacher_model, teacher_sizes
    in_teacher = _IndexSets.full(teacher_sizes)  # the current source's indices, in teacher space
    first_scores: _Scores | None = None
    for round_number, sizes in enumerate(round_sizes, start=1):
        scores = None
        if plan.strategy == "importance":
            scores = _score(source, family, source_sizes, collected, plan.hidden_scoring)
            if first_scores is None:
                first_scores = scores
        index_sets = _choose_index_sets(source_sizes, sizes, scores, generator)
        last = round_number == len(round_sizes)
        layer_map = (
            [layer - 1 for layer in kept_layers] if last else list(range(source_sizes.layers))
        )
        student = _build_student(source, family, source_sizes, sizes, index_sets, layer_map)
        in_teacher = in_teacher.compose(index_sets)
        source, source_sizes = student, _replace_layers(sizes, len(layer_map))

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
        "sizes": {
            "teacher": {**teacher_sizes.as_dict(), "parameters": _parameter_count(teacher_model)},
            "student": {**student_sizes.as_dict(), "parameters": _parameter_count(source)},
        },
    }
    summary = None
    if first_scores is not None:
        summary = _importance_summary(
            first_scores, in_teacher, kept_layers, teacher_sizes, target, plan
        )
    return ExtractResult(model=source, kept=kept, importance_summary=summary)


def _parameter_count(model: nn.Module) -> int:
    # parameters() yields a tied tensor once, so the MLM decoder is not counted twice.
    return sum(parameter.numel() for parameter in model.parameters())


def _share(scores: torch.Tensor, kept: torch.Tensor) -> float:
    total = float(scores.sum())
    return float(scores[kept].sum()) / total if total > 0 else 1.0


def _importance_summary(
    scores: _Scores,
    in_teacher: _IndexSets,
    kept_layers: list[int],
    teacher: _Sizes,
    target: _Sizes,
    plan: ExtractPlan,
) -> dict[str, Any]:
    """JSON-friendly figures from the teacher's (round-1) scores; shares count kept layers only."""
    layers = [layer - 1 for layer in kept_layers]

    def retained(per_layer_scores: list[torch.Tensor], per_layer_kept: list[torch.Tensor]) -> float:
        total = sum(float(per_layer_scores[layer].sum()) for layer in layers)
        kept = sum(float(per_layer_scores[layer][per_layer_kept[layer]].sum()) for layer in layers)
        return kept / total if total > 0 else 1.0

    order = torch.argsort(scores.hidden, descending=True, stable=True)[:10]
    summary: dict[str, Any] = {
        "loss": " + ".join(sorted(scores.losses)),
        "examples": scores.examples,
        "rounds": plan.rounds,
        "hidden_scoring": plan.hidden_scoring,
        "head_scores": [layer_scores.tolist() for layer_scores in scores.heads],
        "top_hidden_channels": [[int(index), float(scores.hidden[index])] for index in order],
        "retained": {
            "hidden": _share(scores.hidden, in_teacher.hidden),
            "heads": retained(scores.heads, in_teacher.heads),
            "ffn": retained(scores.ffn, in_teacher.ffn),
        },
    }
    if target.head_dim < teacher.head_dim:
        summary["retained"]["query_key_neurons"] = retained(scores.query_key, in_teacher.query_key)
        summary["retained"]["value_neurons"] = retained(scores.value, in_teacher.value)
    return summary


def describe(result: ExtractResult) -> str:
    """A multi-line, human-readable account of what was kept, for `brewer extract` and dry runs."""
    kept = result.kept
    teacher = kept["sizes"]["teacher"]
    student = kept["sizes"]["student"]
    layer_list = ", ".join(map(str, kept["layers"]))
    lines = [
        f"Extracted {kept['model_class']} student ({kept['strategy']}, seed {kept['seed']}"
        + (f", {kept['rounds']} rounds" if kept["rounds"] > 1 else "")
        + ")",
        f"  layers:       {student['layers']} of {teacher['layers']} — teacher layers {layer_list} "
        f"({kept['selection']})",
        f"  hidden:       {student['hidden']} of {teacher['hidden']} channels",
        f"  attention:    {student['heads']} heads × {student['head_dim']} "
        f"(teacher {teacher['heads']} × {teacher['head_dim']})",
        f"  intermediate: {student['intermediate']} of {teacher['intermediate']} FFN neurons per layer",
    ]
    if student["embedding"] != student["hidden"] or teacher["embedding"] != teacher["hidden"]:
        lines.append(f"  embedding:    {student['embedding']} (teacher {teacher['embedding']})")
    share = student["parameters"] / teacher["parameters"] if teacher["parameters"] else 0.0
    in_millions = (
        teacher["parameters"] >= 1_000_000
    )  # one unit for both, so they compare at a glance
    lines.append(
        f"  parameters:   {_count(student['parameters'], in_millions)} of "
        f"{_count(teacher['parameters'], in_millions)} ({share:.0%})"
    )
    if student["heads"] < teacher["heads"]:
        lines.append("  heads kept (0-based, per kept layer):")
        for layer, heads in zip(kept["layers"], kept["heads"]):
            lines.append(f"    layer {layer}: {' '.join(map(str, heads))}")
    summary = result.importance_summary
    if summary is not None:
        lines.append(
            f"  importance:   {summary['loss']}, {summary['examples']} examples, hidden channels by "
            f"{summary['hidden_scoring']}"
        )
        retained = ", ".join(f"{name} {value:.1%}" for name, value in summary["retained"].items())
        lines.append(f"  retained importance: {retained}")
        top = ", ".join(
            f"{index} ({score:.3g})" for index, score in summary["top_hidden_channels"][:5]
        )
        lines.append(f"  top hidden channels: {top}")
        top_heads = []
        for layer in kept["layers"]:
            layer_scores = summary["head_scores"][layer - 1]
            best = max(range(len(layer_scores)), key=layer_scores.__getitem__)
            top_heads.append(f"L{layer} h{best} ({layer_scores[best]:.3g})")
        lines.append(f"  top head per kept layer: {', '.join(top_heads)}")
    return "\n".join(lines)


def _count(count: int, in_millions: bool) -> str:
    return f"{count / 1e6:.1f}M" if in_millions else f"{count:,}"


__all__ = ["ExtractPlan", "ExtractResult", "SUPPORTED_MODEL_TYPES", "describe", "extract_student"]
