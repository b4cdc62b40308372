"""The command line: help, catalog, and every bad input as one clear message with exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from brewer_cli.cli import app
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe

runner = CliRunner()


def invoke(*arguments: str):
    result = runner.invoke(app, [str(a) for a in arguments])
    return result


def assert_clean_error(result, *fragments: str) -> str:
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in {flat!r}"
    return flat


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("distill", "train-teacher", "eval", "size-report", "catalog", "extract"):
        assert command in result.output


def test_distill_help_lists_options():
    result = invoke("distill", "--help")
    for option in ("--set", "--output-dir", "--resume", "--dry-run"):
        assert option in result.output


def test_catalog_lists_every_registry():
    result = runner.invoke(app, ["catalog"], terminal_width=200)
    assert result.exit_code == 0
    for name in (
        "bert",
        "xlm-roberta",
        "sequence_classification",
        "trainer",
        "basic",
        "ce",
        "kl",
        "hidden_mse",
        "flsw",
        "linear_decay",
        "negation_sentiment",
        "linear",
    ):
        assert name in result.output


def test_missing_recipe(tmp_path):
    assert_clean_error(invoke("distill", tmp_path / "nope.yaml"), f"{tmp_path / 'nope.yaml'}: recipe file not found")


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {train: [\n")
    assert_clean_error(invoke("distill", path), f"{path}:3:1: malformed YAML")


def test_unknown_key(tmp_path):
    raw = distill_recipe("runs/x/final")
    raw["training"]["epoch"] = 3
    path = write_recipe(tmp_path, raw)
    assert_clean_error(invoke("distill", path), f"{path}: training.epoch: unknown key (did you mean 'epochs'?) — valid:")


def test_unknown_distiller_kind(tmp_path):
    raw = distill_recipe("runs/x/final", distillation={"kind": "genral"})
    path = write_recipe(tmp_path, raw)
    assert_clean_error(
        invoke("distill", path), f"{path}: distillation.kind: unknown distiller kind 'genral' (did you mean 'general'?)"
    )


def test_unknown_kd_loss_name(tmp_path, teacher_dir):
    raw = distill_recipe(teacher_dir, distillation={"kind": "basic", "kd_loss": "kld"})
    path = write_recipe(tmp_path, raw)
    assert_clean_error(
        invoke("distill", path),
        f"{path}: distillation.kd_loss: unknown KD loss 'kld'",
        "valid: ce, forward_kl, jsd, kl, mse, reverse_kl, skew_kl, skew_reverse_kl, tv",
    )


def test_teacher_missing_without_training_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, distill_recipe("runs/teacher/final"))
    assert_clean_error(
        invoke("distill", path, "--output-dir", tmp_path / "out"),
        f"{path}: teacher.checkpoint: 'runs/teacher/final' does not exist and the recipe has no `teacher.train` section",
    )
    assert not (tmp_path / "out").exists()


def test_data_file_missing(tmp_path, teacher_dir):
    raw = distill_recipe(teacher_dir)
    raw["data"]["train"] = {"path": "missing.tsv"}
    path = write_recipe(tmp_path, raw)
    assert_clean_error(
        invoke("distill", path, "--output-dir", tmp_path / "out"), f"{path}: data.train.path: data file 'missing.tsv' not found"
    )
    assert not (tmp_path / "out").exists()


def test_label_column_missing_lists_columns(tmp_path, teacher_dir):
    (tmp_path / "train.tsv").write_text("sentence\tpolarity\ngood film\t1\nbad film\t0\n")
    raw = distill_recipe(teacher_dir)
    raw["data"]["train"] = {"path": str(tmp_path / "train.tsv"), "text": "sentence"}
    path = write_recipe(tmp_path, raw)
    assert_clean_error(
        invoke("distill", path, "--output-dir", tmp_path / "out"),
        f"{path}: data.label: label column 'label' is not in data.train ({tmp_path / 'train.tsv'}) — columns found: "
        f"sentence, polarity; set data.label to one of them",
    )


def test_label_outside_num_labels(tmp_path, tokenizer_dir):
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir, labels=None)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nodd film\t2\n")
    raw = distill_recipe(teacher)
    raw["data"]["train"] = {"path": str(tmp_path / "train.tsv"), "text": "sentence"}
    del raw["data"]["eval"]
    path = write_recipe(tmp_path, raw)
    assert_clean_error(
        invoke("distill", path, "--output-dir", tmp_path / "out"),
        f"{path}: data.train: example 1: label '2' is outside task.num_labels=2 (valid ids 0…1)",
    )


def test_empty_dataset(tmp_path, teacher_dir):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n")
    raw = distill_recipe(teacher_dir)
    raw["data"]["train"] = {"path": str(tmp_path / "train.tsv")}
    path = write_recipe(tmp_path, raw)
    assert_clean_error(invoke("distill", path, "--output-dir", tmp_path / "out"), f"{path}: data.train: the dataset is empty")


def test_student_checkpoint_with_padding_rows_past_the_tokenizer(tmp_path, teacher_dir, tokenizer_dir):
    student = save_tiny_model(
        tmp_path / "student", tokenizer_dir, config={**TINY_BERT, "hidden_size": 16, "num_attention_heads": 2}
    )
    config_path = student / "config.json"
    config = json.loads(config_path.read_text())
    # Re-save with 7 rows past the tokenizer's ids, as checkpoints padded to a round size are
    # (Qwen2: 151,936 vs 152,064): the same vocabulary, accepted. Smaller vocabularies are refused
    # (tests/test_bad_inputs.py, tests/test_token_kd.py).
    from transformers import AutoModelForSequenceClassification, BertConfig

    config.pop("architectures", None)
    config["vocab_size"] = config["vocab_size"] + 7
    AutoModelForSequenceClassification.from_config(BertConfig(**config)).save_pretrained(student)
    raw = distill_recipe(teacher_dir, student={"checkpoint": str(student)})
    path = write_recipe(tmp_path, raw)
    result = invoke("distill", path, "--output-dir", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output


def test_run_directory_is_never_overwritten(tmp_path, teacher_dir):
    path = write_recipe(tmp_path, distill_recipe(teacher_dir))
    # A started run: one complete checkpoint (a directory with only leftovers counts as not started).
    (tmp_path / "out" / "tiny" / "checkpoints" / "step-2").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "checkpoints" / "step-2" / "state.json").write_text("{}")
    assert_clean_error(
        invoke("distill", path, "--output-dir", tmp_path / "out"),
        f"{tmp_path / 'out' / 'tiny'}: the run directory already exists",
        "--resume",
    )


def test_bad_set_override(tmp_path, teacher_dir):
    path = write_recipe(tmp_path, distill_recipe(teacher_dir))
    assert_clean_error(
        invoke("distill", path, "--set", "training.batch_size=0"),
        f"{path}: training.batch_size: Input should be greater than or equal to 1",
    )


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, teacher_dir):
    path = write_recipe(tmp_path, distill_recipe(teacher_dir))
    result = runner.invoke(app, ["distill", str(path), "--dry-run", "--output-dir", str(tmp_path / "out")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "student / teacher parameters" in result.output
    assert "data: 64 training examples, 32 eval examples, labels: negative, positive" in result.output
    assert "steps: 4 (4 per epoch, batch 16 × accumulation 1), precision no" in result.output
    assert "KD ce × 1.0 (constant), temperature 2.0 (constant)" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_missing_target(tmp_path):
    assert_clean_error(invoke("eval", tmp_path / "nothing"), f"{tmp_path / 'nothing'}: no such run directory or checkpoint")


def test_size_report_bad_batch_sizes(tmp_path):
    assert_clean_error(
        invoke("size-report", "x", "--batch-sizes", "1,a"), "--batch-sizes '1,a': expected comma-separated whole numbers"
    )


def test_size_report_command_compares_student_and_teacher(tmp_path, tokenizer_dir):
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir)
    student = save_tiny_model(
        tmp_path / "student", tokenizer_dir, config={**TINY_BERT, "hidden_size": 16, "num_attention_heads": 2}
    )
    result = runner.invoke(
        app,
        [
            "size-report",
            str(student),
            "--against",
            str(teacher),
            "--json",
            "--runs",
            "2",
            "--batch-sizes",
            "1,4",
            "--seq-len",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    target, reference = report["models"]
    assert target["parameters"]["total"] < reference["parameters"]["total"]
    comparison = report["comparison"]
    assert comparison["parameters_smaller_by"] == pytest.approx(reference["parameters"]["total"] / target["parameters"]["total"])
    assert comparison["flops_fewer_by"] > 1
    assert [entry["batch_size"] for entry in comparison["latency"]] == [1, 4]
    assert all(entry["faster_by"] > 0 for entry in comparison["latency"])
    markdown = runner.invoke(app, ["size-report", str(student), "--markdown", "--runs", "0", "--seq-len", "16"])
    assert markdown.exit_code == 0 and "|" in markdown.output


def test_a_student_checkpoint_with_another_tokenizer_is_refused(tmp_path, teacher_dir):
    """The student trains on the ids the teacher's tokenizer makes: its own tokenizer must map them alike."""
    from tests.conftest import TINY_STUDENT, save_tiny_model
    from tests.task_fixtures import tokenizer

    # A WordPiece vocabulary trained on other text, larger than the teacher's (so no size check fires first).
    other = tmp_path / "other-tokenizer"
    tokenizer(vocab_size=120).save_pretrained(other)
    student = save_tiny_model(tmp_path / "student", other, config=TINY_STUDENT)
    path = write_recipe(tmp_path, distill_recipe(teacher_dir, student={"checkpoint": str(student)}))
    flat = assert_clean_error(invoke("distill", path))
    assert flat == (
        f"error (model): {path}: student.checkpoint: the student's own tokenizer (120 tokens) is not the teacher's "
        f"(100 tokens) — id 28 is '.' to the student and ',' to the teacher. The student trains on the ids the "
        f"teacher's tokenizer makes and their logits are compared id by id, so they must share a tokenizer: use a "
        f"student checkpoint with the teacher's tokenizer, build the student from a config (`student.config`), which "
        f"takes the teacher's tokenizer, or, for a sequence-level task, use `distillation.kind: multi_teacher`, whose "
        f"teachers read the examples tokenized their own way"
    )
