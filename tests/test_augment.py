"""TinyBERT data augmentation: whole words only, stop-words kept, ≤ N_a distinct variants, seeded,
labels and pairs, the masked-LM head check, word vectors, the cache and the command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brewer_cli.augment import (
    STOP_WORDS,
    MaskedLanguageModel,
    WordSplitter,
    augment_file,
    augment_rows,
)
from brewer_cli.cli import app
from brewer_cli.errors import ModelError
from brewer_cli.recipe import AugmentSpec
from tests.conftest import TINY_BERT


def save_masked_lm(directory: Path, tokenizer_dir: Path, with_head: bool = True) -> Path:
    """A tiny randomly initialized BertForMaskedLM (or, without head, a bare BertModel) with the test tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = {key: value for key, value in TINY_BERT.items() if key != "model_type"}
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings)
    torch.manual_seed(0)
    model = BertForMaskedLM(config) if with_head else BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory, tokenizer_dir) -> Path:
    return save_masked_lm(tmp_path_factory.mktemp("mlm"), tokenizer_dir)


@pytest.fixture(scope="module")
def loaded(masked_lm) -> MaskedLanguageModel:
    return MaskedLanguageModel.load(str(masked_lm), None, "--model")


def rows(count: int = 12) -> list[dict]:
    from brewer_cli.synthetic import negation_sentiment

    return [{**row, "id": number} for number, row in enumerate(negation_sentiment(count, 7))]


def spec(**changes) -> AugmentSpec:
    return AugmentSpec(**{"model": "unused", "variants": 6, "candidates": 5, "seed": 1, **changes})


def test_only_whole_non_stop_words_are_replaced(loaded):
    examples = rows()
    settings = spec()
    output = augment_rows(examples, ["text"], settings, loaded.tokenizer, loaded)
    splitter = WordSplitter(loaded.tokenizer)
    vocabulary = set(loaded.tokenizer.get_vocab())
    variants = [row for row in output if row not in examples]
    assert variants
    changed = 0
    for row in variants:
        original = splitter.words(examples[row["id"]]["text"])
        words = row["text"].split(" ")
        assert len(words) == len(original)
        for before, after in zip(original, words):
            if before == after:
                continue
            changed += 1
            assert before not in STOP_WORDS and any(character.isalnum() for character in before)
            # A replacement is one whole vocabulary word: no '##' piece, special token or punctuation.
            assert after in vocabulary and not after.startswith("##") and not after.startswith("[")
            assert len(loaded.tokenizer.tokenize(before)) == 1
    assert changed > 0


def test_variants_are_distinct_and_at_most_n_a_and_keep_labels(loaded):
    examples = rows()
    output = augment_rows(examples, ["text"], spec(variants=4), loaded.tokenizer, loaded)
    for example in examples:
        group = [row for row in output if row["id"] == example["id"]]
        assert group[0] == example  # the original first, unchanged
        texts = [row["text"] for row in group[1:]]
        assert len(texts) <= 4 and len(set(texts)) == len(texts)
        assert " ".join(WordSplitter(loaded.tokenizer).words(example["text"])) not in texts
        assert all(row["label"] == example["label"] for row in group)
    # The row order is: each original followed by its own variants.
    assert [row["id"] for row in output] == sorted(row["id"] for row in output)


def test_seeded_and_reproducible(loaded):
    examples = rows()
    first = augment_rows(examples, ["text"], spec(seed=5), loaded.tokenizer, loaded)
    again = augment_rows(examples, ["text"], spec(seed=5, batch_size=3), loaded.tokenizer, loaded)
    other = augment_rows(examples, ["text"], spec(seed=6), loaded.tokenizer, loaded)
    assert first == again  # batching does not change the result
    assert first != other


def test_pair_tasks_augment_each_text_field(loaded):
    examples = [{"premise": row["text"], "hypothesis": row["text"].split(",")[0], "label": row["label"]} for row in rows(6)]
    output = augment_rows(examples, ["premise", "hypothesis"], spec(variants=8, probability=0.6), loaded.tokenizer, loaded)
    variants = [row for row in output if row not in examples]
    splitter = WordSplitter(loaded.tokenizer)
    originals = {" ".join(splitter.words(row["premise"])): row for row in examples}
    assert any(row["premise"] not in originals for row in variants)
    assert any(
        row["hypothesis"] != " ".join(splitter.words(example["hypothesis"]))
        for example in examples
        for row in variants
        if row["label"] == example["label"]
    )
    pairs = [(row["premise"], row["hypothesis"]) for row in variants]
    assert len(pairs) == len(set(pairs))


def test_multi_piece_words_take_word_vector_neighbours(tmp_path, loaded):
    # Every word of the data gets a vector; only multi-piece words may use them when a masked LM is given.
    vectors = tmp_path / "vectors.txt"
    words = sorted({word for row in rows() for word in WordSplitter(loaded.tokenizer).words(row["text"])} | {"zzyzx", "qwertyu"})
    vectors.write_text("".join(f"{word} {len(word)} {index % 3} 1.0\n" for index, word in enumerate(words)))
    settings = spec(word_vectors=str(vectors), variants=10, probability=1.0)
    from brewer_cli.augment import WordVectors

    vector_set = WordVectors.load(str(vectors), None, "--word-vectors")
    output = augment_rows(rows(), ["text"], settings, loaded.tokenizer, loaded, vector_set)
    multi = {word for word in words if len(loaded.tokenizer.tokenize(word)) > 1 and word not in STOP_WORDS}
    assert multi, "the test data needs words of several pieces"
    replaced_multi = False
    splitter = WordSplitter(loaded.tokenizer)
    examples = rows()
    for row in output:
        original = splitter.words(examples[row["id"]]["text"])
        for before, after in zip(original, row["text"].split(" ")):
            if before in multi and before != after:
                replaced_multi = True
                assert after in words
    assert replaced_multi
    # Without word vectors, multi-piece words stay.
    plain = augment_rows(rows(), ["text"], spec(variants=10, probability=1.0), loaded.tokenizer, loaded)
    for row in plain:
        original = splitter.words(examples[row["id"]]["text"])
        assert all(after == before for before, after in zip(original, row["text"].split(" ")) if before in multi)


def test_a_checkpoint_without_masked_lm_head_is_refused(tmp_path, tokenizer_dir):
    headless = save_masked_lm(tmp_path / "encoder", tokenizer_dir, with_head=False)
    with pytest.raises(ModelError) as error:
        MaskedLanguageModel.load(str(headless), None, "data.augment.model")
    message = str(error.value)
    assert "has no masked-LM head" in message and "cls.predictions" in message and "bert-base-uncased" in message


def test_second_run_is_a_cache_hit(tmp_path, masked_lm, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    settings = spec(model=str(masked_lm), output=str(tmp_path / "out.tsv"))
    first = augment_file(data, settings, "text")
    assert not first.cached and first.rows > first.examples == 12
    written = (tmp_path / "out.tsv").read_text().splitlines()
    assert written[0].split("\t") == ["text", "label", "id"] and len(written) == first.rows + 1

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not load the masked LM")

    monkeypatch.setattr(MaskedLanguageModel, "load", refuse)
    start = time.monotonic()
    second = augment_file(data, settings, "text")
    assert second.cached and second.rows == first.rows and second.fingerprint == first.fingerprint
    assert time.monotonic() - start < 1.0
    # Other settings (or data) are another fingerprint: no stale hit.
    monkeypatch.undo()
    third = augment_file(data, spec(model=str(masked_lm), output=str(tmp_path / "out.tsv"), probability=0.9), "text")
    assert not third.cached and third.fingerprint != first.fingerprint


def test_brewer_augment_command(tmp_path, masked_lm):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"a": row["text"], "b": row["text"][:30], "label": row["label"]}) + "\n" for row in rows(5))
    )
    output = tmp_path / "augmented.jsonl"
    runner = CliRunner()
    arguments = [
        "augment",
        str(data),
        "--model",
        str(masked_lm),
        "--text",
        "a",
        "--text-pair",
        "b",
        "--variants",
        "3",
        "--output",
        str(output),
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "5 examples →" in result.output and str(output) in result.output.replace("\n", "")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert 5 < len(lines) <= 20 and set(lines[0]) == {"a", "b", "label"}
    again = runner.invoke(app, arguments)
    assert again.exit_code == 0 and "found in the cache" in again.output
    refused = runner.invoke(app, ["augment", str(data), "--text", "a"])
    assert refused.exit_code == 2 and "give `model` (a masked LM), `word_vectors`" in refused.output


def test_brewer_augment_reads_a_recipe(tmp_path, masked_lm, teacher_dir):
    from tests.conftest import distill_recipe, write_recipe

    raw = distill_recipe(teacher_dir)
    raw["data"]["train"]["examples"] = 10
    raw["data"]["augment"] = {"model": str(masked_lm), "variants": 2, "output": str(tmp_path / "train-augmented.jsonl")}
    recipe = write_recipe(tmp_path, raw)
    result = CliRunner().invoke(app, ["augment", str(recipe), "--set", "data.augment.variants=3"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "train-augmented.jsonl.fingerprint.json").read_text())
    assert record["settings"]["variants"] == 3 and record["examples"] == 10 and record["rows"] > 10
