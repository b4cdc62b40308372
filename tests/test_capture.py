"""The sparse teacher store: `brewer capture` (brewer_cli/capture_command.py, brewer_cli/logit_store)
and `teacher: {store: DIR}` (brewer_cli/build/store.py). The top-k math against log_softmax, the
Parquet round trip across shards, the manifest, bytes per token, the loss read from a k = V store
against the live teacher's, a basic run from a store end to end, resume equality, and the error
texts of bad input (wrong data, temperature, loss, kind; a partial store; bad capture arguments)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brewer_cli.build import build_run, plan_lines
from brewer_cli.capture_command import capture
from brewer_cli.cli import app
from brewer_cli.commands import distill
from brewer_cli.errors import BrewerError, DataError, ModelError, RecipeError
from brewer_cli.logit_store import (
    LogitStore,
    StoreWriter,
    data_fingerprint,
    open_store,
    partial_directory,
    tokenizer_hash,
    top_k_rows,
    weights_hash,
)
from brewer_cli.recipe import load_recipe
from tests.test_causal_lm import SPECIALS, WORDS, corpus_rows, run_recipe, save_gpt2, tiny_gpt2, tokenizer_dir, write_jsonl
from tests.test_training import losses_on_repeated_batch, one_batch

VOCABULARY = len(SPECIALS + WORDS)
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


# ============================================================================= the math and the files


def test_top_k_rows_are_the_largest_log_probabilities_and_the_tail_holds_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(5, 40) * 4
    kept = top_k_rows(logits, 6, temperature=2.0)
    log_p = torch.log_softmax(logits / 2.0, dim=-1)
    values, ids = log_p.topk(6, dim=-1)
    assert torch.equal(kept.ids, ids.to(torch.int32))
    assert torch.allclose(kept.log_probs, values, atol=1e-6)
    rest = log_p.clone().scatter_(-1, ids, float("-inf")).exp().sum(-1)
    assert torch.allclose(kept.tail_log_mass.exp(), rest, rtol=1e-5)
    # Kept and remaining mass add up to one.
    total = torch.logsumexp(torch.cat([kept.log_probs, kept.tail_log_mass[:, None]], dim=1), dim=1)
    assert torch.allclose(total, torch.zeros(5), atol=1e-6)
    everything = top_k_rows(logits, 40, temperature=1.0)
    assert torch.isneginf(everything.tail_log_mass).all()
    with pytest.raises(ValueError, match="between 1 and the vocabulary size 40"):
        top_k_rows(logits, 41, 1.0)


def _write(directory: Path, rows: dict[int, int], k: int = 3, **sizes: Any) -> tuple[StoreWriter, dict]:
    """A store of synthetic rows: example index → counted positions 1, 3, 5, … (`rows[index]` of them)."""
    generator = np.random.default_rng(0)
    writer = StoreWriter(directory, k, "float32", **sizes)
    written = {}
    for index, count in rows.items():
        values = (
            np.arange(1, 2 * count, 2, dtype=np.int32),
            generator.integers(0, 50, (count, k), dtype=np.int32),
            np.log(generator.dirichlet(np.ones(k + 1), count)[:, :k]).astype(np.float32),
            generator.normal(size=count).astype(np.float32),
        )
        writer.add(index, *values)
        written[index] = values
    return writer, written


def _finish(writer: StoreWriter):
    return writer.finish(
        teacher={"source": "synthetic"},
        tokenizer_hash="t",
        vocabulary_size=50,
        temperature=1.0,
        data_fingerprint="d",
        data={},
        brewer_version="test",
    )


def test_rows_come_back_from_several_shards_and_row_groups_in_any_order(tmp_path):
    target = tmp_path / "store"
    writer, written = _write(
        target, {index: 1 + index % 3 for index in (7, 2, 9, 0, 4, 1, 8)}, rows_per_shard=3, rows_per_group=2
    )
    # Until finish, only DIR.partial exists: a stopped capture never looks complete.
    assert not target.exists() and partial_directory(target).is_dir()
    manifest = _finish(writer)
    assert not partial_directory(target).exists()
    assert [shard["rows"] for shard in manifest.shards] == [3, 3, 1]
    assert manifest.data == {} and manifest.k == 3
    counted = sum(1 + index % 3 for index in written)
    assert manifest.bytes == sum((target / shard["file"]).stat().st_size for shard in manifest.shards)
    assert manifest.bytes_per_token == pytest.approx(manifest.bytes / counted)

    store = LogitStore(target, cache_bytes=1)  # a cache of one group: every read decodes again
    assert len(store) == 7
    for index, (positions, ids, log_probs, tail) in written.items():
        row = store.example(index)
        assert np.array_equal(row["positions"], positions) and np.array_equal(row["ids"], ids)
        assert np.array_equal(row["log_probs"], log_probs) and np.array_equal(row["tail_log_mass"], tail)

    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 3]] = True  # example 4: 2 positions
    mask[1, [1, 3, 5]] = True  # example 8: 3 positions
    sparse = store.sparse_logits(torch.tensor([4, 8]), mask, "uniform")
    assert sparse.ids.shape == (2, 6, 3) and sparse.tail_log_mass.shape == (2, 6)
    assert sparse.vocabulary_size == 50 and sparse.tail == "uniform"
    assert torch.equal(sparse.ids[1, 5], torch.from_numpy(written[8][1][2]).long())
    assert torch.equal(sparse.log_probs[0, 3], torch.from_numpy(written[4][2][1]))
    # Positions not counted: a harmless uniform distribution over k distinct ids, nothing left over.
    assert torch.equal(sparse.ids[0, 0], torch.arange(3)) and torch.isneginf(sparse.tail_log_mass[0, 0])
    assert torch.allclose(sparse.log_probs[0, 0], torch.full((3,), -math.log(3)))

    mask[0, 5] = True
    with pytest.raises(RuntimeError, match="example 4: the store holds the teacher's distributions at 2 positions"):
        store.sparse_logits(torch.tensor([4, 8]), mask, "zero")


def test_a_partial_store_is_never_opened_and_a_new_capture_clears_it(tmp_path):
    target = tmp_path / "store"
    _write(target, {0: 2, 1: 1})  # stopped before finish
    with pytest.raises(ModelError) as error:
        open_store(target, "recipe.yaml: teacher.store")
    assert str(error.value) == (
        f"recipe.yaml: teacher.store: {str(target)!r} does not exist ({partial_directory(target)} exists: a capture that "
        f"did not finish — run brewer capture again) — write the store first with `brewer capture RECIPE --output "
        f"{target}` (RECIPE: this recipe with the teacher's checkpoint)"
    )
    # Renamed by hand, it still has no manifest: refused.
    partial_directory(target).rename(target)
    with pytest.raises(ModelError, match="is not a complete teacher store \\(no manifest.json\\)"):
        open_store(target, "recipe.yaml: teacher.store")
    shutil.rmtree(target)
    _write(target, {0: 2})
    writer, _ = _write(target, {5: 1})  # a new capture starts over in the marked DIR.partial
    _finish(writer)
    assert len(LogitStore(target)) == 1
    (partial_directory(tmp_path / "other")).mkdir()
    with pytest.raises(FileExistsError):  # not brewer's: never cleared
        StoreWriter(tmp_path / "other", 3)


def _damaged(target: Path, damage: str) -> None:
    writer, _ = _write(target, {0: 2, 1: 1, 2: 3}, rows_per_shard=2)
    _finish(writer)
    manifest = target / "manifest.json"
    if damage == "missing shard":
        (target / "shard-00001.parquet").unlink()
    elif damage == "corrupt shard":
        (target / "shard-00000.parquet").write_bytes(b"not parquet at all")
    elif damage == "not json":
        manifest.write_text("{ truncated")
    elif damage == "no fields":
        manifest.write_text(json.dumps({"format": 1, "k": 3}))
    elif damage == "format":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 2}))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (
            "missing shard",
            "its shard shard-00001.parquet is missing or damaged ([Errno 2] Failed to open local file '{target}/shard-00001.parquet'",
        ),
        ("corrupt shard", "its shard shard-00000.parquet is missing or damaged ("),
        ("not json", "its manifest.json cannot be read (Expecting property name enclosed in double quotes"),
        (
            "no fields",
            "its manifest.json lacks brewer_version, bytes, bytes_per_token, data, data_fingerprint, log_prob_dtype, "
            "shards, teacher, temperature, tokenizer_hash, vocabulary_size",
        ),
        ("format", "its manifest.json has format 2, and this version of brewer reads format 1"),
    ],
)
def test_a_damaged_store_or_another_format_is_a_model_error(tmp_path, damage, problem):
    target = tmp_path / "store"
    _damaged(target, damage)
    with pytest.raises(ModelError) as error:
        open_store(target, "recipe.yaml: teacher.store")
    message = str(error.value)
    assert message.startswith(f"recipe.yaml: teacher.store: {str(target)!r} cannot be read as a teacher store: ")
    assert problem.format(target=target) in message
    assert message.endswith(f" — re-run `brewer capture` on this recipe's data to write the store again (with --output {target})")
    assert error.value.exit_code == 2


# ============================================================================= capture a tiny GPT-2


@pytest.fixture
def teacher_recipe(tmp_path) -> Path:
    teacher = save_gpt2(tmp_path / "teacher", tokenizer_dir(tmp_path), seed=1, n_embd=48, n_layer=2, initializer_range=0.2)
    return run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"config": tiny_gpt2(n_embd=16, n_layer=1, **NO_DROPOUT)},
        distillation={"kind": "basic", "kd_loss": "forward_kl", "temperature": 2.0, "hard_label_weight": 0.0},
    )


def store_recipe(recipe_path: Path, store: Path, *overrides: str):
    return load_recipe(recipe_path, [f"teacher={{store: {store}}}", *overrides])


def test_capture_writes_the_teachers_top_k_and_a_manifest(tmp_path, teacher_recipe, quiet_console):
    recipe = load_recipe(teacher_recipe)
    output = capture(recipe, tmp_path / "store", top_k=5, console=quiet_console)
    manifest = json.loads((output / "manifest.json").read_text())
    live = build_run(recipe, tmp_path / "probe")
    teacher = live.teacher
    counted = sum(int(live.task.kd_mask(live.collate([example])).sum()) for example in live.data.train)
    assert manifest["teacher"] == {
        "source": str(tmp_path / "teacher"),
        "path": str((tmp_path / "teacher").resolve()),
        "revision": None,
        "weights_hash": weights_hash(teacher.model),
        "parameters": sum(parameter.numel() for parameter in teacher.model.parameters()),
        "model_type": "gpt2",
        "dtype": "float32",
    }
    assert manifest["tokenizer_hash"] == tokenizer_hash(teacher.tokenizer)
    assert manifest["vocabulary_size"] == VOCABULARY
    assert (manifest["temperature"], manifest["k"], manifest["log_prob_dtype"]) == (2.0, 5, "float16")
    assert manifest["data_fingerprint"] == data_fingerprint(live.data.train, {"task": "causal_lm", "max_length": 32})
    assert manifest["data"]["examples"] == 24 and manifest["data"]["counted_tokens"] == counted
    assert manifest["brewer_version"]
    size = sum((output / shard["file"]).stat().st_size for shard in manifest["shards"])
    assert manifest["bytes"] == size and manifest["bytes_per_token"] == pytest.approx(size / counted)
    assert (output / "tokenizer" / "tokenizer.json").is_file()

    # Example 3's rows are the live teacher's top 5 of softmax(z / 2) at its counted positions.
    batch = live.collate([live.data.train[3]])
    with torch.inference_mode():
        logits = live.task.logits(teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    mask = live.task.kd_mask(batch)[0]
    log_p = torch.log_softmax(logits[0, mask] / 2.0, dim=-1)
    row = LogitStore(output).example(3)
    assert np.array_equal(row["positions"], mask.nonzero().squeeze(-1).numpy())
    assert np.array_equal(row["ids"], log_p.topk(5).indices.numpy())
    assert np.allclose(row["log_probs"], log_p.topk(5).values.numpy(), atol=2e-3)  # float16


def save_llama(directory: Path, tokenizer_path: Path, padded_vocabulary: int) -> Path:
    """A tiny Llama (grouped-query attention, gated MLP) whose output matrix has rows past the
    tokenizer's ids, as Qwen's do."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=padded_vocabulary,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    torch.manual_seed(2)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_llama_teacher_with_padded_vocabulary_is_captured_over_the_tokenizers_ids(tmp_path, quiet_console):
    teacher = save_llama(tmp_path / "llama", tokenizer_dir(tmp_path), padded_vocabulary=VOCABULARY + 3)
    recipe_path = run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"config": tiny_gpt2(n_embd=16, n_layer=1, **NO_DROPOUT)},
        distillation={"kind": "basic", "kd_loss": "forward_kl", "temperature": 1.0, "hard_label_weight": 0.0},
    )
    store = capture(
        load_recipe(recipe_path), tmp_path / "store", top_k=VOCABULARY, log_prob_dtype="float32", console=quiet_console
    )
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["vocabulary_size"] == VOCABULARY and manifest["teacher"]["model_type"] == "llama"
    live = build_run(load_recipe(recipe_path), tmp_path / "live")
    stored = build_run(store_recipe(recipe_path, store), tmp_path / "stored")
    stored.student.model.load_state_dict(live.student.model.state_dict())
    batch = one_batch(live, 8)
    live.teacher.model.eval()
    live.distiller.train()
    stored.distiller.train()
    # The live loss cuts the teacher's padding rows off before its softmax; the store never had them.
    expected = float(live.distiller(batch)["loss"].detach())
    assert float(stored.distiller(batch)["loss"].detach()) == pytest.approx(expected, rel=1e-5)


def test_capture_prints_bytes_per_token_and_size(tmp_path, teacher_recipe):
    result = CliRunner().invoke(app, ["capture", str(teacher_recipe), "--output", str(tmp_path / "store"), "--top-k", "4"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert f"{manifest['bytes_per_token']:,.1f} bytes per token" in " ".join(result.output.split())
    assert f"{manifest['data']['counted_tokens']:,} counted tokens" in " ".join(result.output.split())


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-4)])
def test_a_store_of_the_whole_vocabulary_gives_the_live_teachers_loss(tmp_path, teacher_recipe, quiet_console, dtype, tolerance):
    recipe = load_recipe(teacher_recipe)
    store = capture(recipe, tmp_path / "store", top_k=VOCABULARY, log_prob_dtype=dtype, console=quiet_console)
    for kd_loss in ("forward_kl", "reverse_kl", "jsd"):
        live = build_run(load_recipe(teacher_recipe, [f"distillation.kd_loss={kd_loss}"]), tmp_path / "live")
        stored = build_run(store_recipe(teacher_recipe, store, f"distillation.kd_loss={kd_loss}"), tmp_path / "stored")
        assert stored.teachers == [] and stored.distiller.teachers == []
        stored.student.model.load_state_dict(live.student.model.state_dict())
        batch = one_batch(live, 8)
        live.teacher.model.eval()
        live.distiller.train()
        stored.distiller.train()
        expected = float(live.distiller(batch)["loss"].detach())
        got = float(stored.distiller(batch)["loss"].detach())
        assert got == pytest.approx(expected, rel=tolerance, abs=tolerance), kd_loss


def test_a_basic_run_from_a_store_learns_and_reports_the_teacher(tmp_path, teacher_recipe, quiet_console):
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=8, console=quiet_console)
    recipe = store_recipe(teacher_recipe, store, "distillation.kd_loss=reverse_kl", "teacher.tail=uniform")
    run = build_run(recipe, tmp_path / "probe")
    assert run.teachers == []
    plan = "\n".join(plan_lines(run))
    assert f"teacher: store {store} — top 8 of {VOCABULARY} token ids at temperature 2 (float16), tail uniform" in plan
    assert "teacher cache: off (the teacher's logits come from its store)" in plan
    losses = losses_on_repeated_batch(run, steps=30, learning_rate=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses

    summary = distill(recipe, tmp_path / "runs", console=quiet_console)
    teacher = summary["teacher"]
    assert teacher["store"] == str(store) and teacher["k"] == 8 and teacher["tail"] == "uniform"
    assert teacher["metrics"]["perplexity"] > 0  # loaded from the manifest's path for its evaluation only
    assert summary["student"]["metrics"]["perplexity"] > 0
    assert summary["student_to_teacher"] == pytest.approx(summary["student"]["metric"] / teacher["metric"])
    assert "teacher_cache" not in summary  # off: nothing but the store was read
    # The run's recipe names the store: `brewer eval` of the run needs no teacher.
    from brewer_cli.evaluate_command import evaluate

    report = evaluate(str(tmp_path / "runs" / "lm"), console=quiet_console)
    assert report["model"]["metrics"]["perplexity"] == pytest.approx(summary["student"]["metrics"]["perplexity"], rel=1e-5)

    # Without the checkpoint the teacher's metrics are unavailable, and the run still trains.
    shutil.rmtree(tmp_path / "teacher")
    summary = distill(load_recipe(recipe.path, [*_overrides(recipe), "name=again"]), tmp_path / "runs", console=quiet_console)
    assert summary["teacher"]["metrics"] is None
    assert summary["teacher"]["metrics_unavailable"].startswith("the teacher's eval metrics are unavailable: checkpoint")


def _overrides(recipe) -> list[str]:
    return [f"teacher={{store: {recipe.teacher.store}, tail: {recipe.teacher.tail}}}", "distillation.kd_loss=reverse_kl"]


def test_a_resumed_run_from_a_store_matches_an_uninterrupted_one(tmp_path, teacher_recipe, quiet_console):
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=8, console=quiet_console)
    recipe = store_recipe(
        teacher_recipe, store, "training.save_every=2", "training.keep_checkpoints=10", "training.eval_every=100"
    )
    distill(recipe, tmp_path / "full", console=quiet_console)
    full = tmp_path / "full" / recipe.name
    crashed = tmp_path / "crashed" / recipe.name
    crashed.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", crashed / "checkpoints" / "step-2")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)
    uninterrupted, resumed = (
        load_file(str(full / "final" / "model.safetensors")),
        load_file(str(crashed / "final" / "model.safetensors")),
    )
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert "resumed_from" in (crashed / "metrics.jsonl").read_text()


# ============================================================================= what is refused


def test_a_store_captured_on_other_data_is_refused(tmp_path, teacher_recipe, quiet_console):
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=4, console=quiet_console)
    recipe = store_recipe(teacher_recipe, store, "data.max_length=16")
    with pytest.raises(DataError) as error:
        build_run(recipe, tmp_path / "runs")
    assert str(error.value) == (
        f"{recipe.path}: teacher.store: the store {store} was captured on other training data: this run's tokenized "
        f"training split (24 examples; data.train, data.max_length 16, the task's settings, the store's tokenizer) "
        f"differs from the one in its manifest (24 examples, max_length 32) — the teacher's distributions would belong "
        f"to other text; re-run `brewer capture` with this recipe's data, or point teacher.store at a store captured on it"
    )
    # The same settings and example count, every text the same length: one word of one completion differs.
    rows = corpus_rows(24)
    rows[5] = {**rows[5], "completion": rows[5]["completion"].replace("ran", "sat", 1)}
    assert rows[5] != corpus_rows(24)[5]
    other = write_jsonl(tmp_path / "other-train.jsonl", rows)
    recipe = store_recipe(teacher_recipe, store, f"data.train.path={other}")
    with pytest.raises(DataError) as error:
        build_run(recipe, tmp_path / "runs")
    assert str(error.value) == (
        f"{recipe.path}: teacher.store: the store {store} was captured on other training data: this run's tokenized "
        f"training split (24 examples; data.train, data.max_length 32, the task's settings, the store's tokenizer) "
        f"differs from the one in its manifest (24 examples, max_length 32) — the teacher's distributions would belong "
        f"to other text; re-run `brewer capture` with this recipe's data, or point teacher.store at a store captured on it"
    )


def test_recipe_settings_a_store_cannot_serve_are_refused(tmp_path, teacher_recipe, quiet_console):
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=4, console=quiet_console)
    recipe = store_recipe(teacher_recipe, store, "distillation.temperature=1.0")
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert str(error.value).endswith(
        f"{recipe.path}: distillation.temperature: 1, but the store {store} holds the teacher's distributions at the "
        f"capture temperature 2 (softmax(z / 2), top 4; the logits needed to soften them otherwise were not kept) — set "
        f"distillation.temperature: 2, or capture again with --temperature 1"
    )
    recipe = store_recipe(teacher_recipe, store, "distillation.kd_loss=ce", "distillation.temperature_schedule.kind=cwsm")
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert error.value.problems == [
        f"{recipe.path}: distillation.kd_loss: `ce` reads dense teacher logits, but teacher.store holds the teacher's "
        f"top-k distributions — use a token KD loss: forward_kl, jsd, reverse_kl, skew_kl, skew_reverse_kl, tv",
        f"{recipe.path}: distillation.temperature_schedule.kind: `cwsm` changes the temperature per row, but "
        f"teacher.store holds the teacher's distributions at one capture temperature — use `constant`",
    ]
    recipe = store_recipe(teacher_recipe, store, "distillation.kind=general", "distillation.matches=[]")
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert (
        f"{recipe.path}: teacher.store: kind general reads more of the teacher than its logits (hidden states, attention, "
        f"or its scores of new text), which a store of top-k logits does not hold — use kind basic, or give "
        f"teacher.checkpoint"
    ) in error.value.problems


def test_a_tail_without_a_store_is_a_recipe_error(teacher_recipe):
    with pytest.raises(
        RecipeError, match="teacher: `tail` says how a teacher `store` spreads its remaining mass: it needs `store`"
    ):
        load_recipe(teacher_recipe, ["teacher.tail=uniform"])


def _invoke(*arguments: str):
    return CliRunner().invoke(app, ["capture", *arguments])


def test_capture_refuses_bad_input_with_exit_2(tmp_path, teacher_recipe, tokenizer_dir):
    from tests.conftest import distill_recipe, save_tiny_model, write_recipe

    result = _invoke(str(teacher_recipe), "--top-k", "0", "--output", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert "--top-k 0: keep at least 1 token id per position (default 64)" in " ".join(result.output.split())
    result = _invoke(str(teacher_recipe), "--top-k", str(VOCABULARY + 1), "--output", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert (
        f"--top-k {VOCABULARY + 1}: more than the teacher's vocabulary of {VOCABULARY} token ids — give at most --top-k {VOCABULARY}"
        in " ".join(result.output.split())
    )
    assert not (tmp_path / "s").exists() and not partial_directory(tmp_path / "s").exists()
    result = _invoke(str(teacher_recipe), "--set", f"teacher.checkpoint={tmp_path / 'nowhere'}", "--output", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert f"teacher.checkpoint: '{tmp_path / 'nowhere'}' does not exist — train it first with `brewer train-teacher" in " ".join(
        result.output.split()
    )
    (tmp_path / "taken").mkdir()
    result = _invoke(str(teacher_recipe), "--output", str(tmp_path / "taken"))
    assert result.exit_code == 2
    assert f"{tmp_path / 'taken'}: already exists — choose another --output, or delete it to capture again" in " ".join(
        result.output.split()
    )

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    classifier = write_recipe(encoder, distill_recipe(save_tiny_model(encoder / "teacher", tokenizer_dir)))
    result = _invoke(str(classifier), "--output", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert (
        "task.kind: brewer capture stores a causal language model's next-token distributions, and this recipe's task is "
        "sequence_classification — its teacher outputs are small enough for the teacher-output cache "
        "(distillation.teacher_cache), which needs no capture; capture a recipe with task.kind: causal_lm"
    ) in " ".join(result.output.split())


def test_teacher_cache_auto_is_off_for_causal_lm(tmp_path, teacher_recipe):
    run = build_run(load_recipe(teacher_recipe, ["training.epochs=3"]), tmp_path / "runs")
    plan = "\n".join(plan_lines(run))
    assert "teacher cache: auto → off (task causal_lm: the teacher's logits are dense over the vocabulary" in plan
    assert "`brewer capture` and `teacher: {store: DIR}`" in plan


def test_errors_are_brewer_errors():
    assert issubclass(DataError, BrewerError) and issubclass(ModelError, BrewerError)


# ============================================================================= issue 19 review


def test_reverse_kl_against_a_zero_tail_is_refused(tmp_path, teacher_recipe, quiet_console):
    """p_T = 0 off the top k: reverse KL (and skew reverse KL at α = 0, which is reverse KL) weigh
    the student's mass there by the clamped −log 0 ≈ 87; JSD and skew reverse KL with α > 0 stay
    bounded (their mixture holds a share of p_S), forward KL weighs by p_T — they are allowed, and
    so is every loss with `tail: uniform` or a store of the whole vocabulary (no tail)."""
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=4, console=quiet_console)
    for kd_loss, alpha, refused in [
        ("reverse_kl", 0.1, True),
        ("skew_reverse_kl", 0.0, True),
        ("skew_reverse_kl", 0.1, False),
        ("jsd", 0.1, False),
        ("forward_kl", 0.1, False),
    ]:
        settings = [f"distillation.kd_loss={kd_loss}", f"distillation.skew_alpha={alpha}"]
        recipe = store_recipe(teacher_recipe, store, *settings)
        if refused:
            with pytest.raises(RecipeError) as error:
                build_run(recipe, tmp_path / "runs")
            assert error.value.problems == [
                f"{recipe.path}: teacher.tail: `zero` gives every id outside the store's top 4 (of {VOCABULARY}) "
                f"probability 0, and kd_loss {kd_loss} weighs the student's probability on those ids by −log p_T, there "
                f"the floor ≈ 87 (log 0 clamped): the loss becomes that constant times the student's mass outside the "
                f"top 4, not a divergence — set teacher.tail: uniform (the remaining mass spread over the other ids), "
                f"or use kd_loss forward_kl, jsd, tv, skew_kl, or skew_reverse_kl with skew_alpha > 0"
            ]
        else:
            build_run(recipe, tmp_path / "runs")
        build_run(load_recipe(teacher_recipe, [f"teacher={{store: {store}, tail: uniform}}", *settings]), tmp_path / "runs")


def test_the_teacher_is_not_evaluated_when_its_checkpoint_changed_since_capture(tmp_path, teacher_recipe, quiet_console):
    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=4, console=quiet_console)
    recipe = store_recipe(teacher_recipe, store)
    assert build_run(recipe, tmp_path / "probe").distiller.evaluate_teachers("cpu")["perplexity"] > 0
    # Retrained in place (another seed): the manifest's path now holds other weights.
    save_gpt2(tmp_path / "teacher", tokenizer_dir(tmp_path), seed=2, n_embd=48, n_layer=2, initializer_range=0.2)
    run = build_run(recipe, tmp_path / "probe-2")
    assert run.distiller.evaluate_teachers("cpu") is None
    summary = {"student": {"metric": 5.0}}
    run.distiller.update_summary(summary, None)
    assert summary["teacher"]["metrics"] is None
    assert summary["teacher"]["metrics_unavailable"] == (
        f"the teacher's eval metrics are unavailable: the checkpoint {(tmp_path / 'teacher').resolve()} no longer holds "
        f"the weights the store was captured from (their hash differs from manifest.json's teacher.weights_hash)"
    )


def test_a_store_read_by_a_recipe_of_another_task_names_the_task(tmp_path, teacher_recipe, quiet_console):
    from tests.conftest import distill_recipe, write_recipe

    store = capture(load_recipe(teacher_recipe), tmp_path / "store", top_k=4, console=quiet_console)
    raw = distill_recipe(tmp_path / "teacher")
    raw["teacher"] = {"store": str(store)}
    raw["distillation"] = {"kind": "basic", "kd_loss": "forward_kl", "temperature": 2.0}
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    recipe = load_recipe(write_recipe(encoder, raw))
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert error.value.problems == [
        f"{recipe.path}: task.kind: sequence_classification, but teacher.store {store} holds a teacher's next-token "
        f"distributions captured for task causal_lm — a store stands in for the teacher of the task it was captured "
        f"for; set task.kind: causal_lm, or give teacher.checkpoint"
    ]
