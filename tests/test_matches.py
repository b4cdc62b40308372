"""Match presets, the uniform layer map, expansion, and every validation error of `general`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import BertConfig

from brewer_cli.errors import RecipeError
from brewer_cli.matches import PRESETS, resolve_matches, uniform_layer_map
from brewer_cli.recipe import Recipe, validate_recipe
from tests.conftest import distill_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path("recipe.yaml")  # the file name the messages start with

BERT_BASE = BertConfig()  # 12 layers × 768, 12 heads: what the presets are written for
TEXTBREWER_NAMES = {
    "L3_hidden_mse",
    "L3n_hidden_mse",
    "L3_hidden_smmd",
    "L4t_hidden_mse",
    "L4_hidden_smmd",
    "L4t_hidden_sgram",
    "L6_hidden_mse",
    "L6_hidden_smmd",
    "small_hidden_mse",
    "small_hidden_smmd",
    "L3_attention_mse",
    "L3_attention_ce",
    "L3_attention_mse_sum",
    "L3_attention_ce_mean",
    "L4_attention_mse",
    "L4_attention_ce",
    "L4_attention_mse_sum",
    "L4_attention_ce_mean",
}


def bert(layers: int, width: int, heads: int) -> BertConfig:
    return BertConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads, intermediate_size=4 * width)


def student_file(name: str) -> BertConfig:
    settings = json.loads((ROOT / "brewer_cli" / "configs" / "students" / f"{name}.json").read_text())
    settings.pop("model_type")
    return BertConfig(**settings)


def general(matches: Any, **settings: Any) -> Recipe:
    raw = distill_recipe("runs/t/final", distillation={"kind": "general", "matches": matches, **settings})
    return validate_recipe(raw, RECIPE)


def problems_of(matches: Any, teacher: Any = None, student: Any = None) -> list[str]:
    with pytest.raises(RecipeError) as error:
        resolve_matches(general(matches), teacher, student)
    return error.value.problems


def layers(resolved) -> list[tuple[Any, Any]]:
    return [(match.student_layer, match.teacher_layer) for match in resolved]


# ───────────────────────────────────────── presets ─────────────────────────────────────────


def test_presets_are_textbrewers_with_descriptions():
    assert set(PRESETS.names()) == TEXTBREWER_NAMES
    for entry in PRESETS:
        assert entry.description and "\n" not in entry.description
        assert entry.value.teacher_layers == 12


def test_catalog_lists_presets():
    from brewer_cli.catalog import sections

    presets = {title: rows for title, _, rows in sections()}["match presets"]
    names = {name for name, _ in presets}
    assert names == TEXTBREWER_NAMES
    assert all(description for _, description in presets)


def test_l4t_hidden_mse_expands_with_projection_sized_from_the_models():
    resolved = resolve_matches(general("L4t_hidden_mse"), BERT_BASE, student_file("t4-tiny"))
    assert layers(resolved) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert {(match.loss, match.feature, match.projection) for match in resolved} == {("hidden_mse", "hidden", "linear")}
    from brewer_cli.matches import ModelShape

    line = resolved[2].describe(ModelShape.of(student_file("t4-tiny")), ModelShape.of(BERT_BASE))
    assert line == (
        "hidden_mse × 1: student hidden 2 ↔ teacher 6, projection linear 312→768 "
        "(preset 'L4t_hidden_mse' match 2, distillation.matches.0)"
    )


def test_preset_projection_follows_the_models_not_the_yaml():
    # The same preset on other widths: the projection is sized from the models (here 96 → 128).
    from brewer_cli.matches import ModelShape

    teacher, student = bert(12, 128, 4), bert(4, 96, 4)
    resolved = resolve_matches(general("L4t_hidden_mse"), teacher, student)
    assert "projection linear 96→128" in resolved[0].describe(ModelShape.of(student), ModelShape.of(teacher))


def test_smmd_and_sgram_presets_use_layer_pairs():
    resolved = resolve_matches(general("L3_hidden_smmd"), BERT_BASE, student_file("t3-small"))
    assert layers(resolved) == [((0, 0), (0, 0)), ((1, 1), (4, 4)), ((2, 2), (8, 8)), ((3, 3), (12, 12))]
    assert {match.loss for match in resolved} == {"nst"}  # TextBrewer's `mmd`
    gram = resolve_matches(general("L4t_hidden_sgram"), BERT_BASE, student_file("t4-tiny"))
    assert layers(gram)[-1] == ((4, 4), (12, 12)) and {m.loss for m in gram} == {"fsp"}
    assert {m.projection for m in gram} == {"linear"}


def test_attention_presets_start_at_layer_one():
    resolved = resolve_matches(general("L3_attention_mse"), BERT_BASE, student_file("t3"))
    assert layers(resolved) == [(1, 4), (2, 8), (3, 12)]
    assert {match.feature for match in resolved} == {"attention"}
    assert layers(resolve_matches(general("L4_attention_ce_mean"), BERT_BASE, student_file("t4-tiny"))) == [
        (1, 3),
        (2, 6),
        (3, 9),
        (4, 12),
    ]


@pytest.mark.parametrize(
    "preset, student",
    [
        ("L3_hidden_mse", "t3"),
        ("L3n_hidden_mse", "t3-small"),
        ("L3_hidden_smmd", "t3"),
        ("L4t_hidden_mse", "t4-tiny"),
        ("L4_hidden_smmd", "t4-tiny"),
        ("L4t_hidden_sgram", "t4-tiny"),
        ("L6_hidden_mse", "t6"),
        ("L6_hidden_smmd", "t6"),
        ("small_hidden_mse", "t12-nano"),
        ("small_hidden_smmd", "t12-nano"),
        ("L3_attention_mse", "t3"),
        ("L3_attention_ce", "t3-small"),
        ("L3_attention_mse_sum", "t3"),
        ("L3_attention_ce_mean", "t3"),
        ("L4_attention_mse", "t4-tiny"),
        ("L4_attention_ce", "t4-tiny"),
        ("L4_attention_mse_sum", "t4-tiny"),
        ("L4_attention_ce_mean", "t4-tiny"),
    ],
)
def test_every_preset_fits_bert_base_and_its_shipped_student(preset, student):
    assert resolve_matches(general(preset), BERT_BASE, student_file(student))


def test_student_configs():
    expected = {
        "t6": (6, 768, 3072, 12),
        "t3": (3, 768, 3072, 12),
        "t3-small": (3, 384, 1536, 12),
        "t4-tiny": (4, 312, 1200, 12),
        "t12-nano": (12, 256, 1024, 4),
    }
    for name, shape in expected.items():
        config = student_file(name)
        assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads) == shape
        assert config.vocab_size == 30522


# ───────────────────────────────────────── uniform ─────────────────────────────────────────


@pytest.mark.parametrize(
    "teacher, student, embeddings, expected",
    [
        (12, 4, False, [(1, 3), (2, 6), (3, 9), (4, 12)]),
        (12, 6, True, [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]),
        (12, 5, False, [(1, 2), (2, 5), (3, 7), (4, 10), (5, 12)]),  # 2.4, 4.8, 7.2, 9.6, 12
        (4, 2, True, [(0, 0), (1, 2), (2, 4)]),
        (3, 2, False, [(1, 2), (2, 3)]),  # 1.5 rounds up
        (2, 4, False, [(1, 1), (2, 1), (3, 2), (4, 2)]),  # a deeper student: 0.5 rounds up
        (5, 5, False, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]),
    ],
)
def test_uniform_layer_map(teacher, student, embeddings, expected):
    assert uniform_layer_map(teacher, student, embeddings) == expected


def test_uniform_entries_expand_for_any_depth():
    matches = [
        {"uniform": True, "loss": "hidden_mse", "projection": "linear", "include_embeddings": True},
        {"uniform": True, "loss": "mmd"},
        {"uniform": True, "loss": "attention_mse_sum", "weight": 0.5},
    ]
    resolved = resolve_matches(general(matches), bert(6, 64, 4), bert(3, 32, 2))
    assert layers(resolved) == [
        (0, 0),
        (1, 2),
        (2, 4),
        (3, 6),
        ((1, 1), (2, 2)),
        ((2, 2), (4, 4)),
        ((3, 3), (6, 6)),
        (1, 2),
        (2, 4),
        (3, 6),
    ]
    assert [match.feature for match in resolved[-3:]] == ["attention"] * 3
    assert resolved[-1].weight == 0.5 and resolved[-1].origin == "uniform"
    assert resolved[-1].path == "distillation.matches.2"


def test_uniform_attention_never_maps_to_the_embeddings():
    resolved = resolve_matches(general([{"uniform": True, "loss": "attention_mse_sum"}]), bert(2, 32, 4), bert(4, 32, 4))
    assert layers(resolved) == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_matches_as_one_name_or_uniform_string():
    assert general("L4t_hidden_mse").distillation.matches == ("L4t_hidden_mse",)
    assert layers(resolve_matches(general("uniform"), bert(4, 32, 4), bert(2, 32, 4))) == [(1, 2), (2, 4)]


def test_explicit_entries_feature_defaults_and_embedding():
    matches = [
        {"teacher_layer": 2, "student_layer": 1, "loss": "attention_ce_mean"},
        {"feature": "embedding", "loss": "hidden_mse", "projection": "tanh"},
        {"teacher_layer": 1, "student_layer": 1, "loss": "relation_kk", "relation_heads": 8},
    ]
    resolved = resolve_matches(general(matches), bert(2, 64, 4), bert(1, 32, 2))
    assert [match.feature for match in resolved] == ["attention", "embedding", "attention_inputs"]
    assert layers(resolved)[1] == (0, 0)


# ───────────────────────────────────────── validation errors ─────────────────────────────────────────


def test_layer_beyond_the_student_depth():
    matches = [
        {"teacher_layer": 1, "student_layer": 1},
        {"teacher_layer": 2, "student_layer": 2},
        {"teacher_layer": 4, "student_layer": 5},
    ]
    assert problems_of(matches, bert(4, 32, 4), bert(2, 32, 4)) == [
        "recipe.yaml: distillation.matches.2.student_layer: layer 5 is beyond the student's 2 layers — valid: 0 (embeddings) to 2"
    ]


def test_layer_beyond_the_teacher_depth_in_a_preset():
    problems = problems_of("L4t_hidden_mse", bert(4, 128, 4), bert(4, 96, 4))
    assert problems[0] == (
        "recipe.yaml: distillation.matches.0.teacher_layer: preset 'L4t_hidden_mse' match 2: layer 6 is beyond the "
        "teacher's 4 layers — valid: 0 (embeddings) to 4; preset 'L4t_hidden_mse' is written for a 12-layer teacher "
        "and a 4-layer student — use `uniform` for other depths"
    )
    assert len(problems) == 3  # teacher layers 6, 9 and 12


def test_attention_layer_beyond_depth_counts_from_one():
    problems = problems_of([{"teacher_layer": 3, "student_layer": 1, "loss": "attention_mse_sum"}], bert(2, 32, 4), None)
    assert problems == [
        "recipe.yaml: distillation.matches.0.teacher_layer: layer 3 is beyond the teacher's 2 layers — valid: 1 to 2"
    ]


def test_width_mismatch_without_projection():
    problems = problems_of([{"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"}], bert(2, 32, 4), bert(1, 16, 2))
    assert problems == [
        "recipe.yaml: distillation.matches.0.projection: hidden_mse needs equal widths, but the student's hidden width "
        "is 16 and the teacher's 32 and no projection is given — add `projection: linear` (or relu, tanh): brewer "
        "sizes it from the models"
    ]


def test_width_mismatch_in_a_preset_without_projection():
    problems = problems_of("L3_hidden_mse", BERT_BASE, student_file("t3-small"))
    assert problems[0] == (
        "recipe.yaml: distillation.matches.0.projection: preset 'L3_hidden_mse' match 0: hidden_mse needs equal "
        "widths, but the student's hidden width is 384 and the teacher's 768 and no projection is given — use a "
        "preset written for these widths, or give the entries explicitly with `projection: linear`"
    )


def test_per_head_attention_loss_with_different_head_counts():
    problems = problems_of([{"teacher_layer": 2, "student_layer": 1, "loss": "attention_mse"}], bert(2, 32, 4), bert(1, 16, 2))
    assert problems == [
        "recipe.yaml: distillation.matches.0.loss: attention_mse compares attention heads one by one, but the student "
        "has 2 heads and the teacher 4 — use attention_mse_sum or attention_ce_mean (heads summed / averaged first), "
        "or MiniLMv2 relation_qq / relation_kk / relation_vv (re-split relation heads, any head counts)"
    ]
    # The head-agnostic losses pass on the same models.
    resolve_matches(
        general(
            [
                {"teacher_layer": 2, "student_layer": 1, "loss": "attention_mse_sum"},
                {"teacher_layer": 2, "student_layer": 1, "loss": "attention_ce_mean"},
                {"teacher_layer": 2, "student_layer": 1, "loss": "relation_vv"},
            ]
        ),
        bert(2, 32, 4),
        bert(1, 16, 2),
    )


def test_unknown_loss_preset_and_projection_names():
    matches = [
        "L4t_hidden_mes",
        {"teacher_layer": 1, "student_layer": 1, "loss": "hiden_mse"},
        {"teacher_layer": 1, "student_layer": 1, "projection": "linera"},
    ]
    problems = problems_of(matches)
    assert problems[0].startswith(
        "recipe.yaml: distillation.matches.0: unknown match preset 'L4t_hidden_mes' (did you mean 'L4t_hidden_mse'"
    )
    assert "— valid: L3_attention_ce, L3_attention_ce_mean," in problems[0]
    assert problems[1].startswith(
        "recipe.yaml: distillation.matches.1.loss: unknown match loss 'hiden_mse' (did you mean 'hidden_mse'?) — "
        "valid: attention_ce, attention_ce_mean,"
    )
    assert problems[2] == (
        "recipe.yaml: distillation.matches.2.projection: unknown projection 'linera' "
        "(did you mean 'linear'?) — valid: linear, relu, tanh"
    )


def test_unknown_loss_in_uniform_is_reported_once():
    problems = problems_of([{"uniform": True, "loss": "nts"}], bert(4, 32, 4), bert(2, 32, 4))
    assert len(problems) == 1 and problems[0].startswith(
        "recipe.yaml: distillation.matches.0.loss: unknown match loss 'nts' (did you mean 'nst'"
    )


def test_pairs_only_for_pair_losses():
    matches = [
        {"teacher_layer": [1, 1], "student_layer": 1, "loss": "hidden_mse"},
        {"teacher_layer": 2, "student_layer": [1, 1], "loss": "fsp"},
    ]
    assert problems_of(matches) == [
        "recipe.yaml: distillation.matches.0.teacher_layer: hidden_mse reads one layer per side: give one index, not "
        "the pair [1, 1] (pairs are for fsp/gram and nst/mmd)",
        "recipe.yaml: distillation.matches.1.teacher_layer: fsp relates two layers per side: give a pair such as [2, 2]",
    ]


def test_feature_must_fit_the_loss():
    assert problems_of([{"teacher_layer": 1, "student_layer": 1, "feature": "hidden", "loss": "attention_ce"}]) == [
        "recipe.yaml: distillation.matches.0.feature: attention_ce reads attention scores, but feature is 'hidden' — "
        "set `feature: attention`, or leave it out"
    ]
    assert problems_of([{"feature": "embedding", "loss": "attention_mse_sum"}]) == [
        "recipe.yaml: distillation.matches.0.feature: attention_mse_sum reads attention scores, but feature is "
        "'embedding' — set `feature: attention`, or leave it out"
    ]


def test_attention_has_no_layer_zero_and_embedding_is_layer_zero():
    matches = [
        {"teacher_layer": 0, "student_layer": 1, "loss": "attention_mse_sum"},
        {"teacher_layer": 2, "student_layer": 0, "feature": "embedding"},
        {"uniform": True, "loss": "attention_ce_mean", "include_embeddings": True},
    ]
    assert problems_of(matches) == [
        "recipe.yaml: distillation.matches.2.include_embeddings: uniform: the embeddings have no attention, so "
        "attention_ce_mean cannot match layer 0 — remove include_embeddings",
        "recipe.yaml: distillation.matches.0.teacher_layer: layer 0 is the embeddings, which have no attention — "
        "attention layers count from 1 (layer i's attention)",
        "recipe.yaml: distillation.matches.1.teacher_layer: feature embedding reads hidden_states[0]; its layer must "
        "be 0 (or left out) — for layer 2 use `feature: hidden`",
    ]


def test_negative_layer():
    assert problems_of([{"teacher_layer": -1, "student_layer": 1}]) == [
        "recipe.yaml: distillation.matches.0.teacher_layer: layer -1 is negative — layers count from 0 (embeddings) to the depth"
    ]


def test_projection_and_relation_heads_only_where_they_apply():
    matches = [
        {"teacher_layer": 1, "student_layer": 1, "loss": "attention_mse_sum", "projection": "linear"},
        {"teacher_layer": 1, "student_layer": 1, "loss": "hidden_mse", "relation_heads": 4},
    ]
    assert problems_of(matches) == [
        "recipe.yaml: distillation.matches.0.projection: projections map hidden states; attention_mse_sum reads "
        "attention scores — remove `projection`",
        "recipe.yaml: distillation.matches.1.relation_heads: hidden_mse compares the models' own heads; "
        "relation_heads applies to relation_qq / relation_kk / relation_vv only — remove it",
    ]


def test_relation_heads_must_divide_both_widths():
    problems = problems_of(
        [{"teacher_layer": 1, "student_layer": 1, "loss": "relation_qq", "relation_heads": 5}], bert(2, 32, 4), bert(1, 16, 2)
    )
    assert problems == [
        "recipe.yaml: distillation.matches.0.relation_heads: relation_qq splits both widths into 5 relation heads, "
        "but the student's width 16 is not divisible by 5 — set relation_heads to a common divisor of 16 and 32"
    ]


def test_shared_projection_must_be_one_kind():
    matches = [
        {"teacher_layer": 0, "student_layer": 0, "loss": "tinybert_hidden", "projection": "linear"},
        {"teacher_layer": 2, "student_layer": 1, "loss": "tinybert_hidden", "projection": "tanh"},
    ]
    assert problems_of(matches) == [
        "recipe.yaml: distillation.matches.0.projection: tinybert_hidden shares one projection across all its "
        "matches, but they name different ones: linear (distillation.matches.0), tanh (distillation.matches.1) — "
        "give every tinybert_hidden match the same projection"
    ]


def test_every_problem_at_once():
    # Names (a misspelled preset) are the schema's: reported on load, with the recipe's other problems.
    matches = [
        {"teacher_layer": 9, "student_layer": 1},
        {"teacher_layer": 1, "student_layer": 1, "loss": "attention_ce"},
    ]
    problems = problems_of(matches, bert(2, 32, 4), bert(1, 16, 2))
    assert [problem.split(": ")[1] for problem in problems] == [
        "distillation.matches.0.teacher_layer",
        "distillation.matches.0.projection",
        "distillation.matches.1.loss",
    ]


def test_names_are_checked_with_the_other_registry_names():
    # By the schema (brewer_cli.recipe.names), before anything is imported or loaded.
    with pytest.raises(RecipeError) as error:
        general([{"teacher_layer": 1, "student_layer": 1, "loss": "hiden_mse"}], kd_loss="cee")
    fields = [problem.split(": ")[1] for problem in error.value.problems]
    assert fields == ["distillation.kd_loss", "distillation.matches.0.loss"]
