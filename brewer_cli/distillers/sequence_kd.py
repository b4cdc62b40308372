"""`sequence_kd`: sequence-level knowledge distillation (Kim & Rush 2016) for causal LMs.

The teacher generates a completion for every training prompt (`distillation.generation`: greedy
by default — Kim & Rush's beam-search mode, approximated by its first beam — or sampled with a
seed), and the student trains on prompt + teacher completion: the data cross-entropy on the
completion tokens (`hard_label_weight`), optionally with token KD against the teacher on those same
tokens (`kd_weight`, `kd_loss`). The training split's own completions are not read.

The completions are generated once, when training starts (`train_loader`: the loop asks for the
training batches before step 1; a dry-run plan builds the run without generating), and kept on
disk under a fingerprint of what decides them — the teacher's weights, its tokenizer, the prompts
and the generation settings — in `<cache>/sequence_kd/<fingerprint>/`, as Parquet. A second run
of the same teacher and data, and a resumed run, read them instead of generating again; changing
any ingredient gives another directory. Several processes share the generation: each generates
its share of the chunks, the main process writes the whole set (see `complete`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from brewer_cli.distillers.base import DistillerInputs
from brewer_cli.distillers.basic import BasicDistiller, LogitKD
from brewer_cli.distillers.generation import (
    IGNORED,
    GenerationSettings,
    derived_seed,
    example_prompts,
    generate,
    pad_token_id,
)
from brewer_cli.evaluation import eval_batch_size
from brewer_cli.families.loading import LoadedModel
from brewer_cli.families.placement import place_teacher
from brewer_cli.logit_store.fingerprints import hash_chunks, tokenizer_hash, weights_hash
from brewer_cli.tasks import TokenizedDataset
from brewer_cli.tasks.causal_lm import end_token_ids

FORMAT_VERSION = 1
COMPLETIONS_FILE = "completions.parquet"
FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class TeacherCompletions:
    """The teacher's completion of each training example (by index), where they are kept, and how
    many this run generated (0: all read from the cache)."""

    completions: list[list[int]]
    directory: Path
    generated: int


class SequenceKDDistiller(BasicDistiller):
    kind = "sequence_kd"
    # The teacher writes completions: a store of its logits on the data cannot.
    reads_teacher_store = False

    def __init__(self, inputs: DistillerInputs, logit_kd: LogitKD, generation: GenerationSettings, cache_root: Path):
        super().__init__(inputs, logit_kd)
        self.generation = generation
        self.cache_root = Path(cache_root)
        self.teacher_completions: TeacherCompletions | None = None

    # -- the training examples: prompt + the teacher's completion -------------------------------

    def train_loader(self, processes: int = 1):
        if self.teacher_completions is None:
            prompts = example_prompts(self.data.train.columns, self.generation.prompt_tokens)
            self.teacher_completions = self.complete(prompts)
            self.data = replace(self.data, train=_training_examples(prompts, self.teacher_completions.completions))
        return super().train_loader(processes)

    def complete(self, prompts: list[list[int]]) -> TeacherCompletions:
        """The teacher's completions of `prompts`: from the cache, or generated and written there.

        Several processes: every one reads the cache and they agree (one gather) whether it holds
        the set; if not, each generates its share of the chunks (`chunk_shares`) on its device,
        the shares are gathered, the main process writes the directory and one barrier follows.
        No process waits while another generates alone, so an error every process meets (a
        teacher that cannot generate) stops each with its own traceback rather than leaving the
        others at a barrier until the collective timeout; a failed write only costs the reuse."""
        teacher = self.teachers[0]
        pad_id, end_ids = pad_token_id(teacher.tokenizer), end_token_ids(teacher.model, teacher.tokenizer)
        size = eval_batch_size(self.training_settings)
        fingerprint = completions_fingerprint(teacher, prompts, self.generation, pad_id, end_ids, size)
        directory = self.cache_root / "sequence_kd" / hash_chunks([json.dumps(fingerprint, sort_keys=True).encode()])
        state = PartialState()
        found = read_completions(directory, fingerprint, len(prompts))
        # Agreed before anyone writes: a process that read the finished set must not skip the gather.
        if all(gather_object([found is not None])):
            return TeacherCompletions(found, directory, 0)
        share = self.generate_share(teacher, prompts, pad_id, end_ids, state.device, state.process_index, state.num_processes)
        completions: list[list[int]] = [[] for _ in prompts]
        for index, completion in gather_object(share):
            completions[index] = completion
        if state.is_main_process:
            try:
                write_completions(directory, fingerprint, completions)
            except OSError as error:
                # The completions are in memory: this run trains on them; only the reuse is lost.
                warnings.warn(f"{directory}: the teacher's completions were not cached ({error})", stacklevel=2)
        state.wait_for_everyone()
        return TeacherCompletions(completions, directory, len(completions))

    def generate_share(
        self,
        teacher: LoadedModel,
        prompts: list[list[int]],
        pad_id: int,
        end_ids: tuple[int, ...],
        device: Any,
        process_index: int = 0,
        processes: int = 1,
    ) -> list[tuple[int, list[int]]]:
        """(example index, completion) for the chunks of `chunk_shares` that fall to
        `process_index`; each chunk samples from a seed of its own (its number), so the union of
        the shares is the same for any number of processes."""
        device = place_teacher(teacher, device)
        shares = chunk_shares(prompts, eval_batch_size(self.training_settings), processes)
        found: list[tuple[int, list[int]]] = []
        for number, chunk in shares[process_index]:
            seed = derived_seed(self.generation.seed, "sequence_kd", number)
            generated = generate(
                teacher.model,
                [prompts[index] for index in chunk],
                self.generation,
                seed,
                pad_id,
                end_ids,
                device,
                len(teacher.tokenizer),
            )
            found.extend(zip(chunk, generated))
        return found

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # Sequence-level KD alone (kd_weight 0) needs no teacher forward: its targets are the completions.
        teacher_logits = self.teacher_features(batch).logits if self.logit_kd.weight > 0 else None
        student = self.student_features(batch, with_labels=self.logit_kd.hard_label_weight > 0)
        return self.logit_losses(batch, student, teacher_logits)

    # -- what the run reports -------------------------------------------------------------------

    def update_summary(self, summary: dict[str, Any], teacher_metrics: dict[str, Any] | None) -> None:
        super().update_summary(summary, teacher_metrics)
        found = self.teacher_completions
        if found is None:
            return
        tokens = sum(len(completion) for completion in found.completions)
        summary["sequence_kd"] = {
            "generation": self.generation.describe(),
            "completions": len(found.completions),
            "generated_now": found.generated,
            "read_from_cache": found.generated == 0,
            "mean_completion_length": tokens / max(len(found.completions), 1),
            "cache": str(found.directory),
        }

    def describe_losses(self) -> list[str]:
        return [
            f"sequence-level KD: the student trains on the teacher's completions of the training prompts "
            f"({self.generation.describe()}; cached under {self.cache_root / 'sequence_kd'})",
            *super().describe_losses(),
        ]


def chunk_shares(prompts: list[list[int]], size: int, processes: int) -> list[list[tuple[int, list[int]]]]:
    """Per process, its (chunk number, example indices) to generate: the prompts longest first, in
    chunks of `size` (little padding), chunk n to process n mod `processes`. The chunks and their
    numbers do not depend on `processes`; only who generates them does."""
    order = sorted(range(len(prompts)), key=lambda index: (-len(prompts[index]), index))
    chunks = [order[start : start + size] for start in range(0, len(order), size)]
    return [[(number, chunk) for number, chunk in enumerate(chunks) if number % processes == rank] for rank in range(processes)]


def completions_fingerprint(
    teacher: LoadedModel,
    prompts: list[list[int]],
    generation: GenerationSettings,
    pad_id: int,
    end_ids: tuple[int, ...],
    chunk_size: int,
) -> dict[str, Any]:
    """What decides the completions, one hash per ingredient so that a mismatch can be named.

    Not in it: the teacher's generation_config.json. `generate` decodes under
    `only_these_settings`, so none of its fields applies — except its end tokens, which are in
    `end_ids` (and its pad id, which `pad_id` replaces)."""
    flat = [token for prompt in prompts for token in prompt]
    values = {
        "format": FORMAT_VERSION,
        "teacher weights": weights_hash(teacher.model),
        "tokenizer": tokenizer_hash(teacher.tokenizer),
        "prompts": hash_chunks(
            [torch.tensor([len(prompt) for prompt in prompts]).numpy().tobytes(), torch.tensor(flat).numpy().tobytes()]
        ),
        "examples": len(prompts),
        "generation": generation.fingerprint(),
        "padding id": pad_id,
        "end-of-sequence ids": list(end_ids),
    }
    if generation.sample:
        # A sample depends on its chunk: the chunk's seed, and the rows drawn with it. (Greedy
        # completions are the same in any chunk, so greedy keys leave the size out.)
        values["generation chunk size"] = chunk_size
    return values


def read_completions(directory: Path, fingerprint: dict[str, Any], count: int) -> list[list[int]] | None:
    """The cached completions, or None when the directory holds no complete set made this way."""
    # pyarrow is imported where used: it adds tens of MiB to every process, and only sequence KD needs it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        stored = json.loads((directory / FINGERPRINT_FILE).read_text())
        table = pq.read_table(directory / COMPLETIONS_FILE)
    except (OSError, ValueError, pa.ArrowException):
        return None
    if stored != fingerprint or table.num_rows != count:
        return None
    indices = table.column("index").to_pylist()
    completions: list[list[int]] = [[] for _ in range(count)]
    for index, completion in zip(indices, table.column("completion").to_pylist()):
        completions[index] = completion
    return completions


def write_completions(directory: Path, fingerprint: dict[str, Any], completions: list[list[int]]) -> None:
    """Written beside the final directory and renamed into place, so a reader finds all or nothing."""
    import pyarrow as pa  # where used, as in read_completions
    import pyarrow.parquet as pq

    temporary = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    table = pa.table(
        {
            "index": pa.array(range(len(completions)), pa.int64()),
            "completion": pa.array(completions, pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, temporary / COMPLETIONS_FILE)
    (temporary / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2, sort_keys=True))
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def _training_examples(prompts: list[list[int]], completions: list[list[int]]) -> TokenizedDataset:
    """Prompt + completion per example; the labels count the completion only."""
    return TokenizedDataset(
        {
            "input_ids": [prompt + completion for prompt, completion in zip(prompts, completions)],
            "attention_mask": [[1] * (len(prompt) + len(completion)) for prompt, completion in zip(prompts, completions)],
            "labels": [[IGNORED] * len(prompt) + completion for prompt, completion in zip(prompts, completions)],
            "prompt_length": [len(prompt) for prompt in prompts],
        }
    )
