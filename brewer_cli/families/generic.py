"""How brewer reads a model that no family is registered for — a BiGRU student, OPT or T5 in
`brewer size-report` — by the names transformers and common PyTorch code give their modules.

It answers the same questions as `Family` (parts, feed-forward width, position table), so callers
need not know which of the two they hold; a registered family answers from its declared layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from brewer_cli.families.layout import EMBEDDINGS, ENCODER, HEAD, POOLER, module_prefix

# Top-level children of a model without a transformers base model that are task heads.
_HEAD_MODULE_NAMES = {"classifier", "head", "heads", "score", "qa_outputs", "lm_head", "output_layer"}
# Sequence-classification heads that run on every token and pick the last one afterwards
# (GPT-2, Llama), unlike BERT-style heads that read the first token only.
_EVERY_TOKEN_HEAD_NAMES = {"score"}
_GATE_NAMES = {"gate_proj", "gate_up_proj"}  # gated feed-forward blocks (Llama)
_POSITION_TABLE_NAMES = {"position_embeddings", "wpe", "embed_positions"}
_FFN_WIDTH_FIELDS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "hidden_dim")


def config_value(config: Any, field: str) -> Any:
    """A config field, or None where the config (or the field) is missing."""
    if config is None:
        return None
    try:
        return getattr(config, field, None)
    except AttributeError:
        return None


class GenericLayout:
    """The layout of an unregistered model, guessed from module and config names."""

    @staticmethod
    def part_classifier(model: nn.Module) -> Callable[[str], str]:
        """A function from a parameter or module path to the part it belongs to."""
        base = getattr(model, "base_model", model)
        if not isinstance(base, nn.Module):
            base = model
        base_prefix = module_prefix(model, base)
        # Lookup tables whose names do not say "embed" (GPT-2's wte and wpe).
        embedding_children = {name for name, child in base.named_children() if isinstance(child, nn.Embedding)}
        has_distinct_base = bool(base_prefix)

        def classify(path: str) -> str:
            if has_distinct_base:
                if not path.startswith(base_prefix + "."):
                    return HEAD
                path = path[len(base_prefix) + 1 :]
            first = path.split(".")[0]
            if "pooler" in first:
                return POOLER
            if not has_distinct_base and first in _HEAD_MODULE_NAMES:
                return HEAD
            if "embed" in first.lower() or first in embedding_children:
                return EMBEDDINGS
            return ENCODER

        return classify

    @staticmethod
    def ffn_width(config: Any) -> int | None:
        for field in _FFN_WIDTH_FIELDS:
            value = config_value(config, field)
            if isinstance(value, int):
                return value
        hidden = config_value(config, "hidden_size")
        # GPT-2 stores n_inner=None to mean the conventional 4 × hidden.
        return 4 * hidden if isinstance(hidden, int) else None

    @staticmethod
    def embedding_size(config: Any) -> int | None:
        return config_value(config, "embedding_size")

    @staticmethod
    def position_embeddings(model: nn.Module) -> nn.Embedding | None:
        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLE_NAMES:
                return module
        return None

    @staticmethod
    def ffn_matrices(model: nn.Module) -> int:
        gated = any(name.rsplit(".", 1)[-1] in _GATE_NAMES for name, _ in model.named_modules())
        return 3 if gated else 2

    @staticmethod
    def head_reads_every_token(module_name: str) -> bool:
        return module_name.rsplit(".", 1)[-1] in _EVERY_TOKEN_HEAD_NAMES


GENERIC_LAYOUT = GenericLayout()
