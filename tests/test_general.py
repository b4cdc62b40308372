"""The `general` distiller: intermediate matches on top of basic KD, projections as trained and
checkpointed submodules, validation before any weight is read, and the shipped recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig

from brewer_cli.errors import RecipeError
from brewer_cli.recipe import Recipe, load_recipe
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe

ROOT = Path(__file__).resolve().parents[1]
# hidden 16 against the teacher's 32 (a projection is needed), 2 layers, 2 heads against 4.
# Dropout off: a repeated batch then gives a deterministic loss curve.
TINY_GENERAL_STUDENT = {
    **TINY_BERT,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def general_recipe(
    tmp_path: Path, tokenizer_dir: Path, matches: Any, training: dict[str, Any] | None = None, **distillation: Any
) -> Recipe:
    """A tiny general recipe: a saved 2-layer × 32 teacher, a 2-layer × 16 student, 64 generated examples."""
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        save_tiny_model(teacher, tokenizer_dir)
    raw = distill_recipe(
        teacher,
        student={"config": dict(TINY_GENERAL_STUDENT)},
        distillation={"kind": "general", "temperature": 2.0, "hard_label_weight": 0.5, "matches": matches, **distillation},
    )
    raw["training"].update(training or {})
    return load_recipe(write_recipe(tmp_path, raw))


def one_batch(run, size: int = 8) -> dict[str, torch.Tensor]:
    items = [run.data.train[index] for index in range(size)]
    return run.collate(items)


MIXED = [
    {"uniform": True, "loss": "hidden_mse", "projection": "linear", "include_embeddings": True},
    {"teacher_layer": [2, 2], "student_layer": [2, 2], "loss": "nst"},
    {"teacher_layer": 2, "student_layer": 2, "loss": "attention_mse_sum"},
]


@pytest.fixture
def mixed_run(tmp_path, tokenizer_dir):
    from brewer_cli.build import build_run

    return build_run(general_recipe(tmp_path, tokenizer_dir, MIXED), tmp_path / "runs")


def test_loss_goes_down_on_a_repeated_batch(mixed_run):
    distiller = mixed_run.distiller
    assert distiller.kind == "general"
    batch = one_batch(mixed_run)
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        parts = distiller(batch)
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in parts.items()})
    first, last = history[0], history[-1]
    match_parts = distiller.part_names
    assert len(match_parts) == 5  # 3 uniform hidden_mse (0↔0, 1↔1, 2↔2) + nst + attention_mse_sum
    assert set(match_parts) <= set(first)
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    # KD alone may rise: the random teacher is near uniform while the hard label pulls away from it.
    for name in match_parts + ["intermediate"]:
        assert last[name] < first[name], name
    # The total is KD + weighted hard label + the matches.
    assert first["loss"] == pytest.approx(first["kd"] + 0.5 * first["hard_label"] + first["intermediate"], rel=1e-5)


def test_projections_are_trained_submodules_and_teachers_are_not(mixed_run):
    distiller = mixed_run.distiller
    assert sorted(distiller.projections) == ["match_0", "match_1", "match_2"]
    assert distiller.projections["match_0"].linear.weight.shape == (32, 16)  # student 16 → teacher 32
    names = dict(distiller.named_parameters())
    assert "projections.match_0.linear.weight" in names
    assert "projections.match_0.linear.weight" in distiller.state_dict()
    teacher_parameters = {id(parameter) for parameter in mixed_run.teacher.model.parameters()}
    assert not teacher_parameters & {id(parameter) for parameter in distiller.parameters()}

    distiller(one_batch(mixed_run))["loss"].backward()
    for key, projection in distiller.projections.items():
        assert projection.linear.weight.grad is not None and projection.linear.weight.grad.abs().sum() > 0, key
    assert all(parameter.grad is None for parameter in mixed_run.teacher.model.parameters())


def test_projections_start_from_the_recipe_seed(mixed_run):
    from brewer_cli.build import build_run

    first = mixed_run.distiller.projections["match_1"].linear.weight
    second = build_run(mixed_run.recipe, mixed_run.run_dir.parent).distiller.projections["match_1"].linear.weight
    assert torch.equal(first, second)


def test_tinybert_hidden_shares_one_projection(tmp_path, tokenizer_dir):
    from brewer_cli.build import build_run

    recipe = general_recipe(
        tmp_path,
        tokenizer_dir,
        [{"uniform": True, "loss": "tinybert_hidden", "projection": "linear", "include_embeddings": True}],
    )
    run = build_run(recipe, tmp_path / "runs")
    distiller = run.distiller
    assert list(distiller.projections) == ["tinybert_hidden"]
    assert distiller.projection_keys == ["tinybert_hidden"] * 3
    assert any("projection linear 16→32 (shared)" in line for line in distiller.describe_losses())


def test_general_inherits_schedules_and_probability_shift(tmp_path, tokenizer_dir):
    from brewer_cli.build import build_run

    recipe = general_recipe(
        tmp_path,
        tokenizer_dir,
        MIXED[:1],
        kd_weight_schedule="linear_decay",
        probability_shift=True,
        temperature_schedule={"kind": "flsw", "beta": 1.0, "gamma": 2.0},
    )
    run = build_run(recipe, tmp_path / "runs")
    distiller = run.distiller
    distiller.total_steps = 10
    distiller.current_step = 10  # linear_decay: the KD weight is 0 at the end
    parts = {name: float(value.detach()) for name, value in distiller(one_batch(run)).items()}
    assert parts["kd"] > 0
    assert parts["loss"] == pytest.approx(0.5 * parts["hard_label"] + parts["intermediate"], rel=1e-5)


def test_plan_prints_each_expanded_match(mixed_run):
    from brewer_cli.build import plan_lines

    lines = plan_lines(mixed_run)
    assert "distiller: general" in lines
    assert (
        "  loss: hidden_mse × 1: student hidden 1 ↔ teacher 1, projection linear 16→32 (uniform, distillation.matches.0)" in lines
    )
    assert "  loss: nst × 1: student hidden [2, 2] ↔ teacher [2, 2] (distillation.matches.1)" in lines
    assert "  loss: attention_mse_sum × 1: student attention 2 ↔ teacher 2 (distillation.matches.2)" in lines


# ───────────────────────────────────────── validation before loading ─────────────────────────────────────────


def test_bad_match_fails_before_any_weight_is_read(tmp_path, tokenizer_dir, monkeypatch):
    import brewer_cli.build as build
    import brewer_cli.build.loading as loading

    recipe = general_recipe(
        tmp_path,
        tokenizer_dir,
        [{"teacher_layer": 1, "student_layer": 3, "projection": "linear"}, {"teacher_layer": 1, "student_layer": 1}],
    )

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were read before the matches were checked")

    monkeypatch.setattr(loading, "load_checkpoint", no_loading)
    monkeypatch.setattr(loading, "model_from_config", no_loading)
    with pytest.raises(RecipeError) as error:
        build.build_run(recipe, tmp_path / "runs")
    assert error.value.problems == [
        f"{recipe.path}: distillation.matches.0.student_layer: layer 3 is beyond the student's 2 layers — "
        f"valid: 0 (embeddings) to 2",
        f"{recipe.path}: distillation.matches.1.projection: hidden_mse needs equal widths, but the student's hidden "
        f"width is 16 and the teacher's 32 and no projection is given — add `projection: linear` (or relu, tanh): "
        f"brewer sizes it from the models",
    ]


def test_bad_match_fails_before_the_teacher_is_trained(tmp_path, quiet_console):
    from brewer_cli.commands import distill

    raw = distill_recipe(
        tmp_path / "teacher-run" / "final",
        distillation={"kind": "general", "matches": [{"teacher_layer": 1, "student_layer": 1, "loss": "attention_mse"}]},
    )
    raw["teacher"]["train"] = {"model": {"config": dict(TINY_BERT), "tokenizer": {"train_wordpiece": {"vocab_size": 100}}}}
    raw["student"] = {"config": dict(TINY_GENERAL_STUDENT)}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    with pytest.raises(RecipeError) as error:
        distill(recipe, tmp_path / "runs", console=quiet_console)
    assert (
        "distillation.matches.0.loss: attention_mse compares attention heads one by one, but the student has 2 "
        "heads and the teacher 4" in str(error.value)
    )
    assert not (tmp_path / "teacher-run").exists()


def test_cli_reports_a_bad_match_with_exit_code_2(tmp_path, tokenizer_dir):
    from typer.testing import CliRunner

    from brewer_cli.cli import app

    recipe = general_recipe(tmp_path, tokenizer_dir, [{"teacher_layer": 7, "student_layer": 1, "projection": "linear"}])
    result = CliRunner().invoke(app, ["distill", str(recipe.path), "--dry-run", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "Traceback" not in flat
    assert (
        f"{recipe.path}: distillation.matches.0.teacher_layer: layer 7 is beyond the teacher's 2 layers — "
        f"valid: 0 (embeddings) to 2"
    ) in flat


# ───────────────────────────────────────── resume ─────────────────────────────────────────


def test_resumed_general_run_restores_projections(tmp_path, tokenizer_dir, quiet_console):
    from safetensors.torch import load_file

    from brewer_cli.build import build_run
    from brewer_cli.commands import distill

    recipe = general_recipe(
        tmp_path, tokenizer_dir, MIXED[:1], training={"max_steps": 4, "save_every": 2, "keep_checkpoints": 5, "eval_every": 4}
    )
    runs = tmp_path / "runs"
    distill(recipe, runs, console=quiet_console)
    checkpoints = runs / recipe.name / "checkpoints"
    step_2 = load_file(str(checkpoints / "step-2" / "extra_modules.safetensors"))
    step_4 = load_file(str(checkpoints / "step-4" / "extra_modules.safetensors"))
    assert sorted(step_4) == [f"projections.match_{i}.linear.{p}" for i in range(3) for p in ("bias", "weight")]
    fresh = build_run(recipe, runs).distiller.state_dict()
    # The projections moved during training, so a resume that did not restore them would diverge.
    assert not torch.equal(fresh["projections.match_0.linear.weight"], step_2["projections.match_0.linear.weight"])
    assert not torch.equal(step_2["projections.match_0.linear.weight"], step_4["projections.match_0.linear.weight"])

    # Interrupt after step 2: the newest complete checkpoint is step-2.
    shutil.rmtree(checkpoints / "step-4")
    for leftover in ("final", "best", "summary.json"):
        path = runs / recipe.name / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    summary = distill(recipe, runs, resume=True, console=quiet_console)
    assert summary["steps"] == 4
    resumed = load_file(str(checkpoints / "step-4" / "extra_modules.safetensors"))
    for name, tensor in step_4.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    records = [json.loads(line) for line in (runs / recipe.name / "metrics.jsonl").read_text().splitlines()]
    assert any("resumed_from" in record and record["resumed_from"].endswith("step-2") for record in records)


# ───────────────────────────────────────── shipped recipes ─────────────────────────────────────────

GENERAL_RECIPES = {
    "recipes/quickstart-general.yaml": None,
    "recipes/sst2/bert-base_to_t6-general.yaml": "t6",
    "recipes/sst2/bert-base_to_t3-general.yaml": "t3",
    "recipes/sst2/bert-base_to_t3-small-general.yaml": "t3-small",
    "recipes/sst2/bert-base_to_t4-tiny-general.yaml": "t4-tiny",
}


def _config(path: Path) -> BertConfig:
    settings = json.loads(path.read_text())
    settings.pop("model_type")
    return BertConfig(**settings)


@pytest.mark.parametrize("name", sorted(GENERAL_RECIPES))
def test_shipped_general_recipes_validate(name):
    from brewer_cli.build import check_names
    from brewer_cli.matches import resolve_matches

    recipe = load_recipe(ROOT / name)
    assert recipe.distillation.kind == "general"
    check_names(recipe)
    student = GENERAL_RECIPES[name]
    if student is None:
        teacher_config = _config(ROOT / "configs" / "quickstart" / "teacher.json")
        student_config = _config(ROOT / "configs" / "quickstart" / "student.json")
    else:
        assert recipe.distillation.temperature == 8 and recipe.training.learning_rate == 1.0e-4
        assert recipe.teacher.checkpoint == "textattack/bert-base-uncased-SST-2"
        teacher_config, student_config = BertConfig(), _config(ROOT / "configs" / "students" / f"{student}.json")
    resolved = resolve_matches(recipe, teacher_config, student_config)
    assert {match.loss for match in resolved} == {"hidden_mse", "nst"}


def test_quickstart_general_is_the_quickstart_plus_matches():
    basic = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    general = load_recipe(ROOT / "recipes" / "quickstart-general.yaml")
    for section in ("task", "data", "teacher", "student", "training"):
        assert getattr(basic, section) == getattr(general, section), section
    for setting in ("temperature", "kd_loss", "hard_label_weight"):
        assert getattr(basic.distillation, setting) == getattr(general.distillation, setting)
