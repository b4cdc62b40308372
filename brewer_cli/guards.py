"""What keeps a training run safe, for the loop (brewer_cli.loop): the divergence guard (non-finite
losses and gradient norms, found on the device without a per-step wait), the SIGINT / SIGTERM
handlers that let a run stop cleanly after a step, and strict JSON lines for metrics.jsonl."""

from __future__ import annotations

import json
import math
import signal
import threading
from typing import Any

import torch
import torch.distributed as distributed


def json_line(record: dict[str, Any]) -> str:
    """One metrics.jsonl line, strict JSON: a non-finite number is written as null and its dotted
    path listed under `non_finite` (allow_nan=False: a bare NaN can never reach the file)."""
    non_finite: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            non_finite.append(path)
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{path}.{index}") for index, item in enumerate(value)]
        return value

    cleaned = clean(record, "")
    if non_finite:
        cleaned["non_finite"] = [*cleaned.get("non_finite", []), *non_finite]
    return json.dumps(cleaned, allow_nan=False)


_NO_STEP = 2**62  # "no non-finite step yet": above any step, so a minimum over processes finds the first


class DivergenceGuard:
    """Finds a non-finite loss (or loss part) or gradient norm on the step it happens without the
    host waiting for the device on every step: each step adds a few device operations that keep
    the first non-finite step, and which parts were non-finite then, in device tensors; `read` is
    called with the logged values and before best/, a checkpoint or final/ is written.

    `on_nan: skip_batch` must decide before the optimizer step whether to take it, so that mode
    reads one flag per optimizer step (a device→host copy): the price of skipping exactly the bad
    batch. Zeroing the gradients on the device instead would still let AdamW move every weight by
    its momentum and weight decay, which is not a skipped batch."""

    def __init__(self, device: Any, training: Any, scaled: bool):
        self.device = device
        self.skip_batch = training.on_nan == "skip_batch"
        self.patience = training.nan_patience
        self.scaled = scaled
        self.first_step = torch.full((), _NO_STEP, dtype=torch.int64, device=device)
        self.first_gradient = torch.zeros((), dtype=torch.bool, device=device)
        # Keyed by the loss parts' names (a distiller returns the same parts on every batch).
        self.first_parts: dict[tuple[str, ...], torch.Tensor] = {}
        self.step_parts: dict[tuple[str, ...], torch.Tensor] = {}  # this optimizer step's micro-batches
        self.step_gradient: torch.Tensor | None = None
        self.skipped = 0
        self.in_a_row = 0

    def losses(self, parts: dict[str, torch.Tensor]) -> None:
        names = tuple(parts)
        bad = ~torch.isfinite(torch.stack([value.detach().float().reshape(()) for value in parts.values()]))
        previous = self.step_parts.get(names)
        self.step_parts[names] = bad if previous is None else previous | bad

    def gradients(self, norm: Any) -> None:
        # DeepSpeed and some wrappers return no norm: then only the losses are watched.
        self.step_gradient = None if norm is None else ~torch.isfinite(torch.as_tensor(norm, device=self.device))

    def _step_bad(self, gradient: torch.Tensor | None) -> torch.Tensor:
        flags = [bad.any() for bad in self.step_parts.values()] + ([gradient] if gradient is not None else [])
        return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool, device=self.device)

    def skip_this_batch(self) -> bool:
        """skip_batch: whether this optimizer step has non-finite values (agreed by all processes);
        under fp16 a gradient overflow alone is left to the grad scaler, which skips it itself."""
        if not self.skip_batch:
            return False
        bad = self._step_bad(None if self.scaled else self.step_gradient).to(torch.int64)
        skipped = bool(_over_processes(bad, distributed.ReduceOp.MAX))
        self.skipped += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        return skipped

    def step_problems(self) -> tuple[list[str], bool]:
        """This step's non-finite loss parts and whether its gradient norm was non-finite (reads
        the device: called for a skipped batch only)."""
        return _names(self.step_parts), self.step_gradient is not None and bool(self.step_gradient)

    def end_step(self, step: int, scaler_skipped: bool) -> None:
        if not self.skip_batch:
            gradient = None if scaler_skipped else self.step_gradient
            first = self._step_bad(gradient) & (self.first_step == _NO_STEP)
            self.first_step = torch.where(first, step, self.first_step)
            if gradient is not None:
                self.first_gradient = self.first_gradient | (first & gradient)
            for names, bad in self.step_parts.items():
                self.first_parts[names] = torch.where(first, bad, self.first_parts.get(names, torch.zeros_like(bad)))
        self.step_parts, self.step_gradient = {}, None

    def read(self, signal_number: int) -> tuple[int | None, bool, int]:
        """(first non-finite step or None, whether the gradient norm was non-finite then, the
        stop signal), agreed by all processes in one reduction: this is where the host waits."""
        values = torch.stack(
            [self.first_step, -self.first_gradient.to(torch.int64), torch.tensor(-signal_number, device=self.device)]
        )
        first, gradient, negated_signal = _over_processes(values, distributed.ReduceOp.MIN).tolist()
        return (None if first == _NO_STEP else first), gradient < 0, -negated_signal

    def first_problems(self) -> list[str]:
        """The loss parts that were non-finite at the first non-finite step (on this process)."""
        return _names(self.first_parts)


def _names(flags: dict[tuple[str, ...], torch.Tensor]) -> list[str]:
    found: list[str] = []
    for names, bad in flags.items():
        found += [name for name, flag in zip(names, bad.tolist()) if flag and name not in found]
    return found


def _over_processes(tensor: torch.Tensor, operation: Any) -> torch.Tensor:
    if distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1:
        tensor = tensor.clone()
        distributed.all_reduce(tensor, op=operation)
    return tensor


class StopSignals:
    """SIGINT / SIGTERM while training: the first asks the loop to stop after the current optimizer
    step (it writes a checkpoint, then exits 130 / 143); the handlers that were there before come
    back at once, so a second signal stops the process the usual way (KeyboardInterrupt for
    SIGINT, the system's default for SIGTERM). They are restored when training ends, too."""

    NUMBERS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        # Only the main thread may set handlers; a run driven from another thread keeps the defaults.
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in self.NUMBERS}
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = self.received or number
        self._restore()

    def _restore(self) -> None:
        for number, handler in self.previous.items():
            # None: a handler not set from Python, which cannot be put back; the default stands in.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def __exit__(self, *exception: Any) -> None:
        self._restore()
        self.previous = {}


def non_finite(parts: list[str], gradient: bool) -> str:
    """`loss parts kd, loss and the gradient norm`: what went non-finite, for a message."""
    what = [f"loss part{'s' if len(parts) > 1 else ''} {', '.join(parts)}"] if parts else []
    what += ["the gradient norm"] if gradient else []
    return " and ".join(what) or "values on another process"


def divergence_fixes(training: Any, precision: str, skipping: bool, source: Any, run_dir: Any) -> str:
    """What to change in the recipe after a divergence, for the message that stops the run."""
    clip = (
        "set training.max_grad_norm (e.g. 1.0)"
        if not training.max_grad_norm
        else f"lower training.max_grad_norm (now {training.max_grad_norm:g})"
    )
    fixes = [f"lower training.learning_rate (now {training.learning_rate:g})", clip]
    if precision != "no":
        fixes.append(f"train in fp32 with training.precision: no (now {precision})")
    if not skipping:
        fixes.append("set training.on_nan: skip_batch to skip batches with non-finite values")
    return (
        f"In {source or 'the recipe'}: {', '.join(fixes[:-1])} or {fixes[-1]}; then start again under another name "
        f"(--set name=…) or after removing {run_dir}"
    )
