"""The order of training batches: an epoch sampler that any epoch can be rebuilt from (resume), and
the multi-task plumbing that draws one task per batch.

Multi-task batches hold one task each. The task of a batch is drawn with probability

    p_k = |D_k|^τ / Σ_j |D_j|^τ        (τ = distillation.sampling_temperature)

— τ = 1 samples in proportion to the data sizes, τ = 0 uniformly, in between flattens towards the
small tasks — from a generator seeded by (training.seed, epoch). An epoch is ⌈Σ|D_k| / B⌉ batches:
as many examples as one pass over every task. Within a task, examples come in a fresh random order
each time its data runs out.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from brewer_cli.tasks.base import TokenizedDataset


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

    def __iter__(self) -> Iterator[int]:
        # NumPy arrays, not lists: 8 bytes an example where a list of ints costs about 36, which
        # for a corpus of millions of examples is the difference between flat and growing memory.
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).numpy()
        if self.lengths is None:
            return (int(index) for index in order)
        # Sort within windows of 50 batches by length (longest first; ties keep their shuffled
        # order), then shuffle the batches themselves.
        lengths = np.asarray(self.lengths)
        window = self.batch_size * 50
        sorted_order = np.concatenate(
            [
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in (order[start : start + window] for start in range(0, len(order), window))
            ]
            or [order]
        )
        # A window holds 50 whole batches, so cutting the windows end to end into batches cuts each
        # window into its own batches.
        starts = np.arange(0, len(sorted_order), self.batch_size)
        ends = np.minimum(starts + self.batch_size, len(sorted_order))
        # Only the last window can end in a short group; it goes last, since anywhere else it would
        # shift every later batch across two groups of different lengths.
        short = None
        if len(starts) and ends[-1] - starts[-1] < self.batch_size:
            short = sorted_order[starts[-1] : ends[-1]]
            starts, ends = starts[:-1], ends[:-1]
        batch_order = torch.randperm(len(starts), generator=generator).numpy()
        pieces = [sorted_order[starts[b] : ends[b]] for b in batch_order]
        if short is not None:
            pieces.append(short)
        ordered = np.concatenate(pieces) if pieces else order[:0]
        return (int(index) for index in ordered)


class ProcessBatches(Sampler[list[int]]):
    """An epoch's batches for several processes (DDP), from one EpochSampler order: Accelerate deals
    them out in turn (batch i to process i mod N), so each step's N batches are consecutive
    stretches of the order and every example is read once, by one process.

    Accelerate's own split of a sampler pads the last step with examples from the start of the
    epoch when the examples do not fill it, so those are seen twice. Here the last step's examples
    are spread over the processes instead (⌊r/N⌋ or ⌈r/N⌉ each); when there are fewer left than
    processes, the last two steps share theirs. Every process gets as many batches — a process
    with fewer would leave the others waiting in their gradient all-reduce. Where the order fills
    every step, the batches are exactly those Accelerate would make."""

    def __init__(self, sampler: EpochSampler, batch_size: int, processes: int):
        # Not `batch_size`: Accelerate reads that name as "every batch has this size" and would pad
        # the last step with repeated examples to make it so.
        self.sampler, self.size, self.processes = sampler, batch_size, processes
        # Read by Accelerate when it deals the batches out.
        self.drop_last = False
        if len(sampler) < processes:
            raise ValueError(f"{len(sampler)} examples cannot give each of {processes} processes one")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def sizes(self) -> list[int]:
        count, processes, size = len(self.sampler), self.processes, self.size
        full, rest = divmod(count, size * processes)
        sizes = [size] * (full * processes)
        if rest >= processes:
            sizes += _spread(rest, processes)
        elif rest and size > 1:
            sizes = sizes[:-processes] + _spread(size * processes + rest, 2 * processes)
        elif rest:
            # Batches of one example, and fewer left than processes: no split avoids a repeat, so
            # the last step's missing batches are dealt from the start of the epoch, as Accelerate does.
            sizes += [1] * rest
        return sizes

    def __len__(self) -> int:
        return len(self.sizes())

    def __iter__(self) -> Iterator[list[int]]:
        order = iter(self.sampler)
        for size in self.sizes():
            yield [next(order) for _ in range(size)]


def _spread(count: int, parts: int) -> list[int]:
    """`count` as `parts` near-equal whole numbers, the larger first."""
    return [count // parts + (1 if part < count % parts else 0) for part in range(parts)]


def task_probabilities(sizes: Sequence[int], temperature: float) -> list[float]:
    """p_k ∝ |D_k|^τ."""
    weights = [float(size) ** temperature for size in sizes]
    total = sum(weights)
    return [weight / total for weight in weights]


class MultiTaskDataset(Dataset):
    """The tasks' datasets end to end; each item carries its task's position as `task`."""

    def __init__(self, datasets: Sequence[TokenizedDataset | None]):
        self.datasets = list(datasets)
        self.sizes = [len(dataset) if dataset is not None else 0 for dataset in self.datasets]
        self.offsets = [sum(self.sizes[:index]) for index in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # The last dataset starting at or before `index` (an empty one shares the next one's offset).
        task = bisect.bisect_right(self.offsets, index) - 1
        item = self.datasets[task][index - self.offsets[task]]
        item["task"] = task
        return item

    # Read whole, like each task's examples (a stream is not one of them).
    streamed = False

    def lengths(self) -> np.ndarray:
        return np.concatenate([dataset.lengths() for dataset in self.datasets if dataset is not None] or [np.zeros(0, np.int64)])


class MultiTaskCollate:
    """Each batch is one task's: collated by that task (its padding, its labels), plus `task`."""

    def __init__(self, collates: Sequence[Callable]):
        self.collates = list(collates)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        task = items[0]["task"]
        if any(item["task"] != task for item in items):
            raise ValueError("a multi-task batch mixes examples of several tasks; batches come from MultiTaskBatchSampler")
        batch = self.collates[task](items)
        batch["task"] = torch.full((len(items),), task, dtype=torch.long)
        return batch


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of one task each, the task drawn with probability ∝ |D_k|^τ (module docstring).
    Seeded by (seed, epoch) like EpochSampler, so any epoch can be rebuilt on resume."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int, temperature: float):
        self.sizes = list(sizes)
        self.offsets = [sum(self.sizes[:index]) for index in range(len(self.sizes))]
        self.batch_size = batch_size
        # Accelerate reads these when it shards the batches over several processes.
        self.drop_last = False
        self.seed = seed
        self.probabilities = task_probabilities(self.sizes, temperature)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, math.ceil(sum(self.sizes) / self.batch_size))

    def tasks(self) -> list[int]:
        """This epoch's task of each batch."""
        return self._draw_tasks(self._generator())

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def _draw_tasks(self, generator: torch.Generator) -> list[int]:
        probabilities = torch.tensor(self.probabilities, dtype=torch.float64)
        return torch.multinomial(probabilities, len(self), replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        generator = self._generator()
        orders: list[list[int]] = [[] for _ in self.sizes]
        positions = [0 for _ in self.sizes]
        for task in self._draw_tasks(generator):
            batch: list[int] = []
            while len(batch) < self.batch_size:
                if positions[task] == len(orders[task]):
                    orders[task] = torch.randperm(self.sizes[task], generator=generator).tolist()
                    positions[task] = 0
                take = min(self.batch_size - len(batch), len(orders[task]) - positions[task])
                batch.extend(orders[task][positions[task] : positions[task] + take])
                positions[task] += take
            yield [self.offsets[task] + index for index in batch]
