"""Token-level KD divergences (brewer_cli/losses/token_kd.py): golden values and gradients against
plain float64 formulas written here, masks, temperature and τ², chunking, the limits of the
parametrized divergences, sparse teachers (k = V equals dense; small k against hand-built
distributions), what autograd keeps, vocabulary padding rows, and the recipe → distiller path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from brewer_cli.build import build_run
from brewer_cli.build.loading import check_vocabularies
from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.errors import ModelError, RecipeError
from brewer_cli.families.loading import LoadedModel
from brewer_cli.features import SparseLogits
from brewer_cli.losses import KD_LOSSES, TOKEN_KD_LOSSES, kd_loss, trim_to_vocabulary, vocabularies_differ
from brewer_cli.losses.token_kd import LOG_FLOOR
from brewer_cli.recipe import load_recipe
from brewer_cli.recipe.distillation import BasicDistillation

NAMES = sorted(TOKEN_KD_LOSSES)
PARAMETERS = {"jsd": {"beta": 0.3}, "skew_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
VALUE = dict(rel=1e-5, abs=1e-6)


def random(*shape: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def loss_of(name: str, student, teacher, temperature=1.0, mask=None, **options: Any) -> torch.Tensor:
    return KD_LOSSES.get(name)(student, teacher, temperature, mask, **PARAMETERS.get(name, {}), **options)


# ───────────────────────────────────── plain float64 references ─────────────────────────────────────


def plain_log(p: torch.Tensor) -> torch.Tensor:
    """log p, with the loss's floor where p = 0 (only reached by `zero`-tail sparse teachers)."""
    return torch.where(p > 0, p.clamp_min(1e-300).log(), torch.full_like(p, LOG_FLOOR))


def plain_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ p log(p/q) with 0·log 0 = 0."""
    return torch.where(p > 0, p * (plain_log(p) - plain_log(q)), torch.zeros_like(p)).sum(-1)


def plain_divergence(name: str, p_student: torch.Tensor, p_teacher: torch.Tensor, beta: float = 0.3, alpha: float = 0.2):
    """The divergence of each row, from the definitions."""
    if name == "forward_kl":
        return plain_kl(p_teacher, p_student)
    if name == "reverse_kl":
        return plain_kl(p_student, p_teacher)
    if name == "jsd":
        mixture = beta * p_teacher + (1 - beta) * p_student
        return beta * plain_kl(p_teacher, mixture) + (1 - beta) * plain_kl(p_student, mixture)
    if name == "skew_kl":
        return plain_kl(p_teacher, alpha * p_teacher + (1 - alpha) * p_student)
    if name == "skew_reverse_kl":
        return plain_kl(p_student, alpha * p_student + (1 - alpha) * p_teacher)
    assert name == "tv"
    return 0.5 * (p_teacher - p_student).abs().sum(-1)


def plain_loss(name, student, teacher_probabilities_of, temperature, mask, temperature_squared=False, params=None):
    """Masked mean over rows of D(row) (× τ² with temperature_squared), student softmax(z/τ) in float64."""
    tau = torch.as_tensor(temperature, dtype=torch.float64)
    rows = student.shape[:-1]
    tau = tau.reshape(tuple(tau.shape) + (1,) * (len(rows) - tau.dim())).expand(rows)
    p_student = torch.softmax(student.double() / tau.unsqueeze(-1), dim=-1)
    params = PARAMETERS.get(name, {}) if params is None else params
    per_row = plain_divergence(name, p_student, teacher_probabilities_of(tau), **params)
    if temperature_squared:
        per_row = per_row * tau.pow(2)
    counted = torch.ones(rows, dtype=torch.bool) if mask is None else mask
    return per_row[counted].sum() / max(int(counted.sum()), 1)


def dense_teacher(teacher: torch.Tensor):
    return lambda tau: torch.softmax(teacher.double() / tau.unsqueeze(-1), dim=-1)


def value_and_gradient(fn, student: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = student.detach().clone().requires_grad_()
    value = fn(leaf)
    (gradient,) = torch.autograd.grad(value, leaf)
    return value.item(), gradient


# ─────────────────────────────────────────── dense teachers ───────────────────────────────────────────


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature_squared", [False, True])
@pytest.mark.parametrize("temperature", ["float", "per-sequence", "per-token"])
def test_token_logits_against_plain_formulas(name: str, temperature: str, temperature_squared: bool) -> None:
    student, teacher = random(3, 5, 11, seed=1), random(3, 5, 11, seed=2)
    tau = {"float": 2.0, "per-sequence": torch.tensor([1.0, 2.0, 3.0]), "per-token": 0.5 + random(3, 5, seed=3).abs()}[
        temperature
    ]
    expected_value, expected_gradient = value_and_gradient(
        lambda s: plain_loss(name, s, dense_teacher(teacher), tau, MASK, temperature_squared), student.double()
    )
    value, gradient = value_and_gradient(
        lambda s: loss_of(name, s, teacher, tau, MASK, temperature_squared=temperature_squared, rows_per_chunk=4), student
    )
    assert value == pytest.approx(expected_value, **VALUE)
    torch.testing.assert_close(gradient, expected_gradient.float(), rtol=1e-4, atol=1e-6)
    assert gradient[~MASK].abs().max().item() == 0.0  # uncounted positions get no gradient


@pytest.mark.parametrize("name", NAMES)
def test_sequence_logits_and_span_logits(name: str) -> None:
    # (B, C) with a (B,) row mask, and QA-style span logits (B, L) whose mask removes classes.
    student, teacher = random(4, 6, seed=4), random(4, 6, seed=5)
    rows = torch.tensor([True, False, True, True])
    value = loss_of(name, student, teacher, 1.5, rows).item()
    assert value == pytest.approx(plain_loss(name, student, dense_teacher(teacher), 1.5, rows).item(), **VALUE)
    classes = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = 0.0
    for s, t, keep in zip(student, teacher, classes):
        p_s, p_t = torch.softmax(s[keep].double(), -1), torch.softmax(t[keep].double(), -1)
        expected += plain_divergence(name, p_s, p_t, **PARAMETERS.get(name, {})).item() / 4
    assert loss_of(name, student, teacher, 1.0, classes).item() == pytest.approx(expected, **VALUE)


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_counts(name: str) -> None:
    student, teacher = random(3, 5, 7, seed=6), random(3, 5, 7, seed=7)
    # The same batch padded with 4 more positions of garbage each.
    padded_student = torch.cat([student, random(3, 4, 7, seed=8, scale=50.0)], dim=1)
    padded_teacher = torch.cat([teacher, random(3, 4, 7, seed=9, scale=50.0)], dim=1)
    padded_mask = torch.cat([MASK, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    value, gradient = value_and_gradient(lambda s: loss_of(name, s, teacher, 2.0, MASK), student)
    padded_value, padded_gradient = value_and_gradient(
        lambda s: loss_of(name, s, padded_teacher, 2.0, padded_mask), padded_student
    )
    assert padded_value == pytest.approx(value, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(padded_gradient[:, :5], gradient, rtol=1e-5, atol=1e-7)
    assert padded_gradient[:, 5:].abs().max().item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_chunk_size_changes_nothing(name: str) -> None:
    student, teacher = random(3, 5, 9, seed=10), random(3, 5, 9, seed=11)
    one_row, one_gradient = value_and_gradient(lambda s: loss_of(name, s, teacher, 2.0, MASK, rows_per_chunk=1), student)
    all_rows, all_gradient = value_and_gradient(lambda s: loss_of(name, s, teacher, 2.0, MASK), student)
    assert one_row == pytest.approx(all_rows, rel=1e-6, abs=1e-7)
    torch.testing.assert_close(one_gradient, all_gradient, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_zero_when_the_student_is_the_teacher(name: str) -> None:
    logits = random(3, 5, 13, seed=12)
    value, gradient = value_and_gradient(lambda s: loss_of(name, s, logits, 2.0, MASK), logits)
    assert abs(value) < 1e-6 and gradient.abs().max().item() < 1e-6


def test_limits_of_the_parametrized_divergences() -> None:
    # Moderate logits: the expansions below hold while β·p_T/p_S (and (1−β)·p_S/p_T) stay small.
    student, teacher = random(3, 5, 9, seed=13, scale=1.0), random(3, 5, 9, seed=14, scale=1.0)
    forward = KD_LOSSES.get("forward_kl")(student, teacher, 1.0, MASK).item()
    reverse = KD_LOSSES.get("reverse_kl")(student, teacher, 1.0, MASK).item()
    # Skew KL with α = 0 is plain KL, in both directions.
    assert KD_LOSSES.get("skew_kl")(student, teacher, 1.0, MASK, alpha=0.0).item() == pytest.approx(forward, rel=1e-6)
    assert KD_LOSSES.get("skew_reverse_kl")(student, teacher, 1.0, MASK, alpha=0.0).item() == pytest.approx(reverse, rel=1e-6)

    # JSD(β) vanishes at both ends; scaled, it tends to forward KL (β → 0) and reverse KL (β → 1):
    # JSD(β)/β = KL(p_T ‖ p_S) − c·β + O(β²), so the Richardson step 2·f(β/2) − f(β) removes the
    # first-order term and leaves the limit.
    def scaled(beta: float, weight: float) -> float:
        return KD_LOSSES.get("jsd")(student, teacher, 1.0, MASK, beta=beta).item() / weight

    step = 2e-3
    near_zero = 2 * scaled(step / 2, step / 2) - scaled(step, step)
    near_one = 2 * scaled(1 - step / 2, step / 2) - scaled(1 - step, step)
    assert near_zero == pytest.approx(forward, rel=1e-3) and near_one == pytest.approx(reverse, rel=1e-3)
    assert scaled(step, step) != pytest.approx(forward, rel=1e-3)  # the first-order term is really there
    # β = 0.5 is the symmetric Jensen-Shannon divergence: swapping student and teacher changes nothing.
    symmetric = KD_LOSSES.get("jsd")(student, teacher, 1.0, MASK, beta=0.5).item()
    assert KD_LOSSES.get("jsd")(teacher, student, 1.0, MASK, beta=0.5).item() == pytest.approx(symmetric, rel=1e-5)
    for beta in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=f"jsd beta must lie strictly between 0 and 1, got {beta}"):
            KD_LOSSES.get("jsd")(student, teacher, 1.0, beta=beta)
    with pytest.raises(ValueError, match="skew alpha must satisfy 0 ≤ α < 1, got 1.0"):
        KD_LOSSES.get("skew_kl")(student, teacher, 1.0, alpha=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_loss_goes_down_when_the_student_logits_are_optimized(name: str) -> None:
    teacher = random(2, 6, 17, seed=15)
    student = random(2, 6, 17, seed=16).requires_grad_()
    optimizer = torch.optim.Adam([student], lr=0.1)
    losses = []
    for _ in range(30):
        loss = loss_of(name, student, teacher, 1.0, torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_fp32_under_autocast_with_a_bf16_student_and_an_inference_mode_teacher() -> None:
    student = random(2, 5, 9, seed=17).to(torch.bfloat16).requires_grad_()
    with torch.inference_mode():
        teacher = random(2, 5, 9, seed=18).to(torch.bfloat16)
    reference = plain_loss("reverse_kl", student.detach().float(), dense_teacher(teacher.float()), 2.0, MASK[:2]).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kd_loss("reverse_kl", student, teacher, 2.0, MASK[:2])
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference, **VALUE)
    loss.backward()
    assert student.grad.dtype == torch.bfloat16 and student.grad.abs().sum().item() > 0


# ─────────────────────────────────────────── sparse teachers ───────────────────────────────────────────


def sparse_from(teacher: torch.Tensor, temperature: float, k: int, tail: str) -> SparseLogits:
    """What a store captures: the top-k of log softmax(z/τ) and log of the mass left over."""
    log_probabilities = torch.log_softmax(teacher / temperature, dim=-1)
    top, ids = log_probabilities.topk(k, dim=-1)
    tail_log_mass = torch.log((1 - top.exp().sum(-1)).clamp_min(0))
    return SparseLogits(ids, top, tail_log_mass, teacher.shape[-1], tail)


@pytest.mark.parametrize("tail", ["zero", "uniform"])
@pytest.mark.parametrize("name", NAMES)
def test_sparse_with_every_id_equals_dense(name: str, tail: str) -> None:
    student, teacher = random(3, 5, 10, seed=19), random(3, 5, 10, seed=20)
    sparse = sparse_from(teacher, 2.0, 10, tail)
    dense_value, dense_gradient = value_and_gradient(lambda s: loss_of(name, s, teacher, 2.0, MASK), student)
    sparse_value, sparse_gradient = value_and_gradient(lambda s: loss_of(name, s, sparse, 2.0, MASK, rows_per_chunk=3), student)
    assert sparse_value == pytest.approx(dense_value, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(sparse_gradient, dense_gradient, rtol=1e-4, atol=1e-6)


def sparse_probabilities(teacher: torch.Tensor, k: int, tail: str):
    """The teacher distribution a sparse store stands for, built by hand in float64."""
    p = torch.softmax(teacher.double(), dim=-1)
    top, ids = p.topk(k, dim=-1)
    vocabulary = teacher.shape[-1]
    if tail == "zero":
        rebuilt = torch.zeros_like(p).scatter(-1, ids, top / top.sum(-1, keepdim=True))
    else:
        rest = ((1 - top.sum(-1, keepdim=True)) / (vocabulary - k)).expand_as(p)
        rebuilt = rest.clone().scatter(-1, ids, top)
    return lambda tau: rebuilt


@pytest.mark.parametrize("tail", ["zero", "uniform"])
@pytest.mark.parametrize("name", NAMES)
def test_sparse_top_k_against_plain_formulas(name: str, tail: str) -> None:
    student, teacher = random(3, 5, 8, seed=21), random(3, 5, 8, seed=22)
    sparse = sparse_from(teacher, 1.0, 3, tail)
    expected_value, expected_gradient = value_and_gradient(
        lambda s: plain_loss(name, s, sparse_probabilities(teacher, 3, tail), 1.0, MASK), student.double()
    )
    value, gradient = value_and_gradient(lambda s: loss_of(name, s, sparse, 1.0, MASK, rows_per_chunk=2), student)
    assert math.isfinite(value) and torch.isfinite(gradient).all()
    assert value == pytest.approx(expected_value, rel=1e-5, abs=1e-5)
    torch.testing.assert_close(gradient, expected_gradient.float(), rtol=1e-4, atol=1e-5)


def test_sparse_teacher_with_nothing_left_and_its_errors() -> None:
    student = random(2, 5, 6, seed=23)
    # A teacher sure of one token: the tail holds nothing (log mass -inf) under either tail.
    ids = torch.zeros(2, 5, 2, dtype=torch.long)
    ids[..., 1] = 3
    log_probs = torch.tensor([0.0, -math.inf]).expand(2, 5, 2)
    for tail in ("zero", "uniform"):
        sure = SparseLogits(ids, log_probs, torch.full((2, 5), -math.inf), 6, tail)
        for name in NAMES:
            value, gradient = value_and_gradient(lambda s: loss_of(name, s, sure, 1.0, MASK[:2]), student)
            assert math.isfinite(value) and torch.isfinite(gradient).all(), (name, tail)
        one_hot = torch.zeros(2, 5, 6, dtype=torch.float64)
        one_hot[..., 0] = 1.0
        expected = plain_loss("forward_kl", student, lambda tau: one_hot, 1.0, MASK[:2]).item()
        assert loss_of("forward_kl", student, sure, 1.0, MASK[:2]).item() == pytest.approx(expected, **VALUE)
    sparse = sparse_from(random(2, 5, 6, seed=24), 1.0, 2, "zero")
    with pytest.raises(ValueError, match="over 6 token ids, the student's logits over 7"):
        loss_of("tv", random(2, 5, 7, seed=25), sparse)
    with pytest.raises(ValueError, match="sparse teacher tail 'gaussian' — valid: zero, uniform"):
        loss_of("tv", student, SparseLogits(sparse.ids, sparse.log_probs, sparse.tail_log_mass, 6, "gaussian"))
    with pytest.raises(ValueError, match="ce, kl and mse read dense logits"):
        kd_loss("kl", student, sparse, 1.0)


# ─────────────────────────────────────── what autograd keeps ───────────────────────────────────────


class LargestTensors(TorchDispatchMode):
    """Records the element count of every fp32 tensor an op creates."""

    def __init__(self) -> None:
        super().__init__()
        self.fp32_sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32:
                self.fp32_sizes.append((str(func), tensor.numel()))
        return out


@pytest.mark.parametrize("teacher_kind", ["dense", "sparse"])
@pytest.mark.parametrize("name", ["jsd", "reverse_kl"])
def test_no_fp32_tokens_by_vocabulary_tensor_is_made_or_saved(name: str, teacher_kind: str) -> None:
    tokens, vocabulary, chunk = 64, 2048, 8
    # The student's logits in bf16, as a model under autocast returns them: any fp32 tensor of the
    # batch's full size would be the loss's own doing.
    student = random(4, tokens // 4, vocabulary, seed=26).to(torch.bfloat16).requires_grad_()
    teacher = random(4, tokens // 4, vocabulary, seed=27).to(torch.bfloat16)
    if teacher_kind == "sparse":
        teacher = sparse_from(teacher.float(), 1.0, 64, "uniform")
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    created = LargestTensors()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), created:
        loss = loss_of(name, student, teacher, 1.0, rows_per_chunk=chunk)
        loss.backward()
    # Autograd keeps the student's logits themselves (the model's output) and nothing of their size.
    large = [tensor for tensor in saved if tensor.numel() > chunk * vocabulary]
    assert all(tensor.data_ptr() == student.data_ptr() and tensor.dtype == torch.bfloat16 for tensor in large), [
        (tensor.dtype, tuple(tensor.shape)) for tensor in large
    ]
    assert max(size for _, size in created.fp32_sizes) <= chunk * vocabulary
    assert student.grad.dtype == torch.bfloat16 and student.grad.abs().sum().item() > 0

    # The probe sees what a plain implementation keeps: the unchunked `kl` saves fp32 log-softmaxes
    # of the whole batch.
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        kd_loss("kl", student, random(4, tokens // 4, vocabulary, seed=27), 1.0)
    assert sum(tensor.dtype == torch.float32 and tensor.numel() == tokens * vocabulary for tensor in saved) >= 2


# ───────────────────────────────────────── vocabulary padding rows ─────────────────────────────────────────


def test_trim_to_vocabulary() -> None:
    student, teacher = random(2, 3, 12, seed=28), random(2, 3, 15, seed=29)
    assert vocabularies_differ(student, teacher) and not vocabularies_differ(student, teacher[..., :12])
    trimmed_student, trimmed_teacher = trim_to_vocabulary(student, teacher, 10)
    assert trimmed_student.shape[-1] == trimmed_teacher.shape[-1] == 10
    assert torch.equal(trimmed_teacher, teacher[..., :10]) and torch.equal(trimmed_student, student[..., :10])
    value = kd_loss("forward_kl", trimmed_student, trimmed_teacher, 1.0).item()
    expected = plain_loss("forward_kl", student[..., :10], dense_teacher(teacher[..., :10]), 1.0, None).item()
    assert value == pytest.approx(expected, **VALUE)
    with pytest.raises(ValueError, match="do not cover the tokenizer's 13 ids: student has 12 — teacher and student"):
        trim_to_vocabulary(student, teacher, 13)
    sparse = sparse_from(random(2, 3, 10, seed=30), 1.0, 4, "zero")
    assert vocabularies_differ(student, sparse)
    kept_student, kept_sparse = trim_to_vocabulary(student, sparse, 10)
    assert kept_sparse is sparse and kept_student.shape[-1] == 10
    with pytest.raises(ValueError, match="over 10 token ids but the tokenizer has 11: capture the store"):
        trim_to_vocabulary(student, sparse, 11)


def tiny_causal_lm(directory: Path, tokenizer_path: Path, vocabulary: int, seed: int, **config: Any) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tests.test_causal_lm import tiny_gpt2

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    settings = {key: value for key, value in tiny_gpt2(**config).items() if key != "model_type"}
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocabulary, pad_token_id=tokenizer.pad_token_id, **settings))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_vocabularies_may_differ_only_by_padding_rows(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_causal_lm import run_recipe, tokenizer_dir

    tokens = len(AutoTokenizer.from_pretrained(tokenizer_dir(tmp_path)))
    models = {
        size: tiny_causal_lm(tmp_path / f"lm-{size}", tokenizer_dir(tmp_path), size, seed=0)
        for size in (tokens - 2, tokens, tokens + 6)
    }
    recipe = load_recipe(
        run_recipe(
            tmp_path,
            teacher={"checkpoint": str(models[tokens])},
            student={"config": {"model_type": "gpt2"}},
            distillation={"kind": "basic"},
        )
    )

    def loaded(size: int, role: str) -> LoadedModel:
        from brewer_cli.families import family_for

        model = AutoModelForCausalLM.from_pretrained(models[size])
        return LoadedModel(model, AutoTokenizer.from_pretrained(models[size]), family_for(model.config), role, str(models[size]))

    check_vocabularies(recipe, loaded(tokens + 6, "teacher"), loaded(tokens, "student"))
    check_vocabularies(recipe, loaded(tokens, "teacher"), loaded(tokens + 6, "student"))
    with pytest.raises(ModelError) as raised:
        check_vocabularies(recipe, loaded(tokens + 6, "teacher"), loaded(tokens - 2, "student"))
    assert str(raised.value) == (
        f"{recipe.path}: student.checkpoint: the student's vocabulary has {tokens - 2} tokens but the teacher's has "
        f"{tokens + 6}, and the teacher's tokenizer makes {tokens} token ids — both read the same token ids in one batch, "
        f"so they must share a tokenizer (their sizes may differ only by padding rows past the tokenizer's {tokens} "
        f"ids); use a student with the teacher's vocabulary, or build it from a config (`student.config`), which takes "
        f"the teacher's tokenizer"
    )


# ─────────────────────────────────────── recipe → distiller ───────────────────────────────────────


@pytest.mark.parametrize("name", NAMES)
def test_kd_loss_dispatches_the_registered_names(name: str) -> None:
    student, teacher = random(3, 5, 7, seed=31), random(3, 5, 7, seed=32)
    expected = plain_loss(name, student, dense_teacher(teacher), 2.0, MASK, temperature_squared=True).item()
    settings = BasicDistillation(kind="basic", kd_loss=name, jsd_beta=0.3, skew_alpha=0.2, temperature_squared=True)
    loss = resolve_logit_kd(settings).loss  # the recipe's β / α bound to the losses that take them
    assert kd_loss(loss, student, teacher, 2.0, MASK, temperature_squared=True).item() == pytest.approx(expected, **VALUE)
    # By name, a loss runs with its own defaults: β 0.5, α 0.1.
    own = {"jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1}, "skew_reverse_kl": {"alpha": 0.1}}.get(name, {})
    defaults = plain_loss(name, student, dense_teacher(teacher), 2.0, MASK, True, own)
    assert kd_loss(name, student, teacher, 2.0, MASK, temperature_squared=True).item() == pytest.approx(defaults.item(), **VALUE)


def test_the_plan_shows_the_bound_parameters() -> None:
    describe = {
        name: resolve_logit_kd(BasicDistillation(kind="basic", kd_loss=name, jsd_beta=0.25, skew_alpha=0.05)).describe[0]
        for name in ("jsd", "skew_kl", "skew_reverse_kl", "reverse_kl")
    }
    assert describe["jsd"] == "KD jsd (β 0.25) × 1.0 (constant), temperature 4.0 (constant)"
    assert describe["skew_kl"] == "KD skew_kl (α 0.05) × 1.0 (constant), temperature 4.0 (constant)"
    assert describe["skew_reverse_kl"] == "KD skew_reverse_kl (α 0.05) × 1.0 (constant), temperature 4.0 (constant)"
    assert describe["reverse_kl"] == "KD reverse_kl × 1.0 (constant), temperature 4.0 (constant)"


BETA_OUTSIDE = (
    "is outside 0 < β < 1 — at 0 and 1 JSD(β) is 0 whatever the student does; its limits are other losses: "
    "kd_loss forward_kl (β → 0) or reverse_kl (β → 1)"
)
ALPHA_OUTSIDE = (
    "is outside 0 ≤ α < 1 — α is the share of the target's own distribution in the mixture, and at α = 1 the skew "
    "KL is 0 whatever the student does; α = 0 is plain KL"
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("jsd_beta", 1.0, BETA_OUTSIDE), ("jsd_beta", 0.0, BETA_OUTSIDE), ("skew_alpha", 1.0, ALPHA_OUTSIDE)]
    + [("skew_alpha", -0.1, ALPHA_OUTSIDE)],
)
def test_recipe_refuses_parameters_outside_their_range(tmp_path, field: str, value: float, message: str) -> None:
    from tests.test_causal_lm import run_recipe

    path = run_recipe(tmp_path, teacher={"checkpoint": "unused"}, distillation={"kind": "basic", "kd_loss": "jsd", field: value})
    with pytest.raises(RecipeError) as raised:
        load_recipe(path)
    assert raised.value.problems == [f"{path}: distillation.{field}: {value} {message}"]


def test_basic_distillation_of_a_causal_lm_with_padded_teacher_vocabulary_and_hard_labels(tmp_path) -> None:
    """Token KD + data cross-entropy (`hard_label_weight`) on a causal LM whose teacher pads its
    vocabulary past the tokenizer: the distiller trims, the parts add up, the loss goes down."""
    from transformers import AutoTokenizer

    from tests.test_causal_lm import run_recipe, tiny_gpt2, tokenizer_dir
    from tests.test_training import losses_on_repeated_batch, one_batch

    tokens = len(AutoTokenizer.from_pretrained(tokenizer_dir(tmp_path)))
    teacher = tiny_causal_lm(tmp_path / "teacher", tokenizer_dir(tmp_path), tokens + 6, seed=1, n_embd=48, initializer_range=0.2)
    recipe = load_recipe(
        run_recipe(
            tmp_path,
            teacher={"checkpoint": str(teacher)},
            student={"config": tiny_gpt2(n_embd=16, n_layer=1)},
            distillation={"kind": "basic", "kd_loss": "jsd", "jsd_beta": 0.3, "temperature": 1.0, "hard_label_weight": 0.5},
        )
    )
    run = build_run(recipe, tmp_path / "probe")
    assert "KD jsd (β 0.3) × 1.0 (constant), temperature 1.0 (constant)" in run.distiller.describe_losses()
    batch = one_batch(run, 8)
    distiller = run.distiller
    distiller.total_steps, distiller.current_step = 1, 0
    distiller.eval()  # no dropout: the parts are recomputed below
    parts = distiller.compute_loss(batch)
    assert parts["loss"].item() == pytest.approx(parts["kd"].item() + 0.5 * parts["hard_label"].item(), rel=1e-6)
    with torch.no_grad():
        student = distiller.student_features(batch, with_labels=False).logits
        teacher_logits = distiller.teacher_features(batch).logits
    assert teacher_logits.shape[-1] == tokens + 6 and student.shape[-1] == tokens
    expected = plain_loss("jsd", student, dense_teacher(teacher_logits[..., :tokens]), 1.0, run.task.kd_mask(batch)).item()
    assert parts["kd"].item() == pytest.approx(expected, rel=1e-5)
    losses = losses_on_repeated_batch(run, steps=20, learning_rate=1e-2)
    assert losses[-1] < 0.6 * losses[0], losses
