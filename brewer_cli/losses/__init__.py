"""Distillation losses: KD on logits and intermediate feature matches (DESIGN §5).

Every loss computes in fp32 (inputs are cast with `.float()`, so bf16/fp16 activations from mixed
precision never reach a softmax or a sum of squares), respects the padding mask — its value and
gradient are the same however the batch is padded (tests/test_padding_invariance.py) — and returns
a scalar. Match losses are exactly 0 when the student's features equal the teacher's (the cross-
entropy losses `attention_ce`/`attention_ce_mean` excepted: there the value is the teacher's
entropy and the gradient is 0).

Shapes: B batch, L tokens, C classes, d width, h heads.

The modules: `masks` (padding, pair and logits-class masks), `base` (fp32 guard, shape check,
the match-loss registry), `kd` (logits), `token_kd` (token-level divergences for language models,
chunked over tokens, dense or sparse teacher), `hidden`, `attention` and `relation` (matches). Match
losses register when their module is imported, hidden → attention → relation, the order the
registry has always had.
"""

from __future__ import annotations

from brewer_cli.losses.attention import (
    attention_ce,
    attention_ce_mean,
    attention_mse,
    attention_mse_sum,
    attention_scores_from_inputs,
    minilm_attention,
    tinybert_attention,
)
from brewer_cli.losses.base import MATCH_LOSSES, MatchLoss
from brewer_cli.losses.hidden import cosine_loss, fsp_loss, hidden_mse, nst_kernel, nst_loss, pkd_loss, tinybert_hidden
from brewer_cli.losses.kd import (
    KD_LOSSES,
    SOFTMAX_KD_LOSSES,
    Logits,
    Temperature,
    kd_cross_entropy,
    kd_kl_divergence,
    kd_loss,
    kd_mean_squared_error,
    probability_shift,
)
from brewer_cli.losses.masks import logits_masks
from brewer_cli.losses.relation import minilm_value_relation, relation_kk, relation_qq, relation_vv
from brewer_cli.losses.token_kd import (
    TOKEN_KD_LOSSES,
    forward_kl,
    jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
    trim_to_vocabulary,
    vocabularies_differ,
)

__all__ = [
    "KD_LOSSES",
    "MATCH_LOSSES",
    "Logits",
    "MatchLoss",
    "SOFTMAX_KD_LOSSES",
    "TOKEN_KD_LOSSES",
    "Temperature",
    "attention_ce",
    "attention_ce_mean",
    "attention_mse",
    "attention_mse_sum",
    "attention_scores_from_inputs",
    "cosine_loss",
    "forward_kl",
    "fsp_loss",
    "hidden_mse",
    "jsd",
    "kd_cross_entropy",
    "kd_kl_divergence",
    "kd_loss",
    "kd_mean_squared_error",
    "logits_masks",
    "minilm_attention",
    "minilm_value_relation",
    "nst_kernel",
    "nst_loss",
    "pkd_loss",
    "probability_shift",
    "relation_kk",
    "relation_qq",
    "relation_vv",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "tinybert_attention",
    "tinybert_hidden",
    "total_variation",
    "trim_to_vocabulary",
    "vocabularies_differ",
]
