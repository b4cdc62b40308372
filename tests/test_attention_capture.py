"""Attention scores captured by hooks (SDPA left on) are exactly the eager kernel's pre-softmax
scores, for every family that supports capture; and nothing is hooked when no loss needs them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from brewer_cli.families import FeatureNeeds, family_for

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
FAMILY_CONFIGS = {
    "bert": TINY,
    "roberta": {**TINY, "pad_token_id": 1},
    "xlm-roberta": {**TINY, "pad_token_id": 1},
    "distilbert": {"vocab_size": 100, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 64},
    # ALBERT and ELECTRA factorize the embeddings (16) below the hidden width (32).
    "albert": {**TINY, "embedding_size": 16},
    "electra": {**TINY, "embedding_size": 16},
}


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (3, 9), generator=generator)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_captured_scores_give_the_eager_attention_probabilities(model_type):
    settings = FAMILY_CONFIGS[model_type]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **settings)).eval()
    family = family_for(model.config)
    assert family.name == model_type
    eager = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(model_type, **settings), attn_implementation="eager"
    ).eval()
    eager.load_state_dict(model.state_dict())
    inputs = batch()

    with torch.no_grad():
        features = family.features(model, inputs, FeatureNeeds(attention_scores=True))
        reference = eager(**family.model_inputs(inputs), output_attentions=True)
    assert model.config._attn_implementation != "eager"  # the captured model kept its fast kernel
    assert len(features.attention_scores) == len(reference.attentions) == 2
    additive_mask = (1.0 - inputs["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for scores, probabilities in zip(features.attention_scores, reference.attentions):
        assert scores.shape == (3, 4, 9, 9)
        torch.testing.assert_close(torch.softmax(scores + additive_mask, dim=-1), probabilities, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_captured_scores_are_fp32_under_bf16_autocast(model_type):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **FAMILY_CONFIGS[model_type])).eval()
    family = family_for(model.config)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = family.features(model, batch(), FeatureNeeds(attention_scores=True, attention_inputs=True))
    for scores, inputs in zip(features.attention_scores, features.attention_inputs, strict=True):
        # The model ran in bf16 (so the test can fail), yet the scores are fp32 …
        assert inputs.query.dtype == inputs.key.dtype == torch.bfloat16
        assert scores.dtype == torch.float32
        # … and equal QKᵀ/√d_k of the projections the model used, computed eagerly in full precision
        # (float64 here). Scores computed in bf16 were off by ~5e-3 relative.
        heads = inputs.num_heads
        query = inputs.query.double().unflatten(-1, (heads, -1)).transpose(1, 2)
        key = inputs.key.double().unflatten(-1, (heads, -1)).transpose(1, 2)
        reference = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
        relative_error = ((scores.double() - reference).abs().max() / reference.abs().max()).item()
        assert relative_error < 1e-5, relative_error


def _count_hooks(monkeypatch, watched: list[nn.Module]) -> list[nn.Module]:
    """The watched modules (attention projections) that get a forward hook from now on.

    Only the projections are watched: transformers itself may hook other modules (output capture).
    """
    hooked: list[nn.Module] = []
    original = nn.Module.register_forward_hook
    watched_ids = {id(module) for module in watched}

    def counting(self, *args, **kwargs):
        if id(self) in watched_ids:
            hooked.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    return hooked


def test_no_hooks_and_no_scores_unless_a_loss_needs_them(monkeypatch):
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **TINY)).eval()
    family = family_for(model.config)
    projections = [module for layer in family.attention_projections(model) for module in layer]
    hooked = _count_hooks(monkeypatch, projections)
    with torch.no_grad():
        features = family.features(model, batch(), FeatureNeeds(hidden_states=True))
    assert hooked == []
    assert features.attention_scores is None and features.attention_inputs is None
    assert len(features.hidden_states) == 3
    with torch.no_grad():
        features = family.features(model, batch(), FeatureNeeds(attention_scores=True))
    assert len(hooked) == 4  # query and key of both layers; removed again after the forward
    assert all(not module._forward_hooks for module in hooked)
    assert features.attention_scores is not None


def test_general_distiller_without_attention_matches_registers_no_hooks(tmp_path, tokenizer_dir, monkeypatch):
    from brewer_cli.build import build_run
    from tests.test_general import general_recipe, one_batch

    run = build_run(
        general_recipe(tmp_path, tokenizer_dir, [{"uniform": True, "loss": "hidden_mse", "projection": "linear"}]),
        tmp_path / "runs",
    )
    distiller = run.distiller
    assert distiller.student_needs() == FeatureNeeds(hidden_states=True)
    assert distiller.teacher_needs() == FeatureNeeds(hidden_states=True)
    projections = [
        module
        for loaded in (run.student, run.teacher)
        for layer in loaded.family.attention_projections(loaded.model)
        for module in layer
    ]
    hooked = _count_hooks(monkeypatch, projections)
    parts = distiller(one_batch(run))
    assert hooked == [] and torch.isfinite(parts["loss"])
