"""Measured latency: median and 90th percentile wall time of one forward pass per batch, after
warm-up, on random token ids without padding, under `torch.inference_mode` in eval mode."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
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
    check_device(device)
    if runs < 1:
        raise BrewerError(f"latency needs at least one timed run, got runs={runs}.")
    if any(parameter.device.type == "meta" for parameter in model.parameters()):
        raise ValueError("latency needs a model with real tensors, not one on the meta device")
    vocab_size = config_value(getattr(model, "config", None), "vocab_size")
    if not isinstance(vocab_size, int):
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab_size = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else 2
    was_training = model.training
    model.to(device).eval()
    # Fixed inputs so two models in one report see the same token ids.
    generator = torch.Generator().manual_seed(0)
    results = []
    try:
        for batch_size in batch_sizes:
            if batch_size < 1:
                raise BrewerError(f"batch sizes must be positive, got {batch_size}.")
            input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
            attention_mask = torch.ones_like(input_ids)
            timings_ms = []
            with torch.inference_mode():
                for index in range(WARMUP_RUNS + runs):
                    _synchronize(device)
                    start = time.perf_counter()
                    model(input_ids=input_ids, attention_mask=attention_mask)
                    _synchronize(device)
                    if index >= WARMUP_RUNS:
                        timings_ms.append((time.perf_counter() - start) * 1000.0)
            median_ms = statistics.median(timings_ms)
            results.append(
                {
                    "batch_size": batch_size,
                    "median_ms": median_ms,
                    "p90_ms": percentile(timings_ms, 90.0),
                    "examples_per_second": batch_size / (median_ms / 1000.0),
                }
            )
    finally:
        model.train(was_training)
    return results


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
