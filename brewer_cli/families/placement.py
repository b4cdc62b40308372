"""Where a teacher runs and in which precision: `teacher.device` and `teacher.dtype`.

A large teacher need not sit beside the student: it may run on another GPU (`cuda:1`), or on the
CPU while the GPU holds the student, and it may load in bfloat16 or float16 while the student keeps
fp32 master weights (the losses cast what they read to fp32). Every place that moves a teacher asks
`place_teacher`, and every teacher forward goes through `teacher_features`, which moves the batch
to the teacher's device and the outputs back to the batch's (the student's) — one rule instead of
a `.to(device)` at each call site.

The teacher is never part of the distiller's module tree (brewer_cli/distillers/base.py), so DDP
and FSDP wrap, shard and save the student only; the teacher stays a plain, frozen module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from brewer_cli.errors import ModelError
from brewer_cli.families.loading import LoadedModel
from brewer_cli.features import FeatureNeeds, Features
from brewer_cli.memory import return_freed_memory

# `teacher.dtype` → what transformers' from_pretrained takes as `dtype` ("auto": as saved).
DTYPES: dict[str, Any] = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_dtype(name: str) -> Any:
    """The `dtype` argument of from_pretrained for `teacher.dtype`."""
    return DTYPES[name]


def device_problem(device: str) -> str | None:
    """Why `device` (a `teacher.device` value) cannot be used on this machine, or None."""
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return f"{device!r} needs a CUDA GPU, but this machine has none (torch.cuda.is_available() is False)"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"{device!r} names GPU {index}, but this machine has {count} (cuda:0 to cuda:{count - 1})"
    return None


def check_device(device: str, where: str) -> None:
    """Before any weight is read: a `teacher.device` this machine does not have is the user's to fix."""
    problem = device_problem(device)
    if problem is not None:
        raise ModelError(f"{where}: {problem} — use device: auto (the training device) or cpu")


def teacher_device(teacher: LoadedModel, default: Any) -> torch.device:
    """The device `teacher` runs on: its recipe's `device`, or with `auto` the training device."""
    return torch.device(default if teacher.device == "auto" else teacher.device)


def place_teacher(teacher: LoadedModel, default: Any) -> torch.device:
    """Move the teacher to its device, frozen and in eval mode; returns the device."""
    device = teacher_device(teacher, default)
    teacher.model.to(device)
    teacher.model.eval()
    teacher.model.requires_grad_(False)
    return device


def release_teacher(teacher: LoadedModel) -> None:
    """Let go of a teacher's weights once nothing will run it again (its outputs all sit in a
    prefilled teacher-output store): every parameter and buffer becomes a meta tensor of its shape
    and dtype and the memory goes back to the system — the teacher's size, 87 MiB for MiniLM-L6 and
    GiBs for a large teacher, which a run would otherwise carry through training for nothing. The
    module itself stays, so the summary still reads its architecture, parameter count and FLOPs;
    tied parameters stay one object (counted once), and a forward fails on meta tensors rather
    than computing on nothing."""
    replaced: dict[int, torch.nn.Parameter] = {}
    # The originals stay referenced until every tie is replaced, so that no id is reused meanwhile.
    originals = []
    for module in teacher.model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) not in replaced:
                originals.append(parameter)
                replaced[id(parameter)] = torch.nn.Parameter(torch.empty_like(parameter, device="meta"), requires_grad=False)
            module._parameters[name] = replaced[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = buffer.to("meta")
    del originals, replaced
    return_freed_memory()


def model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def copied_to(value: Any, device: torch.device) -> Any:
    """`value` (tensors in tuples, lists, dicts, dataclasses such as Features) copied to `device`.
    A copy, never the tensor itself: the teacher ran under inference mode, and inference tensors
    cannot be saved for backward, while a copy made outside inference mode can."""
    if isinstance(value, torch.Tensor):
        return value.to(device, copy=True)
    if isinstance(value, tuple):
        return tuple(copied_to(item, device) for item in value)
    if isinstance(value, list):
        return [copied_to(item, device) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**{name: copied_to(getattr(value, name), device) for name in value.__dataclass_fields__})
    if isinstance(value, dict):
        return {key: copied_to(item, device) for key, item in value.items()}
    return value


def teacher_features(
    teacher: LoadedModel,
    batch: dict[str, torch.Tensor],
    needs: FeatureNeeds | None = None,
    logits_of: Callable[[Any], Any] | None = None,
) -> Features:
    """The teacher's features on `batch`: computed on the teacher's device under inference mode,
    returned on the batch's device (where the student is) in the teacher's dtype."""
    home = batch["input_ids"].device
    device = model_device(teacher.model)
    inputs = batch if device == home else {name: _moved(value, device) for name, value in batch.items()}
    with torch.inference_mode():
        features = teacher.family.features(teacher.model, inputs, needs or FeatureNeeds(), logits_of=logits_of)
    return copied_to(features, home)


def _moved(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
