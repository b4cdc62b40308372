"""Generated data, tokenizers and tiny models for the token classification and QA tests.

Everything is built here, offline: a WordPiece vocabulary of at most 100 entries trained on the
generated text (so words split into several pieces), and BERT models of width 32 with 2 layers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import transformers

from brewer_cli.recipe import WordPieceTraining
from brewer_cli.tokenizers import train_wordpiece

PEOPLE = [["john", "smith"], ["mary"], ["anna", "bell"], ["peter"], ["lucas", "brandt"]]
PLACES = [["paris"], ["new", "york"], ["berlin"], ["rome"]]
COMPANIES = [["acme"], ["globex", "corp"], ["initech"]]
FILLER = ["works", "for", "lives", "in", "and", "visited", "today", "with", "the", "team", "of", "."]

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def ner_sentences(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences such as "john smith works for acme in paris ." with IOB2 tags."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words: list[str] = []
        tags: list[str] = []

        def entity(parts: list[str], kind: str) -> None:
            words.extend(parts)
            tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1))

        entity(rng.choice(PEOPLE), "PER")
        words.extend(["works", "for"])
        tags.extend(["O", "O"])
        entity(rng.choice(COMPANIES), "ORG")
        words.append("in")
        tags.append("O")
        entity(rng.choice(PLACES), "LOC")
        words.append(".")
        tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines.extend(f"{word} NN I-NP {tag}" for word, tag in zip(words, tags))
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


COLORS = ["red", "blue", "green", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "goat"]
OWNERS = ["john", "mary", "anna", "peter", "lucas"]


def qa_article(rng: random.Random, facts: int = 6) -> tuple[str, list[tuple[str, str, int]]]:
    """A context of `facts` sentences "the <animal> of <owner> is <color> ." and questions about them."""
    sentences, questions = [], []
    offset = 0
    used = set()
    for _ in range(facts):
        while True:
            animal, owner = rng.choice(ANIMALS), rng.choice(OWNERS)
            if (animal, owner) not in used:
                used.add((animal, owner))
                break
        color = rng.choice(COLORS)
        sentence = f"the {animal} of {owner} is {color} ."
        questions.append((f"what color is the {animal} of {owner} ?", color, offset + sentence.index(f" is {color}") + 4))
        sentences.append(sentence)
        offset += len(sentence) + 1
    return " ".join(sentences), questions


def squad_file(path: Path, articles: int, seed: int, facts: int = 6) -> Path:
    rng = random.Random(seed)
    data = []
    for number in range(articles):
        context, questions = qa_article(rng, facts)
        qas = [
            {"id": f"{seed}-{number}-{index}", "question": question, "answers": [{"text": answer, "answer_start": start}]}
            for index, (question, answer, start) in enumerate(questions)
        ]
        data.append({"title": f"article_{number}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def corpus() -> list[str]:
    words = [w for group in (PEOPLE, PLACES, COMPANIES) for parts in group for w in parts]
    text = [" ".join(words + FILLER)]
    rng = random.Random(0)
    for _ in range(20):
        context, questions = qa_article(rng)
        text.append(context)
        text.extend(question for question, _, _ in questions)
    return text


def tokenizer(vocab_size: int = 100) -> Any:
    return train_wordpiece(corpus(), WordPieceTraining(vocab_size=vocab_size))


def save_tiny_model(directory: Path, auto_class: Any, tokenizer: Any, seed: int = 0, **head: Any) -> Path:
    """A randomly initialized tiny BERT with `tokenizer`, saved as a checkpoint directory."""
    settings = dict(TINY_BERT)
    settings.pop("model_type")
    config = transformers.BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **settings, **head)
    torch.manual_seed(seed)
    model = auto_class.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
