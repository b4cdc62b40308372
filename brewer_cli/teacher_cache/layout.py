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
# How a part's values are kept: `plain` in the store's own dtype (fp32 logits, fp16 features), or
# `int8-row`: each token's vector as int8 scaled by one fp16 factor (its largest magnitude / 127),
# about half of fp16's bytes. Hidden states are kept so: benchmarks/cache_forms.py measured every
# training step's loss within 1.5e-4 (relative) of the uncached run with them, against the cache's
# tolerance of 2e-3 (bf16: 2.2e-5, fp16: 6.5e-6). Attention scores and inputs stay fp16 (not measured).
PLAIN = "plain"
INT8_ROW = "int8-row"
HIDDEN_FORM = INT8_ROW
FP16_MAX = float(np.finfo(np.float16).max)


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
    `square`: (shape[0], L_i, L_i) (attention scores, heads first). `form`: how its values are kept
    (`PLAIN` or `INT8_ROW`, a `token` part's only), counted in elements of the store's dtype.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    form: str = PLAIN

    @property
    def width(self) -> int:
        """Values per row (`row`), per token (`token`) or per head (`square`)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def counts(self, lengths: np.ndarray) -> np.ndarray:
        """Elements of the store per example, from the examples' token counts."""
        width = self.width
        if self.kind == "row":
            return np.full(len(lengths), width, dtype=np.int64)
        if self.kind == "token":
            tokens = lengths.astype(np.int64)
            if self.form == INT8_ROW:
                # One fp16 scale per token, then the int8 values two to an fp16 element.
                return tokens + (tokens * width + 1) // 2
            return tokens * width
        return lengths.astype(np.int64) ** 2 * width

    @property
    def largest_value(self) -> float:
        """The largest magnitude kept: fp16's, or for an int8 row, whose scale (its largest
        magnitude / 127) is an fp16 value, 127 times that."""
        return FP16_MAX * (127 if self.form == INT8_ROW else 1)

    def staged(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch's tensor of this part on the CPU, in the precision `encode` reads."""
        return tensor.float().cpu() if self.form == INT8_ROW else tensor.to(torch.float16).cpu()

    def encode(self, piece: torch.Tensor) -> np.ndarray:
        """One example's values (`piece`) as the store keeps them: as they are (already in the
        store's dtype), or for `INT8_ROW` the scales then the int8 values, as fp16 elements."""
        if self.form == PLAIN:
            return piece.reshape(-1).numpy()
        rows = piece.reshape(piece.shape[0], -1).float()
        scales = (rows.abs().amax(dim=1) / 127).to(torch.float16)
        # Divided by the fp16 scale the reader multiplies by; an all-zero row has scale 0.
        divisors = torch.where(scales > 0, scales.float(), torch.ones_like(rows[:, 0]))
        values = (rows / divisors[:, None]).round().clamp(-127, 127).to(torch.int8).reshape(-1).numpy().view(np.uint8)
        if values.size % 2:
            values = np.concatenate([values, np.zeros(1, dtype=np.uint8)])
        return np.concatenate([scales.numpy().view(np.uint8), values]).view(np.float16)

    def decode(self, stored: np.ndarray, length: int) -> torch.Tensor:
        """One example's values back from `encode`'s elements (fp32 for `INT8_ROW`)."""
        shape = self.example_shape(length)
        if self.form == PLAIN:
            return torch.from_numpy(stored).view(shape)
        raw = stored.view(np.uint8)
        scales = torch.from_numpy(raw[: 2 * length].view(np.float16)).float()
        values = torch.from_numpy(raw[2 * length : 2 * length + length * self.width].view(np.int8)).float()
        return (values.view(length, self.width) * scales[:, None]).view(shape)

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
        parts = [
            f"{part.name}:{part.kind}{list(part.shape)}" + (f":{part.form}" if part.form != PLAIN else "")
            for part in (*self.logits, *self.features)
        ]
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
            parts.append(Part(f"hidden.{layer}", "token", tuple(features.hidden_states[layer].shape[2:]), HIDDEN_FORM))
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
