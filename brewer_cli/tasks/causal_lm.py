"""Causal language modelling: a decoder (`AutoModelForCausalLM`) trained or distilled on text.

Three forms of data, chosen by the columns the recipe names under `data`:

- plain text (`data.text`, default `text`, or a .txt file with one document per line): each
  document's tokens followed by the tokenizer's EOS, all documents concatenated and cut into blocks
  of `data.max_length` tokens (`data.packing: true`, the default — no padding is wasted, and a
  document may continue into the next block, as GPT-2 and most pre-training read text), or
  `packing: false`: one example per document (+ EOS), truncated. Every token is a label.
- prompt/completion (`data.prompt` and `data.completion`): the prompt's tokens (with whatever
  special tokens the tokenizer adds, e.g. Llama's BOS), then the completion's (none added) and EOS.
  The two texts are tokenized separately and joined as written (no space is inserted), so the
  boundary between prompt and completion is exact; labels are -100 over the prompt. Truncation
  keeps the prompt and cuts the completion; an example whose prompt alone fills max_length has
  nothing to learn and is dropped (with a warning that counts them).
- chat (`data.messages`: a list of {role, content} per example), rendered by the tokenizer's chat
  template. When the template marks assistant turns with `{% generation %}` (and the tokenizer is a
  fast one, whose offsets place the marks), transformers returns the assistant-token mask
  (`return_assistant_tokens_mask`) and the loss counts every assistant turn. Otherwise the conversation up to the last assistant message, rendered with the generation
  prompt, is the prompt and the rest of the rendering (that message and the template's end of
  turn) the completion: only the last assistant message is learned from, as for a prompt/completion
  pair (truncation and dropping alike).

Every example has `prompt_length`: the number of prompt tokens at the start of input_ids (0 for
plain text) — the start of the last assistant turn for masked chat — so that generation (eval
generations here, sequence-level and on-policy KD) can cut `input_ids[:prompt_length]`.

Model side: `logits` is `outputs.logits[:, :-1]` (position t predicts token t+1), `kd_mask` the
labels shifted the same way (`labels[:, 1:] != -100`), and `labels` go to the model, whose own
shifted cross-entropy is `Features.task_loss`. So a KD loss compares (B, L-1, V) logits over the
completion tokens only, and the hard-label term is the model's own loss.

Evaluation: per-example sums (NLL, counted tokens, correct arg-max tokens) are computed on each
process before anything is gathered — never (B, L, V) logits across processes — and reduced over
the eval split: perplexity = exp(Σ NLL / Σ tokens), token-weighted (not a mean over batches).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from brewer_cli.errors import DataError
from brewer_cli.recipe import DataSource, Recipe
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset, split_as_written
from brewer_cli.tasks.data import column, read_source
from brewer_cli.tasks.general_corpus import corpus_rows, read_texts
from brewer_cli.tasks.text_blocks import BlockShape, line_examples, packed_blocks

logger = logging.getLogger(__name__)

IGNORED = -100
DEFAULT_GENERATIONS = 3
DEFAULT_MAX_NEW_TOKENS = 32
# A plain-text eval block is prompted with its first tokens (at most half the block).
PLAIN_TEXT_PROMPT_TOKENS = 16
# The marker transformers needs to return the assistant-token mask (its own check is this search).
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")

Example = tuple[list[int], list[int], int]  # input_ids, labels, prompt_length


class CausalLM(Task):
    name = "causal_lm"
    auto_class_name = "AutoModelForCausalLM"
    primary_metric = "perplexity"
    greater_is_better = False
    generates_text = True
    # (L × V) logits per example do not fit a cache: `auto` is off, and brewer capture keeps the top k.
    caches_teacher_logits = False

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        data = recipe.data
        if data is None:
            return []
        where = f"{recipe.path}: data"
        problems = []
        if data.prompt is not None and data.completion is None:
            problems.append(f"{where}.completion: data.prompt is given, so name the completion column too (data.completion)")
        if data.completion is not None and data.prompt is None:
            problems.append(f"{where}.prompt: data.completion is given, so name the prompt column too (data.prompt)")
        if data.messages is not None and (data.prompt is not None or data.completion is not None):
            problems.append(
                f"{where}.messages: give either chat messages (data.messages) or prompt/completion columns "
                f"(data.prompt, data.completion), not both"
            )
        if data.text_pair is not None:
            problems.append(f"{where}.text_pair: a causal language model reads single texts — remove `text_pair`")
        if getattr(recipe.distillation, "probability_shift", False):
            # The shift swaps logits with the gold label's at each row; here the labels are the
            # model's unshifted targets (its own loss shifts them), one position off the logits.
            problems.append(
                f"{recipe.path}: distillation.probability_shift: not available for task causal_lm (next-token "
                f"logits over a vocabulary) — remove it, or set it to false"
            )
        return problems

    # -- data -----------------------------------------------------------------------------------

    def build_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        data = recipe.data
        train = self._split(data.train, recipe, "data.train", tokenizer, work)
        evaluation = self._split(data.eval, recipe, "data.eval", tokenizer, work) if data.eval is not None else None
        return PreparedData(train=train, eval=evaluation, label_names=None)

    def build_eval_data(self, recipe: Recipe, tokenizer: Any, label_names: list[str] | None, work: Path | None) -> PreparedData:
        evaluation = self._split(recipe.data.eval, recipe, "data.eval", tokenizer, work)
        return PreparedData(train=TokenizedDataset({}), eval=evaluation, label_names=None)

    def tokenizer_texts(self, recipe: Recipe) -> list[str]:
        data = recipe.data
        where = f"{recipe.path}: data.train"
        if data.messages is not None:
            rows = read_source(data.train, recipe, "data.train")
            conversations = column(rows, data.messages, where, "messages")
            return [str(message.get("content", "")) for messages in conversations for message in messages or []]
        if data.prompt is not None:
            rows = read_source(data.train, recipe, "data.train")
            pairs = (("prompt", data.prompt), ("completion", data.completion))
            return [str(value) for role, name in pairs for value in column(rows, name, where, role)]
        return read_texts(data.train, recipe, "data.train")

    def _split(self, source: DataSource, recipe: Recipe, field: str, tokenizer: Any, work: Path | None) -> TokenizedDataset:
        data = recipe.data
        where = f"{recipe.path}: {field}"
        if data.messages is not None:
            rows = read_source(source, recipe, field)
            examples = chat_examples(column(rows, data.messages, where, "messages"), tokenizer, where, recipe.path)
        elif data.prompt is not None:
            rows = read_source(source, recipe, field)
            prompts = [str(value) for value in column(rows, data.prompt, where, "prompt")]
            completions = [str(value) for value in column(rows, data.completion, where, "completion")]
            examples = prompt_completion_examples(prompts, completions, tokenizer, _eos(tokenizer, where))
        else:
            # Plain text: Arrow maps (tasks/text_blocks.py), never the whole corpus in memory. A
            # one-token block (the end of the stream) predicts nothing: left out without a warning.
            shape = BlockShape(data.max_length, separator=_eos(tokenizer, where), special_tokens=True, labels=True)
            blocks = (packed_blocks if data.packing else line_examples)(
                corpus_rows(source, recipe, field), tokenizer, shape, data, field, work
            )
            if not len(blocks):
                raise DataError(f"{where}: the corpus has no non-blank line — point it at a file or split with text")
            return blocks
        examples, dropped = truncated(examples, data.max_length)
        if dropped:
            logger.warning(
                "%s: %d of %d examples dropped: their prompt fills data.max_length=%d tokens (or there is no "
                "completion / assistant turn), so nothing of them is learned or measured — raise data.max_length or "
                "shorten the prompts",
                split_as_written(recipe, field),
                dropped,
                dropped + len(examples),
                data.max_length,
            )
        if not examples:
            raise DataError(
                f"{where}: no example has a completion token within data.max_length={data.max_length} — raise "
                f"data.max_length or shorten the prompts"
            )
        return TokenizedDataset(
            {
                "input_ids": [ids for ids, _, _ in examples],
                "attention_mask": [[1] * len(ids) for ids, _, _ in examples],
                "labels": [labels for _, labels, _ in examples],
                "prompt_length": [length for _, _, length in examples],
            }
        )

    def collate(self, tokenizer: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
        pad_id = pad_id_of(tokenizer)

        def collate(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
            # Right padding: the real tokens keep positions 0…n-1, as in training without padding.
            longest = max(len(item["input_ids"]) for item in items)
            batch = {
                key: torch.tensor([list(item[key]) + [fill] * (longest - len(item[key])) for item in items], dtype=torch.long)
                for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORED))
            }
            batch["prompt_length"] = torch.tensor([item["prompt_length"] for item in items], dtype=torch.long)
            batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
            return batch

        return collate

    # -- model ----------------------------------------------------------------------------------

    def logits(self, outputs: Any) -> torch.Tensor:
        # Position t predicts token t + 1; the last position predicts past the example.
        return outputs.logits[:, :-1, :]

    def kd_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L-1): the predicted tokens that count — completion tokens, never prompt or padding."""
        return batch["labels"][:, 1:] != IGNORED

    def labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        # Unshifted: the model shifts them itself for its own cross-entropy (Features.task_loss).
        return batch.get("labels")

    # -- evaluation -----------------------------------------------------------------------------

    def prediction_of(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 3) float64 per example: Σ NLL over counted tokens, counted tokens, correct arg-max."""
        targets = batch["labels"][:, 1:]
        counted = targets != IGNORED
        rows = []
        # One example at a time: fp32 log-probabilities of one (L, V) row, never of the whole batch.
        for row_logits, row_targets, row_counted in zip(logits, targets, counted):
            nll = F.cross_entropy(row_logits.float(), row_targets.clamp(min=0), reduction="none").double()
            correct = (row_logits.argmax(-1) == row_targets) & row_counted
            rows.append(
                torch.stack([torch.where(row_counted, nll, 0.0).sum(), row_counted.sum().double(), correct.sum().double()])
            )
        return torch.stack(rows)

    def compute_metrics(self, predictions, indices, data: PreparedData, output_dir=None) -> dict[str, Any]:
        nll, tokens, correct = torch.cat(predictions).double().sum(0).tolist()
        if tokens == 0:
            return {"perplexity": math.nan, "token_accuracy": math.nan}
        mean = nll / tokens
        return {"perplexity": math.exp(mean) if mean < 700 else math.inf, "token_accuracy": correct / tokens}

    def generations(self, model: Any, tokenizer: Any, data: PreparedData) -> list[dict[str, str]]:
        """Greedy completions (`generate`, do_sample=False) of the first eval examples' prompts —
        or of a plain-text block's first tokens — the same prompts for student and teacher."""
        count = DEFAULT_GENERATIONS if self.spec.generations is None else self.spec.generations
        if data.eval is None or count == 0:
            return []
        new_tokens = self.spec.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        limit = getattr(model.config, "max_position_embeddings", None)
        device = next(model.parameters()).device
        end_ids = end_token_ids(model, tokenizer)
        was_training = model.training
        model.eval()
        results = []
        for index in range(min(count, len(data.eval))):
            prompt = generation_prompt(data.eval.columns["input_ids"][index], data.eval.columns["prompt_length"][index])
            room = new_tokens if limit is None else min(new_tokens, limit - len(prompt))
            if room <= 0:
                continue
            ids = torch.tensor([prompt], device=device)
            settings = GenerationConfig(
                max_new_tokens=room,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id_of(tokenizer),
                # The model's own end tokens (a chat model's <|im_end|>) and the tokenizer's.
                eos_token_id=list(end_ids) or None,
                suppress_tokens=padding_ids(model, len(tokenizer)) or None,
            )
            with torch.inference_mode(), only_these_settings(model):
                output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)
            completion = output[0, len(prompt) :].tolist()
            # The prompt as the model read it (chat markers included); the completion as text.
            results.append(
                {
                    "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                    "completion": tokenizer.decode(completion, skip_special_tokens=True),
                }
            )
        model.train(was_training)
        return results


# ============================================================================= generation settings


@contextmanager
def only_these_settings(model: Any) -> Iterator[None]:
    """While inside: `model.generate(generation_config=…)` decodes with exactly the settings passed.

    transformers (5.x, `_prepare_generation_config`) fills every field the passed config leaves
    None from `model.generation_config` — the checkpoint's generation_config.json, which may set
    repetition_penalty, no_repeat_ngram_size, min_p, suppress_tokens, top_k … — before its own
    defaults. Swapping in an empty GenerationConfig for the call leaves only those defaults (which
    change nothing: repetition_penalty 1, no_repeat_ngram_size 0, …), so a teacher and a student
    decode alike whatever their checkpoints ship; the model's own config is put back afterwards."""
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


def end_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The tokens that end a completion: the tokenizer's end-of-sequence token and those the model's
    generation config names (chat models end a turn with their own, e.g. <|im_end|>)."""
    found: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (getattr(tokenizer, "eos_token_id", None), configured):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in found:
                found.append(int(token))
    return tuple(found)


def padding_ids(model: Any, tokenizer_size: int) -> list[int]:
    """The ids of the model's vocabulary padding rows (ids ≥ the tokenizer's size, e.g. Qwen's
    151,936 tokens in 152,064 rows): never trained, no text — `generate` must not emit them."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    rows = getattr(config, "vocab_size", None) or tokenizer_size
    return list(range(tokenizer_size, rows))


# ============================================================================= data forms


def pad_id_of(tokenizer: Any) -> int:
    """The pad id: the tokenizer's pad token, else its EOS (decoders such as GPT-2 have no pad)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _eos(tokenizer: Any, where: str) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError(
            f"{where}: the tokenizer has no eos_token, which causal_lm puts after each document and completion — "
            f"use a tokenizer with one (eos_token in its tokenizer_config.json)"
        )
    return int(tokenizer.eos_token_id)


def _token_ids(tokenizer: Any, texts: list[str], special_tokens: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]] if texts else []


def prompt_completion_examples(prompts: list[str], completions: list[str], tokenizer: Any, eos: int | None) -> list[Example]:
    """Prompt tokens (special tokens as the tokenizer adds them) + completion tokens (+ `eos`),
    labels -100 over the prompt; not yet truncated."""
    examples = []
    for prompt, completion in zip(_token_ids(tokenizer, prompts, True), _token_ids(tokenizer, completions, False)):
        if eos is not None and (not completion or completion[-1] != eos):
            completion = completion + [eos]
        examples.append((prompt + completion, [IGNORED] * len(prompt) + completion, len(prompt)))
    return examples


def chat_examples(conversations: list[Any], tokenizer: Any, where: str, recipe_path: Any) -> list[Example]:
    """Conversations rendered by the chat template; the loss counts assistant tokens (module docstring)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataError(
            f"{recipe_path}: data.messages: the tokenizer has no chat template, so chat messages cannot be rendered "
            f"— use a tokenizer with a chat_template (a chat model's tokenizer), or give the data as prompt/completion "
            f"columns (data.prompt, data.completion)"
        )
    for number, messages in enumerate(conversations):
        _check_messages(messages, number, where)
    if isinstance(template, str) and GENERATION_BLOCK.search(template) and getattr(tokenizer, "is_fast", False):
        return [_masked_chat(messages, tokenizer) for messages in conversations]
    prompts, completions = [], []
    for messages in conversations:
        last = max((index for index, message in enumerate(messages) if message["role"] == "assistant"), default=None)
        if last is None:
            prompts.append(None)
            completions.append(None)
            continue
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True) if last else ""
        full = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template renders a conversation so that its prompt (the messages before the last "
                f"assistant message, with the generation prompt) is not the start of the whole — the completion "
                f"cannot be told apart; use a template with {{% generation %}} blocks, or prompt/completion columns"
            )
        prompts.append(prompt)
        completions.append(full[len(prompt) :])
    kept = [index for index, prompt in enumerate(prompts) if prompt is not None]
    # The template wrote the special tokens (BOS, end of turn): none are added, no EOS appended.
    prompt_ids = _token_ids(tokenizer, [prompts[index] for index in kept], False)
    completion_ids = _token_ids(tokenizer, [completions[index] for index in kept], False)
    examples: list[Example] = [([], [], 0)] * len(conversations)  # no assistant message: nothing counted
    for index, prompt, completion in zip(kept, prompt_ids, completion_ids):
        examples[index] = (prompt + completion, [IGNORED] * len(prompt) + completion, len(prompt))
    return examples


def _masked_chat(messages: list[dict[str, Any]], tokenizer: Any) -> Example:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = list(encoded["input_ids"])
    mask = list(encoded["assistant_masks"])
    labels = [token if counted else IGNORED for token, counted in zip(ids, mask)]
    return ids, labels, _last_run_start(mask)


def _last_run_start(mask: list[int]) -> int:
    """Where the last run of counted tokens starts (the last assistant turn): the prompt before it."""
    end = max((index for index, counted in enumerate(mask) if counted), default=None)
    if end is None:
        return len(mask)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


def _check_messages(messages: Any, number: int, where: str) -> None:
    valid = (
        isinstance(messages, (list, tuple))
        and bool(messages)
        and all(isinstance(message, dict) and "role" in message and "content" in message for message in messages)
    )
    if not valid:
        raise DataError(
            f"{where}: example {number} (0-based): data.messages must hold a non-empty list of "
            f'{{"role": …, "content": …}} messages, found {type(messages).__name__} — use a jsonl file or a hub dataset '
            f"with a list of messages per example"
        )


def truncated(examples: list[Example], max_length: int) -> tuple[list[Example], int]:
    """Examples cut to `max_length` (the completion loses its end, the prompt is kept), without
    those left with no counted label after the first position (nothing to learn or measure);
    and how many were dropped."""
    kept = []
    for ids, labels, prompt_length in examples:
        ids, labels = ids[:max_length], labels[:max_length]
        if prompt_length < max_length and any(label != IGNORED for label in labels[1:]):
            kept.append((ids, labels, min(prompt_length, len(ids))))
    return kept, len(examples) - len(kept)


def generation_prompt(input_ids: list[int], prompt_length: int) -> list[int]:
    """An example's prompt, or — for plain text — the first tokens of the block."""
    if prompt_length > 0:
        return list(input_ids[:prompt_length])
    return list(input_ids[: min(PLAIN_TEXT_PROMPT_TOKENS, max(1, len(input_ids) // 2))])
