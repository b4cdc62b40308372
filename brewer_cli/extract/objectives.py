"""The pre-training objectives importance is scored with when the data has no labels and the
teacher no task head: ETD's task-agnostic setting (general distillation, task `masked_lm`) scores
the pre-trained teacher with its own pre-training objective.

- `masked_lm`: the checkpoint has its masked-LM head. L is that head's cross-entropy to the
  original tokens at the masked positions of the corpus text, mean over masked positions.
- `masked_hidden_reconstruction`: a bare encoder (e.g. sentence-transformers' MiniLM, saved
  without its head) has no vocabulary logits. L is the mean squared error between the encoder's
  last hidden states at the masked positions and its own last hidden states at the same positions
  on the unmasked text (the target detached): how well the encoder restores, from the context, the
  representation of the tokens it cannot see — the encoder's half of masked-LM. A loss against the
  model's own output on the same input would sit at its minimum at the teacher's weights, with
  zero gradient and every Taylor score zero; masking moves the prediction away from the target,
  so the gradient is not zero.

Masking follows BERT (Devlin et al., 2019): 15% of the tokens are chosen; of those, 80% become
the mask token, 10% a random token of the vocabulary, 10% stay as they are. Special tokens and
padding are never chosen; a row with maskable tokens of which none was chosen gets one chosen
position (short sentences would otherwise add nothing). The masks are drawn once, from a
torch.Generator seeded with the extraction seed, so every round scores the same masked text and
the scores are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from brewer_cli.errors import DataError, ModelError

MASKED_LM = "masked_lm"
MASKED_HIDDEN_RECONSTRUCTION = "masked_hidden_reconstruction"

MASK_PROBABILITY = 0.15
# One uniform draw per chosen position: below 0.8 the mask token, below 0.9 a random token, else kept.
MASK_TOKEN_SHARE = 0.8
RANDOM_TOKEN_SHARE = 0.1

# What a masked batch carries besides the model's inputs; the forward never sees these keys
# (scoring passes only the parameters the forward names).
UNMASKED_INPUT_IDS = "unmasked_input_ids"
MASKED_POSITIONS = "masked_positions"

# What the plan (`describe`) prints as the importance loss.
_DESCRIPTIONS = {
    MASKED_LM: "masked_lm (the teacher's masked-LM loss at 15% masked tokens, 80/10/10)",
    MASKED_HIDDEN_RECONSTRUCTION: (
        "masked_hidden_reconstruction (no masked-LM head: last-hidden-state MSE to the unmasked text at 15% masked tokens)"
    ),
}


@dataclass(eq=False)
class PretrainingObjective:
    """The masking shared by both objectives, and the teacher with its masked-LM head when the
    checkpoint has one (then the objective is `masked_lm`, else `masked_hidden_reconstruction`)."""

    mask_token_id: int
    vocabulary_size: int
    special_ids: frozenset[int]
    masked_lm: nn.Module | None = None

    @property
    def name(self) -> str:
        return MASKED_LM if self.masked_lm is not None else MASKED_HIDDEN_RECONSTRUCTION

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self.name]

    @property
    def reads_hidden_states(self) -> bool:
        return self.masked_lm is None

    def mask_batches(self, batches: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
        """Each batch with its `input_ids` masked (see the module docstring); batches in which no
        token can be masked are dropped, since they carry no loss."""
        generator = torch.Generator().manual_seed(seed)
        special = torch.tensor(sorted(self.special_ids), dtype=torch.long)
        masked_batches = []
        for batch in batches:
            input_ids = batch["input_ids"]
            attention = batch.get("attention_mask")
            maskable = ~torch.isin(input_ids, special)
            if attention is not None:
                maskable &= attention.bool()
            chosen = (torch.rand(input_ids.shape, generator=generator) < MASK_PROBABILITY) & maskable
            empty_rows = (maskable.any(dim=1) & ~chosen.any(dim=1)).nonzero().squeeze(1)
            if empty_rows.numel():
                picks = torch.multinomial(maskable[empty_rows].float(), 1, generator=generator).squeeze(1)
                chosen[empty_rows, picks] = True
            if not chosen.any():
                continue
            draw = torch.rand(input_ids.shape, generator=generator)
            random_tokens = torch.randint(self.vocabulary_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
            masked = input_ids.clone()
            masked[chosen & (draw < MASK_TOKEN_SHARE)] = self.mask_token_id
            replaced = chosen & (draw >= MASK_TOKEN_SHARE) & (draw < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
            masked[replaced] = random_tokens[replaced]
            masked_batches.append({**batch, "input_ids": masked, UNMASKED_INPUT_IDS: input_ids, MASKED_POSITIONS: chosen})
        if not masked_batches:
            raise DataError(
                f"importance extraction with the {self.name} objective masks corpus tokens, but no example has a token "
                f"that is neither special nor padding — score on a corpus with text, or use strategy: random"
            )
        return masked_batches

    def loss(self, model: nn.Module, outputs: Any, inputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """L of one masked batch; `outputs` is the model's forward on `inputs` (the masked text)."""
        device = inputs["input_ids"].device
        positions = batch[MASKED_POSITIONS].to(device)
        originals = batch[UNMASKED_INPUT_IDS].to(device)
        if self.masked_lm is not None:
            logits = outputs.get("logits")
            if logits is None:
                raise ModelError(f"{type(model).__name__} returns no masked-LM logits to score importance with")
            return functional.cross_entropy(logits[positions].float(), originals[positions])
        states = outputs.get("hidden_states")
        if not states:
            raise ModelError(f"{type(model).__name__} returns no hidden states to score importance with")
        with torch.no_grad():
            target = model(**{**inputs, "input_ids": originals})["hidden_states"][-1][positions].float()
        return functional.mse_loss(states[-1][positions].float(), target)
