"""`teacher.device` and `teacher.dtype` (brewer_cli/families/placement.py): a bf16 teacher beside an
fp32 student, its outputs cached; devices this machine lacks refused before any weight is read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from brewer_cli.build import build_run, plan_lines
from brewer_cli.cli import app
from brewer_cli.commands import execute
from brewer_cli.errors import RecipeError
from brewer_cli.families.placement import copied_to, teacher_features
from brewer_cli.features import FeatureNeeds
from brewer_cli.recipe import load_recipe
from tests.conftest import distill_recipe, write_recipe


def with_teacher(teacher, settings: dict) -> dict:
    """The tiny recipe of tests/conftest.py with `settings` added to its `teacher` section."""
    raw = distill_recipe(teacher)
    raw["teacher"].update(settings)
    return raw


def dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {parameter.dtype for parameter in model.parameters()}


def test_a_bfloat16_teacher_distills_an_fp32_student_and_its_outputs_are_cached(tmp_path, teacher_dir, quiet_console):
    raw = with_teacher(teacher_dir, {"dtype": "bfloat16", "device": "cpu"})
    raw["training"].update({"epochs": 3, "log_every": 1, "precision": "no"})
    raw["distillation"]["teacher_cache"] = "memory"
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs")
    assert dtypes(run.teachers[0].model) == {torch.bfloat16}
    assert dtypes(run.distiller.student) == {torch.float32}
    teacher_line = next(line for line in plan_lines(run) if line.startswith("teacher: "))
    assert teacher_line.endswith("2 layers × 32, on cpu in bfloat16")

    summary = execute(run, resume=False, console=quiet_console)

    # The student kept fp32 master weights beside the bf16 teacher, and final/ holds them.
    assert dtypes(run.teachers[0].model) == {torch.bfloat16}
    assert dtypes(run.distiller.student) == {torch.float32}
    final = load_file(str(run.run_dir / "final" / "model.safetensors"))
    assert {tensor.dtype for tensor in final.values()} == {torch.float32}
    # 4 steps an epoch: the loss of the last epoch is below the first's.
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) == 12 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4])
    # The cache answered epochs 2 and 3; its fingerprint names the teacher's dtype.
    assert summary["teacher_cache"]["hits"] == 2 * 64 and summary["teacher_cache"]["misses"] == 64
    fingerprint = json.loads((run.run_dir / "teacher_cache" / "fingerprint.json").read_text())
    assert fingerprint["teachers.0 dtype"] == "bfloat16"


def test_teacher_outputs_come_back_as_fresh_tensors_on_the_batch_device(tmp_path, teacher_dir):
    raw = with_teacher(teacher_dir, {"dtype": "bfloat16"})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs")
    batch = run.collate([run.data.train[index] for index in range(4)])
    features = teacher_features(run.teachers[0], batch, FeatureNeeds(hidden_states=True))
    assert features.logits.dtype == torch.bfloat16 and features.logits.device == batch["input_ids"].device
    # Not inference tensors: autograd may save them (a loss's backward reads the teacher's logits).
    assert not features.logits.is_inference() and not features.hidden_states[-1].is_inference()
    with torch.inference_mode():
        made = torch.ones(2)
    copied = copied_to({"a": (made,)}, torch.device("cpu"))
    assert not copied["a"][0].is_inference() and torch.equal(copied["a"][0], made)


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_auto_loads_the_teacher_as_saved_and_a_dtype_overrides_it(tmp_path, teacher_dir, dtype, expected):
    saved = tmp_path / "bf16-teacher"
    AutoModelForSequenceClassification.from_pretrained(teacher_dir, dtype=torch.bfloat16).save_pretrained(saved)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (teacher_dir / name).is_file():
            (saved / name).write_bytes((teacher_dir / name).read_bytes())
    raw = with_teacher(saved, {"dtype": dtype})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs")
    assert dtypes(run.teachers[0].model) == {expected}
    assert dtypes(run.distiller.student) == {torch.float32}


def test_a_device_name_brewer_does_not_place_teachers_on_is_a_recipe_error(tmp_path, teacher_dir):
    raw = with_teacher(teacher_dir, {"device": "gpu"})
    with pytest.raises(RecipeError) as error:
        load_recipe(write_recipe(tmp_path, raw))
    assert (
        "teacher.device: 'gpu' is not a device brewer places a teacher on — use auto, cpu, cuda or cuda:N (e.g. cuda:1)"
        in str(error.value)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_teacher_on_a_machine_without_cuda_stops_before_training(tmp_path, teacher_dir):
    raw = with_teacher(teacher_dir, {"device": "cuda:1"})
    recipe = write_recipe(tmp_path, raw)
    result = CliRunner().invoke(app, ["distill", str(recipe), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert (
        f"{recipe}: teacher.device: 'cuda:1' needs a CUDA GPU, but this machine has none (torch.cuda.is_available() is "
        f"False) — use device: auto (the training device) or cpu"
    ) in " ".join(result.output.split())
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the teacher on the CPU, the student on the GPU")
def test_a_teacher_on_the_cpu_teaches_a_student_on_the_gpu(tmp_path, teacher_dir, quiet_console):
    raw = with_teacher(teacher_dir, {"device": "cpu", "dtype": "bfloat16"})
    raw["training"].update({"epochs": 2, "precision": "no"})
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs")
    summary = execute(run, resume=False, console=quiet_console)
    assert next(run.teachers[0].model.parameters()).device.type == "cpu"
    assert next(run.distiller.student.parameters()).device.type == "cuda"
    assert summary["steps"] == 8


def test_the_mean_of_bfloat16_teachers_logits_is_taken_in_fp32():
    """multi_teacher's mean of bf16 teachers: in fp32, so 1 + 2⁻⁹ (lost in bf16's 8-bit mantissa) survives."""
    from brewer_cli.distillers.multi_teacher import mean_logits

    first = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    second = torch.tensor([[1.0078125, 2.0]], dtype=torch.bfloat16)  # 1 + 2⁻⁷, exact in bf16
    mean = mean_logits([first, second], [3.0, 1.0])
    assert mean.dtype == torch.float32
    # (3 · 1 + 1 · (1 + 2⁻⁷)) / 4 = 1 + 2⁻⁹, exact in fp32; bf16 would round it to 1.
    assert mean.tolist() == [[1.0 + 2**-9, 2.0]]


class _TextTask:
    """What the multi-teacher builder reads of a task to train the student's own vocabulary."""

    def __init__(self, generates_text: bool):
        self.generates_text = generates_text

    @staticmethod
    def tokenizer_texts(recipe) -> list[str]:
        return ["the cat sat on the mat", "the dog sat on the log"]


@pytest.mark.parametrize("generates_text", [True, False])
def test_a_language_models_own_trained_vocabulary_does_not_wrap_text(tmp_path, generates_text):
    """multi_teacher with `student.tokenizer: {train_wordpiece}`: a causal_lm student's text is not
    wrapped in [CLS] … [SEP], and [SEP] ends its sequences; a classifier's is wrapped."""
    from brewer_cli.build.multi_teacher import _student_tokenizer

    raw = distill_recipe("runs/t/final")
    raw["student"]["tokenizer"] = {"train_wordpiece": {"vocab_size": 40}}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    tokenizer = _student_tokenizer(recipe, _TextTask(generates_text), match_teacher=None)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("the cat")["input_ids"])
    assert tokens == (["the", "cat"] if generates_text else ["[CLS]", "the", "cat", "[SEP]"])
    assert tokenizer.eos_token == ("[SEP]" if generates_text else None)
