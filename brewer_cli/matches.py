"""Intermediate-layer matches (DESIGN §5): presets, the uniform layer map, expansion and validation.

`distillation.matches` holds explicit entries, preset names (YAML files in `configs/matches/`) and
`uniform` generators. `resolve_matches` turns them into one flat list of `ResolvedMatch` and checks
every entry — first by name alone (before any model is read), then against the models' depths,
widths and head counts (as soon as their configs are known, before any weight is read where the
checkpoint is local, and always before step 1).

Layer numbering is the hidden_states index: 0 is the embedding output, i is layer i. An attention
feature i is the attention of layer i, so it exists for 1 … depth only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from transformers import AutoConfig

from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.families import FAMILIES, family_for
from brewer_cli.losses import MATCH_LOSSES, MatchLoss
from brewer_cli.models import read_config_spec
from brewer_cli.paths import PACKAGE_CONFIGS, resolve_path
from brewer_cli.projections import PROJECTIONS
from brewer_cli.recipe import MatchSpec, Recipe, Strict, UniformMatches
from brewer_cli.registry import Registry

PRESET_DIRECTORY = PACKAGE_CONFIGS / "matches"

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


# ============================================================================= presets


class PresetFile(Strict):
    """The schema of one preset file in configs/matches/."""

    description: str
    teacher_layers: int
    student_layers: int
    matches: tuple[MatchSpec, ...]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # The depths the layer map was written for (TextBrewer's presets assume a 12-layer teacher).
    teacher_layers: int
    student_layers: int
    matches: tuple[MatchSpec, ...]
    path: Path


def _load_presets(directory: Path) -> Registry[Preset]:
    registry: Registry[Preset] = Registry("match preset")
    for path in sorted(directory.glob("*.yaml")):
        try:
            content = PresetFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as error:
            # A broken shipped file is a packaging problem; say which file and why.
            raise BrewerError(f"{path}: not a valid match preset: {error} — fix or remove the file") from None
        registry.add(
            path.stem,
            Preset(path.stem, content.description, content.teacher_layers, content.student_layers, content.matches, path),
            content.description,
        )
    return registry


PRESETS: Registry[Preset] = _load_presets(PRESET_DIRECTORY)


# ============================================================================= uniform layer map


def uniform_layer_map(teacher_depth: int, student_depth: int, include_embeddings: bool = False) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs: student layer j ↔ teacher layer round(j·N/M), j = 1 … M,
    rounding halves up; with `include_embeddings` the embeddings (0 ↔ 0) come first.

    Works for any depths: a deeper student maps several of its layers to one teacher layer.
    """
    if teacher_depth < 1 or student_depth < 1:
        raise ValueError(f"depths must be positive, got teacher {teacher_depth}, student {student_depth}")
    pairs = [(0, 0)] if include_embeddings else []
    for student_layer in range(1, student_depth + 1):
        # round(j·N/M) with halves up, in integers: ⌊(2jN + M) / 2M⌋.
        pairs.append((student_layer, (2 * student_layer * teacher_depth + student_depth) // (2 * student_depth)))
    return pairs


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
    def of(cls, config: Any) -> "ModelShape":
        family = family_for(config)
        return cls(family.depth(config), family.width(config), family.heads(config), family.name,
                   family.supports_attention_capture)


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
        return (f"{self.loss} × {self.weight:g}: student {self.feature} {layer_text(self.student_layer)} ↔ "
                f"teacher {layer_text(self.teacher_layer)}{projection}{heads} ({where})")


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
                problem(path, None, "", PRESETS.unknown_message(entry) + " — or give the entry explicitly "
                        "({teacher_layer, student_layer, loss, …}) or `uniform`")
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


def _uniform_candidates(entry: UniformMatches, path: str, teacher: ModelShape | None, student: ModelShape | None,
                        problem: _Problems) -> list[_Candidate]:
    """Candidates for a `uniform` entry; with unknown depths, one stand-in (layers 1 ↔ 1) so that
    the entry's names are still checked."""
    loss = MATCH_LOSSES.get(entry.loss) if entry.loss in MATCH_LOSSES else None
    feature = entry.feature or (loss.feature if loss else None)
    if entry.include_embeddings and feature in ("attention", "attention_inputs"):
        problem(path, "include_embeddings", "uniform",
                f"the embeddings have no attention, so {entry.loss} cannot match layer 0 — remove include_embeddings")
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
            feature=entry.feature, loss=entry.loss, weight=entry.weight, projection=entry.projection,
            relation_heads=entry.relation_heads,
        )
        candidates.append(_Candidate(spec, path, "uniform"))
    return candidates


def _check(candidate: _Candidate, teacher: ModelShape | None, student: ModelShape | None, problem: _Problems) -> ResolvedMatch | None:
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
        problem(path, "feature", origin,
                f"{name} reads {_FEATURE_WORDS[loss.feature]}, but feature is {feature!r} — "
                f"set `feature: {loss.feature}`{' (or embedding)' if loss.feature == 'hidden' else ''}, or leave it out")
        return None

    for field, layer in (("teacher_layer", spec.teacher_layer), ("student_layer", spec.student_layer)):
        if loss.pair and not isinstance(layer, tuple):
            problem(path, field, origin, f"{name} relates two layers per side: give a pair such as [{layer}, {layer}]")
        elif not loss.pair and isinstance(layer, tuple):
            problem(path, field, origin, f"{name} reads one layer per side: give one index, not the pair {layer_text(layer)}"
                    " (pairs are for fsp/gram and nst/mmd)")
        else:
            side = teacher if field == "teacher_layer" else student
            _check_layer(path, field, origin, feature, layer, side, field.split("_")[0], candidate.preset, problem)

    if spec.projection is not None:
        if spec.projection not in PROJECTIONS:
            problem(path, "projection", origin, PROJECTIONS.unknown_message(spec.projection))
        elif reads != "hidden":
            problem(path, "projection", origin,
                    f"projections map hidden states; {name} reads {_FEATURE_WORDS[reads]} — remove `projection`")
    if spec.relation_heads is not None and not loss.takes_relation_heads:
        problem(path, "relation_heads", origin,
                f"{name} compares the models' own heads; relation_heads applies to relation_qq / relation_kk / "
                f"relation_vv only — remove it")

    if reads in ("attention", "attention_inputs"):
        for role, side in (("teacher", teacher), ("student", student)):
            if side is not None and not side.supports_attention_capture:
                problem(path, "feature", origin,
                        f"the {role} is a {side.family} model, whose attention cannot be captured — "
                        f"use hidden-state matches for it")
    if teacher is not None and student is not None:
        if loss.needs_equal_width and student.width != teacher.width and spec.projection is None:
            fix = ("use a preset written for these widths, or give the entries explicitly with `projection: linear`"
                   if candidate.preset is not None else
                   "add `projection: linear` (or relu, tanh): brewer sizes it from the models")
            problem(path, "projection", origin,
                    f"{name} needs equal widths, but the student's hidden width is {student.width} and the teacher's "
                    f"{teacher.width} and no projection is given — {fix}")
        if loss.needs_equal_heads and student.heads != teacher.heads:
            problem(path, "loss", origin,
                    f"{name} compares attention heads one by one, but the student has {student.heads} heads and the "
                    f"teacher {teacher.heads} — {_PER_HEAD_ALTERNATIVES}")
        if loss.takes_relation_heads:
            heads = spec.relation_heads or teacher.heads
            for role, side in (("student", student), ("teacher", teacher)):
                if side.width % heads:
                    problem(path, "relation_heads", origin,
                            f"{name} splits both widths into {heads} relation heads{'' if spec.relation_heads else ' (the teacher’s head count)'}, "
                            f"but the {role}'s width {side.width} is not divisible by {heads} — set relation_heads to a "
                            f"common divisor of {student.width} and {teacher.width}")
                    break
    if problem.calls != count:
        return None
    return ResolvedMatch(
        teacher_layer=spec.teacher_layer, student_layer=spec.student_layer, feature=feature, loss=name,
        weight=spec.weight, projection=spec.projection, relation_heads=spec.relation_heads, path=path, origin=origin,
    )


def _check_layer(path: str, field: str, origin: str, feature: str, layer: Layer, side: ModelShape | None, role: str,
                 preset: Preset | None, problem: _Problems) -> None:
    indices = layer if isinstance(layer, tuple) else (layer,)
    for index in indices:
        if index < 0:
            problem(path, field, origin, f"layer {index} is negative — layers count from 0 (embeddings) to the depth")
            return
        if feature == "embedding" and index != 0:
            problem(path, field, origin, f"feature embedding reads hidden_states[0]; its layer must be 0 "
                    f"(or left out) — for layer {index} use `feature: hidden`")
            return
        if feature in ("attention", "attention_inputs") and index == 0:
            problem(path, field, origin, "layer 0 is the embeddings, which have no attention — attention layers "
                    "count from 1 (layer i's attention)")
            return
        if side is not None and index > side.depth:
            first = 1 if feature in ("attention", "attention_inputs") else 0
            written = (f"; preset {preset.name!r} is written for a {preset.teacher_layers}-layer teacher and a "
                       f"{preset.student_layers}-layer student — use `uniform` for other depths"
                       if preset is not None else "")
            problem(path, field, origin,
                    f"layer {index} is beyond the {role}'s {side.depth} layers — valid: {first}"
                    f"{' (embeddings)' if first == 0 else ''} to {side.depth}{written}")
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
            problem(first.path, "projection", first.origin,
                    f"{loss} shares one projection across all its matches, but they name different ones: {named} — "
                    f"give every {loss} match the same projection")


# ============================================================================= before loading


def configs_before_loading(recipe: Recipe) -> tuple[Any, Any]:
    """The teacher's and student's configs where they can be read without loading weights: a local
    checkpoint's config.json, or a student `config`. Hub checkpoints are left to the check after
    loading (a config download that fails offline would only repeat the loader's own error), as is
    an extracted student (its sizes exist only after extraction)."""
    def local(value: str | None) -> Any:
        if value is None:
            return None
        directory = resolve_path(value, recipe)
        if not (directory / "config.json").is_file():
            return None
        try:
            return AutoConfig.from_pretrained(str(directory))
        except Exception:
            return None  # the loader reports an unreadable checkpoint in its own words

    def from_spec(value: str | dict[str, Any] | None, field: str) -> Any:
        if value is None:
            return None
        try:
            settings = read_config_spec(value, recipe, field)
            model_type = settings.pop("model_type", None)
            settings.pop("architectures", None)
            settings.pop("transformers_version", None)
            return AutoConfig.for_model(model_type, **settings) if model_type else None
        except Exception:
            return None  # model_from_config reports a bad config with its own message

    teacher_config = None
    if recipe.teacher is not None:
        teacher_config = local(recipe.teacher.checkpoint)
        if teacher_config is None and recipe.teacher.train is not None:
            # A teacher still to be trained: its config says its shape before hours of training.
            teacher_config = from_spec(recipe.teacher.train.model.config, "teacher.train.model.config")
    student_config = None
    if recipe.student is not None:
        if recipe.student.checkpoint is not None:
            student_config = local(recipe.student.checkpoint)
        else:
            student_config = from_spec(recipe.student.config, "student.config")
    return teacher_config, student_config


def validate_before_loading(recipe: Recipe) -> None:
    """Check the matches against whatever configs are readable before any weight is loaded."""
    teacher_config, student_config = configs_before_loading(recipe)
    known = {model_type for entry in FAMILIES for model_type in entry.value.model_types}
    # An unknown model_type is the loader's error to report (with the list of families).
    teacher_config = teacher_config if getattr(teacher_config, "model_type", None) in known else None
    student_config = student_config if getattr(student_config, "model_type", None) in known else None
    resolve_matches(recipe, teacher_config, student_config)
