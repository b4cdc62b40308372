"""Match presets (TextBrewer's names, YAML files in configs/matches/) and the uniform layer map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from brewer_cli.errors import BrewerError
from brewer_cli.paths import PACKAGE_CONFIGS
from brewer_cli.recipe import MatchSpec, Strict
from brewer_cli.registry import Registry

PRESET_DIRECTORY = PACKAGE_CONFIGS / "matches"


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
