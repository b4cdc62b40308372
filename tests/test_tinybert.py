"""TinyBERT: general distillation without labels (task masked_lm), staged recipes, kd_weight 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from brewer_cli.build import build_run, check_names
from brewer_cli.commands import distill
from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.recipe import load_recipe, resolved_mapping
from tests.conftest import TINY_BERT, distill_recipe, write_recipe

# Equal head counts: tinybert_attention compares heads one by one.
STUDENT = {**TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 32}
INTERMEDIATE = {
    "kind": "general",
    "kd_weight": 0,
    "matches": [
        {"uniform": True, "loss": "tinybert_attention"},
        {"uniform": True, "loss": "tinybert_hidden", "projection": "linear", "include_embeddings": True},
    ],
}
TRAINING = {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3}


def corpus(path: Path, count: int, seed: int) -> Path:
    from brewer_cli.synthetic import negation_sentiment

    # Blank lines between documents are dropped by the reader.
    path.write_text("\n\n".join(row["text"] for row in negation_sentiment(count, seed)) + "\n")
    return path


def general_recipe(tmp_path: Path, teacher: Path, **changes) -> dict:
    recipe = {
        "name": "general",
        "task": {"kind": "masked_lm"},
        "data": {
            "train": {"path": str(corpus(tmp_path / "corpus.txt", 48, 1))},
            "eval": {"path": str(corpus(tmp_path / "held-out.txt", 16, 2))},
            "max_length": 32,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(STUDENT)},
        "training": dict(TRAINING),
        "distillation": dict(INTERMEDIATE),
    }
    recipe.update(changes)
    return recipe


def test_general_distillation_runs_without_labels(tmp_path, teacher_dir, quiet_console):
    recipe = load_recipe(write_recipe(tmp_path, general_recipe(tmp_path, teacher_dir)))
    run = build_run(recipe, tmp_path / "out")
    assert run.data.label_names is None and "labels" not in run.data.train.columns
    # 48 sentences packed into blocks of max_length 32 (data.packing, the default): all full but the last.
    lengths = run.data.train.lengths()
    assert len(lengths) > 1 and set(lengths[:-1]) == {32} and lengths[-1] <= 32
    # Bare encoders: no head, so no vocabulary (or class) logits are ever computed.
    assert type(run.teacher.model).__name__ == "BertModel" and type(run.student.model).__name__ == "BertModel"
    distiller = run.distiller
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(run.data.train, batch_size=4, collate_fn=run.collate)))
    parts = distiller(batch)
    assert "kd" not in parts and torch.isfinite(parts["loss"]) and parts["loss"] > 0

    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "general"
    assert summary["metric"] == "loss" and summary["teacher"]["metric"] is None
    assert summary["student"]["metric"] == pytest.approx(summary["student"]["metrics"]["intermediate"])
    evaluations = [json.loads(line)["eval"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evaluations and all("loss" in entry and "kd" not in entry for entry in evaluations)

    # A task recipe names the general student; its classification head is built on the encoder.
    task = distill_recipe(teacher_dir, student={"checkpoint": str(run_dir / "final")})
    task_run = build_run(load_recipe(write_recipe(tmp_path, task, "task.yaml")), tmp_path / "out")
    assert type(task_run.student.model).__name__ == "BertForSequenceClassification"
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "final" / "model.safetensors"))
    key = next(name for name in saved if name.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(saved[key], task_run.student.model.bert.embeddings.word_embeddings.weight.detach())


def test_masked_lm_recipe_problems_are_reported_before_loading(tmp_path, teacher_dir):
    raw = general_recipe(tmp_path, teacher_dir, distillation={**INTERMEDIATE, "kd_weight": 1.0, "hard_label_weight": 0.5})
    with pytest.raises(RecipeError) as error:
        check_names(load_recipe(write_recipe(tmp_path, raw)))
    assert "distillation.kd_weight: task masked_lm runs the encoders without their masked-LM head" in str(error.value)
    assert "distillation.hard_label_weight: task masked_lm has no labels" in str(error.value)
    raw = general_recipe(tmp_path, teacher_dir, distillation={"kind": "basic", "kd_weight": 0})
    with pytest.raises(RecipeError, match="use `kind: general` with intermediate matches"):
        check_names(load_recipe(write_recipe(tmp_path, raw)))
    # Importance extraction is accepted: it scores the teacher with its pre-training objective
    # (tests/test_extract_agnostic.py).
    raw = general_recipe(tmp_path, teacher_dir, student={"init": {"extract": {"layers": 1, "strategy": "importance"}}})
    check_names(load_recipe(write_recipe(tmp_path, raw)))


def test_kd_weight_zero_skips_the_logit_loss(tmp_path, teacher_dir):
    raw = distill_recipe(teacher_dir, student={"config": dict(STUDENT)}, distillation=dict(INTERMEDIATE))
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    distiller = run.distiller
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(run.data.train, batch_size=8, collate_fn=run.collate)))
    parts = distiller(batch)
    assert "kd" not in parts
    assert float(parts["loss"].detach()) == pytest.approx(float(parts["intermediate"].detach()))
    assert distiller.describe_losses()[0] == "no logit KD (kd_weight 0)"


def staged_recipe(tmp_path: Path, teacher: Path, mlm: Path) -> dict:
    raw = distill_recipe(teacher, student={"config": dict(STUDENT)}, training=dict(TRAINING))
    del raw["distillation"]
    raw["name"] = "two-stage"
    raw["data"]["train"]["examples"] = 24
    raw["data"]["augment"] = {"model": str(mlm), "variants": 3, "candidates": 4, "output": str(tmp_path / "augmented.jsonl")}
    raw["stages"] = [
        {"name": "intermediate", "training": {"epochs": 1, "learning_rate": 2.0e-3}, "distillation": dict(INTERMEDIATE)},
        {"name": "prediction", "training": {"epochs": 1}, "distillation": {"kind": "basic", "temperature": 1, "kd_loss": "ce"}},
    ]
    return raw


@pytest.fixture
def masked_lm_dir(tmp_path, tokenizer_dir) -> Path:
    from tests.test_augment import save_masked_lm

    return save_masked_lm(tmp_path / "mlm", tokenizer_dir)


def test_two_stage_recipe_runs_on_augmented_data(tmp_path, teacher_dir, masked_lm_dir, quiet_console):
    recipe = load_recipe(write_recipe(tmp_path, staged_recipe(tmp_path, teacher_dir, masked_lm_dir)))
    assert recipe.distillation.kind == "basic"  # the last stage's
    check_names(recipe)
    summary = distill(recipe, tmp_path / "out", console=quiet_console)

    parent = tmp_path / "out" / "two-stage"
    rows = (tmp_path / "augmented.jsonl").read_text().splitlines()
    assert 24 < len(rows) <= 24 * 4
    first, second = parent / "stage-1", parent / "stage-2"
    for directory in (first, second):
        assert (directory / "summary.json").is_file() and (directory / "final" / "config.json").is_file()
        # Each stage trained on the augmented rows: ceil(rows / 16) steps in its one epoch.
        assert json.loads((directory / "summary.json").read_text())["steps"] == -(-len(rows) // 16)
    stage_one, stage_two = (load_recipe(directory / "recipe.yaml") for directory in (first, second))
    assert stage_one.distillation.kind == "general" and stage_one.training.learning_rate == 2.0e-3
    assert stage_two.distillation.kind == "basic" and stage_two.distillation.temperature == 1
    assert Path(stage_two.student.checkpoint) == (first / "final").resolve()
    assert stage_two.data.train.path == str(tmp_path / "augmented.jsonl")
    logged = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert not any("kd" in line for line in logged) and any("intermediate" in line for line in logged)
    assert any("kd" in json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines())

    assert (parent / "final").is_symlink() and (parent / "final").resolve() == (second / "final").resolve()
    written = json.loads((parent / "summary.json").read_text())
    assert [stage["kind"] for stage in written["stages"]] == ["general", "basic"]
    assert (
        written["student"]["metric"]
        == summary["student"]["metric"]
        == json.loads((second / "summary.json").read_text())["student"]["metric"]
    )
    assert load_recipe(parent / "recipe.yaml").stages == recipe.stages

    # Finished stages are skipped on --resume; without it the run directory is protected.
    again = distill(recipe, tmp_path / "out", resume=True, console=quiet_console)
    assert again["student"]["metric"] == summary["student"]["metric"]
    with pytest.raises(BrewerError, match="already holds a finished staged run"):
        distill(recipe, tmp_path / "out", console=quiet_console)


def test_staged_recipe_problems(tmp_path, teacher_dir):
    raw = staged_recipe(tmp_path, teacher_dir, tmp_path / "mlm")
    raw["stages"][0]["training"] = {"epoks": 2}
    raw["stages"][1]["training"] = {"learning_rate": -1}
    raw["stages"][1]["distillation"] = {"kind": "trainer"}
    with pytest.raises(RecipeError) as error:
        load_recipe(write_recipe(tmp_path, raw))
    text = str(error.value)
    assert "stages.0.training.epoks: unknown key (did you mean 'epochs'?)" in text
    assert "stages.1.training.learning_rate: Input should be greater than 0" in text
    assert "stages.1.distillation.kind: a stage distills the recipe's teacher into its student: kind basic or general" in text

    raw = staged_recipe(tmp_path, teacher_dir, tmp_path / "mlm")
    raw["distillation"] = {"kind": "basic"}
    with pytest.raises(RecipeError, match="distillation: with `stages`, each stage names its own distillation"):
        load_recipe(write_recipe(tmp_path, raw))

    raw = staged_recipe(tmp_path, teacher_dir, tmp_path / "mlm")
    raw["stages"][0]["distillation"]["matches"] = ["no_such_preset"]
    with pytest.raises(RecipeError, match=r"stages\.0\.distillation\.matches\.0: unknown match preset 'no_such_preset'"):
        check_names(load_recipe(write_recipe(tmp_path, raw)))

    # The resolved recipe (written to the run directory) loads back to the same recipe.
    recipe = load_recipe(write_recipe(tmp_path, staged_recipe(tmp_path, teacher_dir, tmp_path / "mlm")))
    again = write_recipe(tmp_path, resolved_mapping(recipe), "again.yaml")
    assert load_recipe(again).model_dump() == recipe.model_dump()
    assert "distillation" not in yaml.safe_load(again.read_text())


def test_teacher_is_trained_on_the_original_data(tmp_path, tokenizer_dir):
    from brewer_cli.recipe import teacher_training_recipe

    raw = staged_recipe(tmp_path, tmp_path / "teacher-run" / "final", tmp_path / "mlm")
    raw["teacher"]["train"] = {"model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    teacher_recipe = teacher_training_recipe(recipe)
    assert teacher_recipe.data.augment is None and teacher_recipe.data.train == recipe.data.train


def test_a_recipe_with_no_loss_at_all_is_refused(tmp_path, teacher_dir):
    raw = distill_recipe(teacher_dir, distillation={"kind": "basic", "kd_weight": 0, "hard_label_weight": 0})
    with pytest.raises(RecipeError, match="distillation.kd_weight: with kd_weight 0, hard_label_weight 0 and no matches"):
        check_names(load_recipe(write_recipe(tmp_path, raw)))
