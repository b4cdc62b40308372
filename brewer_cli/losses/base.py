"""What every loss shares besides masks: the fp32 guard, the shape check, and the registry of
match losses with their metadata (`MatchLoss`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from brewer_cli.features import AttentionInputs
from brewer_cli.registry import Registry

WIDTH_HINT = " — a projection must map the student width to the teacher width"
HEADS_HINT = " — this loss compares heads one by one and needs equal head counts"


def check_same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor, hint: str = "") -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student shape {tuple(student.shape)} differs from teacher shape {tuple(teacher.shape)}{hint}")


def _device_type(features: object) -> str:
    """The device type of a loss input: a tensor, AttentionInputs, or a tuple of those."""
    if isinstance(features, torch.Tensor):
        return features.device.type
    if isinstance(features, AttentionInputs):
        return features.query.device.type
    return _device_type(features[0])


def full_precision(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run `loss` with autocast disabled.

    Casting inputs with `.float()` is not enough on its own: inside the training loop's autocast
    region a matmul (Gram matrices, relations, attention scores) would cast its fp32 inputs back
    to bf16/fp16. Disabling autocast here keeps every loss in fp32 whatever the caller does.
    """

    @functools.wraps(loss)
    def in_fp32(*args: object, **kwargs: object) -> torch.Tensor:
        with torch.autocast(device_type=_device_type(args[0]), enabled=False):
            return loss(*args, **kwargs)

    return in_fp32


@dataclass(frozen=True)
class MatchLoss:
    """A loss between one (or, when `pair`, two) intermediate features of student and teacher.

    feature: "hidden" (B, L, d) hidden states, "attention" pre-softmax scores (B, h, L, L), or
      "attention_inputs" per-layer `AttentionInputs` (query/key/value before the head split).
    pair: the loss reads two layers per side — fn((s0, s1), (t0, t1), mask).
    needs_equal_width: a projection is required when student and teacher widths differ.
    needs_equal_heads: student and teacher head counts must be equal.
    formula: one line for `brewer catalog`.
    shared_projection: one projection serves every layer and the embeddings (TinyBERT).
    takes_relation_heads: fn accepts `relation_heads` (MiniLMv2 relation losses).
    token_local: the loss is a mean over the real tokens of a term of each token alone, so it may be
      computed on the real tokens packed together, (1, n_valid, d) with no mask, and give the same
      value: the distiller then projects and compares no padding (distillers/general.py).
    """

    fn: Callable[..., torch.Tensor]
    feature: str
    pair: bool
    needs_equal_width: bool
    needs_equal_heads: bool
    formula: str
    shared_projection: bool = False
    takes_relation_heads: bool = False
    token_local: bool = False


MATCH_LOSSES: Registry[MatchLoss] = Registry("match loss")


def register_match(
    name: str,
    description: str,
    *,
    feature: str,
    formula: str,
    pair: bool = False,
    needs_equal_width: bool = False,
    needs_equal_heads: bool = False,
    shared_projection: bool = False,
    takes_relation_heads: bool = False,
    token_local: bool = False,
    aliases: tuple[str, ...] = (),
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register a match-loss function, run in full precision, together with its metadata; the
    module-level name is the registered (full-precision) function."""

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        fn = full_precision(fn)
        MATCH_LOSSES.add(
            name,
            MatchLoss(
                fn=fn,
                feature=feature,
                pair=pair,
                needs_equal_width=needs_equal_width,
                needs_equal_heads=needs_equal_heads,
                formula=formula,
                shared_projection=shared_projection,
                takes_relation_heads=takes_relation_heads,
                token_local=token_local,
            ),
            description,
            aliases,
        )
        return fn

    return decorator
