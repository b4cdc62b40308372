"""The registered families, with their layouts, and how a config or model finds its family.

Every family loads through the `transformers` Auto classes, so a local directory and a hub id take
the same path; what differs between families is only the layout declared here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from brewer_cli.errors import ModelError
from brewer_cli.families.family import Family
from brewer_cli.families.generic import GENERIC_LAYOUT, GenericLayout
from brewer_cli.families.layout import EMBEDDING, HIDDEN, OUTPUT, LayerLayout, Linear, Norm
from brewer_cli.recipe.base import did_you_mean
from brewer_cli.registry import Registry

FAMILIES: Registry[Family] = Registry("model family")

BERT_LAYER = LayerLayout(
    attention="attention.self",
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_input="intermediate.dense",
    ffn_output="output.dense",
    output_norm="output.LayerNorm",
)
DISTILBERT_LAYER = LayerLayout(
    attention="attention",
    query="q_lin",
    key="k_lin",
    value="v_lin",
    attention_output="attention.out_lin",
    attention_norm="sa_layer_norm",
    ffn_input="ffn.lin1",
    ffn_output="ffn.lin2",
    output_norm="output_layer_norm",
)
# Pre-LN decoders: the norms read the residual stream, the attention and FFN outputs write it.
GPT2_LAYER = LayerLayout(
    attention="attn",
    query="c_attn",  # one Conv1D writing q|k|v
    attention_output="attn.c_proj",
    attention_norm="ln_1",
    ffn_input="mlp.c_fc",
    ffn_output="mlp.c_proj",
    output_norm="ln_2",
    pre_norm=True,
    fused_query_key_value=True,
    transposed=True,
)
LLAMA_LAYER = LayerLayout(
    attention="self_attn",
    query="q_proj",
    key="k_proj",
    value="v_proj",
    attention_output="self_attn.o_proj",
    attention_norm="input_layernorm",
    ffn_gate="mlp.gate_proj",
    ffn_input="mlp.up_proj",
    ffn_output="mlp.down_proj",
    output_norm="post_attention_layernorm",
    pre_norm=True,
    grouped_key_value=True,
)
ALBERT_LAYER = LayerLayout(
    attention="attention",
    attention_output="attention.dense",
    attention_norm="attention.LayerNorm",
    ffn_input="ffn",
    ffn_output="ffn_output",
    output_norm="full_layer_layer_norm",
)

# The task heads transformers attaches to each family's base model (sequence and token
# classification, multiple choice, QA, masked/causal LM, pre-training). A bias of OUTPUT width
# alone (cls.predictions.bias, lm_head.bias) is never resized and needs no entry.
_CLASSIFIER = Linear("classifier", HIDDEN, OUTPUT)
_QA_OUTPUTS = Linear("qa_outputs", HIDDEN, OUTPUT)
# RoBERTa-style sequence classification: dense + out_proj on the first token.
_CLASSIFICATION_HEAD = (Linear("classifier.dense", HIDDEN, HIDDEN), Linear("classifier.out_proj", HIDDEN, OUTPUT))
BERT_HEADS = (
    _CLASSIFIER,
    _QA_OUTPUTS,
    # Masked LM / pre-training; the decoder is tied to the word embeddings and resized alike.
    Linear("cls.predictions.transform.dense", HIDDEN, HIDDEN),
    Norm("cls.predictions.transform.LayerNorm", HIDDEN),
    Linear("cls.predictions.decoder", HIDDEN, OUTPUT),
    Linear("cls.seq_relationship", HIDDEN, OUTPUT),
)
ROBERTA_HEADS = (
    _CLASSIFIER,
    *_CLASSIFICATION_HEAD,
    _QA_OUTPUTS,
    Linear("lm_head.dense", HIDDEN, HIDDEN),
    Norm("lm_head.layer_norm", HIDDEN),
    Linear("lm_head.decoder", HIDDEN, OUTPUT),
)
ELECTRA_HEADS = (
    _CLASSIFIER,
    *_CLASSIFICATION_HEAD,
    _QA_OUTPUTS,
    # Generator (masked LM): hidden → embedding size, then the tied embedding matrix.
    Linear("generator_predictions.dense", HIDDEN, EMBEDDING),
    Norm("generator_predictions.LayerNorm", EMBEDDING),
    Linear("generator_lm_head", EMBEDDING, OUTPUT),
    # Discriminator (pre-training) and multiple choice.
    Linear("discriminator_predictions.dense", HIDDEN, HIDDEN),
    Linear("discriminator_predictions.dense_prediction", HIDDEN, OUTPUT),
    Linear("sequence_summary.summary", HIDDEN, HIDDEN),
)
DISTILBERT_HEADS = (
    Linear("pre_classifier", HIDDEN, HIDDEN),
    _CLASSIFIER,
    _QA_OUTPUTS,
    Linear("vocab_transform", HIDDEN, HIDDEN),
    Norm("vocab_layer_norm", HIDDEN),
    Linear("vocab_projector", HIDDEN, OUTPUT),
)

# Decoder heads: the LM head (tied to the token embeddings unless the config unties it) and the
# sequence-classification `score`, which runs on every token before the last one is picked.
DECODER_HEADS = (Linear("lm_head", HIDDEN, OUTPUT), Linear("score", HIDDEN, OUTPUT), _CLASSIFIER, _QA_OUTPUTS)

# Why Llama-style attention scores are not captured from the projections.
ROTARY_CAPTURE_REFUSAL = (
    "its attention rotates queries and keys by position (RoPE) after the q/k projections, and its key/value "
    "heads are shared by groups of query heads, so the projections' outputs are not the scores it attends with"
)
# Why GPT-2's attention scores are not captured: the captured QKᵀ/√d carry no causal mask, and the
# attention and relation losses mask padding only, so they would match the scores of future tokens.
CAUSAL_CAPTURE_REFUSAL = (
    "its attention is causal (each token attends to the tokens before it only), while the attention and "
    "relation losses mask padding only, so they would match scores of future tokens the model never attends to"
)
ROTARY_WHOLE_HEADS = (
    "RoPE rotates pairs of channels spread across each head's dimension, so a subset of a head's channels "
    "is no longer a rotary head — keep head_dim at the teacher's and extract fewer heads instead"
)


def _register(family: Family, description: str) -> None:
    FAMILIES.add(family.name, family, description)


_register(
    Family(
        "bert", ("bert",), title="BERT", layers="encoder.layer", layer=BERT_LAYER, pooler="pooler.dense", task_heads=BERT_HEADS
    ),
    "BERT (and any bert model_type checkpoint): token types, post-LN encoder",
)
_register(
    Family(
        "roberta",
        ("roberta", "camembert"),
        title="RoBERTa",
        layers="encoder.layer",
        layer=BERT_LAYER,
        pooler="pooler.dense",
        task_heads=ROBERTA_HEADS,
        uses_token_type_ids=False,
    ),
    "RoBERTa / CamemBERT: BPE vocabulary, no token types",
)
_register(
    Family(
        "xlm-roberta",
        ("xlm-roberta",),
        title="XLM-RoBERTa",
        layers="encoder.layer",
        layer=BERT_LAYER,
        pooler="pooler.dense",
        task_heads=ROBERTA_HEADS,
        uses_token_type_ids=False,
    ),
    "XLM-RoBERTa: multilingual RoBERTa with a SentencePiece vocabulary",
)
_register(
    Family(
        "electra",
        ("electra",),
        title="ELECTRA",
        layers="encoder.layer",
        layer=BERT_LAYER,
        embedding_projection="embeddings_project",
        embedding_field="embedding_size",
        task_heads=ELECTRA_HEADS,
    ),
    "ELECTRA discriminators (embeddings projected to the hidden width when smaller)",
)
_register(
    Family(
        "distilbert",
        ("distilbert",),
        title="DistilBERT",
        layers="transformer.layer",
        layer=DISTILBERT_LAYER,
        task_heads=DISTILBERT_HEADS,
        intermediate_field="hidden_dim",
        uses_token_type_ids=False,
    ),
    "DistilBERT: 6-layer BERT without token types or pooler",
)
_register(
    Family(
        "albert",
        ("albert",),
        title="ALBERT",
        layers="encoder.albert_layer_groups.0.albert_layers.0",
        layer=ALBERT_LAYER,
        embedding_projection="encoder.embedding_hidden_mapping_in",
        embedding_field="embedding_size",
        pooler="pooler",
        shared_layers=True,
        extractable=False,
        extraction_refusal="all its layers share one block of weights and its embeddings are factorized, "
        "so per-layer head and FFN-neuron subsets cannot be applied to the shared weights, and dropping "
        "layers does not remove parameters",
    ),
    "ALBERT: one shared layer block, factorized embeddings (counted once in sizes)",
)
_register(
    Family(
        "gpt2",
        ("gpt2",),
        title="GPT-2",
        layers="h",
        layer=GPT2_LAYER,
        embeddings="",
        embedding_tables=("wte", "wpe"),
        position_table="wpe",
        embedding_norm=None,
        final_norm="ln_f",
        task_heads=DECODER_HEADS,
        intermediate_field="n_inner",
        default_ffn_multiple=4,
        uses_token_type_ids=False,
        every_token_heads=("score",),
        layer_index_flags=("scale_attn_by_inverse_layer_idx",),
        supports_attention_capture=False,
        attention_capture_refusal=CAUSAL_CAPTURE_REFUSAL,
    ),
    "GPT-2: pre-LN decoder, fused q/k/v Conv1D, learned positions, LM head tied to the token embeddings",
)
_register(
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3"),
        title="Llama",
        layers="layers",
        layer=LLAMA_LAYER,
        embeddings="",
        embedding_tables=("embed_tokens",),
        position_table=None,
        embedding_norm=None,
        final_norm="norm",
        task_heads=DECODER_HEADS,
        key_value_heads_field="num_key_value_heads",
        head_dim_field="head_dim",
        whole_heads_reason=ROTARY_WHOLE_HEADS,
        per_layer_fields=("layer_types",),
        uses_token_type_ids=False,
        every_token_heads=("score",),
        supports_attention_capture=False,
        attention_capture_refusal=ROTARY_CAPTURE_REFUSAL,
    ),
    "Llama / Mistral / Qwen2 / Qwen3: pre-RMSNorm decoder, grouped-query attention, RoPE, gated MLP",
)
_register(
    # Its relative-position embeddings (encoder.rel_embeddings) have no extraction layout.
    Family(
        "deberta-v2",
        ("deberta-v2",),
        title="DeBERTa-v2",
        layers="encoder.layer",
        layer=replace(BERT_LAYER, query="query_proj", key="key_proj", value="value_proj"),
        supports_attention_capture=False,
        extractable=False,
    ),
    "DeBERTa-v2/v3: disentangled attention; hidden-state and logit losses only",
)


def registered_family(config: Any) -> Family | None:
    """The family registered for a config's `model_type`, or None (no config, unknown type)."""
    model_type = getattr(config, "model_type", None)
    for entry in FAMILIES:
        if model_type in entry.value.model_types:
            return entry.value
    return None


def registered_model_types() -> list[str]:
    return sorted(model_type for entry in FAMILIES for model_type in entry.value.model_types)


def unknown_model_type_message(model_type: Any) -> str:
    """Why a model_type cannot be used, listing brewer's families (not every transformers type)."""
    known = registered_model_types()
    return (
        f"model_type {model_type!r} has no registered family{did_you_mean(str(model_type), known)} — registered: "
        f"{', '.join(known)}. Use a checkpoint or config of one of these architectures."
    )


def family_for(config: Any) -> Family:
    """The family of a transformers config, by its `model_type`."""
    family = registered_family(config)
    if family is None:
        raise ModelError(unknown_model_type_message(getattr(config, "model_type", None)))
    if family.shared_layers and getattr(config, "num_hidden_groups", 1) != 1:
        raise ModelError(
            f"ALBERT with num_hidden_groups={config.num_hidden_groups} is not supported: brewer "
            f"maps layers to one shared group; use a checkpoint with num_hidden_groups=1"
        )
    return family


def layout_for(model: nn.Module) -> Family | GenericLayout:
    """The registered family of `model`, or the generic layout for any other model."""
    return registered_family(getattr(model, "config", None)) or GENERIC_LAYOUT
