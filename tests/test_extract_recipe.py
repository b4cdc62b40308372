"""ETD through the recipe path: `student.init.extract` in build_run, `distill --dry-run`,
`brewer extract`, errors that name the recipe field and file, and a distill run with an extracted
student. The library itself (identity, scoring, shapes per family) is tested in test_extract.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.cli import app
from brewer_cli.commands import distill
from brewer_cli.errors import RecipeError
from brewer_cli.recipe import load_recipe
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe

# The tiny teacher (TINY_BERT) has 2 layers × 32 hidden, 4 heads of 8, 64 FFN neurons.
EXTRACT = {"layers": 1, "hidden": 16, "heads": 2, "intermediate": 32, "strategy": "importance", "examples": 32}

# Wide enough that rich does not wrap the plan lines the assertions read.
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir) -> Path:
    # One teacher for the module: every test reads it, none writes it.
    return save_tiny_model(tmp_path_factory.mktemp("etd") / "teacher", tokenizer_dir)


def extract_recipe(teacher: Path, **extract: Any) -> dict[str, Any]:
    return distill_recipe(teacher, student={"init": {"extract": {**EXTRACT, **extract}}})


def test_build_run_extracts_a_student_of_the_recipe_sizes_from_teacher_slices(tmp_path, teacher):
    run = build_run(load_recipe(write_recipe(tmp_path, extract_recipe(teacher))), tmp_path / "out")
    config = run.student.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (1, 16, 2, 32)
    assert config.id2label == {0: "negative", 1: "positive"}
    kept = run.student.extraction.kept
    assert kept["layers"] == [2]  # uniform: the last of 2 layers
    assert kept["strategy"] == "importance"
    assert run.student.extraction.importance_summary["examples"] == 32  # the recipe's `examples`
    assert run.student.model.training  # ready to be trained

    student = dict(run.student.model.named_parameters())
    source = dict(run.teacher.model.named_parameters())
    hidden = torch.tensor(kept["hidden_indices"])
    assert hidden.numel() == 16
    head_dim = TINY_BERT["hidden_size"] // TINY_BERT["num_attention_heads"]
    # Same head size as the teacher: the kept heads' neurons, whole, in the teacher's order.
    heads = torch.cat([torch.arange(head * head_dim, (head + 1) * head_dim) for head in kept["heads"][0]])
    teacher_layer = f"bert.encoder.layer.{kept['layers'][0] - 1}."
    student_layer = "bert.encoder.layer.0."

    def same(student_name: str, expected: torch.Tensor) -> None:
        assert torch.equal(student[student_name].detach(), expected.detach()), student_name

    same("bert.embeddings.word_embeddings.weight", source["bert.embeddings.word_embeddings.weight"][:, hidden])
    same("bert.embeddings.LayerNorm.weight", source["bert.embeddings.LayerNorm.weight"][hidden])
    for projection in ("query", "key", "value"):
        name = f"attention.self.{projection}.weight"
        same(student_layer + name, source[teacher_layer + name][heads][:, hidden])
    same(
        student_layer + "attention.output.dense.weight", source[teacher_layer + "attention.output.dense.weight"][hidden][:, heads]
    )
    same(student_layer + "output.LayerNorm.bias", source[teacher_layer + "output.LayerNorm.bias"][hidden])
    # The FFN subset is not listed in `kept` (only its size): each student neuron must be one
    # teacher neuron, in increasing teacher order.
    teacher_rows = source[teacher_layer + "intermediate.dense.weight"][:, hidden]
    matches = [
        next(index for index in range(teacher_rows.shape[0]) if torch.equal(row, teacher_rows[index]))
        for row in student[student_layer + "intermediate.dense.weight"].detach()
    ]
    assert matches == sorted(set(matches)) and len(matches) == 32
    same(student_layer + "output.dense.weight", source[teacher_layer + "output.dense.weight"][hidden][:, matches])
    same("bert.pooler.dense.weight", source["bert.pooler.dense.weight"][hidden][:, hidden])
    same("classifier.weight", source["classifier.weight"][:, hidden])
    same("classifier.bias", source["classifier.bias"])


def test_dry_run_prints_what_extraction_kept(tmp_path, teacher):
    path = write_recipe(tmp_path, extract_recipe(teacher))
    result = runner.invoke(app, ["distill", str(path), "--dry-run", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for text in (
        "student: bert from the teacher's weights (ETD extraction, importance) — 5,218 parameters, 1 layers × 16",
        "Extracted BertForSequenceClassification student (importance, seed 0)",
        "layers:       1 of 2 — teacher layers 2 (uniform)",
        "hidden:       16 of 32 channels",
        "attention:    2 heads × 8 (teacher 4 × 8)",
        "intermediate: 32 of 64 FFN neurons per layer",
        "importance:   task loss, 32 examples",
        "retained importance: hidden ",
    ):
        assert text in result.output, text
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_extract_command_writes_a_loadable_model_and_extraction_json(tmp_path, teacher):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = write_recipe(tmp_path, extract_recipe(teacher))
    output = tmp_path / "extracted"
    result = runner.invoke(app, ["extract", str(path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "16 of 32 channels" in result.output

    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert (
        model.config.num_hidden_layers,
        model.config.hidden_size,
        model.config.num_attention_heads,
        model.config.intermediate_size,
    ) == (1, 16, 2, 32)
    tokenizer = AutoTokenizer.from_pretrained(output)
    inputs = tokenizer(["the movie was not good"], return_tensors="pt")
    # Importance extraction is deterministic: the written model is the one build_run extracts.
    built = build_run(load_recipe(path), tmp_path / "out").student.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, built(**inputs).logits)

    written = json.loads((output / "extraction.json").read_text())
    assert written["kept"]["layers"] == [2]
    assert written["kept"]["hidden"] == 16 and len(written["kept"]["hidden_indices"]) == 16
    assert written["importance"]["examples"] == 32

    again = runner.invoke(app, ["extract", str(path), "--output", str(output)])
    assert again.exit_code == 2 and "already exists" in again.output
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    onto_file = runner.invoke(app, ["extract", str(path), "--output", str(a_file)])
    assert onto_file.exit_code == 2 and "already exists" in onto_file.output


@pytest.mark.parametrize("command", ["distill", "extract"])
def test_size_above_the_teachers_exits_2_naming_the_field_and_file(tmp_path, teacher, command):
    raw = extract_recipe(teacher, hidden=64)
    del raw["student"]["init"]["extract"]["heads"]  # heads follow the teacher's head size
    path = write_recipe(tmp_path, raw)
    arguments = [command, str(path)] + (["--dry-run"] if command == "distill" else ["--output", str(tmp_path / "x")])
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert f"{path}: student.init.extract.hidden: 64 is larger than the teacher's hidden size (32)" in result.output
    assert "Traceback" not in result.output


def test_malformed_extract_plan_fails_before_a_missing_teacher_is_trained(tmp_path, tokenizer_dir, quiet_console):
    raw = extract_recipe(tmp_path / "runs" / "teacher" / "final", layers=[2, 1])
    raw["teacher"]["train"] = {"model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}}
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        distill(load_recipe(path), tmp_path / "out", console=quiet_console)
    assert f"{path}: student.init.extract.layers: layer numbers must be strictly increasing" in str(error.value)
    assert not (tmp_path / "runs").exists()  # the teacher was not trained


def test_distill_with_an_extracted_student_completes(tmp_path, teacher, quiet_console):
    from transformers import AutoModelForSequenceClassification

    raw = extract_recipe(teacher, strategy="random", seed=5)
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "tiny"
    assert summary["steps"] == 4
    assert summary["student"]["parameters"] == 5218
    assert summary["student"]["metric"] is not None
    extraction = json.loads((run_dir / "summary.json").read_text())["student"]["extraction"]
    assert extraction["kept"]["strategy"] == "random" and extraction["kept"]["seed"] == 5
    assert extraction["importance"] is None
    final = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert (final.config.num_hidden_layers, final.config.hidden_size) == (1, 16)
