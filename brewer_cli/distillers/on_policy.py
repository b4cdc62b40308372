"""`on_policy`: generalized knowledge distillation (GKD, Agarwal et al. 2024) for causal LMs.

Per training batch, with probability λ (`student_data_fraction`, TRL's `lmbda`) the completions
are the STUDENT's: it samples one for each of the batch's prompts (`generate`, the recipe's
temperature / top_p / max_new_tokens), the teacher scores prompt + sample, and the loss is
`kd_loss` (forward/reverse KL, JSD(β), …) at `temperature` over the sampled completion tokens only
— the prompt and the padding are masked out by the batch's labels. Otherwise the batch keeps its own
completions and the loss is `basic`'s token KD (plus the data cross-entropy when hard_label_weight
> 0, which only these batches have: a student's own sample is no target). λ = 0 is therefore
exactly supervised token KD, and λ = 1 is purely on-policy.

Determinism: which branch a batch takes and what the student samples come from seeds derived from
(seed, optimizer step, micro-batch within the step; the samples also from the process), never from
the global generator (see distillers/generation.py), so two runs with one seed agree and a resumed run — which restarts at a
step boundary — draws what the uninterrupted run drew, with nothing added to the checkpoint. TRL
draws the branch from Python's global `random` instead, which a resume would replay differently.

Logged per log line: `on_policy_fraction` (the share of micro-batches that sampled) and
`sampled_length` (mean completion tokens per sample over those batches).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import PartialState

from brewer_cli.distillers.base import DistillerInputs
from brewer_cli.distillers.basic import BasicDistiller, LogitKD
from brewer_cli.distillers.generation import (
    IGNORED,
    GenerationSettings,
    completion_batch,
    derived_seed,
    draw_below,
    generate,
    pad_token_id,
    prompts_of,
)
from brewer_cli.recipe import Recipe
from brewer_cli.tasks.causal_lm import end_token_ids


class OnPolicyDistiller(BasicDistiller):
    kind = "on_policy"
    # The teacher scores the student's own samples, new text no store holds.
    reads_teacher_store = False

    def __init__(self, inputs: DistillerInputs, logit_kd: LogitKD, generation: GenerationSettings, student_data_fraction: float):
        super().__init__(inputs, logit_kd)
        self.generation = generation
        self.student_data_fraction = student_data_fraction
        tokenizer = inputs.student.tokenizer
        self.pad_id = pad_token_id(tokenizer)
        self.end_ids = end_token_ids(inputs.student.model, tokenizer)
        self.tokenizer_size = len(tokenizer)
        # Each process samples its own stream (its batches hold other prompts, but a shared seed
        # would still tie their draws); the branch draw leaves it out, so that every process takes
        # the same branch at a step and their collectives (DDP's gradient sync, FSDP's gathers
        # inside generate) stay in step.
        self.process_index = PartialState().process_index
        # (step, micro-batches drawn at that step): names each draw; restarts at 0 on every step,
        # which is where a resumed run starts too.
        self._position = (-1, 0)
        self._window = _Counts()
        self._total = _Counts()

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        problems = super().recipe_problems(recipe)
        distillation = recipe.distillation
        if distillation.kd_weight == 0:
            problems.append(
                f"{recipe.path}: distillation.kd_weight: on-policy distillation learns from the teacher's scores of the "
                f"student's samples, and kd_weight 0 leaves none — set kd_weight > 0 (e.g. 1), or use kind sequence_kd "
                f"to train on the teacher's own completions"
            )
        return problems

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.training:
            # Evaluation measures the eval split as it is.
            return super().compute_loss(batch)
        step, micro = self._next_position()
        on_policy = draw_below(self.student_data_fraction, derived_seed(self.generation.seed, "on_policy", step, micro))
        self._window.batches += 1
        self._total.batches += 1
        if not on_policy:
            return super().compute_loss(batch)
        sampled = self.student_samples(batch, derived_seed(self.generation.seed, "sample", step, micro, self.process_index))
        # generate has synchronized with the device already: reading the lengths costs nothing more.
        tokens = int((sampled["labels"] != IGNORED).sum())
        for counts in (self._window, self._total):
            counts.on_policy += 1
            counts.samples += len(sampled["labels"])
            counts.tokens += tokens
        teacher = self.teacher_features(sampled)
        student = self.student_features(sampled, with_labels=False)
        parts, loss = self._kd(sampled, student, teacher.logits)
        parts["loss"] = loss
        return parts

    def student_samples(self, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """The batch with each example's completion replaced by one the student samples for its prompt."""
        prompts = prompts_of(batch, self.generation.prompt_tokens)
        device = batch["input_ids"].device
        completions = generate(
            self.student, prompts, self.generation, seed, self.pad_id, self.end_ids, device, self.tokenizer_size
        )
        return completion_batch(prompts, completions, self.pad_id, batch["index"], device)

    def _next_position(self) -> tuple[int, int]:
        step, micro = self._position
        self._position = (self.current_step, micro + 1 if step == self.current_step else 0)
        return self._position

    # -- what the run reports -------------------------------------------------------------------

    def log_statistics(self) -> dict[str, float]:
        window, self._window = self._window, _Counts()
        return window.statistics()

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        super().update_summary(summary, teacher_metrics)
        summary["on_policy"] = {
            "student_data_fraction": self.student_data_fraction,
            "generation": self.generation.describe(),
            **self._total.statistics(),
            "micro_batches": self._total.batches,
        }

    def describe_losses(self) -> list[str]:
        return [
            f"on-policy: with probability {self.student_data_fraction:g} a batch's completions are sampled from the "
            f"student ({self.generation.describe()}) and scored by the teacher",
            *super().describe_losses(),
        ]


class _Counts:
    """Micro-batches seen, those that sampled, and the samples' sizes (this process's)."""

    def __init__(self) -> None:
        self.batches = 0
        self.on_policy = 0
        self.samples = 0
        self.tokens = 0

    def statistics(self) -> dict[str, float]:
        if not self.batches:
            return {}
        values = {"on_policy_fraction": self.on_policy / self.batches}
        if self.samples:
            values["sampled_length"] = self.tokens / self.samples
        return values
