"""ETD extraction: identity at full size, layer dropping, importance ranking, shapes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from brewer_cli.errors import BrewerError
from brewer_cli.extract import ExtractPlan, describe, extract_student

FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert"]
VOCAB = 100


def tiny_config(family: str, layers: int = 2, hidden: int = 32, heads: int = 4, **extra):
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, **extra)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=2 * hidden, **common)
    config_class = {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "xlm-roberta": transformers.XLMRobertaConfig,
        "electra": transformers.ElectraConfig,
    }[family]
    if family == "electra":
        # A separate embedding size exercises the embeddings projection.
        common.setdefault("embedding_size", 24)
    return config_class(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        **common,
    )


def tiny_model(family: str, auto_class=AutoModelForSequenceClassification, seed: int = 0, **config_args):
    torch.manual_seed(seed)
    return auto_class.from_config(tiny_config(family, **config_args)).eval()


def make_batch(family: str, size: int = 4, length: int = 9, seed: int = 1, labels: bool = False) -> dict:
    generator = torch.Generator().manual_seed(seed)
    # Ids from 3 up: no padding token (RoBERTa derives positions from it) and no special ids.
    input_ids = torch.randint(3, VOCAB, (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length - 3 :] = 0  # one padded row, so masks are exercised
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family != "distilbert":
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    if labels:
        batch["labels"] = torch.randint(0, 2, (size,), generator=generator)
    return batch


def model_inputs(family: str, batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def base_of(model):
    return getattr(model, model.base_model_prefix)


def layer_list(model):
    base = base_of(model)
    return base.transformer.layer if hasattr(base, "transformer") else base.encoder.layer


# ---------------------------------------------------------------------------------------------
# Identity and depth
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_extraction_gives_identical_outputs(family):
    teacher = tiny_model(family)
    batch = make_batch(family)
    result = extract_student(teacher, ExtractPlan(strategy="random"))
    with torch.no_grad():
        expected = teacher(**model_inputs(family, batch)).logits
        actual = result.model(**model_inputs(family, batch)).logits
    assert torch.equal(actual, expected)
    assert result.model is not teacher


def test_full_size_importance_extraction_is_identical_too():
    teacher = tiny_model("bert")
    batch = make_batch("bert", labels=True)
    result = extract_student(teacher, ExtractPlan(strategy="importance"), batches=[batch])
    with torch.no_grad():
        assert torch.equal(
            result.model(**model_inputs("bert", batch)).logits,
            teacher(**model_inputs("bert", batch)).logits,
        )


@pytest.mark.parametrize(
    "family, auto_class, extra",
    [
        ("bert", AutoModelForMaskedLM, {}),
        ("roberta", AutoModelForMaskedLM, {}),
        ("distilbert", AutoModelForMaskedLM, {}),
        (
            "electra",
            AutoModelForMaskedLM,
            {"embedding_size": 32},
        ),  # embeddings in the residual stream
        ("bert", transformers.AutoModelForQuestionAnswering, {}),
        ("electra", transformers.AutoModelForTokenClassification, {}),
    ],
)
def test_full_size_identity_for_other_heads(family, auto_class, extra):
    teacher = tiny_model(family, auto_class, **extra)
    inputs = model_inputs(family, make_batch(family))
    result = extract_student(teacher, ExtractPlan(strategy="random"))
    with torch.no_grad():
        expected, actual = teacher(**inputs), result.model(**inputs)
    for key in expected.keys():
        assert torch.equal(actual[key], expected[key]), key


@pytest.mark.parametrize("family", ["bert", "electra", "distilbert"])
@pytest.mark.parametrize("layers, kept", [(2, [2, 4]), ((1, 3), [1, 3])])
def test_dropping_layers_equals_running_the_teachers_chosen_layers(family, layers, kept):
    teacher = tiny_model(family, layers=4)
    reference = copy.deepcopy(teacher)
    modules = layer_list(reference)
    modules_kept = torch.nn.ModuleList([modules[number - 1] for number in kept])
    container = base_of(reference).transformer if family == "distilbert" else base_of(reference).encoder
    container.layer = modules_kept
    inputs = model_inputs(family, make_batch(family))

    result = extract_student(teacher, ExtractPlan(layers=layers, strategy="random"))
    assert result.kept["layers"] == kept
    assert result.model.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(result.model(**inputs).logits, reference(**inputs).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "plan, kept",
    [
        (ExtractPlan(layers=3, strategy="random"), [1, 3, 4]),  # N/M = 4/3: round(i·4/3), halves up
        (ExtractPlan(layers=2, strategy="random"), [2, 4]),  # k = 2: layers k, 2k
        (ExtractPlan(layers=2, selection="first", strategy="random"), [1, 2]),
        (ExtractPlan(layers=2, selection="last", strategy="random"), [3, 4]),
        (ExtractPlan(layers=[1, 4], strategy="random"), [1, 4]),
    ],
)
def test_layer_selection(plan, kept):
    result = extract_student(tiny_model("bert", layers=4), plan)
    assert result.kept["layers"] == kept


# ---------------------------------------------------------------------------------------------
# Importance
# ---------------------------------------------------------------------------------------------


def test_top_taylor_head_is_the_head_whose_ablation_changes_the_loss_most():
    # Weights large enough (std 0.1) for the loss to react; head 2 of layer 0 is made to dominate
    # by amplifying the output columns that read it and shrinking those of the other heads.
    teacher = tiny_model("bert", seed=1, initializer_range=0.1)
    dominant = 2
    with torch.no_grad():
        output = teacher.bert.encoder.layer[0].attention.output.dense.weight
        for head in range(4):
            output[:, head * 8 : (head + 1) * 8] *= 3.0 if head == dominant else 0.2
    batch = make_batch("bert", size=8, labels=True, seed=5)

    def loss_without(head: int | None) -> float:
        model = copy.deepcopy(teacher)
        if head is not None:
            with torch.no_grad():
                model.bert.encoder.layer[0].attention.output.dense.weight[:, head * 8 : (head + 1) * 8] = 0
        with torch.no_grad():
            return float(model(**batch).loss)

    base = loss_without(None)
    ablation = [abs(loss_without(head) - base) for head in range(4)]
    assert max(range(4), key=ablation.__getitem__) == dominant
    assert sorted(ablation)[-1] > 5 * sorted(ablation)[-2]  # the construction leaves no doubt

    result = extract_student(teacher, ExtractPlan(hidden=16, heads=2), batches=[batch])
    scores = result.importance_summary["head_scores"][0]
    assert max(range(4), key=scores.__getitem__) == dominant
    # First-order Taylor ranks every head as the ablation does here, not only the top one.
    assert sorted(range(4), key=scores.__getitem__) == sorted(range(4), key=ablation.__getitem__)
    assert dominant in result.kept["heads"][0]
    assert result.importance_summary["loss"] == "task loss"


@pytest.mark.parametrize(
    "auto_class",
    [
        AutoModelForSequenceClassification,
        AutoModelForMaskedLM,
        transformers.AutoModelForQuestionAnswering,
        transformers.AutoModelForTokenClassification,
    ],
)
def test_importance_without_labels_uses_own_predictions_and_is_nonzero(auto_class):
    teacher = tiny_model("bert", auto_class)
    result = extract_student(
        teacher,
        ExtractPlan(hidden=16, intermediate=32),
        batches=[make_batch("bert")],
        max_examples=3,
    )
    summary = result.importance_summary
    assert summary["loss"] == "cross-entropy to the model's own predictions"
    assert summary["examples"] == 3
    assert sum(sum(layer) for layer in summary["head_scores"]) > 0
    assert summary["top_hidden_channels"][0][1] > 0


def test_activation_scoring_keeps_the_loudest_hidden_channel():
    teacher = tiny_model("bert")
    with torch.no_grad():
        teacher.bert.embeddings.LayerNorm.weight[5] = 40.0
    result = extract_student(teacher, ExtractPlan(hidden=8, hidden_scoring="activation"), batches=[make_batch("bert")])
    assert 5 in result.kept["hidden_indices"]
    assert result.importance_summary["top_hidden_channels"][0][0] == 5


def test_importance_needs_batches():
    with pytest.raises(BrewerError, match="student.init.extract.strategy"):
        extract_student(tiny_model("bert"), ExtractPlan(hidden=16))


def test_iterative_rounds_reach_the_target_sizes():
    teacher = tiny_model("bert", layers=4)
    batches = iter([make_batch("bert", labels=True)])  # a one-shot iterator: rounds must reuse it
    result = extract_student(
        teacher,
        ExtractPlan(layers=2, hidden=16, heads=2, intermediate=16, rounds=3),
        batches=batches,
    )
    config = result.model.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (16, 2, 16)
    assert len(result.kept["hidden_indices"]) == 16
    assert all(len(heads) == 2 for heads in result.kept["heads"])
    assert result.model(**model_inputs("bert", make_batch("bert"))).logits.shape == (4, 2)


# ---------------------------------------------------------------------------------------------
# Shapes, configs, saving
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "plan_args, heads, head_dim",
    [
        ({"hidden": 16, "heads": 2}, 2, 8),  # fewer heads, same head size
        ({"hidden": 16}, 4, 4),  # smaller heads, same head count
    ],
)
def test_extracted_model_shapes_config_and_round_trip(family, plan_args, heads, head_dim, tmp_path):
    teacher = tiny_model(family, layers=4)
    result = extract_student(teacher, ExtractPlan(layers=2, intermediate=24, seed=1, strategy="random", **plan_args))
    student = result.model
    config = student.config
    assert config.model_type == teacher.config.model_type
    assert config.hidden_size == 16
    assert config.num_attention_heads == heads
    assert config.num_hidden_layers == 2
    assert getattr(config, "hidden_dim" if family == "distilbert" else "intermediate_size") == 24
    if family == "electra":
        assert config.embedding_size == 24  # the teacher's, projected onto the kept hidden channels
        assert student.electra.embeddings_project.weight.shape == (16, 24)
    layers = layer_list(student)
    assert len(layers) == 2
    query = layers[0].attention.q_lin if family == "distilbert" else layers[0].attention.self.query
    assert query.weight.shape == (heads * head_dim, 16)
    assert result.kept["head_dim"] == head_dim
    assert result.kept["ffn_neurons"] == [24, 24]
    assert [len(kept) for kept in result.kept["heads"]] == [heads, heads]

    inputs = model_inputs(family, make_batch(family))
    with torch.no_grad():
        logits = student(**inputs).logits
    assert logits.shape == (4, 2)

    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.hidden_size == 16
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)


def test_etd_style_head_dim_shrink():
    # ETD's BERT-base → 312 hidden keeps 12 heads of 26; here 48 → 24 keeps 12 heads of 2.
    teacher = tiny_model("bert", hidden=48, heads=12)
    result = extract_student(teacher, ExtractPlan(hidden=24, heads=12, head_dim=2, strategy="random"))
    assert result.model.config.num_attention_heads == 12
    assert result.model.bert.encoder.layer[0].attention.self.key.weight.shape == (24, 24)


@pytest.mark.parametrize(
    "family, extra",
    [("bert", {}), ("roberta", {}), ("distilbert", {}), ("electra", {"embedding_size": 32})],
)
def test_masked_lm_decoder_stays_tied_to_the_embeddings(family, extra, tmp_path):
    teacher = tiny_model(family, AutoModelForMaskedLM, **extra)
    student = extract_student(teacher, ExtractPlan(hidden=16, strategy="random")).model
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    assert student.get_input_embeddings().weight.shape == (VOCAB, 16)
    inputs = model_inputs(family, make_batch(family))
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, student(**inputs).logits)


def test_random_strategy_is_reproducible_with_the_seed():
    teacher = tiny_model("bert")

    def kept(seed: int) -> dict:
        plan = ExtractPlan(hidden=16, heads=2, intermediate=16, strategy="random", seed=seed)
        return extract_student(teacher, plan).kept

    first, again, other = kept(7), kept(7), kept(8)
    assert first["hidden_indices"] == again["hidden_indices"] and first["heads"] == again["heads"]
    assert first["hidden_indices"] != other["hidden_indices"]
    assert first["hidden_indices"] == sorted(first["hidden_indices"])


def test_teacher_is_not_modified():
    teacher = tiny_model("bert")
    teacher.train()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    problem_type = teacher.config.problem_type
    result = extract_student(
        teacher,
        ExtractPlan(hidden=16, heads=2, intermediate=16),
        batches=[make_batch("bert", labels=True)],
    )
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert teacher.training and all(module.training for module in teacher.modules())
    assert all(not parameter.requires_grad and parameter.grad is None for parameter in teacher.parameters())
    assert teacher.config.problem_type == problem_type
    assert teacher.config.hidden_size == 32
    assert result.model.training  # the student starts in the teacher's mode


# ---------------------------------------------------------------------------------------------
# Errors and the summary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan_args, text",
    [
        (
            {"hidden": 64},
            "student.init.extract.hidden: 64 is larger than the teacher's hidden size (32)",
        ),
        (
            {"intermediate": 65},
            "student.init.extract.intermediate: 65 is larger than the teacher's intermediate (FFN) size (64)",
        ),
        (
            {"layers": 3},
            "student.init.extract.layers: 3 is larger than the teacher's number of layers (2)",
        ),
        ({"layers": (1, 5)}, "student.init.extract.layers: layer 5 does not exist"),
        # 18 is not divisible by the 4 heads; only 3 heads × 6 fits within the teacher's head size 8.
        ({"hidden": 18}, "with hidden 18, valid heads are 3"),
        ({"hidden": 30}, "no head count of at most 4 splits hidden 30"),
        ({"heads": 2}, "also set hidden: 16"),
        (
            {"hidden": 16, "heads": 1},
            "student.init.extract.heads: hidden 16 in 1 heads needs head_dim 16",
        ),
    ],
)
def test_size_errors_name_the_field(plan_args, text):
    with pytest.raises(BrewerError) as error:
        extract_student(tiny_model("bert"), ExtractPlan(strategy="random", **plan_args))
    assert text in str(error.value)


def test_invalid_plan_fields_are_reported_together():
    with pytest.raises(BrewerError) as error:
        ExtractPlan(selection="middle", strategy="magic", rounds=0)
    message = str(error.value)
    assert "student.init.extract.selection" in message
    assert "student.init.extract.strategy" in message
    assert "student.init.extract.rounds" in message


def test_electra_hidden_equal_to_embedding_size_is_refused():
    with pytest.raises(BrewerError, match="embedding projection"):
        extract_student(tiny_model("electra"), ExtractPlan(hidden=24, heads=4, head_dim=6, strategy="random"))


def test_albert_is_refused():
    config = transformers.AlbertConfig(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    albert = transformers.AlbertForSequenceClassification(config)
    with pytest.raises(BrewerError, match="does not support ALBERT: all its layers share one block of weights"):
        extract_student(albert, ExtractPlan(strategy="random"))


def test_unknown_model_type_lists_supported_ones():
    opt = transformers.OPTForCausalLM(
        transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64)
    )
    with pytest.raises(BrewerError, match="supported model types: bert, distilbert, electra, gpt2, llama, roberta, xlm-roberta"):
        extract_student(opt, ExtractPlan(strategy="random"))


def test_describe_summarizes_what_was_kept():
    teacher = tiny_model("bert", layers=4)
    result = extract_student(
        teacher,
        ExtractPlan(layers=2, hidden=16, heads=2),
        batches=[make_batch("bert", labels=True)],
    )
    text = describe(result)
    assert "teacher layers 2, 4 (uniform)" in text
    assert "hidden:       16 of 32 channels" in text
    assert "2 heads × 8 (teacher 4 × 8)" in text
    assert "retained importance" in text and "top head per kept layer" in text
    random_text = describe(extract_student(teacher, ExtractPlan(strategy="random")))
    assert "importance" not in random_text.split("\n", 1)[1]
