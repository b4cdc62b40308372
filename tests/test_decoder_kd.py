"""benchmarks/decoder_kd.py, the decoder KD benchmark's driver, without training: the corpus split
by SQuAD article (no eval paragraph's article trained on), the rows and the runs they plan (the
teacher and each store's capture before the rows that read them, one run per seed, overrides that
load as recipes), the perplexity curve from metrics.jsonl, and the figures and Markdown from a
hand-made results.json written between the decoder-kd markers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from brewer_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
# The driver is a script in benchmarks/ importing its sibling modules by name.
sys.path.insert(0, str(ROOT / "benchmarks"))

import decoder_kd  # noqa: E402
import decoder_kd_report  # noqa: E402
from decoder_kd import ROWS, SCALES, Settings, corpus_lines, plan_runs, prepare, select  # noqa: E402

REAL_DATA = (ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json").is_file()


def fake_data(root: Path) -> Path:
    """48 articles of 2 paragraphs each ("article A paragraph P"), and SST-2 TSVs with a quote."""
    articles = [
        {"title": f"a{a}", "paragraphs": [{"context": f"article {a}  paragraph\n{p}", "qas": []} for p in range(2)]}
        for a in range(48)
    ]
    (root / "squad").mkdir(parents=True)
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": articles}))
    (root / "sst2").mkdir()
    (root / "sst2" / "train.tsv").write_text('sentence\tlabel\nit \'s "fine" \t1\na  dull   film\t0\n')
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\na dev sentence\t1\n")
    return root


def test_the_corpus_is_split_by_article_and_written_deterministically(tmp_path):
    data = fake_data(tmp_path / "data")
    lines = corpus_lines(data)
    assert lines["train"][:3] == ["article 0 paragraph 0", "article 0 paragraph 1", "article 1 paragraph 0"]
    assert lines["train"][78:] == ["article 39 paragraph 0", "article 39 paragraph 1", 'it \'s "fine"', "a dull film"]
    assert lines["eval"] == [f"article {a} paragraph {p}" for a in range(40, 48) for p in range(2)] + ["a dev sentence"]
    stats = prepare(tmp_path / "out", "full", data)
    assert stats["train"] == {"lines": 82, "words": 80 * 4 + 3 + 3} and stats["eval"] == {"lines": 17, "words": 16 * 4 + 3}
    first = (tmp_path / "out" / "corpus" / "train.txt").read_bytes()
    prepare(tmp_path / "out", "full", data)
    assert (tmp_path / "out" / "corpus" / "train.txt").read_bytes() == first
    assert first.decode().splitlines() == lines["train"]
    tiny = corpus_lines(data, "tiny")
    assert len(tiny["train"]) == 80 + 2 and len(tiny["eval"]) == 16 + 1  # fewer than the tiny caps


@pytest.mark.skipif(not REAL_DATA, reason="needs ../shared/data")
def test_the_real_corpus_shares_no_paragraph_between_train_and_eval():
    lines = corpus_lines()
    squad = json.loads((ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json").read_text())["data"]
    assert len(squad) == 48
    eval_paragraphs = {" ".join(p["context"].split()) for article in squad[40:] for p in article["paragraphs"]}
    assert eval_paragraphs <= set(lines["eval"]) and not eval_paragraphs & set(lines["train"])


def test_rows_plan_the_teacher_and_captures_first_and_one_run_per_seed(tmp_path):
    settings = Settings(tmp_path, SCALES["full"], seeds=(5, 6))
    planned = plan_runs(select(None), settings)
    assert [row.id for row in ROWS] == [
        "teacher", "ce-only", "forward-kl", "reverse-kl", "jsd",
        "capture-k8", "sparse-k8", "capture-k64", "sparse-k64", "capture-k512", "sparse-k512", "etd-forward-kl",
    ]  # fmt: skip
    names = [run.name for run in planned]
    assert len(planned) == 1 + 8 * 2 + 3 and len(set(names)) == len(names)
    assert names[:3] == ["decoder-kd-teacher", "decoder-kd-ce-only-seed5", "decoder-kd-ce-only-seed6"]
    for run in planned:
        if run.row.kind == "capture":
            assert run.command()[:7] == [
                "brewer", "capture", "recipes/causal_lm/decoder-kd-forward-kl.yaml",
                "--output", str(settings.store(run.row.k)), "--top-k", str(run.row.k),
            ]  # fmt: skip
            reader = next(other for other in planned if other.row.id == f"sparse-k{run.row.k}")
            assert planned.index(run) < planned.index(reader)
            continue
        recipe = load_recipe(ROOT / run.row.recipe, list(run.overrides), check_inputs=False)
        assert recipe.name == run.name and run.run_dir == tmp_path / "runs" / run.name
        assert recipe.data.train.path == str(tmp_path / "corpus" / "train.txt") and recipe.data.max_length == 128
        assert (ROOT / run.row.recipe).read_text().startswith("# Offline: needs nothing from the Hugging Face Hub")
        if run.row.kind == "student":
            assert recipe.training.seed == run.seed
            # Equal steps for every student: the same data, steps and batch.
            assert (recipe.training.max_steps, recipe.training.batch_size, recipe.training.eval_every) == (150, 32, 25)
        if run.row.teacher == "store":
            assert recipe.teacher.store == str(settings.store(run.row.k))
        elif run.row.teacher == "live" and run.row.kind == "student":
            assert recipe.teacher.checkpoint == str(settings.teacher_final())
    jsd = load_recipe(ROOT / "recipes/causal_lm/decoder-kd-jsd.yaml", check_inputs=False).distillation
    assert (jsd.kd_loss, jsd.jsd_beta) == ("jsd", 0.5)
    assert [row.id for row in select("sparse-k64,ce-only")] == ["teacher", "ce-only", "capture-k64", "sparse-k64"]
    with pytest.raises(SystemExit, match="unknown row\\(s\\) nope"):
        select("nope")


def test_the_tiny_scale_overrides_load(tmp_path):
    settings = Settings(tmp_path, SCALES["tiny"], seeds=(1,))
    for run in plan_runs(select(None), settings):
        if run.row.kind != "capture":
            recipe = load_recipe(ROOT / run.row.recipe, list(run.overrides), check_inputs=False)
            assert (recipe.training.max_steps, recipe.data.max_length) == (6, 32)
    assert decoder_kd.main(["--scale", "tiny", "--output-dir", str(tmp_path), "--list"], data=fake_data(tmp_path / "data")) == 0


def test_the_curve_adds_wall_time_while_steps_grow(tmp_path):
    lines = [
        {"time": 1000.0, "step": 10, "loss": 1.0},
        {"time": 1020.0, "step": 20, "eval": {"perplexity": 90.0}},
        {"time": 1030.0, "step": 30, "loss": 1.0},
        # resumed from the checkpoint at step 20, an hour later: the pause counts nothing
        {"time": 4600.0, "step": 25, "loss": 1.0},
        {"time": 4610.0, "step": 40, "eval": {"perplexity": 70.0}},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    # Step 10 at 20 s (10 steps at 2 s each, extrapolated), then +20 s, +10 s, +0 (resume), +10 s.
    assert decoder_kd_report.curve(tmp_path) == [[20, 40.0, 90.0], [40, 60.0, 70.0]]


def _record(row, seed, best, final, curve, kind="student", **extra):
    return {
        "row": row, "kind": kind, "method": row, "run": f"{row}-{seed}", "seed": seed, "steps": 100,
        "best": best, "final": final, "token_accuracy": 0.25, "curve": curve, "examples_per_second": 10.0,
        "train_time_s": 600.0, "others_beside": False, "store_bytes_per_token": None,
        "machine": {"cpu": "cpu", "cores": 2, "gpu": None, "torch": "2"}, **extra,
    }  # fmt: skip


def test_figures_and_markdown_from_a_hand_made_results_json(tmp_path):
    records = [
        _record("teacher", None, 50.0, 50.0, [[100, 60.0, 50.0]], kind="teacher"),
        _record("ce-only", 1, 100.0, 100.0, [[50, 30.0, 120.0], [100, 60.0, 100.0]]),
        _record("ce-only", 2, 110.0, 110.0, [[50, 30.0, 130.0], [100, 60.0, 110.0]]),
        _record("forward-kl", 1, 80.0, 80.0, [[50, 40.0, 95.0], [100, 80.0, 80.0]]),
        _record("forward-kl", 2, 90.0, 90.0, [[50, 40.0, 112.0], [100, 80.0, 90.0]]),
        {
            "row": "capture-k8",
            "kind": "capture",
            "method": "capture",
            "run": "store-k8",
            "seed": None,
            "k": 8,
            "store_bytes": 2_000_000,
            "store_bytes_per_token": 22.5,
            "wall_time_s": 120.0,
        },  # fmt: skip
        _record("sparse-k8", 1, 85.0, 85.0, [[50, 20.0, 101.0], [100, 40.0, 85.0]], store_bytes_per_token=22.5),
    ]
    found = decoder_kd_report.figures(records)
    assert found["forward-kl"]["best"]["mean"] == 85.0 and found["forward-kl"]["best"]["sd"] == pytest.approx(7.0710678)
    # (105 − 80) / (105 − 50) and (105 − 90) / 55: the CE-only mean best against the teacher.
    assert found["forward-kl"]["gap_closed"]["mean"] == pytest.approx(20 / 55)
    reach = found["forward-kl"]["steps_to_ce_only_final"]
    assert reach["by_seed"] == {
        "1": {"step": 50, "wall_s": 40.0, "of_ce_only_steps": 0.5},
        "2": {"step": 100, "wall_s": 80.0, "of_ce_only_steps": 1.0},
    }
    assert reach["mean"] == 75
    assert found["sparse-k8"]["steps_to_ce_only_final"]["by_seed"]["1"]["step"] == 100
    assert "steps_to_ce_only_final" not in found["ce-only"] and "gap_closed" not in found["teacher"]

    settings = Settings(tmp_path, SCALES["full"], seeds=(1, 2))
    markdown = decoder_kd_report.results_markdown(
        records, settings, {"train": {"lines": 10, "words": 100}, "eval": {"lines": 2, "words": 20}}
    )
    lines = markdown.splitlines()
    assert lines[0].startswith("| row | method | seeds | final ppl | best ppl | token acc | gap closed | steps to CE-only final")
    assert (
        "| forward-kl | forward-kl | 1, 2 | 85.00 ± 7.07 | 85.00 ± 7.07 | 25.0% ± 0.0% | 36.4% ± 12.9% | 75 (75%) | 10.0 ± 0.0 | 10.0 min | — | none |"
        in lines
    )
    assert "| sparse-k8 | sparse-k8 | 1 | 85.00 | 85.00 | 25.0% | 36.4% | 100 (100%) | 10.0 | 10.0 min | 22 | none |" in lines
    assert "- Stores (`brewer capture`): k = 8: 2.0 MB, 22 bytes per token, 2.0 min." in lines
    assert "train 10 lines / 100 words, eval 2 lines / 20 words" in markdown and "Seeds of the student rows: 1, 2" in markdown
    assert "- Command: `python benchmarks/decoder_kd.py` (resumable" in markdown
    recorded = decoder_kd_report.results_markdown(records, settings, {}, record=True)
    assert "- Command: `python benchmarks/decoder_kd.py --record` (resumable" in recorded

    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nintro\n")
    decoder_kd_report.record_section(markdown, results_md)
    text = results_md.read_text()
    assert text.startswith("# Results\n\nintro\n\n## Decoder KD, offline (issue 19)\n\n<!-- decoder-kd:start -->\n_")
    assert text.rstrip().endswith("<!-- decoder-kd:end -->") and "| forward-kl |" in text
    assert ", `python benchmarks/decoder_kd.py --record`_" in text
    decoder_kd_report.record_section("| replaced |", results_md)
    again = results_md.read_text()
    assert again.count("<!-- decoder-kd:start -->") == 1 and "| replaced |" in again and "| forward-kl |" not in again
