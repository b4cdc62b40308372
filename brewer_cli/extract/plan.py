"""The extraction plan (`student.init.extract`), the sizes it asks for, and their validation
against the teacher: which combinations of hidden, heads and head size are accepted, which layers
are kept, and the width after each round."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from brewer_cli.errors import BrewerError, ModelError
from brewer_cli.families import Family

FIELD = "student.init.extract"

Selection = Literal["uniform", "first", "last"]
Strategy = Literal["random", "importance", "activation"]
HiddenScoring = Literal["taylor", "activation"]

SIZE_FIELDS = ("layers", "hidden", "heads", "head_dim", "intermediate")
_SELECTIONS = ("uniform", "first", "last")
_STRATEGIES = ("random", "importance", "activation")
_HIDDEN_SCORINGS = ("taylor", "activation")


# --------------------------------------------------------------------------------------------
# The plan and the result
# --------------------------------------------------------------------------------------------

TARGET_KEYS = ("parameters", "flops_fewer_by", "latency_fewer_by", "size_of")
# FLOPs are counted per example at this many tokens unless the caller says (size-report's default).
TARGET_SEQ_LEN = 128


@dataclass(frozen=True)
class Target:
    """A budget for the student (`student.init.extract.target`); extraction chooses the sizes
    (brewer_cli/extract/budget.py). Exactly one of:

    parameters: at most this many parameters (brewer's one counter, tied weights once).
    flops_fewer_by: at least this many times fewer FLOPs per example than the teacher, at
        `seq_len` tokens (size-report's analytic count).
    latency_fewer_by: the same, read through FLOPs as the proxy of latency (see budget.py).
    size_of: no more parameters than the named student config would have as a student of this
        teacher; `size_of` is its name for the report, `size_of_config` its settings (a
        config.json's keys with `model_type`), which the caller reads.
    """

    parameters: int | None = None
    flops_fewer_by: float | None = None
    latency_fewer_by: float | None = None
    size_of: str | None = None
    size_of_config: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    seq_len: int = TARGET_SEQ_LEN

    def __post_init__(self) -> None:
        where = f"{FIELD}.target"
        given = [name for name in TARGET_KEYS if getattr(self, name) is not None]
        if len(given) != 1:
            raise BrewerError(
                f"{where}: give exactly one of {', '.join(TARGET_KEYS)}" + (f" (found {', '.join(given)})" if given else "")
            )
        if self.parameters is not None and not (_is_int(self.parameters) and self.parameters >= 1):
            raise BrewerError(f"{where}.parameters: expected a positive integer, got {self.parameters!r}")
        for name in ("flops_fewer_by", "latency_fewer_by"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 1
            ):
                raise BrewerError(
                    f"{where}.{name}: expected a finite factor of at least 1 (4 means a quarter of the teacher's), got {value!r}"
                )
        if self.size_of is not None and not isinstance(self.size_of_config, dict):
            raise BrewerError(f"{where}.size_of: the settings of {self.size_of!r} were not given (size_of_config)")
        if not (_is_int(self.seq_len) and self.seq_len >= 1):
            raise BrewerError(f"{where}: FLOPs need a sequence length of at least 1 token, got {self.seq_len!r}")

    @property
    def key(self) -> str:
        """The one key given."""
        return next(name for name in TARGET_KEYS if getattr(self, name) is not None)

    def as_dict(self) -> dict[str, Any]:
        """What the recipe asked, for extraction.json and the report."""
        return {self.key: getattr(self, self.key), "seq_len": self.seq_len}


@dataclass(frozen=True)
class ExtractPlan:
    """What to keep of the teacher. None for a size keeps the teacher's size.

    layers: how many layers to keep (placed by `selection`), or the explicit 1-based teacher layer
        numbers in increasing order (then `selection` is not used).
    hidden, heads, head_dim, intermediate: the student's sizes. heads × head_dim must equal hidden;
        fields left out are derived (see `resolve_sizes`), e.g. hidden 312 of a 768/12-head
        teacher keeps 12 heads of size 26. (Grouped-query families: see grouped.py.)
    key_value_heads: grouped-query attention (Llama): the key/value groups kept (grouped.py).
    strategy: `random` (ETD-Rand), `importance` (ETD-Impt: Taylor scores, needs batches) or
        `activation` (Minitron: every structure ranked by its mean |activation| on the batches,
        activation.py).
    hidden_scoring: how hidden channels are ranked under `importance`.
    rounds: shrink the width in this many equal steps, re-scoring in between.
    target: a budget (`Target`, or a dict of its fields) instead of sizes: extraction chooses
        layers, hidden, heads, head_dim and intermediate (brewer_cli/extract/budget.py).
    """

    layers: int | tuple[int, ...] | None = None
    selection: Selection = "uniform"
    hidden: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    intermediate: int | None = None
    key_value_heads: int | None = None
    strategy: Strategy = "importance"
    seed: int = 0
    hidden_scoring: HiddenScoring = "taylor"
    rounds: int = 1
    target: Target | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if isinstance(self.target, dict):
            unknown = sorted(set(self.target) - {*TARGET_KEYS, "size_of_config", "seq_len"})
            if unknown:
                raise BrewerError(f"{FIELD}.target: unknown key {unknown[0]!r} — valid: {', '.join(TARGET_KEYS)}")
            object.__setattr__(self, "target", Target(**self.target))
        if self.target is not None:
            sizes = [name for name in (*SIZE_FIELDS, "key_value_heads") if getattr(self, name) is not None]
            if sizes:
                listed = ", ".join(sizes)
                problems.append(
                    f"{FIELD}.target: the target chooses {', '.join(SIZE_FIELDS)} itself, so it cannot be combined with "
                    f"{listed} — remove {listed} to extract to the target, or remove target to keep your sizes"
                )
            if self.hidden_scoring == "activation":
                # The shape is chosen by summing kept scores across parts; activation scores are
                # not estimates of a loss change, so they would not add up with the others.
                problems.append(
                    f"{FIELD}.hidden_scoring: 'activation' cannot choose a shape for a target — the target weighs the "
                    f"Taylor scores of heads, neurons and hidden channels against each other, and activation scores "
                    f"are on another scale; use hidden_scoring: taylor with a target, or give the sizes"
                )
        layers = self.layers
        if isinstance(layers, list):
            # A list from YAML/JSON is the natural spelling; freeze it so the plan stays hashable.
            layers = tuple(layers)
            object.__setattr__(self, "layers", layers)
        if isinstance(layers, tuple):
            if not layers:
                problems.append(f"{FIELD}.layers: the list of layers to keep is empty")
            elif not all(_is_int(value) for value in layers):
                problems.append(f"{FIELD}.layers: layer numbers must be integers, got {list(layers)}")
            elif any(value < 1 for value in layers):
                problems.append(f"{FIELD}.layers: layer numbers are 1-based (1 is the first layer), got {list(layers)}")
            elif any(later <= earlier for earlier, later in zip(layers, layers[1:])):
                problems.append(
                    f"{FIELD}.layers: layer numbers must be strictly increasing (the student stacks "
                    f"them in order), got {list(layers)}"
                )
        elif layers is not None and not (_is_int(layers) and layers >= 1):
            problems.append(f"{FIELD}.layers: expected a layer count ≥ 1 or a list of 1-based layer numbers, got {layers!r}")
        for name in ("hidden", "heads", "head_dim", "intermediate", "key_value_heads"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                problems.append(f"{FIELD}.{name}: expected a positive integer, got {value!r}")
        if self.selection not in _SELECTIONS:
            problems.append(_choice_problem("selection", self.selection, _SELECTIONS))
        if self.strategy not in _STRATEGIES:
            problems.append(_choice_problem("strategy", self.strategy, _STRATEGIES))
        if self.hidden_scoring not in _HIDDEN_SCORINGS:
            problems.append(_choice_problem("hidden_scoring", self.hidden_scoring, _HIDDEN_SCORINGS))
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
        and parameter counts), `strategy`, `seed`, `selection`, `model_class`; with a target,
        `budget`: the target, the chosen shape with its size figures and share of importance
        kept, and the alternatives considered (brewer_cli/extract/budget.py).
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


@dataclass(frozen=True)
class Sizes:
    """The sizes of one model: the teacher, the student, or the model after a round."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    embedding: int  # equals hidden except for ELECTRA with a separate embedding_size
    # Grouped-query attention (Llama): the key/value heads; None where every head has its own.
    key_value_heads: int | None = None

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
            # Only grouped-query families have the field, so encoder reports stay as they were.
            **({"key_value_heads": self.key_value_heads} if self.key_value_heads is not None else {}),
        }


def read_sizes(family: Family, config: Any) -> Sizes:
    hidden = family.width(config)
    heads = family.heads(config)
    # Only where the head size is its own field (Llama) may heads × head size differ from hidden.
    if family.head_dim_field is None and hidden % heads:
        raise ModelError(f"the teacher's hidden size {hidden} is not divisible by its {heads} attention heads")
    return Sizes(
        layers=family.depth(config),
        hidden=hidden,
        heads=heads,
        head_dim=family.head_dim(config),
        intermediate=family.ffn_width(config),
        embedding=int(family.embedding_size(config) or hidden),
        key_value_heads=family.key_value_heads(config),
    )


def write_sizes(family: Family, config: Any, sizes: Sizes) -> None:
    family.write_sizes(
        config,
        layers=sizes.layers,
        hidden=sizes.hidden,
        heads=sizes.heads,
        intermediate=sizes.intermediate,
        embedding=sizes.embedding,
        head_dim=sizes.head_dim,
        key_value_heads=sizes.key_value_heads,
    )


# --------------------------------------------------------------------------------------------
# Sizes and layers: validation against the teacher
# --------------------------------------------------------------------------------------------


def _too_large(name: str, value: int, teacher_value: int, what: str) -> BrewerError:
    return BrewerError(
        f"{FIELD}.{name}: {value} is larger than the teacher's {what} ({teacher_value}); extraction "
        f"keeps a subset of the teacher's parameters, so a size can only stay or shrink"
    )


def _valid_head_counts(hidden: int, teacher: Sizes) -> list[int]:
    return [count for count in range(1, teacher.heads + 1) if hidden % count == 0 and hidden // count <= teacher.head_dim]


def _heads_problem(name: str, message: str, hidden: int, teacher: Sizes) -> BrewerError:
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


def resolve_sizes(plan: ExtractPlan, teacher: Sizes) -> Sizes:
    """The student's sizes; the layer count is filled in by `select_layers`.

    Accepted combinations of hidden (H), heads (h) and head_dim (d); a missing one is derived:
    - none: the teacher's;      - H only: the teacher's head count, d = H / h (ETD: 312 → 12 × 26);
    - H and h: d = H / h;       - H and d: h = H / d;       - h and d: H = h × d;
    - all three: h × d must equal H;
    - h only or d only: refused unless h × d equals the teacher's hidden, because keeping the
      teacher's hidden would need a head size (or count) the teacher does not have — set hidden too.
    Every derived value must divide exactly and stay within the teacher's heads and head size.
    (Grouped-query teachers: grouped.resolve_grouped_sizes.)
    """
    if plan.key_value_heads is not None:
        raise BrewerError(
            f"{FIELD}.key_value_heads: the teacher has no grouped-query attention (every head has its own keys and "
            f"values), so there are no key/value groups to choose — remove key_value_heads and set heads"
        )
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
            raise _heads_problem("heads", f"hidden {hidden} is not divisible by {heads} heads", hidden, teacher)
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

    # Separate embeddings (ELECTRA's projection) keep all their channels; tied ones follow hidden.
    embedding = hidden if teacher.embedding_tied else teacher.embedding
    return Sizes(
        layers=teacher.layers,
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        intermediate=plan.intermediate if plan.intermediate is not None else teacher.intermediate,
        embedding=embedding,
    )


def round_half_up(value: float) -> int:
    # Python's round() rounds halves to even; extraction documents "nearest, halves up".
    return int(math.floor(value + 0.5))


def select_layers(plan: ExtractPlan, teacher_layers: int) -> list[int]:
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
    return [round_half_up(index * teacher_layers / layers) for index in range(1, layers + 1)]


def round_sizes(teacher: Sizes, target: Sizes, rounds: int) -> list[Sizes]:
    """Width after each round: linear steps in heads, head size and FFN size; all layers kept."""

    def step(start: int, end: int, fraction: float) -> int:
        return start - round_half_up((start - end) * fraction)

    sizes = []
    for round_number in range(1, rounds + 1):
        fraction = round_number / rounds
        heads = step(teacher.heads, target.heads, fraction)
        head_dim = step(teacher.head_dim, target.head_dim, fraction)
        hidden = heads * head_dim
        sizes.append(
            Sizes(
                layers=teacher.layers,
                hidden=hidden,
                heads=heads,
                head_dim=head_dim,
                intermediate=step(teacher.intermediate, target.intermediate, fraction),
                embedding=hidden if teacher.embedding_tied else teacher.embedding,
            )
        )
    return sizes


def check_electra_projection(teacher: Sizes, per_round: list[Sizes]) -> None:
    if teacher.embedding_tied:
        return
    for round_number, sizes in enumerate(per_round, start=1):
        if sizes.hidden == teacher.embedding:
            where = "" if round_number == len(per_round) else f" after round {round_number}"
            raise BrewerError(
                f"{FIELD}.hidden: a student hidden size{where} of {sizes.hidden} equals the teacher's "
                f"embedding_size, and transformers then builds ELECTRA without its embedding projection, "
                f"which the extracted weights need — choose another hidden size or number of rounds"
            )
