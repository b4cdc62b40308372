"""Task causal_lm: the data forms (exact ids and labels on a word-level tokenizer), packing, prompt
and chat masking, the shifted logits and KD mask, perplexity and token accuracy against plain
formulas, error texts, and tiny `trainer` and `basic` runs end to end (loss going down, metrics,
generations in summary.json, final/ loadable by AutoModelForCausalLM and the text-generation
pipeline, `brewer eval`)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from brewer_cli.build import build_run
from brewer_cli.commands import distill
from brewer_cli.errors import BrewerError, DataError, RecipeError
from brewer_cli.evaluation import EvalSetup, evaluate_outputs
from brewer_cli.recipe import load_recipe
from brewer_cli.recipe.sections import TaskSpec
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.causal_lm import IGNORED, CausalLM
from tests.conftest import write_recipe
from tests.test_training import losses_on_repeated_batch, one_batch

WORDS = "the cat dog sat ran on a mat big small red blue hello hi how are you fine thanks yes no what is".split()
SPECIALS = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
# Assistant turns inside {% generation %}: transformers returns their token mask.
MASKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|> {% generation %}{{ message['content'] }} <|end|>{% endgeneration %} "
    "{% else %}<|user|> {{ message['content'] }} <|end|> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
PLAIN_TEMPLATE = MASKED_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def word_tokenizer(pad: bool = True, chat_template: str | None = None) -> Any:
    """A word-level tokenizer: id i is SPECIALS + WORDS [i], so ids can be written by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>" if pad else None
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def ids(text: str) -> list[int]:
    vocab = SPECIALS + WORDS
    return [vocab.index(word) for word in text.split()]


EOS = SPECIALS.index("<eos>")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lm_recipe(tmp_path: Path, data: dict[str, Any], **sections: Any) -> Any:
    raw: dict[str, Any] = {
        "name": "lm",
        "task": {"kind": "causal_lm"},
        "data": data,
        "model": {"config": tiny_gpt2(), "tokenizer": {"path": str(tokenizer_dir(tmp_path))}},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "progress": False, "seed": 0},
        "distillation": {"kind": "trainer"},
    }
    raw.update(sections)
    return load_recipe(write_recipe(tmp_path, {key: value for key, value in raw.items() if value is not None}))


def tokenizer_dir(tmp_path: Path, chat_template: str | None = None) -> Path:
    directory = tmp_path / "tokenizer"
    if not directory.is_dir():
        word_tokenizer(chat_template=chat_template).save_pretrained(directory)
    return directory


def tiny_gpt2(**overrides: Any) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "n_positions": 64,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        **overrides,
    }


def task(**spec: Any) -> CausalLM:
    return CausalLM(TaskSpec(kind="causal_lm", **spec))


def columns(dataset) -> list[tuple[list[int], list[int], int]]:
    c = dataset.columns
    return list(zip(c["input_ids"], c["labels"], c["prompt_length"]))


# ============================================================================= data forms


def test_plain_text_is_packed_into_blocks_with_eos_after_each_document(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n\nthe dog ran on a mat\nhello\n", encoding="utf-8")
    recipe = lm_recipe(tmp_path, {"train": {"path": str(corpus)}, "max_length": 8})
    data = task().prepare(recipe, word_tokenizer())
    stream = ids("the cat sat") + [EOS] + ids("the dog ran on a mat") + [EOS] + ids("hello") + [EOS]
    assert columns(data.train) == [(stream[:8], stream[:8], 0), (stream[8:16], stream[8:16], 0)]
    assert data.train.columns["attention_mask"] == [[1] * 8, [1] * 5]
    # Blocks of 12: the thirteenth token alone would predict nothing and is left out.
    recipe = lm_recipe(tmp_path, {"train": {"path": str(corpus)}, "max_length": 12})
    assert columns(task().prepare(recipe, word_tokenizer()).train) == [(stream[:12], stream[:12], 0)]


def test_plain_text_without_packing_is_one_truncated_example_per_document(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"body": "the cat sat on a mat big red"}, {"body": "hi"}])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "text": "body", "max_length": 8, "packing": False})
    data = task().prepare(recipe, word_tokenizer())
    long = ids("the cat sat on a mat big red")
    assert columns(data.train) == [(long, long, 0), (ids("hi") + [EOS], ids("hi") + [EOS], 0)]


def test_prompt_completion_masks_the_prompt_and_truncation_keeps_it(tmp_path, caplog):
    rows = [
        {"q": "how are you", "a": "fine thanks"},
        {"q": "what is a cat", "a": "a small cat is a cat"},  # cut: 4 prompt tokens + 4 of 7
        {"q": "the cat sat on a mat big red", "a": "yes"},  # the prompt alone fills max_length
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "prompt": "q", "completion": "a", "max_length": 8})
    with caplog.at_level(logging.WARNING):
        data = task().prepare(recipe, word_tokenizer())
    first = ids("how are you") + ids("fine thanks") + [EOS]
    second = ids("what is a cat") + ids("a small cat is")
    assert columns(data.train) == [
        (first, [IGNORED] * 3 + ids("fine thanks") + [EOS], 3),
        (second, [IGNORED] * 4 + ids("a small cat is"), 4),
    ]
    assert "1 of 3 examples dropped: their prompt fills data.max_length=8 tokens" in caplog.text
    assert f"{recipe.path}: data.train" in caplog.text
    # A vocabulary trained on the data (model.tokenizer.train_wordpiece) reads prompts and completions.
    assert task().tokenizer_texts(recipe) == [row["q"] for row in rows] + [row["a"] for row in rows]


def test_chat_with_generation_blocks_counts_every_assistant_turn(tmp_path):
    conversation = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "fine thanks"},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", [{"chat": conversation}])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "messages": "chat", "max_length": 64})
    data = task().prepare(recipe, word_tokenizer(chat_template=MASKED_TEMPLATE))
    (input_ids, labels, prompt_length) = columns(data.train)[0]
    rendered = "<|user|> hello <|end|> <|assistant|> hi <|end|> <|user|> how are you <|end|> <|assistant|> fine thanks <|end|>"
    assert input_ids == ids(rendered)
    counted = [token for token, label in zip(input_ids, labels) if label != IGNORED]
    assert counted == ids("hi <|end|> fine thanks <|end|>")
    assert labels[:4] == [IGNORED] * 4 and labels[6:12] == [IGNORED] * 6
    # The prompt of the last assistant turn: everything before "fine thanks".
    assert prompt_length == len(ids("<|user|> hello <|end|> <|assistant|> hi <|end|> <|user|> how are you <|end|> <|assistant|>"))


def test_chat_without_generation_blocks_learns_the_last_assistant_message(tmp_path, caplog):
    conversations = [
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "how are you"},
            {"role": "assistant", "content": "fine thanks"},
        ],
        [{"role": "user", "content": "hello"}],  # no assistant message: dropped
    ]
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": chat} for chat in conversations])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "messages": "messages", "max_length": 64})
    with caplog.at_level(logging.WARNING):
        data = task().prepare(recipe, word_tokenizer(chat_template=PLAIN_TEMPLATE))
    prompt = ids("<|user|> hello <|end|> <|assistant|> hi <|end|> <|user|> how are you <|end|> <|assistant|>")
    completion = ids("fine thanks <|end|>")
    assert columns(data.train) == [(prompt + completion, [IGNORED] * len(prompt) + completion, len(prompt))]
    assert "1 of 2 examples dropped" in caplog.text


def test_messages_without_a_chat_template_name_data_messages(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "messages": "messages"})
    with pytest.raises(DataError) as caught:
        task().prepare(recipe, word_tokenizer())
    assert str(caught.value) == (
        f"{recipe.path}: data.messages: the tokenizer has no chat template, so chat messages cannot be rendered — use "
        f"a tokenizer with a chat_template (a chat model's tokenizer), or give the data as prompt/completion columns "
        f"(data.prompt, data.completion)"
    )


def test_messages_that_are_not_a_list_of_messages(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": "hello"}])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "messages": "messages"})
    with pytest.raises(DataError) as caught:
        task().prepare(recipe, word_tokenizer(chat_template=MASKED_TEMPLATE))
    assert str(caught.value) == (
        f"{recipe.path}: data.train: example 0 (0-based): data.messages must hold a non-empty list of "
        f'{{"role": …, "content": …}} messages, found str — use a jsonl file or a hub dataset with a list of '
        f"messages per example"
    )


def test_every_prompt_too_long_is_an_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "the cat sat on a mat big red", "completion": "yes"}])
    recipe = lm_recipe(tmp_path, {"train": {"path": str(train)}, "prompt": "prompt", "completion": "completion", "max_length": 8})
    with pytest.raises(DataError) as caught:
        task().prepare(recipe, word_tokenizer())
    assert str(caught.value) == (
        f"{recipe.path}: data.train: no example has a completion token within data.max_length=8 — raise "
        f"data.max_length or shorten the prompts"
    )


def test_recipe_problems_of_the_columns(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "hi", "completion": "hi", "messages": []}])
    recipe = lm_recipe(
        tmp_path,
        {"train": {"path": str(train)}, "prompt": "prompt", "messages": "messages"},
        teacher={"checkpoint": "unused"},
        student={"config": tiny_gpt2()},
        distillation={"kind": "basic", "probability_shift": True},
        model=None,
    )
    # Reported by the build with every other name problem, before any model is loaded.
    with pytest.raises(RecipeError) as caught:
        build_run(recipe, tmp_path / "out")
    assert [line.strip() for line in str(caught.value).splitlines()] == [
        "3 recipe problems:",
        f"{recipe.path}: data.completion: data.prompt is given, so name the completion column too (data.completion)",
        f"{recipe.path}: data.messages: give either chat messages (data.messages) or prompt/completion columns "
        f"(data.prompt, data.completion), not both",
        f"{recipe.path}: distillation.probability_shift: not available for task causal_lm (next-token logits over a "
        f"vocabulary) — remove it, or set it to false",
    ]


def test_a_missing_column_is_reported_when_the_recipe_loads(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "hi", "answer": "hi"}])
    with pytest.raises(BrewerError) as caught:
        lm_recipe(tmp_path, {"train": {"path": str(train)}, "prompt": "prompt", "completion": "answer"})
    assert "data.prompt: prompt column 'prompt' is not in data.train" in str(caught.value)


# ============================================================================= batches and logits


def test_collate_pads_right_with_eos_when_there_is_no_pad_token_and_masks_shifted_labels():
    tokenizer = word_tokenizer(pad=False)
    lm = task()
    items = [
        {"input_ids": [7, 8, 9], "attention_mask": [1, 1, 1], "labels": [-100, 8, 9], "prompt_length": 1, "index": 0},
        {"input_ids": [10], "attention_mask": [1], "labels": [10], "prompt_length": 0, "index": 1},
    ]
    batch = lm.collate(tokenizer)(items)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [10, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 8, 9], [10, -100, -100]]
    assert batch["prompt_length"].tolist() == [1, 0]
    assert lm.kd_mask(batch).tolist() == [[True, True], [False, False]]
    logits = torch.randn(2, 3, 5)
    assert torch.equal(lm.logits(type("Out", (), {"logits": logits})()), logits[:, :-1])


def test_perplexity_and_token_accuracy_are_token_weighted_over_the_split(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    rows = [
        {"prompt": "how are you", "completion": "fine thanks"},
        {"prompt": "hi", "completion": "hello how are you fine"},
        {"prompt": "what is a cat", "completion": "a cat"},
    ]
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    data_section = {"train": {"path": str(path)}, "eval": {"path": str(path)}, "prompt": "prompt", "completion": "completion"}
    recipe = lm_recipe(tmp_path, data_section)
    tokenizer = word_tokenizer()
    lm = task()
    data = lm.prepare_eval(recipe, tokenizer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    setup = EvalSetup(lm, data, lm.collate(tokenizer), batch_size=2)
    metrics = evaluate_outputs(
        setup,
        lambda batch: {"model": lm.logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))},
        "cpu",
    )["model"]
    # Plain formula, one example at a time: −log p(token | the tokens before it) for each completion token.
    nll, tokens, correct = 0.0, 0, 0
    for input_ids, labels, _ in columns(data.eval):
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([input_ids])).logits[0].double().log_softmax(-1)
        for position in range(1, len(input_ids)):
            if labels[position] != IGNORED:
                nll -= float(log_probs[position - 1, labels[position]])
                tokens += 1
                correct += int(log_probs[position - 1].argmax()) == labels[position]
    assert tokens == 3 + 6 + 3
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert metrics["token_accuracy"] == pytest.approx(correct / tokens)


# ============================================================================= runs end to end


def corpus_rows(count: int) -> list[dict[str, str]]:
    sentences = ["the cat sat on a mat", "the dog ran on a mat", "a big red cat", "a small blue dog", "hello how are you"]
    return [{"prompt": sentences[i % 5], "completion": sentences[(i + 1) % 5]} for i in range(count)]


def run_recipe(tmp_path: Path, **sections: Any) -> Path:
    train = write_jsonl(tmp_path / "train.jsonl", corpus_rows(24))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", corpus_rows(6))
    raw: dict[str, Any] = {
        "name": "lm",
        "task": {"kind": "causal_lm", "generations": 2, "max_new_tokens": 4},
        "data": {
            "train": {"path": str(train)},
            "eval": {"path": str(evaluation)},
            "prompt": "prompt",
            "completion": "completion",
            "max_length": 32,
        },
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "progress": False, "seed": 0},
    }
    raw.update(sections)
    return write_recipe(tmp_path, raw)


def save_gpt2(directory: Path, tokenizer_path: Path, seed: int, **config: Any) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    settings = {key: value for key, value in tiny_gpt2(**config).items() if key != "model_type"}
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings)).save_pretrained(
        directory
    )
    tokenizer.save_pretrained(directory)
    return directory


def test_trainer_run_end_to_end(tmp_path, quiet_console):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from brewer_cli.evaluate_command import evaluate

    recipe_path = run_recipe(
        tmp_path,
        model={"config": tiny_gpt2(), "tokenizer": {"path": str(tokenizer_dir(tmp_path))}},
        distillation={"kind": "trainer"},
    )
    recipe = load_recipe(recipe_path, ["training.epochs=10", "training.learning_rate=1e-2"])
    losses = losses_on_repeated_batch(build_run(recipe, tmp_path / "probe"), steps=20, learning_rate=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses

    summary = distill(recipe, tmp_path / "runs", console=quiet_console)
    model = summary["model"]
    assert summary["metric"] == "perplexity"
    assert set(model["metrics"]) == {"perplexity", "token_accuracy"}
    # Trained on the same cycle of sentences: far better than uniform over the vocabulary.
    assert model["metrics"]["perplexity"] < len(SPECIALS + WORDS) / 2
    assert [sorted(entry) for entry in model["generations"]] == [["completion", "prompt"]] * 2
    assert model["generations"][0]["prompt"] == "the cat sat on a mat"
    written = json.loads((tmp_path / "runs" / "lm" / "summary.json").read_text())
    assert written["model"]["generations"] == model["generations"]

    final = tmp_path / "runs" / "lm" / "final"
    card = (final / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "text-generation"
    loaded = AutoModelForCausalLM.from_pretrained(final)
    generator = pipeline("text-generation", model=loaded, tokenizer=AutoTokenizer.from_pretrained(final))
    text = generator("the cat sat", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert text.startswith("the cat sat")

    report = evaluate(str(tmp_path / "runs" / "lm"), console=quiet_console)
    assert report["model"]["metrics"]["perplexity"] == pytest.approx(model["metrics"]["perplexity"], rel=1e-5)
    # The resolved recipe (data.text written out beside the prompt/completion columns) loads with its
    # inputs checked, and another eval file is read the recipe's way.
    load_recipe(tmp_path / "runs" / "lm" / "recipe.yaml")
    other = write_jsonl(tmp_path / "other.jsonl", corpus_rows(3))
    report = evaluate(str(tmp_path / "runs" / "lm"), data_path=str(other), console=quiet_console)
    assert report["examples"] == 3 and report["model"]["metrics"]["perplexity"] > 0


def test_generations_are_final_students_when_final_is_the_best_checkpoint(tmp_path, quiet_console):
    """A large learning rate makes token accuracy peak before the last step (seeded, so always at the
    same step): final/ is that earlier (best) checkpoint, and the summary's generations are its own,
    not those of the last step's model still in memory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe_path = run_recipe(
        tmp_path,
        model={"config": tiny_gpt2(), "tokenizer": {"path": str(tokenizer_dir(tmp_path))}},
        distillation={"kind": "trainer"},
    )
    overrides = [
        "training.max_steps=6",
        "training.eval_every=1",
        "training.learning_rate=0.1",
        "training.warmup=0",
        "training.metric_for_best=token_accuracy",
    ]
    recipe = load_recipe(recipe_path, overrides)
    summary = distill(recipe, tmp_path / "runs", console=quiet_console)
    assert summary["final"]["step"] < summary["steps"], summary["best"]
    final = tmp_path / "runs" / "lm" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    lm = TASKS.get("causal_lm")(recipe.task)
    expected = lm.generations(AutoModelForCausalLM.from_pretrained(final), tokenizer, lm.prepare_eval(recipe, tokenizer))
    assert summary["model"]["generations"] == expected


def test_basic_distillation_end_to_end(tmp_path, quiet_console):
    teacher = save_gpt2(tmp_path / "teacher", tokenizer_dir(tmp_path), seed=1, n_embd=48, n_layer=2, initializer_range=0.2)
    recipe_path = run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"config": tiny_gpt2(n_embd=16, n_layer=1)},
        distillation={"kind": "basic", "kd_loss": "kl", "temperature": 1.0, "hard_label_weight": 0.0},
    )
    recipe = load_recipe(recipe_path)
    run = build_run(recipe, tmp_path / "probe")
    assert run.teacher.model.__class__.__name__ == "GPT2LMHeadModel"
    batch = one_batch(run, 8)
    student = run.distiller.student_features(batch, with_labels=True)
    assert student.logits.shape[:2] == run.task.kd_mask(batch).shape
    losses = losses_on_repeated_batch(run, steps=30, learning_rate=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses

    summary = distill(recipe, tmp_path / "runs", console=quiet_console)
    assert summary["teacher"]["metrics"]["perplexity"] > 0
    assert summary["student"]["metrics"]["perplexity"] > 0
    student_prompts = [entry["prompt"] for entry in summary["student"]["generations"]]
    assert student_prompts == [entry["prompt"] for entry in summary["teacher"]["generations"]]
    assert len(student_prompts) == 2


def test_llama_student_distilled_from_a_gpt2_teacher(tmp_path, quiet_console):
    """Logit KD needs only the shared tokenizer: a Llama-shaped student (grouped-query attention,
    RoPE, gated MLP) learns from a GPT-2 teacher."""
    teacher = save_gpt2(tmp_path / "teacher", tokenizer_dir(tmp_path), seed=1, n_embd=48, initializer_range=0.2)
    llama = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
    }
    recipe_path = run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"config": llama},
        distillation={"kind": "basic", "kd_loss": "ce", "temperature": 2.0, "hard_label_weight": 0.5},
    )
    run = build_run(load_recipe(recipe_path), tmp_path / "probe")
    assert run.student.model.__class__.__name__ == "LlamaForCausalLM"
    losses = losses_on_repeated_batch(run, steps=30, learning_rate=1e-2)
    assert losses[-1] < 0.8 * losses[0], losses
    summary = distill(load_recipe(recipe_path), tmp_path / "runs", console=quiet_console)
    assert len(summary["student"]["generations"]) == 2


EVAL_SCRIPT = """
import json, sys
import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel
sys.path.insert(0, sys.argv[1])
from brewer_cli.evaluation import EvalSetup, evaluate_outputs
from tests.test_causal_lm import eval_setup_of_uneven_examples
lm, setup = eval_setup_of_uneven_examples()
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
accelerator = Accelerator(cpu=True) if len(sys.argv) > 3 else None
outputs = lambda batch: {"model": lm.logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))}
metrics = evaluate_outputs(setup, outputs, "cpu", accelerator)["model"]
argmax = None
if accelerator is not None:
    # Token-level arg-max ids (token classification) of different lengths on the two processes.
    from brewer_cli.evaluation import _gather_predictions
    rank = accelerator.process_index
    gathered = _gather_predictions(accelerator, torch.full((1, 3 + rank), rank, dtype=torch.long))
    argmax = [str(gathered.dtype), gathered.tolist()]
if accelerator is None or accelerator.is_main_process:
    processes = accelerator.num_processes if accelerator is not None else 1
    open(sys.argv[2], "w").write(json.dumps({**metrics, "processes": processes, "argmax": argmax}))
"""


def eval_setup_of_uneven_examples() -> tuple[CausalLM, EvalSetup]:
    """Five examples of different lengths in batches of two: over two processes the shards differ
    in length and the last batch is padded with a repeated example, which must not count twice."""
    from brewer_cli.tasks import PreparedData, TokenizedDataset

    rows = [list(range(6, 6 + length)) for length in (3, 9, 5, 12, 4)]
    labels = [[IGNORED] * 2 + row[2:] for row in rows]
    dataset = TokenizedDataset(
        {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows], "labels": labels, "prompt_length": [2] * 5}
    )
    lm = task()
    data = PreparedData(train=TokenizedDataset({}), eval=dataset, label_names=None)
    return lm, EvalSetup(lm, data, lm.collate(word_tokenizer()), batch_size=2)


@pytest.mark.slow
def test_two_processes_reduce_per_example_sums_before_gathering(tmp_path):
    """Perplexity over two CPU processes (gloo) equals one process's: each reduces its logits to
    per-example sums, and only those are gathered (duplicates of the padded last batch dropped)."""
    import subprocess
    import sys

    script = tmp_path / "evaluate.py"
    script.write_text(EVAL_SCRIPT)
    root = str(Path(__file__).resolve().parent.parent)
    environment = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), root, str(one)], check=True, env=environment, timeout=300)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launched = subprocess.run(
        [*launcher, str(script), root, str(two), "distributed"], env=environment, capture_output=True, text=True, timeout=300
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    single, several = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["processes"], several["processes"]) == (1, 2)
    # Padded with -1 in their own dtype: both processes gather int64 (a float pad would mix dtypes).
    assert several["argmax"] == ["torch.int64", [[0, 0, 0, -1], [1, 1, 1, 1]]]
    assert several["perplexity"] == pytest.approx(single["perplexity"], rel=1e-9)
    assert several["token_accuracy"] == single["token_accuracy"]


def test_registered_with_its_interfaces():
    lm = TASKS.get("causal_lm")
    assert lm is CausalLM
    assert (lm.auto_class_name, lm.primary_metric, lm.greater_is_better, lm.generates_text) == (
        "AutoModelForCausalLM",
        "perplexity",
        False,
        True,
    )
