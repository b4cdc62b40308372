"""The decoder families `gpt2` and `llama` (Llama, Mistral, Qwen2, Qwen3): registration, hidden-state
and attention features, parameters by part and analytic FLOPs, against plain formulas."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from brewer_cli import size_report
from brewer_cli.errors import ModelError
from brewer_cli.families import family_for, parameter_counts_by_part
from brewer_cli.features import FeatureNeeds
from brewer_cli.recipe.names import FAMILY_NAMES

VOCAB = 100
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 48
POSITIONS = 64


def gpt2_config(**overrides) -> GPT2Config:
    settings = dict(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=POSITIONS,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2Config(**{**settings, **overrides})


def llama_config(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=FFN,
        max_position_embeddings=POSITIONS,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaConfig(**{**settings, **overrides})


def batch(length: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, VOCAB, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("gpt2", "gpt2"), ("llama", "llama"), ("mistral", "llama"), ("qwen2", "llama"), ("qwen3", "llama")],
)
def test_model_types_find_their_family(model_type, family):
    config = AutoConfig.for_model(model_type)
    assert family_for(config).name == family
    assert model_type in FAMILY_NAMES.get(family).model_types


def test_decoders_take_no_token_type_ids():
    for config in (gpt2_config(), llama_config()):
        inputs = family_for(config).model_inputs(batch())
        assert sorted(inputs) == ["attention_mask", "input_ids"]


@pytest.mark.parametrize("make", [lambda: GPT2LMHeadModel(gpt2_config()), lambda: LlamaForCausalLM(llama_config())])
def test_hidden_states_are_the_embedding_output_and_every_layer(make):
    torch.manual_seed(0)
    model = make().eval()
    family = family_for(model.config)
    with torch.no_grad():
        features = family.features(model, batch(), FeatureNeeds(hidden_states=True))
        reference = model(**family.model_inputs(batch()), output_hidden_states=True)
    assert len(features.hidden_states) == LAYERS + 1
    for ours, theirs in zip(features.hidden_states, reference.hidden_states):
        assert torch.equal(ours, theirs)
    assert torch.equal(features.logits, reference.logits)


def test_gpt2_attention_is_refused_because_it_is_causal():
    """Captured QKᵀ/√d carry no causal mask and the attention losses mask padding only: refused."""
    model = GPT2LMHeadModel(gpt2_config()).eval()
    for needs in (FeatureNeeds(attention_scores=True), FeatureNeeds(attention_inputs=True)):
        with pytest.raises(ModelError) as error:
            family_for(model.config).features(model, batch(), needs)
        assert str(error.value) == (
            "attention losses are not available for the gpt2 family: its attention is causal (each token attends to "
            "the tokens before it only), while the attention and relation losses mask padding only, so they would "
            "match scores of future tokens the model never attends to; use hidden-state matches for this model"
        )


def test_gpt2_attention_matches_are_refused_when_the_recipe_is_checked():
    from pathlib import Path

    from brewer_cli.errors import RecipeError
    from brewer_cli.matches import resolve_matches
    from brewer_cli.recipe import validate_recipe
    from tests.conftest import distill_recipe

    matches = [{"teacher_layer": 1, "student_layer": 1, "loss": "attention_mse"}]
    raw = distill_recipe("runs/t/final", distillation={"kind": "general", "matches": matches})
    with pytest.raises(RecipeError) as error:
        resolve_matches(validate_recipe(raw, Path("recipe.yaml")), gpt2_config(), gpt2_config())
    assert str(error.value).splitlines()[1:] == [
        "  recipe.yaml: distillation.matches.0.feature: the teacher is a gpt2 model, whose attention cannot be "
        "captured — use hidden-state matches for it",
        "  recipe.yaml: distillation.matches.0.feature: the student is a gpt2 model, whose attention cannot be "
        "captured — use hidden-state matches for it",
    ]


def test_llama_attention_is_refused_with_the_reason():
    model = LlamaForCausalLM(llama_config()).eval()
    with pytest.raises(ModelError) as error:
        family_for(model.config).features(model, batch(), FeatureNeeds(attention_scores=True))
    assert str(error.value) == (
        "attention losses are not available for the llama family: its attention rotates queries and keys by "
        "position (RoPE) after the q/k projections, and its key/value heads are shared by groups of query heads, "
        "so the projections' outputs are not the scores it attends with; use hidden-state matches for this model"
    )


# --- parameters by part -------------------------------------------------------------------------


def gpt2_layer_by_hand(hidden: int, ffn: int) -> int:
    attention = (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden)  # c_attn, c_proj
    feed_forward = (hidden * ffn + ffn) + (ffn * hidden + hidden)
    return attention + feed_forward + 2 * 2 * hidden  # ln_1, ln_2


def llama_layer_by_hand(hidden: int, heads: int, kv_heads: int, head_dim: int, ffn: int) -> int:
    attention = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim  # q, o; k, v (no biases)
    return attention + 3 * hidden * ffn + 2 * hidden  # gate, up, down; two RMSNorm weights


def test_gpt2_parameters_by_part_with_the_tied_head_counted_once():
    counts = parameter_counts_by_part(GPT2LMHeadModel(gpt2_config()))
    assert counts["embeddings"] == (VOCAB + POSITIONS) * HIDDEN
    assert counts["encoder"] == LAYERS * gpt2_layer_by_hand(HIDDEN, 4 * HIDDEN)  # n_inner=None: 4 × hidden
    assert counts["final_norm"] == 2 * HIDDEN
    assert counts["head"] == 0  # lm_head is wte
    assert counts["shared_counted_once"] == VOCAB * HIDDEN
    assert counts["total"] == counts["embeddings"] + counts["encoder"] + counts["final_norm"]


@pytest.mark.parametrize("tied", [True, False])
def test_llama_parameters_by_part(tied):
    counts = parameter_counts_by_part(LlamaForCausalLM(llama_config(tie_word_embeddings=tied)))
    assert counts["embeddings"] == VOCAB * HIDDEN
    assert counts["encoder"] == LAYERS * llama_layer_by_hand(HIDDEN, HEADS, KV_HEADS, HIDDEN // HEADS, FFN)
    assert counts["final_norm"] == HIDDEN  # RMSNorm: weight only
    assert counts["head"] == (0 if tied else VOCAB * HIDDEN)
    assert counts["shared_counted_once"] == (VOCAB * HIDDEN if tied else 0)


# --- FLOPs --------------------------------------------------------------------------------------


def llama_flops_by_hand(tokens: int, head_dim: int) -> dict[str, int]:
    attention_width, key_value_width = HEADS * head_dim, KV_HEADS * head_dim
    projections = 2 * tokens * HIDDEN * (2 * attention_width + 2 * key_value_width)  # q, o; k, v (GQA)
    scores = 2 * 2 * tokens * tokens * attention_width
    feed_forward = 3 * 2 * tokens * HIDDEN * FFN  # gate, up, down
    head = 2 * tokens * HIDDEN * VOCAB  # the LM head on every token, over the vocabulary
    encoder = LAYERS * (projections + scores + feed_forward)
    return {"seq_len": tokens, "total": encoder + head, "embeddings": 0, "encoder": encoder, "head": head}


@pytest.mark.parametrize("head_dim", [HIDDEN // HEADS, 16])
def test_llama_flops_count_gqa_gated_mlp_and_the_lm_head(head_dim):
    model = LlamaForCausalLM(llama_config(head_dim=head_dim))
    assert size_report.analytic_flops(model, 16) == llama_flops_by_hand(16, head_dim)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GPT2LMHeadModel(gpt2_config()),
        lambda: GPT2ForSequenceClassification(gpt2_config(num_labels=3)),
        lambda: LlamaForCausalLM(llama_config(tie_word_embeddings=False)),
    ],
)
def test_decoder_flops_match_the_flop_counter(make):
    seq_len = 16
    model = make().eval()
    model.config._attn_implementation = "eager"  # FlopCounterMode does not see SDPA on CPU
    input_ids = torch.randint(1, VOCAB, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    analytic = size_report.analytic_flops(model, seq_len)
    assert analytic["total"] == analytic["embeddings"] + analytic["encoder"] + analytic["head"]
    assert analytic["total"] == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_size_report_of_a_saved_decoder_shows_the_final_norm(tmp_path):
    model = GPT2LMHeadModel(gpt2_config())
    model.save_pretrained(tmp_path / "gpt2")
    output = io.StringIO()
    report = size_report.run(str(tmp_path / "gpt2"), runs=0, seq_len=16, console=Console(file=output, width=200))
    figures = report["models"][0]
    assert figures["architecture"]["family"] == "gpt2"
    assert figures["architecture"]["ffn"] == 4 * HIDDEN
    assert figures["parameters"]["final_norm"] == 2 * HIDDEN
    assert figures["flops"]["head"] == 2 * 16 * HIDDEN * VOCAB
    assert "final norm" in output.getvalue()
