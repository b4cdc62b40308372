"""The training loop, the trainer and basic distillers, run directories, resume and eval."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli.build import build_run
from brewer_cli.cli import app
from brewer_cli.commands import distill, train_teacher
from brewer_cli.recipe import load_recipe
from tests.conftest import TINY_BERT, distill_recipe, write_recipe


def one_batch(run, size: int = 16):
    from torch.utils.data import DataLoader

    loader = DataLoader(run.data.train, batch_size=size, shuffle=False, collate_fn=run.collate)
    return next(iter(loader))


def losses_on_repeated_batch(run, steps: int = 25, learning_rate: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    distiller = run.distiller
    distiller.total_steps = steps
    for loaded in run.teachers:
        loaded.model.eval()
    distiller.train()
    optimizer = torch.optim.AdamW(distiller.parameters(), lr=learning_rate)
    batch = one_batch(run)
    losses = []
    for step in range(steps):
        distiller.current_step = step
        loss = distiller(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kd_loss", ["ce", "kl", "mse"])
def test_basic_loss_goes_down_on_a_repeated_batch(tmp_path, tokenizer_dir, kd_loss):
    from tests.conftest import save_tiny_model

    # A teacher with large initial weights has confident, example-dependent outputs, so the
    # student has something to learn from the first step on.
    teacher_dir = save_tiny_model(tmp_path / "teacher", tokenizer_dir, config={**TINY_BERT, "initializer_range": 0.5})
    raw = distill_recipe(
        teacher_dir,
        distillation={
            "kind": "basic",
            "kd_loss": kd_loss,
            "temperature": 1.0,
            "temperature_squared": True,
            "hard_label_weight": 0.0,
        },
    )
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    losses = losses_on_repeated_batch(run, steps=60, learning_rate=1e-2)
    floor = 0.0
    if kd_loss == "ce":
        # Cross-entropy to the teacher cannot go below the teacher's own entropy.
        with torch.no_grad():
            probabilities = run.teacher.model(**run.teacher.family.model_inputs(one_batch(run))).logits.softmax(-1)
        floor = float(-(probabilities * probabilities.log()).sum(-1).mean())
    assert losses[-1] - floor < 0.5 * (losses[0] - floor), losses


def test_trainer_loss_goes_down_on_a_repeated_batch(tmp_path, tokenizer_dir):
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    raw["distillation"] = {"kind": "trainer"}
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert run.teachers == []
    # 3e-3, not 1e-2: at 1e-2 Adam overshoots on some vocabularies and the loss spikes late.
    losses = losses_on_repeated_batch(run, steps=40, learning_rate=3e-3)
    assert losses[-1] < 0.1 * losses[0], losses


def test_teacher_is_frozen_and_not_part_of_the_trained_module(tmp_path, teacher_dir):
    run = build_run(load_recipe(write_recipe(tmp_path, distill_recipe(teacher_dir))), tmp_path / "out")
    distiller = run.distiller
    trained = {id(p) for p in distiller.parameters()}
    assert not any(id(p) in trained for p in run.teacher.model.parameters())
    assert all(not name.startswith("teachers") for name in distiller.state_dict())
    before = {k: v.clone() for k, v in run.teacher.model.state_dict().items()}
    losses_on_repeated_batch(run, steps=3)
    after = run.teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_distill_writes_a_complete_run_directory(tmp_path, teacher_dir, quiet_console):
    raw = distill_recipe(teacher_dir)
    raw["training"]["epochs"] = 2
    recipe = load_recipe(write_recipe(tmp_path, raw))
    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "tiny"
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "final", "best", "checkpoints"):
        assert (run_dir / name).exists(), name
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["metric"] == "accuracy"
    assert written["steps"] == 8
    assert written["teacher"]["parameters"] > written["student"]["parameters"] > 0
    assert written["student_to_teacher"] == pytest.approx(written["student"]["metric"] / written["teacher"]["metric"])
    assert written["wall_time_s"] > 0
    assert written["size"]["student"]["parameters"]["total"] == written["student"]["parameters"]
    assert summary["student"]["metric"] == written["student"]["metric"]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for directory in ("final", "best"):
        model = AutoModelForSequenceClassification.from_pretrained(run_dir / directory)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / directory)
        assert model.config.id2label == {0: "negative", 1: "positive"}
        assert model(**tokenizer(["the movie was great"], return_tensors="pt")).logits.shape == (1, 2)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in line for line in lines)
    assert any("kd" in line and "hard_label" in line for line in lines)
    # The resolved recipe reloads to the same recipe.
    assert load_recipe(run_dir / "recipe.yaml").model_dump() == recipe.model_dump()


def test_resume_without_the_teacher_cache_recomputes_it(tmp_path, teacher_dir, quiet_console):
    """Bit-identical resume for every kind is tests/test_resume.py; here the cache is lost."""
    raw = distill_recipe(teacher_dir)
    raw["training"].update({"epochs": 3, "save_every": 5, "keep_checkpoints": 5, "eval_every": 100})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    distill(recipe, tmp_path / "full", console=quiet_console)
    full = tmp_path / "full" / "tiny"
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-10", "step-12", "step-5"]

    # Three epochs: the teacher-output cache (auto → prefill, in memory) answers every step.
    cache = json.loads((full / "summary.json").read_text())["teacher_cache"]
    assert (cache["mode"], cache["fill"], cache["teacher_forwards"]) == ("memory", "prefill", 0)

    from safetensors.torch import load_file

    uninterrupted = load_file(str(full / "final" / "model.safetensors"))
    # Without the store beside it the resumed run fills it again (one teacher pass, the same batches):
    # equal to the lost one up to float rounding.
    lost = tmp_path / "lost" / "tiny"
    lost.mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-5", lost / "checkpoints" / "step-5")
    shutil.copy(full / "recipe.yaml", lost / "recipe.yaml")
    distill(recipe, tmp_path / "lost", resume=True, console=quiet_console)
    recomputed = load_file(str(lost / "final" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(recomputed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_without_checkpoints_is_an_error(tmp_path, teacher_dir, quiet_console):
    from brewer_cli.errors import BrewerError

    recipe = load_recipe(write_recipe(tmp_path, distill_recipe(teacher_dir)))
    with pytest.raises(BrewerError) as error:
        distill(recipe, tmp_path / "out", resume=True, console=quiet_console)
    assert "nothing to resume (no checkpoints/)" in str(error.value)


def test_teacher_trained_automatically_then_distilled(tmp_path, tokenizer_dir, monkeypatch, quiet_console):
    monkeypatch.chdir(tmp_path)
    raw = distill_recipe("runs/tiny-teacher/final")
    raw["teacher"]["train"] = {
        "model": {"config": dict(TINY_BERT), "tokenizer": {"train_wordpiece": {"vocab_size": 90}}},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "progress": False},
    }
    recipe = load_recipe(write_recipe(tmp_path, raw))
    summary = distill(recipe, tmp_path / "runs", console=quiet_console)
    teacher_summary = json.loads((tmp_path / "runs" / "tiny-teacher" / "summary.json").read_text())
    assert teacher_summary["kind"] == "trainer"
    assert summary["teacher"]["metric"] == pytest.approx(teacher_summary["model"]["metric"])
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(tmp_path / "runs" / "tiny-teacher" / "final")) <= 90

    # train-teacher on the same recipe refuses to overwrite the finished teacher run.
    from brewer_cli.errors import BrewerError

    with pytest.raises(BrewerError) as error:
        train_teacher(recipe, console=quiet_console)
    assert "holds a finished run" in str(error.value)


def test_local_tsv_pairs_string_labels_and_dynamic_padding(tmp_path, tokenizer_dir, quiet_console):
    rows = ["premise\thypothesis\tlabel"] + [
        f'the movie was {"great" if i % 2 else "dull"}\tit was {"fun" if i % 3 else "bland"} "quoted\tyes'
        if False
        else f'the movie was {"great" if i % 2 else "dull"}\tit was "fun" {"very " * (i % 5)}good\t{"entailment" if i % 2 else "contradiction"}'
        for i in range(40)
    ]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["task"] = {"kind": "sequence_classification"}
    raw["data"] = {
        "train": {"path": str(tmp_path / "pairs.tsv")},
        "eval": {"path": str(tmp_path / "pairs.tsv")},
        "text": "premise",
        "text_pair": "hypothesis",
        "max_length": 60,
    }
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    raw["distillation"] = {"kind": "trainer"}
    recipe = load_recipe(write_recipe(tmp_path, raw))
    run = build_run(recipe, tmp_path / "out")
    assert run.data.label_names == ["contradiction", "entailment"]
    assert len(run.data.train) == 40  # bare quotes did not merge lines
    batch = one_batch(run, size=4)
    longest = max(len(run.data.train[i]["input_ids"]) for i in range(4))
    assert batch["input_ids"].shape == (4, longest) and longest < 60
    assert set(batch["token_type_ids"].unique().tolist()) == {0, 1}
    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "out" / "tiny" / "final")
    assert config.id2label == {0: "contradiction", 1: "entailment"}
    assert 0.0 <= summary["model"]["metric"] <= 1.0


def test_regression_task_reports_correlations(tmp_path, tokenizer_dir, quiet_console):
    lines = ["text,score"] + [f"the film was {'great ' * (i % 4)}fun,{(i % 4) / 3:.3f}" for i in range(32)]
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    raw = distill_recipe("unused")
    del raw["teacher"], raw["student"]
    raw["task"] = {"kind": "sequence_classification", "num_labels": 1}
    raw["data"] = {
        "train": {"path": str(tmp_path / "scores.csv")},
        "eval": {"path": str(tmp_path / "scores.csv")},
        "label": "score",
        "max_length": 64,  # the tiny model's position limit
    }
    raw["model"] = {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}}
    raw["distillation"] = {"kind": "trainer"}
    raw["training"]["epochs"] = 4
    summary = distill(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out", console=quiet_console)
    metrics = summary["model"]["metrics"]
    assert set(metrics) == {"pearson", "spearman", "mse"}
    assert summary["metric"] == "pearson"


def test_jsonl_and_save_to_disk_sources(tmp_path, teacher_dir):
    import datasets

    rows = [{"text": f"the plot was {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(20)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    raw = distill_recipe(teacher_dir)
    raw["data"] = {"train": {"path": str(tmp_path / "train.jsonl")}, "eval": {"path": str(tmp_path / "saved")}, "max_length": 64}
    run = build_run(load_recipe(write_recipe(tmp_path, raw)), tmp_path / "out")
    assert len(run.data.train) == 20 and len(run.data.eval) == 20
    # The teacher's label names are kept; integer labels map to those ids.
    assert run.data.label_names == ["negative", "positive"]
    assert run.data.train.columns["labels"][:4] == [0, 1, 0, 1]


def test_eval_command_on_run_and_with_other_data(tmp_path, teacher_dir, quiet_console):
    recipe_path = write_recipe(tmp_path, distill_recipe(teacher_dir))
    distill(load_recipe(recipe_path), tmp_path / "out", console=quiet_console)
    run_dir = tmp_path / "out" / "tiny"
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(run_dir), "--against", str(teacher_dir)], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["model"]["metrics"]["accuracy"] == pytest.approx(summary["student"]["metric"])
    assert report["teacher"]["metrics"]["accuracy"] == pytest.approx(summary["teacher"]["metric"])
    assert report["examples"] == 32

    (tmp_path / "other.tsv").write_text("text\tlabel\nthe movie was great\tpositive\nthe movie was not great\tnegative\n")
    result = runner.invoke(app, ["eval", str(run_dir / "final"), "--data", str(tmp_path / "other.tsv")])
    assert result.exit_code == 0, result.output
    # One file per data set, beside the run (not inside final/): the recipe's eval split keeps its own.
    other = json.loads((run_dir / "eval-other.json").read_text())
    assert other["examples"] == 2 and other["data"]["source"]["path"].endswith("other.tsv")
    assert json.loads((run_dir / "eval.json").read_text())["examples"] == 32
    assert not (run_dir / "final" / "eval.json").exists()


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "bert"},
        {"model_type": "roberta"},
        {"model_type": "xlm-roberta"},
        {"model_type": "electra", "embedding_size": 16},
        {"model_type": "albert", "embedding_size": 16},
        {"model_type": "distilbert"},
    ],
    ids=lambda c: c["model_type"],
)
def test_each_family_loads_from_a_checkpoint_and_distills(tmp_path, tokenizer_dir, config, quiet_console):
    from tests.conftest import save_tiny_model

    settings = {**TINY_BERT, **config}
    if config["model_type"] in ("roberta", "xlm-roberta"):
        settings["max_position_embeddings"] = 70  # position ids start after the padding index
    if config["model_type"] == "distilbert":
        settings = {
            "model_type": "distilbert",
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "hidden_dim": 64,
            "max_position_embeddings": 64,
        }
    teacher = save_tiny_model(tmp_path / "teacher", tokenizer_dir, config=settings)
    student = save_tiny_model(tmp_path / "student", tokenizer_dir, config=settings, seed=1)
    raw = distill_recipe(teacher, student={"checkpoint": str(student)})
    recipe = load_recipe(write_recipe(tmp_path, raw))
    run = build_run(recipe, tmp_path / "out")
    assert run.teacher.family.name == config["model_type"]
    features = run.teacher.family.features(run.teacher.model, one_batch(run, 4), logits_of=run.task.logits)
    assert features.logits.shape == (4, 2)
    summary = distill(recipe, tmp_path / "out", console=quiet_console)
    assert summary["steps"] == 4
