"""Running the teacher once over the training split and writing what it says, sparse.

Examples go through the teacher in batches of similar length (longest first: a batch that does
not fit the device fails at once, not after an hour), under `torch.inference_mode`, through the
same family `features` call the distillers use — so the store holds exactly the logits a live
teacher would give the loss. Per counted position (the task's KD mask) the top-k of
softmax(z / T) is kept with the log of the remaining mass (logit_store.sparse); rows go to the
writer as each batch finishes, so memory holds one batch and one row group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brewer_cli.features import FeatureNeeds
from brewer_cli.logit_store.files import Manifest, StoreWriter
from brewer_cli.logit_store.sparse import top_k_rows


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Example indices in batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def capture_store(
    teacher: Any,
    task: Any,
    train: Any,
    collate: Callable,
    output: Path,
    k: int,
    temperature: float,
    log_prob_dtype: str,
    batch_size: int,
    manifest_fields: dict[str, Any],
    vocabulary: int,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """`teacher`: a LoadedModel (model, tokenizer, family); `train`: the tokenized training split;
    `vocabulary`: the token ids kept — the tokenizer's, when the checkpoint pads its output matrix
    past it (those rows are ids no tokenizer makes; the losses cut the student's off the same way).
    Writes `output` (through output.partial) and returns its manifest."""
    model = teacher.model
    model.eval()
    device = next(model.parameters()).device
    writer = StoreWriter(output, k, log_prob_dtype)
    writer.save_tokenizer(teacher.tokenizer)
    batches = length_sorted_batches(train.lengths(), batch_size)
    for number, chosen in enumerate(batches, 1):
        batch = {name: value.to(device) for name, value in collate([train[index] for index in chosen]).items()}
        with torch.inference_mode():
            features = teacher.family.features(model, batch, FeatureNeeds(), logits_of=task.logits)
            logits = features.logits[..., :vocabulary]
            mask = task.kd_mask(batch).bool()
            rows = top_k_rows(logits[mask], k, temperature)
        counts = mask.sum(dim=1).tolist()
        positions = [row.nonzero().squeeze(-1).to("cpu", torch.int32).numpy() for row in mask]
        ids = rows.ids.cpu().numpy()
        log_probs = rows.log_probs.cpu().numpy()
        tails = rows.tail_log_mass.cpu().numpy()
        start = 0
        for position, index in enumerate(batch["index"].tolist()):
            end = start + counts[position]
            writer.add(index, positions[position], ids[start:end], log_probs[start:end], tails[start:end])
            start = end
        if progress is not None:
            progress(number, len(batches))
    fields = dict(manifest_fields)
    return writer.finish(
        vocabulary_size=vocabulary,
        temperature=float(temperature),
        data={**fields.pop("data", {}), "examples": len(train), "counted_tokens": writer.counted_tokens},
        **fields,
    )
