"""What a store's values depend on, as hashes the manifest records and a run reading the store
recomputes: the tokenized training examples with the task settings that made them, the tokenizer,
and the teacher's weights. A store read against other data would hand example i the teacher's
distribution over some other text, silently — so the run compares before step 1."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from brewer_cli.tasks.views import tokenizer_definition


def hash_chunks(chunks: Iterable[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _column_chunks(name: str, values: list[Any]) -> Iterable[bytes]:
    yield f"column {name};".encode()
    if values and isinstance(values[0], (list, tuple)):
        lengths = np.fromiter((len(value) for value in values), dtype=np.int64, count=len(values))
        yield lengths.tobytes()
        flat = itertools.chain.from_iterable(values)
        try:
            yield np.fromiter(flat, dtype=np.int64, count=int(lengths.sum())).tobytes()
        except (TypeError, ValueError):
            yield json.dumps(values, default=str).encode()
        return
    try:
        yield np.asarray(values, dtype=np.float64).tobytes()
    except (TypeError, ValueError):
        yield json.dumps(values, default=str).encode()


def data_fingerprint(train: Any, settings: dict[str, Any]) -> str:
    """The tokenized training split (every column, in example order) and the task settings that
    produced it (`settings`: the task section and data.max_length)."""
    chunks = [json.dumps(settings, sort_keys=True, default=str).encode(), f"examples {len(train)};".encode()]
    columns = train.columns
    return hash_chunks(itertools.chain(chunks, *(_column_chunks(name, list(columns[name])) for name in sorted(columns))))


def tokenizer_hash(tokenizer: Any) -> str:
    return hash_chunks([json.dumps(tokenizer_definition(tokenizer), sort_keys=True, default=str).encode()])


def weights_hash(model: torch.nn.Module, dtype: torch.dtype | None = None) -> str:
    """`dtype`: floating-point weights hashed as cast to it (a checkpoint reloaded in fp32 compared
    with the bf16 teacher a capture hashed)."""

    def chunks() -> Iterable[bytes]:
        for name, tensor in sorted(model.state_dict().items()):
            tensor = tensor.detach().to("cpu")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensor = tensor.contiguous()
            yield f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode()
            # Any dtype as raw bytes (bf16 has no numpy equivalent).
            yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()

    return hash_chunks(chunks())
