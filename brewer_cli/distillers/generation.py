"""Completions that a causal language model generates for the prompts of a batch: the one place
that calls transformers' `generate`, for sequence-level KD (the teacher, once, before training) and
on-policy KD (the student, on the batches drawn for it).

Why the random state is handled here: sampling draws from torch's global generator, which the loop
seeds and a checkpoint restores. Generating inside `torch.random.fork_rng`, seeded from numbers that
name the draw (the run's seed, what is drawn, the step …), makes each sample a function of those
numbers alone and leaves the global generator exactly as it was: the dropout masks after a sample
are those of a run without it, and a resumed run draws the samples an uninterrupted one drew, with
nothing extra in the checkpoint.

Prompts are left-padded for `generate` (a decoder continues each row from its last position); the
results come back as right-padded training batches — prompt, completion, padding — whose labels are
-100 everywhere but on the completion, so the task's KD mask (`labels[:, 1:] != -100`) counts the
completion tokens and nothing else. A completion ends at its first end-of-sequence token, which is
kept (the student learns to stop); whatever `generate` wrote after it is padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from brewer_cli.tasks.causal_lm import only_these_settings, padding_ids

IGNORED = -100  # the label of a position no loss counts


@dataclass(frozen=True)
class GenerationSettings:
    """`distillation.generation`, resolved: the seed is the recipe's sampling seed (or training.seed)."""

    max_new_tokens: int
    sample: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int
    # Plain text has no prompt (prompt_length 0): its first `prompt_tokens` tokens are taken as one.
    prompt_tokens: int | None = None

    def config(self, pad_token_id: int, end_token_ids: Sequence[int], blocked: Sequence[int] = ()) -> GenerationConfig:
        """The recipe's settings and nothing else. `generate` applies it under
        `only_these_settings`, so that no field of a checkpoint's generation_config.json (a
        repetition penalty, no_repeat_ngram_size, min_p, a top_k of 50) changes what the recipe
        asked for. `blocked`: ids never generated (the vocabulary's padding rows)."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} if self.sample else {}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.sample,
            num_beams=1,
            pad_token_id=pad_token_id,
            eos_token_id=list(end_token_ids) or None,
            suppress_tokens=list(blocked) or None,
            **sampling,
        )

    def describe(self) -> str:
        how = (
            f"sampled (temperature {self.temperature:g}, top_p {self.top_p:g}, top_k {self.top_k or 'off'}, seed {self.seed})"
            if self.sample
            else "greedy"
        )
        return f"up to {self.max_new_tokens} new tokens, {how}"

    def fingerprint(self) -> dict[str, Any]:
        # Greedy decoding draws nothing: its seed does not change the completions.
        values = asdict(self)
        if not self.sample:
            for name in ("temperature", "top_p", "top_k", "seed"):
                values.pop(name)
        return values


def derived_seed(seed: int, *names: Any) -> int:
    """A seed for one draw, named by `names` (what is drawn, the step, …): independent draws for
    different names, the same draw for the same names in any run or resumed run."""
    digest = hashlib.blake2b(repr((seed, *names)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def draw_below(probability: float, seed: int) -> bool:
    """True with `probability`, from a generator of its own (`seed`): u ~ U[0, 1) < p, so 0 never
    and 1 always."""
    generator = torch.Generator().manual_seed(seed)
    return bool(torch.rand((), generator=generator).item() < probability)


def pad_token_id(tokenizer: Any) -> int:
    """The padding id of generated rows: the tokenizer's, else its end-of-sequence id (GPT-2 has no
    pad token), else 0."""
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def prompt_lengths(batch: dict[str, torch.Tensor], prompt_tokens: int | None = None) -> list[int]:
    """Each example's number of prompt tokens: the task's `prompt_length` column when the batch
    carries it, else the position of the first counted label (labels are -100 on the prompt); an
    example without a prompt (plain text) takes its first `prompt_tokens` tokens when that is set."""
    if "prompt_length" in batch:
        lengths = batch["prompt_length"]
    else:
        counted = batch["labels"] != IGNORED
        # A row without any counted label is all prompt.
        lengths = torch.where(counted.any(dim=1), counted.int().argmax(dim=1), batch["attention_mask"].sum(dim=1))
    sizes = batch["attention_mask"].sum(dim=1)
    return [_prompt_length(int(length), int(size), prompt_tokens) for length, size in zip(lengths.tolist(), sizes.tolist())]


def _prompt_length(length: int, size: int, prompt_tokens: int | None) -> int:
    return min(prompt_tokens, size) if length == 0 and prompt_tokens else length


def prompts_of(batch: dict[str, torch.Tensor], prompt_tokens: int | None = None) -> list[list[int]]:
    """The prompt token ids of each example of a (right-padded) batch."""
    ids = batch["input_ids"]
    return [ids[row, :length].tolist() for row, length in enumerate(prompt_lengths(batch, prompt_tokens))]


def cut_at_end(tokens: Sequence[int], end_ids: Sequence[int]) -> list[int]:
    """`tokens` up to and including the first end-of-sequence token."""
    ends = set(end_ids)
    for position, token in enumerate(tokens):
        if token in ends:
            return list(tokens[: position + 1])
    return list(tokens)


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    seed: int,
    pad_id: int,
    end_ids: Sequence[int],
    device: Any = None,
    tokenizer_size: int | None = None,
) -> list[list[int]]:
    """`model`'s completion of each prompt (token ids, cut after the first end-of-sequence token),
    drawn from torch's generator seeded with `seed` inside a fork: the global random state is the
    same after the call as before. The model generates in eval mode (no dropout) and is put back
    in the mode it was in. `tokenizer_size`: ids from there on (the vocabulary's padding rows,
    which no tokenizer can decode and no loss counts) are never generated."""
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token to continue from")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(prompt)) + list(prompt) for prompt in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts], device=device)
    was_training = model.training
    model.eval()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    blocked = padding_ids(model, tokenizer_size) if tokenizer_size is not None else []
    try:
        with torch.random.fork_rng(devices=devices), only_these_settings(model):
            torch.manual_seed(seed)
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=settings.config(pad_id, end_ids, blocked),
                # An FSDP-sharded student gathers its layers in collectives at every forward: the
                # processes must take as many decoding steps as the one that runs longest.
                synced_gpus=_sharded(model),
            )
    finally:
        model.train(was_training)
    return [cut_at_end(row, end_ids) for row in sequences[:, width:].tolist()]


def _sharded(model: Any) -> bool:
    """Whether FSDP2 holds `model`'s parameters as shards (DTensors) across processes."""
    first = next(model.parameters(), None)
    return first is not None and hasattr(first, "device_mesh")


def completion_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    index: torch.Tensor,
    device: Any = None,
) -> dict[str, torch.Tensor]:
    """A right-padded causal-LM batch of prompt + completion: labels are the completion tokens and
    -100 on the prompt and the padding; `prompt_length` and the examples' `index` ride along."""
    rows = [list(prompt) + list(completion) for prompt, completion in zip(prompts, completions)]
    width = max(len(row) for row in rows)
    input_ids, attention_mask, labels = [], [], []
    for prompt, completion, row in zip(prompts, completions, rows):
        padding = width - len(row)
        input_ids.append(row + [pad_id] * padding)
        attention_mask.append([1] * len(row) + [0] * padding)
        labels.append([IGNORED] * len(prompt) + list(completion) + [IGNORED] * padding)

    def tensor(values: Any) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return {
        "input_ids": tensor(input_ids),
        "attention_mask": tensor(attention_mask),
        "labels": tensor(labels),
        "prompt_length": tensor([len(prompt) for prompt in prompts]),
        "index": index.to(device) if device is not None else index,
    }


def example_prompts(columns: dict[str, list[Any]], prompt_tokens: int | None = None) -> list[list[int]]:
    """The prompt token ids of every example of a tokenized split: the first `prompt_length` tokens
    (the task's column), else those before the first counted label; `prompt_tokens` as in
    `prompt_lengths`."""
    ids = columns["input_ids"]
    if "prompt_length" in columns:
        lengths = [int(length) for length in columns["prompt_length"]]
    else:
        lengths = [next((at for at, label in enumerate(labels) if label != IGNORED), len(labels)) for labels in columns["labels"]]
    return [list(row[: _prompt_length(length, len(row), prompt_tokens)]) for row, length in zip(ids, lengths)]
