"""Resolution: `distillation.matches` expanded into one flat list of `ResolvedMatch`, each checked by
name alone and, once their configs are known, against the models' depths, widths and heads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.errors import RecipeError
from brewer_cli.families import family_for
from brewer_cli.losses import MATCH_LOSSES, MatchLoss
from brewer_cli.matches.presets import PRESETS, Preset, uniform_layer_map
from brewer_cli.projections import PROJECTIONS
from brewer_cli.recipe import MatchSpec, Recipe, UniformMatches

Layer = int | tuple[int, int]

# What a loss's `feature` reads, in words, for messages.
_FEATURE_WORDS = {
    "hidden": "hidden states",
    "attention": "attention scores",
    "attention_inputs": "attention inputs (query/key/value projections)",
}
_PER_HEAD_ALTERNATIVES = (
    "use attention_mse_sum or attention_ce_mean (heads summed / averaged first), or MiniLMv2 "
    "relation_qq / relation_kk / relation_vv (re-split relation heads, any head counts)"
)


# ============================================================================= model shapes


@dataclass(frozen=True)
class ModelShape:
    """What match validation needs to know about one model, read from its config."""

    depth: int
    width: int
    heads: int
    family: str
    supports_attention_capture: bool

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        family = family_for(config)
        return cls(
            family.depth(config), family.width(config), family.heads(config), family.name, family.supports_attention_capture
        )


# ============================================================================= resolution


@dataclass(frozen=True)
class ResolvedMatch:
    """One match after presets and `uniform` are expanded and every check has passed."""

    teacher_layer: Layer
    student_layer: Layer
    feature: str  # hidden | embedding | attention | attention_inputs
    loss: str  # the canonical registered name
    weight: float
    projection: str | None
    relation_heads: int | None
    path: str  # dotted path of the recipe entry it came from: distillation.matches.2
    origin: str  # "" for an explicit entry, "preset 'L4t_hidden_mse' match 3", "uniform"

    @property
    def spec(self) -> MatchLoss:
        return MATCH_LOSSES.get(self.loss)

    @property
    def reads(self) -> str:
        """The Features field this match reads: hidden, attention or attention_inputs."""
        return "hidden" if self.feature == "embedding" else self.feature

    def describe(self, student: ModelShape | None = None, teacher: ModelShape | None = None) -> str:
        projection = ""
        if self.projection is not None:
            sizes = f" {student.width}→{teacher.width}" if student is not None and teacher is not None else ""
            projection = f", projection {self.projection}{sizes}"
            if self.spec.shared_projection:
                projection += " (shared)"
        heads = f", relation heads {self.relation_heads}" if self.relation_heads is not None else ""
        where = f"{self.origin}, {self.path}" if self.origin else self.path
        return (
            f"{self.loss} × {self.weight:g}: student {self.feature} {layer_text(self.student_layer)} ↔ "
            f"teacher {layer_text(self.teacher_layer)}{projection}{heads} ({where})"
        )


def layer_text(layer: Layer) -> str:
    return f"[{layer[0]}, {layer[1]}]" if isinstance(layer, tuple) else str(layer)


class _Problems:
    """Collects `file: dotted.path: [origin: ]what is wrong — fix` lines; called like a function."""

    def __init__(self, recipe_path: Path | None):
        self.recipe_path = recipe_path
        self.lines: list[str] = []
        self.calls = 0  # every report, also those whose line was already said

    def __call__(self, path: str, field: str | None, origin: str, message: str) -> None:
        self.calls += 1
        dotted = f"{path}.{field}" if field else path
        prefix = f"{origin}: " if origin else ""
        line = f"{self.recipe_path}: {dotted}: {prefix}{message}"
        # A `uniform` entry expands to one candidate per layer; its name problems are said once.
        if line not in self.lines:
            self.lines.append(line)


@dataclass
class _Candidate:
    spec: MatchSpec
    path: str
    origin: str
    preset: Preset | None = None


def resolve_matches(recipe: Recipe, teacher_config: Any = None, student_config: Any = None) -> list[ResolvedMatch]:
    """Expand and check `distillation.matches`; raise `RecipeError` listing every problem.

    Without configs only what names alone decide is checked; with one or both configs the layer
    indices, widths and head counts are checked too (and `uniform` is expanded, which needs both
    depths).
    """
    teacher = ModelShape.of(teacher_config) if teacher_config is not None else None
    student = ModelShape.of(student_config) if student_config is not None else None
    problems, resolved = _resolve(recipe, teacher, student)
    if problems:
        raise RecipeError(problems)
    return resolved


def match_problems(recipe: Recipe) -> list[str]:
    """The problems names alone reveal (for `build.check_names`, before anything is loaded)."""
    return _resolve(recipe, None, None)[0]


def _resolve(recipe: Recipe, teacher: ModelShape | None, student: ModelShape | None) -> tuple[list[str], list[ResolvedMatch]]:
    entries = getattr(recipe.distillation, "matches", ())
    problem = _Problems(recipe.path)

    candidates: list[_Candidate] = []
    for index, entry in enumerate(entries):
        path = f"distillation.matches.{index}"
        if isinstance(entry, str):
            if entry not in PRESETS:
                problem(
                    path,
                    None,
                    "",
                    PRESETS.unknown_message(entry) + " — or give the entry explicitly "
                    "({teacher_layer, student_layer, loss, …}) or `uniform`",
                )
                continue
            preset = PRESETS.get(entry)
            candidates.extend(
                _Candidate(spec, path, f"preset {preset.name!r} match {number}", preset)
                for number, spec in enumerate(preset.matches)
            )
        elif isinstance(entry, UniformMatches):
            candidates.extend(_uniform_candidates(entry, path, teacher, student, problem))
        else:
            candidates.append(_Candidate(entry, path, ""))

    resolved: list[ResolvedMatch] = []
    for candidate in candidates:
        match = _check(candidate, teacher, student, problem)
        if match is not None:
            resolved.append(match)
    _check_shared_projections(resolved, problem)
    return problem.lines, resolved


def _uniform_candidates(
    entry: UniformMatches, path: str, teacher: ModelShape | None, student: ModelShape | None, problem: _Problems
) -> list[_Candidate]:
    """Candidates for a `uniform` entry; with unknown depths, one stand-in (layers 1 ↔ 1) so that
    the entry's names are still checked."""
    loss = MATCH_LOSSES.get(entry.loss) if entry.loss in MATCH_LOSSES else None
    feature = entry.feature or (loss.feature if loss else None)
    if entry.include_embeddings and feature in ("attention", "attention_inputs"):
        problem(
            path,
            "include_embeddings",
            "uniform",
            f"the embeddings have no attention, so {entry.loss} cannot match layer 0 — remove include_embeddings",
        )
        include_embeddings = False
    else:
        include_embeddings = entry.include_embeddings
    if teacher is None or student is None:
        layer_map = [(1, 1)]
    else:
        layer_map = uniform_layer_map(teacher.depth, student.depth, include_embeddings)
        if feature in ("attention", "attention_inputs"):
            # A student deeper than the teacher maps its first layers to round(…) = 0, which has no
            # attention; the first teacher layer is the nearest that has.
            layer_map = [(s, max(t, 1)) for s, t in layer_map]
    pair = loss is not None and loss.pair
    candidates = []
    for student_layer, teacher_layer in layer_map:
        spec = MatchSpec(
            teacher_layer=(teacher_layer, teacher_layer) if pair else teacher_layer,
            student_layer=(student_layer, student_layer) if pair else student_layer,
            feature=entry.feature,
            loss=entry.loss,
            weight=entry.weight,
            projection=entry.projection,
            relation_heads=entry.relation_heads,
        )
        candidates.append(_Candidate(spec, path, "uniform"))
    return candidates


def _check(
    candidate: _Candidate, teacher: ModelShape | None, student: ModelShape | None, problem: _Problems
) -> ResolvedMatch | None:
    spec, path, origin = candidate.spec, candidate.path, candidate.origin
    count = problem.calls
    if spec.loss not in MATCH_LOSSES:
        problem(path, "loss", origin, MATCH_LOSSES.unknown_message(spec.loss))
        return None
    loss = MATCH_LOSSES.get(spec.loss)
    name = MATCH_LOSSES.canonical(spec.loss)
    feature = spec.feature or loss.feature
    reads = "hidden" if feature == "embedding" else feature
    if reads != loss.feature:
        problem(
            path,
            "feature",
            origin,
            f"{name} reads {_FEATURE_WORDS[loss.feature]}, but feature is {feature!r} — "
            f"set `feature: {loss.feature}`{' (or embedding)' if loss.feature == 'hidden' else ''}, or leave it out",
        )
        return None

    for field, layer in (("teacher_layer", spec.teacher_layer), ("student_layer", spec.student_layer)):
        if loss.pair and not isinstance(layer, tuple):
            problem(path, field, origin, f"{name} relates two layers per side: give a pair such as [{layer}, {layer}]")
        elif not loss.pair and isinstance(layer, tuple):
            problem(
                path,
                field,
                origin,
                f"{name} reads one layer per side: give one index, not the pair {layer_text(layer)}"
                " (pairs are for fsp/gram and nst/mmd)",
            )
        else:
            side = teacher if field == "teacher_layer" else student
            _check_layer(path, field, origin, feature, layer, side, field.split("_")[0], candidate.preset, problem)

    if spec.projection is not None:
        if spec.projection not in PROJECTIONS:
            problem(path, "projection", origin, PROJECTIONS.unknown_message(spec.projection))
        elif reads != "hidden":
            problem(
                path,
                "projection",
                origin,
                f"projections map hidden states; {name} reads {_FEATURE_WORDS[reads]} — remove `projection`",
            )
    if spec.relation_heads is not None and not loss.takes_relation_heads:
        problem(
            path,
            "relation_heads",
            origin,
            f"{name} compares the models' own heads; relation_heads applies to relation_qq / relation_kk / "
            f"relation_vv only — remove it",
        )

    if reads in ("attention", "attention_inputs"):
        for role, side in (("teacher", teacher), ("student", student)):
            if side is not None and not side.supports_attention_capture:
                problem(
                    path,
                    "feature",
                    origin,
                    f"the {role} is a {side.family} model, whose attention cannot be captured — use hidden-state matches for it",
                )
    if teacher is not None and student is not None:
        if loss.needs_equal_width and student.width != teacher.width and spec.projection is None:
            fix = (
                "use a preset written for these widths, or give the entries explicitly with `projection: linear`"
                if candidate.preset is not None
                else "add `projection: linear` (or relu, tanh): brewer sizes it from the models"
            )
            problem(
                path,
                "projection",
                origin,
                f"{name} needs equal widths, but the student's hidden width is {student.width} and the teacher's "
                f"{teacher.width} and no projection is given — {fix}",
            )
        if loss.needs_equal_heads and student.heads != teacher.heads:
            problem(
                path,
                "loss",
                origin,
                f"{name} compares attention heads one by one, but the student has {student.heads} heads and the "
                f"teacher {teacher.heads} — {_PER_HEAD_ALTERNATIVES}",
            )
        if loss.takes_relation_heads:
            heads = spec.relation_heads or teacher.heads
            for role, side in (("student", student), ("teacher", teacher)):
                if side.width % heads:
                    problem(
                        path,
                        "relation_heads",
                        origin,
                        f"{name} splits both widths into {heads} relation heads{'' if spec.relation_heads else ' (the teacher’s head count)'}, "
                        f"but the {role}'s width {side.width} is not divisible by {heads} — set relation_heads to a "
                        f"common divisor of {student.width} and {teacher.width}",
                    )
                    break
    if problem.calls != count:
        return None
    return ResolvedMatch(
        teacher_layer=spec.teacher_layer,
        student_layer=spec.student_layer,
        feature=feature,
        loss=name,
        weight=spec.weight,
        projection=spec.projection,
        relation_heads=spec.relation_heads,
        path=path,
        origin=origin,
    )


def _check_layer(
    path: str,
    field: str,
    origin: str,
    feature: str,
    layer: Layer,
    side: ModelShape | None,
    role: str,
    preset: Preset | None,
    problem: _Problems,
) -> None:
    indices = layer if isinstance(layer, tuple) else (layer,)
    for index in indices:
        if index < 0:
            problem(path, field, origin, f"layer {index} is negative — layers count from 0 (embeddings) to the depth")
            return
        if feature == "embedding" and index != 0:
            problem(
                path,
                field,
                origin,
                f"feature embedding reads hidden_states[0]; its layer must be 0 "
                f"(or left out) — for layer {index} use `feature: hidden`",
            )
            return
        if feature in ("attention", "attention_inputs") and index == 0:
            problem(
                path,
                field,
                origin,
                "layer 0 is the embeddings, which have no attention — attention layers count from 1 (layer i's attention)",
            )
            return
        if side is not None and index > side.depth:
            first = 1 if feature in ("attention", "attention_inputs") else 0
            written = (
                f"; preset {preset.name!r} is written for a {preset.teacher_layers}-layer teacher and a "
                f"{preset.student_layers}-layer student — use `uniform` for other depths"
                if preset is not None
                else ""
            )
            problem(
                path,
                field,
                origin,
                f"layer {index} is beyond the {role}'s {side.depth} layers — valid: {first}"
                f"{' (embeddings)' if first == 0 else ''} to {side.depth}{written}",
            )
            return


def _check_shared_projections(resolved: list[ResolvedMatch], problem: _Problems) -> None:
    """A loss with a shared projection (tinybert_hidden) uses one projection for all its matches,
    so they must agree on its kind."""
    kinds: dict[str, dict[str | None, ResolvedMatch]] = {}
    for match in resolved:
        if match.spec.shared_projection:
            kinds.setdefault(match.loss, {}).setdefault(match.projection, match)
    for loss, by_kind in kinds.items():
        if len(by_kind) > 1:
            named = ", ".join(f"{kind or 'none'} ({match.path})" for kind, match in by_kind.items())
            first = next(iter(by_kind.values()))
            problem(
                first.path,
                "projection",
                first.origin,
                f"{loss} shares one projection across all its matches, but they name different ones: {named} — "
                f"give every {loss} match the same projection",
            )
