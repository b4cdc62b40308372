"""Multi-teacher distillation on the quickstart task, offline: train three quickstart teachers that
differ only in their seed (one `brewer train-teacher` command each), distill them together into
the quickstart student (`recipes/quickstart-multi-teacher.yaml`: KD against the mean of their
logits), and, for comparison, the same student from the seed-1 teacher alone (`recipes/quickstart.yaml`).
Appends each teacher's accuracy, their mean, the ensemble's (mean-logits) accuracy and both
students' accuracies to RESULTS.md.

    nice -n 10 python benchmarks/multi_teacher_quickstart.py [--teacher-epochs 5] [--student-epochs 8]
"""

from __future__ import annotations

import argparse
import shutil
import time

from common import WORK, append, brewer, summary

SEEDS = (1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-epochs", type=float, default=5, help="the quickstart teacher trains 5 epochs")
    parser.add_argument("--student-epochs", type=float, default=8, help="the quickstart student trains 8 epochs")
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
        brewer("train-teacher", "recipes/quickstart-teacher.yaml", "--set", f"training.seed={seed}",
               "--set", f"name=quickstart-teacher-seed{seed}", "--set", f"training.epochs={arguments.teacher_epochs:g}", *quiet)
    for name in ("quickstart-multi-teacher", "quickstart-single-teacher-seed1"):
        shutil.rmtree(output / name, ignore_errors=True)
    teachers = [f"teachers.{index}.checkpoint={output / f'quickstart-teacher-seed{seed}' / 'final'}"
                for index, seed in enumerate(SEEDS)]
    student_epochs = ["--set", f"training.epochs={arguments.student_epochs:g}"]
    brewer("distill", "recipes/quickstart-multi-teacher.yaml", *[part for item in teachers for part in ("--set", item)],
           *student_epochs, *quiet)
    brewer("distill", "recipes/quickstart.yaml", "--set", f"teacher.checkpoint={output / 'quickstart-teacher-seed1' / 'final'}",
           "--set", "name=quickstart-single-teacher-seed1", *student_epochs, *quiet)
    minutes = (time.time() - started) / 60

    trained = [summary(output / f"quickstart-teacher-seed{seed}") for seed in SEEDS]
    multi = summary(output / "quickstart-multi-teacher")
    single = summary(output / "quickstart-single-teacher-seed1")
    accuracies = [entry["model"]["metric"] for entry in trained]
    mean = sum(accuracies) / len(accuracies)
    # The distillation run evaluates each teacher again; the same weights must give the same figure.
    for entry, accuracy in zip(multi["teachers"], accuracies):
        assert abs(entry["metric"] - accuracy) < 1e-9, (entry["metric"], accuracy)
    rows = "\n".join(
        f"| teacher, seed {seed} (`trainer`, 4 × 128) | {entry['model']['parameters']:,} | {entry['model']['metric']:.4f} | "
        f"{entry['steps']} | {entry['wall_time_s']:.0f} s |"
        for seed, entry in zip(SEEDS, trained)
    )
    body = f"""
Command: `nice -n 10 python benchmarks/multi_teacher_quickstart.py --teacher-epochs {arguments.teacher_epochs:g} --student-epochs {arguments.student_epochs:g}`
(recipes `recipes/quickstart-teacher.yaml` ×3 with `--set training.seed=N --set name=quickstart-teacher-seedN`,
`recipes/quickstart-multi-teacher.yaml`, and `recipes/quickstart.yaml` from the seed-1 teacher for comparison).
Data: the generated quickstart sentiment task (4,000 training / 1,000 eval sentences, 3% label noise).
Teachers: {arguments.teacher_epochs:g} epochs each (the quickstart's teacher trains 5); students: {arguments.student_epochs:g}
epochs (the quickstart's student trains 8), `kd_loss: ce`, T = 4, hard-label weight 0.5, same seed (42) for both students.
Multi-teacher target: the mean of the three teachers' logits, equal weights (TextBrewer's definition).
Script time for this invocation: {minutes:.1f} min on 2 CPU cores shared with other jobs (load average about 8-10),
so wall times are several times those of an idle machine.

| model | parameters | accuracy | steps | wall time |
|---|---:|---:|---:|---:|
{rows}
| mean of the three teachers' accuracies | | {mean:.4f} | | |
| ensemble: mean of the three teachers' logits | {multi['teacher']['parameters']:,} | {multi['teacher']['metric']:.4f} | | |
| student, `multi_teacher` KD from the three (2 × 96) | {multi['student']['parameters']:,} | {multi['student']['metric']:.4f} | {multi['steps']} | {multi['wall_time_s']:.0f} s |
| student, `basic` KD from the seed-1 teacher alone (2 × 96) | {single['student']['parameters']:,} | {single['student']['metric']:.4f} | {single['steps']} | {single['wall_time_s']:.0f} s |

Multi-teacher student / ensemble accuracy: {multi['student_to_teacher']:.1%}; single-teacher student / its teacher:
{single['student_to_teacher']:.1%}. One run per configuration (no repeats over student seeds), so differences of a few
tenths of a point are within run-to-run noise.
"""
    append("Quickstart, three seeds' teachers → one student (multi-teacher KD)", body)
    print(body)


def _finished_with(run_dir, epochs: float) -> bool:
    import yaml

    if not (run_dir / "summary.json").is_file():
        return False
    return float(yaml.safe_load((run_dir / "recipe.yaml").read_text())["training"]["epochs"]) == float(epochs)


if __name__ == "__main__":
    main()
