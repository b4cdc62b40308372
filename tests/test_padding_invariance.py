"""Every registered loss gives the same value, and the same gradient, however a batch is padded.

brewer pads each batch to its longest example (and `group_by_length` changes which examples meet),
so a loss whose value moved with the padding would change the balance between its terms from batch
to batch: `tinybert_attention`, dividing by all B·h·L·L entries, gave 1.456 / 0.364 / 0.091 for the
same two examples padded to 9 / 18 / 36. Here the same two examples (9 and 5 real tokens) are
padded to 9, 18 and 36 positions, with real attention masks and padded positions holding garbage
(not zeros, as a model's outputs at pad tokens are not zero). The losses are taken from the
registries, so a newly registered loss is covered at once; a loss on a feature this file cannot
build fails until the file learns to build it.

Features that carry no padding axis are covered by what they read:
- `pkd` reads position 0 only ([CLS]); it is invariant because brewer's tokenizers pad on the right,
  as every supported family's own classifier and pooler assume (they read position 0 as well).
- KD on sequence logits (B, C) has no token axis, so padding cannot reach it; KD is checked here on
  token logits (B, L, C) and span logits (B, L), the two shapes where the mask matters.
"""

from __future__ import annotations

import pytest
import torch

from brewer_cli.features import AttentionInputs
from brewer_cli.losses import KD_LOSSES, MATCH_LOSSES, MatchLoss

LENGTHS = (9, 18, 36)
REAL_TOKENS = (9, 5)  # the two examples' lengths; the first fills the shortest padding exactly
WIDTH, HEADS, CLASSES = 8, 2, 5
# Reductions run in a different order at each length, so fp32 sums may differ in the last bits.
SAME = dict(rel=1e-6, abs=1e-7)


def attention_mask(length: int) -> torch.Tensor:
    mask = torch.zeros(len(REAL_TOKENS), length, dtype=torch.long)
    for example, real in enumerate(REAL_TOKENS):
        mask[example, :real] = 1
    return mask


def padded(real: torch.Tensor, length: int, seed: int) -> torch.Tensor:
    """(B, max real, …) → (B, length, …): each example's real tokens copied, every other position
    garbage that differs with the length (a model's outputs at pad tokens: finite, not zero)."""
    generator = torch.Generator().manual_seed(1000 * length + seed)
    tensor = 3 * torch.randn(real.shape[0], length, *real.shape[2:], generator=generator) + 2
    for example, count in enumerate(REAL_TOKENS):
        tensor[example, :count] = real[example, :count]
    return tensor.requires_grad_()


def real_values(seed: int, *rest: int) -> torch.Tensor:
    return torch.randn(len(REAL_TOKENS), max(REAL_TOKENS), *rest, generator=torch.Generator().manual_seed(seed))


def real_part(tensor: torch.Tensor, token_axes: tuple[int, ...]) -> torch.Tensor:
    """The entries at real tokens along `token_axes` (the batch axis first), flattened."""
    parts = []
    for example, count in enumerate(REAL_TOKENS):
        index = [example] + [slice(None)] * (tensor.dim() - 1)
        for axis in token_axes:
            index[axis] = slice(0, count)
        parts.append(tensor[tuple(index)].flatten())
    return torch.cat(parts)


def padded_part(tensor: torch.Tensor, token_axes: tuple[int, ...]) -> torch.Tensor:
    """The entries with a padded token on any of `token_axes`."""
    valid = torch.zeros_like(tensor, dtype=torch.bool)
    for example, count in enumerate(REAL_TOKENS):
        index = [example] + [slice(None)] * (tensor.dim() - 1)
        for axis in token_axes:
            index[axis] = slice(0, count)
        valid[tuple(index)] = True
    return tensor[~valid]


def scores(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """QKᵀ/√d_k per head, (B, h, L, L): padded queries and keys give garbage rows and columns, as
    the captured scores of a real model have."""
    split = [side.unflatten(-1, (HEADS, -1)).transpose(1, 2) for side in (query, key)]
    return split[0] @ split[1].transpose(-1, -2) / split[0].shape[-1] ** 0.5


class Side:
    """One model's features for one loss at one padded length, and the leaf tensors (with the
    axes that hold tokens) whose gradients the test compares."""

    def __init__(self, loss: MatchLoss, length: int, seed: int):
        self.leaves: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        if loss.feature == "hidden":
            layers = [self.leaf(real_values(seed + layer, WIDTH), length, seed + layer, (1,)) for layer in range(1 + loss.pair)]
            self.features = tuple(layers) if loss.pair else layers[0]
        elif loss.feature == "attention":
            query, key = (padded(real_values(seed + part, WIDTH), length, seed + part).detach() for part in range(2))
            # The scores are the leaf: attention losses read them as the capture hands them over.
            self.features = self.leaf_tensor(scores(query, key).detach().requires_grad_(), (2, 3))
        elif loss.feature == "attention_inputs":
            query, key, value = (self.leaf(real_values(seed + part, WIDTH), length, seed + part, (1,)) for part in range(3))
            self.features = AttentionInputs(query=query, key=key, value=value, num_heads=HEADS)
        else:
            pytest.fail(f"loss {loss!r} reads feature {loss.feature!r}: teach this test to build it, padded")

    def leaf(self, real: torch.Tensor, length: int, seed: int, token_axes: tuple[int, ...]) -> torch.Tensor:
        return self.leaf_tensor(padded(real, length, seed), token_axes)

    def leaf_tensor(self, tensor: torch.Tensor, token_axes: tuple[int, ...]) -> torch.Tensor:
        self.leaves.append((tensor, token_axes))
        return tensor


def match_result(name: str, length: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss, the student's gradient at real tokens, its gradient at padded ones)."""
    loss = MATCH_LOSSES.get(name)
    student, teacher = Side(loss, length, seed=10), Side(loss, length, seed=20)
    value = loss.fn(student.features, teacher.features, attention_mask(length))
    leaves = [leaf for leaf, _ in student.leaves]
    # Not every loss on attention inputs reads the values (or the keys): their gradient is zero.
    gradients = torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True)
    real = torch.cat([real_part(g, axes) for g, (_, axes) in zip(gradients, student.leaves)])
    pad = torch.cat([padded_part(g, axes) for g, (_, axes) in zip(gradients, student.leaves)])
    return value.item(), real, pad


def assert_invariant(results: list[tuple[float, torch.Tensor, torch.Tensor]]) -> None:
    values = [value for value, _, _ in results]
    assert values[0] > 1e-3, values  # a real difference, so equal values are not just zeros
    assert values == pytest.approx([values[0]] * len(values), **SAME)
    first_gradient = results[0][1]
    assert first_gradient.abs().max() > 0
    for _, real_gradient, padded_gradient in results:
        # Relative to the largest entry: tiny entries carry the rounding of large sums.
        torch.testing.assert_close(real_gradient, first_gradient, rtol=1e-5, atol=1e-6 * first_gradient.abs().max().item())
        # Garbage at pad tokens must neither count nor be trained.
        assert padded_gradient.abs().max().item() == 0.0


@pytest.mark.parametrize("name", [entry.name for entry in MATCH_LOSSES])
def test_match_loss_does_not_depend_on_padding(name: str) -> None:
    assert_invariant([match_result(name, length) for length in LENGTHS])


def test_tinybert_attention_is_no_longer_divided_by_padding() -> None:
    # The case: with all B·h·L·L entries as divisor the value fell with each doubling.
    values = [match_result("tinybert_attention", length)[0] for length in LENGTHS]
    assert values == pytest.approx([values[0]] * 3, **SAME)
    assert values[0] == pytest.approx(match_result("attention_mse", LENGTHS[0])[0], **SAME)


@pytest.mark.parametrize("shape", ["token logits (B, L, C)", "span logits (B, L)"])
@pytest.mark.parametrize("name", [entry.name for entry in KD_LOSSES])
def test_kd_loss_does_not_depend_on_padding(name: str, shape: str) -> None:
    rest = (CLASSES,) if shape.startswith("token") else ()
    results = []
    for length in LENGTHS:
        student = padded(3 * real_values(30, *rest), length, seed=30)
        teacher = padded(3 * real_values(40, *rest), length, seed=40).detach()
        value = KD_LOSSES.get(name)(student, teacher, 2.0, attention_mask(length))
        (gradient,) = torch.autograd.grad(value, student)
        results.append((value.item(), real_part(gradient, (1,)), padded_part(gradient, (1,))))
    assert_invariant(results)
