"""Data in Arrow (issue 17): readers that produce `datasets.Dataset`s, the tokenization cache,
packing for general distillation, the epoch order on stored lengths, and `brewer cache`."""

from __future__ import annotations

import io
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from brewer_cli.cache_command import list_cache
from brewer_cli.cli import app
from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource, validate_recipe
from brewer_cli.tasks import TASKS
from brewer_cli.tasks import data as data_module
from brewer_cli.tasks.data import read_source
from brewer_cli.tasks.ordering import EpochSampler
from brewer_cli.tasks.tokenized_cache import entries


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("BREWER_CACHE", str(directory))
    return directory


def classification_recipe(tmp_path, train_text: str, **data):
    (tmp_path / "train.tsv").write_text(train_text, encoding="utf-8")
    raw = {
        "name": "data",
        "task": {"kind": "sequence_classification"},
        "data": {"train": {"path": str(tmp_path / "train.tsv")}, "max_length": 16, "text": "sentence", **data},
        "model": {"config": {"model_type": "bert", "hidden_size": 16}},
        "distillation": {"kind": "trainer"},
    }
    return validate_recipe(raw, tmp_path / "recipe.yaml")


def word_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


# ----------------------------------------------------------------------------- readers


def test_tsv_keeps_glue_semantics_bom_header_and_bare_quotes(tmp_path):
    recipe = classification_recipe(tmp_path, "\ufeffsentence\tlabel\nit 's \"great\t1\nbad\t0\n")
    path = tmp_path / "train.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rows = read_source(DataSource(path=str(path)), recipe, "data.train")
    assert rows.column_names == ["sentence", "label"]  # no "\ufeffsentence"
    assert rows.to_list() == [{"sentence": "it 's \"great", "label": "1"}, {"sentence": "bad", "label": "0"}]


@pytest.mark.parametrize("on_disk", [False, True])
def test_large_files_are_written_to_arrow_and_give_the_same_rows_and_errors(tmp_path, cache, monkeypatch, on_disk):
    """Above ON_DISK_BYTES a file is read row by row into an Arrow file under the cache (memory-mapped),
    below it into memory; the rows and the line-numbered errors are the same either way."""
    if on_disk:
        monkeypatch.setattr(data_module, "ON_DISK_BYTES", 0)
    lines = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(50))
    recipe = classification_recipe(tmp_path, "sentence\tlabel\n" + lines)
    rows = read_source(recipe.data.train, recipe, "data.train")
    assert len(rows) == 50 and rows[7] == {"sentence": "sentence number 7", "label": "1"}
    assert bool(rows.cache_files) == on_disk
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\n" + lines + "one\ttwo\tthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:52: has 3 fields, expected 2 \(sentence, label\) — a value contains a tab"):
        read_source(DataSource(path=str(bad)), recipe, "data.train")


def test_large_text_file_with_a_bad_byte_names_line_and_byte(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(data_module, "ON_DISK_BYTES", 0)
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first line\nsecond \xff line\n")
    recipe = classification_recipe(tmp_path, "sentence\tlabel\na\t0\n")
    with pytest.raises(DataError, match=r"corpus.txt:2: not valid UTF-8 — byte 18 \(line 2, column 8\) is 0xff"):
        read_source(DataSource(path=str(path)), recipe, "data.train")


def test_text_files_are_one_row_per_non_blank_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("  one  \n\n two\r\nthree", encoding="utf-8")
    recipe = classification_recipe(tmp_path, "sentence\tlabel\na\t0\n")
    assert read_source(DataSource(path=str(path)), recipe, "data.train")["text"] == ["one", "two", "three"]


# ----------------------------------------------------------------------------- the tokenization cache


def test_a_second_preparation_reads_the_cache_and_a_changed_file_or_setting_does_not(tmp_path, cache, tokenizer_dir):
    tokenizer = word_tokenizer(tokenizer_dir)
    recipe = classification_recipe(tmp_path, "sentence\tlabel\nthe film was great\t1\nthe film was dull\t0\n")
    task = TASKS.get("sequence_classification")(recipe.task)
    first = task.prepare(recipe, tokenizer)
    second = task.prepare(recipe, tokenizer)
    assert first.extra["tokenization_cache"].hit is False and second.extra["tokenization_cache"].hit is True
    assert second.train.table.to_pydict() == first.train.table.to_pydict()
    # Memory-mapped from the entry's files, not copied into memory.
    entry = second.extra["tokenization_cache"].directory
    assert str(entry / "train-00000.arrow") in Path("/proc/self/maps").read_text()
    assert second.label_names == ["0", "1"]
    assert "tokenization cache: hit — read from" in second.extra["plan_lines"][-1]
    # The same file elsewhere is the same data; other content or another max_length is not.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "train.tsv").write_bytes((tmp_path / "train.tsv").read_bytes())
    assert (
        task.prepare(classification_recipe(moved, (moved / "train.tsv").read_text()), tokenizer).extra["tokenization_cache"].hit
    )
    changed = classification_recipe(tmp_path, "sentence\tlabel\nthe film was great\t1\nthe film was bad\t0\n")
    assert not task.prepare(changed, tokenizer).extra["tokenization_cache"].hit
    longer = classification_recipe(tmp_path, "sentence\tlabel\nthe film was great\t1\nthe film was bad\t0\n", max_length=32)
    assert not task.prepare(longer, tokenizer).extra["tokenization_cache"].hit
    assert len(entries()) == 3


def test_a_preparation_served_by_the_cache_does_not_import_datasets(tmp_path, cache, tokenizer_dir):
    """A hit is read with pyarrow alone: a run whose data is in the cache never loads `datasets`
    and pandas (about 50 MiB of a training process's peak memory), and reads the same examples."""
    import json
    import subprocess
    import sys

    recipe = classification_recipe(tmp_path, "sentence\tlabel\nthe film was great\t1\nthe film was dull\t0\nfine\t1\n")
    task = TASKS.get("sequence_classification")(recipe.task)
    first = task.prepare(recipe, word_tokenizer(tokenizer_dir))
    expected = {"rows": first.train.__getitems__([2, 0]), "lengths": first.train.lengths().tolist()}
    code = f"""
import json, sys
from transformers import AutoTokenizer
from brewer_cli.recipe import validate_recipe
from brewer_cli.tasks import TASKS
recipe = validate_recipe(json.loads({json.dumps(json.dumps(recipe.model_dump(mode="json", exclude_none=True)))}), {str(tmp_path / "recipe.yaml")!r})
data = TASKS.get("sequence_classification")(recipe.task).prepare(recipe, AutoTokenizer.from_pretrained({str(tokenizer_dir)!r}))
print(json.dumps({{
    "hit": data.extra["tokenization_cache"].hit,
    "rows": data.train.__getitems__([2, 0]),
    "lengths": data.train.lengths().tolist(),
    "loaded": sorted(name for name in ("datasets", "pandas") if name in sys.modules),
}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"hit": True, **expected, "loaded": []}, result.stderr
    assert expected["rows"][0]["index"] == 2 and expected["rows"][0]["labels"] == 1


def test_warnings_of_the_tokenization_are_shown_again_on_a_hit(tmp_path, cache, caplog):
    from tests.task_fixtures import ner_sentences, tokenizer, write_conll

    write_conll(tmp_path / "train.conll", ner_sentences(8, 0))
    raw = {
        "name": "ner",
        "task": {"kind": "token_classification"},
        "data": {"train": {"path": str(tmp_path / "train.conll")}, "max_length": 8},
        "model": {"config": {"model_type": "bert", "hidden_size": 16}},
        "distillation": {"kind": "trainer"},
    }
    recipe = validate_recipe(raw, tmp_path / "recipe.yaml")
    task = TASKS.get("token_classification")(recipe.task)
    word_pieces = tokenizer()
    with caplog.at_level(logging.WARNING):
        task.prepare(recipe, word_pieces)
    first = [record.getMessage() for record in caplog.records if "longer than data.max_length" in record.getMessage()]
    caplog.clear()
    fresh = TASKS.get("token_classification")(recipe.task)
    with caplog.at_level(logging.WARNING):
        prepared = fresh.prepare(recipe, word_pieces)
    again = [record.getMessage() for record in caplog.records if "longer than data.max_length" in record.getMessage()]
    assert prepared.extra["tokenization_cache"].hit and first and again == first
    assert fresh.entity_tags == task.entity_tags  # what preparing set on the task comes back too


def test_several_processes_tokenize_to_the_same_examples(tmp_path, cache, tokenizer_dir):
    import os

    environment = os.environ
    tokenizer = word_tokenizer(tokenizer_dir)
    lines = "".join(f"the film {'was great' if i % 2 else 'was dull'} number {i}\t{i % 2}\n" for i in range(40))
    one = classification_recipe(tmp_path, "sentence\tlabel\n" + lines, num_proc=1)
    two = classification_recipe(tmp_path, "sentence\tlabel\n" + lines, num_proc=2)
    task = TASKS.get("sequence_classification")(one.task)
    serial = task.prepare(one, tokenizer)
    # num_proc is not part of the key (the examples do not depend on it): clear the entry in between.
    shutil.rmtree(serial.extra["tokenization_cache"].directory)
    parallel = task.prepare(two, tokenizer)
    assert not parallel.extra["tokenization_cache"].hit
    assert parallel.train.table.to_pydict() == serial.train.table.to_pydict()
    # `datasets`' worker pool swaps os.environ for a copy; brewer puts the real one back.
    assert os.environ is environment and os.environ["BREWER_CACHE"] == str(cache)


def test_dry_run_says_whether_the_cache_hit(tmp_path, cache, teacher_dir):
    from brewer_cli.commands import distill
    from brewer_cli.recipe import load_recipe
    from tests.test_training import distill_recipe, write_recipe

    recipe = load_recipe(write_recipe(tmp_path, distill_recipe(teacher_dir)))
    outputs = []
    for _ in range(2):
        output = io.StringIO()
        distill(recipe, tmp_path / "runs", dry_run=True, console=Console(file=output, width=300))
        outputs.append(output.getvalue())
    assert "tokenization cache: miss — tokenized in" in outputs[0]
    assert "tokenization cache: hit — read from" in outputs[1]


# ----------------------------------------------------------------------------- packing


def general_recipe(tmp_path, lines, **data):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = {
        "name": "general",
        "task": {"kind": "masked_lm"},
        "data": {"train": {"path": str(path)}, "max_length": 16, **data},
        "teacher": {"checkpoint": "unused"},
        "student": {"config": {"model_type": "bert", "hidden_size": 16}},
        "distillation": {"kind": "general", "kd_weight": 0, "matches": [{"uniform": True, "loss": "tinybert_hidden"}]},
    }
    return validate_recipe(raw, tmp_path / "recipe.yaml")


def test_masked_lm_packs_lines_into_blocks_with_separators(tmp_path, cache, tokenizer_dir):
    tokenizer = word_tokenizer(tokenizer_dir)
    rng = random.Random(0)
    words = ["the", "film", "was", "great", "dull", "but", "not"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    recipe = general_recipe(tmp_path, [*lines[:100], "", "   ", *lines[100:]])
    prepared = TASKS.get("masked_lm")(recipe.task).prepare(recipe, tokenizer)
    blocks = prepared.train.column("input_ids")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert all(len(block) == 16 for block in blocks[:-1]) and 2 < len(blocks[-1]) <= 16
    assert all(block[0] == cls and block[-1] == sep for block in blocks)
    # Inside the blocks: every line's tokens, each followed by [SEP], in order, none lost or repeated.
    stream = [token for block in blocks for token in block[1:-1]]
    expected = [token for line in lines for token in (*tokenizer(line, add_special_tokens=False)["input_ids"], sep)]
    assert stream == expected
    assert prepared.train.column("attention_mask") == [[1] * len(block) for block in blocks]
    assert prepared.train.column("token_type_ids") == [[0] * len(block) for block in blocks]
    # More lines than one map batch (RECORD_BATCH_ROWS = 20,000): the carry crosses the batches.
    (tmp_path / "many").mkdir()
    many = general_recipe(tmp_path / "many", lines * 70)
    packed = TASKS.get("masked_lm")(many.task).prepare(many, tokenizer).train.column("input_ids")
    assert [token for block in packed for token in block[1:-1]] == expected * 70
    # One record batch of blocks per 20,000 lines (two here) and one for the last block — not one
    # per 1,000 lines (`datasets`' default), whose headers cost memory when the file is opened
    # (batched_map's docstring).
    import pyarrow

    [entry] = [item for item in entries() if item.record["rows"]["train"] == len(packed)]
    [stored] = entry.directory.glob("train-*.arrow")
    with pyarrow.OSFile(str(stored)) as source:
        assert len(list(pyarrow.ipc.open_stream(source))) == 3


def test_masked_lm_without_packing_is_one_example_per_line(tmp_path, cache, tokenizer_dir):
    tokenizer = word_tokenizer(tokenizer_dir)
    recipe = general_recipe(tmp_path, ["the film was great", "", "the film was dull but not great at all " * 3], packing=False)
    prepared = TASKS.get("masked_lm")(recipe.task).prepare(recipe, tokenizer)
    ids = prepared.train.column("input_ids")
    assert ids[0] == tokenizer("the film was great")["input_ids"]
    assert len(ids) == 2 and len(ids[1]) == 16 and ids[1][-1] == tokenizer.sep_token_id


# ----------------------------------------------------------------------------- order on stored lengths


def _reference_order(size, seed, batch_size, lengths, epoch):
    """EpochSampler's order as it was computed over Python lists (before NumPy)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    window = batch_size * 50
    grouped = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        grouped.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    short = grouped.pop() if grouped and len(grouped[-1]) < batch_size else None
    batch_order = torch.randperm(len(grouped), generator=generator).tolist()
    return [index for b in batch_order for index in grouped[b]] + (short or [])


@pytest.mark.parametrize("size,batch_size", [(1, 4), (37, 4), (400, 8), (1000, 3), (2048, 16)])
def test_epoch_order_is_the_same_as_before_over_numpy_lengths(size, batch_size):
    lengths = np.random.default_rng(size).integers(1, 20, size)
    for epoch in (0, 3):
        sampler = EpochSampler(size, 42, batch_size, lengths=lengths)
        sampler.set_epoch(epoch)
        assert list(sampler) == _reference_order(size, 42, batch_size, lengths.tolist(), epoch)
        plain = EpochSampler(size, 42, batch_size)
        plain.set_epoch(epoch)
        generator = torch.Generator().manual_seed(42 * 100_003 + epoch)
        assert list(plain) == torch.randperm(size, generator=generator).tolist()


# ----------------------------------------------------------------------------- brewer cache


def test_cache_list_and_clear(tmp_path, cache, tokenizer_dir):
    tokenizer = word_tokenizer(tokenizer_dir)
    recipe = classification_recipe(tmp_path, "sentence\tlabel\nthe film was great\t1\nthe film was dull\t0\n")
    TASKS.get("sequence_classification")(recipe.task).prepare(recipe, tokenizer)
    (cache / "augment").mkdir(parents=True)
    (cache / "augment" / "abc.jsonl").write_text('{"text": "x"}\n')
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list"])
    assert listed.exit_code == 0 and "2 items" in listed.output, listed.output
    output = io.StringIO()
    list_cache(None, Console(file=output, width=400))
    assert "sequence_classification · train: file " in output.getvalue() and "rows train 2" in output.getvalue()
    assert "abc.jsonl" in output.getvalue()
    kept = runner.invoke(app, ["cache", "clear", "augment", "--older-than", "1"])
    assert kept.exit_code == 0 and "removed 0 items" in kept.output
    cleared = runner.invoke(app, ["cache", "clear", "tokenized"])
    assert cleared.exit_code == 0 and "removed 1 items" in cleared.output
    assert entries() == [] and (cache / "augment" / "abc.jsonl").is_file()
    wrong = runner.invoke(app, ["cache", "clear", "tokens"])
    assert wrong.exit_code == 2
    assert "unknown part 'tokens' — the parts are tokenized, sources, augment, sequence_kd" in wrong.output


@pytest.mark.parametrize(
    "count,batch_size,processes,sizes",
    [
        (64, 8, 2, [8] * 8),  # steps filled: Accelerate's own batches
        (70, 8, 2, [8] * 8 + [3, 3]),  # 6 left: shared out
        (65, 8, 2, [8] * 6 + [5, 4, 4, 4]),  # 1 left, fewer than processes: the last two steps share
        (7, 1, 3, [1] * 6 + [1]),  # batches of one, 1 left: dealt out as Accelerate does (a repeat)
    ],
)
def test_process_batches_read_every_example_once(count, batch_size, processes, sizes):
    from accelerate.data_loader import BatchSamplerShard

    from brewer_cli.tasks.ordering import ProcessBatches

    batches = ProcessBatches(EpochSampler(count, 3, batch_size), batch_size, processes)
    assert batches.sizes() == sizes and sum(sizes) == count
    order = [index for batch in batches for index in batch]
    assert order == list(EpochSampler(count, 3, batch_size))
    shares = [[index for batch in BatchSamplerShard(batches, processes, rank) for index in batch] for rank in range(processes)]
    assert len({len(list(BatchSamplerShard(batches, processes, rank))) for rank in range(processes)}) == 1
    if len(sizes) % processes == 0:
        assert sorted(index for share in shares for index in share) == list(range(count))


def test_json_columns_of_mixed_types_are_read_as_text(tmp_path, cache, tokenizer_dir):
    """Arrow keeps one type per column; labels written as 1 and "pos" in one file still read."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": "pos"}\n', encoding="utf-8")
    recipe = classification_recipe(tmp_path, "sentence\tlabel\na\t0\n")
    rows = read_source(DataSource(path=str(path)), recipe, "data.train")
    assert rows["label"] == ["1", "pos"]
    prepared = TASKS.get("sequence_classification")(recipe.task).prepare(
        recipe.model_copy(update={"data": recipe.data.model_copy(update={"train": DataSource(path=str(path))})}),
        word_tokenizer(tokenizer_dir),
    )
    assert prepared.label_names == ["1", "pos"] and prepared.train.column("labels") == [0, 1]
