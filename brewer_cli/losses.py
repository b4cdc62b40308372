"""Distillation losses: KD on logits and intermediate feature matches (DESIGN §5).

Every loss computes in fp32 (inputs are cast with `.float()`, so bf16/fp16 activations from mixed
precision never reach a softmax or a sum of squares), respects the padding mask, and returns a
scalar. Match losses are exactly 0 when the student's features equal the teacher's (the cross-
entropy losses `attention_ce`/`attention_ce_mean` excepted: there the value is the teacher's
entropy and the gradient is 0).

Shapes: B batch, L tokens, C classes, d width, h heads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brewer_cli.families.base import AttentionInputs
from brewer_cli.registry import Registry

Logits = torch.Tensor | Sequence[torch.Tensor]
Temperature = float | torch.Tensor

# The fill value for excluded softmax entries. The most negative finite fp32 number rather than
# -inf: exp() of it is exactly 0, yet a fully masked row stays finite (uniform) instead of NaN,
# and the excluded terms are dropped with `torch.where` so 0 · (huge) never enters a sum.
_EXCLUDED = torch.finfo(torch.float32).min


# ───────────────────────────────────────── shared helpers ─────────────────────────────────────────


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
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


def _token_mask(mask: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
    """The padding mask for (B, L, …) features."""
    return _tokens(mask, features.shape[0], features.shape[1], features.device)


def _score_tokens(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """The padding mask for (B, [h,] L, L) scores."""
    return _tokens(mask, scores.shape[0], scores.shape[-1], scores.device)


def _pair_mask(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """Valid (query, key) pairs for (B, [h,] L, L) scores as fp32 0/1, broadcastable to `scores`."""
    tokens = _score_tokens(mask, scores)
    heads = (1,) * (scores.dim() - 3)  # the head axis, when there is one
    queries = tokens.view(tokens.shape[0], *heads, tokens.shape[1], 1)
    keys = tokens.view(tokens.shape[0], *heads, 1, tokens.shape[1])
    return queries * keys


def _check_same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor, hint: str = "") -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} differs from teacher shape {tuple(teacher.shape)}{hint}"
        )


def _device_type(features: object) -> str:
    """The device type of a loss input: a tensor, AttentionInputs, or a tuple of those."""
    if isinstance(features, torch.Tensor):
        return features.device.type
    if isinstance(features, AttentionInputs):
        return features.query.device.type
    return _device_type(features[0])


def _full_precision(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
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


_WIDTH_HINT = " — a projection must map the student width to the teacher width"
_HEADS_HINT = " — this loss compares heads one by one and needs equal head counts"


# ─────────────────────────────────────────── KD on logits ──────────────────────────────────────────

KD_LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("KD loss")


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


def _row_temperature(temperature: Temperature, row_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """τ as an fp32 tensor of the logits' row shape (every axis but the class axis).

    A (B,) temperature on token logits (B, L, C) is one temperature per sequence, so the missing
    trailing axes are added before broadcasting (plain broadcasting would align B with L).
    """
    if not isinstance(temperature, torch.Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    tau = torch.as_tensor(temperature, dtype=torch.float32, device=device)
    if tau.dim() > len(row_shape):
        raise ValueError(
            f"temperature of shape {tuple(tau.shape)} has more axes than the logits' rows {tuple(row_shape)}"
        )
    tau = tau.reshape(tuple(tau.shape) + (1,) * (len(row_shape) - tau.dim()))
    try:
        return tau.expand(row_shape)
    except RuntimeError:
        raise ValueError(
            f"temperature of shape {tuple(tau.shape)} does not broadcast to the logits' rows {tuple(row_shape)}"
        ) from None


def _log_probabilities(logits: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    if class_mask is None:
        return F.log_softmax(logits, dim=-1)
    return F.log_softmax(logits.masked_fill(~class_mask, _EXCLUDED), dim=-1)


def _drop_excluded(terms: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    return terms if class_mask is None else torch.where(class_mask, terms, torch.zeros_like(terms))


def _cross_entropy_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    teacher_log_probabilities = _log_probabilities(teacher, class_mask)
    student_log_probabilities = _log_probabilities(student, class_mask)
    terms = teacher_log_probabilities.exp() * student_log_probabilities
    return -_drop_excluded(terms, class_mask).sum(dim=-1)


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    # Written as Σ p_T (log p_T − log p_S) rather than CE − H(T): exactly 0 for equal logits.
    teacher_log_probabilities = _log_probabilities(teacher, class_mask)
    student_log_probabilities = _log_probabilities(student, class_mask)
    terms = teacher_log_probabilities.exp() * (teacher_log_probabilities - student_log_probabilities)
    return _drop_excluded(terms, class_mask).sum(dim=-1)


def _mse_rows(student: torch.Tensor, teacher: torch.Tensor, class_mask: torch.Tensor | None) -> torch.Tensor:
    squared = _drop_excluded((student - teacher).pow(2), class_mask)
    if class_mask is None:
        return squared.mean(dim=-1)
    return squared.sum(dim=-1) / class_mask.sum(dim=-1).clamp_min(1)


def _kd(
    rows: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None,
    temperature_squared: bool,
) -> torch.Tensor:
    _check_same_shape("KD logits", student_logits, teacher_logits)
    row_mask, class_mask = logits_masks(student_logits, mask)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):  # see _full_precision
        tau = _row_temperature(temperature, student_logits.shape[:-1], student_logits.device)
        scaled_student = student_logits.float() / tau.unsqueeze(-1)
        scaled_teacher = teacher_logits.float() / tau.unsqueeze(-1)
        per_row = rows(scaled_student, scaled_teacher, class_mask)
        if temperature_squared:
            # Hinton's τ² keeps the gradient scale independent of τ; per row when τ is per row.
            per_row = per_row * tau.pow(2)
        return _masked_mean(per_row, row_mask)


@KD_LOSSES.register("ce", "cross-entropy to the teacher's softened distribution (TextBrewer's default)")
def kd_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows of −Σ_c softmax(z_T/τ)_c · log softmax(z_S/τ)_c."""
    return _kd(_cross_entropy_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


@KD_LOSSES.register("kl", "KL divergence teacher ‖ student on softened distributions")
def kd_kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows of Σ_c p_T,c (log p_T,c − log p_S,c), p = softmax(z/τ): `ce` minus H(p_T)."""
    return _kd(_kl_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


@KD_LOSSES.register("mse", "mean squared error between temperature-scaled logits")
def kd_mean_squared_error(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """mean over rows and classes of (z_S/τ − z_T/τ)²."""
    return _kd(_mse_rows, student_logits, teacher_logits, temperature, mask, temperature_squared)


def kd_loss(
    name: str,
    student_logits: Logits,
    teacher_logits: Logits,
    temperature: Temperature | Sequence[Temperature],
    mask: torch.Tensor | None = None,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """The KD loss `name`, summed over logits heads when the logits are a tuple (QA start/end).

    `temperature` is a float, a per-row tensor, or — for several heads — one of those per head
    (a per-row schedule computes a temperature from each head's own logits).
    """
    loss = KD_LOSSES.get(name)
    if isinstance(student_logits, torch.Tensor) != isinstance(teacher_logits, torch.Tensor):
        raise ValueError("student and teacher logits must both be tensors or both be tuples of heads")
    if isinstance(student_logits, torch.Tensor):
        if isinstance(temperature, (tuple, list)):
            raise ValueError("one temperature per head was given, but the logits are a single tensor")
        return loss(student_logits, teacher_logits, temperature, mask, temperature_squared=temperature_squared)
    if len(student_logits) != len(teacher_logits):
        raise ValueError(f"student has {len(student_logits)} logits heads, teacher has {len(teacher_logits)}")
    if isinstance(temperature, (tuple, list)):
        if len(temperature) != len(student_logits):
            raise ValueError(f"{len(temperature)} temperatures given for {len(student_logits)} logits heads")
        temperatures = list(temperature)
    else:
        temperatures = [temperature] * len(student_logits)
    return sum(
        (
            loss(student, teacher, tau, mask, temperature_squared=temperature_squared)
            for student, teacher, tau in zip(student_logits, teacher_logits, temperatures)
        ),
        start=torch.zeros((), device=student_logits[0].device),
    )


def probability_shift(
    teacher_logits: Logits,
    labels: torch.Tensor | Sequence[torch.Tensor],
    ignore_index: int = -100,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Swap, per row (or per token), the teacher's arg-max logit with the gold label's logit.

    After the swap the teacher's most confident class is always the gold one, while the rest of
    its "dark knowledge" is kept. Rows whose label is `ignore_index` are returned unchanged.
    Works for (B, C) with (B,) labels, (B, L, C) with (B, L) labels, and tuples of heads.
    """
    if not isinstance(teacher_logits, torch.Tensor):
        if isinstance(labels, torch.Tensor) or len(labels) != len(teacher_logits):
            raise ValueError("tuple logits need one label tensor per head")
        return tuple(
            probability_shift(head, head_labels, ignore_index) for head, head_labels in zip(teacher_logits, labels)
        )
    if labels.is_floating_point():
        raise ValueError("probability shift needs class labels, not regression targets")
    if labels.shape != teacher_logits.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(teacher_logits.shape)}"
        )
    valid = labels != ignore_index
    # Ignored rows need some in-range index for gather/scatter; their result is discarded below.
    gold = torch.where(valid, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    top = teacher_logits.argmax(dim=-1, keepdim=True)
    gold_value = teacher_logits.gather(-1, gold)
    top_value = teacher_logits.gather(-1, top)
    # When gold == top both writes put back the same value, so the row is unchanged.
    shifted = teacher_logits.clone().scatter(-1, gold, top_value).scatter(-1, top, gold_value)
    return torch.where(valid.unsqueeze(-1), shifted, teacher_logits)


# ───────────────────────────────────────── intermediate matches ────────────────────────────────────


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
    """

    fn: Callable[..., torch.Tensor]
    feature: str
    pair: bool
    needs_equal_width: bool
    needs_equal_heads: bool
    formula: str
    shared_projection: bool = False
    takes_relation_heads: bool = False


MATCH_LOSSES: Registry[MatchLoss] = Registry("match loss")


def _match(
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
    aliases: tuple[str, ...] = (),
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register a match-loss function, run in full precision, together with its metadata; the
    module-level name is the registered (full-precision) function."""

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        fn = _full_precision(fn)
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
            ),
            description,
            aliases,
        )
        return fn

    return decorator


# ── hidden states ──


def _squared_error_over_valid_tokens(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    valid = _token_mask(mask, teacher)
    squared = (student.float() - teacher.float()).pow(2).sum(dim=-1)
    return (squared * valid).sum() / (valid.sum().clamp_min(1.0) * teacher.shape[-1])


@_match(
    "hidden_mse",
    "mean squared error between hidden states over real tokens",
    feature="hidden",
    needs_equal_width=True,
    formula="Σ_valid ‖h_S − h_T‖² / (n_valid · d)",
)
def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_same_shape("hidden_mse", student, teacher, _WIDTH_HINT)
    return _squared_error_over_valid_tokens(student, teacher, mask)


@_match(
    "cos",
    "cosine distance between hidden states over real tokens",
    feature="hidden",
    needs_equal_width=True,
    formula="mean over valid tokens of 1 − cos(h_S, h_T)",
)
def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_same_shape("cos", student, teacher, _WIDTH_HINT)
    # 1 − cos(a, b) = ½‖a/‖a‖ − b/‖b‖‖²: the same value, but exactly 0 for equal inputs where
    # dot / (‖a‖‖b‖) can round to 0.99999994.
    distance = 0.5 * (F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)).pow(2).sum(dim=-1)
    return _masked_mean(distance, _token_mask(mask, teacher))


@_match(
    "pkd",
    "patient-KD distance between normalized [CLS] states",
    feature="hidden",
    needs_equal_width=True,
    formula="mean over the batch of ‖h_S[:,0]/‖h_S[:,0]‖ − h_T[:,0]/‖h_T[:,0]‖‖²",
)
def pkd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    # The mask is not needed: position 0 ([CLS]) is a real token in every example.
    _check_same_shape("pkd", student, teacher, _WIDTH_HINT)
    first_student = F.normalize(student[:, 0].float(), dim=-1)
    first_teacher = F.normalize(teacher[:, 0].float(), dim=-1)
    return (first_student - first_teacher).pow(2).sum(dim=-1).mean()


@_match(
    "tinybert_hidden",
    "TinyBERT hidden/embedding MSE through one shared projection",
    feature="hidden",
    needs_equal_width=True,
    shared_projection=True,
    formula="Σ_valid ‖W h_S − h_T‖² / (n_valid · d), one W for all layers and the embeddings",
)
def tinybert_hidden(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_same_shape("tinybert_hidden", student, teacher, _WIDTH_HINT)
    return _squared_error_over_valid_tokens(student, teacher, mask)


@_match(
    "nst_kernel",
    "neuron selectivity transfer: polynomial-kernel MMD² of normalized features",
    feature="hidden",
    formula=(
        "per example, samples = feature channels unit-normalized over valid tokens, k(x,y) = (xᵀy)²: "
        "MMD² = mean k(s,s') + mean k(t,t') − 2 mean k(s,t) = ‖S Sᵀ/d_S − T Tᵀ/d_T‖²_F; mean over the batch"
    ),
)
def nst_kernel(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """True NST (Huang & Wang 2017) with the polynomial kernel of degree 2 and c = 0.

    As in the paper, each feature channel is one sample — its activation pattern over positions,
    here the valid tokens — normalized to unit length. Samples of both models then live in the
    same space (one coordinate per token), so student and teacher widths may differ. With
    k(x, y) = (xᵀy)², Σ_ij k(s_i, t_j) = ‖SᵀT‖²_F = ⟨S Sᵀ, T Tᵀ⟩, hence
    MMD² = ‖S Sᵀ/d_S − T Tᵀ/d_T‖²_F: an (L × L) computation, never negative from rounding.
    """
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"nst_kernel: student tokens {tuple(student.shape[:2])} differ from teacher tokens "
            f"{tuple(teacher.shape[:2])}"
        )
    valid = _token_mask(mask, teacher).unsqueeze(-1)
    # Padding rows are zeroed before normalizing over the token axis, so they neither count in
    # the norms nor appear in the relations.
    student_channels = F.normalize(student.float() * valid, dim=1)
    teacher_channels = F.normalize(teacher.float() * valid, dim=1)
    student_relation = student_channels @ student_channels.transpose(1, 2) / student.shape[-1]
    teacher_relation = teacher_channels @ teacher_channels.transpose(1, 2) / teacher.shape[-1]
    return (student_relation - teacher_relation).pow(2).sum(dim=(1, 2)).mean()


# ── pairs of hidden states ──


def _unpack_pair(
    what: str, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    if len(student) != 2 or len(teacher) != 2:
        raise ValueError(f"{what} reads two layers per side: pass (first, second) for student and teacher")
    return student[0], student[1], teacher[0], teacher[1]


@_match(
    "fsp",
    "FSP / Gram-matrix MSE between two layers (feature-channel relations)",
    feature="hidden",
    pair=True,
    needs_equal_width=True,
    aliases=("gram",),
    formula="G = X₀ᵀX₁ / n_valid per example (d×d, valid tokens); mean over elements of (G_S − G_T)²",
)
def fsp_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    student_first, student_second, teacher_first, teacher_second = _unpack_pair("fsp", student, teacher)
    _check_same_shape("fsp (first layer)", student_first, teacher_first, _WIDTH_HINT)
    _check_same_shape("fsp (second layer)", student_second, teacher_second, _WIDTH_HINT)
    valid = _token_mask(mask, teacher_first).unsqueeze(-1)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, 1, 1): n_valid per example

    def gram(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return (first.float() * valid).transpose(1, 2) @ (second.float() * valid) / count

    return F.mse_loss(gram(student_first, student_second), gram(teacher_first, teacher_second))


@_match(
    "nst",
    "TextBrewer's NST/MMD: MSE between token-relation matrices of two layers",
    feature="hidden",
    pair=True,
    aliases=("mmd",),
    formula="G = X₀X₁ᵀ / d per example (L×L, d each side's width); mean over valid (i, j) of (G_S − G_T)²",
)
def nst_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    student_first, student_second, teacher_first, teacher_second = _unpack_pair("nst", student, teacher)
    if student_first.shape[:2] != teacher_first.shape[:2]:
        raise ValueError(
            f"nst: student tokens {tuple(student_first.shape[:2])} differ from teacher tokens "
            f"{tuple(teacher_first.shape[:2])}"
        )
    student_relation = student_first.float() @ student_second.float().transpose(1, 2) / student_second.shape[-1]
    teacher_relation = teacher_first.float() @ teacher_second.float().transpose(1, 2) / teacher_second.shape[-1]
    return _masked_mean((student_relation - teacher_relation).pow(2), _pair_mask(mask, teacher_relation) > 0)


# ── attention scores ──


def _check_scores(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"{what}: attention scores must be (batch, heads, length, length)")


def _check_heads(what: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _check_scores(what, student, teacher)
    _check_same_shape(what, student, teacher, _HEADS_HINT)


def _scores_mse_over_valid_pairs(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    # Entries at masked keys (and masked queries) are zeroed on both sides and left out of the
    # count, as in TextBrewer's masked att_mse_loss.
    _check_same_shape("attention scores", student, teacher)
    return _masked_mean((student.float() - teacher.float()).pow(2), _pair_mask(mask, teacher) > 0)


def _distribution_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None,
    subtract_teacher_entropy: bool,
) -> torch.Tensor:
    """Per query row: softmax over valid keys; CE (or KL) teacher → student; mean over valid
    query rows and heads. Scores are (B, [h,] L, L)."""
    _check_same_shape("attention scores", student_scores, teacher_scores)
    tokens = _score_tokens(mask, teacher_scores)
    heads = (1,) * (teacher_scores.dim() - 3)
    valid_keys = tokens.view(tokens.shape[0], *heads, 1, tokens.shape[1]) > 0
    valid_queries = tokens.view(tokens.shape[0], *heads, tokens.shape[1]) > 0
    teacher_log_probabilities = F.log_softmax(teacher_scores.float().masked_fill(~valid_keys, _EXCLUDED), dim=-1)
    student_log_probabilities = F.log_softmax(student_scores.float().masked_fill(~valid_keys, _EXCLUDED), dim=-1)
    if subtract_teacher_entropy:
        terms = teacher_log_probabilities.exp() * (teacher_log_probabilities - student_log_probabilities)
    else:
        terms = -teacher_log_probabilities.exp() * student_log_probabilities
    per_query = torch.where(valid_keys, terms, torch.zeros_like(terms)).sum(dim=-1)
    return _masked_mean(per_query, valid_queries)


@_match(
    "attention_mse",
    "MSE between attention scores, head by head",
    feature="attention",
    needs_equal_heads=True,
    formula="mean over heads and valid (query, key) pairs of (A_S − A_T)², A = pre-softmax scores",
)
def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_heads("attention_mse", student, teacher)
    return _scores_mse_over_valid_pairs(student, teacher, mask)


@_match(
    "attention_ce",
    "cross-entropy between attention distributions, head by head",
    feature="attention",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of −Σ_valid keys softmax(A_T) · log softmax(A_S)",
)
def attention_ce(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_heads("attention_ce", student, teacher)
    return _distribution_loss(student, teacher, mask, subtract_teacher_entropy=False)


@_match(
    "attention_mse_sum",
    "MSE between attention scores summed over heads (any head counts)",
    feature="attention",
    formula="mean over valid (query, key) pairs of (Σ_h A_S − Σ_h A_T)²",
)
def attention_mse_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_scores("attention_mse_sum", student, teacher)
    return _scores_mse_over_valid_pairs(student.float().sum(dim=1), teacher.float().sum(dim=1), mask)


@_match(
    "attention_ce_mean",
    "cross-entropy between head-averaged attention distributions (any head counts)",
    feature="attention",
    formula="mean over valid queries of −Σ_valid keys softmax(mean_h A_T) · log softmax(mean_h A_S)",
)
def attention_ce_mean(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_scores("attention_ce_mean", student, teacher)
    return _distribution_loss(
        student.float().mean(dim=1), teacher.float().mean(dim=1), mask, subtract_teacher_entropy=False
    )


@_match(
    "tinybert_attention",
    "TinyBERT MSE between pre-softmax attention scores",
    feature="attention",
    needs_equal_heads=True,
    formula="mean over all B·h·L·L entries of (A_S − A_T)², entries at masked queries or keys set to 0",
)
def tinybert_attention(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    _check_heads("tinybert_attention", student, teacher)
    # Unlike attention_mse the zeroed entries stay in the denominator, as in TinyBERT's code.
    squared = (student.float() - teacher.float()).pow(2) * _pair_mask(mask, teacher)
    return squared.mean()


# ── attention inputs (MiniLM) ──


def _split_heads(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, d) → (B, heads, L, d / heads)."""
    batch, length, width = projection.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    return projection.float().reshape(batch, length, heads, width // heads).transpose(1, 2)


def _self_relation(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax input XXᵀ/√(d/heads) per head: (B, heads, L, L)."""
    split = _split_heads(projection, heads)
    return split @ split.transpose(-1, -2) / math.sqrt(split.shape[-1])


@_full_precision
def attention_scores_from_inputs(inputs: AttentionInputs) -> torch.Tensor:
    """Pre-softmax attention scores QKᵀ/√d_k, (B, h, L, L), fp32, from a layer's query/key projections."""
    query = _split_heads(inputs.query, inputs.num_heads)
    key = _split_heads(inputs.key, inputs.num_heads)
    return query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])


def _check_inputs_heads(
    what: str, student: AttentionInputs, teacher: AttentionInputs, relation_heads: int | None
) -> None:
    if relation_heads is not None:
        raise ValueError(f"{what} compares the models' own heads; relation_heads applies to relation_qq/kk/vv only")
    if student.num_heads != teacher.num_heads:
        raise ValueError(f"{what}: student has {student.num_heads} heads, teacher {teacher.num_heads}{_HEADS_HINT}")


def _value(what: str, inputs: AttentionInputs, side: str) -> torch.Tensor:
    if inputs.value is None:
        raise ValueError(f"{what} needs the value projections, but the {side}'s attention inputs carry none")
    return inputs.value


@_match(
    "minilm_attention",
    "MiniLM self-attention distribution KL, head by head",
    feature="attention_inputs",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of KL(softmax(QKᵀ/√d_k)_T ‖ softmax(QKᵀ/√d_k)_S) over valid keys",
)
def minilm_attention(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    _check_inputs_heads("minilm_attention", student, teacher, relation_heads)
    return _distribution_loss(
        attention_scores_from_inputs(student),
        attention_scores_from_inputs(teacher),
        mask,
        subtract_teacher_entropy=True,
    )


@_match(
    "minilm_value_relation",
    "MiniLM value-relation KL, head by head",
    feature="attention_inputs",
    needs_equal_heads=True,
    formula="mean over heads and valid queries of KL(softmax(VVᵀ/√d_k)_T ‖ softmax(VVᵀ/√d_k)_S) over valid keys",
)
def minilm_value_relation(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    _check_inputs_heads("minilm_value_relation", student, teacher, relation_heads)
    return _distribution_loss(
        _self_relation(_value("minilm_value_relation", student, "student"), student.num_heads),
        _self_relation(_value("minilm_value_relation", teacher, "teacher"), teacher.num_heads),
        mask,
        subtract_teacher_entropy=True,
    )


def _relation_loss(
    what: str,
    pick: Callable[[AttentionInputs, str], torch.Tensor],
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None,
    relation_heads: int | None,
) -> torch.Tensor:
    # MiniLMv2 re-splits both models' projections into the same number of relation heads, so the
    # models' own head counts (and widths) may differ; the default follows the teacher.
    heads = teacher.num_heads if relation_heads is None else relation_heads
    student_projection, teacher_projection = pick(student, "student"), pick(teacher, "teacher")
    for side, projection in (("student", student_projection), ("teacher", teacher_projection)):
        if heads < 1 or projection.shape[-1] % heads:
            raise ValueError(
                f"{what}: the {side}'s width {projection.shape[-1]} is not divisible by relation_heads={heads}; "
                "choose a relation head count that divides both the student and the teacher width"
            )
    return _distribution_loss(
        _self_relation(student_projection, heads),
        _self_relation(teacher_projection, heads),
        mask,
        subtract_teacher_entropy=True,
    )


_RELATION_FORMULA = (
    "split d into r relation heads (default r = teacher heads); mean over r heads and valid queries of "
    "KL(softmax(XXᵀ/√(d/r))_T ‖ softmax(XXᵀ/√(d/r))_S) over valid keys, X = {}"
)


@_match(
    "relation_qq",
    "MiniLMv2 query-query self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("queries"),
)
def relation_qq(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss("relation_qq", lambda inputs, side: inputs.query, student, teacher, mask, relation_heads)


@_match(
    "relation_kk",
    "MiniLMv2 key-key self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("keys"),
)
def relation_kk(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss("relation_kk", lambda inputs, side: inputs.key, student, teacher, mask, relation_heads)


@_match(
    "relation_vv",
    "MiniLMv2 value-value self-relation KL over re-split relation heads",
    feature="attention_inputs",
    takes_relation_heads=True,
    formula=_RELATION_FORMULA.format("values"),
)
def relation_vv(
    student: AttentionInputs,
    teacher: AttentionInputs,
    mask: torch.Tensor | None = None,
    relation_heads: int | None = None,
) -> torch.Tensor:
    return _relation_loss(
        "relation_vv", lambda inputs, side: _value("relation_vv", inputs, side), student, teacher, mask, relation_heads
    )
