"""Kind `on_policy` (GKD): λ = 0 is exactly `basic`'s token KD on the same batch; λ = 1 trains on
the student's own samples — prompt kept, completion sampled, prompt and padding masked out of the
loss, which equals the KD loss computed by hand on the sampled batch; the branch draws and samples
are seeded by (seed, step) and leave the global generator alone, so two runs agree and a resumed
run equals an uninterrupted one bit for bit; metrics.jsonl reports the on-policy fraction and the
mean sampled length; the recipe checks."""

from __future__ import annotations

import json

import pytest
import torch

from brewer_cli.build import build_run
from brewer_cli.commands import distill
from brewer_cli.distillers.generation import IGNORED
from brewer_cli.errors import RecipeError
from brewer_cli.losses import kd_kl_divergence
from tests.test_causal_lm import EOS, tiny_gpt2
from tests.test_sequence_kd import assert_same_weights, final_weights, load, policy_recipe, resumed_after_crash
from tests.test_training import one_batch


def on_policy(fraction: float, **settings) -> dict:
    return {
        "kind": "on_policy",
        "kd_loss": "kl",
        "student_data_fraction": fraction,
        "generation": {"max_new_tokens": 5, "temperature": 1.0},
        **settings,
    }


# ============================================================================= recipe checks


def test_refused_for_a_task_other_than_causal_lm(tmp_path):
    raw = policy_recipe(tmp_path, on_policy(0.5))
    raw["task"] = {"kind": "token_classification"}
    with pytest.raises(RecipeError) as error:
        load(tmp_path, raw)
    assert (
        "distillation.kind: kind `on_policy` generates completions with a language model, so it distills task "
        "causal_lm only, not token_classification — set `task.kind: causal_lm`, or use kind basic"
    ) in str(error.value)


def test_defaults_sample_at_temperature_one():
    from brewer_cli.recipe import OnPolicyDistillation

    spec = OnPolicyDistillation(kind="on_policy", generation={"max_new_tokens": 8})
    assert (spec.student_data_fraction, spec.temperature, spec.teacher_cache) == (0.5, 1.0, "off")
    assert (spec.kd_loss, spec.jsd_beta) == ("jsd", 0.5)
    assert (spec.generation.sample, spec.generation.temperature, spec.generation.max_new_tokens) == (True, 1.0, 8)


def test_fraction_outside_zero_one_is_refused(tmp_path):
    with pytest.raises(RecipeError) as error:
        load(tmp_path, policy_recipe(tmp_path, on_policy(1.5)))
    assert "distillation.student_data_fraction" in str(error.value) and "less than or equal to 1" in str(error.value)


def test_trls_lmbda_is_named_by_its_brewer_field(tmp_path):
    with pytest.raises(RecipeError) as error:
        load(tmp_path, policy_recipe(tmp_path, {**on_policy(0.5), "lmbda": 0.5}))
    assert (
        "distillation.lmbda: unknown key — the Trainer's `lmbda` is `distillation.student_data_fraction` (kind on_policy) "
        "in brewer"
    ) in str(error.value)


def test_no_divergence_is_refused(tmp_path):
    recipe = load(tmp_path, policy_recipe(tmp_path, on_policy(0.5, kd_weight=0.0, hard_label_weight=1.0)))
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert error.value.problems == [
        f"{recipe.path}: distillation.kd_weight: on-policy distillation learns from the teacher's scores of the "
        f"student's samples, and kd_weight 0 leaves none — set kd_weight > 0 (e.g. 1), or use kind sequence_kd to "
        f"train on the teacher's own completions",
    ]


# ============================================================================= the loss


@pytest.mark.parametrize("kd_loss", ["kl", "jsd", "reverse_kl"])
def test_lambda_zero_is_basic_token_kd_on_the_same_batch(tmp_path, kd_loss):
    settings = {"kd_loss": kd_loss, "hard_label_weight": 0.5, "jsd_beta": 0.3}
    run = build_run(load(tmp_path, policy_recipe(tmp_path, on_policy(0.0, **settings))), tmp_path / "a")
    basic = {"kind": "basic", "temperature": 1.0, **settings}
    reference = build_run(load(tmp_path, policy_recipe(tmp_path, basic)), tmp_path / "b")
    assert_same_weights(run.student.model.state_dict(), reference.student.model.state_dict())
    batch = one_batch(run, 8)
    for distiller in (run.distiller, reference.distiller):
        distiller.train()
    for step in range(3):
        run.distiller.current_step = reference.distiller.current_step = step
        parts, expected = run.distiller(batch), reference.distiller(batch)
        assert parts.keys() == expected.keys() == {"kd", "hard_label", "loss"}
        for name in parts:
            assert torch.equal(parts[name], expected[name]), name
    assert run.distiller.log_statistics() == {"on_policy_fraction": 0.0}


def test_lambda_one_trains_on_the_students_samples(tmp_path):
    run = build_run(load(tmp_path, policy_recipe(tmp_path, on_policy(1.0, hard_label_weight=0.5))), tmp_path / "runs")
    distiller = run.distiller
    distiller.train()
    batch = one_batch(run, 8)
    sampled = distiller.student_samples(batch, seed=11)
    prompts = batch["prompt_length"].tolist()
    assert sampled["prompt_length"].tolist() == prompts and torch.equal(sampled["index"], batch["index"])
    completions = []
    for row, prompt in enumerate(prompts):
        length = int(sampled["attention_mask"][row].sum())
        ids, labels = sampled["input_ids"][row].tolist(), sampled["labels"][row].tolist()
        assert ids[:prompt] == batch["input_ids"][row, :prompt].tolist()
        completion = ids[prompt:length]
        assert 1 <= len(completion) <= 5 and EOS not in completion[:-1]
        # Labels: the sampled completion only — the prompt and the padding are not counted.
        assert labels == [IGNORED] * prompt + completion + [IGNORED] * (len(ids) - length)
        assert sampled["attention_mask"][row].tolist() == [1] * length + [0] * (len(ids) - length)
        completions.append(completion)
    mask = run.task.kd_mask(sampled)
    assert int(mask.sum()) == sum(len(completion) for completion in completions)
    assert distiller.student_samples(batch, seed=11)["input_ids"].tolist() == sampled["input_ids"].tolist()

    # The loss is KL(teacher ‖ student) over the sampled completion tokens, with no data cross-entropy.
    distiller.current_step = 4
    parts = distiller(batch)
    assert set(parts) == {"kd", "loss"}
    from brewer_cli.distillers.generation import derived_seed

    again = distiller.student_samples(batch, derived_seed(distiller.generation.seed, "sample", 4, 0, 0))
    student = run.student.model(input_ids=again["input_ids"], attention_mask=again["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        teacher = run.teacher.model(input_ids=again["input_ids"], attention_mask=again["attention_mask"]).logits[:, :-1]
    expected = kd_kl_divergence(student, teacher, 1.0, run.task.kd_mask(again))
    assert torch.allclose(parts["loss"], expected, rtol=1e-6, atol=1e-7)
    statistics = distiller.log_statistics()
    assert statistics["on_policy_fraction"] == 1.0 and 1 <= statistics["sampled_length"] <= 5


def test_plain_text_samples_continue_the_first_tokens(tmp_path):
    raw = policy_recipe(tmp_path, on_policy(1.0, generation={"max_new_tokens": 3, "prompt_tokens": 2}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on a mat\nthe dog ran\nhello how are you\n", encoding="utf-8")
    raw["data"] = {"train": {"path": str(corpus)}, "max_length": 8}
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    batch = one_batch(run, 4)
    assert batch["prompt_length"].tolist() == [0] * len(batch["index"])
    sampled = run.distiller.student_samples(batch, seed=3)
    assert sampled["prompt_length"].tolist() == [2] * len(batch["index"])
    assert torch.equal(sampled["input_ids"][:, :2], batch["input_ids"][:, :2])
    assert (sampled["labels"][:, :2] == IGNORED).all() and (sampled["labels"][:, 2] != IGNORED).all()


def test_branch_share_follows_lambda(tmp_path):
    run = build_run(load(tmp_path, policy_recipe(tmp_path, on_policy(0.3))), tmp_path / "runs")
    distiller = run.distiller
    distiller.train()
    batch = one_batch(run, 2)
    for step in range(40):
        distiller.current_step = step
        distiller(batch)
    share = distiller.log_statistics()["on_policy_fraction"]
    assert 0.1 < share < 0.5


def test_loss_goes_down_on_a_repeated_batch(tmp_path):
    run = build_run(load(tmp_path, policy_recipe(tmp_path, on_policy(1.0))), tmp_path / "runs")
    distiller = run.distiller
    distiller.train()
    batch = one_batch(run, 8)
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        distiller.current_step = step
        loss = distiller(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # Each step scores new samples: compare the first and last few steps.
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


# ============================================================================= runs


def test_two_runs_with_one_seed_agree_and_log_the_on_policy_share(tmp_path, quiet_console):
    recipe = load(tmp_path, policy_recipe(tmp_path, on_policy(0.5)), ("training.log_every=1", "training.epochs=4"))
    for name in ("first", "second"):
        distill(recipe, tmp_path / name, console=quiet_console)
    assert_same_weights(final_weights(tmp_path / "first" / "policy"), final_weights(tmp_path / "second" / "policy"))
    lines = [json.loads(line) for line in (tmp_path / "first" / "policy" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "on_policy_fraction" in line]
    assert len(steps) == 12 and {line["on_policy_fraction"] for line in steps} == {0.0, 1.0}
    assert all(1 <= line["sampled_length"] <= 5 for line in steps if line["on_policy_fraction"] == 1.0)
    summary = json.loads((tmp_path / "first" / "policy" / "summary.json").read_text())["on_policy"]
    assert summary["micro_batches"] == 12 and summary["student_data_fraction"] == 0.5
    assert summary["on_policy_fraction"] == sum(line["on_policy_fraction"] for line in steps) / 12


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, quiet_console):
    raw = policy_recipe(tmp_path, on_policy(0.5, hard_label_weight=0.5))
    # With dropout: the student's forward draws from the global generator, which sampling must not shift.
    raw["student"] = {"config": tiny_gpt2(n_embd=16, n_layer=1)}
    raw["training"].update({"epochs": 3, "save_every": 4, "keep_checkpoints": 10, "eval_every": 100})
    full, crashed = resumed_after_crash(load(tmp_path, raw), tmp_path, 4, quiet_console)
    assert_same_weights(final_weights(full), final_weights(crashed))


def test_llama_teacher_and_student(tmp_path):
    """Grouped-query attention, RoPE and a gated MLP: the same sampling, masking and loss."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.test_causal_lm import tokenizer_dir

    llama = {
        "model_type": "llama",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
    }
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(tmp_path))
    settings = {key: value for key, value in llama.items() if key != "model_type"}
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings))
    teacher.save_pretrained(tmp_path / "llama-teacher")
    tokenizer.save_pretrained(tmp_path / "llama-teacher")
    raw = policy_recipe(tmp_path, on_policy(1.0))
    raw["teacher"] = {"checkpoint": str(tmp_path / "llama-teacher")}
    raw["student"] = {"config": {**llama, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}}
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    assert type(run.student.model).__name__ == "LlamaForCausalLM"
    run.distiller.train()
    parts = run.distiller(one_batch(run, 4))
    parts["loss"].backward()
    assert set(parts) == {"kd", "loss"} and torch.isfinite(parts["loss"])
    assert 1 <= run.distiller.log_statistics()["sampled_length"] <= 5


# ============================================================================= issue 19 review


def test_each_process_samples_its_own_stream_but_takes_the_same_branches(tmp_path):
    run = build_run(load(tmp_path, policy_recipe(tmp_path, on_policy(0.5, hard_label_weight=0.5))), tmp_path / "runs")
    distiller = run.distiller
    distiller.train()
    batch = one_batch(run, 8)
    assert distiller.process_index == 0  # one process here

    def steps(process_index: int) -> tuple[list[bool], list[float]]:
        """Per step: whether the batch kept its own completions (it has a hard_label), and the loss."""
        distiller.process_index, distiller._position = process_index, (-1, 0)
        kept, losses = [], []
        for step in range(12):
            distiller.current_step = step
            with torch.no_grad():
                parts = distiller(batch)
            kept.append("hard_label" in parts)
            losses.append(float(parts["loss"]))
        return kept, losses

    (kept_0, losses_0), (kept_1, losses_1) = steps(0), steps(1)
    assert kept_0 == kept_1 and True in kept_0 and False in kept_0  # the branch draw: the same on every process
    sampled = [step for step, kept in enumerate(kept_0) if not kept]
    for step in range(12):
        # Kept batches are the same data; sampled ones are other samples on process 1.
        assert (losses_0[step] == losses_1[step]) == (step not in sampled), step


def test_hard_label_is_averaged_over_the_micro_batches_that_have_it(tmp_path, quiet_console):
    """A sampled micro-batch has no hard_label (a student's own sample is no target): the logged
    hard_label is the mean over the micro-batches that kept their completions, not over all."""
    from brewer_cli.commands import execute

    raw = policy_recipe(tmp_path, on_policy(0.5, hard_label_weight=0.5))
    raw["training"].update({"epochs": 4, "batch_size": 2, "gradient_accumulation": 2, "log_every": 1})
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    recorded: list[dict[str, float]] = []
    compute_loss = run.distiller.compute_loss

    def recording(batch):
        parts = compute_loss(batch)
        if run.distiller.training:
            recorded.append({name: float(value.detach()) for name, value in parts.items()})
        return parts

    run.distiller.compute_loss = recording
    execute(run, resume=False, console=quiet_console)
    lines = [json.loads(line) for line in (tmp_path / "runs" / "policy" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "on_policy_fraction" in line]
    assert len(steps) == 12 and len(recorded) == 24
    mixed = 0
    for line, micro in zip(steps, zip(recorded[0::2], recorded[1::2])):
        assert line["loss"] == pytest.approx(sum(part["loss"] for part in micro) / 2, rel=1e-6)
        having = [part["hard_label"] for part in micro if "hard_label" in part]
        assert ("hard_label" in line) == bool(having)
        if having:
            assert line["hard_label"] == pytest.approx(sum(having) / len(having), rel=1e-6)
        mixed += len(having) == 1
    assert mixed > 0  # some steps had one sampled and one kept micro-batch


def test_resume_with_gradient_accumulation_matches_an_uninterrupted_run(tmp_path, quiet_console):
    raw = policy_recipe(tmp_path, on_policy(0.5, hard_label_weight=0.5))
    raw["student"] = {"config": tiny_gpt2(n_embd=16, n_layer=1)}  # with dropout
    raw["training"].update(
        {"epochs": 4, "batch_size": 2, "gradient_accumulation": 2, "save_every": 2, "keep_checkpoints": 10, "eval_every": 100}
    )
    # Step 4 ends in the middle of the second epoch (3 steps of 2 micro-batches each).
    full, crashed = resumed_after_crash(load(tmp_path, raw), tmp_path, 4, quiet_console)
    assert json.loads((full / "summary.json").read_text())["steps"] == 12
    assert_same_weights(final_weights(full), final_weights(crashed))


def test_student_samples_never_hold_the_vocabularys_padding_rows(tmp_path):
    from tests.test_causal_lm import tokenizer_dir
    from tests.test_sequence_kd import PaddingFavouringGPT2, save_padded_gpt2

    raw = policy_recipe(tmp_path, on_policy(1.0))
    raw["student"] = {"checkpoint": str(save_padded_gpt2(tmp_path / "padded", tokenizer_dir(tmp_path)))}
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    size = len(run.student.tokenizer)
    PaddingFavouringGPT2.tokenizer_size = size
    run.student.model.__class__ = PaddingFavouringGPT2
    sampled = run.distiller.student_samples(one_batch(run, 8), seed=3)
    assert int(sampled["input_ids"].max()) < size
