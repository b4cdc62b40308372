"""Golden values for every KD and match loss.

Expected values come from numbers worked out by hand or from plain-Python loop implementations
of the DESIGN §5 formulas written here — never from the functions under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli import cli
from brewer_cli.build import check_names
from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.features import AttentionInputs
from brewer_cli.losses import (
    KD_LOSSES,
    MATCH_LOSSES,
    SOFTMAX_KD_LOSSES,
    MatchLoss,
    attention_scores_from_inputs,
    kd_loss,
    probability_shift,
)
from brewer_cli.recipe import load_recipe
from tests.conftest import distill_recipe, save_tiny_model, write_recipe

TOLERANCE = dict(rel=1e-5, abs=1e-6)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed))


# ───────────────────────────────────── plain-Python references ─────────────────────────────────────


def softmax_list(values: list[float]) -> list[float]:
    top = max(values)
    exponentials = [math.exp(v - top) for v in values]
    total = sum(exponentials)
    return [e / total for e in exponentials]


def cross_entropy_list(student: list[float], teacher: list[float]) -> float:
    teacher_probabilities = softmax_list(teacher)
    student_probabilities = softmax_list(student)
    return -sum(p * math.log(q) for p, q in zip(teacher_probabilities, student_probabilities))


def kl_list(student: list[float], teacher: list[float]) -> float:
    teacher_probabilities = softmax_list(teacher)
    student_probabilities = softmax_list(student)
    return sum(p * (math.log(p) - math.log(q)) for p, q in zip(teacher_probabilities, student_probabilities))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a: list[float]) -> float:
    return math.sqrt(dot(a, a))


def valid_tokens(mask: torch.Tensor | None, batch: int, length: int) -> list[list[bool]]:
    if mask is None:
        return [[True] * length for _ in range(batch)]
    return [[bool(v) for v in row] for row in mask.tolist()]


MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
MASKS = [None, MASK]
MASK_IDS = ["no-mask", "padding-mask"]


# ───────────────────────────────────────────── KD losses ───────────────────────────────────────────


def test_kd_losses_by_hand() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # p_T = (3/4, 1/4), student uniform: CE = ln 2; KL = ln 2 − H(p_T); MSE = (ln 3)² / 2.
    assert KD_LOSSES.get("ce")(student, teacher, 1.0).item() == pytest.approx(math.log(2), **TOLERANCE)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert KD_LOSSES.get("kl")(student, teacher, 1.0).item() == pytest.approx(math.log(2) - entropy, **TOLERANCE)
    assert KD_LOSSES.get("mse")(student, teacher, 1.0).item() == pytest.approx(math.log(3) ** 2 / 2, **TOLERANCE)
    # τ = 2: the teacher is softer, the student still uniform → CE stays ln 2; MSE shrinks by τ².
    assert KD_LOSSES.get("ce")(student, teacher, 2.0).item() == pytest.approx(math.log(2), **TOLERANCE)
    assert KD_LOSSES.get("mse")(student, teacher, 2.0).item() == pytest.approx(math.log(3) ** 2 / 8, **TOLERANCE)
    assert kd_loss("ce", student, teacher, 2.0, temperature_squared=True).item() == pytest.approx(4 * math.log(2), **TOLERANCE)
    assert kd_loss("mse", student, teacher, 2.0, temperature_squared=True).item() == pytest.approx(
        math.log(3) ** 2 / 2, **TOLERANCE
    )


@pytest.mark.parametrize("name", ["ce", "kl", "mse"])
def test_kd_sequence_logits_with_per_row_temperature(name: str) -> None:
    student, teacher = random(3, 5, seed=1), random(3, 5, seed=2)
    temperature = torch.tensor([1.0, 2.0, 4.0])
    rows = []
    for s_row, t_row, tau in zip(student.tolist(), teacher.tolist(), temperature.tolist()):
        s_scaled, t_scaled = [v / tau for v in s_row], [v / tau for v in t_row]
        if name == "ce":
            rows.append(cross_entropy_list(s_scaled, t_scaled))
        elif name == "kl":
            rows.append(kl_list(s_scaled, t_scaled))
        else:
            rows.append(sum((a - b) ** 2 for a, b in zip(s_scaled, t_scaled)) / len(s_scaled))
    expected = sum(rows) / len(rows)
    expected_squared = sum(r * tau**2 for r, tau in zip(rows, temperature.tolist())) / len(rows)
    assert KD_LOSSES.get(name)(student, teacher, temperature).item() == pytest.approx(expected, **TOLERANCE)
    assert kd_loss(name, student, teacher, temperature).item() == pytest.approx(expected, **TOLERANCE)
    squared = kd_loss(name, student, teacher, temperature, temperature_squared=True).item()
    assert squared == pytest.approx(expected_squared, **TOLERANCE)


@pytest.mark.parametrize("name", ["ce", "kl", "mse"])
@pytest.mark.parametrize("temperature_shape", ["float", "per-sequence", "per-token"])
def test_kd_token_logits_respect_mask(name: str, temperature_shape: str) -> None:
    student, teacher = random(2, 4, 3, seed=3), random(2, 4, 3, seed=4)
    per_token = [[1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5]]
    if temperature_shape == "float":
        temperature, taus = 2.0, [[2.0] * 4, [2.0] * 4]
    elif temperature_shape == "per-sequence":
        temperature, taus = torch.tensor([2.0, 3.0]), [[2.0] * 4, [3.0] * 4]
    else:
        temperature, taus = torch.tensor(per_token), per_token
    total, total_squared, count = 0.0, 0.0, 0
    for b in range(2):
        for position in range(4):
            if not MASK[b, position]:
                continue
            tau = taus[b][position]
            s_scaled = [v / tau for v in student[b, position].tolist()]
            t_scaled = [v / tau for v in teacher[b, position].tolist()]
            if name == "ce":
                value = cross_entropy_list(s_scaled, t_scaled)
            elif name == "kl":
                value = kl_list(s_scaled, t_scaled)
            else:
                value = sum((a - c) ** 2 for a, c in zip(s_scaled, t_scaled)) / 3
            total, total_squared, count = total + value, total_squared + value * tau**2, count + 1
    assert kd_loss(name, student, teacher, temperature, MASK).item() == pytest.approx(total / count, **TOLERANCE)
    squared = kd_loss(name, student, teacher, temperature, MASK, temperature_squared=True).item()
    assert squared == pytest.approx(total_squared / count, **TOLERANCE)
    # Padding never counts: garbage at masked positions changes nothing.
    noisy_student = student.clone()
    noisy_student[1, 2:] = 1e4
    assert kd_loss(name, noisy_student, teacher, temperature, MASK).item() == pytest.approx(total / count, **TOLERANCE)


def test_kd_qa_heads_are_summed_and_padding_positions_excluded() -> None:
    start_student, start_teacher = random(2, 4, seed=5), random(2, 4, seed=6)
    end_student, end_teacher = random(2, 4, seed=7), random(2, 4, seed=8)
    expected = 0.0
    for student, teacher in ((start_student, start_teacher), (end_student, end_teacher)):
        rows = []
        for b in range(2):
            valid = [p for p in range(4) if MASK[b, p]]
            rows.append(cross_entropy_list([student[b, p].item() / 2 for p in valid], [teacher[b, p].item() / 2 for p in valid]))
        expected += sum(rows) / 2
    loss = kd_loss("ce", (start_student, end_student), (start_teacher, end_teacher), 2.0, MASK)
    assert loss.item() == pytest.approx(expected, **TOLERANCE)
    # One temperature tensor per head is accepted (schedules compute them per head).
    per_head = kd_loss("ce", (start_student, end_student), (start_teacher, end_teacher), (torch.full((2,), 2.0), 2.0), MASK)
    assert per_head.item() == pytest.approx(expected, **TOLERANCE)
    without_mask = kd_loss("kl", (start_student, end_student), (start_teacher, end_teacher), 1.0)
    reference = (
        sum(
            kl_list(s.tolist(), t.tolist())
            for head_s, head_t in ((start_student, start_teacher), (end_student, end_teacher))
            for s, t in zip(head_s, head_t)
        )
        / 2
    )
    assert without_mask.item() == pytest.approx(reference, **TOLERANCE)


def test_kd_zero_when_equal_gradient_and_fp32() -> None:
    logits = random(3, 4, seed=9)
    assert KD_LOSSES.get("kl")(logits, logits, 3.0).item() == 0.0
    assert KD_LOSSES.get("mse")(logits, logits, 3.0).item() == 0.0
    student = random(3, 4, seed=10).to(torch.bfloat16).requires_grad_()
    loss = kd_loss("ce", student, logits.to(torch.bfloat16), 2.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_errors() -> None:
    with pytest.raises(BrewerError, match="unknown KD loss 'kll'.*did you mean"):
        kd_loss("kll", random(2, 3), random(2, 3), 1.0)
    with pytest.raises(ValueError, match="does not fit logits"):
        kd_loss("ce", random(2, 3), random(2, 3), 1.0, torch.ones(2, 5))
    with pytest.raises(ValueError, match="single tensor"):
        kd_loss("ce", random(2, 3), random(2, 3), (1.0, 2.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        kd_loss("ce", random(2, 3), random(2, 3), torch.ones(3))


def test_probability_shift() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0], [0.0, 1.0, 3.0], [4.0, 0.0, 1.0]])
    shifted = probability_shift(logits, torch.tensor([0, 2, -100]))
    # Row 0: arg-max 1 swapped with gold 0; row 1: gold is the arg-max; row 2: ignored.
    assert shifted.tolist() == [[5.0, 1.0, 2.0], [0.0, 1.0, 3.0], [4.0, 0.0, 1.0]]
    assert logits.tolist()[0] == [1.0, 5.0, 2.0]  # the input is not modified

    tokens = torch.tensor([[[3.0, 1.0], [0.0, 2.0]], [[1.0, 0.5], [7.0, 8.0]]])
    shifted_tokens = probability_shift(tokens, torch.tensor([[1, -100], [0, 0]]))
    assert shifted_tokens.tolist() == [[[1.0, 3.0], [0.0, 2.0]], [[1.0, 0.5], [8.0, 7.0]]]

    start, end = probability_shift((logits[:2], logits[1:]), (torch.tensor([0, 0]), torch.tensor([-100, 1])))
    assert start.tolist() == [[5.0, 1.0, 2.0], [3.0, 1.0, 0.0]]
    assert end.tolist() == [[0.0, 1.0, 3.0], [0.0, 4.0, 1.0]]

    with pytest.raises(ValueError, match="regression"):
        probability_shift(logits, torch.tensor([0.5, 1.0, 2.0]))


def test_softmax_kd_losses_learn_nothing_from_one_logit() -> None:
    # Why validation refuses them for regression: the softmax over one logit is the constant 1.
    student = random(4, 1, seed=11).requires_grad_()
    teacher = 5 * random(4, 1, seed=12)
    for name in SOFTMAX_KD_LOSSES:
        loss = KD_LOSSES.get(name)(student, teacher, 2.0)
        (gradient,) = torch.autograd.grad(loss, student)
        assert abs(loss.item()) < 1e-6 and gradient.abs().max().item() == 0.0, name
    assert KD_LOSSES.get("mse")(student, teacher, 2.0).item() > 0


def _regression_recipe(tmp_path, teacher: Path, distillation: dict) -> Path:
    raw = distill_recipe(teacher, task={"kind": "sequence_classification", "num_labels": 1})
    raw["distillation"] = {"kind": "basic", **distillation}
    return write_recipe(tmp_path, raw)


def _one_logit_problem(path: Path, name: str, field: str = "distillation.kd_loss", task: str = "task") -> str:
    return (
        f"{path}: {field}: `{name}` compares softmax distributions over the classes, but {task}.num_labels is 1 "
        f"(regression), and a softmax over one logit is always 1: the loss would be constant with zero gradient, "
        f"so the student would learn nothing from the teacher — set `distillation.kd_loss: mse`, which compares "
        f"the logits themselves"
    )


@pytest.mark.parametrize("distillation", [{}, {"kd_loss": "ce"}, {"kd_loss": "kl", "hard_label_weight": 0.5}])
def test_softmax_kd_loss_refused_for_regression(tmp_path, tokenizer_dir, distillation: dict) -> None:
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir, labels=["score"])
    path = _regression_recipe(tmp_path, teacher, distillation)
    result = CliRunner().invoke(cli.app, ["distill", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    expected = _one_logit_problem(path, distillation.get("kd_loss", "ce"))  # ce is the default
    assert " ".join(result.output.split()) == " ".join(f"error (recipe): recipe problem: {expected}".split())


def test_regression_accepts_mse_and_logit_kd_switched_off(tmp_path) -> None:
    teacher = tmp_path / "teacher"  # check_names reads no weights
    check_names(load_recipe(_regression_recipe(tmp_path, teacher, {"kd_loss": "mse"})))
    # kd_weight 0 skips logit KD entirely, so the (default) softmax loss is never computed.
    check_names(load_recipe(_regression_recipe(tmp_path, teacher, {"kd_weight": 0, "hard_label_weight": 1.0})))


def test_softmax_kd_loss_refused_for_a_regression_stage(tmp_path) -> None:
    raw = distill_recipe(tmp_path / "teacher", task={"kind": "sequence_classification", "num_labels": 1})
    del raw["distillation"]
    raw["stages"] = [
        {
            "name": "intermediate",
            "distillation": {"kind": "general", "kd_weight": 0, "matches": [{"uniform": True, "loss": "hidden_mse"}]},
        },
        {"name": "prediction", "distillation": {"kind": "basic", "kd_loss": "kl"}},
    ]
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as raised:
        check_names(load_recipe(path))
    assert raised.value.problems == [_one_logit_problem(path, "kl", "stages.1.distillation.kd_loss")]


def test_softmax_kd_loss_refused_for_a_regression_task_of_a_multi_task_recipe(tmp_path) -> None:
    single = distill_recipe(tmp_path / "teacher")
    entry = {"data": single["data"], "teacher": single["teacher"]}
    raw = {
        "name": "tiny-mt",
        "tasks": {
            "sentiment": {**entry, "task": {"kind": "sequence_classification", "num_labels": 2}},
            "scores": {**entry, "task": {"kind": "sequence_classification", "num_labels": 1}},
        },
        "student": single["student"],
        "distillation": {"kind": "multi_task"},
    }
    path = write_recipe(tmp_path, raw)
    with pytest.raises(RecipeError) as raised:
        check_names(load_recipe(path))
    assert raised.value.problems == [_one_logit_problem(path, "ce", task="tasks.scores.task")]


# ───────────────────────────────────────── hidden-state matches ────────────────────────────────────


def test_hidden_losses_by_hand() -> None:
    student = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 5.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # Squared errors over valid tokens: (2² + 4²) + 3² = 29, n_valid · d = 4.
    assert MATCH_LOSSES.get("hidden_mse").fn(student, teacher, mask).item() == pytest.approx(29 / 4, **TOLERANCE)
    assert MATCH_LOSSES.get("tinybert_hidden").fn(student, teacher, mask).item() == pytest.approx(29 / 4, **TOLERANCE)
    # cos: token 0 → 3/5, token 1 → 1; mean of (1 − cos) over valid tokens = 0.2.
    assert MATCH_LOSSES.get("cos").fn(student, teacher, mask).item() == pytest.approx(0.2, **TOLERANCE)
    # pkd: (0.6, 0.8) − (1, 0) → 0.16 + 0.64.
    assert MATCH_LOSSES.get("pkd").fn(student, teacher, mask).item() == pytest.approx(0.8, **TOLERANCE)


def hidden_mse_reference(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    valid = valid_tokens(mask, student.shape[0], student.shape[1])
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for i in range(student.shape[1]):
            if valid[b][i]:
                total += sum((s - t) ** 2 for s, t in zip(student[b, i].tolist(), teacher[b, i].tolist()))
                count += 1
    return total / (count * student.shape[2])


def cos_reference(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    valid = valid_tokens(mask, student.shape[0], student.shape[1])
    values = [
        1 - dot(student[b, i].tolist(), teacher[b, i].tolist()) / (norm(student[b, i].tolist()) * norm(teacher[b, i].tolist()))
        for b in range(student.shape[0])
        for i in range(student.shape[1])
        if valid[b][i]
    ]
    return sum(values) / len(values)


def pkd_reference(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    values = []
    for b in range(student.shape[0]):
        s, t = student[b, 0].tolist(), teacher[b, 0].tolist()
        values.append(sum((x / norm(s) - y / norm(t)) ** 2 for x, y in zip(s, t)))
    return sum(values) / len(values)


def unit_channels(features: torch.Tensor, positions: list[int]) -> list[list[float]]:
    """Each channel of one example (L, d) as a vector over the given positions, unit length."""
    result = []
    for c in range(features.shape[1]):
        vector = [features[i, c].item() for i in positions]
        result.append([v / norm(vector) for v in vector])
    return result


def nst_kernel_reference(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    """Huang & Wang's MMD² with k(x, y) = (xᵀy)², samples = channels normalized over valid tokens."""
    valid = valid_tokens(mask, student.shape[0], student.shape[1])
    per_example = []
    for b in range(student.shape[0]):
        positions = [i for i in range(student.shape[1]) if valid[b][i]]
        s, t = unit_channels(student[b], positions), unit_channels(teacher[b], positions)

        def mean_kernel(x: list[list[float]], y: list[list[float]]) -> float:
            return sum(dot(a, c) ** 2 for a in x for c in y) / (len(x) * len(y))

        per_example.append(mean_kernel(s, s) + mean_kernel(t, t) - 2 * mean_kernel(s, t))
    return sum(per_example) / len(per_example)


SINGLE_HIDDEN = {
    "hidden_mse": hidden_mse_reference,
    "tinybert_hidden": hidden_mse_reference,
    "cos": cos_reference,
    "pkd": pkd_reference,
    "nst_kernel": nst_kernel_reference,
}


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("name", sorted(SINGLE_HIDDEN))
def test_single_hidden_losses_against_loops(name: str, mask: torch.Tensor | None) -> None:
    student, teacher = random(2, 4, 6, seed=11), random(2, 4, 6, seed=12)
    expected = SINGLE_HIDDEN[name](student, teacher, mask)
    assert MATCH_LOSSES.get(name).fn(student, teacher, mask).item() == pytest.approx(expected, **TOLERANCE)


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
def test_nst_kernel_with_different_widths(mask: torch.Tensor | None) -> None:
    student, teacher = random(2, 4, 3, seed=13), random(2, 4, 5, seed=14)
    expected = nst_kernel_reference(student, teacher, mask)
    assert expected > 0
    assert MATCH_LOSSES.get("nst_kernel").fn(student, teacher, mask).item() == pytest.approx(expected, **TOLERANCE)


def fsp_reference(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor], mask) -> float:
    first, second = student
    valid = valid_tokens(mask, first.shape[0], first.shape[1])

    def gram(x0: torch.Tensor, x1: torch.Tensor, b: int) -> list[list[float]]:
        positions = [i for i in range(x0.shape[1]) if valid[b][i]]
        return [
            [sum(x0[b, i, p].item() * x1[b, i, q].item() for i in positions) / len(positions) for q in range(x1.shape[2])]
            for p in range(x0.shape[2])
        ]

    total, count = 0.0, 0
    for b in range(first.shape[0]):
        gram_student, gram_teacher = gram(*student, b), gram(*teacher, b)
        for row_s, row_t in zip(gram_student, gram_teacher):
            for s, t in zip(row_s, row_t):
                total, count = total + (s - t) ** 2, count + 1
    return total / count


def nst_reference(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor], mask) -> float:
    first = student[0]
    valid = valid_tokens(mask, first.shape[0], first.shape[1])

    def relation(x0: torch.Tensor, x1: torch.Tensor, b: int, i: int, j: int) -> float:
        return dot(x0[b, i].tolist(), x1[b, j].tolist()) / x1.shape[2]

    total, count = 0.0, 0
    for b in range(first.shape[0]):
        for i in range(first.shape[1]):
            for j in range(first.shape[1]):
                if valid[b][i] and valid[b][j]:
                    total += (relation(*student, b, i, j) - relation(*teacher, b, i, j)) ** 2
                    count += 1
    return total / count


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
def test_pair_losses_against_loops(mask: torch.Tensor | None) -> None:
    student = (random(2, 4, 3, seed=15), random(2, 4, 3, seed=16))
    teacher = (random(2, 4, 3, seed=17), random(2, 4, 3, seed=18))
    assert MATCH_LOSSES.get("fsp").fn(student, teacher, mask).item() == pytest.approx(
        fsp_reference(student, teacher, mask), **TOLERANCE
    )
    assert MATCH_LOSSES.get("gram").fn is MATCH_LOSSES.get("fsp").fn
    assert MATCH_LOSSES.get("nst").fn(student, teacher, mask).item() == pytest.approx(
        nst_reference(student, teacher, mask), **TOLERANCE
    )
    assert MATCH_LOSSES.get("mmd").fn is MATCH_LOSSES.get("nst").fn
    # nst compares L×L relations, so the widths may differ.
    wide_teacher = (random(2, 4, 5, seed=19), random(2, 4, 5, seed=20))
    expected = nst_reference(student, wide_teacher, mask)
    assert MATCH_LOSSES.get("nst").fn(student, wide_teacher, mask).item() == pytest.approx(expected, **TOLERANCE)


def test_fsp_by_hand() -> None:
    # One example, two valid tokens (the third is padding), width 1: G = (x0·x1 summed) / 2.
    student = (torch.tensor([[[1.0], [2.0], [50.0]]]), torch.tensor([[[3.0], [4.0], [50.0]]]))
    teacher = (torch.tensor([[[1.0], [1.0], [0.0]]]), torch.tensor([[[1.0], [1.0], [0.0]]]))
    # G_S = (3 + 8) / 2 = 5.5, G_T = 1 → (4.5)².
    assert MATCH_LOSSES.get("fsp").fn(student, teacher, torch.tensor([[1, 1, 0]])).item() == pytest.approx(20.25, **TOLERANCE)


# ───────────────────────────────────────────── attention matches ───────────────────────────────────


def attention_reference(name: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> float:
    batch, heads, length = student.shape[0], student.shape[1], student.shape[2]
    valid = valid_tokens(mask, batch, length)
    s, t = student.tolist(), teacher.tolist()
    if name in ("attention_mse_sum", "attention_ce_mean"):
        reduce = sum if name == "attention_mse_sum" else (lambda values: sum(values) / len(values))

        def reduced(x: list, head_count: int) -> list:
            return [
                [[[reduce([x[b][h][i][j] for h in range(head_count)]) for j in range(length)] for i in range(length)]]
                for b in range(batch)
            ]

        s, t, heads = reduced(s, student.shape[1]), reduced(t, teacher.shape[1]), 1
    total, count = 0.0, 0
    for b in range(batch):
        keys = [j for j in range(length) if valid[b][j]]
        for h in range(heads):
            for i in range(length):
                if name in ("attention_mse", "attention_mse_sum", "tinybert_attention"):
                    # tinybert_attention too divides by the valid (query, key) pairs, not by all
                    # B·h·L·L entries: a divisor that grows with the padding made it depend on it.
                    for j in range(length):
                        if valid[b][i] and valid[b][j]:
                            total, count = total + (s[b][h][i][j] - t[b][h][i][j]) ** 2, count + 1
                elif valid[b][i]:
                    total += cross_entropy_list([s[b][h][i][j] for j in keys], [t[b][h][i][j] for j in keys])
                    count += 1
    return total / count


ATTENTION_LOSSES = ["attention_mse", "attention_ce", "attention_mse_sum", "attention_ce_mean", "tinybert_attention"]


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("name", ATTENTION_LOSSES)
def test_attention_losses_against_loops(name: str, mask: torch.Tensor | None) -> None:
    student, teacher = 3 * random(2, 2, 4, 4, seed=21), 3 * random(2, 2, 4, 4, seed=22)
    expected = attention_reference(name, student, teacher, mask)
    assert MATCH_LOSSES.get(name).fn(student, teacher, mask).item() == pytest.approx(expected, **TOLERANCE)


@pytest.mark.parametrize("name", ["attention_mse_sum", "attention_ce_mean"])
def test_head_reduced_attention_losses_accept_different_head_counts(name: str) -> None:
    student, teacher = random(2, 2, 4, 4, seed=23), random(2, 3, 4, 4, seed=24)
    assert not MATCH_LOSSES.get(name).needs_equal_heads
    expected = attention_reference(name, student, teacher, MASK)
    assert MATCH_LOSSES.get(name).fn(student, teacher, MASK).item() == pytest.approx(expected, **TOLERANCE)


def test_tinybert_attention_by_hand() -> None:
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    teacher = torch.zeros(1, 1, 2, 2)
    # Second token padding: only (0, 0) survives → 1² over the one valid pair (it was 0.25, over
    # all 4 entries, before the divisor stopped counting padding).
    assert MATCH_LOSSES.get("tinybert_attention").fn(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    assert MATCH_LOSSES.get("attention_mse").fn(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    # Without padding every entry is a valid pair: (1 + 4 + 9 + 16) / 4.
    assert MATCH_LOSSES.get("tinybert_attention").fn(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx(7.5)


def test_per_head_attention_losses_reject_different_head_counts() -> None:
    with pytest.raises(ValueError, match="equal head counts"):
        MATCH_LOSSES.get("attention_mse").fn(random(1, 2, 3, 3), random(1, 4, 3, 3), None)


# ───────────────────────────────────────────── MiniLM losses ───────────────────────────────────────


def split_head(x: torch.Tensor, b: int, i: int, head: int, heads: int) -> list[float]:
    width = x.shape[2] // heads
    return x[b, i, head * width : (head + 1) * width].tolist()


def relation_kl_reference(
    student: tuple[torch.Tensor, torch.Tensor, int],
    teacher: tuple[torch.Tensor, torch.Tensor, int],
    mask: torch.Tensor | None,
) -> float:
    """Mean over heads and valid queries of KL over valid keys; each side (left, right, heads)
    gives scores leftᵢ·rightⱼ/√(d/heads) per head."""
    batch, length = student[0].shape[0], student[0].shape[1]
    heads = student[2]
    valid = valid_tokens(mask, batch, length)

    def scores(side: tuple[torch.Tensor, torch.Tensor, int], b: int, h: int, i: int, keys: list[int]) -> list[float]:
        left, right, side_heads = side
        scale = math.sqrt(left.shape[2] / side_heads)
        return [dot(split_head(left, b, i, h, side_heads), split_head(right, b, j, h, side_heads)) / scale for j in keys]

    total, count = 0.0, 0
    for b in range(batch):
        keys = [j for j in range(length) if valid[b][j]]
        for h in range(heads):
            for i in keys:
                total += kl_list(scores(student, b, h, i, keys), scores(teacher, b, h, i, keys))
                count += 1
    return total / count


def attention_inputs(width: int, heads: int, seed: int) -> AttentionInputs:
    return AttentionInputs(
        query=random(2, 4, width, seed=seed),
        key=random(2, 4, width, seed=seed + 1),
        value=random(2, 4, width, seed=seed + 2),
        num_heads=heads,
    )


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
def test_minilm_losses_against_loops(mask: torch.Tensor | None) -> None:
    # Equal head counts, different widths (MiniLM compares L×L distributions).
    student, teacher = attention_inputs(4, 2, seed=30), attention_inputs(6, 2, seed=40)
    expected_attention = relation_kl_reference((student.query, student.key, 2), (teacher.query, teacher.key, 2), mask)
    assert MATCH_LOSSES.get("minilm_attention").fn(student, teacher, mask).item() == pytest.approx(
        expected_attention, **TOLERANCE
    )
    expected_value = relation_kl_reference((student.value, student.value, 2), (teacher.value, teacher.value, 2), mask)
    assert MATCH_LOSSES.get("minilm_value_relation").fn(student, teacher, mask).item() == pytest.approx(
        expected_value, **TOLERANCE
    )


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
def test_minilmv2_relations_with_different_head_counts(mask: torch.Tensor | None) -> None:
    # Student 1 head of width 4, teacher 3 heads of width 6: re-split both into 2 relation heads.
    student, teacher = attention_inputs(4, 1, seed=50), attention_inputs(6, 3, seed=60)
    for name, field in (("relation_qq", "query"), ("relation_kk", "key"), ("relation_vv", "value")):
        s, t = getattr(student, field), getattr(teacher, field)
        expected = relation_kl_reference((s, s, 2), (t, t, 2), mask)
        assert MATCH_LOSSES.get(name).fn(student, teacher, mask, relation_heads=2).item() == pytest.approx(expected, **TOLERANCE)
    # Default: the teacher's head count (3), which divides 6 but not 4.
    with pytest.raises(ValueError, match="student's width 4 is not divisible by relation_heads=3"):
        MATCH_LOSSES.get("relation_qq").fn(student, teacher, mask)
    wide_student = attention_inputs(9, 1, seed=70)
    expected = relation_kl_reference((wide_student.key, wide_student.key, 3), (teacher.key, teacher.key, 3), mask)
    assert MATCH_LOSSES.get("relation_kk").fn(wide_student, teacher, mask).item() == pytest.approx(expected, **TOLERANCE)


def test_attention_scores_from_inputs() -> None:
    inputs = attention_inputs(6, 3, seed=80)
    scores = attention_scores_from_inputs(inputs)
    assert scores.shape == (2, 3, 4, 4)
    expected = dot(split_head(inputs.query, 1, 2, 1, 3), split_head(inputs.key, 1, 3, 1, 3)) / math.sqrt(2)
    assert scores[1, 1, 2, 3].item() == pytest.approx(expected, **TOLERANCE)


def test_minilm_errors() -> None:
    student, teacher = attention_inputs(4, 2, seed=90), attention_inputs(6, 3, seed=91)
    with pytest.raises(ValueError, match="2 heads, teacher 3"):
        MATCH_LOSSES.get("minilm_attention").fn(student, teacher, None)
    no_value = AttentionInputs(query=teacher.query, key=teacher.key, value=None, num_heads=3)
    with pytest.raises(ValueError, match="value projections"):
        MATCH_LOSSES.get("relation_vv").fn(no_value, no_value, None)


# ───────────────────────────────────────── properties of every match ───────────────────────────────


def match_inputs(entry: MatchLoss, requires_grad: bool) -> tuple[object, object, list[torch.Tensor]]:
    """Student and teacher inputs for any match loss (equal features), and the student leaves."""
    if entry.feature == "attention_inputs":
        teacher = attention_inputs(6, 2, seed=100)
        leaves = [
            teacher.query.clone().requires_grad_(requires_grad),
            teacher.key.clone().requires_grad_(requires_grad),
            teacher.value.clone().requires_grad_(requires_grad),
        ]
        return AttentionInputs(*leaves, num_heads=2), teacher, leaves
    shape = (2, 2, 4, 4) if entry.feature == "attention" else (2, 4, 6)
    if entry.pair:
        teacher_pair = (random(*shape, seed=101), random(*shape, seed=102))
        leaves = [x.clone().requires_grad_(requires_grad) for x in teacher_pair]
        return tuple(leaves), teacher_pair, leaves
    teacher = random(*shape, seed=103)
    leaf = teacher.clone().requires_grad_(requires_grad)
    return leaf, teacher, [leaf]


CROSS_ENTROPY_LOSSES = {"attention_ce", "attention_ce_mean"}


@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("name", MATCH_LOSSES.names())
def test_match_zero_when_equal(name: str, mask: torch.Tensor | None) -> None:
    entry = MATCH_LOSSES.get(name)
    student, teacher, leaves = match_inputs(entry, requires_grad=True)
    loss = entry.fn(student, teacher, mask)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    if name in CROSS_ENTROPY_LOSSES:
        # Cross-entropy of equal distributions is the teacher's entropy; the gradient is 0.
        loss.backward()
        assert all(leaf.grad.abs().max().item() < 1e-6 for leaf in leaves)
    else:
        assert loss.item() == 0.0


@pytest.mark.parametrize("name", MATCH_LOSSES.names())
def test_match_gradient_reaches_student(name: str) -> None:
    entry = MATCH_LOSSES.get(name)
    student, teacher, leaves = match_inputs(entry, requires_grad=True)
    with torch.no_grad():
        for leaf in leaves:
            leaf.add_(0.5 * torch.randn(leaf.shape, generator=generator(7)))
    loss = entry.fn(student, teacher, MASK)
    assert loss.item() > 0
    loss.backward()
    assert any(leaf.grad is not None and leaf.grad.abs().sum().item() > 0 for leaf in leaves)
    # Padding positions receive no gradient from token-level hidden losses.
    if entry.feature == "hidden" and not entry.pair and name != "pkd":
        assert leaves[0].grad[1, 2:].abs().max().item() == 0.0


def test_match_metadata() -> None:
    assert MATCH_LOSSES.get("tinybert_hidden").shared_projection
    assert not MATCH_LOSSES.get("hidden_mse").shared_projection
    for name in ("relation_qq", "relation_kk", "relation_vv"):
        entry = MATCH_LOSSES.get(name)
        assert entry.takes_relation_heads and not entry.needs_equal_heads and entry.feature == "attention_inputs"
    for name in ("hidden_mse", "cos", "pkd", "fsp", "tinybert_hidden"):
        assert MATCH_LOSSES.get(name).needs_equal_width
    for name in ("nst", "nst_kernel", "minilm_attention", "relation_qq"):
        assert not MATCH_LOSSES.get(name).needs_equal_width
    assert MATCH_LOSSES.get("fsp").pair and MATCH_LOSSES.get("nst").pair and not MATCH_LOSSES.get("nst_kernel").pair
    assert MATCH_LOSSES.get("minilm_attention").needs_equal_heads and MATCH_LOSSES.get("attention_ce").needs_equal_heads
    for entry in MATCH_LOSSES:
        assert entry.value.feature in {"hidden", "attention", "attention_inputs"}
        assert entry.value.formula and "\n" not in entry.value.formula and "\n" not in entry.description
    with pytest.raises(ValueError, match="projection must map"):
        MATCH_LOSSES.get("hidden_mse").fn(random(1, 2, 3), random(1, 2, 4), None)


@pytest.mark.parametrize("name", MATCH_LOSSES.names())
def test_match_stays_fp32_under_autocast_with_inference_mode_teacher(name: str) -> None:
    """The training loop computes losses inside autocast with teachers run under inference_mode."""
    entry = MATCH_LOSSES.get(name)
    student, teacher, leaves = match_inputs(entry, requires_grad=True)
    with torch.no_grad():
        for leaf in leaves:
            leaf.add_(0.5 * torch.randn(leaf.shape, generator=generator(8)))
    reference = entry.fn(student, teacher, MASK).item()
    with torch.inference_mode():
        inference_teacher = (
            AttentionInputs(teacher.query.clone(), teacher.key.clone(), teacher.value.clone(), teacher.num_heads)
            if isinstance(teacher, AttentionInputs)
            else tuple(x.clone() for x in teacher)
            if isinstance(teacher, tuple)
            else teacher.clone()
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = entry.fn(student, inference_teacher, MASK)
    assert loss.dtype == torch.float32
    # bf16 matmuls would miss by ~1e-2 relative.
    assert loss.item() == pytest.approx(reference, rel=1e-6, abs=1e-7)
    loss.backward()
    assert any(leaf.grad is not None and leaf.grad.abs().sum().item() > 0 for leaf in leaves)


def test_kd_stays_fp32_under_autocast_with_inference_mode_teacher() -> None:
    student = random(2, 4, 3, seed=110).requires_grad_()
    with torch.inference_mode():
        teacher = random(2, 4, 3, seed=111)
    reference = kd_loss("kl", student, teacher.clone(), 2.0, MASK, temperature_squared=True).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kd_loss("kl", student, teacher, 2.0, MASK, temperature_squared=True)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference, rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum().item() > 0


@pytest.mark.parametrize("name", sorted(name for name in MATCH_LOSSES.names() if MATCH_LOSSES.get(name).token_local))
def test_a_token_local_loss_gives_its_masked_value_on_the_real_tokens_packed(name):
    """What `token_local` declares, and what the general distiller relies on when it packs a
    batch's real tokens (distillers/general.py RealTokens): the same value and gradient."""
    from brewer_cli.distillers.general import RealTokens

    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 4, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    fn = MATCH_LOSSES.get(name).fn
    masked = fn(student, teacher, mask)
    (masked_gradient,) = torch.autograd.grad(masked, student)
    real = RealTokens(mask)
    packed = fn(real.packed(student), real.packed(teacher), None)
    (packed_gradient,) = torch.autograd.grad(packed, student)
    assert real.packed(student).shape == (1, 9, 4)
    assert packed.item() == pytest.approx(masked.item(), rel=1e-6)
    torch.testing.assert_close(packed_gradient, masked_gradient, rtol=1e-5, atol=1e-7)
    assert not packed_gradient[mask == 0].any()
