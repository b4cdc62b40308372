"""The prefilled teacher-output store (`distillation.teacher_cache: prefill`, and what `auto` picks
when the cache fits): one teacher pass over the whole training split before training, so that no
training step runs the teacher.

Why a pass before training. Filled as examples are first seen, the first epoch runs the teacher
inside every training step, at the training batch's size and shape, with the student's
optimizer state and activations held beside it. A separate pass runs the teacher alone under
`torch.inference_mode`, in batches sorted by length (little padding) of up to `prefill_tokens`
padded tokens (halved on a CUDA out-of-memory error, down to one example),
under the run's mixed-precision autocast so that the values are the ones the lazy cache would
have kept.

Where. `<output folder>/teacher_outputs/<fingerprint hash>/` beside the runs: the fingerprint
(cache.fingerprint: teacher weights, tokenizer, tokenized data, max length, features, precision)
holds no seed, so runs that differ in seed, student or schedule share one store, and `--resume`
finds it complete. It is written to `<hash>.partial/` and renamed when every example is in, so a
store that exists is complete; an interrupted pass starts again.

Several processes. The main process creates the files at their full size; each process then
fills every world-size-th example of the length order (its shard, balanced in tokens) straight
into them at its examples' offsets, saves which examples it filled, and after a barrier the main
process checks that every example is in and renames the folder. Every process then reads the
complete store (the files must be on a filesystem all processes see — one machine, or a shared
disk).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from brewer_cli.errors import ModelError
from brewer_cli.features import Features
from brewer_cli.teacher_cache.layout import Layout, TeacherRead, example_lengths, offsets
from brewer_cli.teacher_cache.plan import PREFILL_DIRECTORY
from brewer_cli.teacher_cache.store import SlotStore

FILLED = "filled_step.npy"
# Padded tokens per prefill batch. A GPU is kept busy by large batches; 16,384 tokens keep a
# BERT-base teacher's returned hidden states and attention scores within a few GiB. A CPU is not:
# its cores are busy at 2,048 tokens, and larger batches are slower per example and grow the
# process's peak memory (MiniLM-L6 on SST-2, benchmarks/prefill_batch.py: about 3 ms per example
# and +130 to +165 MiB at 2,048 tokens, 5 ms and +670 to +690 MiB at 16,384).
PREFILL_TOKENS = {"cuda": 16384}
PREFILL_TOKENS_ELSEWHERE = 2048


def prefill_tokens(device: torch.device) -> int:
    """Padded tokens per prefill batch for a teacher on `device`."""
    return PREFILL_TOKENS.get(device.type, PREFILL_TOKENS_ELSEWHERE)


def store_directory(run_dir: Path, current: dict[str, Any]) -> Path:
    """The prefilled store of this fingerprint, beside the runs."""
    digest = hashlib.blake2b(json.dumps(current, sort_keys=True).encode(), digest_size=8).hexdigest()
    return Path(run_dir).parent / PREFILL_DIRECTORY / digest


def is_complete(directory: Path, current: dict[str, Any]) -> bool:
    stored = directory / "fingerprint.json"
    return stored.is_file() and json.loads(stored.read_text()) == current


def batch_end(indices: Sequence[int], start: int, lengths: np.ndarray, tokens: int) -> int:
    """Where the batch that begins at `start` ends: `indices` are in length order, longest first,
    so a batch pads to its first example, and it holds at most `tokens` padded tokens (at least
    one example)."""
    longest = max(int(lengths[indices[start]]), 1)
    return min(len(indices), start + max(1, tokens // longest))


def prefill(
    directory: Path,
    current: dict[str, Any],
    layouts: Sequence[Layout],
    data: Any,
    compute: Callable[[TeacherRead, list[int]], Features],
    accelerator: Any,
    on_progress: Callable[[int, int], None] | None = None,
    tokens: int = PREFILL_TOKENS_ELSEWHERE,
) -> bool:
    """Fill the store at `directory` unless it is complete; returns whether it was filled now.
    `compute(read, indices)`: the teacher's outputs on those training examples (one batch) of at
    most `tokens` padded tokens (`prefill_tokens`).

    The main process holds `<hash>.lock` from its check to the rename, so two runs that start
    together (a seed sweep into one output folder) fill the store once: the second waits and then
    finds it complete. The verdict is the main process's, sent to the others, so all agree; an
    error on any process is raised on every one, so none waits at a barrier for a process that
    stopped."""
    lock = _lock(directory) if accelerator.is_main_process else None
    try:
        complete = is_complete(directory, current) if accelerator.is_main_process else None
        complete = broadcast_object_list([complete])[0]
        if complete:
            return False
        partial = directory.with_name(directory.name + ".partial")
        lengths_of = {layout.read.teacher: example_lengths(data, layout.read.prefix) for layout in layouts}
        _together(accelerator, lambda: _create_all(partial, layouts, lengths_of) if accelerator.is_main_process else None)
        _together(accelerator, lambda: _fill_share(partial, layouts, lengths_of, compute, accelerator, on_progress, tokens))
        _together(
            accelerator,
            lambda: (
                _finish(partial, directory, current, layouts, accelerator.num_processes) if accelerator.is_main_process else None
            ),
        )
        return True
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock


def _lock(directory: Path) -> Any:
    directory.parent.mkdir(parents=True, exist_ok=True)
    handle = open(directory.with_name(directory.name + ".lock"), "a")
    fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another run fills this store
    return handle


def _together(accelerator: Any, action: Callable[[], Any]) -> None:
    """Run `action` on every process, then a barrier that also carries whether any process
    failed: the failing one raises its error, the others say which process stopped."""
    failure: BaseException | None = None
    try:
        action()
    except Exception as error:  # raised again below, on this process and (as a message) on the others
        failure = error
    flags = accelerator.gather(torch.tensor([int(failure is not None)], device=accelerator.device))
    if failure is not None:
        raise failure
    failed = [rank for rank, flag in enumerate(flags.tolist()) if flag]
    if failed:
        raise ModelError(
            f"teacher-output prefill: process {failed[0]} stopped with an error (its message is above); the store "
            f"was not completed, and the next run fills it again"
        )


def _create_all(partial: Path, layouts: Sequence[Layout], lengths_of: dict[int, np.ndarray]) -> None:
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted pass: its examples are not known to be written
    for layout in layouts:
        _create_files(layout, lengths_of[layout.read.teacher], partial / f"teacher-{layout.read.teacher}")


def _fill_share(
    partial: Path,
    layouts: Sequence[Layout],
    lengths_of: dict[int, np.ndarray],
    compute: Callable[[TeacherRead, list[int]], Features],
    accelerator: Any,
    on_progress: Callable[[int, int], None] | None,
    tokens_per_batch: int,
) -> None:
    """This process's examples: every world-size-th of the length order, longest first."""
    rank, world = accelerator.process_index, accelerator.num_processes
    total = sum(len(lengths) for lengths in lengths_of.values())
    done = 0
    for layout in layouts:
        lengths = lengths_of[layout.read.teacher]
        folder = partial / f"teacher-{layout.read.teacher}"
        writer = SlotStore.shared_writer(layout, lengths, folder)
        mine = np.argsort(-lengths, kind="stable")[rank::world].tolist()
        start, tokens = 0, tokens_per_batch
        while start < len(mine):
            end = batch_end(mine, start, lengths, tokens)
            try:
                with torch.inference_mode():
                    outputs = compute(layout.read, mine[start:end])
            except torch.cuda.OutOfMemoryError:
                if end - start == 1:
                    raise
                tokens //= 2  # as large as memory allows: halve and cut the batch again
                torch.cuda.empty_cache()
                continue
            writer.put(mine[start:end], outputs, 0)
            done += (end - start) * world
            start = end
            if on_progress is not None:
                on_progress(min(done, total), total)
        writer.close()
        np.save(folder / f"filled-{rank}.npy", writer.filled_step)


def _finish(partial: Path, directory: Path, current: dict[str, Any], layouts: Sequence[Layout], world: int) -> None:
    for layout in layouts:
        _merge_filled(partial / f"teacher-{layout.read.teacher}", world)
    (partial / "fingerprint.json").write_text(json.dumps(current, indent=2))
    if directory.exists():
        shutil.rmtree(directory)  # a store of another format under this hash
    os.replace(partial, directory)


def open_store(layout: Layout, lengths: np.ndarray, mode: str, directory: Path) -> SlotStore:
    """A complete store, read-only: logits (and in memory mode the features) read into memory,
    disk-mode features read from the shared file example by example."""
    # Prefilled examples carry step 0, so every one counts from the first step on.
    return SlotStore(layout, lengths, mode, directory / f"teacher-{layout.read.teacher}", resume_step=1, read_only=True)


def _create_files(layout: Layout, lengths: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, parts, itemsize in (("logits.f32", layout.logits, 4), ("features.f16", layout.features, 2)):
        count = offsets(parts, lengths)[2]
        if count:
            with open(folder / name, "wb") as handle:
                try:
                    # Reserve the blocks now: a full disk is then an error here, before the
                    # teacher has run, not after an hour of filling.
                    os.posix_fallocate(handle.fileno(), 0, count * itemsize)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without it
                        raise ModelError(
                            f"teacher-output prefill: cannot reserve {count * itemsize:,} bytes for {folder / name}: {error}"
                        ) from None
                    handle.truncate(count * itemsize)


def _merge_filled(folder: Path, world: int) -> None:
    parts = [folder / f"filled-{rank}.npy" for rank in range(world)]
    filled = np.max(np.stack([np.load(part) for part in parts]), axis=0)
    missing = int((filled < 0).sum())
    if missing:
        raise RuntimeError(f"teacher-output prefill: {missing} examples were not filled in {folder}")
    np.save(folder / FILLED, filled.astype(np.int32))
    for part in parts:
        part.unlink()
