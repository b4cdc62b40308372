"""Extraction to a budget (`student.init.extract.target`, brewer_cli/extract/budget.py): the chosen
student meets the target, its size figures are the counter's, the choice follows the importance
scores, and bad targets exit 2 with the field named."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.cli import app
from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.extract import ExtractPlan, extract_student
from brewer_cli.extract.budget import WINDOW
from brewer_cli.families import parameter_count
from brewer_cli.recipe import load_recipe
from brewer_cli.recipe.sections import parse_count
from brewer_cli.size_report import analytic_flops
from tests.conftest import distill_recipe, save_tiny_model, write_recipe
from tests.test_extract import FAMILIES, make_batch, tiny_model

runner = CliRunner(env={"COLUMNS": "200"})
# The TINY_BERT teacher of conftest (2 layers × 32 hidden, 4 heads of 8, FFN 64) as a student of itself.
TEACHER_PARAMETERS = 23_586


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("budget") / "teacher", tokenizer_dir)


def budget_recipe(teacher: Path, **extract: Any) -> dict[str, Any]:
    return distill_recipe(teacher, student={"init": {"extract": {"strategy": "importance", "examples": 32, **extract}}})


def scoring_batches() -> list[dict[str, torch.Tensor]]:
    return [make_batch("bert", size=8, seed=seed, labels=True) for seed in range(4)]


def test_parameter_counts_read_k_m_and_g():
    assert parse_count("15M") == 15_000_000
    assert parse_count("800K") == 800_000
    assert parse_count("1.5M") == 1_500_000
    assert parse_count("2g") == 2_000_000_000
    assert parse_count(1200) == 1200
    with pytest.raises(ValueError, match="'15Q' is not a parameter count"):
        parse_count("15Q")
    with pytest.raises(ValueError, match="'1.5' is not a whole number of parameters"):
        parse_count("1.5")


def test_parameters_target_gives_a_valid_student_within_the_budget(tmp_path, teacher):
    run = build_run(load_recipe(write_recipe(tmp_path, budget_recipe(teacher, target={"parameters": "12K"}))), tmp_path / "out")
    model = run.student.model
    assert parameter_count(run.teacher.model) == TEACHER_PARAMETERS
    assert parameter_count(model) <= 12_000
    assert model.config.hidden_size % model.config.num_attention_heads == 0
    budget = run.student.extraction.kept["budget"]
    assert budget["target"] == {"parameters": 12_000, "seq_len": 32}  # FLOPs at the recipe's max_length
    chosen = budget["chosen"]
    # The figures reported are the extracted model's own, as run summaries and size-report count them.
    assert chosen["parameters"] == parameter_count(model)
    assert chosen["flops"] == analytic_flops(model, 32)["total"]
    config = model.config
    assert (chosen["layers"], chosen["hidden"], chosen["heads"], chosen["intermediate"]) == (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
    )
    # Near the budget: within the window of the largest shape that fits.
    assert chosen["parameters"] >= WINDOW * max(entry["parameters"] for entry in [chosen, *budget["alternatives"]])
    assert all(entry["meets_target"] for entry in budget["alternatives"])
    assert 0 < chosen["importance_kept"]["total"] <= 1


@pytest.mark.parametrize("key", ["flops_fewer_by", "latency_fewer_by"])
def test_flops_and_latency_targets_reach_the_factor(key):
    teacher = tiny_model("bert", layers=4)
    result = extract_student(teacher, ExtractPlan(target={key: 4, "seq_len": 16}), batches=scoring_batches())
    assert analytic_flops(teacher, 16)["total"] / analytic_flops(result.model, 16)["total"] >= 4
    budget = result.kept["budget"]
    assert budget["measure"] == "flops" and budget["chosen"]["flops_fewer_by"] >= 4
    assert "per FLOP" in budget["rule"]
    assert ("latency" in budget) == (key == "latency_fewer_by")


def test_size_of_matches_the_named_configs_parameters(tmp_path, teacher):
    # The student conftest's recipes extract (1 layer × 16, 2 heads, FFN 32) has 5,218 parameters.
    named = {"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    (tmp_path / "small.json").write_text(json.dumps({**named, "vocab_size": 30522}))
    path = write_recipe(tmp_path, budget_recipe(teacher, target={"size_of": "small.json"}))
    run = build_run(load_recipe(path), tmp_path / "out")
    budget = run.student.extraction.kept["budget"]
    # Counted with the teacher's vocabulary, positions and head, as `student.config` would build it.
    assert budget["size_of_parameters"] == 5218
    assert 0.9 * 5218 <= parameter_count(run.student.model) <= 5218


def teacher_with_importance_in(layers: list[int]):
    """A 4-layer teacher whose other layers add nothing: their attention output and FFN output
    weights are zero, so every head and neuron there has a zero Taylor score."""
    model = tiny_model("bert", layers=4)
    with torch.no_grad():
        for number, layer in enumerate(model.bert.encoder.layer, start=1):
            if number not in layers:
                layer.attention.output.dense.weight.zero_()
                layer.output.dense.weight.zero_()
    return model


def test_the_choice_keeps_the_layers_that_hold_the_importance():
    full = parameter_count(tiny_model("bert", layers=4))
    chosen = {}
    for important in (1, 4):
        result = extract_student(
            teacher_with_importance_in([important]), ExtractPlan(target={"parameters": full // 2}), batches=scoring_batches()
        )
        chosen[important] = result.kept["budget"]["chosen"]
        assert important in result.kept["layers"]
        assert chosen[important]["importance_kept"]["layers"] == 1.0
    # Uniform selection keeps the last layer at any depth, the first only from 3 of 4 layers on:
    # importance in the last layer buys width with fewer layers, importance in the first costs depth.
    assert chosen[4]["layers"] < chosen[1]["layers"] == 3
    assert chosen[4]["hidden"] > chosen[1]["hidden"]


def test_spread_importance_keeps_every_layer_and_beats_the_uniform_shape():
    teacher = tiny_model("bert", layers=4)
    result = extract_student(teacher, ExtractPlan(target={"parameters": 20_000}), batches=scoring_batches())
    budget = result.kept["budget"]
    assert budget["chosen"]["layers"] == 4
    uniform = budget["uniform"]
    assert uniform["heads"] == 4 and uniform["parameters"] <= 20_000
    assert budget["chosen"]["importance_kept"]["total"] > uniform["importance_kept"]["total"]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_strategy_takes_the_uniform_shape_and_its_figures_are_the_counters(family):
    teacher = tiny_model(family, layers=4)
    budget_parameters = int(parameter_count(teacher) * 0.6)
    result = extract_student(teacher, ExtractPlan(strategy="random", target={"parameters": budget_parameters}))
    budget = result.kept["budget"]
    chosen = budget["chosen"]
    assert budget["rule"].startswith("the uniform shape (strategy random has no importance scores)")
    assert chosen["heads"] == 4 and chosen["importance_kept"] is None
    assert chosen["parameters"] == parameter_count(result.model) <= budget_parameters
    assert chosen["flops"] == analytic_flops(result.model, 128)["total"]
    # The next larger uniform shape is listed and misses the target.
    assert not budget["alternatives"][0]["meets_target"]
    assert budget["alternatives"][0]["head_dim"] > chosen["head_dim"]


def test_extract_command_prints_the_choice_and_writes_it(tmp_path, teacher):
    path = write_recipe(tmp_path, budget_recipe(teacher, target={"parameters": "12K"}))
    output = tmp_path / "extracted"
    result = runner.invoke(app, ["extract", str(path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    written = json.loads((output / "extraction.json").read_text())
    budget = written["kept"]["budget"]
    chosen = budget["chosen"]
    for text in (
        "target:       parameters ≤ 12,000",
        "choice:       the most importance kept per parameter among the shapes within the target",
        f"chosen:       {chosen['layers']} layer",
        f"size:         {chosen['parameters']:,} parameters ({chosen['parameters'] / TEACHER_PARAMETERS:.1%} of the teacher's "
        f"{TEACHER_PARAMETERS:,})",
        f"FLOPs at 32 tokens ({chosen['flops_fewer_by']:.2f}× fewer than the teacher's",
        f"{chosen['parameters'] / 12_000:.1%} of the target's parameters",
        f"importance kept (share of the teacher's): total {chosen['importance_kept']['total']:.1%} — hidden ",
        f"alternatives ({budget['meeting_target']:,} shapes meet the target, of {budget['candidates']:,} considered):",
        "uniform shape: ",
    ):
        assert text in result.output, text
    assert written["kept"]["hidden"] == chosen["hidden"]


def run_cli(tmp_path: Path, recipe: dict[str, Any]) -> tuple[Path, Any]:
    path = write_recipe(tmp_path, recipe)
    return path, runner.invoke(app, ["extract", str(path), "--output", str(tmp_path / "x")])


def test_two_target_keys_exit_2(tmp_path, teacher):
    path, result = run_cli(tmp_path, budget_recipe(teacher, target={"parameters": "10K", "flops_fewer_by": 2}))
    assert result.exit_code == 2, result.output
    assert (
        f"{path}: student.init.extract.target: give exactly one of parameters, flops_fewer_by, latency_fewer_by, "
        f"size_of (found parameters, flops_fewer_by)"
    ) in result.output


def test_target_with_explicit_sizes_exits_2_naming_them(tmp_path, teacher):
    path, result = run_cli(tmp_path, budget_recipe(teacher, target={"parameters": "10K"}, layers=1, hidden=16))
    assert result.exit_code == 2, result.output
    assert (
        f"{path}: student.init.extract: `target` chooses layers, hidden, heads, head_dim and intermediate itself, so it "
        f"cannot be combined with layers, hidden — remove layers, hidden to extract to the target, or remove `target` "
        f"to keep your sizes"
    ) in result.output


def test_unreachable_target_exits_2_with_the_smallest_student(tmp_path, teacher):
    path, result = run_cli(tmp_path, budget_recipe(teacher, target={"parameters": 100}))
    assert result.exit_code == 2, result.output
    assert f"{path}: student.init.extract.target.parameters: no student meets 100 parameters — the smallest student " in (
        result.output
    )
    assert "is 1 layer × 1 hidden (1 head × 1), FFN 2 with " in result.output
    assert "raise parameters to at least " in result.output
    assert "Traceback" not in result.output


def test_unreachable_flops_factor_names_one_that_is_reachable():
    teacher = tiny_model("bert", layers=4)
    with pytest.raises(BrewerError) as error:
        extract_student(teacher, ExtractPlan(target={"flops_fewer_by": 10_000, "seq_len": 16}), batches=scoring_batches())
    message = str(error.value)
    assert message.startswith(
        "student.init.extract.target.flops_fewer_by: no student meets 10000× fewer FLOPs than the teacher (at most "
    )
    reachable = float(re.search(r"lower flops_fewer_by to at most ([\d.]+)", message).group(1))
    # The advice works: the factor it names is met.
    result = extract_student(teacher, ExtractPlan(target={"flops_fewer_by": reachable, "seq_len": 16}), batches=scoring_batches())
    assert result.kept["budget"]["chosen"]["flops_fewer_by"] >= reachable


def test_random_strategy_below_the_smallest_uniform_shape_says_so():
    with pytest.raises(BrewerError) as error:
        extract_student(tiny_model("bert", layers=4), ExtractPlan(strategy="random", target={"parameters": 300}))
    message = str(error.value)
    assert "the smallest uniform shape (strategy random keeps the teacher's head count) is 1 layer × 4 hidden (4 heads × 1)" in (
        message
    )
    assert message.endswith(", or use strategy: importance, which may also cut heads")


def test_rounds_shrink_to_the_chosen_shape():
    teacher = tiny_model("bert", layers=4)
    result = extract_student(teacher, ExtractPlan(target={"parameters": 20_000}, rounds=2), batches=scoring_batches())
    chosen = result.kept["budget"]["chosen"]
    assert parameter_count(result.model) == chosen["parameters"] <= 20_000
    assert result.model.config.hidden_size == chosen["hidden"]


def test_bad_parameter_count_exits_2(tmp_path, teacher):
    path, result = run_cli(tmp_path, budget_recipe(teacher, target={"parameters": "15Q"}))
    assert result.exit_code == 2, result.output
    assert (
        f"{path}: student.init.extract.target.parameters: '15Q' is not a parameter count — give an integer or a number "
        f"with K, M or G (e.g. 15M, 800K)"
    ) in result.output


def test_activation_hidden_scoring_cannot_choose_a_shape(tmp_path, teacher):
    path = write_recipe(tmp_path, budget_recipe(teacher, target={"parameters": "10K"}, hidden_scoring="activation"))
    with pytest.raises(RecipeError) as error:
        build_run(load_recipe(path), tmp_path / "out")
    assert f"{path}: student.init.extract.hidden_scoring: 'activation' cannot choose a shape for a target" in str(error.value)


def test_missing_size_of_config_names_the_field(tmp_path, teacher):
    path, result = run_cli(tmp_path, budget_recipe(teacher, target={"size_of": "configs/students/nope.json"}))
    assert result.exit_code == 2, result.output
    assert f"{path}: student.init.extract.target.size_of: config file 'configs/students/nope.json' not found" in result.output


def test_library_plan_refuses_a_target_with_sizes():
    with pytest.raises(BrewerError, match=r"student.init.extract.target: the target chooses layers, hidden, heads"):
        ExtractPlan(target={"parameters": 1000}, hidden=16)
