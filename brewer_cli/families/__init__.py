"""Model families: the one place that knows each architecture's layout — where its layers,
attention projections, feed-forward block, embeddings, pooler and task heads live, and which
config fields hold its sizes — and how its raw outputs become `Features`.

- family.py: `Family`, a layout plus feature extraction (attention captured by hooks, capture.py);
- layout.py: the vocabulary of layouts (module paths, widths, parts);
- registered.py: the registered families (`FAMILIES`) and `family_for`;
- generic.py: how a model with no registered family is read (size-report of GPT-2, a BiGRU);
- parts.py: the parameter counter, in all and by part.
"""

from brewer_cli.families.capture import attention_scores, split_heads
from brewer_cli.families.family import Family
from brewer_cli.families.generic import GenericLayout
from brewer_cli.families.parts import distinct_parameters, parameter_count, parameter_counts_by_part
from brewer_cli.families.registered import FAMILIES, family_for, layout_for, registered_family
from brewer_cli.features import AttentionInputs, FeatureNeeds, Features

__all__ = [
    "FAMILIES",
    "AttentionInputs",
    "Family",
    "FeatureNeeds",
    "Features",
    "GenericLayout",
    "attention_scores",
    "distinct_parameters",
    "family_for",
    "layout_for",
    "parameter_count",
    "parameter_counts_by_part",
    "registered_family",
    "split_heads",
]
