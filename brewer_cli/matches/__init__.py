"""Intermediate-layer matches (DESIGN §5): presets, the uniform layer map, expansion and validation.

`distillation.matches` holds explicit entries, preset names (YAML files in `configs/matches/`) and
`uniform` generators. `resolve_matches` turns them into one flat list of `ResolvedMatch` and checks
every entry — first by name alone (before any model is read), then against the models' depths,
widths and head counts (as soon as their configs are known, before any weight is read where the
checkpoint is local, and always before step 1).

Layer numbering is the hidden_states index: 0 is the embedding output, i is layer i. An attention
feature i is the attention of layer i, so it exists for 1 … depth only.
"""

from brewer_cli.matches.before_loading import configs_before_loading, validate_before_loading
from brewer_cli.matches.presets import PRESET_DIRECTORY, PRESETS, Preset, uniform_layer_map
from brewer_cli.matches.resolve import ModelShape, ResolvedMatch, layer_text, match_problems, resolve_matches

__all__ = [
    "PRESETS",
    "PRESET_DIRECTORY",
    "ModelShape",
    "Preset",
    "ResolvedMatch",
    "configs_before_loading",
    "layer_text",
    "match_problems",
    "resolve_matches",
    "uniform_layer_map",
    "validate_before_loading",
]
