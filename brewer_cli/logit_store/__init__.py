"""Sparse teacher logits on disk (issue 19 §4): `brewer capture` runs a causal LM teacher once over
the training split and keeps, per counted token, its top-k next-token ids, their log-probabilities
at the capture temperature and the log of the remaining mass; a recipe with `teacher: {store: DIR}`
distills from that instead of a teacher in memory.

Why not the teacher-output cache (brewer_cli.teacher_cache): it keeps dense logits, and a causal
LM's are L × V per example — 128 tokens × 150k vocabulary × 4 bytes = 77 MB per example. The top 64
with their tail take ~6 bytes × 64 per token, and most of the teacher's mass (for a trained LM) sits
in them. The store is also written once and read by any number of student runs.

- sparse.py: top-k + tail in fp32, chunked over rows.
- fingerprints.py: the hashes the manifest records (data, tokenizer, teacher weights).
- files.py: the Parquet shards, manifest.json, the writer (DIR.partial → DIR) and the reader.
- capture.py: the teacher's pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brewer_cli.errors import ModelError
from brewer_cli.features import Features, SparseLogits
from brewer_cli.logit_store.capture import capture_store, length_sorted_batches
from brewer_cli.logit_store.files import (
    CAPTURING_MARKER,
    LOG_PROB_DTYPES,
    MANIFEST,
    TOKENIZER_DIRECTORY,
    LogitStore,
    Manifest,
    StoreWriter,
    UnreadableStore,
    partial_directory,
)
from brewer_cli.logit_store.fingerprints import data_fingerprint, tokenizer_hash, weights_hash
from brewer_cli.logit_store.sparse import TopK, top_k_rows

TAILS = ("zero", "uniform")


def open_store(directory: Path, where: str) -> LogitStore:
    """The complete store at `directory`; `where`: `FILE: teacher.store` for messages."""
    directory = Path(directory)
    if not directory.is_dir():
        partial = partial_directory(directory)
        detail = f" ({partial} exists: a capture that did not finish — run brewer capture again)" if partial.exists() else ""
        raise ModelError(
            f"{where}: {str(directory)!r} does not exist{detail} — write the store first with "
            f"`brewer capture RECIPE --output {directory}` (RECIPE: this recipe with the teacher's checkpoint)"
        )
    if not (directory / MANIFEST).is_file() or (directory / CAPTURING_MARKER).exists():
        raise ModelError(
            f"{where}: {str(directory)!r} is not a complete teacher store (no {MANIFEST}) — a store is complete only "
            f"when brewer capture has finished; run it again"
        )
    try:
        return LogitStore(directory)
    except UnreadableStore as problem:
        raise ModelError(
            f"{where}: {str(directory)!r} cannot be read as a teacher store: {problem} — re-run `brewer capture` "
            f"on this recipe's data to write the store again (with --output {directory})"
        ) from problem


@dataclass(frozen=True)
class TeacherStore:
    """What a distiller reads in place of a teacher model: the store, how its tail is spread,
    and how to load the teacher itself for its eval metrics (None: not available)."""

    store: LogitStore
    tail: str
    load_teacher: Callable[[], Any] | None = None
    not_loadable: str = ""  # why the teacher's metrics are not available, when load_teacher is None
    # Set by `teacher_for_metrics` when the checkpoint no longer holds the captured weights.
    changed: list[str] = field(default_factory=list)

    @property
    def unavailable(self) -> str:
        """Why the teacher's eval metrics are not reported."""
        return self.changed[0] if self.changed else self.not_loadable

    def teacher_for_metrics(self) -> Any:
        """The captured teacher, loaded for its eval metrics — None when the checkpoint at the
        manifest's path now holds other weights (retrained, overwritten): its metrics would be
        reported as the store's teacher's without being them (`unavailable` says so)."""
        teacher = self.load_teacher()
        recorded = self.store.manifest.teacher
        expected = recorded.get("weights_hash")
        dtype = getattr(torch, recorded["dtype"], None) if isinstance(recorded.get("dtype"), str) else None
        if expected is not None and weights_hash(teacher.model, dtype) != expected:
            self.changed[:] = [
                f"the teacher's eval metrics are unavailable: the checkpoint {recorded.get('path')} no longer holds "
                f"the weights the store was captured from (their hash differs from manifest.json's teacher.weights_hash)"
            ]
            return None
        return teacher

    def features(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> Features:
        logits = self.store.sparse_logits(batch["index"], mask, self.tail)
        return Features(logits=logits, attention_mask=batch["attention_mask"])

    def summary(self) -> dict[str, Any]:
        """summary.json's `teacher` for a run that read the store."""
        manifest = self.store.manifest
        return {
            "store": str(self.store.directory),
            "checkpoint": manifest.teacher.get("source"),
            "parameters": manifest.teacher.get("parameters") or 0,
            "k": manifest.k,
            "temperature": manifest.temperature,
            "tail": self.tail,
            "bytes_per_token": manifest.bytes_per_token,
        }

    def describe(self) -> str:
        """The plan's line."""
        manifest = self.store.manifest
        teacher = manifest.teacher.get("source")
        metrics = "its eval metrics from that checkpoint" if self.load_teacher is not None else self.unavailable
        return (
            f"teacher: store {self.store.directory} — top {manifest.k} of {manifest.vocabulary_size:,} token ids at "
            f"temperature {manifest.temperature:g} ({manifest.log_prob_dtype}), tail {self.tail}, "
            f"{manifest.data.get('counted_tokens', 0):,} tokens, {manifest.bytes_per_token:.0f} bytes per token; "
            f"captured from {teacher}; no teacher model in memory; {metrics}"
        )


__all__ = [
    "CAPTURING_MARKER",
    "LOG_PROB_DTYPES",
    "MANIFEST",
    "TAILS",
    "TOKENIZER_DIRECTORY",
    "LogitStore",
    "Manifest",
    "SparseLogits",
    "StoreWriter",
    "TeacherStore",
    "TopK",
    "capture_store",
    "data_fingerprint",
    "length_sorted_batches",
    "open_store",
    "partial_directory",
    "tokenizer_hash",
    "top_k_rows",
    "weights_hash",
]
