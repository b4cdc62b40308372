"""One teacher's cached outputs (`SlotStore`): logits in fp32 in memory, features as fp16
elements in memory or in a file (hidden states int8 with a scale per token, packed into them:
layout.INT8_ROW), each example's values laid end to end at its offset.

Files are read and written with `pread`/`pwrite` at an example's offset, never memory-mapped: the
pages of a mapped file count in the process's resident memory as they are touched, so a disk-mode
cache read through a map ends the run holding it all, which is what disk mode exists to avoid —
read this way, the file's pages stay in the kernel's page cache, outside the process and shared by
every run that reads the store. A full disk is then an `OSError` at the write, not a SIGBUS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brewer_cli.errors import ModelError
from brewer_cli.features import AttentionInputs, Features
from brewer_cli.teacher_cache.layout import Layout, Part, elements_per_example, logits_components, offsets


class SlotStore:
    """One teacher's cached outputs: logits (fp32, memory) and features (fp16 elements, hidden
    states as int8 rows within them; memory or a file read example by example), with the step at
    which each example was filled (−1: not yet).

    `resume_step`: take back what an earlier run with this fingerprint persisted in `directory`,
    keeping only the examples filled before that step; None starts empty. `read_only`: a prefilled
    store (prefill.py), shared by runs and processes — read from its files, never written."""

    def __init__(
        self,
        layout: Layout,
        lengths: np.ndarray,
        mode: str,
        directory: Path,
        resume_step: int | None = None,
        read_only: bool = False,
    ):
        logit_total, feature_total = self._lay_out(layout, lengths, mode, directory)
        self.read_only = read_only
        reuse = resume_step is not None and self._files_complete(len(lengths), logit_total, feature_total)
        if read_only and not reuse:
            raise ModelError(f"the prefilled teacher outputs in {directory} are incomplete — delete the folder to fill it again")
        if not reuse and directory.exists():
            # Nothing usable (a fresh start, or files of an interrupted first write): start afresh.
            shutil.rmtree(directory)
        # np.zeros maps untouched pages lazily: memory grows as examples are filled.
        self.logits: Values = InMemory(np.zeros(logit_total, dtype=np.float32))
        if mode == "disk" and feature_total:
            self.features: Values = InFile(self._file("features.f16"), np.float16, feature_total, writable=not read_only)
        else:
            self.features = InMemory(np.zeros(feature_total, dtype=np.float16))
        self.filled_step = np.full(len(lengths), -1, dtype=np.int32)
        self.persisted = np.zeros(len(lengths), dtype=bool)
        if reuse:
            filled = np.load(directory / "filled_step.npy")
            self.filled_step = np.where(filled < resume_step, filled, -1).astype(np.int32)
            self.persisted = self.filled_step >= 0
            if logit_total:
                _read_into(directory / "logits.f32", self.logits.array)
            if feature_total and mode == "memory":
                _read_into(directory / "features.f16", self.features.array)

    def _lay_out(self, layout: Layout, lengths: np.ndarray, mode: str, directory: Path) -> tuple[int, int]:
        """Each example's offsets; returns the element counts of the logits and the features."""
        self.layout = layout
        self.lengths = lengths
        self.mode = mode
        self.directory = directory
        self.logit_counts, self.logit_starts, logit_total = offsets(layout.logits, lengths)
        self.feature_counts, self.feature_starts, feature_total = offsets(layout.features, lengths)
        self.logit_totals = elements_per_example(self.logit_counts, len(lengths))
        self.feature_totals = elements_per_example(self.feature_counts, len(lengths))
        return logit_total, feature_total

    @classmethod
    def shared_writer(cls, layout: Layout, lengths: np.ndarray, directory: Path) -> SlotStore:
        """A store that `put`s straight into files another process created at their full size
        (prefill.py): each process writes its own examples, so nothing is cleared or rewritten —
        a file missing or of another size is an error, never created or truncated here."""
        store = cls.__new__(cls)
        logit_total, feature_total = store._lay_out(layout, lengths, "disk", directory)
        store.read_only = False

        def existing(name: str, dtype: Any, count: int) -> Values:
            if not count:
                return InMemory(np.zeros(0, dtype=dtype))
            path = directory / name
            if not path.is_file() or path.stat().st_size != count * np.dtype(dtype).itemsize:
                raise ModelError(
                    f"teacher-output prefill: {path} is missing or of another size on this process — the store must be "
                    f"on a disk every process sees"
                )
            return InFile(path, dtype, count, writable=True)

        store.logits = existing("logits.f32", np.float32, logit_total)
        store.features = existing("features.f16", np.float16, feature_total)
        store.filled_step = np.full(len(lengths), -1, dtype=np.int32)
        store.persisted = np.zeros(len(lengths), dtype=bool)
        return store

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

    def _file(self, name: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / name

    def persist(self) -> None:
        """Write the examples filled since the last call, then the fill steps (renamed into place,
        so the steps never name data that is not written)."""
        if self.read_only:
            return
        new = np.nonzero((self.filled_step >= 0) & ~self.persisted)[0]
        self.directory.mkdir(parents=True, exist_ok=True)
        targets: list[tuple[Values, np.ndarray, np.ndarray, str, Any]] = [
            (self.logits, self.logit_starts, self.logit_totals, "logits.f32", np.float32)
        ]
        if isinstance(self.features, InMemory):
            targets.append((self.features, self.feature_starts, self.feature_totals, "features.f16", np.float16))
        for source, starts, totals, name, dtype in targets:
            if not source.size:
                continue
            written = InFile(self._file(name), dtype, source.size, writable=True)
            for index in new:
                written.write(starts[index], source.read(starts[index], totals[index]))
            written.close()  # flushed to the disk before the steps below name these examples
        self.features.flush()
        temporary = self.directory / "filled_step.tmp.npy"
        np.save(temporary, self.filled_step)
        os.replace(temporary, self.directory / "filled_step.npy")
        self.persisted[new] = True

    def close(self) -> None:
        """Flush and close the store's files (a prefill writer's, when its share is written)."""
        for values in (self.logits, self.features):
            if isinstance(values, InFile):
                values.close()

    # -- filling and reading --------------------------------------------------------------------

    def put(self, indices: Sequence[int], features: Features, step: int) -> None:
        """Keep each example's own slice of a teacher forward over exactly these examples."""
        layout = self.layout
        _, logit_tensors = logits_components(features.logits)
        logit_tensors = [tensor.detach().float().cpu() for tensor in logit_tensors]
        feature_tensors = []
        for part in layout.features:
            tensor = _feature_tensor(features, part).detach()
            limit = part.largest_value
            if torch.is_floating_point(tensor) and tensor.abs().amax() > limit:
                raise ModelError(
                    f"distillation.teacher_cache: the teacher's {part.name.replace('.', ' ', 1)} has values beyond the "
                    f"fp16 range (±{limit:.0f}) that the cache stores features in — set "
                    f"`distillation.teacher_cache: off` for this teacher"
                )
            feature_tensors.append(part.staged(tensor))
        for position, index in enumerate(indices):
            length = int(self.lengths[index])
            # An example's parts lie end to end from its start: one write per example and store.
            for values, starts, parts, tensors in (
                (self.logits, self.logit_starts, layout.logits, logit_tensors),
                (self.features, self.feature_starts, layout.features, feature_tensors),
            ):
                if parts:
                    block = [part.encode(part.piece(tensor, position, length)) for part, tensor in zip(parts, tensors)]
                    values.write(starts[index], block[0] if len(block) == 1 else np.concatenate(block))
            self.filled_step[index] = step

    def get(self, indices: Sequence[int], view: dict[str, torch.Tensor], device: torch.device) -> Features:
        """The cached outputs of these examples as one batch, padded to the batch's length with zeros."""
        layout = self.layout
        padded = int(view["input_ids"].shape[1])
        logit_pieces: list[list[torch.Tensor]] = [[] for _ in layout.logits]
        feature_pieces: list[list[torch.Tensor]] = [[] for _ in layout.features]
        for index in indices:
            length = int(self.lengths[index])
            for source, starts, totals, counts, parts, pieces in (
                (self.logits, self.logit_starts, self.logit_totals, self.logit_counts, layout.logits, logit_pieces),
                (self.features, self.feature_starts, self.feature_totals, self.feature_counts, layout.features, feature_pieces),
            ):
                if not parts:
                    continue
                # An example's parts lie end to end: one read, then each part's own elements.
                block = source.read(starts[index], totals[index])
                ends = np.cumsum([int(counts[number][index]) for number in range(len(parts))])
                for part, kept, values in zip(parts, pieces, np.split(block, ends[:-1])):
                    kept.append(part.decode(values, length))
        logit_batches = [part.batch(pieces, padded) for part, pieces in zip(layout.logits, logit_pieces)]
        feature_batches = [part.batch(pieces, padded) for part, pieces in zip(layout.features, feature_pieces)]
        logits = [tensor.to(device, non_blocking=True) for tensor in logit_batches]
        # Moved as read (fp16 for plain features, half the bytes), widened on the device.
        features = {
            part.name: tensor.to(device, non_blocking=True).float() for part, tensor in zip(layout.features, feature_batches)
        }
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
                AttentionInputs(
                    query=parts[f"attention_inputs.{layer}.query"],
                    key=parts[f"attention_inputs.{layer}.key"],
                    value=parts.get(f"attention_inputs.{layer}.value"),
                    num_heads=layout.num_heads,
                )
                if f"attention_inputs.{layer}.query" in parts
                else None
                for layer in range(1, layout.depth + 1)
            )
        return Features(
            logits=logits_value, attention_mask=mask, hidden_states=hidden, attention_scores=attention, attention_inputs=inputs
        )


class InMemory:
    """A store's values held in the process's memory."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.size = array.size

    def read(self, start: int, count: int) -> np.ndarray:
        return self.array[start : start + count]

    def write(self, start: int, values: np.ndarray) -> None:
        self.array[start : start + values.size] = values

    def flush(self) -> None:
        pass


class InFile:
    """A store's values in a file of exactly `count` elements, read and written at element offsets
    with `pread`/`pwrite` (see the module docstring for why not a memory map). A writable file that
    does not exist yet is created at its full size (sparse: untouched blocks take no disk)."""

    def __init__(self, path: Path, dtype: Any, count: int, writable: bool):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.size = count
        self.descriptor = os.open(path, (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY, 0o644)
        if writable and os.fstat(self.descriptor).st_size != count * self.dtype.itemsize:
            os.ftruncate(self.descriptor, count * self.dtype.itemsize)

    def read(self, start: int, count: int) -> np.ndarray:
        values = np.empty(count, dtype=self.dtype)
        if count and os.preadv(self.descriptor, [memoryview(values).cast("B")], start * self.dtype.itemsize) != values.nbytes:
            raise ModelError(f"{self.path} is shorter than the cache it holds — delete it to fill it again")
        return values

    def write(self, start: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).view(np.uint8)
        offset, done = start * self.dtype.itemsize, 0
        while done < data.size:  # pwrite may write less than asked (signals, some filesystems)
            done += os.pwrite(self.descriptor, data[done:], offset + done)

    def flush(self) -> None:
        os.fsync(self.descriptor)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.fsync(self.descriptor)
            os.close(self.descriptor)
            self.descriptor = -1

    def __del__(self) -> None:
        if getattr(self, "descriptor", -1) >= 0:
            os.close(self.descriptor)


Values = InMemory | InFile


def _read_into(path: Path, array: np.ndarray) -> None:
    """The file's values into `array` in place: no second copy of a cache that may be GiBs."""
    with open(path, "rb") as handle:
        if handle.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise ModelError(f"{path} is shorter than the cache it holds — delete it to fill it again")


def _feature_tensor(features: Features, part: Part) -> torch.Tensor:
    kind, layer, *rest = part.name.split(".")
    layer = int(layer)
    if kind == "hidden":
        return features.hidden_states[layer]
    if kind == "attention":
        return features.attention_scores[layer - 1]
    return getattr(features.attention_inputs[layer - 1], rest[0])
