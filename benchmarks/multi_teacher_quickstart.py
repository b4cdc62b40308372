"""Multi-teacher distillation on the quickstart task, offline: train three quickstart teachers that
differ only in their seed (one `brewer train-teacher` command each), distill them together into
the quickstart student (`recipes/quickstart-multi-teacher.yaml`: KD against the mean of their
logits), and, for comparison, the same student from two of them and from single teachers
(`recipes/quickstart.yaml`), each student configuration repeated over a few seeds. Reports each
teacher's accuracy, their mean, the ensembles' (mean-logits) accuracies and the students'
accuracies in benchmarks/work/reports/ (`--record`: also in benchmarks/RESULTS.md). Finished
teachers of the same settings are reused.

    nice -n 10 python benchmarks/multi_teacher_quickstart.py [--teacher-epochs 12] [--student-epochs 16] [--student-seeds 42,43,44] [--record]
"""

from __future__ import annotations

import argparse
import shutil
import time

import yaml
from common import ROOT, WORK, brewer, summary, write_section

SEEDS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-epochs", type=float, default=12, help="the quickstart teacher trains 12 epochs")
    parser.add_argument("--student-epochs", type=float, default=16, help="the quickstart student trains 16 epochs")
    parser.add_argument(
        "--student-seeds",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[42, 43, 44],
        help="training.seed of the repeated student runs, comma-separated",
    )
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing one of the same title)"
    )
    arguments = parser.parse_args()
    output = WORK / "quickstart-multi-teacher"
    started = time.time()
    quiet = ["--output-dir", str(output), "--set", "training.progress=false"]
    for seed in SEEDS:
        run_dir = output / f"quickstart-teacher-seed{seed}"
        if _finished_with(run_dir, arguments.teacher_epochs):
            # A finished teacher of the same settings (an earlier, interrupted invocation) is kept.
            print(f"reusing {run_dir}", flush=True)
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        brewer(
            "train-teacher",
            "recipes/quickstart-teacher.yaml",
            "--set",
            f"training.seed={seed}",
            "--set",
            f"name=quickstart-teacher-seed{seed}",
            "--set",
            f"training.epochs={arguments.teacher_epochs:g}",
            *quiet,
        )

    def checkpoint(seed: int) -> str:
        return str(output / f"quickstart-teacher-seed{seed}" / "final")

    # Each student configuration: its recipe and the overrides naming its teacher(s).
    configurations = {
        "multi-teacher from seeds 1, 2, 3": (
            "recipes/quickstart-multi-teacher.yaml",
            [f"teachers.{index}.checkpoint={checkpoint(seed)}" for index, seed in enumerate(SEEDS)],
        ),
        "multi-teacher from seeds 1, 3": (
            "recipes/quickstart-multi-teacher.yaml",
            [f"teachers=[{{checkpoint: {checkpoint(1)}}}, {{checkpoint: {checkpoint(3)}}}]"],
        ),
        "single teacher, seed 1": ("recipes/quickstart.yaml", [f"teacher.checkpoint={checkpoint(1)}"]),
        "single teacher, seed 3": ("recipes/quickstart.yaml", [f"teacher.checkpoint={checkpoint(3)}"]),
    }
    results: dict[str, list[dict]] = {}
    for number, (label, (recipe, overrides)) in enumerate(configurations.items()):
        for student_seed in arguments.student_seeds:
            name = f"quickstart-student-{number}-seed{student_seed}"
            shutil.rmtree(output / name, ignore_errors=True)
            brewer(
                "distill",
                recipe,
                *[part for item in overrides for part in ("--set", item)],
                "--set",
                f"name={name}",
                "--set",
                f"training.seed={student_seed}",
                "--set",
                f"training.epochs={arguments.student_epochs:g}",
                *quiet,
            )
            results.setdefault(label, []).append(summary(output / name))
    minutes = (time.time() - started) / 60

    trained = [summary(output / f"quickstart-teacher-seed{seed}") for seed in SEEDS]
    accuracies = [entry["model"]["metric"] for entry in trained]
    mean = sum(accuracies) / len(accuracies)
    # The distillation runs evaluate each teacher again; the same weights must give the same figure.
    for entry, accuracy in zip(results["multi-teacher from seeds 1, 2, 3"][0]["teachers"], accuracies):
        assert abs(entry["metric"] - accuracy) < 1e-9, (entry["metric"], accuracy)
    teacher_rows = "\n".join(
        f"| teacher, seed {seed} (`trainer`, 4 × 128) | {entry['model']['parameters']:,} | {entry['model']['metric']:.4f} | "
        f"{entry['steps']} | {entry['wall_time_s']:.0f} s |"
        for seed, entry in zip(SEEDS, trained)
    )
    ensemble_rows = "\n".join(
        f"| ensemble: mean of the logits of seeds {label.split('seeds ')[1]} | {runs[0]['teacher']['parameters']:,} | "
        f"{runs[0]['teacher']['metric']:.4f} | | |"
        for label, runs in results.items()
        if label.startswith("multi")
    )

    def student_row(label: str, runs: list[dict]) -> str:
        figures = [run["student"]["metric"] for run in runs]
        each = ", ".join(f"{figure:.3f}" for figure in figures)
        wall = sum(run["wall_time_s"] for run in runs) / len(runs)
        return (
            f"| student (2 × 96), {label} | {runs[0]['student']['parameters']:,} | "
            f"{sum(figures) / len(figures):.4f} ({each}) | {runs[0]['steps']} | {wall:.0f} s |"
        )

    student_rows = "\n".join(student_row(label, runs) for label, runs in results.items())
    seeds = ",".join(str(seed) for seed in arguments.student_seeds)
    record = " --record" if arguments.record else ""
    kd = yaml.safe_load((ROOT / "recipes" / "quickstart-multi-teacher.yaml").read_text())["distillation"]
    body = f"""
Command: `nice -n 10 python benchmarks/multi_teacher_quickstart.py --teacher-epochs {arguments.teacher_epochs:g} --student-epochs {arguments.student_epochs:g} --student-seeds {seeds}{record}`
(teachers: `brewer train-teacher recipes/quickstart-teacher.yaml --set training.seed=N --set name=quickstart-teacher-seedN`;
students: `recipes/quickstart-multi-teacher.yaml` and, for comparison, `recipes/quickstart.yaml` from one teacher).
Data: the generated quickstart sentiment task (4,000 training / 1,000 eval sentences, 3% label noise).
Teachers: {arguments.teacher_epochs:g} epochs each (as the quickstart's). Students: {arguments.student_epochs:g} epochs (as the
quickstart's), `kd_loss: {kd["kd_loss"]}`, T = {kd["temperature"]:g}, hard-label weight {kd["hard_label_weight"]:g}, each run with training.seed {seeds} (which seeds the student's
initial weights, the data order and dropout); the accuracy column gives the mean and each run's figure.
Multi-teacher target: the mean of the teachers' logits with equal weights (TextBrewer's definition).
Script time for this invocation: {minutes:.1f} min on 2 CPU cores shared with other jobs; teachers reused from an
earlier invocation keep the wall time of the run that trained them.

| model | parameters | accuracy | steps | wall time |
|---|---:|---:|---:|---:|
{teacher_rows}
| mean of the three teachers' accuracies | | {mean:.4f} | | |
{ensemble_rows}
{student_rows}
"""
    print(body)
    write_section("Quickstart, three seeds' teachers → one student (multi-teacher KD)", body, arguments.record)


def _finished_with(run_dir, epochs: float) -> bool:
    """A finished teacher trained as recipes/quickstart-teacher.yaml says now, for `epochs`."""
    if not (run_dir / "summary.json").is_file():
        return False
    stored = yaml.safe_load((run_dir / "recipe.yaml").read_text())["training"]
    wanted = yaml.safe_load((ROOT / "recipes" / "quickstart-teacher.yaml").read_text())["training"]
    same = all(stored.get(key) == value for key, value in wanted.items() if key not in ("epochs", "seed"))
    return same and float(stored["epochs"]) == float(epochs)


if __name__ == "__main__":
    main()
