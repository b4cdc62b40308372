"""Measured latency: median and 90th percentile wall time of one forward pass per batch, after
warm-up, on random token ids without padding, under `torch.inference_mode` in eval mode."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from brewer_cli.errors import BrewerError
from brewer_cli.families.generic import config_value

DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32)
# Two untimed passes absorb one-off costs (allocator growth, kernel selection, lazy init).
WARMUP_RUNS = 2


def check_device(device: str) -> None:
    if device != "cpu" and not device.startswith("cuda"):
        raise BrewerError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BrewerError(
            f"device {device!r} was requested but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use --device cpu."
        )


def measure_latency(
    model: nn.Module,
    seq_len: int = DEFAULT_SEQ_LEN,
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Median and p90 milliseconds per batch and examples per second, for each batch size."""
    return measure_latencies([(model, seq_len)], runs=runs, batch_sizes=batch_sizes, device=device, rounds=1)[0]


def measure_latencies(
    models: Sequence[tuple[nn.Module, int]],
    runs: int = 10,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    device: str = "cpu",
    rounds: int = 1,
) -> list[list[dict[str, Any]]]:
    """`measure_latency` for several (model, sequence length) pairs whose figures are compared: each
    pair's `runs` timed passes per batch size are spread over `rounds` rounds, and every round times
    every pair in turn. A slow spell of the machine (another process, a clock change) then falls on
    all of them alike instead of on whichever model was being timed, which is what made two models
    of one shape differ by half their latency when each was measured in one go. Each block of a
    round starts with an untimed pass that brings the model's weights back into the caches the
    previous model used, so a figure is a model's steady state when it serves alone."""
    check_device(device)
    if runs < 1:
        raise BrewerError(f"latency needs at least one timed run, got runs={runs}.")
    if rounds < 1:
        raise BrewerError(f"latency needs at least one round, got rounds={rounds}.")
    for batch_size in batch_sizes:
        if batch_size < 1:
            raise BrewerError(f"batch sizes must be positive, got {batch_size}.")
    rounds = min(rounds, runs)
    per_round = math.ceil(runs / rounds)
    for model, _ in models:
        if any(parameter.device.type == "meta" for parameter in model.parameters()):
            raise ValueError("latency needs a model with real tensors, not one on the meta device")
    was_training = [model.training for model, _ in models]
    # Fixed inputs so two models of one vocabulary see the same token ids.
    inputs = [_inputs(model, seq_len, batch_sizes, device) for model, seq_len in models]
    timings_ms: list[dict[int, list[float]]] = [{batch_size: [] for batch_size in batch_sizes} for _ in models]
    try:
        for model, _ in models:
            model.to(device).eval()
        with torch.inference_mode():
            for index, (model, _) in enumerate(models):
                for batch_size in batch_sizes:
                    for _ in range(WARMUP_RUNS):
                        _timed_pass(model, inputs[index][batch_size], device)
            for _ in range(rounds):
                for index, (model, _) in enumerate(models):
                    for batch_size in batch_sizes:
                        _timed_pass(model, inputs[index][batch_size], device)
                        timings_ms[index][batch_size] += [
                            _timed_pass(model, inputs[index][batch_size], device) for _ in range(per_round)
                        ]
    finally:
        for (model, _), training in zip(models, was_training):
            model.train(training)
    return [[_figures(batch_size, timings[batch_size]) for batch_size in batch_sizes] for timings in timings_ms]


def recorded_threads(entries: Iterable[dict[str, Any]]) -> str:
    """The thread counts latency entries were measured with, as "2" or "1/2"; "" when none was
    recorded (figures kept from before the count travelled with them)."""
    counts = {entry.get("threads") for entry in entries} - {None}
    return "/".join(str(count) for count in sorted(counts))


def _inputs(model: nn.Module, seq_len: int, batch_sizes: Sequence[int], device: str) -> dict[int, dict[str, torch.Tensor]]:
    vocab_size = config_value(getattr(model, "config", None), "vocab_size")
    if not isinstance(vocab_size, int):
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab_size = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else 2
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    for batch_size in batch_sizes:
        input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
        inputs[batch_size] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    return inputs


def _timed_pass(model: nn.Module, inputs: dict[str, torch.Tensor], device: str) -> float:
    """Milliseconds of one forward pass."""
    _synchronize(device)
    start = time.perf_counter()
    model(**inputs)
    _synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def _figures(batch_size: int, timings_ms: list[float]) -> dict[str, Any]:
    median_ms = statistics.median(timings_ms)
    return {
        "batch_size": batch_size,
        "median_ms": median_ms,
        "p90_ms": percentile(timings_ms, 90.0),
        "examples_per_second": batch_size / (median_ms / 1000.0),
        # CPU figures depend on the intra-op thread count; it is recorded with them because the
        # process that later shows them may run with another.
        "threads": torch.get_num_threads(),
    }


def _synchronize(device: str) -> None:
    # CUDA kernels run asynchronously; without a sync the timer measures only the launch.
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def percentile(values: Sequence[float], percent: float) -> float:
    """Linear interpolation between closest ranks (numpy's default definition)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
