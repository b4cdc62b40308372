"""The recipe's sections other than distillation: the task, its data (and augmentation), the
models (teacher, student, the one a `trainer` trains), training, and the entries of `tasks:`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from brewer_cli.recipe.base import Strict, did_you_mean
from brewer_cli.recipe.names import SyntheticDatasetName, TaskKind

# ----------------------------------------------------------------------------- task and data


class TaskSpec(Strict):
    kind: TaskKind = Field(description="registered task, see `brewer catalog`")
    num_labels: int | None = Field(default=None, ge=1, description="classes; 1 means regression")
    labels: tuple[str, ...] | None = Field(default=None, description="label names in id order")
    # Token classification / QA settings live here too, read by their task only.
    doc_stride: int | None = Field(default=None, ge=1)
    max_answer_length: int | None = Field(default=None, ge=1)
    n_best: int | None = Field(default=None, ge=1)
    version_2_with_negative: bool | None = None
    label_all_tokens: bool | None = None
    generations: int | None = Field(
        default=None, ge=0, description="causal_lm: greedy generations of eval prompts in summary.json (default 3; 0: none)"
    )
    max_new_tokens: int | None = Field(default=None, ge=1, description="causal_lm: tokens per eval generation (default 32)")
    mask_probability: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="masked_lm: mask this share of the tokens on the fly, as DataCollatorForLanguageModeling does "
        "(80% [MASK], 10% random, 10% kept; 0.15 is BERT's); 0: the text as it is (TinyBERT, MiniLM)",
    )


class DataSource(Strict):
    """One split: from the hub, from a local file, from a `save_to_disk` directory, or generated."""

    hub: str | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = Field(default=None, description="hub: a branch, tag or commit of the dataset (default: main)")
    path: str | None = None
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "text", "disk", "conll", "squad"] = Field(
        default="auto",
        description="auto: from the name (.csv, .tsv, .json, .jsonl, .txt/.text, .conll; a directory is disk); "
        "text: one example per non-blank line, in column `text`",
    )
    quoting: bool = Field(default=False, description="TSV: honour CSV quoting (off: plain tab split)")
    streaming: bool = Field(
        default=False,
        description="masked_lm data.train: read the text files or hub dataset as a stream, never whole; an epoch is "
        "training.steps_per_epoch steps, and --resume continues at the same position",
    )
    synthetic: SyntheticDatasetName | None = Field(default=None, description="a generator registered in brewer_cli.synthetic")
    examples: int | None = Field(default=None, ge=1, description="synthetic: how many examples")
    seed: int = 0
    limit: int | None = Field(default=None, ge=1, description="keep only the first N examples")
    articles: str | None = Field(
        default=None,
        description="SQuAD: keep the questions of articles START:END (0-based, END excluded, like a Python "
        'slice, e.g. "0:38" and "38:48"), so a train/eval split never shares a paragraph; applied before `limit`',
    )
    # Column names; when absent the values under `data` apply.
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None

    @field_validator("articles")
    @classmethod
    def _article_range(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\s*\d*\s*:\s*\d*\s*", value):
            raise ValueError(f'{value!r} is not an article range — write START:END, e.g. "0:38" (either side may be empty)')
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> DataSource:
        origins = [name for name in ("hub", "path", "synthetic") if getattr(self, name) is not None]
        if len(origins) != 1:
            raise ValueError(
                "give exactly one of `hub`, `path` or `synthetic`" + (f" (found {', '.join(origins)})" if origins else "")
            )
        if self.hub is not None and self.split is None:
            raise ValueError("a hub source needs `split` (e.g. train, validation)")
        return self


class AugmentSpec(Strict):
    """TinyBERT data augmentation of the training split (brewer_cli.augment), run before training
    and cached: each word outside a built-in stop-word list is a candidate; a single-piece word takes
    the masked LM's top `candidates` predictions, a multi-piece word (or every word, without `model`)
    its nearest neighbours in `word_vectors`; `variants` tries per example, each replacing every
    candidate word with probability `probability`. The original is kept, duplicates are dropped."""

    model: str | None = Field(
        default=None, description="masked-LM checkpoint with its MLM head: hub id, directory or python-package:NAME"
    )
    word_vectors: str | None = Field(
        default=None,
        description="word vectors in GloVe text format (`word v1 v2 …` per line), "
        "or embeddings:CHECKPOINT for a model's input embeddings of whole words",
    )
    tokenizer: str | None = Field(default=None, description="splits words when there is no `model` (default: the teacher's)")
    variants: int = Field(default=20, ge=1, description="N_a: augmented variants tried per example")
    probability: float = Field(default=0.4, gt=0, le=1, description="p: chance that a candidate word is replaced")
    candidates: int = Field(default=15, ge=1, description="K: MLM predictions (or neighbours) per word")
    seed: int = 0
    batch_size: int = Field(default=64, ge=1, description="masked-LM inference batch")
    output: str | None = Field(
        default=None, description="the augmented file (.jsonl or .tsv); default: the cache, ~/.cache/brewer/augment/"
    )

    @model_validator(mode="after")
    def _a_source_of_candidates(self) -> AugmentSpec:
        if self.model is None and self.word_vectors is None:
            raise ValueError("give `model` (a masked LM), `word_vectors` (a GloVe-format file), or both")
        return self


class DataSpec(Strict):
    train: DataSource
    eval: DataSource | None = None
    augment: AugmentSpec | None = Field(default=None, description="augment the training split first (TinyBERT)")
    max_length: int = Field(default=128, ge=8, le=8192)
    num_proc: int | None = Field(
        default=None,
        ge=1,
        description="processes that tokenize (a batched `datasets` map); default: the cores available for splits "
        "of 100,000 rows or more, else 1",
    )
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    # Extra fields per task (token classification / QA column names).
    tokens: str | None = None
    tags: str | None = None
    question: str | None = None
    context: str | None = None
    answers: str | None = None
    # causal_lm: which columns hold the text (plain `text`, or a prompt and its completion, or chat
    # `messages`); the loss counts completion (assistant) tokens only when there is a prompt.
    prompt: str | None = Field(default=None, description="causal_lm: the prompt column (with data.completion)")
    completion: str | None = Field(default=None, description="causal_lm: the completion column (with data.prompt)")
    messages: str | None = Field(
        default=None, description="causal_lm: a column of chat messages [{role, content}], rendered by the chat template"
    )
    packing: bool = Field(
        default=True,
        description="causal_lm plain text: pack documents (EOS after each) into blocks of max_length tokens; "
        "false: one example per document, truncated",
    )


# ----------------------------------------------------------------------------- models


class WordPieceTraining(Strict):
    vocab_size: int = Field(default=1000, ge=16)
    lowercase: bool = True
    min_frequency: int = Field(default=1, ge=1)


class TokenizerSpec(Strict):
    """A tokenizer from a directory or hub id, or a WordPiece vocabulary trained on the training text."""

    path: str | None = None
    train_wordpiece: WordPieceTraining | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> TokenizerSpec:
        if (self.path is None) == (self.train_wordpiece is None):
            raise ValueError("give exactly one of `path` or `train_wordpiece`")
        return self


_COUNT_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}


def parse_count(value: Any) -> Any:
    """A parameter count: an integer, or a number with K, M or G (B) as in "15M" or "800K" —
    decimal multiples, as papers count parameters (BERT-base is "110M")."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a parameter count — give an integer or a number with K, M or G (e.g. 15M, 800K)")
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGBkmgb]?)\s*", value.replace("_", ""))
    if match is None:
        raise ValueError(f"{value!r} is not a parameter count — give an integer or a number with K, M or G (e.g. 15M, 800K)")
    number, suffix = match.groups()
    # Decimal arithmetic on the digits, so "1.1M" is exactly 1,100,000.
    whole, _, fraction = number.partition(".")
    scale = _COUNT_SUFFIXES[suffix.upper()] if suffix else 1
    count = int(whole) * scale
    if fraction:
        part, remainder = divmod(int(fraction) * scale, 10 ** len(fraction))
        if remainder:
            raise ValueError(f"{value!r} is not a whole number of parameters — give an integer or a number with K, M or G")
        count += part
    return count


class ExtractTarget(Strict):
    """`student.init.extract.target`: the student's budget; extraction chooses layers, hidden,
    heads, head size and FFN width by the importance scores (exactly one key)."""

    parameters: int | None = Field(default=None, ge=1, description='at most this many parameters: 15000000, "15M", "800K"')
    flops_fewer_by: float | None = Field(default=None, ge=1, description="at least this many times fewer FLOPs than the teacher")
    latency_fewer_by: float | None = Field(
        default=None, ge=1, description="at least this many times faster than the teacher (FLOPs as the proxy)"
    )
    size_of: str | None = Field(
        default=None, description="no larger than this student config (e.g. configs/students/t4-tiny.json)"
    )

    @field_validator("parameters", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return parse_count(value)

    @model_validator(mode="after")
    def _one_key(self) -> ExtractTarget:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of parameters, flops_fewer_by, latency_fewer_by, size_of"
                + (f" (found {', '.join(given)})" if given else "")
            )
        return self


class ExtractSpec(Strict):
    """ETD: build the student from the teacher's own parameters."""

    from_: Literal["teacher"] = Field(default="teacher", alias="from")
    target: ExtractTarget | None = Field(default=None, description="a budget; extraction chooses the sizes")
    layers: int | tuple[int, ...] | None = None
    selection: Literal["uniform", "first", "last"] = "uniform"
    hidden: int | None = Field(default=None, ge=1)
    heads: int | None = Field(default=None, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    intermediate: int | None = Field(default=None, ge=1)
    key_value_heads: int | None = Field(
        default=None,
        ge=1,
        description="grouped-query teachers (Llama): key/value groups kept, each with heads/groups query heads",
    )
    strategy: Literal["random", "importance", "activation"] = Field(
        default="importance",
        description="importance: Taylor scores on the task loss (ETD-Impt); activation: every head, neuron and channel "
        "ranked by its mean |activation| (Minitron); random: seeded subsets (ETD-Rand)",
    )
    hidden_scoring: Literal["taylor", "activation"] = Field(
        default="taylor", description="strategy importance only: how hidden channels are ranked (activation: hidden states)"
    )
    rounds: int = Field(default=1, ge=1)
    seed: int = 0
    examples: int = Field(default=256, ge=1, description="importance/activation: examples scored")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _target_or_sizes(self) -> ExtractSpec:
        sizes = [name for name in ("layers", "hidden", "heads", "head_dim", "intermediate") if getattr(self, name) is not None]
        if self.target is not None and sizes:
            listed = ", ".join(sizes)
            raise ValueError(
                f"`target` chooses layers, hidden, heads, head_dim and intermediate itself, so it cannot be combined "
                f"with {listed} — remove {listed} to extract to the target, or remove `target` to keep your sizes"
            )
        return self


class InitSpec(Strict):
    extract: ExtractSpec


class ModelSpec(Strict):
    """A model: a checkpoint (local directory or hub id), a config (random init), or extracted."""

    checkpoint: str | None = None
    config: str | dict[str, Any] | None = None
    init: InitSpec | None = None
    tokenizer: TokenizerSpec | None = None
    # Where a model may come from; a teacher may also be a store of its logits (TeacherSpec).
    origins: ClassVar[tuple[str, ...]] = ("checkpoint", "config", "init")

    @model_validator(mode="after")
    def _one_origin(self) -> ModelSpec:
        origins = [name for name in self.origins if getattr(self, name) is not None]
        if len(origins) != 1:
            names = [f"`{name}`" for name in self.origins]
            raise ValueError(
                f"give exactly one of {', '.join(names[:-1])} or {names[-1]}"
                + (f" (found {', '.join(origins)})" if origins else "")
            )
        return self


# torch.compile backends `training.compile` may name (`true` means inductor).
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
# Experiment trackers `training.report_to` may name: Accelerate's tracker names
# (accelerate.tracking.LOGGER_TYPE_TO_CLASS, checked by tests/test_tracking_and_logs.py), kept here
# because the recipe layer imports neither accelerate nor torch.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
# Learning-rate schedules `training.lr_schedule` may name: transformers' SchedulerType values that
# get_scheduler builds from the warmup and total steps alone (tests/test_tracking_and_logs.py lists
# the ones left out and why: reduce_lr_on_plateau and greedy step on a metric, cosine_with_min_lr and
# cosine_warmup_with_min_lr need a minimum rate, warmup_stable_decay its decay steps).
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


class TrainingSpec(Strict):
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs when set")
    steps_per_epoch: int | None = Field(
        default=None,
        ge=1,
        description="streamed data (data.train.streaming): the steps of an epoch, which a stream has no end to define",
    )
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=5.0e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.1, ge=0, le=1, description="fraction of steps with linear warmup")
    lr_schedule: Literal[LR_SCHEDULES] = Field(
        default="linear",
        description="the learning rate after warmup, by transformers.get_scheduler: " + ", ".join(LR_SCHEDULES),
    )
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    on_nan: Literal["stop", "skip_batch"] = Field(
        default="stop",
        description="a non-finite loss or gradient norm: stop (exit 2, nothing non-finite written) or skip_batch "
        "(no optimizer step for that batch; the step still counts and the schedule moves on; counted in summary.json)",
    )
    nan_patience: int = Field(default=10, ge=1, description="skip_batch: stop after this many non-finite batches in a row")
    gradient_accumulation: int = Field(default=1, ge=1)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 42
    eval_every: int | None = Field(default=None, ge=1, description="steps; default once per epoch")
    save_every: int | None = Field(default=None, ge=1, description="steps; default = eval_every")
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    group_by_length: bool = False
    progress: bool = True
    report_to: tuple[Literal[TRACKERS], ...] = Field(
        default=(),
        description="experiment trackers that get every metrics.jsonl record, through Accelerate: "
        + ", ".join(TRACKERS)
        + ' (install one with pip install "brewer[tensorboard]", "brewer[wandb]", …)',
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads per process (default: the cores this process may use, divided among "
        "the processes started on this machine)",
    )
    metric_for_best: str | None = Field(
        default=None,
        description="the eval metric that picks the best checkpoint (default: the task's primary metric); any "
        "metric the task reports, e.g. f1 — a multi-task run's per-task ones as <task>.<metric>",
    )
    load_best_at_end: bool = Field(
        default=True,
        description="final/, the printed table and summary.json's student are the best checkpoint's (by "
        "metric_for_best) when there is an eval split; false: the last step's",
    )
    compile: bool | str = Field(
        default=False,
        description="torch.compile the student in place (true = inductor, or a backend by name: "
        f"{', '.join(COMPILE_BACKENDS)}): slow first steps (and one recompile per new batch shape until shapes go "
        "dynamic), faster steps after, mostly on GPUs",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_several(cls, value: Any) -> Any:
        # Trainer's spelling: a single name, or "none".
        if value == "none":
            return ()
        return (value,) if isinstance(value, str) else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_backend_known(cls, value: Any) -> Any:
        # Before the union: one message naming every valid value, not one per union member.
        if isinstance(value, bool) or value in COMPILE_BACKENDS:
            return value
        raise ValueError(
            f"{value!r} is not allowed{did_you_mean(str(value), list(COMPILE_BACKENDS))} — valid: true, "
            f"false, {', '.join(COMPILE_BACKENDS)}"
        )

    @property
    def compile_backend(self) -> str | None:
        """The torch.compile backend `compile` asks for, None when off."""
        if self.compile is False:
            return None
        return "inductor" if self.compile is True else self.compile


class TeacherTraining(Strict):
    """How to train the teacher when `teacher.checkpoint` does not exist yet."""

    model: ModelSpec
    training: TrainingSpec = TrainingSpec()


class TeacherSpec(ModelSpec):
    train: TeacherTraining | None = None
    store: str | None = Field(
        default=None,
        description="a directory written by `brewer capture`: the teacher's top-k next-token distributions, read in "
        "place of a teacher model (kind basic, causal_lm)",
    )
    tail: Literal["zero", "uniform"] = Field(
        default="zero",
        description="with `store`: the teacher's mass outside its top k — zero: dropped (the top k renormalized to "
        "sum to 1), uniform: spread evenly over the other token ids",
    )
    origins: ClassVar[tuple[str, ...]] = ("checkpoint", "config", "init", "store")
    # Placement (brewer_cli/families/placement.py): a large teacher may sit on another device than
    # the student, and run in half precision while the student keeps fp32 master weights.
    device: str = Field(
        default="auto",
        description="where the teacher runs: auto (the training device), cpu, cuda or cuda:N; its inputs are moved "
        "there and its outputs back to the student's device",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="the teacher's weights as loaded: auto (as saved; float32 when the checkpoint says nothing), "
        "float32, bfloat16 or float16 — the student trains in fp32 whatever this is",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(
                f"{value!r} is not a device brewer places a teacher on — use auto, cpu, cuda or cuda:N (e.g. cuda:1)"
            )
        return value

    @model_validator(mode="after")
    def _train_target(self) -> TeacherSpec:
        if self.store is not None and self.train is not None:
            raise ValueError("a teacher read from a `store` is not trained: remove `train`, or give `checkpoint`")
        # The default may be written back by derived recipes (stages, the resolved recipe), so only a
        # tail other than the default tells that the user meant a store.
        if self.store is None and self.tail != "zero":
            raise ValueError("`tail` says how a teacher `store` spreads its remaining mass: it needs `store`")
        if self.train is not None:
            if self.checkpoint is None:
                raise ValueError("`train` needs `checkpoint`: the directory the trained teacher is written to")
            if Path(self.checkpoint).name != "final":
                raise ValueError(
                    f"with `train`, `checkpoint` must be a run's final directory (…/<run name>/final), got {self.checkpoint!r}"
                )
        return self


class WeightedTeacherSpec(TeacherSpec):
    """One entry of `teachers:` (kind multi_teacher)."""

    weight: float = Field(default=1.0, gt=0, description="its share in the weighted mean of the teachers' logits")


def _task_name(name: str) -> str:
    # A task's name becomes a directory of the exported student (final/<task>/).
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(
            "a task name becomes the directory final/<name>/ of its student: use letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


TaskName = Annotated[str, AfterValidator(_task_name)]


class TaskEntry(Strict):
    """One entry of `tasks:` (kind multi_task): the task, its data and the teacher for it."""

    task: TaskSpec
    data: DataSpec
    teacher: TeacherSpec
