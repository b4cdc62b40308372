from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from brewer_cli.errors import RecipeError
from brewer_cli.recipe import Recipe, load_recipe, resolved_mapping
from tests.conftest import distill_recipe, load_shipped, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_valid_recipe_loads_frozen(tmp_path):
    path = write_recipe(tmp_path, distill_recipe("runs/t/final"))
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.distillation.kind == "basic"
    assert recipe.distillation.temperature == 2.0
    assert recipe.path == path
    with pytest.raises(ValidationError):
        recipe.training.epochs = 5  # frozen


def test_json_recipe(tmp_path):
    import json

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(distill_recipe("runs/t/final")))
    assert load_recipe(path).name == "tiny"


def test_overrides_keep_types_and_create_sections(tmp_path):
    path = write_recipe(tmp_path, distill_recipe("runs/t/final"))
    recipe = load_recipe(
        path,
        [
            "training.epochs=7",
            "training.group_by_length=true",
            "name=other",
            "distillation.temperature_schedule.kind=flsw",
            "task.labels=[neg, pos]",
        ],
    )
    assert recipe.training.epochs == 7.0
    assert recipe.training.group_by_length is True
    assert recipe.name == "other"
    assert recipe.distillation.temperature_schedule.kind == "flsw"
    assert recipe.task.labels == ("neg", "pos")


def test_override_without_equals_is_an_error(tmp_path):
    path = write_recipe(tmp_path, distill_recipe("runs/t/final"))
    with pytest.raises(RecipeError) as error:
        load_recipe(path, ["training.epochs"])
    assert "expected DOTTED.PATH=VALUE" in str(error.value)


def test_all_problems_reported_at_once_with_paths_and_suggestions(tmp_path):
    raw = distill_recipe("runs/t/final")
    raw["training"]["learning_rat"] = 1.0
    raw["data"]["max_lenght"] = 12
    raw["distillation"] = {"kind": "basik"}
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    problems = error.value.problems
    assert len(problems) == 3
    assert any(
        p.startswith(f"{path}: training.learning_rat: unknown key (did you mean 'learning_rate'?) — valid: batch_size, ")
        for p in problems
    )
    assert f"{path}: data.max_lenght: unknown key (did you mean 'max_length'?)" in "\n".join(problems)
    assert (
        f"{path}: distillation.kind: unknown distiller kind 'basik' (did you mean 'basic'?) — valid: trainer, basic, general"
        in "\n".join(problems)
    )


def test_literal_choices_are_listed(tmp_path):
    raw = distill_recipe("runs/t/final")
    raw["training"]["precision"] = "fp32"
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert error.value.problems == [f"{path}: training.precision: 'fp32' is not allowed — valid: auto, no, bf16, fp16"]


def test_compile_takes_a_flag_or_a_backend_by_name(tmp_path):
    raw = distill_recipe("runs/t/final")
    raw["training"]["compile"] = "eagre"
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert error.value.problems == [
        f"{path}: training.compile: 'eagre' is not allowed (did you mean 'eager'?) — valid: "
        f"true, false, inductor, aot_eager, eager, cudagraphs"
    ]
    for value, backend in ((False, None), (True, "inductor"), ("aot_eager", "aot_eager")):
        raw["training"]["compile"] = value
        assert load_recipe(write_recipe(tmp_path, raw)).training.compile_backend == backend


def test_malformed_yaml_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: [a\n  b: c\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert error.value.problems == [
        f"{path}:3:4: malformed YAML: expected ',' or ']', but got ':' — fix the syntax at that line and column"
    ]


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert "malformed YAML" in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError) as error:
        load_recipe(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") + ": recipe file not found" in str(error.value)


def test_cross_field_problems(tmp_path):
    raw = distill_recipe("runs/t/final")
    del raw["student"]
    raw["model"] = {"config": {"model_type": "bert"}}
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    text = "\n".join(error.value.problems)
    assert f"{path}: student: distillation needs a student" in text
    assert f"{path}: model: `model` is for kind `trainer`" in text


def test_model_needs_exactly_one_origin(tmp_path):
    raw = distill_recipe("runs/t/final", student={"config": "a.json", "checkpoint": "b"})
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert error.value.problems == [
        f"{path}: student: give exactly one of `checkpoint`, `config` or `init` (found checkpoint, config)"
    ]


def test_teacher_train_needs_final_directory(tmp_path):
    raw = distill_recipe("runs/t/model")
    raw["teacher"]["train"] = {"model": {"config": {"model_type": "bert"}}}
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert "teacher: with `train`, `checkpoint` must be a run's final directory" in str(error.value)


def test_resolved_mapping_round_trips(tmp_path):
    path = write_recipe(tmp_path, distill_recipe("runs/t/final"))
    recipe = load_recipe(path)
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(resolved_mapping(recipe)))
    assert load_recipe(again).model_dump() == recipe.model_dump()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.y*ml")))
def test_every_shipped_recipe_validates(path, monkeypatch):
    from brewer_cli.build import check_names

    monkeypatch.chdir(ROOT)
    recipe = load_shipped(ROOT / path)
    check_names(recipe)
