"""`brewer capture RECIPE`: run the recipe's causal LM teacher once over its training split and
write a sparse store of its next-token distributions (brewer_cli.logit_store), for recipes that
distill from it with `teacher: {store: DIR}` instead of running the teacher at every step.

The recipe is the distillation recipe as it would run with the live teacher (`teacher.checkpoint`):
its task, data and max_length make the tokenized examples the store is keyed on, and its
`distillation.temperature` is the default capture temperature (the run reading the store must use
the same one). Everything the command refuses, it refuses before the teacher runs.
"""

from __future__ import annotations

import math
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from brewer_cli.build import check_names, teacher_missing
from brewer_cli.build.loading import load_teacher
from brewer_cli.build.store import fingerprint_settings
from brewer_cli.errors import BrewerError, ModelError, RecipeError
from brewer_cli.evaluation import eval_batch_size
from brewer_cli.families import parameter_count
from brewer_cli.families.placement import place_teacher
from brewer_cli.logit_store import (
    LOG_PROB_DTYPES,
    capture_store,
    data_fingerprint,
    partial_directory,
    tokenizer_hash,
    weights_hash,
)
from brewer_cli.paths import looks_like_hub_id, resolve_path
from brewer_cli.recipe import Recipe, speaking_of
from brewer_cli.tasks import TASKS

DEFAULT_TOP_K = 64
# float16 log-probabilities: at k = V, forward/reverse KL, JSD and TV from the store stay within 1e-4
# (relative) of the live teacher's loss — 8e-5 at most on tests/test_capture.py's teacher; float32
# within 1e-5 — at 2 bytes per value instead of 4.
DEFAULT_LOG_PROB_DTYPE = "float16"


def default_output(recipe: Recipe, k: int) -> Path:
    return Path("runs") / f"{recipe.name}-teacher-store-k{k}"


def capture(
    recipe: Recipe,
    output: str | Path | None = None,
    top_k: int = DEFAULT_TOP_K,
    temperature: float | None = None,
    log_prob_dtype: str = DEFAULT_LOG_PROB_DTYPE,
    batch_size: int | None = None,
    console: Any = None,
) -> Path:
    """Write the store and print its size; returns its directory."""
    console = console or Console()
    with speaking_of(recipe):
        output, temperature = _check(recipe, output, top_k, temperature, log_prob_dtype, batch_size)
        started = time.monotonic()
        task = TASKS.get(recipe.task.kind)(recipe.task)
        teacher = load_teacher(recipe, task, None)
        vocabulary = min(int(teacher.model.config.vocab_size), len(teacher.tokenizer))
        if top_k > vocabulary:
            raise RecipeError(
                f"--top-k {top_k}: more than the teacher's vocabulary of {vocabulary:,} token ids — give at most "
                f"--top-k {vocabulary} (which keeps the whole distribution)"
            )
        data = task.prepare(recipe, teacher.tokenizer, None)
        # teacher.device and teacher.dtype apply as in a run (auto: the GPU when there is one).
        place_teacher(teacher, "cuda" if torch.cuda.is_available() else "cpu")
        batch = batch_size or eval_batch_size(recipe.training)
        console.print(
            f"capturing the top {top_k} of {vocabulary:,} token ids at temperature {temperature:g} from "
            f"{recipe.teacher.checkpoint} over {len(data.train):,} training examples (batches of {batch}) → {output}",
            markup=False,
        )
        manifest = capture_store(
            teacher,
            task,
            data.train,
            task.collate(teacher.tokenizer),
            output,
            top_k,
            temperature,
            log_prob_dtype,
            batch,
            _manifest_fields(recipe, teacher, data.train),
            vocabulary=vocabulary,
            progress=_progress(console, started),
        )
    tokens = manifest.data["counted_tokens"]
    console.print(
        f"wrote {output}: {manifest.bytes / 2**20:,.1f} MiB in {len(manifest.shards)} shard(s) for {tokens:,} counted "
        f"tokens — {manifest.bytes_per_token:,.1f} bytes per token (top {top_k}, {log_prob_dtype} log-probabilities) "
        f"in {time.monotonic() - started:.0f} s",
        markup=False,
    )
    console.print(
        f"distill from it with `teacher: {{store: {output}}}` and distillation.temperature {temperature:g}", markup=False
    )
    return output


def _check(
    recipe: Recipe, output: str | Path | None, top_k: int, temperature: float | None, log_prob_dtype: str, batch_size: int | None
) -> tuple[Path, float]:
    """Everything refused before the teacher is loaded: the output directory and the command's values."""
    check_names(recipe)
    problems = []
    # The store keeps the distributions of tasks whose teacher logits are dense over a vocabulary at
    # every token (a causal LM's), which the teacher-output cache declines; other tasks' outputs are
    # one small row per example (or per word), which that cache keeps whole.
    if recipe.task is None or TASKS.get(recipe.task.kind).caches_teacher_logits:
        kind = recipe.task.kind if recipe.task is not None else f"{recipe.distillation.kind} (several tasks)"
        problems.append(
            f"{recipe.path}: task.kind: brewer capture stores a causal language model's next-token distributions, and "
            f"this recipe's task is {kind} — its teacher outputs are small enough for the teacher-output cache "
            f"(distillation.teacher_cache), which needs no capture; capture a recipe with task.kind: causal_lm"
        )
    teacher = recipe.teacher
    if teacher is None or teacher.checkpoint is None:
        origin = "a store already" if teacher is not None and teacher.store is not None else "not a checkpoint"
        problems.append(
            f"{recipe.path}: teacher.checkpoint: brewer capture runs the recipe's teacher, and its teacher is {origin} — "
            f"give `teacher: {{checkpoint: DIR or hub id}}`"
        )
    if top_k < 1:
        problems.append(f"--top-k {top_k}: keep at least 1 token id per position (default {DEFAULT_TOP_K})")
    if temperature is not None and (not math.isfinite(temperature) or temperature <= 0):
        problems.append(f"--temperature {temperature:g}: must be a positive number")
    if batch_size is not None and batch_size < 1:
        problems.append(f"--batch-size {batch_size}: must be at least 1")
    if log_prob_dtype not in LOG_PROB_DTYPES:
        problems.append(f"--log-prob-dtype {log_prob_dtype!r}: valid: {', '.join(LOG_PROB_DTYPES)}")
    if problems:
        raise RecipeError(problems)
    if teacher_missing(recipe):
        raise ModelError(
            f"{recipe.path}: teacher.checkpoint: {teacher.checkpoint!r} does not exist — train it first with "
            f"`brewer train-teacher {recipe.path}`, or fix the path"
        )
    target = Path(output) if output is not None else default_output(recipe, top_k)
    if target.exists():
        raise BrewerError(f"{target}: already exists — choose another --output, or delete it to capture again")
    partial = partial_directory(target)
    if partial.exists() and not (partial / "CAPTURING").is_file():
        raise BrewerError(f"{partial}: exists and was not written by brewer capture — move it, or choose another --output")
    if temperature is None:
        temperature = float(getattr(recipe.distillation, "temperature", 1.0))
    return target, temperature


def _progress(console: Any, started: float) -> Any:
    """A line at every tenth of the batches (a capture of a large corpus runs for hours)."""
    shown = [0]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth > shown[0] and done < total:
            shown[0] = tenth
            console.print(f"  {done:,}/{total:,} batches, {time.monotonic() - started:.0f} s", markup=False)

    return report


def _manifest_fields(recipe: Recipe, teacher: Any, train: Any) -> dict[str, Any]:
    source = recipe.teacher.checkpoint
    local = resolve_path(source, recipe)
    path = str(local.resolve()) if local.is_dir() or not looks_like_hub_id(source) else None
    try:
        brewer_version = version("brewer")
    except PackageNotFoundError:
        brewer_version = "unknown"
    return {
        "teacher": {
            "source": source,
            "path": path,
            "revision": getattr(teacher.model.config, "_commit_hash", None),
            "weights_hash": weights_hash(teacher.model),
            # The dtype the weights were hashed in (teacher.dtype): a reload compares in it.
            "dtype": str(next(teacher.model.parameters()).dtype).removeprefix("torch."),
            "parameters": parameter_count(teacher.model),
            "model_type": teacher.model.config.model_type,
        },
        "tokenizer_hash": tokenizer_hash(teacher.tokenizer),
        "data_fingerprint": data_fingerprint(train, fingerprint_settings(recipe)),
        "data": {"task": recipe.task.kind, "max_length": recipe.data.max_length, "recipe": str(recipe.path)},
        "brewer_version": brewer_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
