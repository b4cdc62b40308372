"""Replacements from a masked LM: the top predictions at a masked single-piece word."""

from __future__ import annotations

from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import AutoModelForMaskedLM

from brewer_cli.augment.words import Query
from brewer_cli.errors import ModelError
from brewer_cli.models import checkpoint_location, load_pretrained, quiet_transformers
from brewer_cli.recipe import Recipe
from brewer_cli.tokenizers import load_tokenizer_dir


class MaskedLanguageModel:
    """A masked LM with its head, predicting replacements for masked single-piece words."""

    def __init__(self, model: Any, tokenizer: Any, source: str):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = min(int(getattr(model.config, "max_position_embeddings", 512)), 512)
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
        special = set(tokenizer.all_special_ids)
        # Only whole words can replace a word: no word pieces, special or [unused] tokens, punctuation.
        excluded = [
            index in special
            or token is None
            or token.startswith("##")
            or (token.startswith("[") and token.endswith("]"))
            or not any(character.isalnum() for character in token)
            for index, token in enumerate(vocabulary)
        ]
        self.excluded = torch.tensor(excluded, dtype=torch.bool)
        self.vocabulary = vocabulary

    @classmethod
    def load(cls, value: str, recipe: Recipe | None, field: str) -> MaskedLanguageModel:

        where = f"{recipe.path}: " if recipe is not None and recipe.path is not None else ""
        location = checkpoint_location(value, recipe, field)
        try:
            with quiet_transformers():
                model, info = load_pretrained(AutoModelForMaskedLM, location, f"{where}{field}: ", output_loading_info=True)
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(
                f"{where}{field}: could not load {value!r} as a masked LM: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
            ) from None
        missing_head = missing_head_weights(model, info)
        if missing_head:
            raise ModelError(
                f"{where}{field}: {value!r} has no masked-LM head — its checkpoint lacks {', '.join(missing_head[:3])}"
                f"{' …' if len(missing_head) > 3 else ''}, which transformers would fill with random weights, so its "
                f"'predictions' would be noise. Use a checkpoint saved with its MLM head, e.g. bert-base-uncased, "
                f"or give `word_vectors` (GloVe text format) instead"
            )
        tokenizer = load_tokenizer_dir(location, recipe, field)
        if tokenizer.mask_token_id is None:
            raise ModelError(f"{where}{field}: the tokenizer of {value!r} has no mask token — use a masked LM's tokenizer")
        model.eval()
        return cls(model, tokenizer, location)

    def predict(self, queries: list[Query], count: int, batch_size: int, console: Any = None) -> list[list[str]]:
        """The top `count` whole-word replacements of each query's masked piece."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(queries)), key=lambda index: len(queries[index].input_ids))
        results: list[list[str]] = [[] for _ in queries]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with _progress(console, "augment: masked LM", len(queries)) as advance, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = [queries[index] for index in order[start : start + batch_size]]
                longest = max(len(query.input_ids) for query in chosen)
                input_ids = torch.tensor([q.input_ids + [pad] * (longest - len(q.input_ids)) for q in chosen], device=device)
                token_types = torch.tensor(
                    [q.token_type_ids + [0] * (longest - len(q.token_type_ids)) for q in chosen], device=device
                )
                attention = torch.tensor(
                    [[1] * len(q.input_ids) + [0] * (longest - len(q.input_ids)) for q in chosen], device=device
                )
                positions = torch.tensor([q.position for q in chosen], device=device)
                logits = self._logits_at(input_ids, token_types, attention, positions).float()
                logits[:, self.excluded.to(device)] = float("-inf")
                # The word itself is no replacement: a variant that keeps it would only repeat the original.
                logits[torch.arange(len(chosen), device=device), torch.tensor([q.original_id for q in chosen], device=device)] = (
                    float("-inf")
                )
                top = logits.topk(min(count, logits.shape[-1]), dim=-1)
                for row, index in enumerate(order[start : start + batch_size]):
                    results[index] = [
                        self.vocabulary[token]
                        for token, score in zip(top.indices[row].tolist(), top.values[row].tolist())
                        if score != float("-inf")
                    ]
                advance(len(chosen))
        return results

    def _logits_at(self, input_ids: Any, token_types: Any, attention: Any, positions: Any) -> Any:
        """Vocabulary logits at the masked positions only: the encoder runs on the whole batch,
        the head on one vector per query (the head on every position would cost as much again as
        a small encoder, and hold B × L × vocabulary floats)."""
        model = self.model
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if getattr(model.config, "type_vocab_size", 0) and model.config.type_vocab_size > 1:
            inputs["token_type_ids"] = token_types
        head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        if head is None:
            # A family whose head has another name: the full logits, then the masked rows.
            logits = model(**inputs).logits
            return logits[torch.arange(len(positions), device=logits.device), positions]
        hidden = model.base_model(**inputs).last_hidden_state
        return head(hidden[torch.arange(len(positions), device=hidden.device), positions])


def missing_head_weights(model: Any, loading_info: dict[str, Any]) -> list[str]:
    """The head's weights that the checkpoint lacked (transformers initialized them at random);
    tied weights (the decoder sharing the word embeddings) do not count."""
    prefix = f"{model.base_model_prefix}."
    tied = getattr(model, "_tied_weights_keys", None) or {}
    tied_names = set(tied) | (set(tied.values()) if isinstance(tied, dict) else set())
    return sorted(name for name in loading_info.get("missing_keys", ()) if not name.startswith(prefix) and name not in tied_names)


class _progress:
    """A rich progress bar over the masked-LM queries; silent without a console."""

    def __init__(self, console: Any, label: str, total: int):
        self.console, self.label, self.total = console, label, total

    def __enter__(self):
        if self.console is None or self.total == 0:
            return lambda count: None

        self.bar = Progress(
            TextColumn(f"[bold]{self.label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda count: self.bar.advance(task, count)

    def __exit__(self, *exc: Any) -> bool:
        if getattr(self, "bar", None) is not None:
            self.bar.stop()
        return False
