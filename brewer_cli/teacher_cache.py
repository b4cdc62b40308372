"""The teacher-output cache (`distillation.teacher_cache`, DESIGN §9).

A teacher is frozen and in eval mode, and brewer never changes an example's inputs between epochs
(augmentation runs before training, into a file), so what the teacher says about example i is the
same in every epoch. The cache keeps it from the first time it is computed, keyed by the example's
index (`batch["index"]`), and hands it back from then on; a batch whose examples are all cached
skips the teacher's forward pass entirely, one with some misses runs the teacher on those only.

What is kept, per teacher the losses read:
- the logits, in fp32 and always in memory (one row per example, or the example's own tokens for
  token-level tasks) — exactly the values the teacher gave;
- the features the matches read (the listed layers' hidden states, attention scores or attention
  inputs, nothing else), in fp16, trimmed to the example's own length (scores: L_i × L_i) and laid
  end to end with offsets computed from the tokenized lengths: in memory (`memory`) or in a
  memory-mapped file (`disk`). Padding positions come back as zeros; every loss masks them.

`auto` picks memory when the estimate fits `MEMORY_BUDGET_BYTES` per process, disk when it fits
half the free space where the run is written, and off otherwise — and off for a run of one epoch
or less, where no example is seen twice. The dry-run plan says which and why.

Both modes write what they hold to `runs/<name>/teacher_cache/` at every checkpoint (each example
once), with a fingerprint of the teacher weights, tokenizer, tokenized data, max length, features
and precision. `--resume` reuses it only when the fingerprint matches and refuses otherwise.
Each example carries the step at which it was filled: on resume from step S only entries filled
before S count, so a resumed run sees exactly the cache the uninterrupted run had at step S.

Several processes: each caches the examples it sees (lazy fill) in its own directory
(`process-<rank>/`); nothing is exchanged between processes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from brewer_cli.errors import CheckpointError, ModelError
from brewer_cli.families import AttentionInputs, FeatureNeeds, Features

MODES = ("auto", "off", "memory", "disk")
MEMORY_BUDGET_BYTES = 2 * 1024**3
# `auto` leaves at least half of the free disk space to checkpoints and everything else.
DISK_SHARE = 0.5
FORMAT_VERSION = 1
FP16_MAX = float(np.finfo(np.float16).max)
DIRECTORY_NAME = "teacher_cache"

# Where each kind of feature comes from in `Features`.
FEATURE_KINDS = ("hidden", "attention", "attention_inputs")


@dataclass(frozen=True)
class TeacherRead:
    """What the losses read from one teacher: its index in `Distiller.teachers`, the features its
    forward pass computes, the (feature kind, layer) pairs the losses actually read — only those
    are cached — and the column prefix of a teacher that reads its own tokenization."""

    teacher: int
    needs: FeatureNeeds
    layers: tuple[tuple[str, int], ...] = ()
    prefix: str | None = None


# ============================================================================= layout


@dataclass(frozen=True)
class Part:
    """One tensor kept per example.

    kind `row`: the same shape for every example (sequence-level logits); `token`: (L_i, *shape);
    `square`: (shape[0], L_i, L_i) (attention scores, heads first).
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    def counts(self, lengths: np.ndarray) -> np.ndarray:
        """Elements per example, from the examples' token counts."""
        width = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if self.kind == "row":
            return np.full(len(lengths), width, dtype=np.int64)
        if self.kind == "token":
            return lengths.astype(np.int64) * width
        return lengths.astype(np.int64) ** 2 * width

    def example_shape(self, length: int) -> tuple[int, ...]:
        if self.kind == "row":
            return self.shape
        if self.kind == "token":
            return (length, *self.shape)
        return (self.shape[0], length, length)

    def batch_shape(self, size: int, padded: int) -> tuple[int, ...]:
        return (size, *self.example_shape(padded))

    def piece(self, tensor: torch.Tensor, position: int, length: int) -> torch.Tensor:
        """Example `position`'s own slice of a batch tensor."""
        if self.kind == "row":
            return tensor[position]
        if self.kind == "token":
            return tensor[position, :length]
        return tensor[position, :, :length, :length]

    def place(self, target: torch.Tensor, position: int, length: int, values: torch.Tensor) -> None:
        if self.kind == "row":
            target[position] = values
        elif self.kind == "token":
            target[position, :length] = values
        else:
            target[position, :, :length, :length] = values


@dataclass(frozen=True)
class Layout:
    """Everything cached for one teacher, found by running it on one example."""

    read: TeacherRead
    logits_form: str  # none | tensor | tuple
    logits: tuple[Part, ...]
    features: tuple[Part, ...]
    depth: int
    num_heads: int

    def describe(self) -> str:
        parts = [f"{part.name}:{part.kind}{list(part.shape)}" for part in (*self.logits, *self.features)]
        return f"{self.logits_form};{self.depth};" + ",".join(parts)

    def feature_words(self) -> str:
        """The cached features in words, for the plan: `hidden 0, 4; attention 2`."""
        words = []
        for kind in FEATURE_KINDS:
            layers = sorted(layer for read_kind, layer in self.read.layers if read_kind == kind)
            if layers:
                words.append(f"{kind.replace('_', ' ')} {', '.join(str(layer) for layer in layers)}")
        return "; ".join(words)


def _logits_components(logits: Any) -> tuple[str, list[torch.Tensor]]:
    if logits is None:
        return "none", []
    if isinstance(logits, tuple):
        return "tuple", list(logits)
    return "tensor", [logits]


def probe_layout(distiller: Any, read: TeacherRead) -> Layout:
    """Run the teacher on the first training example and read off the shape of everything to keep."""
    from brewer_cli.teacher_views import SEQUENCE_LEVEL_TASKS, view_batch

    run = distiller.run
    teacher = distiller.teachers[read.teacher]
    device = next(teacher.model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in run.collate([run.data.train[0]]).items()}
    view = view_batch(batch, read.prefix)
    was_training = teacher.model.training
    teacher.model.eval()
    with torch.inference_mode():
        features = teacher.family.features(teacher.model, view, read.needs, logits_of=distiller.task.logits)
    teacher.model.train(was_training)
    length = int(view["input_ids"].shape[1])
    form, components = _logits_components(features.logits)
    per_token = distiller.task.name not in SEQUENCE_LEVEL_TASKS
    logits = []
    for number, component in enumerate(components):
        if per_token:
            if component.dim() < 2 or component.shape[1] != length:
                raise RuntimeError(f"token-level logits of shape {tuple(component.shape)} do not follow the sequence "
                                   f"length {length}")
            logits.append(Part(f"logits.{number}", "token", tuple(component.shape[2:])))
        else:
            logits.append(Part(f"logits.{number}", "row", tuple(component.shape[1:])))
    config = teacher.model.config
    parts: list[Part] = []
    for kind, layer in read.layers:
        if kind == "hidden":
            parts.append(Part(f"hidden.{layer}", "token", tuple(features.hidden_states[layer].shape[2:])))
        elif kind == "attention":
            parts.append(Part(f"attention.{layer}", "square", (int(features.attention_scores[layer - 1].shape[1]),)))
        else:
            inputs = features.attention_inputs[layer - 1]
            for name in ("query", "key", "value"):
                tensor = getattr(inputs, name)
                if tensor is not None:
                    parts.append(Part(f"attention_inputs.{layer}.{name}", "token", tuple(tensor.shape[2:])))
    return Layout(read, form, tuple(logits), tuple(parts), teacher.family.depth(config), teacher.family.heads(config))


def example_lengths(data: Any, prefix: str | None) -> np.ndarray:
    """Tokens per example in the columns a teacher reads (its own, with a prefix)."""
    column = data.columns[(prefix or "") + "input_ids"]
    return np.fromiter((len(ids) for ids in column), dtype=np.int64, count=len(column))


def _per_example(counts: list[np.ndarray], examples: int) -> np.ndarray:
    return np.sum(counts, axis=0) if counts else np.zeros(examples, dtype=np.int64)


def _offsets(parts: Sequence[Part], lengths: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Per part, elements per example; per example, where its block starts; the total."""
    counts = [part.counts(lengths) for part in parts]
    per_example = _per_example(counts, len(lengths))
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(per_example[:-1], out=starts[1:])
    return counts, starts, int(per_example.sum())


# ============================================================================= the plan


@dataclass(frozen=True)
class CachePlan:
    """The mode a run uses, why, and the estimated size of the cache per process."""

    mode: str  # off | memory | disk
    requested: str
    reason: str
    logits_bytes: int = 0
    feature_bytes: int = 0
    layouts: tuple[Layout, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.logits_bytes + self.feature_bytes

    def describe(self) -> str:
        chosen = self.mode if self.requested != "auto" else f"auto → {self.mode}"
        if self.mode == "off":
            return f"{chosen} ({self.reason})"
        features = "; ".join(layout.feature_words() for layout in self.layouts if layout.features)
        what = f"{_size(self.logits_bytes)} logits (fp32, in memory)"
        if self.feature_bytes:
            where = "memory-mapped file" if self.mode == "disk" else "memory"
            what += f" + {_size(self.feature_bytes)} features (fp16, {where}: {features})"
        return (f"{chosen} — {what} per process; filled as examples are first seen, reused after ({self.reason}); "
                f"kept in teacher_cache/ beside the run for --resume")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def plan_cache(distiller: Any, total_steps: int, steps_per_epoch: int, processes: int, run_dir: Path) -> CachePlan:
    """Whether and where the run caches its teachers' outputs (see the module docstring)."""
    requested = getattr(distiller.recipe.distillation, "teacher_cache", "off")
    reads = distiller.teacher_reads()
    if not reads:
        return CachePlan("off", requested, f"kind {distiller.kind} does not cache teacher outputs")
    if requested == "off":
        return CachePlan("off", requested, "distillation.teacher_cache: off")
    layouts = tuple(probe_layout(distiller, read) for read in reads)
    data = distiller.run.data.train
    logits_bytes = feature_bytes = 0
    for layout in layouts:
        lengths = example_lengths(data, layout.read.prefix)
        logits_bytes += _offsets(layout.logits, lengths)[2] * 4
        feature_bytes += _offsets(layout.features, lengths)[2] * 2
    total = logits_bytes + feature_bytes
    sizes = {"logits_bytes": logits_bytes, "feature_bytes": feature_bytes, "layouts": layouts}
    if requested in ("memory", "disk"):
        return CachePlan(requested, requested, f"distillation.teacher_cache: {requested}", **sizes)
    if total_steps <= steps_per_epoch:
        return CachePlan("off", requested, f"{total_steps} steps of {steps_per_epoch} per epoch: each example is seen "
                         f"once at most, so there is nothing to reuse", **sizes)
    if total <= MEMORY_BUDGET_BYTES:
        return CachePlan("memory", requested, f"fits the {_size(MEMORY_BUDGET_BYTES)} memory budget", **sizes)
    free = shutil.disk_usage(_existing_parent(run_dir)).free
    if total * processes <= free * DISK_SHARE:
        return CachePlan("disk", requested, f"over the {_size(MEMORY_BUDGET_BYTES)} memory budget; "
                         f"{_size(free)} free on disk", **sizes)
    return CachePlan("off", requested, f"the features would take {_size(total * processes)}, more than half of the "
                     f"{_size(free)} free on disk — match fewer layers, or set distillation.teacher_cache: disk to "
                     f"insist", **sizes)


def _existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


# ============================================================================= fingerprint


def _hash_bytes(chunks: Iterable[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _weight_chunks(model: torch.nn.Module) -> Iterable[bytes]:
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        yield f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode()
        # Any dtype as raw bytes (bf16 has no numpy equivalent).
        yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def _column_chunks(data: Any, prefix: str | None) -> Iterable[bytes]:
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        column = data.columns.get((prefix or "") + key)
        if column is None:
            continue
        lengths = np.fromiter((len(values) for values in column), dtype=np.int64, count=len(column))
        yield key.encode()
        yield lengths.tobytes()
        yield np.fromiter(itertools.chain.from_iterable(column), dtype=np.int64, count=int(lengths.sum())).tobytes()


def fingerprint(distiller: Any, layouts: Sequence[Layout], precision: str) -> dict[str, Any]:
    """What the cached values depend on, one hash per ingredient so a mismatch can be named."""
    from brewer_cli.teacher_views import _definition

    recipe = distiller.recipe
    result: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "task": distiller.task.name,
        "max length": recipe.data.max_length if recipe.data is not None else None,
        "precision": precision,
        "examples": len(distiller.run.data.train),
    }
    for layout in layouts:
        teacher = distiller.teachers[layout.read.teacher]
        key = f"teachers.{layout.read.teacher}"
        result[f"{key} weights"] = _hash_bytes(_weight_chunks(teacher.model))
        result[f"{key} tokenizer"] = _hash_bytes([json.dumps(_definition(teacher.tokenizer), sort_keys=True,
                                                              default=str).encode()])
        result[f"{key} data (the tokenized inputs)"] = _hash_bytes(_column_chunks(distiller.run.data.train, layout.read.prefix))
        result[f"{key} features"] = layout.describe()
    return result


# ============================================================================= the store


class SlotStore:
    """One teacher's cached outputs: logits (fp32, memory) and features (fp16, memory or a
    memory-mapped file), with the step at which each example was filled (−1: not yet).

    `resume_step`: take back what an earlier run with this fingerprint persisted in `directory`,
    keeping only the examples filled before that step; None starts empty."""

    def __init__(self, layout: Layout, lengths: np.ndarray, mode: str, directory: Path, resume_step: int | None = None):
        self.layout = layout
        self.lengths = lengths
        self.mode = mode
        self.directory = directory
        self.logit_counts, self.logit_starts, logit_total = _offsets(layout.logits, lengths)
        self.feature_counts, self.feature_starts, feature_total = _offsets(layout.features, lengths)
        self.logit_totals = _per_example(self.logit_counts, len(lengths))
        self.feature_totals = _per_example(self.feature_counts, len(lengths))
        reuse = resume_step is not None and self._files_complete(len(lengths), logit_total, feature_total)
        if not reuse and directory.exists():
            # Nothing usable (a fresh start, or files of an interrupted first write): start afresh.
            shutil.rmtree(directory)
        # np.zeros maps untouched pages lazily: memory grows as examples are filled.
        self.logits = np.zeros(logit_total, dtype=np.float32)
        if mode == "disk" and feature_total:
            self.features = self._open_map("features.f16", np.float16, feature_total)
        else:
            self.features = np.zeros(feature_total, dtype=np.float16)
        self.filled_step = np.full(len(lengths), -1, dtype=np.int32)
        self.persisted = np.zeros(len(lengths), dtype=bool)
        if reuse:
            filled = np.load(directory / "filled_step.npy")
            self.filled_step = np.where(filled < resume_step, filled, -1).astype(np.int32)
            self.persisted = self.filled_step >= 0
            if logit_total:
                self.logits[:] = np.fromfile(directory / "logits.f32", dtype=np.float32)
            if feature_total and mode == "memory":
                self.features[:] = np.fromfile(directory / "features.f16", dtype=np.float16)

    # -- files ----------------------------------------------------------------------------------

    def _files_complete(self, examples: int, logit_total: int, feature_total: int) -> bool:
        flags = self.directory / "filled_step.npy"
        if not flags.exists() or len(np.load(flags, mmap_mode="r")) != examples:
            return False
        for name, count, itemsize in (("logits.f32", logit_total, 4), ("features.f16", feature_total, 2)):
            path = self.directory / name
            if count and (not path.exists() or path.stat().st_size != count * itemsize):
                return False
        return True

    def _open_map(self, name: str, dtype: Any, count: int) -> np.ndarray:
        path = self.directory / name
        expected = count * np.dtype(dtype).itemsize
        mode = "r+" if path.exists() and path.stat().st_size == expected else "w+"
        self.directory.mkdir(parents=True, exist_ok=True)
        return np.memmap(path, dtype=dtype, mode=mode, shape=(count,))

    def persist(self) -> None:
        """Write the examples filled since the last call, then the fill steps (renamed into place,
        so the steps never name data that is not written)."""
        new = np.nonzero((self.filled_step >= 0) & ~self.persisted)[0]
        self.directory.mkdir(parents=True, exist_ok=True)
        targets = [(self.logits, self.logit_starts, self.logit_totals, "logits.f32", np.float32)]
        if self.mode == "memory":
            targets.append((self.features, self.feature_starts, self.feature_totals, "features.f16", np.float16))
        for source, starts, totals, name, dtype in targets:
            if not source.size:
                continue
            written = self._open_map(name, dtype, source.size)
            for index in new:
                begin = starts[index]
                written[begin:begin + totals[index]] = source[begin:begin + totals[index]]
            written.flush()
            del written
        if isinstance(self.features, np.memmap):
            self.features.flush()
        temporary = self.directory / "filled_step.tmp.npy"
        np.save(temporary, self.filled_step)
        os.replace(temporary, self.directory / "filled_step.npy")
        self.persisted[new] = True

    # -- filling and reading --------------------------------------------------------------------

    def put(self, indices: Sequence[int], features: Features, step: int) -> None:
        """Keep each example's own slice of a teacher forward over exactly these examples."""
        layout = self.layout
        _, logit_tensors = _logits_components(features.logits)
        logit_tensors = [tensor.detach().float().cpu() for tensor in logit_tensors]
        feature_tensors = []
        for part in layout.features:
            tensor = _feature_tensor(features, part).detach()
            if torch.is_floating_point(tensor) and tensor.abs().amax() > FP16_MAX:
                raise ModelError(
                    f"distillation.teacher_cache: the teacher's {part.name.replace('.', ' ', 1)} has values beyond the "
                    f"fp16 range (±{FP16_MAX:.0f}) that the cache stores features in — set "
                    f"`distillation.teacher_cache: off` for this teacher"
                )
            feature_tensors.append(tensor.to(torch.float16).cpu())
        for position, index in enumerate(indices):
            length = int(self.lengths[index])
            start = self.logit_starts[index]
            for number, (part, tensor) in enumerate(zip(layout.logits, logit_tensors)):
                count = self.logit_counts[number][index]
                self.logits[start:start + count] = part.piece(tensor, position, length).reshape(-1).numpy()
                start += count
            start = self.feature_starts[index]
            for number, (part, tensor) in enumerate(zip(layout.features, feature_tensors)):
                count = self.feature_counts[number][index]
                self.features[start:start + count] = part.piece(tensor, position, length).reshape(-1).numpy()
                start += count
            self.filled_step[index] = step

    def get(self, indices: Sequence[int], view: dict[str, torch.Tensor], device: torch.device) -> Features:
        """The cached outputs of these examples as one batch, padded to the batch's length with zeros."""
        layout = self.layout
        size = len(indices)
        padded = int(view["input_ids"].shape[1])
        logit_batches = [torch.zeros(part.batch_shape(size, padded), dtype=torch.float32) for part in layout.logits]
        feature_batches = [torch.zeros(part.batch_shape(size, padded), dtype=torch.float16) for part in layout.features]
        for position, index in enumerate(indices):
            length = int(self.lengths[index])
            for source, starts, counts, parts, batches in (
                (self.logits, self.logit_starts, self.logit_counts, layout.logits, logit_batches),
                (self.features, self.feature_starts, self.feature_counts, layout.features, feature_batches),
            ):
                start = starts[index]
                for number, part in enumerate(parts):
                    count = counts[number][index]
                    values = torch.from_numpy(np.asarray(source[start:start + count])).view(part.example_shape(length))
                    part.place(batches[number], position, length, values)
                    start += count
        logits = [tensor.to(device, non_blocking=True) for tensor in logit_batches]
        # Moved in fp16 (half the bytes), widened on the device.
        features = {part.name: tensor.to(device, non_blocking=True).float()
                    for part, tensor in zip(layout.features, feature_batches)}
        return self._features(logits, features, view["attention_mask"])

    def _features(self, logits: list[torch.Tensor], parts: dict[str, torch.Tensor], mask: torch.Tensor) -> Features:
        layout = self.layout
        if layout.logits_form == "none":
            logits_value: Any = None
        elif layout.logits_form == "tuple":
            logits_value = tuple(logits)
        else:
            logits_value = logits[0]
        hidden = attention = inputs = None
        needs = layout.read.needs
        # Layers the losses do not read stay None; `_select` in the distillers never touches them.
        if needs.hidden_states:
            hidden = tuple(parts.get(f"hidden.{layer}") for layer in range(layout.depth + 1))
        if needs.attention_scores:
            attention = tuple(parts.get(f"attention.{layer}") for layer in range(1, layout.depth + 1))
        if needs.attention_inputs:
            inputs = tuple(
                AttentionInputs(query=parts[f"attention_inputs.{layer}.query"], key=parts[f"attention_inputs.{layer}.key"],
                                value=parts.get(f"attention_inputs.{layer}.value"), num_heads=layout.num_heads)
                if f"attention_inputs.{layer}.query" in parts else None
                for layer in range(1, layout.depth + 1)
            )
        return Features(logits=logits_value, attention_mask=mask, hidden_states=hidden, attention_scores=attention,
                        attention_inputs=inputs)


def _feature_tensor(features: Features, part: Part) -> torch.Tensor:
    kind, layer, *rest = part.name.split(".")
    layer = int(layer)
    if kind == "hidden":
        return features.hidden_states[layer]
    if kind == "attention":
        return features.attention_scores[layer - 1]
    return getattr(features.attention_inputs[layer - 1], rest[0])


# ============================================================================= the cache


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0
    skipped_forwards: int = 0
    forwards: int = 0


class TeacherCache:
    """The cache of one process: a store per teacher the losses read."""

    def __init__(self, plan: CachePlan, stores: dict[int, SlotStore], directory: Path):
        self.plan = plan
        self.stores = stores
        self.directory = directory
        self.counts = CacheCounts()

    def read_of(self, teacher: int) -> TeacherRead | None:
        store = self.stores.get(teacher)
        return store.layout.read if store is not None else None

    def features(self, teacher: int, batch: dict[str, torch.Tensor], compute: Callable[[dict[str, torch.Tensor]], Features],
                 step: int) -> Features:
        """Teacher `teacher`'s outputs for `batch`: from the cache, or computed (for the missing
        examples only) and kept. `compute(batch)` runs the teacher on a batch of whole examples."""
        from brewer_cli.teacher_views import view_batch

        store = self.stores[teacher]
        indices = batch["index"].tolist()
        missing = [position for position, index in enumerate(indices) if store.filled_step[index] < 0]
        self.counts.hits += len(indices) - len(missing)
        self.counts.misses += len(missing)
        if len(missing) == len(indices):
            # A batch seen for the first time: the fresh outputs are returned as they are.
            self.counts.forwards += 1
            fresh = compute(batch)
            store.put(indices, fresh, step)
            return fresh
        if missing:
            self.counts.forwards += 1
            size = len(indices)
            chosen = torch.tensor(missing, device=batch["index"].device)
            part = {name: value.index_select(0, chosen) if torch.is_tensor(value) and value.dim() and value.shape[0] == size
                    else value for name, value in batch.items()}
            store.put([indices[position] for position in missing], compute(part), step)
        else:
            self.counts.skipped_forwards += 1
        view = view_batch(batch, store.layout.read.prefix)
        return store.get(indices, view, batch["input_ids"].device)

    def persist(self) -> None:
        for store in self.stores.values():
            store.persist()

    def report(self) -> dict[str, Any]:
        """For summary.json: the mode, its size and how often this process's cache answered."""
        counts = self.counts
        return {"mode": self.plan.mode, "requested": self.plan.requested, "estimated_bytes": self.plan.total_bytes,
                "hits": counts.hits, "misses": counts.misses, "teacher_forwards": counts.forwards,
                "teacher_forwards_skipped": counts.skipped_forwards}


def open_teacher_cache(distiller: Any, run_dir: Path, resume: bool, step: int, total_steps: int, steps_per_epoch: int,
                       accelerator: Any, precision: str) -> TeacherCache | None:
    """The cache of this process for a run about to train from `step` (None when the plan is off).

    Every process reads the stored fingerprint before any writes a new one (a barrier between),
    so all processes reach the same verdict and a refusal is raised on every one of them — none
    is left waiting in a collective for a process that stopped."""
    plan = plan_cache(distiller, total_steps, steps_per_epoch, accelerator.num_processes, run_dir)
    if plan.mode == "off":
        return None
    root = Path(run_dir) / DIRECTORY_NAME
    current = fingerprint(distiller, plan.layouts, precision)
    stored_path = root / "fingerprint.json"
    stored = json.loads(stored_path.read_text()) if resume and stored_path.exists() else None
    if stored is None and accelerator.is_main_process and root.exists():
        # A fresh start, or a cache without its fingerprint: nothing in it can be trusted.
        shutil.rmtree(root)
    accelerator.wait_for_everyone()
    if stored is not None and stored != current:
        differing = [name for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]
        raise CheckpointError(
            f"{distiller.recipe.path}: distillation.teacher_cache: {root} holds teacher outputs cached for a "
            f"different {', '.join(differing)} than this run's — training on them would distill the wrong targets. "
            f"Resume with the recipe, teacher and data that made them, delete {root} (it is rebuilt as the run "
            f"goes), or set `distillation.teacher_cache: off`"
        )
    directory = root / f"process-{accelerator.process_index}"
    data = distiller.run.data.train
    stores = {
        layout.read.teacher: SlotStore(layout, example_lengths(data, layout.read.prefix), plan.mode,
                                       directory / f"teacher-{layout.read.teacher}",
                                       resume_step=step if stored is not None else None)
        for layout in plan.layouts
    }
    if stored is None and accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        temporary = root / "fingerprint.json.tmp"
        temporary.write_text(json.dumps(current, indent=2))
        os.replace(temporary, stored_path)
    return TeacherCache(plan, stores, root)
