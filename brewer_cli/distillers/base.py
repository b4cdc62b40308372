"""The one training loop.

A distiller is an `nn.Module` whose `forward(batch)` is its `compute_loss`: it holds the student
(and any projections) as submodules, so Accelerate wraps exactly the trainable part in DDP, clips
it and saves it, while teachers are kept outside the module tree — frozen, in eval mode, under
`torch.inference_mode`, never wrapped.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from brewer_cli.errors import CheckpointError
from brewer_cli.families import FeatureNeeds, Features
from brewer_cli.models import LoadedModel, save_model_dir


class Distiller(nn.Module, ABC):
    """Base class: subclasses implement `compute_loss`."""

    kind = ""
    needs_teacher = True

    def __init__(self, run: Any):
        super().__init__()
        self.run = run
        self.recipe = run.recipe
        self.task = run.task
        self.student = run.student.model
        self.student_family = run.student.family
        # Teachers stay out of the module tree: not trained, not saved, not wrapped in DDP.
        object.__setattr__(self, "teachers", [loaded for loaded in run.teachers])
        self.total_steps = 1
        self.current_step = 0
        # Set by the loop when the run caches teacher outputs (brewer_cli.teacher_cache).
        self.teacher_cache: Any = None
        # Set by `compile_student` (training.compile): the backend and the models compiled.
        self.compiled: dict[str, Any] | None = None

    # -- what subclasses provide ----------------------------------------------------------------

    @abstractmethod
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The total `loss` plus named parts for logging."""

    def student_needs(self) -> FeatureNeeds:
        return FeatureNeeds()

    def teacher_needs(self) -> FeatureNeeds:
        return FeatureNeeds()

    def describe_losses(self) -> list[str]:
        """One line per loss term, for the dry-run plan."""
        return []

    # -- what the loop and the pipeline ask; multi-task distillation brings its own data and models

    def train_loader(self, training: Any) -> tuple[DataLoader, Any]:
        """The training batches and the sampler whose `set_epoch` orders an epoch."""
        data = self.run.data.train
        sampler = EpochSampler(
            len(data), training.seed, training.batch_size,
            lengths=data.lengths() if training.group_by_length else None,
        )
        # The loader's own generator: creating an epoch's iterator draws a seed from it, and drawing
        # from the global RNG instead would shift dropout masks after a resume.
        loader = DataLoader(data, batch_size=training.batch_size, sampler=sampler, collate_fn=self.run.collate,
                            generator=torch.Generator().manual_seed(training.seed))
        return loader, sampler

    def evaluate(self, accelerator: Any = None) -> dict[str, Any]:
        """The student's metrics on the eval split; the loop keeps the best by the task's primary metric."""
        from brewer_cli.evaluate import evaluate_model

        if self.task.measured_by_distillation_loss:
            return self.distillation_loss_on_eval(accelerator)
        return evaluate_model(self.run, self.student, self.student_family, accelerator)

    def distillation_loss_on_eval(self, accelerator: Any = None) -> dict[str, float]:
        """This distiller's loss and its parts on the eval split, averaged over examples, with the
        student in eval mode: the measure of tasks without labels (general distillation)."""
        data = self.run.data.eval
        training = self.recipe.training
        loader = DataLoader(data, batch_size=training.eval_batch_size or training.batch_size * 2, shuffle=False,
                            collate_fn=self.run.collate)
        distributed = accelerator is not None and accelerator.num_processes > 1
        if distributed:
            loader = accelerator.prepare_data_loader(loader)
        device = accelerator.device if accelerator is not None else next(self.student.parameters()).device
        was_training = self.training
        self.eval()
        totals: dict[str, float] = {}
        examples = 0
        with torch.no_grad():
            for batch in loader:
                batch = {name: tensor.to(device) for name, tensor in batch.items()}
                size = int(batch["input_ids"].shape[0])
                for name, value in self.compute_loss(batch).items():
                    totals[name] = totals.get(name, 0.0) + float(value) * size
                examples += size
        self.train(was_training)
        names = sorted(totals)
        if distributed:
            summed = accelerator.reduce(torch.tensor([totals[name] for name in names] + [examples], device=device,
                                                     dtype=torch.float64), reduction="sum")
            totals, examples = dict(zip(names, summed[:-1].tolist())), float(summed[-1])
        return {name: totals[name] / max(examples, 1) for name in names}

    def export_student(self, directory: Path) -> None:
        """Write the student as a `save_pretrained` directory with its tokenizer (best/, final/)."""
        save_model_dir(self.student, self.run.student.tokenizer, directory)

    def evaluate_teachers(self, device: Any) -> dict[str, Any] | None:
        """The teacher's metrics on the eval split, reported beside the student's."""
        from brewer_cli.evaluate import evaluate_model

        if not self.teachers or self.run.data.eval is None or self.task.measured_by_distillation_loss:
            # Without labels a teacher has no metric either (its distillation loss is 0 by definition).
            return None
        teacher = self.teachers[0]
        teacher.model.to(device)
        return evaluate_model(self.run, teacher.model, teacher.family)

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        """Add what this kind of distillation has to say to summary.json (several teachers, tasks)."""

    # -- shared helpers -------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.compute_loss(batch)

    def student_features(self, batch: dict[str, torch.Tensor], with_labels: bool = True) -> Features:
        labels = self.task.labels(batch) if with_labels else None
        return self.student_family.features(self.student, batch, self.student_needs(), labels=labels, logits_of=self.task.logits)

    def teacher_features(self, batch: dict[str, torch.Tensor], teacher: LoadedModel | None = None,
                         needs: FeatureNeeds | None = None, prefix: str | None = None) -> Features:
        """A teacher's outputs on `batch` (`prefix`: the columns of a teacher with its own
        tokenization), from the teacher-output cache while training when the run keeps one."""
        from brewer_cli.teacher_views import view_batch

        teacher = teacher or self.teachers[0]
        needs = self.teacher_needs() if needs is None else needs

        def compute(examples: dict[str, torch.Tensor]) -> Features:
            with torch.inference_mode():
                features = teacher.family.features(teacher.model, view_batch(examples, prefix), needs,
                                                   logits_of=self.task.logits)
            # Inference tensors cannot be saved for backward; a clone outside inference mode can.
            return _clone_features(features)

        # Only training batches: evaluation batches index the eval split, not the cached train split.
        if self.teacher_cache is None or not self.training:
            return compute(batch)
        index = next(number for number, loaded in enumerate(self.teachers) if loaded is teacher)
        read = self.teacher_cache.read_of(index)
        if read is None or read.needs != needs or read.prefix != prefix:
            raise RuntimeError(f"teacher {index} is read with {needs}, prefix {prefix!r}, but teacher_reads() declared "
                               f"{read} — the cache would return other features than the losses ask for")
        return self.teacher_cache.features(index, batch, compute, self.current_step)

    # -- the teacher-output cache and compilation (brewer_cli.teacher_cache, training.compile) --

    def teacher_feature_layers(self) -> tuple[tuple[str, int], ...]:
        """(hidden | attention | attention_inputs, layer) pairs the losses read from the teacher."""
        return ()

    def teacher_reads(self) -> list[Any]:
        """What each teacher's forward gives the losses; the teacher-output cache keeps exactly that."""
        from brewer_cli.teacher_cache import TeacherRead

        if not self.needs_teacher or not self.teachers:
            return []
        return [TeacherRead(0, self.teacher_needs(), self.teacher_feature_layers())]

    def open_teacher_cache(self, run_dir: Path, resume: bool, step: int, total_steps: int, steps_per_epoch: int,
                           accelerator: Any, precision: str) -> None:
        from brewer_cli.teacher_cache import open_teacher_cache

        self.teacher_cache = open_teacher_cache(self, run_dir, resume, step, total_steps, steps_per_epoch, accelerator,
                                                precision)

    def persist_teacher_cache(self) -> None:
        if self.teacher_cache is not None:
            self.teacher_cache.persist()

    def compile_student(self, backend: str) -> None:
        """`training.compile`: compile each model's forward in place (`nn.Module.compile`), so that
        parameter names — and with them checkpoints, resume and exports — stay the plain model's.
        What was compiled goes to summary.json (`self.compiled`)."""
        from transformers import PreTrainedModel

        def outermost(module: nn.Module) -> list[nn.Module]:
            # A multi-task student holds one model per task around a shared encoder: each is compiled.
            if isinstance(module, PreTrainedModel):
                return [module]
            return [found for child in module.children() for found in outermost(child)]

        models = outermost(self.student) or [self.student]
        for model in models:
            model.compile(backend=backend)
        self.compiled = {"backend": backend, "models": [type(model).__name__ for model in models]}

    def progress(self) -> float:
        return self.current_step / max(self.total_steps, 1)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_clone(item) for item in value)
    if isinstance(value, list):
        return [_clone(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**{name: _clone(getattr(value, name)) for name in value.__dataclass_fields__})
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    return value


def _clone_features(features: Features) -> Features:
    return _clone(features)


# ============================================================================= data order


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), so the order of any epoch can be rebuilt
    on resume without replaying earlier epochs. With `lengths`, examples are grouped into
    mega-batches of similar length (less padding) while the order of batches stays random."""

    def __init__(self, size: int, seed: int, batch_size: int, lengths: list[int] | None = None):
        self.size = size
        self.seed = seed
        self.batch_size = batch_size
        self.lengths = lengths
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return iter(order)
        # Sort within windows of 50 batches by length, then shuffle the batches themselves.
        window = self.batch_size * 50
        grouped: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i], reverse=True)
            grouped.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        # Only the last window can end in a short group; it goes last, since anywhere else it would
        # shift every later batch across two groups of different lengths.
        short = grouped.pop() if grouped and len(grouped[-1]) < self.batch_size else None
        batch_order = torch.randperm(len(grouped), generator=generator).tolist()
        ordered = [index for b in batch_order for index in grouped[b]]
        return iter(ordered + (short or []))


# ============================================================================= the loop


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class TrainingLoop:
    """Runs a distiller: optimizer, schedule, accumulation, clipping, eval, checkpoints, resume."""

    def __init__(self, run: Any, distiller: Distiller, resume: bool, console: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.run = run
        self.distiller = distiller
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
        from transformers import get_linear_schedule_with_warmup

        accelerator = self.accelerator
        self._seed()
        loader, sampler = self.distiller.train_loader(self.training)
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
            self._load_latest(optimizer, scheduler)
        self.distiller.current_step = self.state.step
        # Opened once the step to start from is known: on resume only entries filled before it count.
        self.distiller.open_teacher_cache(self.run_dir, self.resume, self.state.step, total_steps, steps_per_epoch,
                                          accelerator, self.precision)
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
                    self._log({"step": self.state.step, "epoch": self.state.epoch, "learning_rate": learning_rate,
                               **averages})
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

    # -- checkpoints ----------------------------------------------------------------------------

    def _save_checkpoint(self, optimizer, scheduler) -> None:
        """checkpoints/step-N/: student (safetensors), projections, optimizer, scheduler, RNG and
        loop state, written to a temporary directory and renamed, so a crash never leaves a
        checkpoint that looks complete."""
        # Every process writes the teacher outputs it cached (teacher_cache/process-<rank>/).
        self.distiller.persist_teacher_cache()
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        from safetensors.torch import save_file

        root = self.run_dir / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.state.step}"
        temporary = root / f".step-{self.state.step}.tmp"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        distiller = self.accelerator.unwrap_model(self.distiller)
        distiller.student.save_pretrained(temporary / "student", safe_serialization=True)
        extra = {name: tensor.detach().cpu().contiguous() for name, tensor in distiller.state_dict().items() if not name.startswith("student.")}
        if extra:
            save_file(extra, str(temporary / "extra_modules.safetensors"))
        torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
        torch.save(_rng_state(), temporary / "rng.pt")
        state = {
            "step": self.state.step, "epoch": self.state.epoch, "batch_in_epoch": self.state.batch_in_epoch,
            "best_metric": self.state.best_metric, "best_step": self.state.best_step, "history": self.state.history,
        }
        (temporary / "state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        # Keep the newest `keep_checkpoints`; the one `best/` came from is also a plain directory.
        complete = sorted(complete_checkpoints(root), key=lambda path: int(path.name.split("-")[1]))
        for old in complete[: -self.training.keep_checkpoints]:
            shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def _load_latest(self, optimizer, scheduler) -> None:
        root = self.run_dir / "checkpoints"
        checkpoints = sorted(complete_checkpoints(root), key=lambda path: int(path.name.split("-")[1])) if root.exists() else []
        if not checkpoints:
            raise CheckpointError(
                f"--resume: no complete checkpoint in {root} — run without --resume to start fresh"
            )
        latest = checkpoints[-1]
        from safetensors.torch import load_file

        distiller = self.accelerator.unwrap_model(self.distiller)
        student_weights = _student_weights(latest / "student")
        missing, unexpected = distiller.student.load_state_dict(student_weights, strict=False)
        if unexpected or [name for name in missing if not _is_tied(distiller.student, name)]:
            raise CheckpointError(f"--resume: {latest} does not match this recipe's student (missing {missing[:3]}, unexpected {unexpected[:3]})")
        extra_path = latest / "extra_modules.safetensors"
        if extra_path.exists():
            distiller.load_state_dict(load_file(str(extra_path)), strict=False)
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True, map_location=self.accelerator.device))
        scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
        _set_rng_state(torch.load(latest / "rng.pt", weights_only=True))
        state = json.loads((latest / "state.json").read_text())
        self.state = LoopState(
            step=state["step"], epoch=state["epoch"], batch_in_epoch=state["batch_in_epoch"],
            best_metric=state["best_metric"], best_step=state["best_step"], history=state["history"],
        )
        self._log({"step": self.state.step, "resumed_from": str(latest)})


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories whose rename finished (temporary ones start with a dot)."""
    return [path for path in root.glob("step-*") if path.is_dir() and (path / "state.json").is_file()]


def _student_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def _is_tied(model: nn.Module, name: str) -> bool:
    # Tied weights (e.g. an MLM decoder sharing the word embeddings) are saved once.
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return name in tied


def _rng_state() -> dict[str, Any]:
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python_version": python_state[0],
        "python": torch.tensor(python_state[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": numpy_state[2],
        "numpy_gauss": [numpy_state[3], numpy_state[4]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_position"]),
                         int(state["numpy_gauss"][0]), float(state["numpy_gauss"][1])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Progress:
    """A rich progress bar with loss, learning rate and ETA; silent off the main process."""

    def __init__(self, enabled: bool, total: int, console: Any):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
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
