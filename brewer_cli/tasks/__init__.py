"""Registered tasks; `task.kind` in a recipe names one of them."""

from __future__ import annotations

from brewer_cli.registry import Registry
from brewer_cli.tasks.base import PreparedData, Task, TokenizedDataset
from brewer_cli.tasks.causal_lm import CausalLM
from brewer_cli.tasks.general_corpus import GeneralCorpus
from brewer_cli.tasks.question_answering import QuestionAnswering
from brewer_cli.tasks.sequence_classification import SequenceClassification
from brewer_cli.tasks.token_classification import TokenClassification

TASKS: Registry[type[Task]] = Registry("task")
TASKS.add(
    "causal_lm",
    CausalLM,
    "decoder language modelling: plain text packed into blocks, prompt/completion pairs or chat `messages` "
    "(chat template); the loss and KD count completion tokens only. Metrics: perplexity, token accuracy; "
    "greedy generations of eval prompts in summary.json",
)
TASKS.add(
    "sequence_classification",
    SequenceClassification,
    "one label per text or text pair (`data.text_pair`); num_labels: 1 is regression. Metrics (scikit-learn, scipy): accuracy, F1 (binary), macro F1, Matthews correlation; regression Pearson/Spearman",
)
TASKS.add(
    "token_classification",
    TokenClassification,
    "one tag per word (NER): CoNLL files or tokens/ner_tags rows, first sub-word labelled. Metrics: strict IOB2 entity P/R/F1, F1 per type, word accuracy",
)
TASKS.add(
    "question_answering",
    QuestionAnswering,
    "extractive QA (SQuAD v1.1 / v2): windows with doc_stride, n-best span decoding. Metrics: exact match, F1 (0-100)",
)
TASKS.add(
    "masked_lm",
    GeneralCorpus,
    "general distillation over unlabeled text (one document or sentence per line, or a column), no labels: "
    "bare encoders, intermediate matches only. Measure: the distillation loss on the eval split",
    aliases=("general_corpus",),
)

__all__ = ["TASKS", "Task", "PreparedData", "TokenizedDataset"]
