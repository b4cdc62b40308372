"""The one training loop: Accelerate (device, DDP, mixed precision), gradient accumulation,
clipping, AdamW with warmup and a learning-rate schedule (brewer_cli.training_setup), periodic
evaluation keeping the best student (brewer_cli.best_checkpoint: final/ is the best one when
`load_best_at_end`), checkpoints and resume (brewer_cli.checkpoints), metrics.jsonl, trackers,
throughput and the step display (brewer_cli.reporting); a guard against divergence (non-finite
losses or gradients: stop, or skip the batch) and a clean stop on SIGINT / SIGTERM (a checkpoint,
then exit 130 / 143).

The loop knows nothing of a kind of distillation: it asks the distiller (brewer_cli.distillers)
for its batches, its loss, its evaluation and its export.
"""

from __future__ import annotations

import itertools
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType, gather_object, send_to_device

from brewer_cli.best_checkpoint import BestMetric, copy_to_final, metrics_at
from brewer_cli.checkpoints import (
    LoopState,
    complete_checkpoints,
    export_guarded,
    load_latest_checkpoint,
    save_checkpoint,
    student_weights_of,
)
from brewer_cli.errors import BrewerError, DivergenceError, InterruptedRun
from brewer_cli.families.placement import place_teacher
from brewer_cli.guards import DivergenceGuard, StopSignals, divergence_fixes, non_finite
from brewer_cli.reporting import PrefillDisplay, Reporter, StepDisplay, Throughput
from brewer_cli.run import Run
from brewer_cli.sharding import full_optimizer_state, full_state, gathered_for_forward, is_sharded, weights_finite
from brewer_cli.training_setup import accelerator_precision, create_accelerator, learning_rate_schedule, resolve_precision

__all__ = ["TrainingLoop", "resolve_precision"]

# The step display under the name the loop has always called it by (tests patch its `update`,
# which the loop calls once a step).
_Progress = StepDisplay


class TrainingLoop:
    """Runs a distiller: optimizer, schedule, accumulation, clipping, eval, checkpoints, resume."""

    def __init__(self, run: Run, resume: bool, console: Any = None):
        self.run = run
        self.distiller = run.distiller
        self.training = run.recipe.training
        self.resume = resume
        self.console = console
        self.best_metric = BestMetric.of(run)
        self.accelerator = create_accelerator(run, accelerator_precision(self.training.precision))
        # What Accelerate trains in: the recipe's, or with `auto` the one `accelerate launch` was told.
        self.precision = self.accelerator.mixed_precision
        self.reporter = Reporter(run, self.accelerator, console)
        self.run_dir: Path = run.run_dir
        self.state = LoopState()
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.total_steps = 1
        # fp16's grad scaler skips the steps whose gradients overflow: not divergence.
        self.guard = DivergenceGuard(self.accelerator.device, self.training, scaled=self.accelerator.scaler is not None)
        self.signals = StopSignals()
        self.agreed_signal = 0  # a stop signal every process has seen (set by `_check`)
        self.checked_at: int | None = None  # the step of the last `_check`
        self.stream: Any = None  # a streamed training split, whose position each checkpoint keeps
        # Loss terms summed on the device since the last log line: reading them (float()) waits
        # for the device, so that happens only when a line is logged, not on every step.
        self.running: dict[str, torch.Tensor] = {}
        # Micro-batches in `running`, per term: a term some micro-batches lack (on_policy's
        # hard_label, absent from sampled batches) is averaged over those that have it.
        self.counts: dict[str, int] = {}

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
        # The fused kernel: on a CPU 3.5× faster than `foreach` for a 7M-parameter student (the
        # step's largest part after backward; benchmarks/RESULTS.md), equal to it within fp32
        # rounding. Sharded (FSDP) parameters on a CPU keep `foreach`, which handles DTensors there.
        fused = self.accelerator.device.type == "cuda" or self.accelerator.distributed_type != DistributedType.FSDP
        return torch.optim.AdamW(groups, lr=self.training.learning_rate, fused=fused)

    # -- the run --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        accelerator = self.accelerator
        self._seed()
        loader, sampler = self.distiller.train_loader(accelerator.num_processes)
        for loaded in self.distiller.teachers:
            # On its `teacher.device` (`auto`: the training device), frozen, in eval mode.
            place_teacher(loaded, accelerator.device)
        optimizer = self._optimizer()
        if accelerator.distributed_type == DistributedType.FSDP and not self.distiller.shards_with_fsdp:
            raise BrewerError(
                f"{self.run.recipe.path}: distillation.kind {self.distiller.kind} cannot train under FSDP (its export "
                f"writes several models from the live modules) — launch it without the FSDP configuration"
            )
        # FSDP2 shards the distiller in place (the student and projections; teachers are outside it).
        if loader.dataset.streamed:
            # A stream shards itself (each process reads its own lines) and has no length: Accelerate
            # would read every batch on the main process and split it. Its epoch is a number of steps.
            distiller, optimizer = accelerator.prepare(self.distiller, optimizer)
            steps_per_epoch = self.training.steps_per_epoch or self.training.max_steps
        else:
            distiller, optimizer, loader = accelerator.prepare(self.distiller, optimizer, loader)
            steps_per_epoch = max(1, math.ceil(len(loader) / self.training.gradient_accumulation))
        total_steps = self.training.max_steps or max(1, math.ceil(self.training.epochs * steps_per_epoch))
        self.distiller.total_steps = self.total_steps = total_steps
        scheduler = learning_rate_schedule(optimizer, self.training.lr_schedule, self.training.warmup, total_steps)
        self.reporter.start_trackers()
        try:
            return self._fit(distiller, optimizer, scheduler, loader, sampler, steps_per_epoch)
        finally:
            self.reporter.finish_trackers()

    def _fit(self, distiller, optimizer, scheduler, loader, sampler, steps_per_epoch: int) -> dict[str, Any]:
        accelerator, total_steps = self.accelerator, self.total_steps
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
            self.run_dir,
            self.resume,
            self.state.step,
            total_steps,
            steps_per_epoch,
            accelerator,
            self.precision,
            PrefillDisplay(self.training.progress and accelerator.is_main_process, self.console),
        )
        if self.training.compile_backend is not None:
            self.distiller.compile_student(self.training.compile_backend)

        start = time.time()
        self.throughput = Throughput(accelerator)
        progress = _Progress(self.training.progress and accelerator.is_main_process, total_steps, self.console, self.throughput)
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
        self.running, self.counts = {}, {}
        pending: dict[str, torch.Tensor] = {}
        pending_counts: dict[str, int] = {}
        finished = self.state.step >= total_steps
        distiller.train()
        stream = self.stream = loader.dataset if loader.dataset.streamed else None
        if stream is not None:
            if self.state.data_state is not None:
                stream.load_state_dict(self.state.data_state[accelerator.process_index])
            batches = (send_to_device(batch, accelerator.device) for batch in loader)
        while not finished:
            skip = self.state.batch_in_epoch
            if stream is not None:
                # The stream goes on from where it is; an epoch takes its number of batches from it.
                epoch_loader = itertools.islice(batches, steps_per_epoch * self.training.gradient_accumulation - skip)
            else:
                epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            # Accelerate's loaders re-set the sampler's epoch from their own counter on every
            # iteration; setting it on the loader keeps both on the loop's epoch (also on resume).
            # The collate too: masking on the fly draws each epoch's own masks (tasks/streams.py).
            for target in (epoch_loader, sampler, self.distiller.collate):
                if hasattr(target, "set_epoch"):
                    target.set_epoch(self.state.epoch)
            for batch in epoch_loader:
                self.state.batch_in_epoch += 1
                self.throughput.count(batch)
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
                    pending_counts[name] = pending_counts.get(name, 0) + 1
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
                        self.counts[name] = self.counts.get(name, 0) + pending_counts[name]
                guard.end_step(step, accelerator.optimizer_step_was_skipped)
                pending, pending_counts = {}, {}
                learning_rate = scheduler.get_last_lr()[0]
                last = step >= total_steps
                if step % self.training.log_every == 0 or last:
                    averages = self._window_averages()
                    rates = self.throughput.read()
                    progress.update(step, learning_rate, averages.get("loss"))
                    record = {"step": step, "epoch": self.state.epoch, "learning_rate": learning_rate, **averages, **rates}
                    record.update(self._teacher_cache_counts())
                    record.update(self.distiller.log_statistics())
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
        norm = self.accelerator.clip_grad_norm_(distiller.parameters(), self.training.max_grad_norm or math.inf)
        # FSDP: a DTensor (the same on every process); the guard reads a plain tensor.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

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
        averages = {name: float(value) / max(self.counts.get(name, 0), 1) for name, value in self.running.items()}
        self.running, self.counts = {}, {}
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
        Every process reaches the same verdict (their weights are equal; FSDP shards' verdicts are
        summed over the processes), so a refusal leaves none waiting."""
        # Sharded (FSDP) weights: each process reads its shard and the verdicts are summed.
        if not weights_finite(self.accelerator.unwrap_model(self.distiller).parameters(), self.accelerator):
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
                f"{self.state.step}) had non-finite values (at step {self.state.step}: {non_finite(parts, gradient)}) "
                f"and training.nan_patience is {guard.patience}; nothing non-finite was written and "
                f"{self._kept_checkpoint()}. {self._fixes()}"
            )

    def _divergence_message(self, first_step: int, gradient: bool) -> str:
        found = "" if first_step == self.state.step else f" (found at the check after step {self.state.step})"
        return (
            f"{self.run_dir}: training diverged at step {first_step} of {self.total_steps}{found} — non-finite "
            f"{non_finite(self.guard.first_problems(), gradient)}; nothing non-finite was written and "
            f"{self._kept_checkpoint()}. {self._fixes()}"
        )

    def _fixes(self) -> str:
        return divergence_fixes(self.training, self.precision, self.guard.skip_batch, self.run.recipe.path, self.run_dir)

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
        with self.throughput.paused():
            step, best = self.state.step, self.best_metric
            metrics = self._evaluate()
            self.last_eval = (step, metrics)
            self._log({"step": step, "eval": metrics})
            value = best.value(metrics)
            self.state.history.append({"step": step, **metrics})
            if best.better(value, self.state.best_metric):
                self.state.best_metric = value
                self.state.best_step = step
                self._refuse_non_finite_weights(self.run_dir / "best")
                self._save_student(self.run_dir / "best")
            self.reporter.evaluation(
                step,
                self.total_steps,
                best.name,
                value,
                self.state.best_metric,
                self.state.best_step,
                self.throughput.running_examples_per_s(),
            )

    def _evaluate(self) -> dict[str, Any]:
        # The student is called outside the distiller's forward: under FSDP its group is gathered.
        with gathered_for_forward(self.distiller):
            return self.distiller.evaluate(self.accelerator)

    def check_metric_for_best(self, metrics: dict[str, Any] | None, whose: str) -> None:
        """Before training: `training.metric_for_best` is among the metrics an evaluation of this
        task reports (the teacher's, evaluated first), so a misspelt name stops the run at once."""
        if metrics is not None:
            self.best_metric.value(metrics, whose)

    def _finish(self, train_time: float) -> dict[str, Any]:
        self._check()
        state, name = self.state, self.best_metric.name
        last_metrics = None
        if self.run.data.eval is not None:
            # The last step was evaluated already unless the run resumed from its final checkpoint.
            if self.last_eval is not None and self.last_eval[0] == state.step:
                last_metrics = self.last_eval[1]
            else:
                last_metrics = metrics_at(state.history, state.step) or self._evaluate()
        best_metrics = metrics_at(state.history, state.best_step)
        # Trainer's load_best_at_end: final/ is the best checkpoint's student (best/, copied).
        from_best = (
            self.training.load_best_at_end
            and best_metrics is not None
            and state.best_step != state.step
            and (self.run_dir / "best").is_dir()
        )
        if from_best:
            if self.accelerator.is_main_process:
                copy_to_final(self.run_dir / "best", self.run_dir / "final", self.run_dir)
            self.accelerator.wait_for_everyone()
        else:
            self._refuse_non_finite_weights(self.run_dir / "final")
            self._save_student(self.run_dir / "final")
        return {
            "metric": name,
            "student_metrics": best_metrics if from_best else last_metrics,
            "best": {"step": state.best_step, "metric": name, "value": state.best_metric, "metrics": best_metrics},
            "last": {"step": state.step, "metrics": last_metrics},
            "final": {
                "step": state.best_step if from_best else state.step,
                "is_best": from_best or state.best_step == state.step,
            },
            "steps": state.step,
            "skipped_batches": self.guard.skipped,
            "train_time_s": train_time,
            "throughput": self.throughput.summary(),
            "threads": torch.get_num_threads(),
            "precision": self.precision,
            "processes": self.accelerator.num_processes,
        }

    # -- output ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.reporter.log(record)

    def _teacher_cache_counts(self) -> dict[str, int]:
        """The teacher-output cache's answers so far (this process's: metrics.jsonl is the main
        process's view; summary.json sums the processes)."""
        cache = self.distiller.teacher_cache
        if cache is None:
            return {}
        return {"teacher_cache_hits": cache.counts.hits, "teacher_cache_misses": cache.counts.misses}

    def _save_student(self, directory: Path) -> None:
        """Every process calls it (gathering FSDP shards is a collective); the main one writes.
        Guarded: a full disk removes the partial export and ends the run with a clear error."""
        distiller = self.accelerator.unwrap_model(self.distiller)
        weights = student_weights_of(full_state(distiller)) if is_sharded(distiller) else None
        if self.accelerator.is_main_process:
            export_guarded(directory, lambda target: distiller.export_student(target, weights), distiller.student, self.run_dir)

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        with self.throughput.paused():
            self._write_checkpoint(optimizer, scheduler)

    def _write_checkpoint(self, optimizer, scheduler) -> None:
        # The last good checkpoint stays: a refusal comes before anything is written or rotated out.
        self._check()
        self._refuse_non_finite_weights(self.run_dir / "checkpoints" / f"step-{self.state.step}")
        # Every process writes the teacher outputs it cached (teacher_cache/process-<rank>/).
        self.distiller.persist_teacher_cache()
        self.state.skipped_batches = self.guard.skipped
        if self.stream is not None:
            # Every process's position in its own stream, kept by the main process's checkpoint.
            self.state.data_state = gather_object([self.stream.state_dict()])
        distiller = self.accelerator.unwrap_model(self.distiller)
        # FSDP: the whole state gathered to the main process (every process joins); else read there.
        sharded = is_sharded(distiller)
        weights = full_state(distiller) if sharded else None
        optimizer_state = full_optimizer_state(distiller, optimizer) if sharded else None
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.run_dir / "checkpoints",
                distiller,
                optimizer,
                scheduler,
                self.state,
                self.training.keep_checkpoints,
                weights,
                optimizer_state,
            )
        self.accelerator.wait_for_everyone()
