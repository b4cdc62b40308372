"""Shared fixtures: tiny models from configs, a tokenizer trained locally, recipes written to tmp."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The tokenization cache (and every other brewer cache) of this test session, not the user's.
os.environ.setdefault("BREWER_CACHE", tempfile.mkdtemp(prefix="brewer-test-cache-"))

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_STUDENT = {**TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece tokenizer (vocab ≤ 100) trained on the synthetic sentiment data."""
    from brewer_cli.recipe import WordPieceTraining
    from brewer_cli.synthetic import negation_sentiment
    from brewer_cli.tokenizers import train_wordpiece

    texts = [row["text"] for row in negation_sentiment(500, 0)]
    tokenizer = train_wordpiece(texts, WordPieceTraining(vocab_size=100))
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_model(
    directory: Path,
    tokenizer_dir: Path,
    config: dict[str, Any] | None = None,
    labels: list[str] | None = ("negative", "positive"),
    seed: int = 0,
) -> Path:
    """A randomly initialized sequence classifier saved with its tokenizer, as a user's checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    settings = dict(config or TINY_BERT)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model_type = settings.pop("model_type")
    model_config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings)
    if labels:
        model_config.num_labels = len(labels)
        model_config.id2label = dict(enumerate(labels))
        model_config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(model_config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def teacher_dir(tmp_path, tokenizer_dir) -> Path:
    return save_tiny_model(tmp_path / "teacher", tokenizer_dir)


def distill_recipe(teacher: Path | str, **sections: Any) -> dict[str, Any]:
    """A tiny distillation recipe over generated data; keyword sections replace the defaults."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "task": {"kind": "sequence_classification", "num_labels": 2},
        "data": {
            "train": {"synthetic": "negation_sentiment", "examples": 64, "seed": 1},
            "eval": {"synthetic": "negation_sentiment", "examples": 32, "seed": 2},
            "max_length": 32,
        },
        "teacher": {"checkpoint": str(teacher)},
        "student": {"config": dict(TINY_STUDENT)},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3},
        "distillation": {"kind": "basic", "temperature": 2.0, "hard_label_weight": 0.5},
    }
    recipe.update(sections)
    return recipe


def write_recipe(directory: Path, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), width=120)


# The real data the shipped recipes read (../shared/data beside the project). A clean clone elsewhere
# (CI) may not have it: shipped recipes are then checked without their input files.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Files a benchmark driver writes before its recipes run (`python benchmarks/decoder_kd.py --prepare`);
# a clean clone has none of them until the driver has run.
GENERATED_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "work"


def load_shipped(path, overrides=()):
    """A shipped recipe, its data files and columns checked where they exist: ../shared/data beside the
    project, and benchmarks/work/ once the benchmark that writes it has run."""
    from brewer_cli.recipe import load_recipe

    generated = re.findall(r"benchmarks/work/[\w./-]+", Path(path).read_text())
    inputs_present = SHARED_DATA.is_dir() and all((GENERATED_DATA.parents[1] / name).exists() for name in generated)
    return load_recipe(path, overrides, check_inputs=inputs_present)
