"""The math of a sparse teacher distribution: from dense logits, the top-k token ids, their
log-probabilities at the capture temperature and the log of the mass left outside them.

The tail is computed as a log-sum-exp over the tokens outside the top k (not as log(1 − Σ p) of
the kept ones): when the top k hold nearly all the mass, 1 − Σ p cancels to rounding noise, and with
k = V nothing remains and the tail is exactly −inf. Everything runs in fp32, a bounded number of
rows at a time, so a 150k vocabulary never makes an fp32 [tokens × V] tensor for a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows of fp32 [rows × V] scratch at once: 2^25 elements = 128 MiB (850 rows of a 150k vocabulary).
CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class TopK:
    """The sparse form of N rows of logits: ids (N, k) int32, log_probs (N, k) fp32, tail (N,) fp32."""

    ids: torch.Tensor
    log_probs: torch.Tensor
    tail_log_mass: torch.Tensor


def top_k_rows(logits: torch.Tensor, k: int, temperature: float) -> TopK:
    """`logits` (N, V), any float dtype: the k most probable tokens of softmax(logits / T), largest
    first, their log-probabilities and log(Σ of the others' probabilities), all in fp32."""
    rows, vocabulary = logits.shape
    if not 1 <= k <= vocabulary:
        raise ValueError(f"k = {k} must be between 1 and the vocabulary size {vocabulary}")
    step = max(1, CHUNK_ELEMENTS // max(vocabulary, 1))
    ids, log_probs, tails = [], [], []
    for start in range(0, rows, step):
        scaled = logits[start : start + step].float() / temperature
        normalizer = torch.logsumexp(scaled, dim=-1, keepdim=True)
        values, chosen = torch.topk(scaled, k, dim=-1, sorted=True)
        log_probs.append(values - normalizer)
        ids.append(chosen.to(torch.int32))
        if k == vocabulary:
            tails.append(torch.full((scaled.shape[0],), float("-inf"), device=scaled.device))
        else:
            # In place: the scaled logits are not needed any more.
            rest = scaled.scatter_(-1, chosen, float("-inf"))
            tails.append((torch.logsumexp(rest, dim=-1, keepdim=True) - normalizer).squeeze(-1))
    if not ids:
        empty = logits.new_zeros((0, k), dtype=torch.float32)
        return TopK(empty.to(torch.int32), empty, logits.new_zeros((0,), dtype=torch.float32))
    return TopK(torch.cat(ids), torch.cat(log_probs), torch.cat(tails))
