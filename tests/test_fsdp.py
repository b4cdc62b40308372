"""FSDP for the student (brewer_cli/sharding.py; README "Large models: teacher placement and FSDP").

- On CPU processes Accelerate 1.15 does not turn FSDP on (it would train DDP silently): brewer
  refuses an FSDP launch there with a clear message.
- torch's FSDP2 does run on CPU with gloo, so brewer's FSDP path is exercised on two CPU processes
  with Accelerate's state set to FSDP2 (tests/fsdp_driver.py says why and how): the student sharded,
  each layer its own unit, the teacher whole and outside; checkpoints and final/ gathered in full;
  a resume from a checkpoint ends bit-identical to the uninterrupted run.
- Where CUDA GPUs are present, the real `accelerate launch --config_file configs/accelerate/fsdp.yaml`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from tests.conftest import TINY_STUDENT, distill_recipe, write_recipe

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
TIMEOUT_S = 300
# Dropout off: the resumed run redoes steps 5–8 and must draw nothing differently.
STUDENT = {**TINY_STUDENT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
MATCH = {"uniform": True, "loss": "hidden_mse", "projection": "linear", "include_embeddings": True}


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(ROOT),
    }


def fsdp_recipe(tmp_path: Path, teacher: Path, batch_size: int = 8, name: str = "recipe.yaml") -> Path:
    """General distillation (KD + a hidden-state match through a projection, which the distiller
    holds beside the student), 2 epochs of 4 steps on two processes of `batch_size` each; evaluated
    at the last step only, so that final/ is the last student (as in tests/test_resume.py)."""
    raw = distill_recipe(teacher, student={"config": dict(STUDENT)})
    # No teacher cache: it keeps hidden states in fp16 and each process caches the examples it saw,
    # so two processes and one would read differently rounded teacher features in epoch 2.
    raw["distillation"] = {
        "kind": "general",
        "temperature": 2.0,
        "hard_label_weight": 0.5,
        "matches": [MATCH],
        "teacher_cache": "off",
    }
    raw["training"].update(
        {"epochs": 2, "batch_size": batch_size, "save_every": 4, "eval_every": 100, "keep_checkpoints": 10, "precision": "no"}
    )
    return write_recipe(tmp_path, raw, name)


def test_the_fsdp_config_asks_for_fsdp2_and_full_state_dicts():
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP"
    assert config["fsdp_config"]["fsdp_version"] == 2
    assert config["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU processes, where Accelerate does not turn FSDP on")
def test_an_fsdp_launch_on_cpu_processes_is_refused_by_every_process(tmp_path, teacher_dir):
    recipe = fsdp_recipe(tmp_path, teacher_dir)
    command = [
        *[sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)],
        *["-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(tmp_path / "out")],
    ]
    launched = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    output = " ".join((launched.stdout + launched.stderr).split())
    assert launched.returncode != 0, output[-3000:]
    message = (
        "accelerate launch was given an FSDP configuration (ACCELERATE_USE_FSDP=true), but Accelerate runs MULTI_CPU "
        "here: it shards a model only across GPUs, and these processes run on cpu. Launch without the FSDP "
        "configuration (`accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`: DDP, a "
        "whole student per process), or run on CUDA GPUs"
    )
    assert output.count(message) == 2, output[-3000:]
    assert not list((tmp_path / "out" / "tiny").glob("checkpoints/step-*"))


def _driver(recipe: Path, output: Path, report: Path, *extra: str) -> list[dict]:
    command = [
        *[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        *[str(ROOT / "tests" / "fsdp_driver.py"), str(recipe), str(output), str(report), *extra],
    ]
    launched = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=output.parent)
    assert launched.returncode == 0, launched.stdout[-4000:] + launched.stderr[-4000:]
    return [json.loads(Path(f"{report}.{rank}").read_text()) for rank in (0, 1)]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for path in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(str(path)).items()}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP2 on two CPU processes (gloo); with CUDA the GPU test runs instead")
def test_fsdp2_shards_the_student_not_the_teacher_and_a_resume_is_bit_identical(tmp_path, teacher_dir):
    recipe = fsdp_recipe(tmp_path, teacher_dir)
    facts = _driver(recipe, tmp_path / "full", tmp_path / "full.json")
    for fact in facts:
        assert fact["distiller_sharded"] and fact["student_shards"] and fact["steps"] == 8
        # Each process holds about half of the student; the teacher is whole and outside the distiller.
        assert fact["student_local_elements"] < 0.75 * fact["student_elements"]
        assert not fact["teacher_sharded"] and not fact["teacher_in_distiller"]
        # TRANSFORMER_BASED_WRAP found the student's layer class through the distiller.
        assert "FSDPBertLayer" in fact["layer_units"]
    full = tmp_path / "full" / "tiny"

    # Checkpoints and final/ hold the whole student in fp32, loadable by transformers alone.
    checkpoint = full / "checkpoints" / "step-4"
    assert (checkpoint / "optimizer-by-name.pt").is_file() and not (checkpoint / "optimizer.pt").exists()
    final = AutoModelForSequenceClassification.from_pretrained(full / "final")
    assert final.config.hidden_size == STUDENT["hidden_size"]
    assert all(parameter.dtype == torch.float32 for parameter in final.parameters())
    projections = load_file(str(checkpoint / "extra_modules.safetensors"))
    assert projections and all(tensor.shape[0] == 32 for tensor in projections.values() if tensor.dim() == 2)

    # A crash after step 4: the resumed run ends where the uninterrupted one did.
    crashed = tmp_path / "crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(checkpoint, crashed / "checkpoints" / "step-4")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    _driver(recipe, tmp_path / "crashed", tmp_path / "crashed.json", "--resume")
    uninterrupted, resumed = _weights(full / "final"), _weights(crashed / "final")
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert "resumed_from" in (crashed / "metrics.jsonl").read_text()

    # Sharding changes where the weights live, not what is learned: the same two processes in DDP
    # end with the same student, up to the order of floating-point sums. (Not one process with the
    # global batch: hidden_mse averages over each process's own valid tokens.)
    _driver(recipe, tmp_path / "ddp", tmp_path / "ddp.json", "--ddp")
    replicated = _weights(tmp_path / "ddp" / "tiny" / "final")
    assert replicated.keys() == uninterrupted.keys()
    for name in replicated:
        torch.testing.assert_close(uninterrupted[name], replicated[name], rtol=1e-5, atol=1e-6, msg=name)
    # And a DDP run on CPU processes resumes too (its optimizer.pt maps to "cpu", not "cpu:0").
    crashed = tmp_path / "ddp-crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(tmp_path / "ddp" / "tiny" / "checkpoints" / "step-4", crashed / "checkpoints" / "step-4")
    shutil.copy(tmp_path / "ddp" / "tiny" / "recipe.yaml", crashed / "recipe.yaml")
    _driver(recipe, tmp_path / "ddp-crashed", tmp_path / "ddp-crashed.json", "--ddp", "--resume")
    resumed = _weights(crashed / "final")
    for name in replicated:
        assert torch.equal(replicated[name], resumed[name]), name


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate launch turns FSDP on for CUDA GPUs only")
def test_accelerate_launch_with_the_fsdp_config_on_gpus(tmp_path, teacher_dir):
    recipe = fsdp_recipe(tmp_path, teacher_dir)
    processes = str(torch.cuda.device_count())
    command = [
        *[sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG)],
        *["--num_processes", processes, "-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(tmp_path / "out")],
    ]
    launched = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-4000:] + launched.stderr[-4000:]
    run_dir = tmp_path / "out" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = 2 * -(-64 // (8 * int(processes)))  # 2 epochs of 64 examples, 8 per process and step
    assert summary["processes"] == int(processes) and summary["steps"] == steps
    # Gathered in full: the last checkpoint's optimizer state by name, final/ a plain fp32 student.
    assert (run_dir / "checkpoints" / f"step-{steps}" / "optimizer-by-name.pt").is_file()
    final = AutoModelForSequenceClassification.from_pretrained(run_dir / "final")
    assert final.config.hidden_size == STUDENT["hidden_size"]
    assert all(parameter.dtype == torch.float32 for parameter in final.parameters())


def _stepped(model: torch.nn.Module, seed: int) -> torch.optim.AdamW:
    """AdamW over the loop's two groups (decayed matrices, the rest), after two steps."""
    matrices = [parameter for parameter in model.parameters() if parameter.ndim >= 2]
    rest = [parameter for parameter in model.parameters() if parameter.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        model(torch.randn(5, 3, generator=generator)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_an_unsharded_optimizer_state_loads_by_name():
    """An unsharded checkpoint's optimizer.pt (moments by position) keyed by parameter name, as a sharded
    run's checkpoint has them: loaded through the same full-state API, it restores every moment."""
    from brewer_cli.sharding import load_full_optimizer_state, optimizer_state_by_name

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    saved = _stepped(model, seed=1).state_dict()
    fresh = _stepped(model, seed=2)  # other moments, to be overwritten
    by_name = optimizer_state_by_name(model, fresh, saved, "checkpoints/step-4")
    assert by_name["param_groups"][0]["params"] == ["0.weight", "2.weight"]
    assert by_name["param_groups"][1]["params"] == ["0.bias", "1.weight", "1.bias", "2.bias"]
    load_full_optimizer_state(model, fresh, by_name)
    restored = fresh.state_dict()
    # (The full-state API hands betas back as a list; AdamW reads either.)
    assert [{**group, "betas": tuple(group["betas"])} for group in restored["param_groups"]] == saved["param_groups"]
    for position, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored["state"][position][key], value), (position, key)


def test_an_optimizer_state_of_another_student_is_refused_by_name():
    from brewer_cli.errors import CheckpointError
    from brewer_cli.sharding import optimizer_state_by_name

    torch.manual_seed(0)
    saved = _stepped(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)), seed=1).state_dict()
    wider = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Linear(6, 2))
    with pytest.raises(CheckpointError) as error:
        optimizer_state_by_name(wider, _stepped(wider, seed=1), saved, "checkpoints/step-4")
    assert str(error.value) == (
        "--resume: checkpoints/step-4 holds optimizer moments of shape (4, 3) for 0.weight, whose shape is (6, 3) — "
        "the checkpoint was written for another student"
    )
    deeper = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(CheckpointError) as error:
        optimizer_state_by_name(deeper, _stepped(deeper, seed=1), saved, "checkpoints/step-4")
    assert str(error.value) == (
        "--resume: checkpoints/step-4 holds optimizer state for parameter groups of [2, 2] parameters, but this run's "
        "optimizer has groups of [3, 3] — the checkpoint was written for another student or another recipe"
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP2 on two CPU processes (gloo); with CUDA the GPU test runs instead")
def test_a_sharded_run_resumes_from_an_unsharded_checkpoint(tmp_path, teacher_dir):
    """A DDP run's checkpoint (optimizer.pt: whole moments by position) resumed under FSDP2: each process
    keeps its shard of the moments, and the run ends with the DDP run's student (up to the order of sums)."""
    recipe = fsdp_recipe(tmp_path, teacher_dir)
    _driver(recipe, tmp_path / "ddp", tmp_path / "ddp.json", "--ddp")
    replicated = tmp_path / "ddp" / "tiny"
    assert (replicated / "checkpoints" / "step-4" / "optimizer.pt").is_file()
    crashed = tmp_path / "crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(replicated / "checkpoints" / "step-4", crashed / "checkpoints" / "step-4")
    shutil.copy(replicated / "recipe.yaml", crashed / "recipe.yaml")
    facts = _driver(recipe, tmp_path / "crashed", tmp_path / "crashed.json", "--resume")
    assert all(fact["distiller_sharded"] and fact["steps"] == 8 for fact in facts)
    expected, resumed = _weights(replicated / "final"), _weights(crashed / "final")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP2 on two CPU processes (gloo); with CUDA the GPU test runs instead")
def test_a_sharded_language_model_reports_the_generations_of_final(tmp_path):
    """causal_lm under FSDP2: the summary's greedy generations come from final/ (whole, on the main
    process), not from the sharded student in memory, and summary.json is written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brewer_cli.recipe import load_recipe
    from brewer_cli.tasks import TASKS
    from tests.test_causal_lm import run_recipe, save_gpt2, tiny_gpt2, tokenizer_dir

    teacher = save_gpt2(tmp_path / "teacher", tokenizer_dir(tmp_path), seed=1, n_embd=32, n_layer=2)
    recipe = run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"config": tiny_gpt2(n_embd=16, n_layer=2)},
        distillation={"kind": "basic", "kd_loss": "forward_kl", "temperature": 1.0, "hard_label_weight": 0.0},
    )
    facts = _driver(recipe, tmp_path / "out", tmp_path / "out.json")
    assert all(fact["distiller_sharded"] and fact["student_shards"] for fact in facts)
    run_dir = tmp_path / "out" / "lm"
    summary = json.loads((run_dir / "summary.json").read_text())
    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    loaded = load_recipe(recipe)
    lm = TASKS.get("causal_lm")(loaded.task)
    expected = lm.generations(AutoModelForCausalLM.from_pretrained(final), tokenizer, lm.prepare_eval(loaded, tokenizer))
    assert len(expected) == 2
    assert summary["student"]["generations"] == expected
    # Only the main process generates (from final/); the other does not run generate on its shards.
    assert [fact["student_generations"] for fact in facts] == [expected, []]
