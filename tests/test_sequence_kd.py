"""Kind `sequence_kd` (Kim & Rush): the teacher's completions of the training prompts, generated
once and cached on disk under a fingerprint (a second run and a resume generate nothing — counted
through a subclass of the teacher's model class), the training examples they make (labels on the
completion only), seeded sampling, the loss going down, resume equality, and the recipe checks
shared with `on_policy` (task, generation settings, prompts, positions). The helpers here build
the tiny GPT-2 teacher, student and prompt/completion data that tests/test_on_policy.py uses too."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from brewer_cli.build import build_run
from brewer_cli.commands import distill, execute
from brewer_cli.distillers.generation import IGNORED, GenerationSettings, cut_at_end, generate
from brewer_cli.errors import DataError, ModelError, RecipeError
from brewer_cli.recipe import load_recipe
from tests.conftest import write_recipe
from tests.test_causal_lm import EOS, save_gpt2, tiny_gpt2, tokenizer_dir, word_tokenizer, write_jsonl

# Dropout off: the losses compared below are then exact functions of weights and batches.
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
PROMPTS = ["the cat", "the dog", "hello", "how are you", "what is red", "a big", "the small", "yes"]
COMPLETIONS = ["sat on a mat", "ran", "hi", "fine thanks", "blue", "cat sat", "dog ran on a mat", "no"]


def pairs(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {"prompt": PROMPTS[index], "completion": COMPLETIONS[index]}
        for index in (rng.randrange(len(PROMPTS)) for _ in range(count))
    ]


def policy_recipe(tmp_path: Path, distillation: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A prompt/completion causal_lm recipe distilling a confident tiny GPT-2 into a smaller one."""
    tokenizer = tokenizer_dir(tmp_path)
    teacher = tmp_path / "teacher"
    if not teacher.is_dir():
        save_gpt2(teacher, tokenizer, seed=1, n_embd=32, n_layer=2, initializer_range=0.2, **NO_DROPOUT)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    raw: dict[str, Any] = {
        "name": "policy",
        "task": {"kind": "causal_lm", "generations": 0},
        "data": {
            "train": {"path": str(write_jsonl(data / "train.jsonl", pairs(12, 0)))},
            "eval": {"path": str(write_jsonl(data / "eval.jsonl", pairs(4, 1)))},
            "prompt": "prompt",
            "completion": "completion",
            "max_length": 16,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": tiny_gpt2(n_embd=16, n_layer=1, **NO_DROPOUT)},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "progress": False, "seed": 0},
        "distillation": distillation,
    }
    raw.update(sections)
    return raw


def load(tmp_path: Path, raw: dict[str, Any], overrides: tuple[str, ...] = ()) -> Any:
    return load_recipe(write_recipe(tmp_path, raw), list(overrides))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first and first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def resumed_after_crash(recipe: Any, tmp_path: Path, kept: int, console: Any) -> tuple[Path, Path]:
    """An uninterrupted run, and one stopped after checkpoint `kept` (a later one half-written) and
    continued with --resume: their run directories."""
    distill(recipe, tmp_path / "full", console=console)
    full = tmp_path / "full" / recipe.name
    steps = json.loads((full / "summary.json").read_text())["steps"]
    assert steps > kept, "the crash must leave steps to redo"
    crashed = tmp_path / "crashed" / recipe.name
    shutil.copytree(full / "checkpoints" / f"step-{kept}", crashed / "checkpoints" / f"step-{kept}")
    (crashed / "checkpoints" / f".step-{steps}.tmp").mkdir()
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    distill(recipe, tmp_path / "crashed", resume=True, console=console)
    return full, crashed


class CountingGPT2(GPT2LMHeadModel):
    """GPT-2 that counts its `generate` calls: the teacher's class is swapped for it after loading."""

    calls = 0

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        return super().generate(*args, **kwargs)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The completions cache of these tests ($BREWER_CACHE), not the user's."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("BREWER_CACHE", str(directory))
    return directory


# ============================================================================= recipe checks


def test_refused_for_a_task_other_than_causal_lm(tmp_path):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd"})
    raw["task"] = {"kind": "sequence_classification", "num_labels": 2}
    with pytest.raises(RecipeError) as error:
        load(tmp_path, raw)
    assert (
        "distillation.kind: kind `sequence_kd` generates completions with a language model, so it distills task "
        "causal_lm only, not sequence_classification — set `task.kind: causal_lm`, or use kind basic"
    ) in str(error.value)


def test_sampling_settings_without_sampling_are_refused(tmp_path):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"temperature": 0.7, "top_k": 5}})
    with pytest.raises(RecipeError) as error:
        load(tmp_path, raw)
    assert (
        "distillation.generation: temperature: 0.7, top_k: 5 only act when sampling, but `sample` is false (greedy "
        "decoding) — set `sample: true`, or remove them"
    ) in str(error.value)


def test_defaults_are_sequence_level_kd(tmp_path):
    spec = load(tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd"})).distillation
    assert (spec.kd_weight, spec.hard_label_weight, spec.temperature, spec.teacher_cache) == (0.0, 1.0, 1.0, "off")
    assert spec.kd_loss == "forward_kl"
    assert (spec.generation.sample, spec.generation.max_new_tokens, spec.generation.seed) == (False, 64, None)


def test_plain_text_has_no_prompts_to_complete(tmp_path, cache):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 4}})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on a mat\nthe dog ran\n", encoding="utf-8")
    raw["data"] = {"train": {"path": str(corpus)}, "max_length": 8}
    recipe = load(tmp_path, raw)
    with pytest.raises(DataError) as error:
        build_run(recipe, tmp_path / "runs")
    assert str(error.value) == (
        f"{recipe.path}: data.train: kind sequence_kd generates completions of prompts, but 2 of 2 training examples "
        f"have no prompt (plain text has none) — give the training data as prompt/completion pairs or chat messages, "
        f"or set distillation.generation.prompt_tokens to continue the first tokens of each text"
    )


def test_plain_text_continues_its_first_tokens_with_prompt_tokens(tmp_path, cache):
    distillation = {"kind": "sequence_kd", "generation": {"max_new_tokens": 4, "prompt_tokens": 2}}
    raw = policy_recipe(tmp_path, distillation)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on a mat\nhello\n", encoding="utf-8")
    raw["data"] = {"train": {"path": str(corpus)}, "max_length": 8, "packing": False}
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    run.distiller.train_loader()
    columns = run.distiller.data.train.columns
    # "hello <eos>" has two tokens: its whole text is the prompt.
    assert columns["prompt_length"] == [2, 2]
    for ids, labels, completion in zip(columns["input_ids"], columns["labels"], run.distiller.teacher_completions.completions):
        assert labels == [IGNORED] * 2 + completion and ids[2:] == completion


def test_prompt_and_completion_must_fit_the_positions(tmp_path, cache):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 62}})
    recipe = load(tmp_path, raw)
    with pytest.raises(ModelError) as error:
        build_run(recipe, tmp_path / "runs")
    assert str(error.value) == (
        f"{recipe.path}: distillation.generation.max_new_tokens: the longest training prompt has 3 tokens, and with 62 "
        f"new tokens a sequence would need 65 positions, but the teacher reads at most 64 — lower max_new_tokens (to 61 "
        f"at most), or data.max_length to shorten the prompts"
    )


# ============================================================================= generation


def test_completions_end_at_the_first_end_of_sequence_token():
    assert cut_at_end([5, 6, EOS, 7, EOS], [EOS]) == [5, 6, EOS]
    assert cut_at_end([5, 6, 7], [EOS]) == [5, 6, 7]


def test_seeded_sampling_leaves_the_global_generator_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(save_gpt2(tmp_path / "t", tokenizer_dir(tmp_path), seed=1))
    settings = GenerationSettings(max_new_tokens=6, sample=True, temperature=1.5, top_p=1.0, top_k=0, seed=0)
    prompts = [[7, 8], [16, 20, 21]]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = generate(teacher, prompts, settings, 5, 0, [EOS])
    assert torch.equal(torch.get_rng_state(), before)
    assert generate(teacher, prompts, settings, 5, 0, [EOS]) == first
    assert any(generate(teacher, prompts, settings, seed, 0, [EOS]) != first for seed in range(6, 10))


def test_a_tokenizer_without_padding_pads_with_eos(tmp_path):
    """GPT-2's tokenizer has no pad token: rows are padded with EOS, which the attention mask and
    the labels leave out — only the first EOS of a completion is a label."""
    from transformers import AutoModelForCausalLM

    from brewer_cli.distillers.generation import completion_batch, pad_token_id

    assert pad_token_id(word_tokenizer(pad=False)) == EOS
    teacher = AutoModelForCausalLM.from_pretrained(save_gpt2(tmp_path / "t", tokenizer_dir(tmp_path), seed=2))
    settings = GenerationSettings(max_new_tokens=8, sample=True, temperature=3.0, top_p=1.0, top_k=0, seed=0)
    prompts = [[7], [16, 20, 21]]
    completions = generate(teacher, prompts, settings, 1, EOS, [EOS])
    batch = completion_batch(prompts, completions, EOS, torch.tensor([3, 4]))
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        length = len(prompt) + len(completion)
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)
        assert batch["labels"][row, length:].eq(IGNORED).all() and batch["input_ids"][row, length:].eq(EOS).all()
        assert batch["labels"][row, len(prompt) : length].tolist() == completion
    assert batch["index"].tolist() == [3, 4] and batch["prompt_length"].tolist() == [1, 3]


# ============================================================================= runs


def test_completions_are_generated_once_and_reused(tmp_path, cache, quiet_console):
    recipe = load(tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 5}}))
    summaries = []
    for attempt in range(2):
        run = build_run(recipe, tmp_path / f"runs-{attempt}")
        run.teacher.model.__class__ = CountingGPT2
        CountingGPT2.calls = 0
        summaries.append(execute(run, resume=False, console=quiet_console))
        # 12 prompts in chunks of the eval batch (8): two generate calls, then none.
        assert CountingGPT2.calls == (2 if attempt == 0 else 0)
    first, second = (summary["sequence_kd"] for summary in summaries)
    assert (first["generated_now"], first["read_from_cache"]) == (12, False)
    assert (second["generated_now"], second["read_from_cache"]) == (0, True)
    assert first["cache"] == second["cache"] and Path(first["cache"]).parent == cache / "sequence_kd"
    # The same completions: the two students trained on the same examples.
    assert_same_weights(final_weights(tmp_path / "runs-0" / "policy"), final_weights(tmp_path / "runs-1" / "policy"))

    # Another generation setting is another set of completions.
    other = load(tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 4}}))
    run = build_run(other, tmp_path / "runs-2")
    run.distiller.train_loader()
    assert run.distiller.teacher_completions.generated == 12
    assert len(list((cache / "sequence_kd").iterdir())) == 2


def test_training_examples_are_prompt_plus_teacher_completion(tmp_path, cache):
    recipe = load(tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 5}}))
    run = build_run(recipe, tmp_path / "runs")
    original = run.data.train.columns
    loader, _ = run.distiller.train_loader()
    generated = run.distiller.data.train.columns
    completions = run.distiller.teacher_completions.completions
    tokenizer = word_tokenizer()
    for index, completion in enumerate(completions):
        prompt = original["input_ids"][index][: original["prompt_length"][index]]
        assert 1 <= len(completion) <= 5 and (EOS not in completion[:-1])
        assert generated["input_ids"][index] == prompt + completion
        assert generated["labels"][index] == [IGNORED] * len(prompt) + completion
        assert generated["prompt_length"][index] == len(prompt)
        # Greedy: the teacher's own continuation of the prompt, token for token.
        expected = run.teacher.model.generate(
            torch.tensor([prompt]), max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=EOS
        )[0, len(prompt) :].tolist()
        assert completion == cut_at_end(expected, [EOS])
    batch = next(iter(loader))
    assert int(run.task.kd_mask(batch).sum()) == sum(len(completions[index]) for index in batch["index"].tolist())


def test_sampled_completions_follow_the_seed(tmp_path, cache):
    def completions(seed: int, where: str) -> list[list[int]]:
        generation = {"max_new_tokens": 6, "sample": True, "temperature": 2.0, "seed": seed}
        recipe = load(
            tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd", "generation_cache": where, "generation": generation})
        )
        run = build_run(recipe, tmp_path / "runs")
        run.distiller.train_loader()
        assert run.distiller.teacher_completions.generated == 12
        return run.distiller.teacher_completions.completions

    first = completions(7, str(tmp_path / "a"))
    assert completions(7, str(tmp_path / "b")) == first
    assert completions(8, str(tmp_path / "c")) != first


def test_loss_goes_down_on_a_repeated_batch(tmp_path, cache):
    distillation = {"kind": "sequence_kd", "kd_weight": 1.0, "kd_loss": "kl", "generation": {"max_new_tokens": 5}}
    run = build_run(load(tmp_path, policy_recipe(tmp_path, distillation)), tmp_path / "runs")
    distiller = run.distiller
    loader, _ = distiller.train_loader()
    batch = next(iter(loader))
    distiller.train()
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=1e-2)
    losses = []
    for step in range(25):
        distiller.current_step = step
        parts = distiller(batch)
        assert set(parts) == {"kd", "hard_label", "loss"}
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
        losses.append(float(parts["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, cache, quiet_console):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 5, "sample": True}})
    raw["student"] = {"config": tiny_gpt2(n_embd=16, n_layer=1)}  # with dropout
    raw["training"].update({"epochs": 3, "save_every": 4, "keep_checkpoints": 10, "eval_every": 100})
    recipe = load(tmp_path, raw)
    full, crashed = resumed_after_crash(recipe, tmp_path, 4, quiet_console)
    assert_same_weights(final_weights(full), final_weights(crashed))
    assert json.loads((crashed / "summary.json").read_text())["sequence_kd"]["generated_now"] == 0


# ============================================================================= issue 19 review


class PaddingFavouringGPT2(GPT2LMHeadModel):
    """A GPT-2 whose vocabulary has padding rows past the tokenizer's ids, and whose logits favour
    them (as an untrained padding row can): `generate` would pick them unless they are blocked."""

    tokenizer_size = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = super().forward(*args, **kwargs)
        outputs.logits[..., type(self).tokenizer_size :] += 1000.0
        return outputs


def save_padded_gpt2(directory: Path, tokenizer_path: Path, padding_rows: int = 8) -> Path:
    from transformers import AutoTokenizer, GPT2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    settings = {key: value for key, value in tiny_gpt2(n_embd=32, n_layer=2, **NO_DROPOUT).items() if key != "model_type"}
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer) + padding_rows, pad_token_id=tokenizer.pad_token_id, **settings)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_generation_never_emits_the_vocabularys_padding_rows(tmp_path, cache):
    tokenizer = word_tokenizer()
    size = len(tokenizer)
    PaddingFavouringGPT2.tokenizer_size = size
    model = PaddingFavouringGPT2.from_pretrained(save_padded_gpt2(tmp_path / "padded", tokenizer_dir(tmp_path)))
    prompts = [[7, 8], [16, 20, 21]]
    for sample in (False, True):
        settings = GenerationSettings(max_new_tokens=4, sample=sample, temperature=1.0, top_p=1.0, top_k=0, seed=0)
        # Unblocked, the padding rows win: the test model does what it should.
        assert max(max(row) for row in generate(model, prompts, settings, 3, 0, [EOS])) >= size
        completions = generate(model, prompts, settings, 3, 0, [EOS], tokenizer_size=size)
        assert all(token < size for row in completions for token in row) and all(completions)

    # sequence_kd: the teacher's completions, generated through the distiller.
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": {"max_new_tokens": 4, "sample": True}})
    raw["teacher"] = {"checkpoint": str(tmp_path / "padded")}
    run = build_run(load(tmp_path, raw), tmp_path / "runs")
    run.teacher.model.__class__ = PaddingFavouringGPT2
    run.distiller.train_loader()
    completions = run.distiller.teacher_completions.completions
    assert all(token < size for completion in completions for token in completion)


def test_a_checkpoints_generation_config_changes_no_completion(tmp_path):
    """transformers fills what the passed GenerationConfig leaves unset from the checkpoint's
    generation_config.json: the recipe's settings must be all that decides the tokens."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from brewer_cli.recipe.sections import TaskSpec
    from brewer_cli.tasks.causal_lm import CausalLM

    plain = save_gpt2(tmp_path / "plain", tokenizer_dir(tmp_path), seed=1, initializer_range=0.2, **NO_DROPOUT)
    shipped = tmp_path / "shipped"
    shutil.copytree(plain, shipped)
    GenerationConfig(repetition_penalty=5.0, no_repeat_ngram_size=1, min_new_tokens=6, suppress_tokens=[7, 8, 9]).save_pretrained(
        shipped
    )
    models = [AutoModelForCausalLM.from_pretrained(path) for path in (plain, shipped)]
    assert models[1].generation_config.no_repeat_ngram_size == 1
    prompts = [[7, 8], [16, 20, 21], [9]]
    differed = False
    for sample in (False, True):
        settings = GenerationSettings(max_new_tokens=8, sample=sample, temperature=1.0, top_p=1.0, top_k=0, seed=0)
        first, second = (generate(model, prompts, settings, 3, 0, [EOS]) for model in models)
        assert first == second, sample
        # Left to transformers alone, the shipped settings do change them.
        config = settings.config(0, [EOS])
        raw = [model.generate(input_ids=torch.tensor([prompts[0]]), generation_config=config)[0].tolist() for model in models]
        differed |= raw[0] != raw[1]
    assert differed
    assert models[1].generation_config.no_repeat_ngram_size == 1  # put back after each call

    # The summary's greedy generations of the task: the same for both checkpoints.
    tokenizer = word_tokenizer()
    task = CausalLM(TaskSpec(kind="causal_lm", generations=2, max_new_tokens=8))
    from brewer_cli.tasks import PreparedData, TokenizedDataset

    rows = {"input_ids": [[7, 8, 9, 10], [16, 20, 21, 22]], "prompt_length": [2, 3]}
    data = PreparedData(train=TokenizedDataset(rows), eval=TokenizedDataset(rows), label_names=None)
    assert task.generations(models[0], tokenizer, data) == task.generations(models[1], tokenizer, data)


def test_generation_split_over_processes_gives_the_same_completions(tmp_path, cache):
    """Each process generates the chunks n ≡ its index (mod processes), each chunk from its own seed:
    the union of two processes' shares is what one process generates alone."""
    from brewer_cli.distillers.generation import example_prompts, pad_token_id
    from brewer_cli.distillers.sequence_kd import chunk_shares
    from brewer_cli.tasks.causal_lm import end_token_ids

    assert chunk_shares([[1]] * 5 + [[1, 2]], 2, 2) == [[(0, [5, 0]), (2, [3, 4])], [(1, [1, 2])]]
    assert chunk_shares([[1]] * 3, 2, 1) == [[(0, [0, 1]), (1, [2])]]
    generation = {"max_new_tokens": 6, "sample": True, "temperature": 2.0, "seed": 5}
    run = build_run(load(tmp_path, policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": generation})), tmp_path / "r")
    distiller, teacher = run.distiller, run.teacher
    prompts = example_prompts(run.data.train.columns)
    ends = (pad_token_id(teacher.tokenizer), end_token_ids(teacher.model, teacher.tokenizer))
    alone = distiller.generate_share(teacher, prompts, *ends, "cpu", 0, 1)
    shares = [distiller.generate_share(teacher, prompts, *ends, "cpu", rank, 2) for rank in (0, 1)]
    assert shares[0] and shares[1]  # 12 prompts, chunks of 8: one chunk each
    assert sorted(shares[0] + shares[1]) == sorted(alone) and len(alone) == 12
    # And a run (one process) trains on exactly those.
    distiller.train_loader()
    assert distiller.teacher_completions.completions == [completion for _, completion in sorted(alone)]


def test_sampled_completions_are_cached_per_generation_chunk_size(tmp_path, cache):
    """A sample depends on its chunk (seed, rows), so the chunk size — the eval batch size — is in
    the cache key when sampling; greedy completions do not depend on it and share one entry."""

    def directory(generation: dict[str, Any], eval_batch_size: int) -> Path:
        raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation": generation})
        raw["training"]["eval_batch_size"] = eval_batch_size
        run = build_run(load(tmp_path, raw), tmp_path / "runs")
        run.distiller.train_loader()
        return run.distiller.teacher_completions.directory

    sampled = {"max_new_tokens": 4, "sample": True, "temperature": 2.0}
    assert directory(sampled, 4) != directory(sampled, 8)
    assert json.loads((directory(sampled, 4) / "fingerprint.json").read_text())["generation chunk size"] == 4
    greedy = {"max_new_tokens": 4}
    assert directory(greedy, 4) == directory(greedy, 8)


def test_an_unwritable_completions_cache_is_refused_before_generating(tmp_path, cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    raw = policy_recipe(
        tmp_path, {"kind": "sequence_kd", "generation_cache": str(blocker / "cache"), "generation": {"max_new_tokens": 4}}
    )
    recipe = load(tmp_path, raw)
    with pytest.raises(RecipeError) as error:
        build_run(recipe, tmp_path / "runs")
    assert error.value.problems == [
        f"{recipe.path}: distillation.generation_cache: the teacher's completions are kept in "
        f"{blocker / 'cache' / 'sequence_kd'}, but {blocker} is not a folder — set distillation.generation_cache to a "
        f"folder this user can write in"
    ]


def test_resume_with_gradient_accumulation_matches_an_uninterrupted_run(tmp_path, cache, quiet_console):
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "kd_weight": 0.5, "generation": {"max_new_tokens": 4, "sample": True}})
    raw["student"] = {"config": tiny_gpt2(n_embd=16, n_layer=1)}  # with dropout
    raw["training"].update(
        {"epochs": 4, "batch_size": 2, "gradient_accumulation": 2, "save_every": 2, "keep_checkpoints": 10, "eval_every": 100}
    )
    # Step 4 ends in the middle of the second epoch (3 steps of 2 micro-batches each).
    full, crashed = resumed_after_crash(load(tmp_path, raw), tmp_path, 4, quiet_console)
    assert json.loads((full / "summary.json").read_text())["steps"] == 12
    assert_same_weights(final_weights(full), final_weights(crashed))


@pytest.mark.slow
def test_two_processes_generate_the_completions_one_process_generates(tmp_path, quiet_console):
    """torchrun, two CPU processes (gloo): each generates its share, the main one writes the set —
    the completions one process generates alone."""
    import subprocess

    import pyarrow.parquet as pq

    from tests.test_distributed import LAUNCHERS, environment

    generation = {"max_new_tokens": 5, "sample": True, "temperature": 2.0}
    raw = policy_recipe(tmp_path, {"kind": "sequence_kd", "generation_cache": str(tmp_path / "two"), "generation": generation})
    raw["training"].update({"epochs": 1, "eval_every": 100})
    recipe = write_recipe(tmp_path, raw, "two.yaml")
    command = [*LAUNCHERS["torchrun"], "-m", "brewer_cli", "distill", str(recipe), "--output-dir", str(tmp_path / "runs")]
    launched = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "policy" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sequence_kd"]["generated_now"] == 12
    table = pq.read_table(Path(summary["sequence_kd"]["cache"]) / "completions.parquet")
    two = dict(zip(table.column("index").to_pylist(), table.column("completion").to_pylist()))

    raw["distillation"]["generation_cache"] = str(tmp_path / "one")
    run = build_run(load(tmp_path, raw), tmp_path / "one-run")
    run.distiller.train_loader()
    assert run.distiller.teacher_completions.generated == 12
    assert [two[index] for index in range(12)] == run.distiller.teacher_completions.completions
