"""ETD for decoders (`student.init.extract` on gpt2 and llama-family teachers): full-size extraction
reproduces the teacher's logits bit for bit, the sliced weights are the teacher's blocks (GPT-2's
fused Conv1D c_attn, GQA's key/value groups, gated MLP rows), dropped heads behave as masked heads,
and smaller students are valid models that round-trip through save_pretrained/from_pretrained."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from brewer_cli.errors import BrewerError
from brewer_cli.extract import ExtractPlan, describe, extract_student
from brewer_cli.extract.plan import read_sizes
from brewer_cli.extract.sizing import Costs, Shape, measure, meta_model, sizes_of
from brewer_cli.families import parameter_count, registered_family
from brewer_cli.size_report import analytic_flops

VOCAB = 120
STRATEGIES = ("random", "importance", "activation")
_TOKENS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def gpt2(layers: int = 2, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64, **_TOKENS)
    return GPT2LMHeadModel(GPT2Config(**{**settings, **overrides})).eval()


def llama(tied: bool = False, layers: int = 2, kind=LlamaForCausalLM, config=LlamaConfig, **overrides):
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        **_TOKENS,
    )
    model = kind(config(**{**settings, **overrides})).eval()
    # Non-trivial norm weights, so a wrong channel order could not hide behind all-ones.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


TEACHERS = {
    "gpt2": lambda: gpt2(),
    "llama-gqa-untied": lambda: llama(tied=False),
    "llama-gqa-tied": lambda: llama(tied=True),
    "qwen2-bias-tied": lambda: llama(tied=True, kind=Qwen2ForCausalLM, config=Qwen2Config),
    "qwen3-head-norms": lambda: llama(kind=Qwen3ForCausalLM, config=Qwen3Config, head_dim=16),
}


def batches(count: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    result = []
    for _ in range(count):
        input_ids = torch.randint(1, VOCAB, (3, 12), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[2, -3:] = 0
        labels = input_ids.masked_fill(attention_mask == 0, -100)  # causal LM: the model's own loss
        result.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return result


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("teacher_name", list(TEACHERS))
def test_full_size_extraction_reproduces_the_teachers_logits_exactly(teacher_name, strategy):
    teacher = TEACHERS[teacher_name]()
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    result = extract_student(teacher, ExtractPlan(strategy=strategy, seed=3), batches())
    for batch in batches():
        assert torch.equal(logits(result.model, batch), logits(teacher, batch))
    assert parameter_count(result.model) == parameter_count(teacher)
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    if strategy != "random":
        expected = "task_loss" if strategy == "importance" else "activation"
        assert result.kept["objective"] == expected


def test_gpt2_fused_c_attn_is_sliced_as_three_blocks():
    teacher = gpt2(layers=4)
    plan = ExtractPlan(strategy="random", layers=2, hidden=16, heads=2, head_dim=8, intermediate=40, seed=5)
    result = extract_student(teacher, plan)
    student, kept = result.model, result.kept
    assert kept["layers"] == [2, 4]
    hidden = torch.tensor(kept["hidden_indices"])
    assert student.config.n_embd == 16 and student.config.n_head == 2 and student.config.n_inner == 40
    for student_layer, teacher_layer in enumerate(kept["layers"]):
        source = teacher.transformer.h[teacher_layer - 1]
        target = student.transformer.h[student_layer]
        heads = kept["heads"][student_layer]
        neurons = torch.cat([torch.arange(8) + 8 * head for head in heads])  # 32/4 = 8 per head: whole heads
        columns = torch.cat([neurons, 32 + neurons, 64 + neurons])  # q | k | v blocks of the (in, out) weight
        assert torch.equal(target.attn.c_attn.weight, source.attn.c_attn.weight[hidden][:, columns])
        assert torch.equal(target.attn.c_attn.bias, source.attn.c_attn.bias[columns])
        assert torch.equal(target.attn.c_proj.weight, source.attn.c_proj.weight[neurons][:, hidden])
        assert torch.equal(target.ln_1.weight, source.ln_1.weight[hidden])
    assert student.lm_head.weight is student.transformer.wte.weight  # still tied
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight[:, hidden])
    assert torch.equal(student.transformer.wpe.weight, teacher.transformer.wpe.weight[:, hidden])
    assert torch.equal(student.transformer.ln_f.bias, teacher.transformer.ln_f.bias[hidden])


def test_llama_keeps_whole_key_value_groups_and_gated_rows_together():
    teacher = llama(layers=2)
    plan = ExtractPlan(strategy="random", hidden=40, heads=2, key_value_heads=1, intermediate=32, seed=7)
    result = extract_student(teacher, plan)
    student, kept = result.model, result.kept
    config = student.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 12)
    assert config.hidden_size == 40
    hidden = torch.tensor(kept["hidden_indices"])
    for layer in range(2):
        heads, groups = kept["heads"][layer], kept["key_value_groups"][layer]
        assert len(groups) == 1 and all(head // 2 == groups[0] for head in heads)  # heads of the kept group
        query = torch.cat([torch.arange(12) + 12 * head for head in heads])
        key_value = torch.arange(12) + 12 * groups[0]
        source, target = teacher.model.layers[layer], student.model.layers[layer]
        assert torch.equal(target.self_attn.q_proj.weight, source.self_attn.q_proj.weight[query][:, hidden])
        assert torch.equal(target.self_attn.k_proj.weight, source.self_attn.k_proj.weight[key_value][:, hidden])
        assert torch.equal(target.self_attn.v_proj.weight, source.self_attn.v_proj.weight[key_value][:, hidden])
        assert torch.equal(target.self_attn.o_proj.weight, source.self_attn.o_proj.weight[hidden][:, query])
        # One FFN index set: gate and up rows, down columns.
        up_rows = [(source.mlp.up_proj.weight[:, hidden] == row).all(dim=1).nonzero().item() for row in target.mlp.up_proj.weight]
        neurons = torch.tensor(up_rows)
        assert torch.equal(target.mlp.gate_proj.weight, source.mlp.gate_proj.weight[neurons][:, hidden])
        assert torch.equal(target.mlp.down_proj.weight, source.mlp.down_proj.weight[hidden][:, neurons])
        assert torch.equal(target.input_layernorm.weight, source.input_layernorm.weight[hidden])
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[hidden])
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight[:, hidden])


def silenced(teacher: LlamaForCausalLM, kept_heads: list[list[int]], head_dim: int) -> LlamaForCausalLM:
    """A copy of the teacher whose dropped heads are silenced: their o_proj input columns zeroed."""
    masked = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer, kept in zip(masked.model.layers, kept_heads):
            for head in range(masked.config.num_attention_heads):
                if head not in kept:
                    layer.self_attn.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0
    return masked


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("key_value_heads", [1, 2])
def test_dropping_heads_equals_silencing_them_in_the_teacher(strategy, key_value_heads):
    """Fewer query heads (and key/value groups) and nothing else cut: the student computes exactly the
    teacher with the dropped heads silenced — so every kept query head reads its own key/value group."""
    teacher = llama()
    plan = ExtractPlan(strategy=strategy, seed=2, heads=2, key_value_heads=key_value_heads)
    result = extract_student(teacher, plan, batches())
    assert result.model.config.num_key_value_heads == key_value_heads
    reference = silenced(teacher, result.kept["heads"], head_dim=12)
    for batch in batches():
        torch.testing.assert_close(logits(result.model, batch), logits(reference, batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("teacher_name", ["gpt2", "llama-gqa-tied", "qwen2-bias-tied", "qwen3-head-norms"])
def test_smaller_students_round_trip_through_save_pretrained(tmp_path, teacher_name):
    teacher = TEACHERS[teacher_name]()
    if teacher_name == "gpt2":
        plan = ExtractPlan(strategy="importance", layers=1, hidden=16, heads=2, intermediate=24)
    else:
        # hidden 36 / 2 heads = 18 ≠ the teacher's head_dim 12, so a head_dim derived from hidden / heads would show.
        plan = ExtractPlan(strategy="activation", layers=1, hidden=36, heads=2, intermediate=24)
    student = extract_student(teacher, plan, batches()).model
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert type(reloaded) is type(teacher)
    config = reloaded.config
    assert config.num_hidden_layers == 1
    if teacher_name != "gpt2":
        assert config.num_attention_heads % config.num_key_value_heads == 0
        # Whole heads: 48 / 4 (written explicitly for Qwen2, which would derive it from hidden), 16 for Qwen3.
        assert config.head_dim == (16 if teacher_name == "qwen3-head-norms" else 12)
        assert len(getattr(config, "layer_types", None) or [None]) == 1
    for batch in batches():
        assert torch.equal(logits(reloaded, batch), logits(student, batch))
    assert parameter_count(reloaded) < parameter_count(teacher)


def test_gpt2_extracts_to_a_parameter_budget():
    teacher = gpt2(layers=4)
    budget = parameter_count(teacher) // 2
    result = extract_student(teacher, ExtractPlan(strategy="importance", target={"parameters": budget}), batches())
    assert parameter_count(result.model) <= budget
    assert result.kept["budget"]["chosen"]["parameters"] == parameter_count(result.model)


GROUPED = [name for name in TEACHERS if name != "gpt2"]


@pytest.mark.parametrize("teacher_name", GROUPED)
def test_grouped_query_costs_equal_the_counter_at_every_width(teacher_name):
    """The budget search's size of a grouped-query shape (sizing.Costs: 15 probes, then algebra) is
    the counter's on the model itself, at hidden widths, heads, groups, depths and FFN widths
    between and beyond the probed ones."""
    teacher = TEACHERS[teacher_name]()
    sizes = read_sizes(registered_family(teacher.config), teacher.config)
    costs = Costs(teacher, registered_family(teacher.config), sizes, seq_len=32, smallest_ffn=2)
    widths = [
        Shape(1, groups * per_group, sizes.head_dim, 2, groups, hidden)
        for hidden in (3, 24, 33, 48)
        for groups in (1, 2)
        for per_group in (1, 2)
    ]
    costs.probe_at(widths)
    for width in widths:
        for layers, intermediate in ((1, 2), (2, 40), (2, 64)):
            shape = replace(width, layers=layers, intermediate=intermediate)
            counted = measure(meta_model(teacher, registered_family(teacher.config), sizes_of(shape, sizes)), 32)
            assert costs.estimate(shape) == counted, shape


@pytest.mark.parametrize("teacher_name", GROUPED)
def test_grouped_query_teachers_extract_to_a_parameter_budget(teacher_name):
    teacher = TEACHERS[teacher_name]()
    budget = parameter_count(teacher) // 2
    result = extract_student(teacher, ExtractPlan(strategy="importance", target={"parameters": budget}), batches())
    record = result.kept["budget"]
    chosen = record["chosen"]
    config = result.model.config
    assert chosen["parameters"] == parameter_count(result.model) <= budget
    assert chosen["flops"] == analytic_flops(result.model, 128)["total"]
    assert (
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
    ) == tuple(chosen[key] for key in ("layers", "hidden", "heads", "key_value_heads", "intermediate", "head_dim"))
    assert chosen["head_dim"] == (16 if "qwen3" in teacher_name else 12)  # heads stay whole (RoPE)
    assert chosen["heads"] % chosen["key_value_heads"] == 0 and chosen["heads"] // chosen["key_value_heads"] <= 2
    # Every shape considered is a (hidden, groups, heads per group, FFN) of the grids at some depth.
    assert record["candidates"] == 16 * 4 * 32 * 2
    assert torch.isfinite(logits(result.model, batches()[0])).all()


def test_importance_in_one_key_value_group_keeps_that_group():
    """A teacher whose second key/value group's heads write nothing (zero o_proj columns): they score
    zero, so the chosen student keeps one group, the first, with its heads."""
    teacher = llama()
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.self_attn.o_proj.weight[:, 2 * 12 :] = 0  # query heads 2 and 3 read key/value group 1
    result = extract_student(
        teacher, ExtractPlan(strategy="importance", target={"parameters": int(parameter_count(teacher) * 0.7)}), batches()
    )
    chosen = result.kept["budget"]["chosen"]
    assert chosen["key_value_heads"] == 1
    assert (chosen["layers"], chosen["heads"]) == (2, 2)
    assert chosen["importance_kept"]["attention"] == pytest.approx(1.0)
    assert result.kept["key_value_groups"] == [[0]] * chosen["layers"]


def test_a_target_refuses_key_value_heads_and_a_size_of_config_without_groups(tmp_path):
    with pytest.raises(BrewerError, match=r"cannot be combined with key_value_heads — remove key_value_heads"):
        ExtractPlan(strategy="random", target={"parameters": 10_000}, key_value_heads=1)
    bert = {"model_type": "bert", "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    with pytest.raises(BrewerError) as error:
        extract_student(llama(), ExtractPlan(strategy="random", target={"size_of": "bert.json", "size_of_config": bert}))
    assert str(error.value) == (
        "student.init.extract.target.size_of: 'bert.json' is a bert config, but a student of this Llama teacher is "
        "counted with the teacher's attention layout — name a grouped-query (Llama-style) config, or use parameters"
    )


def test_random_strategy_keeps_every_head_and_group_of_a_grouped_query_teacher():
    teacher = llama(layers=4)
    budget = int(parameter_count(teacher) * 0.6)
    result = extract_student(teacher, ExtractPlan(strategy="random", target={"parameters": budget}))
    record = result.kept["budget"]
    chosen = record["chosen"]
    assert record["rule"] == (
        "the uniform shape (strategy random has no importance scores): the teacher's 4 heads in 2 key/value groups, "
        "with layers, hidden width and FFN width shrunk by one factor — the largest such shape that meets the target"
    )
    assert (chosen["heads"], chosen["key_value_heads"], chosen["head_dim"]) == (4, 2, 12)
    assert chosen["hidden"] < 48 and chosen["parameters"] == parameter_count(result.model) <= budget
    assert not record["alternatives"][0]["meets_target"] and record["alternatives"][0]["hidden"] > chosen["hidden"]
    assert "4 heads × 12 in 2 key/value groups" in describe(result)


def test_grouped_query_refusals_name_the_field_and_the_fix():
    teacher = llama()
    with pytest.raises(BrewerError) as error:
        extract_student(teacher, ExtractPlan(strategy="random", head_dim=8))
    assert str(error.value) == (
        "student.init.extract.head_dim: 8 differs from the teacher's head size 12, but Llama heads cannot be cut: "
        "RoPE rotates pairs of channels spread across each head's dimension, so a subset of a head's channels is no "
        "longer a rotary head — keep head_dim at the teacher's and extract fewer heads instead"
    )
    with pytest.raises(BrewerError) as error:
        extract_student(teacher, ExtractPlan(strategy="random", heads=3, key_value_heads=1))
    assert str(error.value) == (
        "student.init.extract.key_value_heads: 3 query heads in 1 key/value groups is not possible — each kept group "
        "keeps the same number of its own query heads (at most the teacher's 2), so key_value_heads must divide heads "
        "with at most 2 heads per group; valid for 3 heads: none (choose fewer heads)"
    )
    with pytest.raises(BrewerError, match=r"^student.init.extract.heads: 3 query heads do not fill groups"):
        extract_student(teacher, ExtractPlan(strategy="random", heads=3))
    with pytest.raises(BrewerError, match=r"^student.init.extract.rounds: Llama extraction runs in one round"):
        extract_student(teacher, ExtractPlan(strategy="random", hidden=24, rounds=2))
    with pytest.raises(BrewerError) as error:
        extract_student(gpt2(), ExtractPlan(strategy="random", key_value_heads=2))
    assert str(error.value) == (
        "student.init.extract.key_value_heads: the teacher has no grouped-query attention (every head has its own "
        "keys and values), so there are no key/value groups to choose — remove key_value_heads and set heads"
    )


def test_activation_needs_batches():
    with pytest.raises(BrewerError, match="'activation' scores the teacher's heads, neurons and channels on data"):
        extract_student(gpt2(), ExtractPlan(strategy="activation", hidden=16))


# --- through a recipe (the causal_lm task's batches: input_ids, attention_mask, labels) -------------


def save_llama(directory, tokenizer_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("family", "extract"),
    [
        ("gpt2", {"strategy": "importance", "layers": 1, "hidden": 32, "heads": 2}),
        ("gpt2", {"strategy": "activation", "layers": 1, "hidden": 32, "heads": 2}),
        ("llama", {"strategy": "activation", "layers": 1, "hidden": 24, "heads": 2, "key_value_heads": 2}),
    ],
)
def test_recipe_extracts_a_decoder_student_from_the_teacher(tmp_path, family, extract):
    from brewer_cli.build import build_run
    from brewer_cli.recipe import load_recipe
    from tests.test_causal_lm import run_recipe, save_gpt2, tokenizer_dir

    tokenizer = tokenizer_dir(tmp_path)
    if family == "gpt2":
        teacher = save_gpt2(tmp_path / "teacher", tokenizer, seed=1, n_embd=48, n_layer=2)
    else:
        teacher = save_llama(tmp_path / "teacher", tokenizer)
    recipe_path = run_recipe(
        tmp_path,
        teacher={"checkpoint": str(teacher)},
        student={"init": {"extract": {**extract, "examples": 8}}},
        distillation={"kind": "basic", "kd_loss": "kl", "temperature": 1.0},
    )
    run = build_run(load_recipe(recipe_path), tmp_path / "probe")
    student, kept = run.student.model, run.student.extraction.kept
    assert type(student) is type(run.teacher.model)
    assert (student.config.num_hidden_layers, student.config.hidden_size, student.config.num_attention_heads) == (
        1,
        extract["hidden"],
        2,
    )
    assert kept["strategy"] == extract["strategy"]
    assert kept["objective"] == ("task_loss" if extract["strategy"] == "importance" else "activation")
    if family == "llama":
        assert student.config.num_key_value_heads == 2 and student.config.head_dim == 12


def test_gpt2_layers_scaled_by_their_index_may_not_move():
    """scale_attn_by_inverse_layer_idx divides layer i's scores by i + 1: a kept layer may not change index."""
    teacher = gpt2(layers=4, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(BrewerError) as error:
        extract_student(teacher, ExtractPlan(strategy="random", layers=2))  # uniform: teacher layers 2 and 4
    assert str(error.value) == (
        "student.init.extract.layers: the GPT-2 teacher has scale_attn_by_inverse_layer_idx=true, so each layer "
        "scales its attention scores by its own position — teacher layer 2 kept as student layer 1 would attend "
        "differently. Keep the first layers (`selection: first`), keep every layer, or extract from a teacher "
        "without scale_attn_by_inverse_layer_idx"
    )
    # The first layers keep their indices: the student is the teacher's first two layers exactly.
    student = extract_student(teacher, ExtractPlan(strategy="random", layers=2, selection="first")).model
    assert student.config.scale_attn_by_inverse_layer_idx
    truncated = copy.deepcopy(teacher)
    truncated.transformer.h = truncated.transformer.h[:2]
    for batch in batches():
        torch.testing.assert_close(logits(student, batch), logits(truncated, batch), atol=0, rtol=0)
