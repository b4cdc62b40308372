"""Resume equality, for every distillation kind: a run interrupted after a checkpoint (a later one
half-written) and continued with --resume ends with the weights of an uninterrupted run, bit for
bit. Each kind also checks what its checkpoints hold beyond the student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from brewer_cli.commands import distill
from brewer_cli.recipe import load_recipe
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe
from tests.test_multi_task import multi_task_recipe, two_tasks  # noqa: F401  (a fixture)
from tests.test_multi_teacher import multi_recipe
from tests.test_sequence_kd import policy_recipe

MATCH = {"uniform": True, "loss": "hidden_mse", "projection": "linear", "include_embeddings": True}


def _trainer(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    raw["distillation"] = {"kind": "trainer"}
    return raw


def _basic(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    return distill_recipe(save_tiny_model(tmp_path / "teacher", tokenizer_dir))


def _general(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    raw = _basic(tmp_path, tokenizer_dir, tasks)
    raw["distillation"] = {"kind": "general", "temperature": 2.0, "hard_label_weight": 0.5, "matches": [MATCH]}
    return raw


def _multi_teacher(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    first = save_tiny_model(tmp_path / "t0", tokenizer_dir, seed=0)
    second = save_tiny_model(tmp_path / "t1", tokenizer_dir, seed=1)
    return multi_recipe({"checkpoint": str(first)}, {"checkpoint": str(second), "weight": 2.0})


def _multi_task(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    return multi_task_recipe(tasks)


def _sequence_kd(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    generation = {"max_new_tokens": 5, "sample": True}
    return policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": generation, "generation_cache": str(tmp_path / "cache")})


def _on_policy(tmp_path: Path, tokenizer_dir: Path, tasks: dict) -> dict:
    return policy_recipe(tmp_path, {"kind": "on_policy", "student_data_fraction": 0.5, "generation": {"max_new_tokens": 5}})


# kind → (recipe, epochs, the checkpoint step the crash keeps)
KINDS = {
    "trainer": (_trainer, 3, 5),
    "basic": (_basic, 3, 5),
    "general": (_general, 2, 3),
    "multi_teacher": (_multi_teacher, 2, 3),
    "multi_task": (_multi_task, 1, 4),
    "sequence_kd": (_sequence_kd, 3, 4),
    "on_policy": (_on_policy, 3, 4),
}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every model directory under `directory` (final/, or final/<task>/)."""
    return {
        f"{path.relative_to(directory)}:{name}": tensor
        for path in sorted(directory.rglob("*.safetensors"))
        for name, tensor in load_file(str(path)).items()
    }


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resumed_run_matches_an_uninterrupted_one(kind, tmp_path, tokenizer_dir, two_tasks, quiet_console):  # noqa: F811
    make, epochs, kept = KINDS[kind]
    raw = make(tmp_path, tokenizer_dir, two_tasks)
    raw["training"].update({"epochs": epochs, "save_every": kept, "keep_checkpoints": 10, "eval_every": 100})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    assert recipe.distillation.kind == kind
    distill(recipe, tmp_path / "full", console=quiet_console)
    full = tmp_path / "full" / recipe.name
    steps = json.loads((full / "summary.json").read_text())["steps"]
    assert steps > kept, "the crash must leave steps to redo"

    # Simulate a crash after step `kept`: that checkpoint (and a half-written later one) survive,
    # with the teacher cache the run persisted beside them, as a killed process leaves them.
    crashed = tmp_path / "crashed" / recipe.name
    crashed.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{kept}", crashed / "checkpoints" / f"step-{kept}")
    (crashed / "checkpoints" / f".step-{steps}.tmp").mkdir()
    if (full / "teacher_cache").exists():
        shutil.copytree(full / "teacher_cache", crashed / "teacher_cache")
    if (full.parent / "teacher_outputs").exists():  # a prefilled store lives beside the runs
        shutil.copytree(full.parent / "teacher_outputs", crashed.parent / "teacher_outputs")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)

    uninterrupted, resumed = _weights(full / "final"), _weights(crashed / "final")
    assert uninterrupted and uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    log = (crashed / "metrics.jsonl").read_text()
    assert "resumed_from" in log and f"step-{kept}" in log
    CHECKPOINT_CONTENTS[kind](full / "checkpoints" / f"step-{kept}")


def _student_only(checkpoint: Path) -> None:
    assert not (checkpoint / "extra_modules.safetensors").exists()


def _projections_saved(checkpoint: Path) -> None:
    # The projections train with the student: a resume that did not restore them would diverge.
    extra = load_file(str(checkpoint / "extra_modules.safetensors"))
    assert extra and sorted(extra) == sorted(
        f"projections.match_{index}.linear.{part}" for index in range(len(extra) // 2) for part in ("bias", "weight")
    )


def _shared_encoder_once(checkpoint: Path) -> None:
    stored = load_file(str(checkpoint / "student" / "model.safetensors"))
    assert any(name.startswith("models.ner.bert.encoder.") for name in stored)
    assert not any(name.startswith("models.sentiment.bert.encoder.") for name in stored)


CHECKPOINT_CONTENTS = {
    "trainer": _student_only,
    "basic": _student_only,
    "general": _projections_saved,
    "multi_teacher": _student_only,
    "multi_task": _shared_encoder_once,
    "sequence_kd": _student_only,
    "on_policy": _student_only,
}
