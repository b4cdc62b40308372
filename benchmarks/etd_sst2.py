"""ETD on SST-2 (Extract Then Distill, DESIGN.md §7): does a student cut out of the teacher's weights
learn faster than one initialized at random? Three recipes with the same 3-layer, 192-wide student
(12 heads × 16, FFN 768) and identical training settings are distilled from the same fine-tuned
MiniLM-L6-H384 teacher:

  (a) recipes/sst2/minilm_to_l3-h192-random-local.yaml    student built from a config (random init)
  (b) recipes/sst2/minilm_to_l3-h192-etd-rand-local.yaml  ETD-Rand: random subsets of the teacher
  (c) recipes/sst2/minilm_to_l3-h192-etd-impt-local.yaml  ETD-Impt: Taylor-importance subsets

Dev accuracy is read against steps from each run's metrics.jsonl (evaluated every ~1/8 of the run);
the extracted students of (b) and (c) are also evaluated before any training (step 0) with
`brewer extract` + `brewer eval`. The script draws the plot and writes the report into --work and
benchmarks/work/reports/; `--record` draws benchmarks/etd_sst2.png instead and writes the report into
benchmarks/RESULTS.md (replacing the section of the same title).

The teacher is reused, not trained here: by default the one benchmarks/sst2_minilm.py trains
(MiniLM fine-tuned on the first 3,000 SST-2 sentences); the script waits for it when it is still
being trained.

    python benchmarks/etd_sst2.py [--teacher DIR] [--train-examples 3000] [--epochs 2] [--evaluations 8] [--record]
    python benchmarks/etd_sst2.py --report-only [--record]   # redraw and rewrite the report from the finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml
from common import ROOT, WORK, brewer, summary, write_section

RUNS = (
    # key, label, recipe, run name
    ("random", "(a) random init", "recipes/sst2/minilm_to_l3-h192-random-local.yaml", "sst2-minilm-to-l3-h192-random"),
    ("etd-rand", "(b) ETD-Rand", "recipes/sst2/minilm_to_l3-h192-etd-rand-local.yaml", "sst2-minilm-to-l3-h192-etd-rand"),
    ("etd-impt", "(c) ETD-Impt", "recipes/sst2/minilm_to_l3-h192-etd-impt-local.yaml", "sst2-minilm-to-l3-h192-etd-impt"),
)
DEFAULT_TEACHER = WORK / "sst2" / "sst2-minilm-teacher" / "final"
OUTPUT = WORK / "etd_sst2"
PLOT = ROOT / "benchmarks" / "etd_sst2.png"
BATCH_SIZE = 32  # the recipes' training.batch_size; stated here to compute eval_every


def wait_for_teacher(teacher: Path, poll_seconds: int) -> None:
    """The teacher is complete once its run has written summary.json (after final/)."""
    while not ((teacher / "config.json").exists() and (teacher.parent / "summary.json").exists()):
        print(f"waiting for the teacher at {teacher} (config.json and ../summary.json) …", flush=True)
        time.sleep(poll_seconds)


def dev_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, dev accuracy) from metrics.jsonl, in step order."""
    points = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "eval" in entry:
            points[int(entry["step"])] = float(entry["eval"]["accuracy"])
    return sorted(points.items())


def timed(*arguments: str) -> float:
    start = time.monotonic()
    brewer(*arguments)
    return time.monotonic() - start


def evaluate_at_step_zero(key: str, recipe: str, common: list[str], output: Path) -> float:
    """Dev accuracy of the extracted student before any distillation step."""
    extracted = output / f"{key}-extracted"
    if extracted.exists():
        shutil.rmtree(extracted)
    brewer("extract", recipe, *common, "--output", str(extracted))
    brewer("eval", str(extracted), "--recipe", recipe, *common)
    return float(json.loads((extracted / "eval.json").read_text())["model"]["metrics"]["accuracy"])


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, accuracy in curve if accuracy >= target), None)


def plot(results: dict, path: Path, teacher_accuracy: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on the benchmark machine
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for key, label, _, _ in RUNS:
        entry = results["runs"][key]
        points = ([(0, entry["step_zero"])] if entry.get("step_zero") is not None else []) + entry["curve"]
        axes.plot([step for step, _ in points], [accuracy for _, accuracy in points], marker="o", label=label)
    if teacher_accuracy is not None:
        axes.axhline(teacher_accuracy, color="grey", linestyle="--", linewidth=1, label="teacher (MiniLM-L6-H384)")
    axes.set_xlabel("training step (batch 32)")
    axes.set_ylabel("SST-2 dev accuracy")
    axes.set_title("SST-2: 3×192 student, random init vs ETD (basic KD from MiniLM)")
    axes.grid(alpha=0.3)
    # The middle of the axes stays empty: ETD curves run above it, the random-init curve below.
    axes.legend(loc="center")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def report(results: dict, plot_path: Path, record: bool) -> str:
    runs = results["runs"]
    settings = results["settings"]
    # The command that ran the runs, with --record when this report is recorded (maybe by --report-only).
    command = " ".join([part for part in settings["command"].split() if part != "--record"] + (["--record"] if record else []))
    shown_plot = plot_path.relative_to(ROOT) if plot_path.is_relative_to(ROOT) else plot_path
    baseline = runs["random"]
    baseline_final = baseline["curve"][-1][1]
    baseline_steps = baseline["steps"]
    steps = sorted({step for entry in runs.values() for step, _ in entry["curve"]})
    header = "| step | " + " | ".join(label for _, label, _, _ in RUNS) + " |"
    rows = [header, "|---:|" + "---:|" * len(RUNS)]
    step_zero = [runs[key].get("step_zero") for key, _, _, _ in RUNS]
    rows.append("| 0 (before training) | " + " | ".join("—" if value is None else f"{value:.4f}" for value in step_zero) + " |")
    for step in steps:
        cells = []
        for key, _, _, _ in RUNS:
            value = dict(runs[key]["curve"]).get(step)
            cells.append("—" if value is None else f"{value:.4f}")
        rows.append(f"| {step} | " + " | ".join(cells) + " |")

    finals = [
        "| run | student parameters | final dev accuracy | best (step) | steps | training wall time | command wall time | steps to reach (a)'s final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label, recipe, _ in RUNS:
        entry = runs[key]
        reached = steps_to_reach(
            ([(0, entry["step_zero"])] if entry.get("step_zero") is not None else []) + entry["curve"], baseline_final
        )
        if key == "random":
            reach_text = f"{baseline_steps} (reference)"
        elif reached is None:
            reach_text = "not reached"
        else:
            reach_text = f"{reached} = {reached / baseline_steps:.1%} of (a)'s {baseline_steps}"
        finals.append(
            f"| {label} (`{Path(recipe).name}`) | {entry['parameters']:,} | {entry['curve'][-1][1]:.4f} | "
            f"{entry['best_metric']:.4f} ({entry['best_step']}) | {entry['steps']} | {entry['wall_time_s']:.0f} s | "
            f"{entry['command_wall_s']:.0f} s | {reach_text} |"
        )

    overrides = " ".join(f"`--set {item}`" for item in settings["overrides"])
    teacher = results["teacher"]
    extraction = results.get("extraction_notes", "")
    return f"""
Command: `{command}`.
Each run is `brewer distill RECIPE --output-dir {settings["work"]}` with {overrides}; the recipes differ only in
`student` (same seed {settings["seed"]}, data, batch {settings["batch_size"]}, max_length {settings["max_length"]},
lr {settings["learning_rate"]:g} with 10% warmup, basic KD: CE to the teacher at T=4 + 0.5 × hard-label CE).
Teacher: `{teacher["checkpoint"]}` (MiniLM-L6-H384 fine-tuned on the same first {settings["train_examples"]:,} SST-2
training sentences, as benchmarks/sst2_minilm.py does; dev accuracy {teacher["accuracy"]:.4f} by its run's summary.json,
{teacher["parameters"]:,} parameters).
Student: 3 layers (teacher layers 2, 4, 6 for ETD), hidden 192, 12 heads × 16, FFN 768. Dev set: {settings["dev"]},
evaluated every {settings["eval_every"]} steps; step 0 for (b) and (c) is the extracted student before training
(`brewer extract` + `brewer eval`). {extraction}
Plot: `{shown_plot}`. Wall times on a 2-core machine shared with other jobs (run with `nice -n 10`),
so they are indicative only; "command wall time" includes loading, the teacher's dev evaluation and extraction.

Dev accuracy against training steps:

{chr(10).join(rows)}

{chr(10).join(finals)}

"Steps to reach": the first evaluated step whose dev accuracy is at least (a)'s final accuracy ({baseline_final:.4f}),
at the granularity of the evaluations (every {settings["eval_every"]} steps), as a fraction of (a)'s {baseline_steps} steps.
One seed and one data subset: differences of a point or less are within run-to-run noise at this size.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="the fine-tuned teacher's final/ directory")
    parser.add_argument("--train-examples", type=int, default=3000, help="the teacher's training subset (data.train.limit)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--evaluations", type=int, default=8, help="dev evaluations over the run")
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=None,
        help="limit the dev set (default: all 872 sentences; a smaller one only for a quick check)",
    )
    parser.add_argument("--poll", type=int, default=60, help="seconds between checks for the teacher")
    parser.add_argument("--work", type=Path, default=OUTPUT, help="directory for the runs (replaced)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="draw benchmarks/etd_sst2.png and write the report into benchmarks/RESULTS.md (default: the plot inside --work)",
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the plot and the report from results.json")
    arguments = parser.parse_args()
    output = arguments.work.resolve()
    results_file = output / "results.json"

    if not arguments.report_only:
        teacher = arguments.teacher.resolve()
        wait_for_teacher(teacher, arguments.poll)
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
        steps_per_epoch = math.ceil(arguments.train_examples / BATCH_SIZE)
        total_steps = math.ceil(arguments.epochs * steps_per_epoch)
        eval_every = max(1, round(total_steps / arguments.evaluations))
        overrides = [
            f"teacher.checkpoint={teacher}",
            "teacher.train=null",  # the given teacher, used as it is
            f"data.train.limit={arguments.train_examples}",
            f"training.epochs={arguments.epochs:g}",
            f"training.eval_every={eval_every}",
            "training.progress=false",
        ]
        if arguments.eval_examples is not None:
            overrides.append(f"data.eval.limit={arguments.eval_examples}")
        common = [item for override in overrides for item in ("--set", override)]
        teacher_summary = summary(teacher.parent)
        results = {
            "teacher": {
                "checkpoint": str(teacher.relative_to(ROOT)) if teacher.is_relative_to(ROOT) else str(teacher),
                "accuracy": teacher_summary["model"]["metric"],
                "parameters": teacher_summary["model"]["parameters"],
            },
            "settings": {
                "train_examples": arguments.train_examples,
                "epochs": arguments.epochs,
                "evaluations": arguments.evaluations,
                "eval_every": eval_every,
                "overrides": overrides,
                "command": " ".join(["python benchmarks/etd_sst2.py", *sys.argv[1:]]),
                "work": str(output.relative_to(ROOT)) if output.is_relative_to(ROOT) else str(output),
                "dev": "all 872 sentences"
                if arguments.eval_examples is None
                else f"the first {arguments.eval_examples} sentences",
            },
            "runs": {},
        }
        for key, _label, recipe, name in RUNS:
            entry: dict = {}
            if key != "random":
                entry["step_zero"] = evaluate_at_step_zero(key, recipe, common, output)
            entry["command_wall_s"] = timed("distill", recipe, "--output-dir", str(output), *common)
            run_dir = output / name
            written = summary(run_dir)
            entry.update(
                {
                    "curve": dev_curve(run_dir),
                    "steps": written["steps"],
                    "wall_time_s": written["wall_time_s"],
                    "parameters": written["student"]["parameters"],
                    "best_step": written["best"]["step"],
                    "best_metric": written["best"]["value"],
                    "final_metric": written["student"]["metric"],
                    "teacher_metric": written["teacher"]["metric"],
                    "extraction": written["student"].get("extraction"),
                }
            )
            recipe_written = yaml.safe_load((run_dir / "recipe.yaml").read_text())  # the resolved recipe
            training = recipe_written["training"]
            results["settings"].update(
                {
                    "seed": training["seed"],
                    "batch_size": training["batch_size"],
                    "learning_rate": training["learning_rate"],
                    "max_length": recipe_written["data"]["max_length"],
                }
            )
            results["runs"][key] = entry
            results_file.write_text(json.dumps(results, indent=2))
    results = json.loads(results_file.read_text())
    notes = []
    for key in ("etd-rand", "etd-impt"):
        extraction = results["runs"][key].get("extraction") or {}
        importance = extraction.get("importance")
        if importance:
            retained = ", ".join(f"{name} {value:.0%}" for name, value in importance["retained"].items())
            notes.append(
                f"ETD-Impt scored {importance['examples']} training examples ({importance['loss']}) and kept "
                f"this share of the teacher's importance in the kept layers: {retained}."
            )
    results["extraction_notes"] = " ".join(notes)
    plot_path = PLOT if arguments.record else output / PLOT.name
    plot(results, plot_path, results["teacher"]["accuracy"])
    body = report(results, plot_path, arguments.record)
    print(body)
    write_section("SST-2, ETD: random init vs ETD-Rand vs ETD-Impt (3×192 student from MiniLM)", body, arguments.record)


if __name__ == "__main__":
    main()
