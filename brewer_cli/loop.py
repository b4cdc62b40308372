"""The one training loop: Accelerate (device, DDP, mixed precision), gradient accumulation,
clipping, AdamW with warmup and linear decay, periodic evaluation keeping the best student,
checkpoints and resume (brewer_cli.checkpoints), metrics.jsonl and a progress bar.

The loop knows nothing of a kind of distillation: it asks the distiller (brewer_cli.distillers)
for its batches, its loss, its evaluation and its export.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_linear_schedule_with_warmup

from brewer_cli.checkpoints import LoopState, load_latest_checkpoint, save_checkpoint
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
        self.distiller.total_steps = total_steps
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.training.warmup * total_steps), total_steps)
        eval_every = self.training.eval_every or steps_per_epoch
        save_every = self.training.save_every or eval_every
        if self.resume:
            self.state, latest = load_latest_checkpoint(
                self.run_dir / "checkpoints", accelerator.unwrap_model(distiller), optimizer, scheduler, accelerator.device
            )
            self._log({"step": self.state.step, "resumed_from": str(latest)})
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
        # Loss terms summed on the device since the last log line: reading them (float()) waits
        # for the device, so that happens only when a line is logged, not on every step.
        running: dict[str, torch.Tensor] = {}
        count = 0
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
                with accelerator.accumulate(distiller):
                    parts = distiller(batch)
                    accelerator.backward(parts["loss"])
                    if accelerator.sync_gradients and self.training.max_grad_norm:
                        accelerator.clip_grad_norm_(distiller.parameters(), self.training.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in parts.items():
                    running[name] = running[name] + value.detach() if name in running else value.detach()
                count += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                self.state.step += 1
                self.distiller.current_step = self.state.step
                learning_rate = scheduler.get_last_lr()[0]
                if self.state.step % self.training.log_every == 0 or self.state.step == total_steps:
                    averages = {name: float(value) / max(count, 1) for name, value in running.items()}
                    progress.update(self.state.step, learning_rate, averages.get("loss"))
                    self._log({"step": self.state.step, "epoch": self.state.epoch, "learning_rate": learning_rate, **averages})
                    running, count = {}, 0
                else:
                    progress.update(self.state.step, learning_rate)
                last = self.state.step >= total_steps
                if self.run.data.eval is not None and (self.state.step % eval_every == 0 or last):
                    self._evaluate_and_keep_best()
                    distiller.train()
                if self.state.step % save_every == 0 or last:
                    self._save_checkpoint(optimizer, scheduler)
                if last:
                    finished = True
                    break
            else:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
        progress.close()
        accelerator.wait_for_everyone()
        return self._finish(time.time() - start)

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluate_and_keep_best(self) -> None:
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
            if self.accelerator.is_main_process:
                self._save_student(self.run_dir / "best")

    def _finish(self, wall_time: float) -> dict[str, Any]:
        student_metrics = None
        if self.run.data.eval is not None:
            # The last step was evaluated already unless the run resumed from its final checkpoint.
            if self.last_eval is not None and self.last_eval[0] == self.state.step:
                student_metrics = self.last_eval[1]
            else:
                student_metrics = self.distiller.evaluate(self.accelerator)
        if self.accelerator.is_main_process:
            self._save_student(self.run_dir / "final")
        return {
            "student_metrics": student_metrics,
            "best": {"step": self.state.best_step, "metric": self.state.best_metric},
            "steps": self.state.step,
            "wall_time_s": wall_time,
            "precision": self.precision,
            "processes": self.accelerator.num_processes,
        }

    # -- output ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"time": round(time.time(), 3), **record}
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _save_student(self, directory: Path) -> None:
        self.accelerator.unwrap_model(self.distiller).export_student(directory)

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        # Every process writes the teacher outputs it cached (teacher_cache/process-<rank>/).
        self.distiller.persist_teacher_cache()
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
