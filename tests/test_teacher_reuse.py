"""Reusing a trained teacher: a `teacher.train` whose checkpoint exists is checked against the
recipe the teacher was trained with (its run's recipe.yaml) — refused with both settings and the
fixes when what it learned differs, reused when only logging and saving settings differ, used as
it is without a recorded recipe — and `--retrain-teacher` trains it again after moving the earlier
run aside. Dry runs that train the teacher first do not score ETD importance on its untrained
stand-in. Tiny models through the `brewer` command line; exit codes and messages asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from brewer_cli.build import teacher_slots
from brewer_cli.build.teachers import stage_fields
from brewer_cli.cli import app
from brewer_cli.recipe import load_recipe, resolved_mapping, stage_recipes, teacher_training_recipe
from brewer_cli.run_directory import result_changes
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner(env={"COLUMNS": "200"})


def _brewer(*arguments: str | Path) -> tuple[int, str]:
    """Exit code and output, whitespace collapsed (rich wraps long lines)."""
    result = runner.invoke(app, [str(argument) for argument in arguments])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split())


def teacher_recipe(root: Path, tokenizer_dir: Path, **training: Any) -> dict[str, Any]:
    """A distillation recipe whose teacher (root/runs/tiny-teacher/final) is trained first: 1 epoch, 4 steps."""
    raw = distill_recipe(root / "runs" / "tiny-teacher" / "final")
    raw["teacher"]["train"] = {
        "model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, **training},
    }
    return raw


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir) -> Path:
    """runs/tiny-teacher trained by `brewer train-teacher` (1 epoch): copy it before changing it."""
    root = tmp_path_factory.mktemp("reuse")
    code, output = _brewer("train-teacher", write_recipe(root, teacher_recipe(root, tokenizer_dir)))
    assert code == 0, output
    return root / "runs"


@pytest.fixture
def runs(tmp_path, trained) -> Path:
    shutil.copytree(trained, tmp_path / "runs")
    return tmp_path / "runs"


def test_a_teacher_trained_with_other_settings_is_refused_with_both_settings_and_the_fixes(tmp_path, tokenizer_dir, runs):
    raw = teacher_recipe(tmp_path, tokenizer_dir, epochs=12)
    raw["data"]["train"]["examples"] = 128
    path = write_recipe(tmp_path, raw)
    before = _contents(runs)
    code, output = _brewer("distill", path, "--output-dir", runs)
    assert code == 2, output
    teacher = runs / "tiny-teacher"
    assert (
        f"error (run directory): {path}: teacher.train: {teacher}/final exists, but it was trained with other settings "
        f"than `teacher.train` gives now (recorded in {teacher}/recipe.yaml → this recipe): "
        f"data.train.examples: 64 → 128 teacher.train.training.epochs: 1.0 → 12.0 "
        f"brewer does not distill from a teacher the recipe does not describe. Either distill from it as it is: "
        f"`--set teacher.train=null` (the recipe without `teacher.train`; teacher.checkpoint stays {teacher}/final); "
        f"train it again with these settings: --retrain-teacher (moves {teacher} aside to "
        f"tiny-teacher.replaced-<date-time>, then trains a new teacher); train a second teacher beside it: "
        f"`--set teacher.checkpoint={teacher}-2/final`; or delete {teacher} yourself."
    ) in output
    assert "Traceback" not in output
    assert _contents(runs) == before  # nothing trained, nothing written


def test_train_teacher_refuses_a_teacher_trained_otherwise_and_names_its_own_fixes(tmp_path, tokenizer_dir, runs):
    path = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir, learning_rate=5.0e-4))
    code, output = _brewer("train-teacher", path)
    assert code == 2, output
    teacher = runs / "tiny-teacher"
    assert "teacher.train.training.learning_rate: 0.001 → 0.0005" in output
    assert (
        f"brewer does not replace a teacher the recipe does not describe. Either distill from it as it is: "
        f"`brewer distill {path} --set teacher.train=null`; train it again with these settings: "
        f"`brewer distill {path} --retrain-teacher` (moves {teacher} aside to tiny-teacher.replaced-<date-time> first)"
    ) in output
    # The same settings: the run directory's own refusal, which names --resume.
    same = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir), "same.yaml")
    code, output = _brewer("train-teacher", same)
    assert code == 2 and f"{teacher}: the run directory already exists and holds a finished run" in output


def test_settings_that_do_not_change_the_teacher_reuse_it(tmp_path, tokenizer_dir, runs):
    raw = teacher_recipe(tmp_path, tokenizer_dir, log_every=1, eval_every=2, save_every=2, keep_checkpoints=5)
    code, output = _brewer("distill", write_recipe(tmp_path, raw), "--output-dir", runs, "--dry-run")
    assert code == 0, output
    teacher = runs / "tiny-teacher"
    assert (
        f"teacher: {teacher}/final was trained with the settings `teacher.train` gives ({teacher}/recipe.yaml): reused"
    ) in output
    assert f"teacher: bert from {teacher}/final — 23,586 parameters" in output
    assert "untrained" not in output


def test_the_teacher_is_used_as_it_is_without_train(tmp_path, tokenizer_dir, runs):
    path = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir, epochs=12))
    teacher_before = _contents(runs / "tiny-teacher")
    code, output = _brewer("distill", path, "--output-dir", runs, "--set", "teacher.train=null")
    assert code == 0, output
    summary = json.loads((runs / "tiny" / "summary.json").read_text())
    trained_with = json.loads((runs / "tiny-teacher" / "summary.json").read_text())
    assert summary["teacher"]["metric"] == pytest.approx(trained_with["model"]["metric"])
    assert _contents(runs / "tiny-teacher") == teacher_before


def test_retrain_teacher_moves_the_earlier_run_aside_and_trains_it_again(tmp_path, tokenizer_dir, runs):
    path = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir, epochs=2))
    earlier = _contents(runs / "tiny-teacher")
    code, output = _brewer("distill", path, "--output-dir", runs, "--retrain-teacher")
    assert code == 0, output
    [moved] = runs.glob("tiny-teacher.replaced-*")
    assert _contents(moved) == earlier  # kept as it was, under a new name
    assert (
        f"--retrain-teacher: the earlier run of teacher moved aside to {moved} (kept: delete it when you no longer need it)"
        in output
    )
    assert load_recipe(runs / "tiny-teacher" / "recipe.yaml").training.epochs == 2
    assert json.loads((runs / "tiny-teacher" / "summary.json").read_text())["steps"] == 8
    assert (runs / "tiny" / "summary.json").is_file()

    # Again: the student's directory holds a finished run, so nothing is moved or trained.
    code, output = _brewer("distill", path, "--output-dir", runs, "--retrain-teacher")
    assert code == 2 and f"{runs / 'tiny'}: the run directory already exists and holds a finished run" in output
    assert len(list(runs.glob("tiny-teacher.replaced-*"))) == 1


def test_a_dry_run_of_retrain_teacher_moves_nothing_and_plans_the_teacher(tmp_path, tokenizer_dir, runs):
    path = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir, epochs=2))
    before = _contents(runs)
    code, output = _brewer("distill", path, "--output-dir", runs, "--retrain-teacher", "--dry-run")
    assert code == 0, output
    teacher = runs / "tiny-teacher"
    assert (
        f"--retrain-teacher: {teacher} would be moved aside to tiny-teacher.replaced-<date-time> and teacher trained "
        f"again (a dry run moves nothing)"
    ) in output
    assert f"teacher {teacher}/final will be trained again (--retrain-teacher)" in output
    assert "teacher: bert from config inline (untrained in this plan)" in output
    assert _contents(runs) == before


def test_retrain_teacher_refusals(tmp_path, tokenizer_dir, runs):
    path = write_recipe(tmp_path, teacher_recipe(tmp_path, tokenizer_dir))
    code, output = _brewer("distill", path, "--output-dir", runs, "--retrain-teacher", "--resume")
    assert code == 2
    assert (
        f"{path}: --retrain-teacher and --resume together: the student's checkpoints were distilled from the teacher "
        f"that would be replaced"
    ) in output
    code, output = _brewer("distill", path, "--output-dir", runs, "--retrain-teacher", "--set", "teacher.train=null")
    assert code == 2
    assert f"{path}: --retrain-teacher: no teacher of this recipe has a `train` section" in output
    assert not list(runs.glob("*.replaced-*"))


def test_a_teacher_without_a_recorded_recipe_is_used_as_it_is(tmp_path, tokenizer_dir):
    own = save_tiny_model(tmp_path / "mine" / "final", tokenizer_dir)
    raw = teacher_recipe(tmp_path, tokenizer_dir)
    raw["teacher"]["checkpoint"] = str(own)
    path = write_recipe(tmp_path, raw)
    code, output = _brewer("distill", path, "--output-dir", tmp_path / "runs", "--dry-run")
    assert code == 0, output
    assert (
        f"teacher: {own} exists and records no training recipe ({own.parent}/recipe.yaml is missing: not a brewer "
        f"run): used as it is, without checking it against `teacher.train`"
    ) in output
    # --retrain-teacher moves only the runs brewer wrote.
    code, output = _brewer("distill", path, "--output-dir", tmp_path / "runs", "--retrain-teacher")
    assert code == 2
    assert (
        f"{path}: teacher.checkpoint: --retrain-teacher would move {own.parent} aside, but it is not a brewer run "
        f"directory (no recipe.yaml): brewer moves only the runs it wrote"
    ) in output
    assert (own / "config.json").is_file() and not (tmp_path / "runs").exists()


def test_differences_are_named_as_the_users_file_writes_them(tmp_path, tokenizer_dir):
    raw = teacher_recipe(tmp_path, tokenizer_dir)
    del raw["distillation"]
    stage_data = {**raw["data"], "max_length": 16}
    raw["stages"] = [
        {"name": "first", "distillation": {"kind": "basic"}},
        {"name": "second", "distillation": {"kind": "basic"}, "data": stage_data, "teacher": raw["teacher"]},
    ]
    recipe = load_recipe(write_recipe(tmp_path, raw))
    stages = stage_recipes(recipe, tmp_path / "runs" / recipe.name)
    [first] = teacher_slots(stages[0][1], stage_fields(recipe, 1))
    [second] = teacher_slots(stages[1][1], stage_fields(recipe, 2))
    assert first.field_of("training.epochs") == "teacher.train.training.epochs"
    assert first.field_of("data.max_length") == "data.max_length"
    assert second.field == "stages.1.teacher"
    assert second.field_of("model.config.hidden_size") == "stages.1.teacher.train.model.config.hidden_size"
    assert second.field_of("data.max_length") == "stages.1.data.max_length"
    assert second.field_of("task.num_labels") == "task.num_labels"


def test_the_quickstart_teacher_recipe_trains_what_the_quickstart_reuses(tmp_path):
    """README: `brewer train-teacher recipes/quickstart-teacher.yaml`, then `brewer distill
    recipes/quickstart.yaml` reuses it — so its recorded recipe must match quickstart's teacher.train."""
    trainer = load_recipe(ROOT / "recipes" / "quickstart-teacher.yaml")
    recorded = resolved_mapping(trainer)
    # Recorded before brewer had a setting: the setting at its default counts as unchanged.
    del recorded["training"]["group_by_length"]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert result_changes(tmp_path, teacher_training_recipe(quickstart)) == {}
    shorter = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["teacher.train.training.epochs=1"])
    assert result_changes(tmp_path, teacher_training_recipe(shorter)) == {"training.epochs": (12.0, 1.0)}


# ─────────────────────────── dry run: ETD importance waits for the trained teacher ───────────────────────────


def _etd_recipe(tmp_path: Path, tokenizer_dir: Path, **extract: Any) -> Path:
    raw = teacher_recipe(tmp_path, tokenizer_dir)
    raw["student"] = {"init": {"extract": {"strategy": "importance", "examples": 32, **extract}}}
    return write_recipe(tmp_path, raw)


@pytest.fixture
def no_scoring(monkeypatch):
    """Importance scoring fails the test if it runs."""

    def refuse(*arguments, **keywords):
        raise AssertionError("importance was scored on the untrained stand-in")

    monkeypatch.setattr("brewer_cli.extract.student.score_model", refuse)


def test_dry_run_does_not_score_importance_on_the_untrained_teacher(tmp_path, tokenizer_dir, no_scoring):
    path = _etd_recipe(tmp_path, tokenizer_dir, layers=1, hidden=16, heads=2, intermediate=32)
    code, output = _brewer("distill", path, "--output-dir", tmp_path / "runs", "--dry-run")
    assert code == 0, output
    teacher = tmp_path / "runs" / "tiny-teacher" / "final"
    for text in (
        f"teacher {teacher} is missing: it will be trained first",
        "student.init.extract: strategy importance scores the teacher's heads, neurons and channels once the teacher is "
        "trained — this plan does not score its untrained stand-in; the student below has the recipe's shape, cut "
        "without scores",
        "teacher: bert from config inline (untrained in this plan)",
        "student: bert from the teacher's weights (ETD extraction, importance: scored after the teacher is trained; "
        "shown here: the recipe's shape, cut without scores)",
        "Extracted BertForSequenceClassification student (importance, scored once the teacher is trained — not on this "
        "plan's untrained stand-in, seed 0)",
        "layers: 1 of 2 — teacher layers 2 (uniform)",
        "hidden: 16 of 32 channels",
        "attention: 2 heads × 8 (teacher 4 × 8)",
        "intermediate: 32 of 64 FFN neurons per layer",
    ):
        assert text in output, text
    assert "retained importance" not in output
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_a_budget_says_what_is_known_before_the_teacher_is_trained(tmp_path, tokenizer_dir, no_scoring):
    path = _etd_recipe(tmp_path, tokenizer_dir, target={"parameters": "12K"})
    code, output = _brewer("distill", path, "--output-dir", tmp_path / "runs", "--dry-run")
    assert code == 0, output
    for text in (
        "target: parameters ≤ 12,000",
        "choice: made once the teacher is trained, from its importance scores: the shape keeping the most importance "
        "per unit of the target among those within it. Known now: the target and the teacher's size; not known: the "
        "layers, widths and heads chosen, nor which are kept. Shown: the uniform shape that meets the target (the "
        "choice without scores)",
        "of the target's parameters",
    ):
        assert text in output, text
    assert "importance kept (share" not in output


def test_a_recipe_with_augmentation_reuses_the_teacher_it_trained_on_the_original_data(tmp_path, tokenizer_dir, runs):
    """The teacher learns from the original data; the student from the augmented file. The check
    compares the teacher with the original data (before augmentation), once — not with the
    augmented file, which would refuse every such recipe once its teacher exists."""
    from tests.test_augment import save_masked_lm

    masked_lm = save_masked_lm(tmp_path / "mlm", tokenizer_dir)
    raw = teacher_recipe(tmp_path, tokenizer_dir)
    raw["data"]["augment"] = {"model": str(masked_lm), "variants": 2, "output": str(tmp_path / "augmented.jsonl")}
    raw["training"] = {**raw["training"], "max_steps": 2, "progress": False}
    code, output = _brewer("distill", write_recipe(tmp_path, raw), "--output-dir", runs)
    assert code == 0, output
    teacher = runs / "tiny-teacher"
    assert output.count(f"teacher: {teacher}/final was trained with the settings `teacher.train` gives") == 1
    assert "trained with other settings" not in output
    assert (runs / "tiny" / "summary.json").is_file()
