"""The cache of one process (`TeacherCache`): answers a batch from the stores, runs the teacher
on the missing examples only, and persists what it holds; `open_teacher_cache` opens it for a run,
refusing a stored cache whose fingerprint differs from the run's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brewer_cli.errors import CheckpointError
from brewer_cli.features import Features
from brewer_cli.tasks.examples import integers
from brewer_cli.tasks.views import tokenizer_definition, view_batch
from brewer_cli.teacher_cache.layout import Layout, TeacherRead, example_lengths
from brewer_cli.teacher_cache.plan import CachePlan, plan_cache
from brewer_cli.teacher_cache.prefill import open_store, prefill, prefill_tokens, store_directory
from brewer_cli.teacher_cache.store import SlotStore

FORMAT_VERSION = 2  # 2: hidden states kept as int8 rows (layout.INT8_ROW)
DIRECTORY_NAME = "teacher_cache"


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
    """The token columns a teacher reads, chunk by chunk of the Arrow table (never the whole
    column at once): each chunk's lengths, then its ids, as int64."""
    import pyarrow.compute

    for key in ("input_ids", "token_type_ids", "attention_mask"):
        column = data.arrow_column((prefix or "") + key)
        if column is None:
            continue
        yield key.encode()
        for chunk in column.chunks:
            yield integers(pyarrow.compute.list_value_length(chunk)).tobytes()
            yield integers(pyarrow.compute.list_flatten(chunk)).tobytes()
            data.release()  # the mapped pages this chunk touched (TokenizedDataset.release)


def fingerprint(distiller: Any, layouts: Sequence[Layout], precision: str) -> dict[str, Any]:
    """What the cached values depend on, one hash per ingredient so a mismatch can be named."""
    result: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "task": distiller.task.name,
        "max length": distiller.inputs.max_length,
        "precision": precision,
        "examples": len(distiller.data.train),
    }
    for layout in layouts:
        teacher = distiller.teachers[layout.read.teacher]
        key = f"teachers.{layout.read.teacher}"
        result[f"{key} weights"] = _hash_bytes(_weight_chunks(teacher.model))
        # teacher.dtype: a bf16 teacher's outputs differ from its fp32 self (named, for the message).
        # The weights hash covers each tensor's dtype already; the key is added only where the recipe
        # sets teacher.dtype, so fingerprints written before the setting existed stay equal.
        if getattr(teacher, "dtype", "auto") != "auto":
            result[f"{key} dtype"] = str(next(teacher.model.parameters()).dtype).removeprefix("torch.")
        result[f"{key} tokenizer"] = _hash_bytes(
            [json.dumps(tokenizer_definition(teacher.tokenizer), sort_keys=True, default=str).encode()]
        )
        result[f"{key} data (the tokenized inputs)"] = _hash_bytes(_column_chunks(distiller.data.train, layout.read.prefix))
        result[f"{key} features"] = layout.describe()
    return result


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0
    skipped_forwards: int = 0
    forwards: int = 0


class TeacherCache:
    """The cache of one process: a store per teacher the losses read."""

    def __init__(self, plan: CachePlan, stores: dict[int, SlotStore], directory: Path, prefill: dict[str, Any] | None = None):
        self.plan = plan
        self.stores = stores
        self.directory = directory
        self.counts = CacheCounts()
        # A prefilled store: its folder, whether this run filled it, and the seconds it took.
        self.prefill = prefill

    @property
    def prefilled(self) -> bool:
        """Whether every training example's outputs were in the store before training began."""
        return self.prefill is not None

    def read_of(self, teacher: int) -> TeacherRead | None:
        store = self.stores.get(teacher)
        return store.layout.read if store is not None else None

    def features(
        self, teacher: int, batch: dict[str, torch.Tensor], compute: Callable[[dict[str, torch.Tensor]], Features], step: int
    ) -> Features:
        """Teacher `teacher`'s outputs for `batch`: from the cache, or computed (for the missing
        examples only) and kept. `compute(batch)` runs the teacher on a batch of whole examples."""
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
            part = {
                name: value.index_select(0, chosen)
                if torch.is_tensor(value) and value.dim() and value.shape[0] == size
                else value
                for name, value in batch.items()
            }
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
        looked_up = counts.hits + counts.misses
        return {
            "mode": self.plan.mode,
            "requested": self.plan.requested,
            "fill": self.plan.fill,
            **({"prefill": self.prefill} if self.prefill is not None else {}),
            "estimated_bytes": self.plan.total_bytes,
            "bytes_per_example": round(self.plan.total_bytes / max(1, len(next(iter(self.stores.values())).lengths)), 1),
            "hits": counts.hits,
            "misses": counts.misses,
            "hit_rate": round(counts.hits / looked_up, 4) if looked_up else None,
            "teacher_forwards": counts.forwards,
            "teacher_forwards_skipped": counts.skipped_forwards,
        }


def open_teacher_cache(
    distiller: Any,
    run_dir: Path,
    resume: bool,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    accelerator: Any,
    precision: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> TeacherCache | None:
    """The cache of this process for a run about to train from `step` (None when the plan is off);
    a prefill plan fills its store first, unless a complete one exists (prefill.py).

    Every process reads the stored fingerprint before any writes a new one (a barrier between),
    so all processes reach the same verdict and a refusal is raised on every one of them — none
    is left waiting in a collective for a process that stopped."""
    plan = plan_cache(distiller, total_steps, steps_per_epoch, run_dir)
    if plan.mode == "off":
        return None
    current = fingerprint(distiller, plan.layouts, precision)
    if plan.fill == "prefill":
        return _open_prefilled(distiller, plan, current, run_dir, accelerator, on_progress)
    root = Path(run_dir) / DIRECTORY_NAME
    stored_path = root / "fingerprint.json"
    stored = json.loads(stored_path.read_text()) if resume and stored_path.exists() else None
    if stored is None and accelerator.is_main_process and root.exists():
        # A fresh start, or a cache without its fingerprint: nothing in it can be trusted.
        shutil.rmtree(root)
    accelerator.wait_for_everyone()
    if stored is not None and stored != current:
        differing = [name for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]
        raise CheckpointError(
            f"{distiller.inputs.source}: distillation.teacher_cache: {root} holds teacher outputs cached for a "
            f"different {', '.join(differing)} than this run's — training on them would distill the wrong targets. "
            f"Resume with the recipe, teacher and data that made them, delete {root} (it is rebuilt as the run "
            f"goes), or set `distillation.teacher_cache: off`"
        )
    directory = root / f"process-{accelerator.process_index}"
    data = distiller.data.train
    stores = {
        layout.read.teacher: SlotStore(
            layout,
            example_lengths(data, layout.read.prefix),
            plan.mode,
            directory / f"teacher-{layout.read.teacher}",
            resume_step=step if stored is not None else None,
        )
        for layout in plan.layouts
    }
    if stored is None and accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        temporary = root / "fingerprint.json.tmp"
        temporary.write_text(json.dumps(current, indent=2))
        os.replace(temporary, stored_path)
    return TeacherCache(plan, stores, root)


def _open_prefilled(
    distiller: Any,
    plan: CachePlan,
    current: dict[str, Any],
    run_dir: Path,
    accelerator: Any,
    on_progress: Callable[[int, int], None] | None,
) -> TeacherCache:
    directory = store_directory(run_dir, current)
    started = time.perf_counter()
    # The first teacher's device sizes the batches (teacher.device may differ from the student's).
    device = next(distiller.teachers[plan.layouts[0].read.teacher].model.parameters()).device
    with accelerator.autocast():
        filled = prefill(
            directory,
            current,
            plan.layouts,
            distiller.data.train,
            distiller.teacher_outputs_of,
            accelerator,
            on_progress,
            prefill_tokens(device),
        )
    data = distiller.data.train
    stores = {
        layout.read.teacher: open_store(layout, example_lengths(data, layout.read.prefix), plan.mode, directory)
        for layout in plan.layouts
    }
    report = {"directory": str(directory), "filled_now": filled}
    if filled:
        report["seconds"] = round(time.perf_counter() - started, 2)
    return TeacherCache(plan, stores, directory, prefill=report)
