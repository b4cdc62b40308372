"""Several CPU processes (gloo): `torchrun --nproc_per_node 2 -m brewer_cli distill` and
`accelerate launch --multi_gpu --num_processes 2 -m brewer_cli distill` against one process with the
same global batch, and a refusal that reaches every process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brewer_cli.commands import distill
from brewer_cli.recipe import load_recipe
from tests.conftest import TINY_STUDENT, distill_recipe, write_recipe

# Dropout off in the student (the teacher runs in eval mode): the two runs then differ only by the
# order of floating-point sums.
STUDENT = {**TINY_STUDENT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TIMEOUT_S = 300


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def recipe_with_batch(tmp_path: Path, teacher: Path, batch_size: int, name: str) -> Path:
    raw = distill_recipe(teacher, student={"config": dict(STUDENT)})
    raw["training"].update({"epochs": 2, "batch_size": batch_size, "learning_rate": 1.0e-3, "log_every": 1})
    return write_recipe(tmp_path, raw, name)


# README's two ways to start two CPU processes. `accelerate launch` needs `--multi_gpu` to start
# more than one (without it, on a machine without GPUs, it runs one); brewer then joins gloo.
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, teacher_dir, quiet_console, launcher):
    from safetensors.torch import load_file

    two = recipe_with_batch(tmp_path, teacher_dir, 8, "two.yaml")
    command = [*LAUNCHERS[launcher], "-m", "brewer_cli", "distill", str(two), "--output-dir", str(tmp_path / "two")]
    launched = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    one_summary = distill(
        load_recipe(recipe_with_batch(tmp_path, teacher_dir, 16, "one.yaml")), tmp_path / "one", console=quiet_console
    )

    run_dir = tmp_path / "two" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2 and one_summary["processes"] == 1
    assert summary["steps"] == one_summary["steps"] == 8
    assert summary["student"]["metric"] == pytest.approx(one_summary["student"]["metric"])
    several = load_file(str(run_dir / "final" / "model.safetensors"))
    single = load_file(str(tmp_path / "one" / "tiny" / "final" / "model.safetensors"))
    assert several.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(several[name], single[name], rtol=1e-4, atol=1e-5, msg=name)

    # Only the main process writes: each step and each evaluation is logged once.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == list(range(1, 9))
    assert [record["step"] for record in records if "eval" in record] == [4, 8]
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-8"]
    # The teacher's outputs were prefilled, each process its share, into one store beside the runs
    # that holds every example (the filled flags merged); training never ran the teacher.
    cache = summary["teacher_cache"]
    assert (cache["fill"], cache["prefill"]["filled_now"]) == ("prefill", True)
    assert (cache["hits"], cache["misses"], cache["teacher_forwards"]) == (128, 0, 0)  # both processes, 2 epochs of 64
    assert not (run_dir / "teacher_cache").exists()
    stores = [path for path in (tmp_path / "two" / "teacher_outputs").iterdir() if path.is_dir()]
    assert [store.name for store in stores] == [Path(cache["prefill"]["directory"]).name]
    assert sorted(path.name for path in (stores[0] / "teacher-0").iterdir()) == ["filled_step.npy", "logits.f32"]
    assert (np.load(stores[0] / "teacher-0" / "filled_step.npy") == 0).all()
    # The same store as one process fills (same fingerprint, so the same folder name).
    single_store = tmp_path / "one" / "teacher_outputs" / stores[0].name
    np.testing.assert_allclose(
        np.fromfile(stores[0] / "teacher-0" / "logits.f32", dtype=np.float32),
        np.fromfile(single_store / "teacher-0" / "logits.f32", dtype=np.float32),
        rtol=1e-5,
        atol=1e-6,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refusal_is_raised_by_every_process_so_none_waits_for_it(tmp_path, teacher_dir):
    """Two processes started by hand (no launcher that would stop the survivor): the run directory
    holds a finished run, and both must stop with the message instead of one waiting at a barrier."""
    recipe = recipe_with_batch(tmp_path, teacher_dir, 8, "recipe.yaml")
    run_dir = tmp_path / "out" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        env = {
            **environment(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(tmp_path / "out")],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_S))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 2, stdout[-2000:] + stderr[-2000:]
        assert "the run directory already exists and holds a finished run" in " ".join((stdout + stderr).split())
