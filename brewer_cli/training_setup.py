"""What the loop (brewer_cli.loop) is set up with before its first step: the precision (the recipe's,
or Accelerate's when the recipe says `auto`), torch's intra-op thread count, the Accelerator with
its trackers and DDP settings, and the learning-rate schedule."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from transformers import get_scheduler

from brewer_cli.errors import BrewerError
from brewer_cli.run import Run
from brewer_cli.sharding import check_fsdp_active

# What `accelerate launch --mixed_precision …` (or its config file) tells the processes it starts.
ACCELERATE_PRECISION = "ACCELERATE_MIXED_PRECISION"
# The trackers that have an extra of their own in pyproject.toml; the others install by their name.
TRACKER_EXTRAS = ("tensorboard", "wandb", "mlflow")


def resolve_precision(precision: str, environment: Mapping[str, str] | None = None) -> str:
    """The precision a run trains in: the recipe's; with `auto`, the one Accelerate was told
    (ACCELERATE_MIXED_PRECISION), else bf16 on a GPU that has it, fp16 on another GPU, none on CPU."""
    if precision != "auto":
        return precision
    told = _told_precision(environment)
    if told:
        return told
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def accelerator_precision(precision: str, environment: Mapping[str, str] | None = None) -> str | None:
    """What the Accelerator is given: None when Accelerate was told a precision and the recipe says
    `auto`, so that Accelerate reads it itself (as `accelerate launch` means it)."""
    return None if precision == "auto" and _told_precision(environment) else resolve_precision(precision, environment)


def _told_precision(environment: Mapping[str, str] | None) -> str | None:
    """The precision `accelerate launch --mixed_precision` (or its config) asked for. `accelerate
    launch` without one exports "no": that is no choice, so `auto` still picks bf16 on a GPU."""
    told = ((os.environ if environment is None else environment).get(ACCELERATE_PRECISION) or "").lower()
    return told if told and told != "no" else None


# ----------------------------------------------------------------------------- threads


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which SLURM, taskset and containers
    set), or every core where the system has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(configured: int | None, cores: int, local_processes: int, environment_threads: int | None = None) -> int:
    """torch's intra-op threads for one process: `training.threads` when set; else the threads the
    user asked for with OMP_NUM_THREADS (`environment_threads`); else the available cores divided
    among the processes started on this machine, at least 1 — two processes that each take every
    core run each step several times slower than one alone."""
    if configured is not None:
        return configured
    if environment_threads is not None:
        return max(1, environment_threads)
    return max(1, cores // max(1, local_processes))


def environment_threads(environment: Mapping[str, str]) -> int | None:
    """OMP_NUM_THREADS as the user's choice. Under a launcher (torchrun and `accelerate launch` set
    LOCAL_WORLD_SIZE) it is the launcher's own default of 1 per process, not a choice, so brewer
    divides the cores itself; `training.threads` still decides there."""
    value = environment.get("OMP_NUM_THREADS", "")
    if "LOCAL_WORLD_SIZE" in environment or not value.strip().isdigit():
        return None
    return int(value)


def apply_threads(configured: int | None, environment: Mapping[str, str] | None = None) -> int:
    """Choose the thread count (choose_threads) and set it; returns it (recorded in summary.json)."""
    environment = os.environ if environment is None else environment
    local_processes = int(environment.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = choose_threads(configured, available_cores(), local_processes, environment_threads(environment))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# ----------------------------------------------------------------------------- the Accelerator


def check_trackers(training: Any, source: Any = None) -> None:
    """Every tracker `training.report_to` names is installed — checked before anything trains,
    since Accelerate leaves out a tracker whose package is missing without a word."""
    installed = {str(tracker) for tracker in get_available_trackers()} if training.report_to else set()
    missing = [name for name in training.report_to if name not in installed]
    if missing:
        commands = [f'pip install "brewer[{name}]"' if name in TRACKER_EXTRAS else f"pip install {name}" for name in missing]
        one = len(missing) == 1
        raise BrewerError(
            f"{source or 'the recipe'}: training.report_to: {', '.join(missing)} {'is' if one else 'are'} not "
            f"installed — run `{'` and `'.join(commands)}`, or remove {'it' if one else 'them'} from training.report_to"
        )


def create_accelerator(run: Run, precision: str | None) -> Accelerator:
    """The run's Accelerator: device, precision, accumulation, its trackers (logs under
    <run>/logs/), and DDP looking for unused parameters only for distillers that leave some."""
    training = run.recipe.training
    check_trackers(training, run.recipe.path)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=training.gradient_accumulation,
        step_scheduler_with_optimizer=False,
        log_with=list(training.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(run.run_dir), logging_dir=str(run.run_dir / "logs")),
        # Searching the graph for unused parameters costs every step and warns on every launch.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=run.distiller.leaves_parameters_unused)],
    )
    # An FSDP configuration that Accelerate did not turn on (CPU processes) is refused, not ignored.
    check_fsdp_active(accelerator)
    return accelerator


def tracker_config(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved recipe as trackers take a configuration: one scalar per dotted path (lists as
    their JSON text, nulls as "null")."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(tracker_config(value, path))
        elif isinstance(value, (list, tuple)):
            flat[path] = "[" + ", ".join(str(item) for item in value) + "]"
        else:
            flat[path] = "null" if value is None else value
    return flat


# ----------------------------------------------------------------------------- the schedule


def learning_rate_schedule(optimizer: torch.optim.Optimizer, name: str, warmup: float, total_steps: int) -> Any:
    """`training.lr_schedule` through transformers.get_scheduler, warmup a fraction of the steps
    (`linear` is get_linear_schedule_with_warmup, as before the setting existed)."""
    return get_scheduler(name, optimizer, num_warmup_steps=int(warmup * total_steps), num_training_steps=total_steps)
