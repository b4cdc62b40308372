"""The one training loop: Accelerate (device, DDP, mixed precision), gradient accumulation,
clipping, AdamW with warmup and linear decay, periodic evaluation keeping the best student,
checkpoints and resume (brewer_cli.checkpoints), metrics.jsonl and a progress bar; a guard against
divergence (non-finite losses or gradients: stop, or skip the batch) and a clean stop on
SIGINT / SIGTERM (a checkpoint, then exit 130 / 143).

The loop knows nothing of a kind of distillation: it asks the distiller (brewer_cli.distillers)
for its batches, its loss, its evaluation and its export.
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_linear_schedule_with_warmup

from brewer_cli.checkpoints import (
    LoopState,
    append_line,
    complete_checkpoints,
    export_guarded,
    load_latest_checkpoint,
    save_checkpoint,
)
from brewer_cli.errors import DivergenceError, InterruptedRun
from brewer_cli.guards import DivergenceGuard, StopSignals, json_line
from brewer_cli.run import Run


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class TrainingLoop:
    """Runs a distiller: optimizer, schedule, accumulation, clipping, eval, checkpoints, resume."""

    def __init__(self, run: Run, resume: bool, console: Any = None):
        self.run = run
        self.distiller = run.distiller
        self.training = run.recipe.training
        self.resume = resume
        self.console = console
        self.precision = resolve_precision(self.training.precision)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.precision,
            gradient_accumulation_steps=self.training.gradient_accumulation,
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.run_dir: Path = run.run_dir
        self.state = LoopState()
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.total_steps = 1
        # fp16's grad scaler skips the steps whose gradients overflow: not divergence.
        self.guard = DivergenceGuard(self.accelerator.device, self.training, scaled=self.accelerator.scaler is not None)
        self.signals = StopSignals()
        self.agreed_signal = 0  # a stop signal every process has seen (set by `_check`)
        self.checked_at: int | None = None  # the step of the last `_check`
        # Loss terms summed on the device since the last log line: reading them (float()) waits
        # for the device, so that happens only when a line is logged, not on every step.
        self.running: dict[str, torch.Tensor] = {}
        self.count = 0  # micro-batches in `running`

    # -- setup ----------------------------------------------------------------------------------

    def _seed(self) -> None:
        seed = self.training.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, parameter in self.distiller.named_parameters():
            if not parameter.requires_grad:
                continue
            # Biases and LayerNorm weights are not decayed (BERT's recipe).
            (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": self.training.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self.accelerator.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=self.training.learning_rate, fused=fused)

    # -- the run --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        accelerator = self.accelerator
        self._seed()
        loader, sampler = self.distiller.train_loader()
        for loaded in self.distiller.teachers:
            loaded.model.to(accelerator.device)
            loaded.model.eval()
            loaded.model.requires_grad_(False)
        optimizer = self._optimizer()
        distiller, optimizer, loader = accelerator.prepare(self.distiller, optimizer, loader)
        steps_per_epoch = max(1, math.ceil(len(loader) / self.training.gradient_accumulation))
        total_steps = self.training.max_steps or max(1, math.ceil(self.training.epochs * steps_per_epoch))
        self.distiller.total_steps = self.total_steps = total_steps
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.training.warmup * total_steps), total_steps)
        if self.resume:
            self.state, latest = load_latest_checkpoint(
                self.run_dir / "checkpoints", accelerator.unwrap_model(distiller), optimizer, scheduler, accelerator.device
            )
            self._log({"step": self.state.step, "resumed_from": str(latest)})
            # The skip count goes on from the checkpoint; "in a row" starts again (its batches are redone).
            self.guard.skipped = self.state.skipped_batches
        self.distiller.current_step = self.state.step
        # Opened once the step to start from is known: on resume only entries filled before it count.
        self.distiller.open_teacher_cache(
            self.run_dir, self.resume, self.state.step, total_steps, steps_per_epoch, accelerator, self.precision
        )
        if self.training.compile_backend is not None:
            self.distiller.compile_student(self.training.compile_backend)

        start = time.time()
        progress = _Progress(self.training.progress and accelerator.is_main_process, total_steps, self.console)
        progress.advance_to(self.state.step)
        try:
            with self.signals:
                self._train(distiller, optimizer, scheduler, loader, sampler, steps_per_epoch, progress)
        finally:
            progress.close()
        accelerator.wait_for_everyone()
        return self._finish(time.time() - start)

    def _train(self, distiller, optimizer, scheduler, loader, sampler, steps_per_epoch: int, progress: _Progress) -> None:
        accelerator, guard, total_steps = self.accelerator, self.guard, self.total_steps
        eval_every = self.training.eval_every or steps_per_epoch
        save_every = self.training.save_every or eval_every
        # `pending`: the current optimizer step's loss terms, added to `running` once the step is
        # taken (a skipped batch's are left out).
        self.running, self.count = {}, 0
        pending: dict[str, torch.Tensor] = {}
        pending_count = 0
        finished = self.state.step >= total_steps
        distiller.train()
        while not finished:
            skip = self.state.batch_in_epoch
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            # Accelerate's loaders re-set the sampler's epoch from their own counter on every
            # iteration; setting it on the loader keeps both on the loop's epoch (also on resume).
            for target in (epoch_loader, sampler):
                if hasattr(target, "set_epoch"):
                    target.set_epoch(self.state.epoch)
            for batch in epoch_loader:
                self.state.batch_in_epoch += 1
                skipped = False
                with accelerator.accumulate(distiller):
                    parts = distiller(batch)
                    accelerator.backward(parts["loss"])
                    guard.losses(parts)
                    if accelerator.sync_gradients:
                        guard.gradients(self._gradient_norm(distiller))
                        skipped = guard.skip_this_batch()
                        if skipped:
                            # No gradients at all: AdamW then leaves every weight and its moments
                            # as they are (zero gradients would still move them by momentum and decay).
                            optimizer.zero_grad(set_to_none=True)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in parts.items():
                    pending[name] = pending[name] + value.detach() if name in pending else value.detach()
                pending_count += 1
                if not accelerator.sync_gradients:
                    continue
                # A skipped batch still counts as a step: the schedule and the step counter move on,
                # so the run's length, its checkpoints' steps and a resume stay those of a plain run.
                scheduler.step()
                self.state.step += 1
                step = self.distiller.current_step = self.state.step
                if skipped:
                    self._skipped_batch(*guard.step_problems())
                else:
                    for name, value in pending.items():
                        self.running[name] = self.running[name] + value if name in self.running else value
                    self.count += pending_count
                guard.end_step(step, accelerator.optimizer_step_was_skipped)
                pending, pending_count = {}, 0
                learning_rate = scheduler.get_last_lr()[0]
                last = step >= total_steps
                if step % self.training.log_every == 0 or last:
                    averages = self._window_averages()
                    progress.update(step, learning_rate, averages.get("loss"))
                    record = {"step": step, "epoch": self.state.epoch, "learning_rate": learning_rate, **averages}
                    if guard.skip_batch:
                        record["skipped_batches"] = guard.skipped
                    self._log(record)
                    self._check()
                else:
                    progress.update(step, learning_rate)
                saved = step % save_every == 0 or last
                if self.run.data.eval is not None and (step % eval_every == 0 or last):
                    self._evaluate_and_keep_best()
                    distiller.train()
                if saved:
                    self._save_checkpoint(optimizer, scheduler)
                stop_signal = self._stop_signal()
                if stop_signal:
                    if not saved:
                        self._save_checkpoint(optimizer, scheduler)
                    raise InterruptedRun(self._interrupted_message(stop_signal), stop_signal)
                if last:
                    finished = True
                    break
            else:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0

    def _gradient_norm(self, distiller) -> Any:
        """The gradients' total norm, clipped to max_grad_norm when set. Without it the norm is
        still measured (clipping to infinity multiplies every gradient by exactly 1), since a
        non-finite gradient is divergence too; Accelerate unscales fp16 gradients first either way."""
        return self.accelerator.clip_grad_norm_(distiller.parameters(), self.training.max_grad_norm or math.inf)

    # -- divergence and stop signals ------------------------------------------------------------

    def _check(self) -> None:
        """Read the divergence guard (and, with several processes, whether any received a stop
        signal) — every process at the same steps, so they agree. Raises DivergenceError."""
        if self.checked_at == self.state.step:
            return
        self.checked_at = self.state.step
        first_step, gradient, self.agreed_signal = self.guard.read(self.signals.received)
        if first_step is not None:
            # The window that diverged gets its line (non-finite values as null), if not logged yet.
            if self.running:
                self._log({"step": self.state.step, "epoch": self.state.epoch, **self._window_averages()})
            raise DivergenceError(self._divergence_message(first_step, gradient))

    def _window_averages(self) -> dict[str, float]:
        """The loss terms' averages since the last log line (reads the device), and a new window."""
        averages = {name: float(value) / max(self.count, 1) for name, value in self.running.items()}
        self.running, self.count = {}, 0
        return averages

    def _stop_signal(self) -> int:
        """The stop signal to honour after this step (0: none). One process reads its own flag;
        several agree through `_check`: at every step on CPUs (cheap), on GPUs only at the steps
        that read the device anyway (log lines, evaluations, checkpoints)."""
        if self.accelerator.num_processes == 1:
            return self.signals.received
        if self.accelerator.device.type == "cpu":
            self._check()
        return self.agreed_signal

    def _refuse_non_finite_weights(self, target: Path) -> None:
        """Right before best/, final/ or a checkpoint is written: one reduction on the device.
        Every process checks (their weights are equal), so a refusal leaves none waiting."""
        parameters = self.accelerator.unwrap_model(self.distiller).parameters()
        # The largest |weight| of each tensor (NaN if it holds one), then of them all: one read.
        largest = [
            torch.linalg.vector_norm(parameter.detach(), math.inf).float() for parameter in parameters if parameter.numel()
        ]
        if not torch.isfinite(torch.stack(largest).max()):
            raise DivergenceError(
                f"{target}: not written — the {self.run.role}'s weights at step {self.state.step} are not finite "
                f"(NaN or infinite); {self._kept_checkpoint()}. {self._fixes()}"
            )

    def _skipped_batch(self, parts: list[str], gradient: bool) -> None:
        guard = self.guard
        self._log({"step": self.state.step, "skipped_batch": True, "non_finite": parts + ["grad_norm"] * gradient})
        if guard.in_a_row >= guard.patience:
            first = self.state.step - guard.in_a_row + 1
            raise DivergenceError(
                f"{self.run_dir}: training diverged — {guard.in_a_row} batches in a row (steps {first} to "
                f"{self.state.step}) had non-finite values (at step {self.state.step}: {_non_finite(parts, gradient)}) "
                f"and training.nan_patience is {guard.patience}; nothing non-finite was written and "
                f"{self._kept_checkpoint()}. {self._fixes()}"
            )

    def _divergence_message(self, first_step: int, gradient: bool) -> str:
        found = "" if first_step == self.state.step else f" (found at the check after step {self.state.step})"
        return (
            f"{self.run_dir}: training diverged at step {first_step} of {self.total_steps}{found} — non-finite "
            f"{_non_finite(self.guard.first_problems(), gradient)}; nothing non-finite was written and "
            f"{self._kept_checkpoint()}. {self._fixes()}"
        )

    def _fixes(self) -> str:
        training, source = self.training, self.run.recipe.path or "the recipe"
        clip = (
            "set training.max_grad_norm (e.g. 1.0)"
            if not training.max_grad_norm
            else f"lower training.max_grad_norm (now {training.max_grad_norm:g})"
        )
        fixes = [f"lower training.learning_rate (now {training.learning_rate:g})", clip]
        if self.precision != "no":
            fixes.append(f"train in fp32 with training.precision: no (now {self.precision})")
        if not self.guard.skip_batch:
            fixes.append("set training.on_nan: skip_batch to skip batches with non-finite values")
        return (
            f"In {source}: {', '.join(fixes[:-1])} or {fixes[-1]}; then start again under another name "
            f"(--set name=…) or after removing {self.run_dir}"
        )

    def _kept_checkpoint(self) -> str:
        root = self.run_dir / "checkpoints"
        kept = sorted(complete_checkpoints(root), key=lambda path: int(path.name.split("-")[1])) if root.is_dir() else []
        return f"the newest checkpoint, {kept[-1]}, is the last good one" if kept else "no checkpoint had been written yet"

    def _interrupted_message(self, number: int) -> str:
        recipe = self.run.recipe.path or "RECIPE"
        return (
            f"{self.run_dir}: {signal.Signals(number).name} received — training stopped after step "
            f"{self.state.step} of {self.total_steps} and wrote the checkpoint "
            f"{self.run_dir / 'checkpoints' / f'step-{self.state.step}'}. Continue the run with "
            f"`brewer distill {recipe} --resume` (the same --set and --output-dir options)"
        )

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluate_and_keep_best(self) -> None:
        # A diverged student is neither evaluated nor kept as the best.
        self._check()
        metrics = self.distiller.evaluate(self.accelerator)
        self.last_eval = (self.state.step, metrics)
        primary = metrics[self.run.task.primary_metric]
        self._log({"step": self.state.step, "eval": metrics})
        better = self.state.best_metric is None or (
            primary > self.state.best_metric if self.run.task.greater_is_better else primary < self.state.best_metric
        )
        self.state.history.append({"step": self.state.step, **metrics})
        if better:
            self.state.best_metric = primary
            self.state.best_step = self.state.step
            self._refuse_non_finite_weights(self.run_dir / "best")
            if self.accelerator.is_main_process:
                self._save_student(self.run_dir / "best")

    def _finish(self, wall_time: float) -> dict[str, Any]:
        self._check()
        student_metrics = None
        if self.run.data.eval is not None:
            # The last step was evaluated already unless the run resumed from its final checkpoint.
            if self.last_eval is not None and self.last_eval[0] == self.state.step:
                student_metrics = self.last_eval[1]
            else:
                student_metrics = self.distiller.evaluate(self.accelerator)
        self._refuse_non_finite_weights(self.run_dir / "final")
        if self.accelerator.is_main_process:
            self._save_student(self.run_dir / "final")
        return {
            "student_metrics": student_metrics,
            "best": {"step": self.state.best_step, "metric": self.state.best_metric},
            "steps": self.state.step,
            "skipped_batches": self.guard.skipped,
            "wall_time_s": wall_time,
            "precision": self.precision,
            "processes": self.accelerator.num_processes,
        }

    # -- output ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        line = json_line({"time": round(time.time(), 3), **record})
        # Guarded: a full disk ends the run with a clear error, never half a line.
        append_line(self.run_dir / "metrics.jsonl", line, self.run_dir)

    def _save_student(self, directory: Path) -> None:
        # Guarded: a full disk removes the partial export and ends the run with a clear error.
        distiller = self.accelerator.unwrap_model(self.distiller)
        export_guarded(directory, distiller.export_student, distiller.student, self.run_dir)

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        # The last good checkpoint stays: a refusal comes before anything is written or rotated out.
        self._check()
        self._refuse_non_finite_weights(self.run_dir / "checkpoints" / f"step-{self.state.step}")
        # Every process writes the teacher outputs it cached (teacher_cache/process-<rank>/).
        self.distiller.persist_teacher_cache()
        self.state.skipped_batches = self.guard.skipped
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.run_dir / "checkpoints",
                self.accelerator.unwrap_model(self.distiller),
                optimizer,
                scheduler,
                self.state,
                self.training.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()


def _non_finite(parts: list[str], gradient: bool) -> str:
    """`loss parts kd, loss and the gradient norm`: what went non-finite, for a message."""
    what = [f"loss part{'s' if len(parts) > 1 else ''} {', '.join(parts)}"] if parts else []
    what += ["the gradient norm"] if gradient else []
    return " and ".join(what) or "values on another process"


class _Progress:
    """A rich progress bar with loss, learning rate and ETA; silent off the main process."""

    def __init__(self, enabled: bool, total: int, console: Any):
        self.enabled = enabled
        if not enabled:
            return
        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, loss=float("nan"), lr=0.0)

    def advance_to(self, step: int) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, learning_rate: float, loss: float | None = None) -> None:
        """`loss`: the average of the last logged steps; None keeps the one shown."""
        if self.enabled:
            fields = {"lr": learning_rate} if loss is None else {"lr": learning_rate, "loss": loss}
            self.bar.update(self.task, completed=step, **fields)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
