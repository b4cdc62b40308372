"""A recipe's problems — unknown keys (with brewer's name for a Trainer argument), unknown registry
names, empty values, missing data files, data columns, model configs — are reported together, in
one error, before torch is imported (issue 16, point 6); messages about a derived recipe name the
user's fields (`teacher.train.model.checkpoint`, `stages.1.training.epochs`, `--data`).

The torch-free claims are checked in a fresh interpreter: the command runs, and the process then
reports whether torch or transformers was ever imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from brewer_cli.errors import BrewerError, DataError, ModelError, RecipeError
from brewer_cli.recipe import (
    DataSource,
    check_data_source,
    data_columns,
    derive,
    eval_only,
    load_recipe,
    source_from_options,
    speaking_of,
    stage_recipes,
    task_recipe,
    teacher_training_recipe,
    with_eval_source,
)
from tests.conftest import TINY_STUDENT, write_recipe

ROOT = Path(__file__).resolve().parent.parent

# Runs the command line, then says on stderr which heavy libraries the process imported.
RUN_CLI = """
import sys
from brewer_cli.cli import app
try:
    app(sys.argv[1:], prog_name="brewer")
except SystemExit as stop:
    code = stop.code
print("imported:", sorted(name for name in ("torch", "transformers", "accelerate", "datasets") if name in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def run_cli(*arguments: Any, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, *(str(argument) for argument in arguments)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "2000", "PYTHONPATH": str(ROOT)},
    )


def flat(text: str) -> str:
    return " ".join(text.split())


def sst_recipe(directory: Path, **sections: Any) -> dict[str, Any]:
    """A local-file recipe in the shape of the held-out trial: a pair task from TSV files."""
    (directory / "train.tsv").write_text("Quality\t#1 String\t#2 String\ngood\tone\ttwo\n", encoding="utf-8")
    (directory / "dev.tsv").write_text("Quality\t#1 String\t#2 String\nbad\tthree\tfour\n", encoding="utf-8")
    raw: dict[str, Any] = {
        "name": "pairs",
        "task": {"kind": "sequence_classification", "num_labels": 2},
        "data": {
            "train": {"path": "train.tsv"},
            "eval": {"path": "dev.tsv"},
            "text": "#1 String",
            "text_pair": "#2 String",
            "label": "Quality",
            "max_length": 32,
        },
        "teacher": {"checkpoint": "some-org/teacher"},
        "student": {"config": dict(TINY_STUDENT)},
        "training": {"epochs": 1},
        "distillation": {"kind": "basic"},
    }
    raw.update(sections)
    return raw


def problems_of(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as error:
        load_recipe(path, list(overrides))
    return error.value.problems


# ============================================================================= before torch


def test_a_schema_error_is_reported_before_torch_is_imported(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["training"] = {"num_train_epochs": 3}
    path = write_recipe(tmp_path, raw)
    result = run_cli("distill", path, cwd=tmp_path)
    assert result.returncode == 2
    assert flat(result.stderr).startswith(
        f"error (recipe): recipe problem: {path}: training.num_train_epochs: unknown key — the Trainer's "
        f"`num_train_epochs` is `training.epochs` in brewer — valid: "
    )
    assert "imported: []" in result.stderr


def test_a_wrong_column_is_reported_before_torch_is_imported(tmp_path):
    path = write_recipe(tmp_path, sst_recipe(tmp_path), "recipe.yaml")
    result = run_cli("distill", path, "--set", "data.label=quality", cwd=tmp_path)
    assert result.returncode == 2
    assert flat(result.stderr) == flat(
        f"error (recipe): 2 recipe problems:\n"
        f"  {path}: data.label: label column 'quality' is not in data.train (train.tsv) — columns found: Quality, "
        f"#1 String, #2 String; set data.label to one of them — the value comes from `--set data.label=quality`, not from "
        f"the file\n"
        f"  {path}: data.label: label column 'quality' is not in data.eval (dev.tsv) — columns found: Quality, "
        f"#1 String, #2 String; set data.label to one of them — the value comes from `--set data.label=quality`, not from "
        f"the file\n"
        f"imported: []"
    )


def test_train_teacher_and_extract_check_the_recipe_before_torch_too(tmp_path):
    raw = sst_recipe(tmp_path, distillation={"kind": "basic", "kd_loss": "kl_div"})
    path = write_recipe(tmp_path, raw)
    for command in ("train-teacher", "extract"):
        result = run_cli(command, path, cwd=tmp_path)
        assert result.returncode == 2
        assert (
            f"{path}: distillation.kd_loss: unknown KD loss 'kl_div' — valid: ce, forward_kl, jsd, kl, mse, reverse_kl, skew_kl, skew_reverse_kl, tv"
            in flat(result.stderr)
        )
        assert "imported: []" in result.stderr


def test_catalog_prints_without_torch(tmp_path):
    result = run_cli("catalog", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stderr
    output = flat(result.stdout)
    for shown in ("hidden_mse", "fsp (alias gram)", "masked_lm (alias general_corpus)", "[model_type: roberta, camembert]"):
        assert shown in output
    # Brackets in descriptions print as written, not as markup.
    assert "‖h_S[:,0]/‖h_S[:,0]‖ − h_T[:,0]/‖h_T[:,0]‖‖²" in output


# ============================================================================= one pass


def test_every_problem_of_a_recipe_in_one_error(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["data"]["eval"] = {"path": "missing.tsv"}
    raw["data"]["label"] = "quality"
    raw["per_device_train_batch_size"] = 16
    raw["distillation"] = {"kind": "general", "kd_loss": "kld", "matches": ["L4_hiden_mse", {"uniform": True, "loss": "mse"}]}
    raw["student"] = {"config": {**TINY_STUDENT, "model_type": "t5"}}
    path = write_recipe(tmp_path, raw)
    text = path.read_text().replace("text_pair: '#2 String'", "text_pair: #2 String")
    path.write_text(text)
    assert problems_of(path) == [
        f"{path}: distillation.kd_loss: unknown KD loss 'kld' (did you mean 'kl'?) — valid: ce, forward_kl, jsd, kl, mse, reverse_kl, skew_kl, skew_reverse_kl, tv",
        f"{path}: distillation.matches.0: unknown match preset 'L4_hiden_mse' (did you mean 'L4t_hidden_mse' or "
        f"'L6_hidden_mse' or 'L3_hidden_mse'?) — valid: L3_attention_ce, L3_attention_ce_mean, L3_attention_mse, "
        f"L3_attention_mse_sum, L3_hidden_mse, L3_hidden_smmd, L3n_hidden_mse, L4_attention_ce, L4_attention_ce_mean, "
        f"L4_attention_mse, L4_attention_mse_sum, L4_hidden_smmd, L4t_hidden_mse, L4t_hidden_sgram, L6_hidden_mse, "
        f"L6_hidden_smmd, small_hidden_mse, small_hidden_smmd — or give the entry explicitly ({{teacher_layer, "
        f"student_layer, loss, …}}) or `uniform`",
        f"{path}: distillation.matches.1.loss: unknown match loss 'mse' — valid: attention_ce, attention_ce_mean, "
        f"attention_mse, attention_mse_sum, cos, fsp, hidden_mse, minilm_attention, minilm_value_relation, nst, "
        f"nst_kernel, pkd, relation_kk, relation_qq, relation_vv, tinybert_attention, tinybert_hidden",
        f"{path}: per_device_train_batch_size: unknown key — the Trainer's `per_device_train_batch_size` is "
        f"`training.batch_size` in brewer — valid: data, distillation, hub, model, name, stages, student, task, tasks, "
        f"teacher, teachers, training",
        f"{path}: data.text_pair: the value is empty (null): YAML reads everything from ` #` on as a comment — if the "
        f'value is `#2 String`, quote it: `text_pair: "#2 String"`; otherwise give a value, or remove the key',
        f"{path}: data.label: label column 'quality' is not in data.train (train.tsv) — columns found: Quality, "
        f"#1 String, #2 String; set data.label to one of them",
        f"{path}: data.eval.path: data file 'missing.tsv' not found (looked at {Path.cwd() / 'missing.tsv'}) — check the "
        f"path; relative paths are read from the current directory or the recipe's folder",
        f"{path}: student.config.model_type: model_type 't5' has no registered family — registered: albert, bert, "
        f"camembert, deberta-v2, distilbert, electra, gpt2, llama, mistral, qwen2, qwen3, roberta, xlm-roberta. Use a "
        f"checkpoint or config of one of these architectures.",
    ]


def test_a_valid_local_recipe_loads(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, sst_recipe(tmp_path)))
    assert recipe.data.text_pair == "#2 String"


# ============================================================================= empty values


def test_a_hash_value_cut_off_as_a_comment_is_refused_with_the_quoting_fix(tmp_path):
    path = tmp_path / "recipe.yaml"
    text = yaml.safe_dump(sst_recipe(tmp_path), sort_keys=False)
    path.write_text(text.replace("text_pair: '#2 String'", "text_pair: #2 String"))
    assert problems_of(path) == [
        f"{path}: data.text_pair: the value is empty (null): YAML reads everything from ` #` on as a comment — if the "
        f'value is `#2 String`, quote it: `text_pair: "#2 String"`; otherwise give a value, or remove the key'
    ]


def test_empty_values_name_the_key_whether_or_not_the_schema_allows_null(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["data"]["train"]["text"] = None  # optional, default None: nothing given
    raw["data"]["label"] = None  # has a default, null refused
    raw["distillation"] = None  # required
    raw["training"]["max_grad_norm"] = None  # null chosen over 1.0: no clipping, a value
    path = write_recipe(tmp_path, raw)
    assert problems_of(path) == [
        f"{path}: data.label: the value is empty (null) — give a value, or remove the key",
        f"{path}: distillation: the value is empty (null) — give a value",
        f"{path}: data.train.text: the value is empty (null) — give a value, or remove the key",
    ]


def test_set_keeps_a_value_starting_with_a_hash_and_a_written_null(tmp_path):
    raw = sst_recipe(tmp_path)
    del raw["data"]["text_pair"]
    path = write_recipe(tmp_path, raw)
    assert load_recipe(path, ["data.text_pair=#2 String"]).data.text_pair == "#2 String"
    assert load_recipe(path, ["data.eval=null"]).data.eval is None


# ============================================================================= Trainer names


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        ("training", "fp16", "the Trainer's `fp16` is `training.precision: fp16` in brewer"),
        ("training", "bf16", "the Trainer's `bf16` is `training.precision: bf16` in brewer"),
        ("training", "warmup_ratio", "the Trainer's `warmup_ratio` is `training.warmup` in brewer"),
        (
            "training",
            "warmup_steps",
            "the Trainer's `warmup_steps` is `training.warmup (a fraction of the training steps, e.g. 0.1 — not a "
            "number of steps)` in brewer",
        ),
        (
            "training",
            "per_device_eval_batch_size",
            "the Trainer's `per_device_eval_batch_size` is `training.eval_batch_size` in brewer",
        ),
        (
            "training",
            "gradient_accumulation_steps",
            "the Trainer's `gradient_accumulation_steps` is `training.gradient_accumulation` in brewer",
        ),
        ("training", "logging_steps", "the Trainer's `logging_steps` is `training.log_every` in brewer"),
        ("training", "eval_steps", "the Trainer's `eval_steps` is `training.eval_every` in brewer"),
        ("training", "save_steps", "the Trainer's `save_steps` is `training.save_every` in brewer"),
        ("training", "save_total_limit", "the Trainer's `save_total_limit` is `training.keep_checkpoints` in brewer"),
        ("training", "lr_scheduler_type", "the Trainer's `lr_scheduler_type` is `training.lr_schedule` in brewer"),
        ("training", "metric_for_best_model", "the Trainer's `metric_for_best_model` is `training.metric_for_best` in brewer"),
        ("training", "load_best_model_at_end", "the Trainer's `load_best_model_at_end` is `training.load_best_at_end` in brewer"),
        ("training", "torch_compile", "the Trainer's `torch_compile` is `training.compile` in brewer"),
        (None, "num_train_epochs", "the Trainer's `num_train_epochs` is `training.epochs` in brewer"),
        (None, "learning_rate", "`learning_rate` belongs in the `training` section: `training.learning_rate`"),
        (None, "report_to", "`report_to` belongs in the `training` section: `training.report_to`"),
        ("distillation", "weight_decay", "`weight_decay` belongs in the `training` section: `training.weight_decay`"),
        (None, "max_length", "`max_length` belongs in the `data` section: `data.max_length`"),
        (
            "training",
            "output_dir",
            "the Trainer's `output_dir` is the command's --output-dir option (`brewer distill RECIPE --output-dir DIR`; "
            "the run is DIR/<name>) in brewer",
        ),
        (None, "push_to_hub", "the Trainer's `push_to_hub` is a `hub: {repo_id: …}` section in brewer"),
    ],
)
def test_a_trainer_argument_gets_brewers_name(tmp_path, section, key, hint):
    raw = sst_recipe(tmp_path)
    (raw[section] if section else raw)[key] = 1
    path = write_recipe(tmp_path, raw)
    dotted = f"{section}.{key}" if section else key
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: {dotted}: unknown key — {hint} — valid: ")


def test_a_trainer_argument_in_a_teachers_training_names_that_section(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["teacher"] = {"checkpoint": "runs/t/final", "train": {"model": {"config": dict(TINY_STUDENT)}, "num_train_epochs": 2}}
    path = write_recipe(tmp_path, raw)
    [problem] = problems_of(path)
    assert problem.startswith(
        f"{path}: teacher.train.num_train_epochs: unknown key — the Trainer's `num_train_epochs` is "
        f"`teacher.train.training.epochs` in brewer — valid: model, training"
    )


# ============================================================================= data files and columns


def test_each_task_checks_the_columns_it_reads(tmp_path):
    rows = tmp_path / "ner.jsonl"
    rows.write_text(json.dumps({"words": ["a"], "ner_tags": ["O"]}) + "\n")
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": []}]}]}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one line\n")
    cases = {
        "token_classification": ({"train": {"path": str(rows)}}, ["data.tokens: tokens column 'tokens' is not in data.train"]),
        "question_answering": ({"train": {"path": str(squad)}, "question": "query"}, ["data.question: question column 'query'"]),
        "masked_lm": ({"train": {"path": str(corpus)}}, []),
    }
    for kind, (data, expected) in cases.items():
        raw = sst_recipe(tmp_path, task={"kind": kind}, data=data)
        path = write_recipe(tmp_path, raw)
        try:
            load_recipe(path)
            found = []
        except RecipeError as error:
            found = error.problems
        assert len(found) == len(expected), (kind, found)
        for line, fragment in zip(found, expected):
            assert f"{path}: {fragment}" in line


def test_a_split_may_name_its_own_column(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["data"]["eval"]["text"] = "sentence"
    path = write_recipe(tmp_path, raw)
    assert problems_of(path) == [
        f"{path}: data.eval.text: text column 'sentence' is not in data.eval (dev.tsv) — columns found: Quality, "
        f"#1 String, #2 String; set data.eval.text to one of them"
    ]


def test_columns_come_from_csv_quoting_json_and_save_to_disk_metadata(tmp_path):
    (tmp_path / "quoted.csv").write_text('"the, text",label\n"a, b",1\n')
    (tmp_path / "rows.json").write_text(json.dumps([{"sentence": "a", "label": 1}]))
    disk = tmp_path / "disk"
    (disk / "train").mkdir(parents=True)
    (disk / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    (disk / "train" / "dataset_info.json").write_text(json.dumps({"features": {"review": {}, "label": {}}}))
    for source, columns in (
        ({"path": "quoted.csv"}, "the, text, label"),
        ({"path": "rows.json"}, "sentence, label"),
        ({"path": "disk", "split": "train"}, "review, label"),
    ):
        raw = sst_recipe(tmp_path, data={"train": source})
        path = write_recipe(tmp_path, raw)
        assert problems_of(path) == [
            f"{path}: data.text: text column 'text' is not in data.train ({source['path']}) — columns found: {columns}; "
            f"set data.text to one of them"
        ]


def test_a_file_that_does_not_read_is_left_to_the_reader(tmp_path):
    (tmp_path / "train.jsonl").write_text("{not json\n")
    recipe = load_recipe(write_recipe(tmp_path, sst_recipe(tmp_path, data={"train": {"path": "train.jsonl"}})))
    assert recipe.data.train.path == "train.jsonl"


def test_an_empty_file_and_an_unknown_suffix(tmp_path):
    (tmp_path / "empty.tsv").write_text("text\tlabel\n\n")
    (tmp_path / "data.txt").write_text("a\n")
    raw = sst_recipe(tmp_path, data={"train": {"path": "empty.tsv"}, "eval": {"path": "data.txt"}})
    path = write_recipe(tmp_path, raw)
    assert problems_of(path) == [
        f"{path}: data.train: the dataset is empty — point it at a file or split with at least one example",
        f"{path}: data.eval.format: cannot tell the format of 'data.txt' from its name — set the format to one of csv, "
        f"tsv, json, jsonl, disk, conll, squad",
    ]


def test_a_missing_teachers_config_file_is_reported_at_once(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["teacher"] = {"checkpoint": "runs/t/final", "train": {"model": {"config": "configs/students/t5.json"}}}
    path = write_recipe(tmp_path, raw)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: teacher.train.model.config: config file 'configs/students/t5.json' not found")


def test_stage_and_task_data_are_checked_with_their_own_paths(tmp_path):
    raw = sst_recipe(tmp_path)
    raw["stages"] = [
        {"distillation": {"kind": "general", "kd_weight": 0, "matches": ["L3_hidden_mse"]}},
        {"distillation": {"kind": "basic"}, "data": {"train": {"path": "nowhere.tsv"}}},
    ]
    del raw["distillation"]
    path = write_recipe(tmp_path, raw)
    assert problems_of(path) == [
        f"{path}: stages.1.data.train.path: data file 'nowhere.tsv' not found (looked at {Path.cwd() / 'nowhere.tsv'}) — "
        f"check the path; relative paths are read from the current directory or the recipe's folder"
    ]


def test_the_plan_lists_the_columns_each_split_reads(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, sst_recipe(tmp_path)))
    assert data_columns(recipe.data, recipe.task) == [
        "data.train (train.tsv): text '#1 String', text_pair '#2 String', label 'Quality'",
        "data.eval (dev.tsv): text '#1 String', text_pair '#2 String', label 'Quality'",
    ]


# ============================================================================= derived recipes name the user's fields


def staged_recipe(tmp_path: Path):
    raw = sst_recipe(tmp_path)
    raw["teacher"] = {"checkpoint": "runs/t/final", "train": {"model": {"checkpoint": "python-package:no_such_package"}}}
    raw["stages"] = [
        {"distillation": {"kind": "general", "kd_weight": 0, "matches": ["L3_hidden_mse"]}, "training": {"epochs": 2}},
        {"distillation": {"kind": "basic"}, "teacher": raw["teacher"]},
    ]
    del raw["distillation"]
    return load_recipe(write_recipe(tmp_path, raw))


def raised_in(recipe, message: str) -> str:
    with pytest.raises(BrewerError) as error:
        with speaking_of(recipe):
            raise ModelError(message.format(path=recipe.path))
    return error.value.message


def test_messages_about_a_teachers_training_run_name_its_section(tmp_path):
    recipe = staged_recipe(tmp_path)
    teacher = teacher_training_recipe(recipe)
    assert (
        raised_in(teacher, "{path}: model.checkpoint: not installed")
        == f"{recipe.path}: teacher.train.model.checkpoint: not installed"
    )
    assert raised_in(teacher, "{path}: training.epochs: too many; {path}: data.train: x") == (
        f"{recipe.path}: teacher.train.training.epochs: too many; {recipe.path}: data.train: x"
    )
    _, second = stage_recipes(recipe, tmp_path / "runs")[1]
    in_stage = teacher_training_recipe(second)
    assert raised_in(in_stage, "{path}: model.checkpoint: x") == f"{recipe.path}: stages.1.teacher.train.model.checkpoint: x"


def test_messages_about_a_stage_name_its_fields(tmp_path):
    recipe = staged_recipe(tmp_path)
    (_, first), (_, second) = stage_recipes(recipe, tmp_path / "runs")
    assert raised_in(first, "{path}: training.epochs: x") == f"{recipe.path}: stages.0.training.epochs: x"
    assert raised_in(first, "{path}: training.batch_size: x") == f"{recipe.path}: training.batch_size: x"
    assert raised_in(second, "{path}: distillation.kd_loss: x") == f"{recipe.path}: stages.1.distillation.kd_loss: x"
    # A RecipeError keeps one line per problem, each rewritten.
    with pytest.raises(RecipeError) as error:
        with speaking_of(first):
            raise RecipeError([f"{first.path}: distillation.matches.0: a", f"{first.path}: task.kind: b"])
    assert error.value.problems == [f"{recipe.path}: stages.0.distillation.matches.0: a", f"{recipe.path}: task.kind: b"]


def test_a_teachers_missing_python_package_names_the_users_field(tmp_path, quiet_console):
    from brewer_cli.commands import distill

    recipe = staged_recipe(tmp_path)
    with pytest.raises(BrewerError) as error:
        distill(
            derive(recipe, {"stages": None, "distillation": {"kind": "basic"}}),
            tmp_path / "runs",
            dry_run=True,
            console=quiet_console,
        )
    assert f"{recipe.path}: teacher.train.model.checkpoint: " in error.value.message
    assert ": model.checkpoint" not in error.value.message


def test_a_multi_task_recipes_task_names_its_entry(tmp_path):
    raw = sst_recipe(tmp_path)
    teacher = {"checkpoint": "runs/t/final", "train": {"model": {"config": dict(TINY_STUDENT)}}}
    entry = {"task": raw.pop("task"), "data": raw.pop("data"), "teacher": teacher}
    del raw["teacher"]
    raw["tasks"] = {"pairs": entry}
    raw["distillation"] = {"kind": "multi_task"}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    one = task_recipe(recipe, "pairs")
    assert raised_in(one, "{path}: data.train: x") == f"{recipe.path}: tasks.pairs.data.train: x"
    assert raised_in(teacher_training_recipe(one), "{path}: data.eval: y") == f"{recipe.path}: tasks.pairs.data.eval: y"


def test_a_source_given_on_the_command_line_is_named_by_its_option(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, sst_recipe(tmp_path)))
    (tmp_path / "other.tsv").write_text("sentence\tlabel\nx\t1\n")
    source = source_from_options({"path": str(tmp_path / "other.tsv"), "format": None})
    with pytest.raises(DataError) as error:
        check_data_source(source, recipe)
    assert error.value.message.split("\n")[0] == (
        f"{recipe.path}: data.text: text column '#1 String' is not in --data ({tmp_path / 'other.tsv'}) — columns "
        f"found: sentence, label; set data.text to one of them"
    )
    with pytest.raises(DataError) as error:
        check_data_source(DataSource(path="nowhere.tsv"), recipe)
    assert error.value.message.startswith("--data: data file 'nowhere.tsv' not found")
    with pytest.raises(DataError) as error:
        source_from_options({"path": "x.tsv", "format": "tab"})
    assert (
        error.value.message
        == "--format: 'tab' is not allowed — valid: 'auto', 'csv', 'tsv', 'json', 'jsonl', 'text', 'disk', 'conll' or 'squad'"
    )
    evaluated = eval_only(with_eval_source(recipe, source, given_by="--data"))
    assert (
        raised_in(evaluated, "{path}: data.train: text column '#1 String' not found")
        == "--data: text column '#1 String' not found"
    )
    assert raised_in(evaluated, "{path}: data.eval.path: x") == "--data: x"
