"""Token-level KD divergences for language models: forward and reverse KL, generalized JSD(β),
skew KL and skew reverse KL (α), total variation — chunked over tokens, on dense teacher logits or
a sparse teacher (`SparseLogits`: top-k ids and log-probabilities from a store).

Why chunked, and why a custom autograd function: with a 150k vocabulary, 4k tokens of fp32
log-probabilities are 2.4 GB, and a plain implementation keeps several of them (student and teacher
log-softmax, the mixture, the probabilities) alive in autograd until backward. Here the counted
positions are taken a chunk of rows at a time (`rows_per_chunk`, default so that one fp32 chunk
tensor holds about 16M entries): the forward pass keeps only the running sum, and the backward pass
recomputes each chunk to write its rows of the gradient. Autograd saves nothing but the student's
logits themselves (the model's own output, in its own dtype), so no fp32 [tokens × vocabulary]
tensor ever exists, in the forward pass, in backward, or in saved tensors. Checkpointing each chunk
(torch.utils.checkpoint) was not enough: every chunk's slice backward would materialize a gradient
of the full logits' size, once per chunk. The teacher gets no gradient (it is frozen everywhere).

Every divergence is a sum over the vocabulary of per-entry terms of the two log-distributions, so a
sparse teacher is reconstructed per chunk into a full log-distribution and the same terms apply:
`uniform` spreads the remaining mass evenly over the V − k other ids, `zero` renormalizes the top-k
to 1 and gives the others probability 0. Probability 0 is handled exactly where it can be
(0 · log 0 = 0 in every p_T · (…) term, the mixtures are positive wherever p_S is); where a formula
is infinite — reverse KL, and skew reverse KL with α = 0, when the teacher gives an id probability 0
and the student does not — log p_T is floored at log of the smallest normal fp32 number (≈ −87.3),
a finite, steep penalty on student mass outside the teacher's support instead of inf/NaN.

All computation is in fp32 with autocast off; the value is the masked mean over counted positions
(as the other KD losses: `temperature_squared` multiplies each position's divergence by its τ²).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from brewer_cli.features import SparseLogits
from brewer_cli.losses.kd import KD_LOSSES, Temperature, _row_temperature
from brewer_cli.losses.masks import EXCLUDED, logits_masks

# log of the smallest normal fp32 number: where log p_T = -inf meets a student with mass there.
LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)
# fp32 entries in one chunk tensor (64 MiB); a chunk makes a handful of such tensors at a time.
CHUNK_ELEMENTS = 1 << 24
SPARSE_TAILS = ("zero", "uniform")

# The token KD losses: the ones that accept a sparse teacher (`SparseLogits`).
TOKEN_KD_LOSSES = frozenset({"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"})

# (student log-probabilities, teacher log-probabilities), both (n, V) → per-entry terms (n, V).
Terms = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _floored(log_probabilities: torch.Tensor) -> torch.Tensor:
    """-inf (probability 0) → LOG_FLOOR; finite values unchanged."""
    return torch.where(torch.isneginf(log_probabilities), torch.full_like(log_probabilities, LOG_FLOOR), log_probabilities)


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _mixture(student: torch.Tensor, teacher: torch.Tensor, teacher_weight: float) -> torch.Tensor:
    """log(w p_T + (1 − w) p_S), computed in log space."""
    return _floored(torch.logaddexp(teacher + _log(teacher_weight), student + _log(1.0 - teacher_weight)))


def _forward_kl_terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return teacher.exp() * (_floored(teacher) - student)


def _reverse_kl_terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return student.exp() * (student - _floored(teacher))


def _jsd_terms(beta: float) -> Terms:
    def terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mixture = _mixture(student, teacher, beta)
        return beta * teacher.exp() * (_floored(teacher) - mixture) + (1.0 - beta) * student.exp() * (student - mixture)

    return terms


def _skew_kl_terms(alpha: float) -> Terms:
    def terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return teacher.exp() * (_floored(teacher) - _mixture(student, teacher, alpha))

    return terms


def _skew_reverse_kl_terms(alpha: float) -> Terms:
    def terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return student.exp() * (student - _mixture(student, teacher, 1.0 - alpha))

    return terms


def _total_variation_terms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return 0.5 * (teacher.exp() - student.exp()).abs()


# ───────────────────────────────────────── one chunk of rows ─────────────────────────────────────────


def _sparse_log_probabilities(teacher: SparseLogits, index: tuple[torch.Tensor, ...], vocabulary: int) -> torch.Tensor:
    """The teacher's full log-distribution (n, V) at the rows `index`, rebuilt from its top-k."""
    ids = teacher.ids[index].long()
    log_probabilities = teacher.log_probs[index].float()
    kept = ids.shape[-1]
    if teacher.tail == "zero" or kept >= vocabulary:
        # zero: the top-k renormalized to 1; uniform with k = V: there are no other ids.
        if teacher.tail == "zero":
            log_probabilities = log_probabilities - torch.logsumexp(log_probabilities, dim=-1, keepdim=True)
        rest = torch.full((ids.shape[0], 1), -math.inf, device=ids.device)
    else:
        rest = teacher.tail_log_mass[index].float().unsqueeze(-1) - math.log(vocabulary - kept)
    full = rest.expand(ids.shape[0], vocabulary).clone(memory_format=torch.contiguous_format)
    return full.scatter_(-1, ids, log_probabilities)


def _chunk_divergence(
    terms: Terms,
    student_rows: torch.Tensor,
    teacher: torch.Tensor | SparseLogits,
    index: tuple[torch.Tensor, ...],
    temperature: torch.Tensor,
    class_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The divergence of each row in the chunk, (n,), from the student's rows (n, V) in fp32."""
    student_rows = student_rows / temperature.unsqueeze(-1)
    if isinstance(teacher, SparseLogits):
        teacher_log_probabilities = _sparse_log_probabilities(teacher, index, student_rows.shape[-1])
    else:
        teacher_rows = teacher[index].float() / temperature.unsqueeze(-1)
        if class_mask is not None:
            teacher_rows = teacher_rows.masked_fill(~class_mask, EXCLUDED)
        teacher_log_probabilities = F.log_softmax(teacher_rows, dim=-1)
    if class_mask is not None:
        student_rows = student_rows.masked_fill(~class_mask, EXCLUDED)
    values = terms(F.log_softmax(student_rows, dim=-1), teacher_log_probabilities)
    if class_mask is not None:
        values = torch.where(class_mask, values, torch.zeros_like(values))
    return values.sum(dim=-1)


class _ChunkedDivergence(torch.autograd.Function):
    """Σ_rows weight_r · D(row r), a chunk of rows at a time, recomputed per chunk in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        student_logits: torch.Tensor,
        teacher: torch.Tensor | SparseLogits,
        terms: Terms,
        positions: torch.Tensor,
        temperature: torch.Tensor,
        weights: torch.Tensor,
        class_mask: torch.Tensor | None,
        rows_per_chunk: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(student_logits)
        # The teacher may be an inference-mode tensor, which autograd refuses to save; it is a
        # constant here, so a plain reference does.
        ctx.constants = (teacher, terms, positions, temperature, weights, class_mask, rows_per_chunk)
        total = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        for rows, index in _chunks(positions, rows_per_chunk):
            per_row = _chunk_divergence(
                terms,
                student_logits[index].float(),
                teacher,
                index,
                temperature[rows],
                None if class_mask is None else class_mask[index],
            )
            total += (per_row * weights[rows]).sum()
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (student_logits,) = ctx.saved_tensors
        teacher, terms, positions, temperature, weights, class_mask, rows_per_chunk = ctx.constants
        gradient = torch.zeros_like(student_logits)
        with torch.autocast(device_type=student_logits.device.type, enabled=False), torch.enable_grad():
            for rows, index in _chunks(positions, rows_per_chunk):
                student_rows = student_logits[index].detach().float().requires_grad_()
                per_row = _chunk_divergence(
                    terms,
                    student_rows,
                    teacher,
                    index,
                    temperature[rows],
                    None if class_mask is None else class_mask[index],
                )
                (rows_gradient,) = torch.autograd.grad((per_row * weights[rows]).sum(), student_rows)
                gradient[index] = (rows_gradient * grad_output).to(gradient.dtype)
        return gradient, None, None, None, None, None, None, None


def _chunks(positions: torch.Tensor, rows_per_chunk: int):
    """(slice into the counted rows, index tuple into the logits' row axes) per chunk."""
    for start in range(0, positions.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        yield rows, tuple(positions[rows].unbind(dim=1))


# ───────────────────────────────────────── the shared driver ─────────────────────────────────────────


def _check_sparse(student_logits: torch.Tensor, teacher: SparseLogits) -> None:
    if teacher.tail not in SPARSE_TAILS:
        raise ValueError(f"sparse teacher tail {teacher.tail!r} — valid: {', '.join(SPARSE_TAILS)}")
    if teacher.vocabulary_size != student_logits.shape[-1]:
        raise ValueError(
            f"the sparse teacher's distributions are over {teacher.vocabulary_size} token ids, the student's logits over "
            f"{student_logits.shape[-1]}"
        )
    rows = tuple(student_logits.shape[:-1])
    if tuple(teacher.ids.shape[:-1]) != rows or teacher.log_probs.shape != teacher.ids.shape:
        raise ValueError(
            f"sparse teacher ids {tuple(teacher.ids.shape)} and log_probs {tuple(teacher.log_probs.shape)} do not fit "
            f"student logits of shape {tuple(student_logits.shape)}: expected {rows + (teacher.ids.shape[-1],)}"
        )


def token_kd(
    terms: Terms,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None,
    temperature_squared: bool,
    rows_per_chunk: int | None,
) -> torch.Tensor:
    """Masked mean over counted rows of Σ_v terms(log p_S, log p_T), p = softmax(z/τ) (a sparse
    teacher: already at its capture temperature), chunked over rows; see the module's note."""
    row_mask, class_mask = logits_masks(student_logits, mask)
    if isinstance(teacher_logits, SparseLogits):
        if class_mask is not None:
            raise ValueError("a sparse teacher is for token logits (B, L, V) with a (B, L) mask, not span logits")
        _check_sparse(student_logits, teacher_logits)
    elif student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"KD logits: student shape {tuple(student_logits.shape)} differs from teacher shape {tuple(teacher_logits.shape)}"
        )
    if rows_per_chunk is not None and rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be at least 1, got {rows_per_chunk}")
    device = student_logits.device
    with torch.autocast(device_type=device.type, enabled=False):  # see base.full_precision
        row_shape = student_logits.shape[:-1]
        tau = _row_temperature(temperature, row_shape, device).detach()
        counted = row_mask if row_mask is not None else torch.ones(row_shape, dtype=torch.bool, device=device)
        positions = counted.nonzero()  # (N, row axes)
        index = tuple(positions.unbind(dim=1))
        tau = tau[index]
        # Each counted row weighs 1/N (τ²/N with temperature_squared): the masked mean.
        weights = (tau.pow(2) if temperature_squared else torch.ones_like(tau)) / max(positions.shape[0], 1)
        chunk = rows_per_chunk or max(1, CHUNK_ELEMENTS // max(student_logits.shape[-1], 1))
        return _ChunkedDivergence.apply(student_logits, teacher_logits, terms, positions, tau, weights, class_mask, chunk)


def _check_open_unit(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


def vocabularies_differ(student_logits: Any, teacher_logits: Any) -> bool:
    """Whether one-head student and teacher logits (dense or sparse) cover different numbers of ids."""
    if not isinstance(student_logits, torch.Tensor):
        return False  # several heads (QA start/end): no vocabulary axis
    if isinstance(teacher_logits, SparseLogits):
        return teacher_logits.vocabulary_size != student_logits.shape[-1]
    return isinstance(teacher_logits, torch.Tensor) and teacher_logits.shape[-1] != student_logits.shape[-1]


def trim_to_vocabulary(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | SparseLogits, vocabulary_size: int
) -> tuple[torch.Tensor, torch.Tensor | SparseLogits]:
    """Both logits cut to the tokenizer's `vocabulary_size` ids along the last axis.

    Checkpoints pad their embedding and output matrices past the tokenizer (Qwen2: 151,936 or
    152,064 rows for 151,665 tokens) so that matrix sizes divide nicely; the extra rows are ids no
    tokenizer produces, and their logits are whatever the padding rows hold. Cutting them off before
    the softmax compares the two models on the tokens that exist. Sizes below the tokenizer's are an
    error (ids the model cannot score); a sparse teacher must already be over the tokenizer's ids.
    """
    sizes = {"student": student_logits.shape[-1]}
    if isinstance(teacher_logits, SparseLogits):
        if teacher_logits.vocabulary_size != vocabulary_size:
            raise ValueError(
                f"the sparse teacher's distributions are over {teacher_logits.vocabulary_size} token ids but the "
                f"tokenizer has {vocabulary_size}: capture the store with the teacher's logits cut to the tokenizer's size"
            )
    else:
        sizes["teacher"] = teacher_logits.shape[-1]
    short = {role: size for role, size in sizes.items() if size < vocabulary_size}
    if short:
        raise ValueError(
            "the logits do not cover the tokenizer's "
            f"{vocabulary_size} ids: "
            + ", ".join(f"{role} has {size}" for role, size in short.items())
            + " — teacher and student vocabularies may differ only by padding rows past the tokenizer's size"
        )
    student_logits = student_logits[..., :vocabulary_size]
    if not isinstance(teacher_logits, SparseLogits):
        teacher_logits = teacher_logits[..., :vocabulary_size]
    return student_logits, teacher_logits


# ─────────────────────────────────────────────── the losses ───────────────────────────────────────────────


@KD_LOSSES.register("forward_kl", "KL(p_T ‖ p_S) per token, chunked over tokens; dense or sparse teacher")
def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Forward (mass-covering) KL: mean over counted rows of Σ_v p_T,v (log p_T,v − log p_S,v),
    p = softmax(z/τ). The value of `kl`, computed chunked and for sparse teachers too."""
    return token_kd(_forward_kl_terms, student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk)


@KD_LOSSES.register("reverse_kl", "KL(p_S ‖ p_T) per token (mode-seeking, MiniLLM), chunked; dense or sparse teacher")
def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Reverse (mode-seeking) KL: mean over counted rows of Σ_v p_S,v (log p_S,v − log p_T,v).
    Ids a `zero`-tail sparse teacher gives probability 0 count with log p_T = LOG_FLOOR (≈ −87.3)."""
    return token_kd(_reverse_kl_terms, student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk)


@KD_LOSSES.register(
    "jsd",
    "generalized JSD(β) = β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S, β = distillation.jsd_beta in "
    "(0, 1) (GKD/TRL; → β·forward KL as β → 0, (1−β)·reverse KL as β → 1); chunked; dense or sparse teacher",
)
def jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    beta: float = 0.5,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024, eq. 1; TRL's
    `generalized_jsd_loss`): JSD(β) = β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S;
    β = 0.5 is the symmetric Jensen-Shannon divergence.

    0 < β < 1, open: at both ends m equals one of the two distributions and the formula is 0 for
    every input. Its limits are the KLs up to scale — JSD(β)/β → KL(p_T ‖ p_S) as β → 0 and
    JSD(β)/(1−β) → KL(p_S ‖ p_T) as β → 1 — which TRL special-cases as β = 0 and β = 1; here
    those are the losses `forward_kl` and `reverse_kl`.
    """
    _check_open_unit("jsd beta", beta)
    return token_kd(_jsd_terms(beta), student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk)


@KD_LOSSES.register(
    "skew_kl",
    "skew KL(p_T ‖ α·p_T + (1−α)·p_S), α = distillation.skew_alpha in [0, 1) (DistiLLM; α = 0 is forward KL); chunked; dense or sparse teacher",
)
def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    alpha: float = 0.1,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Skew KL (DistiLLM, Ko et al. 2024): KL(p_T ‖ α·p_T + (1−α)·p_S). α = 0 is forward KL; α → 1
    makes the target the teacher itself (0 for every input), so 0 ≤ α < 1."""
    _check_skew(alpha)
    return token_kd(_skew_kl_terms(alpha), student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk)


@KD_LOSSES.register(
    "skew_reverse_kl",
    "skew reverse KL(p_S ‖ α·p_S + (1−α)·p_T), α = distillation.skew_alpha in [0, 1) (DistiLLM; α = 0 is reverse KL); chunked; dense or sparse teacher",
)
def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    alpha: float = 0.1,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Skew reverse KL (DistiLLM): KL(p_S ‖ α·p_S + (1−α)·p_T). α = 0 is reverse KL; 0 ≤ α < 1.
    With α > 0 the mixture is positive wherever p_S is, so it stays finite for a `zero`-tail teacher."""
    _check_skew(alpha)
    return token_kd(
        _skew_reverse_kl_terms(alpha), student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk
    )


@KD_LOSSES.register("tv", "total variation ½·Σ|p_T − p_S| per token, chunked; dense or sparse teacher")
def total_variation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | SparseLogits,
    temperature: Temperature,
    mask: torch.Tensor | None = None,
    *,
    temperature_squared: bool = False,
    rows_per_chunk: int | None = None,
) -> torch.Tensor:
    """Total variation distance: mean over counted rows of ½·Σ_v |p_T,v − p_S,v| (in [0, 1])."""
    return token_kd(
        _total_variation_terms, student_logits, teacher_logits, temperature, mask, temperature_squared, rows_per_chunk
    )


def _check_skew(alpha: float) -> None:
    if not 0 <= alpha < 1:
        raise ValueError(f"skew alpha must satisfy 0 ≤ α < 1, got {alpha}")
