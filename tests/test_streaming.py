"""Streamed general distillation (issue 17): blocks packed as the run reads a text file, an epoch
defined by steps, masking on the fly, and a resume that continues at the same stream position."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from brewer_cli.commands import distill
from brewer_cli.errors import RecipeError
from brewer_cli.recipe import load_recipe
from brewer_cli.tasks import TASKS
from brewer_cli.tasks.streams import FileLines, MaskingCollate, PackedStream
from tests.conftest import write_recipe
from tests.test_resume import _weights
from tests.test_tinybert import INTERMEDIATE, STUDENT

WORDS = ["the", "film", "was", "great", "dull", "but", "not", "a", "story", "of", "love"]


def corpus(path: Path, lines: int, seed: int) -> Path:
    rng = random.Random(seed)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) for _ in range(lines)]
    path.write_text("\n".join(line if number % 9 else "" for number, line in enumerate(text)) + "\n", encoding="utf-8")
    return path


def stream_recipe(tmp_path: Path, teacher: Path, **training) -> dict:
    return {
        "name": "streamed",
        "task": {"kind": "masked_lm", "mask_probability": 0.15},
        "data": {
            "train": {"path": str(corpus(tmp_path / "corpus.txt", 400, 0)), "streaming": True},
            "eval": {"path": str(corpus(tmp_path / "held-out.txt", 30, 1))},
            "max_length": 16,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(STUDENT)},
        "training": {
            "epochs": 2,
            "steps_per_epoch": 5,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "seed": 7,
            "progress": False,
            **training,
        },
        "distillation": dict(INTERMEDIATE),
    }


def tokenizer_of(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def test_a_stream_packs_what_the_arrow_path_packs_and_resumes_at_its_position(tmp_path, tokenizer_dir):
    tokenizer = tokenizer_of(tokenizer_dir)
    path = corpus(tmp_path / "corpus.txt", 700, 3)
    stream = PackedStream(FileLines(path, "r: data.train"), tokenizer, 16, True, "r: data.train")
    blocks = [example["input_ids"] for example, _ in zip(stream, range(60))]
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    sep = tokenizer.sep_token_id
    expected = [token for line in lines for token in (*tokenizer(line, add_special_tokens=False)["input_ids"], sep)]
    assert [token for block in blocks for token in block[1:-1]] == expected[: 60 * 14]
    # The state after block 37, restored into a fresh stream, gives blocks 38… as the first did.
    first = PackedStream(FileLines(path, "r: data.train"), tokenizer, 16, True, "r: data.train")
    for _ in zip(range(37), first):
        pass
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's state.json keeps it
    second = PackedStream(FileLines(path, "r: data.train"), tokenizer, 16, True, "r: data.train")
    second.load_state_dict(state)
    assert [example["input_ids"] for example, _ in zip(second, range(23))] == blocks[37:60]
    # Past the end of the file the stream starts a new pass: an epoch is a number of steps, not a pass.
    everything = PackedStream(FileLines(path, "r: data.train"), tokenizer, 16, True, "r: data.train")
    count = -(-len(expected) // 14) + 5
    assert [example["index"] for example, _ in zip(everything, range(count))] == list(range(count))
    assert everything.state_dict()["pass"] == 1


def test_processes_read_disjoint_lines_that_together_are_the_file(tmp_path):
    path = corpus(tmp_path / "corpus.txt", 1000, 4)
    shares = [[text for texts, _ in FileLines(path, "r", rank, 3).batches(None) for text in texts] for rank in range(3)]
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    assert sorted(text for share in shares for text in share) == sorted(lines)
    assert sum(len(share) for share in shares) == len(lines)  # no line read twice


def test_masking_follows_the_masked_lm_collator_and_is_seeded_per_example(tokenizer_dir):
    tokenizer = tokenizer_of(tokenizer_dir)
    task = TASKS.get("masked_lm")
    masking = MaskingCollate(task.collate(task, tokenizer), tokenizer, 0.15, seed=7)
    items = [
        {
            "input_ids": [tokenizer.cls_token_id, *range(10, 10 + 60), tokenizer.sep_token_id],
            "attention_mask": [1] * 62,
            "index": i,
        }
        for i in range(200)
    ]
    batch = masking(items)
    original = torch.tensor([item["input_ids"] for item in items])
    changed = batch["input_ids"] != original
    masked = batch["input_ids"] == tokenizer.mask_token_id
    # Special tokens are never chosen; about 15% × 90% of the tokens change, 80/90 of them to [MASK].
    assert not changed[:, 0].any() and not changed[:, -1].any()
    assert 0.12 < changed.float().mean() * 62 / 60 < 0.15
    assert 0.83 < masked.sum() / changed.sum() < 0.95
    # The same example gets the same masks in any batch; another epoch draws others.
    assert torch.equal(masking(items[5:6])["input_ids"][0], batch["input_ids"][5])
    masking.set_epoch(1)
    assert not torch.equal(masking(items)["input_ids"], batch["input_ids"])
    evaluation = masking.for_evaluation()
    evaluation.set_epoch(3)
    masking.set_epoch(0)
    assert torch.equal(evaluation(items)["input_ids"], masking(items)["input_ids"])


def test_a_streamed_run_resumed_after_a_crash_matches_an_uninterrupted_one(tmp_path, teacher_dir, quiet_console):
    recipe = load_recipe(write_recipe(tmp_path, stream_recipe(tmp_path, teacher_dir, save_every=3, keep_checkpoints=10)))
    output = io.StringIO()
    distill(recipe, tmp_path / "full", dry_run=True, console=Console(file=output, width=400))
    plan = output.getvalue()
    assert "training blocks of 16 tokens streamed (read as the run goes; an epoch is 5 steps)" in plan
    assert "data.train is streamed: read once, in order" in plan
    summary = distill(recipe, tmp_path / "full", console=quiet_console)
    assert summary["steps"] == 10
    full = tmp_path / "full" / recipe.name
    state = json.loads((full / "checkpoints" / "step-6" / "state.json").read_text())
    (position,) = state["data_state"]
    # 6 steps × 4 blocks were given out, from the first pass over the file.
    assert position["blocks"] == 24 and position["pass"] == 0 and position["position"]["offset"] > 0
    crashed = tmp_path / "crashed" / recipe.name
    crashed.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-6", crashed / "checkpoints" / "step-6")
    shutil.copy(full / "recipe.yaml", crashed / "recipe.yaml")
    distill(recipe, tmp_path / "crashed", resume=True, console=quiet_console)
    uninterrupted, resumed = _weights(full / "final"), _weights(crashed / "final")
    assert uninterrupted and uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"training": {"epochs": 1, "batch_size": 4}},
            "training.steps_per_epoch: a stream has no end to define an epoch — set training.steps_per_epoch",
        ),
        (
            {"distillation": {**INTERMEDIATE, "teacher_cache": "memory"}},
            "distillation.teacher_cache: memory keeps outputs to reuse, and a stream gives every block once",
        ),
        ({"data_eval_streaming": True}, "data.eval.streaming: the eval split is read whole"),
    ],
)
def test_stream_recipe_problems(tmp_path, teacher_dir, change, message):
    raw = stream_recipe(tmp_path, teacher_dir)
    if change.pop("data_eval_streaming", False):
        raw["data"]["eval"]["streaming"] = True
    raw.update(change)
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs", dry_run=True, console=Console(file=io.StringIO()))


def test_mask_probability_is_for_masked_lm_only(tmp_path, teacher_dir):
    from tests.conftest import distill_recipe

    raw = distill_recipe(teacher_dir)
    raw["task"]["mask_probability"] = 0.15
    with pytest.raises(RecipeError, match="task.mask_probability: task sequence_classification reads its text unmasked"):
        distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "runs", dry_run=True, console=Console(file=io.StringIO()))


def test_blocks_need_no_numpy_object_arrays(tmp_path, tokenizer_dir):
    """The stream's carry is an int64 array whatever the tokenizer returns (empty lines give none)."""
    tokenizer = tokenizer_of(tokenizer_dir)
    path = tmp_path / "corpus.txt"
    path.write_text("great\n\n\nthe film\n", encoding="utf-8")
    stream = PackedStream(FileLines(path, "r"), tokenizer, 8, False, "r")
    example = next(iter(stream))
    assert example["input_ids"][0] == tokenizer.cls_token_id and len(example["input_ids"]) == 8
    assert stream.state_dict()["carry"] == [int(token) for token in np.asarray(stream.state["carry"])]


# ----------------------------------------------------------------------------- two processes


def _launch(tmp_path: Path, recipe: Path) -> list[dict]:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(root / "tests" / "ddp_data_driver.py"),
        str(recipe),
        str(tmp_path / "runs"),
        str(tmp_path / "seen"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((tmp_path / f"seen-{rank}.json").read_text()) for rank in range(2)]


def test_two_processes_read_the_dataset_once_between_them(tmp_path, teacher_dir):
    """70 examples, batches of 8 per process: 4 full steps of 16 and 6 left over. Accelerate alone
    would repeat 10 examples to fill the last step; here the 6 are shared out and nothing repeats."""
    from tests.conftest import distill_recipe

    raw = distill_recipe(teacher_dir)
    raw["data"]["train"] = {"synthetic": "negation_sentiment", "examples": 70, "seed": 1}
    raw["training"].update({"epochs": 1, "batch_size": 8, "log_every": 1})
    seen = _launch(tmp_path, write_recipe(tmp_path, raw))
    first, second = (set(process["indices"]) for process in seen)
    assert len(seen[0]["indices"]) + len(seen[1]["indices"]) == 70
    assert not first & second and first | second == set(range(70))
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["processes"] == 2


def test_two_processes_stream_disjoint_lines(tmp_path, teacher_dir, tokenizer_dir):
    raw = stream_recipe(tmp_path, teacher_dir)
    raw["training"].update({"epochs": 1, "steps_per_epoch": 3})
    raw["task"]["mask_probability"] = 0.0
    seen = _launch(tmp_path, write_recipe(tmp_path, raw))
    tokenizer = tokenizer_of(tokenizer_dir)
    lines = (tmp_path / "corpus.txt").read_text().splitlines()
    for rank, process in enumerate(seen):
        assert len(process["input_ids"]) == 12  # 3 steps × 4 blocks
        # A process's blocks are its own lines (line i is read by process i mod 2), in order.
        own = [line.strip() for number, line in enumerate(lines) if number % 2 == rank and line.strip()]
        expected = [t for line in own for t in (*tokenizer(line, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id)]
        content = [token for block in process["input_ids"] for token in block[1:-1] if token != tokenizer.pad_token_id]
        assert content == expected[: len(content)]


def test_a_hub_stream_packs_like_a_file_and_resumes_from_its_state(tmp_path, tokenizer_dir, monkeypatch):
    """`hub:` with `streaming: true` reads through `datasets`' streaming IterableDataset; the
    offline test points the hub name at a local text file through the same loader (its `text`
    builder), so the streaming, sharding and resumable-state code is `datasets`' own."""
    import datasets

    from brewer_cli.recipe import DataSource
    from brewer_cli.tasks.streams import HubLines

    path = corpus(tmp_path / "corpus.txt", 500, 5)
    load = datasets.load_dataset

    def local(name, config=None, split=None, revision=None, streaming=False):
        assert (name, split, streaming) == ("local/corpus", "train", True)
        return load("text", data_files=str(path), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", local)
    tokenizer = tokenizer_of(tokenizer_dir)
    source = DataSource(hub="local/corpus", split="train", streaming=True)

    def hub_stream():
        return PackedStream(HubLines(source, "text", "r: data.train"), tokenizer, 16, True, "r")

    from_file = PackedStream(FileLines(path, "r"), tokenizer, 16, True, "r")
    expected = [example["input_ids"] for example, _ in zip(from_file, range(50))]
    stream = hub_stream()
    assert [example["input_ids"] for example, _ in zip(stream, range(50))] == expected
    first = hub_stream()
    for _ in zip(range(21), first):
        pass
    resumed = hub_stream()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [example["input_ids"] for example, _ in zip(resumed, range(29))] == expected[21:]


def test_a_streamed_split_is_not_read_to_key_the_cache(tmp_path, teacher_dir, tokenizer_dir, monkeypatch):
    """Only the eval split is stored: the streamed corpus is neither hashed nor read when keying it."""
    from brewer_cli.tasks import data as data_module

    raw = stream_recipe(tmp_path, teacher_dir)
    recipe = load_recipe(write_recipe(tmp_path, raw))
    hashed = []
    real = data_module.content_hash
    monkeypatch.setattr(data_module, "content_hash", lambda path: hashed.append(path.name) or real(path))
    prepared = TASKS.get("masked_lm")(recipe.task).prepare(recipe, tokenizer_of(tokenizer_dir))
    assert prepared.train.streamed and hashed == ["held-out.txt"]
