"""Whether and where a run caches its teachers' outputs: the plan (`plan_cache`), with its size
estimate and the reason for its choice, as the dry run prints it."""

from __future__ import annotations

import resource
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brewer_cli.tasks.streams import MaskingCollate
from brewer_cli.teacher_cache.layout import INT8_ROW, Layout, example_lengths, offsets, probe_layout

MODES = ("auto", "off", "memory", "disk", "prefill")
MEMORY_BUDGET_BYTES = 2 * 1024**3
# `auto` keeps the cache in memory only while it adds at most this share to the peak memory the
# run has without it; above that it goes to disk, where its pages sit in the kernel's page cache,
# outside the process (store.py reads the file example by example), at a pread per example. That
# costs little: on 128-token inputs a run reading its store from disk trained at 2.40x TextBrewer's
# speed, one reading it from memory at 2.36x (epochs 2+, benchmarks/vs_textbrewer.py), so memory
# is chosen only where it adds little to the run's peak.
MEMORY_MARGIN = 0.05
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
            where = "file, read example by example" if self.mode == "disk" else "memory"
            what += f" + {_size(self.feature_bytes)} features ({self._forms()}, {where}: {features})"
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

    def _forms(self) -> str:
        forms = {part.form for layout in self.layouts for part in layout.features}
        if forms == {INT8_ROW}:
            return "int8 with an fp16 scale per token"
        return "hidden states int8 with an fp16 scale per token, the rest fp16" if INT8_ROW in forms else "fp16"


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
    if distiller.data.train.streamed:
        return CachePlan("off", requested, "data.train is streamed: read once, in order, so no example comes again to reuse")
    if isinstance(distiller.collate, MaskingCollate):
        return CachePlan(
            "off", requested, "task.mask_probability: the inputs are masked afresh every epoch, so no output comes again"
        )
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
    if requested == "auto" and total_steps <= steps_per_epoch:
        return CachePlan(
            "off",
            requested,
            f"{total_steps} steps of {steps_per_epoch} per epoch: each example is seen "
            f"once at most, so there is nothing to reuse",
            **sizes,
        )
    # `auto` and `prefill` prefill: one store for all processes, written before training.
    plain = plain_peak_bytes(distiller)
    limit = min(MEMORY_BUDGET_BYTES, int(MEMORY_MARGIN * plain))
    if total <= limit:
        reason = f"{_size(total)} adds at most {MEMORY_MARGIN:.0%} to the run's own peak memory of about {_size(plain)}"
        return CachePlan("memory", requested, reason, fill="prefill", **sizes)
    over = (
        f"over the {_size(MEMORY_BUDGET_BYTES)} memory budget"
        if limit == MEMORY_BUDGET_BYTES
        else f"{_size(total)} would add more than {MEMORY_MARGIN:.0%} to the run's own peak memory of about {_size(plain)}"
    )
    free = shutil.disk_usage(_existing_parent(run_dir)).free
    if requested == "prefill" or total <= free * DISK_SHARE:
        return CachePlan("disk", requested, f"{over}; {_size(free)} free on disk", fill="prefill", **sizes)
    return CachePlan(
        "off",
        requested,
        f"the features would take {_size(total)}, more than half of the "
        f"{_size(free)} free on disk — match fewer layers, or set distillation.teacher_cache: disk to "
        f"insist",
        **sizes,
    )


def plain_peak_bytes(distiller: Any) -> int:
    """The peak host memory the run would reach without a cache, estimated before training: the
    process's peak so far (models loaded, data tokenized) plus, for the trainable parameters held
    on the host, their gradients and AdamW's two moments. Activations are left out, so the
    estimate is low and the rule errs towards disk."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    on_host = sum(
        parameter.numel() * parameter.element_size()
        for parameter in distiller.parameters()
        if parameter.requires_grad and parameter.device.type == "cpu"
    )
    return peak + 3 * on_host


def _existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path
