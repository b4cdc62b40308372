"""The teacher-output cache (brewer_cli.teacher_cache), length-grouped batches, `training.compile`,
peak memory in summary.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from brewer_cli.build import build_run, plan_lines
from brewer_cli.commands import distill
from brewer_cli.errors import CheckpointError
from brewer_cli.families import AttentionInputs, FeatureNeeds, Features
from brewer_cli.recipe import load_recipe
from brewer_cli.teacher_cache import Layout, Part, SlotStore, TeacherRead
from brewer_cli.teacher_cache.layout import INT8_ROW
from tests.conftest import TINY_BERT, distill_recipe, save_tiny_model, write_recipe

# Dropout off: runs with and without the cache then differ by the cache alone.
STUDENT = {
    **TINY_BERT,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
MATCHES = [
    {"teacher_layer": 0, "student_layer": 0, "loss": "hidden_mse", "projection": "linear"},
    {"teacher_layer": 2, "student_layer": 2, "loss": "hidden_mse", "projection": "linear"},
    {"teacher_layer": [2, 2], "student_layer": [2, 2], "loss": "nst"},
    {"teacher_layer": 1, "student_layer": 1, "loss": "attention_mse_sum"},
]


def general_raw(teacher: Path, cache: str, **training: Any) -> dict[str, Any]:
    raw = distill_recipe(
        teacher,
        student={"config": dict(STUDENT)},
        distillation={
            "kind": "general",
            "temperature": 2.0,
            "hard_label_weight": 0.5,
            "matches": MATCHES,
            "teacher_cache": cache,
        },
    )
    raw["training"].update({"epochs": 2, "log_every": 1, "eval_every": 100, **training})
    return raw


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_a_general_run_with_the_cache_matches_one_without(tmp_path, teacher_dir, quiet_console):
    """Logits come back exactly, features within fp16 rounding; from epoch 2 the teacher never runs."""
    import resource

    summaries = {}
    for cache in ("off", "memory"):
        recipe = load_recipe(write_recipe(tmp_path, {**general_raw(teacher_dir, cache), "name": f"run-{cache}"}))
        summaries[cache] = distill(recipe, tmp_path / "out", console=quiet_console)
    without, cached = tmp_path / "out" / "run-off", tmp_path / "out" / "run-memory"
    losses, losses_cached = step_losses(without), step_losses(cached)
    assert sorted(losses) == sorted(losses_cached) == list(range(1, 9))
    for step in losses:
        assert losses_cached[step] == pytest.approx(losses[step], rel=2e-3, abs=1e-5), step
    # Epoch 1 (steps 1-4) runs the teacher on fresh batches and returns its fp32 outputs as they are.
    assert all(losses_cached[step] == losses[step] for step in range(1, 5))
    for name, tensor in final_weights(without).items():
        torch.testing.assert_close(final_weights(cached)[name], tensor, rtol=1e-3, atol=1e-4)

    report = summaries["memory"]["teacher_cache"]
    assert report["mode"] == "memory"
    assert (report["hits"], report["misses"]) == (64, 64)  # 2 epochs of 64 examples: each computed once
    assert (report["teacher_forwards"], report["teacher_forwards_skipped"]) == (4, 4)
    assert "teacher_cache" not in summaries["off"]
    stored = json.loads((cached / "teacher_cache" / "fingerprint.json").read_text())
    assert {"teachers.0 weights", "teachers.0 tokenizer", "teachers.0 data (the tokenized inputs)", "max length"} <= set(stored)

    # Peak memory: ru_maxrss is KiB on Linux; summary.json has bytes, at most the peak right now.
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    written = json.loads((cached / "summary.json").read_text())["peak_memory_bytes"]["host_rss"]
    assert 0.5 * peak_now <= written <= peak_now


def test_resume_reuses_a_matching_disk_cache_and_refuses_another(tmp_path, teacher_dir, tokenizer_dir, quiet_console):
    raw = general_raw(teacher_dir, "disk", save_every=5, keep_checkpoints=5)
    recipe = load_recipe(write_recipe(tmp_path, raw))
    full_summary = distill(recipe, tmp_path / "full", console=quiet_console)
    full = tmp_path / "full" / "tiny"
    assert full_summary["teacher_cache"]["mode"] == "disk"
    assert (full / "teacher_cache" / "process-0" / "teacher-0" / "features.f16").stat().st_size > 0
    # Without `teacher.dtype` the fingerprint has exactly the keys of caches written before that
    # setting existed, so they resume below as this one does (the weights hash names each dtype).
    stored = json.loads((full / "teacher_cache" / "fingerprint.json").read_text())
    assert sorted(stored) == [
        "examples",
        "format",
        "max length",
        "precision",
        "task",
        "teachers.0 data (the tokenized inputs)",
        "teachers.0 features",
        "teachers.0 tokenizer",
        "teachers.0 weights",
    ]

    # A crash after step 5 leaves that checkpoint and the cache beside the run.
    crashed = tmp_path / "crashed" / "tiny"
    crashed.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-5", crashed / "checkpoints" / "step-5")
    shutil.copytree(full / "teacher_cache", crashed / "teacher_cache")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    resumed_summary = distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)
    # Every example was cached in epoch 1 (steps 1-4): the resumed run never runs the teacher.
    assert resumed_summary["teacher_cache"]["teacher_forwards"] == 0
    resumed = final_weights(crashed)
    for name, tensor in final_weights(full).items():
        assert torch.equal(resumed[name], tensor), name

    # Other weights at the teacher's path (the recipe is the same, so --resume accepts it): the
    # cached outputs are not this teacher's, and resuming says so.
    save_tiny_model(teacher_dir, tokenizer_dir, seed=7)
    other_recipe = load_recipe(
        write_recipe(tmp_path, general_raw(teacher_dir, "disk", save_every=5, keep_checkpoints=5), "other.yaml")
    )
    with pytest.raises(CheckpointError) as error:
        distill(other_recipe, tmp_path / "crashed", resume=True, console=quiet_console)
    message = str(error.value)
    assert "other.yaml: distillation.teacher_cache:" in message
    assert "different teachers.0 weights than this run's" in message
    assert "delete" in message and "teacher_cache: off" in message


def test_only_entries_filled_before_the_resumed_step_are_reused(tmp_path):
    layout = Layout(
        TeacherRead(0, FeatureNeeds(hidden_states=True), (("hidden", 1),)),
        "tensor",
        (Part("logits.0", "row", (2,)),),
        (Part("hidden.1", "token", (3,)),),
        depth=2,
        num_heads=1,
    )
    lengths = np.array([2, 3, 1])
    store = SlotStore(layout, lengths, "memory", tmp_path / "cache")
    hidden = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3)
    store.put(
        [0, 1],
        Features(
            logits=torch.tensor([[1.0, 2.0], [3.0, 4.0]]), attention_mask=torch.ones(2, 3), hidden_states=(None, hidden, None)
        ),
        step=0,
    )
    store.put(
        [2],
        Features(
            logits=torch.tensor([[5.0, 6.0]]), attention_mask=torch.ones(1, 1), hidden_states=(None, torch.ones(1, 1, 3), None)
        ),
        step=7,
    )
    store.persist()
    reopened = SlotStore(layout, lengths, "disk", tmp_path / "cache", resume_step=5)
    assert reopened.filled_step.tolist() == [0, 0, -1]
    features = reopened.get(
        [1, 0], {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3)}, torch.device("cpu")
    )
    assert torch.equal(features.logits, torch.tensor([[3.0, 4.0], [1.0, 2.0]]))
    assert features.hidden_states[0] is None and features.hidden_states[2] is None
    assert torch.equal(features.hidden_states[1][0], hidden[1])
    # Example 0 has 2 tokens: its third position is padding, returned as zeros.
    assert torch.equal(features.hidden_states[1][1], torch.cat([hidden[0, :2], torch.zeros(1, 3)]))


def test_hidden_states_are_kept_as_int8_rows_in_about_half_the_bytes_of_fp16():
    """Each token's vector as int8 with one fp16 scale (its largest magnitude / 127): every value
    back within half a step of its scale, an all-zero row back as zeros."""
    part = Part("hidden.1", "token", (5,), INT8_ROW)
    hidden = torch.tensor([[1.0, -2.0, 3.0, 0.5, -127.0], [0.0] * 5, [1e-3, 2e-3, -1e-3, 0.0, 5e-4]])
    stored = part.encode(hidden)
    # 3 scales + 15 int8 values (8 fp16 elements, the last half padding) = 11 elements; 15 in fp16.
    assert stored.dtype == np.float16 and stored.size == part.counts(np.array([3]))[0] == 11
    assert Part("hidden.1", "token", (5,)).counts(np.array([3]))[0] == 15
    back = part.decode(stored, 3)
    # Scale 1: every value whole, 0.5 rounded to even.
    assert torch.equal(back[0], torch.tensor([1.0, -2.0, 3.0, 0.0, -127.0]))
    assert torch.equal(back[1], torch.zeros(5))
    step = float(torch.tensor(2e-3 / 127).half())
    assert 0 < float((back[2] - hidden[2]).abs().max()) <= step / 2 * 1.01


def test_a_disk_store_reads_and_writes_its_file_without_mapping_it(tmp_path):
    """Pages of a mapped file count in the process's resident memory as they are touched: a disk
    cache read through a map would end the run holding all of it. The store's file is never mapped."""
    layout = Layout(
        TeacherRead(0, FeatureNeeds(hidden_states=True), (("hidden", 1),)),
        "tensor",
        (Part("logits.0", "row", (2,)),),
        (Part("hidden.1", "token", (3,)),),
        depth=1,
        num_heads=1,
    )
    lengths = np.array([2, 1])
    store = SlotStore(layout, lengths, "disk", tmp_path / "cache")
    hidden = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0], [0.0, 0.0, 0.0]]])
    store.put([0, 1], Features(logits=torch.eye(2), attention_mask=torch.ones(2, 2), hidden_states=(None, hidden)), step=0)
    features = store.get(
        [1, 0], {"input_ids": torch.zeros(2, 2, dtype=torch.long), "attention_mask": torch.ones(2, 2)}, torch.device("cpu")
    )
    assert torch.equal(features.hidden_states[1], torch.stack([torch.cat([hidden[1, :1], torch.zeros(1, 3)]), hidden[0]]))
    file = tmp_path / "cache" / "features.f16"
    assert np.array_equal(np.fromfile(file, dtype=np.float16), np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.float16))
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(file) not in maps.read_text()


def test_the_plain_runs_peak_is_the_peak_so_far_plus_gradients_and_adam_moments():
    import resource

    from brewer_cli.teacher_cache.plan import plain_peak_bytes

    module = torch.nn.Linear(100, 10)  # 1,010 parameters in fp32
    module.bias.requires_grad_(False)  # frozen: no gradient, no moments
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = plain_peak_bytes(module)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert before + 3 * 1000 * 4 <= estimate <= after + 3 * 1000 * 4


def test_every_kind_of_part_round_trips_trimmed_to_each_example(tmp_path):
    """Token-level logits (QA's start/end pair), attention scores (L × L) and attention inputs."""
    needs = FeatureNeeds(attention_scores=True, attention_inputs=True)
    read = TeacherRead(0, needs, (("attention", 1), ("attention_inputs", 1)))
    layout = Layout(
        read,
        "tuple",
        (Part("logits.0", "token", ()), Part("logits.1", "token", ())),
        (
            Part("attention.1", "square", (2,)),
            Part("attention_inputs.1.query", "token", (4,)),
            Part("attention_inputs.1.key", "token", (4,)),
            Part("attention_inputs.1.value", "token", (4,)),
        ),
        depth=1,
        num_heads=2,
    )
    lengths = np.array([3, 5])
    generator = torch.Generator().manual_seed(0)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    inputs = AttentionInputs(query=random(2, 5, 4), key=random(2, 5, 4), value=random(2, 5, 4), num_heads=2)
    original = Features(
        logits=(random(2, 5), random(2, 5)),
        attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]),
        attention_scores=(random(2, 2, 5, 5),),
        attention_inputs=(inputs,),
    )
    store = SlotStore(layout, lengths, "memory", tmp_path / "cache")
    store.put([0, 1], original, step=0)
    view = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": original.attention_mask}
    cached = store.get([0, 1], view, torch.device("cpu"))
    valid = original.attention_mask.bool()
    for fresh, kept in zip(original.logits, cached.logits):
        assert torch.equal(kept[valid], fresh[valid]) and not kept[~valid].any()  # fp32: exact
    pairs = valid[:, None, :, None] & valid[:, None, None, :]
    scores = cached.attention_scores[0]
    torch.testing.assert_close(
        scores[pairs.expand_as(scores)], original.attention_scores[0][pairs.expand_as(scores)], rtol=1e-3, atol=1e-3
    )
    assert not scores[~pairs.expand_as(scores)].any()
    for name in ("query", "key", "value"):
        torch.testing.assert_close(
            getattr(cached.attention_inputs[0], name)[valid], getattr(inputs, name)[valid], rtol=1e-3, atol=1e-3
        )
    assert cached.attention_inputs[0].num_heads == 2


def test_the_plan_says_which_cache_and_why(tmp_path, teacher_dir, monkeypatch):
    import brewer_cli.teacher_cache.plan as teacher_cache

    def plan(cache: str, epochs: float) -> str:
        raw = general_raw(teacher_dir, cache, epochs=epochs)
        run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
        return next(line for line in plan_lines(run) if line.startswith("teacher cache:"))

    line = plan("auto", 2)
    assert line.startswith("teacher cache: auto → prefill, memory — ")
    assert "features (hidden states int8 with an fp16 scale per token, the rest fp16, memory: hidden 0, 2; attention 1)" in line
    assert "filled by one teacher pass over the training set before training" in line
    assert line.endswith(
        "kept in teacher_outputs/ beside the runs, where --resume and later runs of this teacher and data reuse it"
    )
    assert plan("memory", 2).startswith("teacher cache: memory — ")
    assert "filled as examples are first seen" in plan("memory", 2)
    assert "auto → off (4 steps of 4 per epoch: each example is seen once at most" in plan("auto", 1)
    # Asked for, a prefill runs even when each example is seen once.
    assert plan("prefill", 1).startswith("teacher cache: prefill, memory — ")
    assert plan("off", 2) == "teacher cache: off (distillation.teacher_cache: off)"
    assert "adds at most 5% to the run's own peak memory of about" in plan("auto", 2)
    # Above the margin over the run's own peak, the cache goes to disk (its pages then stay outside the process).
    monkeypatch.setattr(teacher_cache, "MEMORY_MARGIN", 0.0)
    line = plan("auto", 2)
    assert "auto → prefill, disk — " in line and "file, read example by example" in line
    assert "would add more than 0% to the run's own peak memory of about" in line
    monkeypatch.setattr(teacher_cache, "MEMORY_MARGIN", 0.1)
    monkeypatch.setattr(teacher_cache, "MEMORY_BUDGET_BYTES", 0)
    line = plan("auto", 2)
    assert "auto → prefill, disk — " in line and "(over the 0 B memory budget; " in line
    assert plan("prefill", 2).startswith("teacher cache: prefill, disk — ")
    monkeypatch.setattr(teacher_cache, "DISK_SHARE", 0.0)
    assert "auto → off (the features would take" in plan("auto", 2)


def test_multi_task_recipes_refuse_a_cache(tmp_path):
    from brewer_cli.errors import RecipeError
    from brewer_cli.recipe import validate_recipe

    raw = {"name": "x", "tasks": {}, "distillation": {"kind": "multi_task", "teacher_cache": "memory"}}
    with pytest.raises(RecipeError) as error:
        validate_recipe(raw, tmp_path / "recipe.yaml")
    assert "distillation.teacher_cache: 'memory' is not allowed — valid: off" in str(error.value)


# ============================================================================= length-grouped batches


def test_group_by_length_reduces_padding_and_keeps_each_example_once_per_epoch():
    from brewer_cli.tasks.ordering import EpochSampler

    generator = np.random.default_rng(0)
    lengths = generator.integers(4, 120, size=1003).tolist()
    batch_size = 16

    def padding(order: list[int]) -> int:
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)

    grouped = EpochSampler(len(lengths), seed=3, batch_size=batch_size, lengths=lengths)
    plain = EpochSampler(len(lengths), seed=3, batch_size=batch_size)
    orders = []
    for epoch in (0, 1):
        grouped.set_epoch(epoch)
        plain.set_epoch(epoch)
        order = list(grouped)
        assert sorted(order) == list(range(len(lengths)))
        assert padding(order) < 0.2 * padding(list(plain))
        orders.append(order)
    assert orders[0] != orders[1]
    # Each batch is one group, sorted longest first: the one short group (1003 = 62 × 16 + 11)
    # comes last, where it cannot shift later batches across two groups.
    for start in range(0, len(lengths), batch_size):
        batch = [lengths[i] for i in orders[0][start : start + batch_size]]
        assert batch == sorted(batch, reverse=True)
    grouped.set_epoch(0)
    assert list(grouped) == orders[0]  # an epoch's order is rebuilt on resume


# ============================================================================= compile


def test_training_compile_compiles_the_student_in_place(tmp_path, teacher_dir, quiet_console):
    """Inductor needs minutes for even a tiny model on a busy CPU, so this run names dynamo's eager
    backend: the in-place compile and a run through dynamo are what is tested here;
    `test_training_compile_with_inductor` (slow) runs the real compiler."""
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"max_steps": 2, "compile": "eager"})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    assert recipe.training.compile_backend == "eager"
    assert "compile: the student's forward is compiled in place (torch.compile, backend eager) before step 1" in plan_lines(
        build_run(recipe, tmp_path / "plan")
    )
    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    assert summary["compile"] == {"backend": "eager", "models": ["BertForSequenceClassification"]}
    assert summary["steps"] == 2 and summary["student"]["metric"] is not None
    # In place: the exported student has the plain model's parameter names.
    assert not any("_orig_mod" in name for name in final_weights(tmp_path / "out" / "tiny"))


def test_training_compile_compiles_the_match_losses_too(tmp_path, teacher_dir, quiet_console):
    """`general` compiles each match loss beside the student; the run gives the losses of the
    run without compilation (dynamo's eager backend: the same kernels, traced)."""
    runs = {}
    for backend in (False, "eager"):
        raw = general_raw(teacher_dir, "off")
        raw["training"].update({"max_steps": 3, "compile": backend})
        raw["name"] = f"compiled-{backend}"
        summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
        runs[backend] = (summary, step_losses(tmp_path / "out" / raw["name"]))
    summary = runs["eager"][0]
    assert summary["compile"]["backend"] == "eager"
    assert summary["compile"]["losses"] == sorted({match["loss"] for match in MATCHES})
    assert "compile" not in runs[False][0]
    for step, loss in runs[False][1].items():
        assert runs["eager"][1][step] == pytest.approx(loss, rel=1e-5), step


@pytest.mark.slow
def test_training_compile_with_inductor(tmp_path, teacher_dir, quiet_console):
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"max_steps": 2, "compile": True})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    assert recipe.training.compile_backend == "inductor"
    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    assert summary["steps"] == 2 and summary["compile"]["backend"] == "inductor"
