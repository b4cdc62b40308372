"""What a training run tells the user while it runs, for the loop (brewer_cli.loop): the
metrics.jsonl records, the same records sent to the experiment trackers of `training.report_to`
(through Accelerate), the throughput of the training steps, a line per evaluation, and the step
display — a progress bar on a terminal, plain lines every `log_every` steps anywhere else (nohup,
SLURM, CI), so that a log file holds the run's course, not only the bar's last state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from brewer_cli.checkpoints import append_line
from brewer_cli.errors import BrewerError
from brewer_cli.guards import json_line
from brewer_cli.recipe import resolved_mapping
from brewer_cli.run import Run
from brewer_cli.training_setup import tracker_config

# Not sent to trackers: the step is their x axis, and the wall-clock time is no metric.
NOT_TRACKED = ("step", "time")


def tracked_values(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics.jsonl record as trackers take them: nested names joined by "/"
    (`eval/accuracy`, `eval/sentiment/f1`), flags, text and nulls left out."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if not prefix and key in NOT_TRACKED:
            continue
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            values.update(tracked_values(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = value
    return values


class Reporter:
    """metrics.jsonl and the trackers (main process only), and the evaluation lines."""

    def __init__(self, run: Run, accelerator: Any, console: Any):
        self.run = run
        self.accelerator = accelerator
        self.console = console if console is not None else Console()
        self.tracking = bool(run.recipe.training.report_to) and accelerator.is_main_process

    def start_trackers(self) -> None:
        if self.tracking:
            recipe = self.run.recipe
            try:
                self.accelerator.init_trackers(recipe.name, config=tracker_config(resolved_mapping(recipe)))
            except Exception as error:  # each tracker library raises its own errors (not logged in, no server)
                raise self._tracker_error("could not start", error) from error

    def finish_trackers(self) -> None:
        """Each tracker's `finish` (Accelerate's end_training would also end the process group,
        which the summary and any later run of this command still use). Called in a `finally`: a
        tracker failing to finish is said in one line and never hides the run's own outcome."""
        if self.tracking:
            for tracker in self.accelerator.trackers:
                try:
                    tracker.finish()
                except Exception as error:  # the run is over; its files are written already
                    self.console.print(f"warning: tracker {tracker.name} did not finish cleanly: {error}", markup=False)
            self.accelerator.trackers = []

    def _tracker_error(self, what: str, error: Exception) -> BrewerError:
        names = ", ".join(self.run.recipe.training.report_to)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return BrewerError(
            f"{self.run.recipe.path or 'the recipe'}: training.report_to: the tracker ({names}) {what}: "
            f"{type(error).__name__}: {first} — set it up (e.g. `wandb login`, an MLflow server's address) or remove "
            f"it from training.report_to; metrics.jsonl in {self.run.run_dir} holds every record either way"
        )

    def log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        line = json_line({"time": round(time.time(), 3), **record})
        # Guarded: a full disk ends the run with a clear error, never half a line.
        append_line(self.run.run_dir / "metrics.jsonl", line, self.run.run_dir)
        if self.tracking:
            # Exactly what the line holds (non-finite values are nulls there, so left out here too).
            values = tracked_values(json.loads(line))
            if values:
                try:
                    self.accelerator.log(values, step=record.get("step"))
                except Exception as error:  # each tracker library raises its own errors
                    raise self._tracker_error("could not take a record", error) from error

    def evaluation(
        self,
        step: int,
        total: int,
        metric: str,
        value: float | None,
        best: float | None,
        best_step: int | None,
        rate: float | None,
    ) -> None:
        """`step 750/2000 · accuracy 0.912 · best 0.915 @ 625 · 38 ex/s`."""
        if not self.accelerator.is_main_process:
            return
        parts = [f"step {step}/{total}", f"{metric} {_number(value)}"]
        if best is not None:
            parts.append(f"best {_number(best)} @ {best_step}")
        if rate is not None:
            parts.append(f"{_rate(rate)} ex/s")
        self.console.print(Text(" · ".join(parts)), soft_wrap=True)


class Throughput:
    """Examples and non-padding tokens per second of training steps: evaluations and checkpoint
    writes (`paused`) are left out of the time. Token counts stay on the device until a log line
    reads them, so counting adds no wait for the device; with several processes each reading sums
    over them (every process reads at the same steps)."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.examples = 0  # this process, since the last reading
        self.tokens = torch.zeros((), dtype=torch.int64, device=accelerator.device)
        self.seconds = 0.0  # training time since the last reading, up to `since`
        self.since: float | None = time.monotonic()  # None while paused
        self.total_examples = 0  # over the processes, every reading so far
        self.total_tokens = 0
        self.total_seconds = 0.0
        self.local_examples = 0  # this process, every reading so far (for the evaluation line)
        self.last_examples_per_s: float | None = None

    def count(self, batch: dict[str, Any]) -> None:
        ids = batch.get("input_ids")
        if ids is None:
            return
        self.examples += int(ids.shape[0])
        mask = batch.get("attention_mask")
        self.tokens += mask.sum() if mask is not None else ids.numel()

    @contextmanager
    def paused(self) -> Iterator[None]:
        if self.since is None:
            yield
            return
        self.seconds += time.monotonic() - self.since
        self.since = None
        try:
            yield
        finally:
            self.since = time.monotonic()

    def _elapsed(self) -> float:
        return self.seconds + (time.monotonic() - self.since if self.since is not None else 0.0)

    def read(self) -> dict[str, float]:
        """`examples_per_s` and `tokens_per_s` since the last reading (all processes), and a new window."""
        seconds = self._elapsed()
        counts = torch.stack([torch.tensor(self.examples, dtype=torch.int64, device=self.tokens.device), self.tokens])
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        examples, tokens = (int(value) for value in counts.tolist())
        self.local_examples += self.examples
        self.total_examples += examples
        self.total_tokens += tokens
        self.total_seconds += seconds
        self.examples, self.seconds = 0, 0.0
        self.tokens = torch.zeros_like(self.tokens)
        if self.since is not None:
            self.since = time.monotonic()
        seconds = max(seconds, 1e-9)
        self.last_examples_per_s = examples / seconds
        return {"examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds}

    def running_examples_per_s(self) -> float | None:
        """Examples per second so far without reading the device or the other processes (their
        batches are as large as this one's): for the evaluation line."""
        seconds = self.total_seconds + self._elapsed()
        examples = (self.local_examples + self.examples) * self.accelerator.num_processes
        return examples / seconds if seconds > 0 and examples else None

    def summary(self) -> dict[str, Any]:
        """summary.json's `throughput`: the whole loop of this command (a resumed run: since the resume)."""
        seconds = self.total_seconds
        return {
            "examples_per_s": self.total_examples / seconds if seconds > 0 else None,
            "tokens_per_s": self.total_tokens / seconds if seconds > 0 else None,
            "examples": self.total_examples,
            "tokens": self.total_tokens,
            "seconds": seconds,
        }


def progress_bar(console: Console, label: str, *fields: TextColumn) -> Progress:
    """A rich bar: label, bar, done/total, the given fields, elapsed time and ETA."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class PrefillDisplay:
    """The teacher-output prefill's progress (brewer_cli.teacher_cache.prefill): a rich bar on a
    terminal; elsewhere a plain line at each tenth (`teacher outputs 6,735/67,349 · 412 ex/s`).
    Silent off the main process and with `training.progress: false`."""

    def __init__(self, enabled: bool, console: Any):
        self.enabled = enabled
        self.console = console if console is not None else Console()
        self.started = time.monotonic()
        self.bar: Progress | None = None
        self.next_tenth = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.console.is_terminal:
            if self.bar is None:
                self.bar = progress_bar(self.console, "teacher outputs")
                self.bar.start()
                self.task = self.bar.add_task("prefill", total=total)
            self.bar.update(self.task, completed=done)
        elif done * 10 >= self.next_tenth * total or done >= total:
            rate = done / max(time.monotonic() - self.started, 1e-9)
            self.console.print(Text(f"teacher outputs {done:,}/{total:,} · {rate:.0f} ex/s"), soft_wrap=True)
            self.next_tenth = done * 10 // max(total, 1) + 1  # integers: no float drift between tenths

    def close(self) -> None:
        """Stop the bar, also when the pass ended in an error (the terminal is left clean for it)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class StepDisplay:
    """On a terminal, a rich progress bar with loss, learning rate and ETA; elsewhere (a file, a
    pipe, a batch system's log) a plain line each logged step: `step 20/200 · loss 0.6931 · lr
    4.50e-05 · 38 ex/s · elapsed 0:01:02 · ETA 0:09:18`. Silent off the main process and with
    `training.progress: false`."""

    def __init__(self, enabled: bool, total: int, console: Any, throughput: Throughput, start_step: int = 0):
        self.enabled = enabled
        self.total = total
        self.console = console if console is not None else Console()
        self.throughput = throughput
        self.start_step = start_step
        self.started = time.monotonic()
        self.bar: Progress | None = None
        if enabled and self.console.is_terminal:
            self.bar = progress_bar(
                self.console, "train", TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}")
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, loss=float("nan"), lr=0.0, completed=start_step)

    def advance_to(self, step: int) -> None:
        self.start_step = step
        self.started = time.monotonic()
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, learning_rate: float, loss: float | None = None) -> None:
        """`loss`: the average of the last logged steps (given on the steps that log); None keeps the one shown."""
        if self.bar is not None:
            fields = {"lr": learning_rate} if loss is None else {"lr": learning_rate, "loss": loss}
            self.bar.update(self.task, completed=step, **fields)
        elif self.enabled and loss is not None:
            self.console.print(Text(self.line(step, learning_rate, loss)), soft_wrap=True)

    def line(self, step: int, learning_rate: float, loss: float) -> str:
        elapsed = time.monotonic() - self.started
        done = step - self.start_step
        parts = [f"step {step}/{self.total}", f"loss {loss:.4f}", f"lr {learning_rate:.2e}"]
        if self.throughput.last_examples_per_s is not None:
            parts.append(f"{_rate(self.throughput.last_examples_per_s)} ex/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if done > 0:
            parts.append(f"ETA {_duration(elapsed / done * (self.total - step))}")
        return " · ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
