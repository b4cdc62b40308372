"""FSDP as the loop sees it: a student sharded by Accelerate's FullyShardedDataParallel plugin
(`accelerate launch --config_file configs/accelerate/fsdp.yaml`, `fsdp_version: 2`).

With FSDP2 `accelerator.prepare` calls `fully_shard` on the distiller in place: each process keeps
a shard of every student parameter (a DTensor) and of its AdamW moments. Teachers are not in the
distiller's module tree (brewer_cli/distillers/base.py), so they are neither wrapped nor sharded:
each process holds its whole, frozen teacher, placed by `teacher.device` and `teacher.dtype`.

What changes for the loop, and only when the distiller is sharded:
- saving (checkpoints, best/, final/) gathers the full state — the student's weights in fp32 and
  the optimizer's state by parameter name — with torch.distributed.checkpoint's full-state-dict
  API, a collective every process joins; the main process writes what it received. Checkpoints
  have the files of an unsharded run, so they load anywhere (`brewer eval`, transformers).
- resume hands the full state back to every process, which keeps its own shard of it;
- evaluation calls the student outside the distiller's forward, so the distiller's own parameter
  group (embeddings, heads, projections: whatever no wrapped layer holds) is gathered around it;
- the non-finite check reads each process's shard and sums the verdicts over processes, so that
  every process reaches the same one.
Without FSDP (one process, DDP) every function here is the plain operation it replaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from brewer_cli.errors import BrewerError, CheckpointError

# Set by `accelerate launch` when its configuration asks for FSDP.
FSDP_REQUESTED = "ACCELERATE_USE_FSDP"


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 sharded `model` (fully_shard swaps in a class derived from FSDPModule)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def check_fsdp_active(accelerator: Any, environment: dict[str, str] | None = None) -> None:
    """`accelerate launch` with an FSDP config, but Accelerate did not shard: Accelerate 1.15 turns
    FSDP on for GPU (and similar accelerator) processes only, and on CPU processes silently trains
    in DDP with a whole student in each — not what the config asked for, so it is refused."""
    environment = os.environ if environment is None else environment
    requested = environment.get(FSDP_REQUESTED, "false").lower() == "true"
    if requested and accelerator.distributed_type != DistributedType.FSDP:
        raise BrewerError(
            f"accelerate launch was given an FSDP configuration ({FSDP_REQUESTED}=true), but Accelerate runs "
            f"{accelerator.distributed_type.value} here: it shards a model only across GPUs, and these processes run on "
            f"{accelerator.device.type}. Launch without the FSDP configuration (`accelerate launch --multi_gpu "
            f"--num_processes N` or `torchrun --nproc_per_node N`: DDP, a whole student per process), or run on CUDA GPUs"
        )


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict. Sharded: gathered in fp32 to the CPU of the main process (a
    collective: every process must call it; the others receive an empty dict)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state keyed by parameter name, gathered like `full_state`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, _unwrapped_optimizer(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every process passes the whole state; each keeps its shard (names missing from `state`,
    such as tied weights saved once, keep their values)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def load_full_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _unwrapped_optimizer(optimizer), state, options=StateDictOptions(full_state_dict=True))


def optimizer_state_by_name(model: nn.Module, optimizer: Any, state: dict[str, Any], where: str) -> dict[str, Any]:
    """An unsharded run's `optimizer.pt` (torch's format: parameters by their position in the param
    groups) keyed by parameter name, as `full_optimizer_state` writes it, so that a sharded run
    resumes from it through `load_full_optimizer_state` (each process keeps its shard of the moments).
    A position is the same parameter in both runs: the loop builds its groups from the distiller's
    named parameters in order, sharded or not; counts or moment shapes that differ are refused."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = _unwrapped_optimizer(optimizer).param_groups
    saved_groups = state["param_groups"]
    counts = [len(group["params"]) for group in groups]
    saved_counts = [len(group["params"]) for group in saved_groups]
    if counts != saved_counts:
        raise CheckpointError(
            f"--resume: {where} holds optimizer state for parameter groups of {saved_counts} parameters, but this run's "
            f"optimizer has groups of {counts} — the checkpoint was written for another student or another recipe"
        )
    by_name: dict[str, Any] = {}
    named_groups = []
    for group, saved_group in zip(groups, saved_groups):
        group_names = [names[id(parameter)] for parameter in group["params"]]
        for name, parameter, position in zip(group_names, group["params"], saved_group["params"]):
            entry = state["state"].get(position)
            if entry is None:
                continue  # not stepped yet (no gradient so far): nothing to restore
            moment = entry.get("exp_avg")
            # A sharded parameter (DTensor) reports its whole shape, as the saved moments have it.
            if moment is not None and tuple(moment.shape) != tuple(parameter.shape):
                raise CheckpointError(
                    f"--resume: {where} holds optimizer moments of shape {tuple(moment.shape)} for {name}, whose shape "
                    f"is {tuple(parameter.shape)} — the checkpoint was written for another student"
                )
            by_name[name] = entry
        named_groups.append({**saved_group, "params": group_names})
    return {"state": by_name, "param_groups": named_groups}


def _unwrapped_optimizer(optimizer: Any) -> Any:
    # Accelerate's AcceleratedOptimizer holds the torch optimizer, which the state-dict API reads.
    return getattr(optimizer, "optimizer", optimizer)


@contextmanager
def gathered_for_forward(model: nn.Module) -> Iterator[None]:
    """Around a call of a submodule outside `model`'s forward (evaluating the student): the
    parameters of `model`'s own FSDP group gathered; wrapped layers gather theirs in their hooks.
    A collective: every process enters it."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def weights_finite(parameters: Any, accelerator: Any) -> bool:
    """Whether every weight is finite. Sharded weights are read shard by shard and the verdict is
    summed over the processes (NaN and ∞ survive a sum), so every process agrees."""
    largest = []
    sharded = False
    for parameter in parameters:
        tensor = parameter.detach()
        if hasattr(tensor, "to_local"):
            sharded = True
            tensor = tensor.to_local()
        if tensor.numel():
            # The largest |weight| of each tensor (NaN if it holds one), then of them all: one read.
            largest.append(torch.linalg.vector_norm(tensor, float("inf")).float())
    device = accelerator.device
    verdict = torch.stack(largest).max().to(device) if largest else torch.zeros((), device=device)
    if sharded and accelerator.num_processes > 1:
        verdict = accelerator.reduce(verdict, reduction="sum")
    return bool(torch.isfinite(verdict))
