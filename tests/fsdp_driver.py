"""Started by tests/test_fsdp.py under torchrun: `brewer distill` with the student sharded by FSDP2.

On GPUs `accelerate launch --config_file configs/accelerate/fsdp.yaml` turns FSDP on. On CPU
processes Accelerate 1.15 does not (its AcceleratorState enables FSDP only for GPU-like distributed
types, and brewer refuses the launch: brewer_cli/sharding.py), although torch's FSDP2 itself runs
on CPU with gloo. So that brewer's FSDP path — Accelerate's `fsdp2_prepare_model`, the gathered
checkpoints and exports, resume into shards, evaluation of a sharded student — runs on a machine
without GPUs, this driver sets Accelerate's state to FSDP2 right after brewer creates the
Accelerator, as `accelerate launch` with the config does on GPUs. Everything else is the CLI's path.

usage: torchrun --nproc_per_node 2 tests/fsdp_driver.py RECIPE OUTPUT_DIR REPORT.json [--resume] [--ddp]
(--ddp: the same launch without FSDP, the reference a sharded run is compared with)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

import brewer_cli.loop as loop_module
from brewer_cli.commands import distill
from brewer_cli.recipe import load_recipe
from brewer_cli.sharding import is_sharded

built: dict = {}
create_accelerator = loop_module.create_accelerator


def create_fsdp_accelerator(run, precision):
    accelerator = create_accelerator(run, precision)
    built["run"] = run
    if "--ddp" in sys.argv[4:]:
        return accelerator  # the reference: the same two processes in DDP
    # What `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives on GPUs.
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        state_dict_type="FULL_STATE_DICT",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
    )
    accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


def main() -> None:
    recipe, output, report = sys.argv[1:4]
    loop_module.create_accelerator = create_fsdp_accelerator
    summary = distill(load_recipe(recipe), output, resume="--resume" in sys.argv[4:])
    run = built["run"]
    teacher = run.teachers[0].model
    student_parameters = list(run.distiller.student.parameters())
    facts = {
        "distiller_sharded": is_sharded(run.distiller),
        # Every student weight a DTensor holding this process's shard only.
        "student_shards": all(hasattr(parameter, "to_local") for parameter in student_parameters),
        "student_local_elements": sum(
            getattr(parameter, "to_local", lambda p=parameter: p)().numel() for parameter in student_parameters
        ),
        "student_elements": sum(parameter.numel() for parameter in student_parameters),
        "teacher_sharded": is_sharded(teacher) or any(hasattr(parameter, "to_local") for parameter in teacher.parameters()),
        "teacher_in_distiller": any(module is teacher for module in run.distiller.modules()),
        "layer_units": sorted({type(module).__name__ for module in run.distiller.modules() if is_sharded(module)}),
        "steps": summary["steps"],
        # causal_lm: the summary's generations as this process computed them (only the main one writes).
        "student_generations": (summary.get("student") or {}).get("generations"),
    }
    Path(f"{report}.{os.environ['RANK']}").write_text(json.dumps(facts))


if __name__ == "__main__":
    main()
