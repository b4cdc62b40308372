"""Every registered name a recipe may use — tasks, distillers, losses, schedules, projections,
synthetic datasets, model families, match presets — with its aliases and description, known
without importing the modules that register them.

Why a checked-in manifest: the registries are filled by the modules that implement the entries
(losses, distillers, tasks, families), and those import torch and transformers — seconds before a
misspelled loss could be reported, and `brewer catalog` would wait for them too. The recipe layer
validates names against this manifest instead, so every problem of a recipe is reported before
torch is imported. Registering entries lazily would have spread import paths as strings over
every module; a manifest keeps the implementations as they are and costs one line per entry.
`tests/test_catalog.py` holds it to the live registries exactly (names, aliases,
descriptions, model types, formulas): adding a loss without its line here fails that test, which
prints the line to add. Match presets are read from their files (configs/matches/), so they cannot
drift.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator

from brewer_cli.paths import PACKAGE_CONFIGS
from brewer_cli.recipe.base import did_you_mean
from brewer_cli.registry import Registry


@dataclass(frozen=True)
class Column:
    """A data column a task reads: `role` names the recipe field that renames it (`data.text`,
    and `data.train.text` when `per_split`); `default` is its name when the recipe gives none
    (None: the task reads it only when the recipe names it, as `text_pair`)."""

    role: str
    default: str | None
    per_split: bool = True


@dataclass(frozen=True)
class Named:
    """What is known of a registered entry without importing it."""

    model_types: tuple[str, ...] = ()  # model families: the config `model_type`s they serve
    formula: str = ""  # match losses: the formula `brewer catalog` shows
    columns: tuple[Column, ...] = ()  # tasks: the data columns each split must have
    plain_text_files: bool = False  # tasks: reads .txt files as one text per line, without columns


def _names(what: str, *entries: tuple[str, str, Named] | tuple[str, str, Named, tuple[str, ...]]) -> Registry[Named]:
    registry: Registry[Named] = Registry(what)
    for name, description, named, *aliases in entries:
        registry.add(name, named, description, aliases[0] if aliases else ())
    return registry


_TEXT = Column("text", "text")
_LABEL = Column("label", "label")

TASK_NAMES = _names(
    "task",
    (
        "causal_lm",
        "decoder language modelling: plain text packed into blocks, prompt/completion pairs or chat `messages` "
        "(chat template); the loss and KD count completion tokens only. Metrics: perplexity, token accuracy; "
        "greedy generations of eval prompts in summary.json",
        # No `text` column: data.text has a default that a run's resolved recipe writes out, and a
        # prompt/completion or chat data set has no such column (the reader checks it for plain text).
        Named(
            columns=(
                Column("prompt", None, False),
                Column("completion", None, False),
                Column("messages", None, False),
            ),
            plain_text_files=True,
        ),
    ),
    (
        "masked_lm",
        "general distillation over unlabeled text (one document or sentence per line, or a column), no labels: "
        "bare encoders, intermediate matches only. Measure: the distillation loss on the eval split",
        Named(columns=(_TEXT,), plain_text_files=True),
        ("general_corpus",),
    ),
    (
        "question_answering",
        "extractive QA (SQuAD v1.1 / v2): windows with doc_stride, n-best span decoding. Metrics: exact match, F1 (0-100)",
        Named(
            columns=(
                Column("question", "question", False),
                Column("context", "context", False),
                Column("answers", "answers", False),
            )
        ),
    ),
    (
        "sequence_classification",
        "one label per text or text pair (`data.text_pair`); num_labels: 1 is regression. Metrics (scikit-learn, "
        "scipy): accuracy, F1 (binary), macro F1, Matthews correlation; regression Pearson/Spearman",
        Named(columns=(_TEXT, Column("text_pair", None), _LABEL)),
    ),
    (
        "token_classification",
        "one tag per word (NER): CoNLL files or tokens/ner_tags rows, first sub-word labelled. Metrics: strict IOB2 "
        "entity P/R/F1, F1 per type, word accuracy",
        Named(columns=(Column("tokens", "tokens", False), Column("tags", "ner_tags", False))),
    ),
)

DISTILLER_NAMES = _names(
    "distiller",
    ("basic", "logit KD (ce | kl | mse, temperature, schedules) + weighted hard-label loss", Named()),
    (
        "general",
        "basic + intermediate-layer matches (hidden, attention, relations; presets, uniform map, projections)",
        Named(),
    ),
    (
        "multi_task",
        "one student encoder with a head per task, each task distilled from its own teacher; batches drawn per task ∝ |D_k|^τ",
        Named(),
    ),
    (
        "multi_teacher",
        "KD against the weighted mean of several teachers' logits (each may use its own tokenizer) + hard label; "
        "optional matches against one teacher",
        Named(),
    ),
    (
        "on_policy",
        "on-policy KD for causal LMs (GKD): with probability student_data_fraction (λ) a batch's completions are "
        "sampled from the student and the teacher scores them, kd_loss on the sampled tokens; else token KD on the data",
        Named(),
    ),
    (
        "sequence_kd",
        "sequence-level KD for causal LMs (Kim & Rush): the student trains on the teacher's completions of the "
        "training prompts (generated once, cached), cross-entropy + optional token KD",
        Named(),
    ),
    ("trainer", "supervised training of `model` on the labels (teacher fine-tuning)", Named()),
)

KD_LOSS_NAMES = _names(
    "KD loss",
    ("ce", "cross-entropy to the teacher's softened distribution (TextBrewer's default)", Named()),
    ("kl", "KL divergence teacher ‖ student on softened distributions", Named()),
    ("mse", "mean squared error between temperature-scaled logits", Named()),
    ("forward_kl", "KL(p_T ‖ p_S) per token, chunked over tokens; dense or sparse teacher", Named()),
    (
        "jsd",
        "generalized JSD(β) = β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S, β = distillation.jsd_beta "
        "in (0, 1) (GKD/TRL; → β·forward KL as β → 0, (1−β)·reverse KL as β → 1); chunked; dense or sparse teacher",
        Named(),
    ),
    ("reverse_kl", "KL(p_S ‖ p_T) per token (mode-seeking, MiniLLM), chunked; dense or sparse teacher", Named()),
    (
        "skew_kl",
        "skew KL(p_T ‖ α·p_T + (1−α)·p_S), α = distillation.skew_alpha in [0, 1) (DistiLLM; α = 0 is forward KL); "
        "chunked; dense or sparse teacher",
        Named(),
    ),
    (
        "skew_reverse_kl",
        "skew reverse KL(p_S ‖ α·p_S + (1−α)·p_T), α = distillation.skew_alpha in [0, 1) (DistiLLM; α = 0 is reverse "
        "KL); chunked; dense or sparse teacher",
        Named(),
    ),
    ("tv", "total variation ½·Σ|p_T − p_S| per token, chunked; dense or sparse teacher", Named()),
)

_RELATION = (
    "split d into r relation heads (default r = teacher heads); mean over r heads and valid queries of "
    "KL(softmax(XXᵀ/√(d/r))_T ‖ softmax(XXᵀ/√(d/r))_S) over valid keys, X = "
)

MATCH_LOSS_NAMES = _names(
    "match loss",
    (
        "attention_ce",
        "cross-entropy between attention distributions, head by head",
        Named(formula="mean over heads and valid queries of −Σ_valid keys softmax(A_T) · log softmax(A_S)"),
    ),
    (
        "attention_ce_mean",
        "cross-entropy between head-averaged attention distributions (any head counts)",
        Named(formula="mean over valid queries of −Σ_valid keys softmax(mean_h A_T) · log softmax(mean_h A_S)"),
    ),
    (
        "attention_mse",
        "MSE between attention scores, head by head",
        Named(formula="mean over heads and valid (query, key) pairs of (A_S − A_T)², A = pre-softmax scores"),
    ),
    (
        "attention_mse_sum",
        "MSE between attention scores summed over heads (any head counts)",
        Named(formula="mean over valid (query, key) pairs of (Σ_h A_S − Σ_h A_T)²"),
    ),
    (
        "cos",
        "cosine distance between hidden states over real tokens",
        Named(formula="mean over valid tokens of 1 − cos(h_S, h_T)"),
    ),
    (
        "fsp",
        "FSP / Gram-matrix MSE between two layers (feature-channel relations)",
        Named(formula="G = X₀ᵀX₁ / n_valid per example (d×d, valid tokens); mean over elements of (G_S − G_T)²"),
        ("gram",),
    ),
    (
        "hidden_mse",
        "mean squared error between hidden states over real tokens",
        Named(formula="Σ_valid ‖h_S − h_T‖² / (n_valid · d)"),
    ),
    (
        "minilm_attention",
        "MiniLM self-attention distribution KL, head by head",
        Named(formula="mean over heads and valid queries of KL(softmax(QKᵀ/√d_k)_T ‖ softmax(QKᵀ/√d_k)_S) over valid keys"),
    ),
    (
        "minilm_value_relation",
        "MiniLM value-relation KL, head by head",
        Named(formula="mean over heads and valid queries of KL(softmax(VVᵀ/√d_k)_T ‖ softmax(VVᵀ/√d_k)_S) over valid keys"),
    ),
    (
        "nst",
        "TextBrewer's NST/MMD: MSE between token-relation matrices of two layers",
        Named(formula="G = X₀X₁ᵀ / d per example (L×L, d each side's width); mean over valid (i, j) of (G_S − G_T)²"),
        ("mmd",),
    ),
    (
        "nst_kernel",
        "neuron selectivity transfer: polynomial-kernel MMD² of normalized features",
        Named(
            formula="per example, samples = feature channels unit-normalized over valid tokens, k(x,y) = (xᵀy)²: "
            "MMD² = mean k(s,s') + mean k(t,t') − 2 mean k(s,t) = ‖S Sᵀ/d_S − T Tᵀ/d_T‖²_F; mean over the batch"
        ),
    ),
    (
        "pkd",
        "patient-KD distance between normalized [CLS] states",
        Named(formula="mean over the batch of ‖h_S[:,0]/‖h_S[:,0]‖ − h_T[:,0]/‖h_T[:,0]‖‖²"),
    ),
    (
        "relation_kk",
        "MiniLMv2 key-key self-relation KL over re-split relation heads",
        Named(formula=_RELATION + "keys"),
    ),
    (
        "relation_qq",
        "MiniLMv2 query-query self-relation KL over re-split relation heads",
        Named(formula=_RELATION + "queries"),
    ),
    (
        "relation_vv",
        "MiniLMv2 value-value self-relation KL over re-split relation heads",
        Named(formula=_RELATION + "values"),
    ),
    (
        "tinybert_attention",
        "TinyBERT MSE between pre-softmax attention scores",
        Named(
            formula="Σ over heads and valid (query, key) pairs of (A_S − A_T)² / (h · Σ_b n_b²), n_b = valid tokens of example b"
        ),
    ),
    (
        "tinybert_hidden",
        "TinyBERT hidden/embedding MSE through one shared projection",
        Named(formula="Σ_valid ‖W h_S − h_T‖² / (n_valid · d), one W for all layers and the embeddings"),
    ),
)

TEMPERATURE_SCHEDULE_NAMES = _names(
    "temperature schedule",
    ("constant", "the configured temperature for every row", Named()),
    ("cwsm", "higher temperature where the student is confident (CWSM)", Named()),
    ("flsw", "higher temperature where student and teacher logits agree (FLSW)", Named()),
)

WEIGHT_SCHEDULE_NAMES = _names(
    "weight schedule",
    ("constant", "the configured weight throughout", Named()),
    ("linear_decay", "weight × (1 − step/total_steps)", Named()),
    ("linear_growth", "weight × step/total_steps", Named()),
)

PROJECTION_NAMES = _names(
    "projection",
    ("linear", "Linear(student width → teacher width)", Named()),
    ("relu", "Linear(student width → teacher width) then ReLU", Named()),
    ("tanh", "Linear(student width → teacher width) then tanh", Named()),
)

SYNTHETIC_DATASET_NAMES = _names(
    "synthetic dataset",
    (
        "entity_sentences",
        "sentences with people, places and organisations tagged in IOB2 (PER, LOC, ORG); names such as 'jordan' are "
        "a person or a place by context",
        Named(),
    ),
    (
        "negation_sentiment",
        "movie-review sentences with negation, contrast and distractor clauses; labels positive/negative, 3% noise",
        Named(),
    ),
    (
        "review_verdicts",
        "the negation_sentiment reviews as prompt/completion pairs for causal LMs: prompt the review, completion its "
        "verdict and the clause it rests on; `text` holds both",
        Named(),
    ),
)

FAMILY_NAMES = _names(
    "model family",
    ("albert", "ALBERT: one shared layer block, factorized embeddings (counted once in sizes)", Named(("albert",))),
    ("bert", "BERT (and any bert model_type checkpoint): token types, post-LN encoder", Named(("bert",))),
    ("deberta-v2", "DeBERTa-v2/v3: disentangled attention; hidden-state and logit losses only", Named(("deberta-v2",))),
    ("distilbert", "DistilBERT: 6-layer BERT without token types or pooler", Named(("distilbert",))),
    ("electra", "ELECTRA discriminators (embeddings projected to the hidden width when smaller)", Named(("electra",))),
    (
        "gpt2",
        "GPT-2: pre-LN decoder, fused q/k/v Conv1D, learned positions, LM head tied to the token embeddings",
        Named(("gpt2",)),
    ),
    (
        "llama",
        "Llama / Mistral / Qwen2 / Qwen3: pre-RMSNorm decoder, grouped-query attention, RoPE, gated MLP",
        Named(("llama", "mistral", "qwen2", "qwen3")),
    ),
    ("roberta", "RoBERTa / CamemBERT: BPE vocabulary, no token types", Named(("roberta", "camembert"))),
    ("xlm-roberta", "XLM-RoBERTa: multilingual RoBERTa with a SentencePiece vocabulary", Named(("xlm-roberta",))),
)


@functools.cache
def preset_names() -> Registry[Named]:
    """The match presets shipped in configs/matches/, by file name, with their descriptions (read
    on first use: only recipes that name a preset, and the catalog, need them)."""
    registry: Registry[Named] = Registry("match preset")
    for path in sorted((PACKAGE_CONFIGS / "matches").glob("*.yaml")):
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
        description = content.get("description", "") if isinstance(content, dict) else ""
        registry.add(path.stem, Named(), str(description))
    return registry


def model_types() -> list[str]:
    """Every config `model_type` a registered family serves."""
    return sorted(model_type for entry in FAMILY_NAMES for model_type in entry.value.model_types)


def unknown_model_type_message(model_type: Any) -> str:
    """Why a model_type cannot be used, listing brewer's families (not every transformers type)."""
    known = model_types()
    return (
        f"model_type {model_type!r} has no registered family{did_you_mean(str(model_type), known)} — registered: "
        f"{', '.join(known)}. Use a checkpoint or config of one of these architectures."
    )


def registered(names: Registry[Named] | Any, fix: str = "") -> AfterValidator:
    """A pydantic validator refusing a name `names` does not hold (`names`: a registry, or a function
    returning one, for registries read on first use); `fix` is added to the message."""

    def check(value: str) -> str:
        registry = names() if callable(names) else names
        if value not in registry:
            raise ValueError(registry.unknown_message(value) + fix)
        return value

    return AfterValidator(check)


# Recipe fields that name a registry entry: checked by the schema, so a misspelled name is
# reported with every other problem of the recipe, under its full dotted path.
TaskKind = Annotated[str, registered(TASK_NAMES)]
KDLossName = Annotated[str, registered(KD_LOSS_NAMES)]
MatchLossName = Annotated[str, registered(MATCH_LOSS_NAMES)]
TemperatureScheduleName = Annotated[str, registered(TEMPERATURE_SCHEDULE_NAMES)]
WeightScheduleName = Annotated[str, registered(WEIGHT_SCHEDULE_NAMES)]
ProjectionName = Annotated[str, registered(PROJECTION_NAMES)]
SyntheticDatasetName = Annotated[str, registered(SYNTHETIC_DATASET_NAMES)]
PresetName = Annotated[
    str,
    registered(preset_names, " — or give the entry explicitly ({teacher_layer, student_layer, loss, …}) or `uniform`"),
]
