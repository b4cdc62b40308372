"""brewer size-report: parameter counts, FLOPs, latency, target resolution and rendering."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    LlamaConfig,
)

from brewer_cli import size_report
from brewer_cli.errors import BrewerError
from brewer_cli.size_report import report as report_module

BERT_BASE_VOCAB = 30522
# TextBrewer's English experiments used the cased BERT-base vocabulary.
BERT_BASE_CASED_VOCAB = 28996

# name: (layers, hidden, FFN, published parameters excluding output layers)
TEXTBREWER_STUDENTS = {
    "T6": (6, 768, 3072, 65e6),
    "T3": (3, 768, 3072, 44e6),
    "T3-small": (3, 384, 1536, 17e6),
    "T4-tiny": (4, 312, 1200, 14e6),
}


def bert_embeddings_by_hand(vocab: int, hidden: int, positions: int = 512, token_types: int = 2) -> int:
    # word + position + token type tables, then LayerNorm weight and bias
    return (vocab + positions + token_types) * hidden + 2 * hidden


def bert_layer_by_hand(hidden: int, ffn: int) -> int:
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden  # Q, K, V, O with biases; LayerNorm
    feed_forward = (hidden * ffn + ffn) + (ffn * hidden + hidden) + 2 * hidden
    return attention + feed_forward


def textbrewer_student(layers: int, hidden: int, ffn: int, vocab: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=ffn,
        max_position_embeddings=512,
        type_vocab_size=2,
    )


def build_on_meta(model_class, config):
    with torch.device("meta"):
        return model_class(config)


def tiny_bert(hidden: int = 32, layers: int = 2, **overrides) -> BertConfig:
    settings = dict(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return BertConfig(**settings)


@pytest.fixture
def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture
def saved_student(tmp_path):
    directory = tmp_path / "student"
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert(hidden=32, layers=2)).save_pretrained(directory)
    return directory


@pytest.fixture
def saved_teacher(tmp_path):
    directory = tmp_path / "teacher"
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert(hidden=64, layers=4)).save_pretrained(directory)
    return directory


# --- parameter counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TEXTBREWER_STUDENTS))
def test_textbrewer_students_match_published_sizes(name):
    layers, hidden, ffn, published = TEXTBREWER_STUDENTS[name]
    model = build_on_meta(BertForSequenceClassification, textbrewer_student(layers, hidden, ffn, BERT_BASE_VOCAB))
    counts = size_report.summary_figures(model)["parameters"]

    expected = bert_embeddings_by_hand(BERT_BASE_VOCAB, hidden) + layers * bert_layer_by_hand(hidden, ffn)
    assert counts["excluding_output_layers"] == expected
    assert counts["embeddings"] == bert_embeddings_by_hand(BERT_BASE_VOCAB, hidden)
    # Pooler (hidden² + hidden) and the 2-label classifier are the head, not counted above.
    assert counts["head"] == hidden * hidden + hidden + 2 * hidden + 2
    # With the 30522-token uncased vocabulary T6 and T3 come out 1.36M and 1.10M above the paper.
    assert abs(counts["excluding_output_layers"] - published) < 1.4e6

    # The paper's figures are reproduced to rounding with the cased vocabulary it used.
    cased_config = textbrewer_student(layers, hidden, ffn, BERT_BASE_CASED_VOCAB)
    cased = size_report.summary_figures(build_on_meta(BertForSequenceClassification, cased_config))
    assert abs(cased["parameters"]["excluding_output_layers"] - published) < 0.5e6


def test_albert_shared_layers_counted_once():
    config = AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = build_on_meta(AlbertForSequenceClassification, config)
    counts = size_report.count_parameters(model)

    embedding_tables = (100 + 64 + 2) * 16 + 2 * 16
    factorized_projection = 16 * 32 + 32
    one_layer = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32
    head = (32 * 32 + 32) + (32 * 2 + 2)
    assert counts["embeddings"] == embedding_tables + factorized_projection
    assert counts["encoder"] == one_layer  # six applications, one set of weights
    assert counts["head"] == head
    assert counts["total"] == embedding_tables + factorized_projection + one_layer + head
    # ...while the compute is six layers' worth.
    flops = size_report.analytic_flops(model, seq_len=8)
    one_layer_flops = 2 * 8 * 32 * 32 * 4 + 2 * 2 * 8 * 8 * 32 + 2 * 2 * 8 * 32 * 64
    assert flops["encoder"] == 6 * one_layer_flops


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_tied_embedding_counted_once(device):
    config = tiny_bert(tie_word_embeddings=True)
    if device == "meta":
        tied = build_on_meta(BertForMaskedLM, config)
    else:
        tied = BertForMaskedLM(config)
    untied = build_on_meta(BertForMaskedLM, tiny_bert(tie_word_embeddings=False))
    assert tied.cls.predictions.decoder.weight is tied.bert.embeddings.word_embeddings.weight

    tied_counts = size_report.count_parameters(tied)
    untied_counts = size_report.count_parameters(untied)
    # The word-embedding matrix, plus the decoder bias, which tying also makes one Parameter
    # (cls.predictions.bias and cls.predictions.decoder.bias).
    assert tied_counts["shared_counted_once"] == 100 * 32 + 100
    assert untied_counts["shared_counted_once"] == 0
    assert untied_counts["total"] - tied_counts["total"] == 100 * 32 + 100
    # The shared matrix belongs to the embeddings, where it is registered first.
    assert tied_counts["embeddings"] == untied_counts["embeddings"]
    assert tied_counts["total"] == sum(
        parameter.numel()
        for parameter in tied.parameters()  # torch itself dedupes by identity
    )


def test_buffers_are_not_parameters():
    model = BertForSequenceClassification(tiny_bert())
    assert any(True for _ in model.buffers())  # position_ids, token_type_ids
    assert size_report.count_parameters(model)["total"] == sum(p.numel() for p in model.parameters())


# --- FLOPs --------------------------------------------------------------------------------------


FLOP_CONFIGS = {
    "bert": BertConfig(vocab_size=100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "distilbert": DistilBertConfig(vocab_size=100, dim=128, n_layers=2, n_heads=4, hidden_dim=512),
    "albert": AlbertConfig(
        vocab_size=100,
        embedding_size=32,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=512,
    ),
    "llama": LlamaConfig(
        vocab_size=100,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
}


@pytest.mark.parametrize("family", list(FLOP_CONFIGS))
def test_flops_match_flop_counter(family):
    seq_len = 32
    # Eager attention: on CPU FlopCounterMode does not see the fused SDPA kernel, so under SDPA
    # it would miss QKᵀ and attention·V that the analytic count includes.
    config = FLOP_CONFIGS[family]
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    input_ids = torch.randint(1, 100, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    analytic = size_report.analytic_flops(model, seq_len)
    assert analytic["total"] == analytic["embeddings"] + analytic["encoder"] + analytic["head"]
    assert analytic["total"] == pytest.approx(counter.get_total_flops(), rel=0.02)


# --- latency ------------------------------------------------------------------------------------


def test_latency_is_positive_on_a_tiny_model():
    model = BertForSequenceClassification(tiny_bert())
    model.train()
    latency = size_report.measure_latency(model, seq_len=16, runs=3, batch_sizes=(1, 4))
    assert [entry["batch_size"] for entry in latency] == [1, 4]
    for entry in latency:
        assert 0 < entry["median_ms"] <= entry["p90_ms"]
        assert entry["examples_per_second"] == pytest.approx(entry["batch_size"] / (entry["median_ms"] / 1000))
    assert model.training  # the caller's mode is restored


def test_latencies_interleave_the_models_round_by_round():
    """Each round times every model in turn, each block after one untimed pass, so a slow spell of
    the machine falls on all the models compared rather than on one."""
    calls: list[tuple[str, int, int]] = []
    models = []
    for name, layers in (("a", 1), ("b", 2)):
        model = BertForSequenceClassification(tiny_bert(layers=layers))
        model.register_forward_hook(
            lambda module, args, kwargs, output, name=name: calls.append((name, *kwargs["input_ids"].shape)), with_kwargs=True
        )
        models.append(model)
    results = size_report.measure_latencies([(models[0], 8), (models[1], 16)], runs=4, batch_sizes=(1, 2), rounds=2)
    warmup = size_report.WARMUP_RUNS
    expected = [(name, size, seq) for name, seq in (("a", 8), ("b", 16)) for size in (1, 2) for _ in range(warmup)]
    block = [(name, size, seq) for name, seq in (("a", 8), ("b", 16)) for size in (1, 2) for _ in range(1 + 2)]
    assert calls == expected + block + block
    assert [[entry["batch_size"] for entry in entries] for entries in results] == [[1, 2], [1, 2]]
    assert all(entry["median_ms"] > 0 for entries in results for entry in entries)


def test_cuda_request_without_cuda_is_an_error(saved_student, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BrewerError, match="CUDA is not available"):
        size_report.run(str(saved_student), runs=1, device="cuda", console=Console(file=io.StringIO()))


def test_percentile_matches_linear_interpolation():
    assert size_report._percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert size_report._percentile([7.0], 90) == 7.0


# --- resolving targets --------------------------------------------------------------------------


def test_resolve_checkpoint_directory(saved_student):
    target = size_report.resolve_target(str(saved_student))
    assert target.kind == "checkpoint"
    assert target.has_weights
    assert target.model_class is BertForSequenceClassification
    assert [file.name for file in target.weight_files()] == ["model.safetensors"]


def test_resolve_config_json_file(saved_student):
    target = size_report.resolve_target(str(saved_student / "config.json"))
    assert target.kind == "config"
    assert not target.has_weights
    assert target.config.hidden_size == 32
    assert target.model_class is BertForSequenceClassification  # from config.architectures


def test_resolve_student_architecture_yaml(tmp_path):
    path = tmp_path / "t4-tiny.yaml"
    path.write_text(
        "model_type: bert\nvocab_size: 100\nhidden_size: 24\nnum_hidden_layers: 2\n"
        "num_attention_heads: 4\nintermediate_size: 48\n"
    )
    target = size_report.resolve_target(str(path))
    assert (target.kind, target.config.hidden_size) == ("config", 24)
    # No architectures named: brewer's default task, sequence classification.
    assert target.model_class is BertForSequenceClassification


def test_resolve_run_directory_prefers_final(tmp_path, saved_student, saved_teacher):
    run_directory = tmp_path / "runs" / "sst2"
    shutil.copytree(saved_teacher, run_directory / "best")
    target = size_report.resolve_target(str(run_directory))
    assert (target.kind, target.location) == ("run", str(run_directory / "best"))

    shutil.copytree(saved_student, run_directory / "final")
    target = size_report.resolve_target(str(run_directory))
    assert (target.kind, target.location) == ("run", str(run_directory / "final"))


def test_missing_path_is_a_brewer_error(tmp_path):
    missing = tmp_path / "runs" / "nope"
    with pytest.raises(BrewerError) as caught:
        size_report.resolve_target(str(missing))
    assert str(caught.value) == (
        f"size-report target {str(missing)!r} does not exist: no file or directory at {missing}. "
        "Give a run directory (runs/<name>), a checkpoint directory (config.json + "
        "model.safetensors), a config file (.json/.yaml with model_type) or a Hugging Face Hub id."
    )


def test_directory_without_a_model_names_the_candidates(tmp_path, saved_student):
    shutil.copytree(saved_student, tmp_path / "run" / "checkpoints" / "step-10")
    with pytest.raises(BrewerError, match=r"no config.json and no final/ or best/.*step-10"):
        size_report.resolve_target(str(tmp_path / "run"))


def test_recipe_file_is_not_a_config(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nstudent: {config: configs/students/t4-tiny.json}\n")
    with pytest.raises(BrewerError, match="has no `model_type`"):
        size_report.resolve_target(str(recipe))


def test_offline_hub_id_is_a_brewer_error(monkeypatch):
    from transformers import AutoConfig

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(AutoConfig, "from_pretrained", offline)
    with pytest.raises(BrewerError, match=r"'google/bert_uncased_L-4_H-312_A-12'.*Hub id failed"):
        size_report.resolve_target("google/bert_uncased_L-4_H-312_A-12")


# --- the report ---------------------------------------------------------------------------------


def test_report_with_teacher_has_every_ratio(saved_student, saved_teacher, quiet_console):
    report = size_report.run(
        str(saved_student),
        against=str(saved_teacher),
        seq_len=16,
        runs=2,
        batch_sizes=(1, 2),
        console=quiet_console,
    )
    student, teacher = report["models"]
    assert (student["role"], teacher["role"]) == ("target", "against")
    comparison = report["comparison"]
    assert comparison["parameters_smaller_by"] == pytest.approx(teacher["parameters"]["total"] / student["parameters"]["total"])
    assert comparison["excluding_output_layers_smaller_by"] == pytest.approx(
        teacher["parameters"]["excluding_output_layers"] / student["parameters"]["excluding_output_layers"]
    )
    assert comparison["disk_smaller_by"] == pytest.approx(teacher["disk_bytes"] / student["disk_bytes"])
    assert comparison["flops_fewer_by"] == pytest.approx(teacher["flops"]["total"] / student["flops"]["total"])
    assert [entry["batch_size"] for entry in comparison["latency"]] == [1, 2]
    for entry in comparison["latency"]:
        assert entry["faster_by"] > 0 and entry["throughput_ratio"] > 0
    assert student["disk_bytes"] == (saved_student / "model.safetensors").stat().st_size
    assert comparison["parameters_smaller_by"] > 1 and comparison["flops_fewer_by"] > 1

    printed = quiet_console.file.getvalue()
    assert "excluding output layers" in printed and "teacher ÷ student" in printed


def test_target_and_teacher_are_timed_together(saved_student, saved_teacher, quiet_console, monkeypatch):
    """One interleaved measurement (measure_latencies) for every model of the report, so the speed-up
    divides figures taken over the same moments."""
    calls = []
    real = report_module.measure_latencies

    def recording(models, **options):
        calls.append(([type(model).__name__ for model, _ in models], [seq_len for _, seq_len in models], options))
        return real(models, **options)

    monkeypatch.setattr(report_module, "measure_latencies", recording)
    report = size_report.run(
        str(saved_student), against=str(saved_teacher), seq_len=16, runs=3, batch_sizes=(1,), console=quiet_console
    )
    ((classes, lengths, options),) = calls
    assert len(classes) == 2 and lengths == [16, 16]
    assert options == {"runs": 3, "batch_sizes": (1,), "device": "cpu", "rounds": 5}
    student, teacher = report["models"]
    assert student["latency"][0]["threads"] == teacher["latency"][0]["threads"] == torch.get_num_threads()
    (latency_note,) = [note for note in report["notes"] if note.startswith("Latency:")]
    assert latency_note == (
        f"Latency: median and p90 ms per batch over 3 runs after {size_report.WARMUP_RUNS} warm-up runs, the models "
        f"timed in turn in 3 rounds, random token ids of length 16 without padding, torch.inference_mode, eval mode, "
        f"on cpu, {torch.get_num_threads()} CPU threads."
    )


def test_config_only_target_is_timed_with_random_weights(tmp_path, saved_student, quiet_console):
    report = size_report.run(str(saved_student / "config.json"), seq_len=8, runs=1, batch_sizes=(1,), console=quiet_console)
    model = report["models"][0]
    assert model["config_only"] and model["random_weights"]
    assert model["disk_bytes"] is None
    assert model["latency"][0]["median_ms"] > 0
    assert any("random weights" in note for note in report["notes"])


def test_runs_zero_skips_latency_and_reads_no_weights(saved_student, quiet_console):
    report = size_report.run(str(saved_student), runs=0, seq_len=16, console=quiet_console)
    model = report["models"][0]
    assert model["latency"] is None and report["batch_sizes"] == []
    assert model["disk_bytes"] == (saved_student / "model.safetensors").stat().st_size


def test_seq_len_beyond_position_table_is_an_error(saved_student, quiet_console):
    with pytest.raises(BrewerError, match="seq_len 128 is longer than the 64 positions"):
        size_report.run(str(saved_student), runs=0, seq_len=128, console=quiet_console)


def test_json_and_markdown_contain_the_figures(saved_student, saved_teacher):
    console = Console(file=io.StringIO(), width=200)
    report = size_report.run(
        str(saved_student),
        against=str(saved_teacher),
        seq_len=16,
        runs=1,
        batch_sizes=(1,),
        as_json=True,
        console=console,
    )
    printed = json.loads(console.file.getvalue())
    assert printed == json.loads(size_report.to_json(report))
    student = printed["models"][0]
    assert student["parameters"]["total"] == report["models"][0]["parameters"]["total"]
    assert student["flops"]["total"] == report["models"][0]["flops"]["total"]

    markdown = size_report.to_markdown(report)
    total = report["models"][0]["parameters"]["total"]
    assert markdown.startswith("|  | ")
    assert f"{total / 1e3:.2f}K" in markdown  # tiny model: thousands of parameters
    assert "excluding output layers" in markdown and "FLOPs / example @ 16" in markdown
    assert "latency batch 1 (median / p90)" in markdown
    assert f"{report['comparison']['parameters_smaller_by']:.2f}× smaller" in markdown


def test_plot_writes_an_image(saved_student, saved_teacher, tmp_path, quiet_console):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "size.png"
    size_report.run(
        str(saved_student),
        against=str(saved_teacher),
        seq_len=8,
        runs=1,
        batch_sizes=(1,),
        plot_path=str(path),
        console=quiet_console,
    )
    assert path.read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    report = {"models": [], "seq_len": 8, "device": "cpu"}
    with pytest.raises(BrewerError, match=r"pip install 'brewer\[plot\]'"):
        size_report.plot(report, "unused.png")


def test_roberta_position_table_starts_after_the_padding_index():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=20,
    )
    model = build_on_meta(RobertaForSequenceClassification, config)
    assert size_report.summary_figures(model, seq_len=18)["flops"]["seq_len"] == 18
    with pytest.raises(BrewerError, match="seq_len 19 is longer than the 18 positions"):
        size_report.summary_figures(model, seq_len=19)


def test_model_without_transformers_config():
    class BiGRUStudent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(100, 16)
            self.gru = torch.nn.GRU(16, 8, bidirectional=True, batch_first=True)
            self.classifier = torch.nn.Linear(16, 2)

    model = BiGRUStudent()
    figures = size_report.summary_figures(model)
    assert figures["parameters"]["embeddings"] == 100 * 16
    assert figures["parameters"]["encoder"] == sum(p.numel() for p in model.gru.parameters())
    assert figures["parameters"]["head"] == 16 * 2 + 2
    assert figures["flops"] is None  # analytic FLOPs need a transformer config
    assert figures["architecture"]["family"] == "BiGRUStudent"
