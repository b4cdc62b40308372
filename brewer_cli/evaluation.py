"""The one evaluation loop, used by training (the student, the loss on unlabeled eval data), by the
teachers' figures (one teacher, several and their ensemble, one per task) and by `brewer eval`.

Every caller hands over an `EvalSetup` (what to read, how to batch it) and a function from a batch
to what it measures; the loop batches the eval split, shards it over the processes when there are
several, moves each batch to the device, and reduces: predictions into the task's metrics, or
loss terms into their averages over examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from brewer_cli.tasks import PreparedData

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EvalSetup:
    """What evaluating needs: the task (its predictions and metrics), the prepared data (its eval
    split), the collate that batches it, and the batch size."""

    task: Any
    data: PreparedData
    collate: Callable
    batch_size: int


def eval_batch_size(training: Any) -> int:
    """`training.eval_batch_size`, or twice the training batch (no gradients are kept)."""
    return training.eval_batch_size or training.batch_size * 2


def _batches(setup: EvalSetup, device: Any, accelerator: Any) -> Iterator[Batch]:
    loader = DataLoader(setup.data.eval, batch_size=setup.batch_size, shuffle=False, collate_fn=setup.collate)
    if _distributed(accelerator):
        loader = accelerator.prepare_data_loader(loader)
    for batch in loader:
        yield {name: tensor.to(device) for name, tensor in batch.items()}


def _distributed(accelerator: Any) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def evaluate_outputs(
    setup: EvalSetup,
    outputs: Callable[[Batch], dict[str, Any]],
    device: Any,
    accelerator: Any = None,
    output_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """The task's metrics of each output that `outputs(batch)` names (e.g. `{"model": logits}`, or
    each teacher's and their ensemble's), under inference mode. With an Accelerator over several
    processes each evaluates a shard and the predictions are gathered."""
    task = setup.task
    predictions: dict[str, list[Any]] = {}
    indices: list[int] = []
    with torch.inference_mode():
        for batch in _batches(setup, device, accelerator):
            index = batch["index"]
            for name, logits in outputs(batch).items():
                # Reduced on each process first, so a language model gathers per-example sums, not
                # (B, L, vocabulary) logits.
                prediction = task.prediction_of(logits, batch)
                if _distributed(accelerator):
                    prediction = _gather_predictions(accelerator, prediction)
                predictions.setdefault(name, []).append(_to_cpu(prediction))
            if _distributed(accelerator):
                index = accelerator.gather_for_metrics(index)
            indices.extend(int(i) for i in index.tolist())
    return {
        name: task.compute_metrics(collected, indices, setup.data, output_dir=output_dir)
        for name, collected in predictions.items()
    }


def evaluate_model(
    setup: EvalSetup, model: Any, family: Any, accelerator: Any = None, output_dir: Path | None = None
) -> dict[str, Any]:
    """Metrics of one model on the setup's eval split."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    metrics = evaluate_outputs(
        setup,
        lambda batch: {"model": family.features(model, batch, logits_of=setup.task.logits).logits},
        device,
        accelerator,
        output_dir,
    )["model"]
    if was_training:
        model.train()
    return metrics


def average_losses(
    setup: EvalSetup, losses: Callable[[Batch], dict[str, torch.Tensor]], device: Any, accelerator: Any = None
) -> dict[str, float]:
    """Each loss term that `losses(batch)` returns, averaged over the eval examples (summed over the
    processes): the measure of tasks without labels (general distillation)."""
    totals: dict[str, float] = {}
    examples = 0
    with torch.no_grad():
        for batch in _batches(setup, device, accelerator):
            size = int(batch["input_ids"].shape[0])
            for name, value in losses(batch).items():
                totals[name] = totals.get(name, 0.0) + float(value) * size
            examples += size
    names = sorted(totals)
    if _distributed(accelerator):
        summed = accelerator.reduce(
            torch.tensor([totals[name] for name in names] + [examples], device=device, dtype=torch.float64), reduction="sum"
        )
        totals, examples = dict(zip(names, summed[:-1].tolist())), float(summed[-1])
    return {name: totals[name] / max(examples, 1) for name in names}


def _gather_predictions(accelerator: Any, prediction: Any) -> Any:
    def one(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() >= 2:
            # Token-level arg-max (B, L) and QA span logits (B, L) differ in length between
            # processes' batches; the tasks read only each window's own length back. Padding a
            # second dimension of equal size everywhere ((B, C) class logits) changes nothing. The
            # pad keeps the dtype (an int pad for arg-max ids), so every process gathers the same.
            pad = -1e4 if tensor.is_floating_point() else -1
            tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=pad)
        return accelerator.gather_for_metrics(tensor.contiguous())

    return tuple(one(item) for item in prediction) if isinstance(prediction, tuple) else one(prediction)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_one_to_cpu(item) for item in value)
    return _one_to_cpu(value)


def _one_to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    # Half-precision logits become fp32; float64 sums (a language model's NLL) keep their precision.
    tensor = tensor.detach()
    return (tensor if tensor.dtype == torch.float64 else tensor.float()).cpu()
