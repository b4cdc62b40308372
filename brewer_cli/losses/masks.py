"""The masks the losses share: which tokens, (query, key) pairs and logits classes count.

Every loss respects the padding mask: padded positions never enter a mean, a softmax or a sum.
"""

from __future__ import annotations

import torch

# The fill value for excluded softmax entries. The most negative finite fp32 number rather than
# -inf: exp() of it is exactly 0, yet a fully masked row stays finite (uniform) instead of NaN,
# and the excluded terms are dropped with `torch.where` so 0 · (huge) never enters a sum.
EXCLUDED = torch.finfo(torch.float32).min


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over the positions where `valid` is true (all positions when None).

    With no valid position at all the result is 0 rather than NaN, so a batch made only of
    ignored tokens contributes nothing instead of poisoning the optimizer state.
    """
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _tokens(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """The (B, L) padding mask as fp32 0/1; all tokens valid when no mask is given."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.float32, device=device)
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (batch, length) = {(batch, length)}")
    return (mask != 0).float()


def token_mask(mask: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
    """The padding mask for (B, L, …) features."""
    return _tokens(mask, features.shape[0], features.shape[1], features.device)


def score_tokens(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """The padding mask for (B, [h,] L, L) scores."""
    return _tokens(mask, scores.shape[0], scores.shape[-1], scores.device)


def pair_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """Valid (query, key) pairs for (B, [h,] L, L) scores as fp32 0/1, broadcastable to `scores`."""
    tokens = score_tokens(mask, scores)
    heads = (1,) * (scores.dim() - 3)  # the head axis, when there is one
    queries = tokens.view(tokens.shape[0], *heads, tokens.shape[1], 1)
    keys = tokens.view(tokens.shape[0], *heads, 1, tokens.shape[1])
    return queries * keys


def logits_masks(logits: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split a mask into (row mask, class mask) according to the shape of the logits.

    - token logits (B, L, C) with a (B, L) mask: the mask selects rows (padding, ignored tokens);
    - span logits (B, L) with a (B, L) mask — QA start/end, where the classes *are* the token
      positions: the mask removes padding positions from the softmax, since they can never be
      the answer;
    - sequence logits (B, C) with a (B,) mask: the mask selects rows.
    """
    if mask is None:
        return None, None
    mask = mask != 0
    if logits.dim() == 2 and mask.shape == logits.shape:
        return None, mask
    if mask.shape == logits.shape[:-1]:
        return mask, None
    raise ValueError(
        f"a mask of shape {tuple(mask.shape)} does not fit logits of shape {tuple(logits.shape)}: "
        "expected (B, L) for token logits (B, L, C) or span logits (B, L), or (B,) for sequence logits (B, C)"
    )
