"""Whether and where a run caches its teachers' outputs: the plan (`plan_cache`), with its size
estimate and the reason for its choice, as the dry run prints it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.teacher_cache.layout import Layout, example_lengths, offsets, probe_layout

MODES = ("auto", "off", "memory", "disk", "prefill")
MEMORY_BUDGET_BYTES = 2 * 1024**3
# `auto` leaves at least half of the free disk space to checkpoints and everything else.
DISK_SHARE = 0.5
# Prefilled stores live beside the runs (the recipe's output folder), one folder per fingerprint.
PREFILL_DIRECTORY = "teacher_outputs"


@dataclass(frozen=True)
class CachePlan:
    """The mode a run uses, why, and the estimated size of the cache per process."""

    mode: str  # off | memory | disk: where the features live
    requested: str
    reason: str
    logits_bytes: int = 0
    feature_bytes: int = 0
    layouts: tuple[Layout, ...] = ()
    # lazy: filled as examples are first seen, in the run's teacher_cache/; prefill: in one pass
    # before training, into a store beside the runs that later runs share (prefill.py).
    fill: str = "lazy"

    @property
    def total_bytes(self) -> int:
        return self.logits_bytes + self.feature_bytes

    def describe(self) -> str:
        shown = f"prefill, {self.mode}" if self.fill == "prefill" and self.mode != "off" else self.mode
        chosen = f"auto → {shown}" if self.requested == "auto" else shown
        if self.mode == "off":
            return f"{chosen} ({self.reason})"
        features = "; ".join(layout.feature_words() for layout in self.layouts if layout.features)
        what = f"{_size(self.logits_bytes)} logits (fp32, in memory)"
        if self.feature_bytes:
            where = "memory-mapped file" if self.mode == "disk" else "memory"
            what += f" + {_size(self.feature_bytes)} features (fp16, {where}: {features})"
        if self.fill == "prefill":
            return (
                f"{chosen} — {what}; filled by one teacher pass over the training set before training (length-sorted "
                f"batches, every process its share), so training never runs the teacher ({self.reason}); kept in "
                f"{PREFILL_DIRECTORY}/ beside the runs, where --resume and later runs of this teacher and data reuse it"
            )
        return (
            f"{chosen} — {what} per process; filled as examples are first seen, reused after ({self.reason}); "
            f"kept in teacher_cache/ beside the run for --resume"
        )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def plan_cache(distiller: Any, total_steps: int, steps_per_epoch: int, run_dir: Path) -> CachePlan:
    """Whether and where the run caches its teachers' outputs (see the module docstring)."""
    requested = distiller.inputs.teacher_cache_mode
    reads = distiller.teacher_reads()
    if not reads:
        return CachePlan("off", requested, f"kind {distiller.kind} does not cache teacher outputs")
    if requested == "off":
        return CachePlan("off", requested, "distillation.teacher_cache: off")
    # A multi-task run's group of tasks declares nothing: its tasks' logits are small.
    if requested == "auto" and not getattr(distiller.task, "caches_teacher_logits", True):
        return CachePlan(
            "off",
            requested,
            f"task {distiller.task.name}: the teacher's logits are dense over the vocabulary at every token (L × V per "
            f"example: 128 tokens × 150k ids in fp32 = 77 MB) — keep its top-k instead with `brewer capture` and "
            f"`teacher: {{store: DIR}}`",
        )
    layouts = tuple(probe_layout(distiller, read) for read in reads)
    data = distiller.data.train
    logits_bytes = feature_bytes = 0
    for layout in layouts:
        lengths = example_lengths(data, layout.read.prefix)
        logits_bytes += offsets(layout.logits, lengths)[2] * 4
        feature_bytes += offsets(layout.features, lengths)[2] * 2
    total = logits_bytes + feature_bytes
    sizes = {"logits_bytes": logits_bytes, "feature_bytes": feature_bytes, "layouts": layouts}
    if requested in ("memory", "disk"):
        return CachePlan(requested, requested, f"distillation.teacher_cache: {requested}", **sizes)
    if requested == "prefill":
        # The storage `auto` would pick; the prefilled store is one for all processes.
        if total <= MEMORY_BUDGET_BYTES:
            return CachePlan("memory", requested, f"fits the {_size(MEMORY_BUDGET_BYTES)} memory budget", fill="prefill", **sizes)
        return CachePlan("disk", requested, f"over the {_size(MEMORY_BUDGET_BYTES)} memory budget", fill="prefill", **sizes)
    if total_steps <= steps_per_epoch:
        return CachePlan(
            "off",
            requested,
            f"{total_steps} steps of {steps_per_epoch} per epoch: each example is seen "
            f"once at most, so there is nothing to reuse",
            **sizes,
        )
    # `auto` prefills what it caches: one store for all processes, written before training.
    if total <= MEMORY_BUDGET_BYTES:
        return CachePlan("memory", requested, f"fits the {_size(MEMORY_BUDGET_BYTES)} memory budget", fill="prefill", **sizes)
    free = shutil.disk_usage(_existing_parent(run_dir)).free
    if total <= free * DISK_SHARE:
        return CachePlan(
            "disk",
            requested,
            f"over the {_size(MEMORY_BUDGET_BYTES)} memory budget; {_size(free)} free on disk",
            fill="prefill",
            **sizes,
        )
    return CachePlan(
        "off",
        requested,
        f"the features would take {_size(total)}, more than half of the "
        f"{_size(free)} free on disk — match fewer layers, or set distillation.teacher_cache: disk to "
        f"insist",
        **sizes,
    )


def _existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path
