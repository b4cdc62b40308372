"""What the cache keeps for one teacher and where each example's values lie: the features the
losses read (`TeacherRead`), the tensors kept per example (`Part`) and their shapes (`Layout`,
found by running the teacher on one example), and the offsets of each example's block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from brewer_cli.features import FeatureNeeds
from brewer_cli.tasks.views import view_batch

# Where each kind of feature comes from in `Features`.
FEATURE_KINDS = ("hidden", "attention", "attention_inputs")


@dataclass(frozen=True)
class TeacherRead:
    """What the losses read from one teacher: its index in `Distiller.teachers`, the features its
    forward pass computes, the (feature kind, layer) pairs the losses actually read — only those
    are cached — and the column prefix of a teacher that reads its own tokenization."""

    teacher: int
    needs: FeatureNeeds
    layers: tuple[tuple[str, int], ...] = ()
    prefix: str | None = None


@dataclass(frozen=True)
class Part:
    """One tensor kept per example.

    kind `row`: the same shape for every example (sequence-level logits); `token`: (L_i, *shape);
    `square`: (shape[0], L_i, L_i) (attention scores, heads first).
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    def counts(self, lengths: np.ndarray) -> np.ndarray:
        """Elements per example, from the examples' token counts."""
        width = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if self.kind == "row":
            return np.full(len(lengths), width, dtype=np.int64)
        if self.kind == "token":
            return lengths.astype(np.int64) * width
        return lengths.astype(np.int64) ** 2 * width

    def example_shape(self, length: int) -> tuple[int, ...]:
        if self.kind == "row":
            return self.shape
        if self.kind == "token":
            return (length, *self.shape)
        return (self.shape[0], length, length)

    def piece(self, tensor: torch.Tensor, position: int, length: int) -> torch.Tensor:
        """Example `position`'s own slice of a batch tensor."""
        if self.kind == "row":
            return tensor[position]
        if self.kind == "token":
            return tensor[position, :length]
        return tensor[position, :, :length, :length]

    def batch(self, pieces: Sequence[torch.Tensor], padded: int) -> torch.Tensor:
        """The examples' own values as one batch tensor padded with zeros to `padded` tokens: one
        call per part (pad_sequence copies in C++), not one per example."""
        if self.kind == "row":
            return torch.stack(list(pieces))
        if self.kind == "token":
            batch = torch.nn.utils.rnn.pad_sequence(list(pieces), batch_first=True)
            if batch.shape[1] < padded:
                batch = torch.cat([batch, batch.new_zeros(batch.shape[0], padded - batch.shape[1], *batch.shape[2:])], dim=1)
            return batch
        batch = pieces[0].new_zeros(len(pieces), self.shape[0], padded, padded)
        for position, piece in enumerate(pieces):
            length = piece.shape[-1]
            batch[position, :, :length, :length] = piece
        return batch


@dataclass(frozen=True)
class Layout:
    """Everything cached for one teacher, found by running it on one example."""

    read: TeacherRead
    logits_form: str  # none | tensor | tuple
    logits: tuple[Part, ...]
    features: tuple[Part, ...]
    depth: int
    num_heads: int

    def describe(self) -> str:
        parts = [f"{part.name}:{part.kind}{list(part.shape)}" for part in (*self.logits, *self.features)]
        return f"{self.logits_form};{self.depth};" + ",".join(parts)

    def feature_words(self) -> str:
        """The cached features in words, for the plan: `hidden 0, 4; attention 2`."""
        words = []
        for kind in FEATURE_KINDS:
            layers = sorted(layer for read_kind, layer in self.read.layers if read_kind == kind)
            if layers:
                words.append(f"{kind.replace('_', ' ')} {', '.join(str(layer) for layer in layers)}")
        return "; ".join(words)


def logits_components(logits: Any) -> tuple[str, list[torch.Tensor]]:
    """The form of a model's logits (none, one tensor, a tuple of heads) and its tensors."""
    if logits is None:
        return "none", []
    if isinstance(logits, tuple):
        return "tuple", list(logits)
    return "tensor", [logits]


def probe_layout(distiller: Any, read: TeacherRead) -> Layout:
    """Run the teacher on the first training example and read off the shape of everything to keep."""
    teacher = distiller.teachers[read.teacher]
    device = next(teacher.model.parameters()).device
    batch = {name: tensor.to(device) for name, tensor in distiller.collate([distiller.data.train[0]]).items()}
    view = view_batch(batch, read.prefix)
    was_training = teacher.model.training
    teacher.model.eval()
    with torch.inference_mode():
        features = teacher.family.features(teacher.model, view, read.needs, logits_of=distiller.task.logits)
    teacher.model.train(was_training)
    length = int(view["input_ids"].shape[1])
    form, components = logits_components(features.logits)
    per_token = not distiller.task.sequence_level
    logits = []
    for number, component in enumerate(components):
        if per_token:
            if component.dim() < 2 or component.shape[1] != length:
                raise RuntimeError(
                    f"token-level logits of shape {tuple(component.shape)} do not follow the sequence length {length}"
                )
            logits.append(Part(f"logits.{number}", "token", tuple(component.shape[2:])))
        else:
            logits.append(Part(f"logits.{number}", "row", tuple(component.shape[1:])))
    config = teacher.model.config
    parts: list[Part] = []
    for kind, layer in read.layers:
        if kind == "hidden":
            parts.append(Part(f"hidden.{layer}", "token", tuple(features.hidden_states[layer].shape[2:])))
        elif kind == "attention":
            parts.append(Part(f"attention.{layer}", "square", (int(features.attention_scores[layer - 1].shape[1]),)))
        else:
            inputs = features.attention_inputs[layer - 1]
            for name in ("query", "key", "value"):
                tensor = getattr(inputs, name)
                if tensor is not None:
                    parts.append(Part(f"attention_inputs.{layer}.{name}", "token", tuple(tensor.shape[2:])))
    return Layout(read, form, tuple(logits), tuple(parts), teacher.family.depth(config), teacher.family.heads(config))


def example_lengths(data: Any, prefix: str | None) -> np.ndarray:
    """Tokens per example in the columns a teacher reads (its own, with a prefix)."""
    return data.lengths(prefix or "")


def elements_per_example(counts: list[np.ndarray], examples: int) -> np.ndarray:
    """All parts' elements of each example, from the per-part counts `offsets` gives."""
    return np.sum(counts, axis=0) if counts else np.zeros(examples, dtype=np.int64)


def offsets(parts: Sequence[Part], lengths: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Per part, elements per example; per example, where its block starts; the total."""
    counts = [part.counts(lengths) for part in parts]
    per_example = elements_per_example(counts, len(lengths))
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(per_example[:-1], out=starts[1:])
    return counts, starts, int(per_example.sum())
