"""ETD in its task-agnostic setting (issue 14, point 8) on SST-2 with the offline MiniLM-L6-H384.

(a) The pipeline ETD's paper measures: a 3-layer student (12 heads × 16, hidden 192, FFN 768) is
    initialized three ways — random (built from a config), ETD-Rand and ETD-Impt (cut out of the
    *pre-trained* MiniLM, importance scored with the teacher's own self-supervised objective) —
    then general distillation on SST-2's own sentences as unlabeled text (MiniLM's attention and
    value-relation losses, recipes/etd/minilm-general-local.yaml), then the task stage (KD from a
    MiniLM fine-tuned on SST-2, recipes/etd/minilm-task-sst2-local.yaml), equal steps for all.
    Reported: the general stage's dev distillation loss, dev accuracy along the task stage, and
    the task steps ETD needs to reach the random-init student's final accuracy.
(b) Extraction to a budget: `student.init.extract.target: {parameters: N}` against the uniform
    shape of the same size (every part cut by the same factor), both ETD-Impt from the fine-tuned
    teacher, then the same task stage.

Three seeds each (mean ± spread). One job at a time; every finished run is skipped when the script
is started again (a killed run is continued with --resume), and results.json is rewritten after
each run, so it can run across several sittings. Runs go to benchmarks/work/etd_agnostic/, the report
to benchmarks/work/reports/; --record also writes it into benchmarks/RESULTS.md.

    python benchmarks/etd_agnostic.py [--general-steps 100] [--task-steps 100] [--seeds 1 2 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, WORK, summary, write_section

OUTPUT = WORK / "etd_agnostic"
PIPELINE = "recipes/etd/minilm-local.yaml"  # stage 1: general distillation; stage 2: the task
TEACHER = OUTPUT / "sst2-minilm-teacher" / "final"
BATCH_SIZE = 32  # the recipes' training.batch_size
# The student of (a) when it is not extracted: the extracted students' shape, random weights.
RANDOM_STUDENT = {
    "model_type": "bert",
    "num_hidden_layers": 3,
    "hidden_size": 192,
    "num_attention_heads": 12,
    "intermediate_size": 768,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
INITS = ("random", "etd-rand", "etd-impt")


def brewer(*arguments: str) -> None:
    """The CLI as a user runs it; a run killed earlier is continued rather than refused."""
    command = [sys.executable, "-m", "brewer_cli", *arguments]
    print("$ brewer " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def run_once(recipe: str, name: str, overrides: list[str]) -> Path:
    """Run `recipe` as `name` unless it finished already; returns its run directory."""
    run_dir = OUTPUT / name
    if (run_dir / "summary.json").exists():
        return run_dir
    # Continued when a complete checkpoint exists (a staged run's are in its stage directories;
    # --resume skips finished stages); a run stopped before any is started again.
    resume = ["--resume"] if any(run_dir.glob("**/checkpoints/step-*/state.json")) else []
    sets = [item for override in [f"name={name}", "training.progress=false", *overrides] for item in ("--set", override)]
    brewer("distill", recipe, "--output-dir", str(OUTPUT), *sets, *resume)
    return run_dir


def dev_curve(run_dir: Path, metric: str = "accuracy") -> list[tuple[int, float]]:
    points = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "eval" in entry and metric in entry["eval"]:
            points[int(entry["step"])] = float(entry["eval"][metric])
    return sorted(points.items())


def task_overrides(arguments: argparse.Namespace, seed: int, stage: str) -> list[str]:
    """The task stage's settings; `stage`: its dotted prefix in the recipe (`stages.1.` in the
    pipeline, empty for a single-stage task recipe)."""
    return [
        f"teacher.checkpoint={TEACHER}",
        # The teacher trained above on its own subset, used as it is (brewer would otherwise refuse a
        # teacher whose recorded training data differ from this stage's).
        "teacher.train=null",
        f"training.seed={seed}",
        f"{stage}training.max_steps={arguments.task_steps}",
        f"{stage}training.eval_every={max(1, arguments.task_steps // arguments.evaluations)}",
        f"data.train.limit={arguments.task_examples}",
    ]


def part_a(arguments: argparse.Namespace, results: dict, seed: int) -> None:
    for init in INITS:
        key = f"{init}-s{seed}"
        overrides = [
            *task_overrides(arguments, seed, "stages.1."),
            f"stages.0.training.max_steps={arguments.general_steps}",
            f"stages.0.training.eval_every={arguments.general_steps}",
            f"stages.0.data.train.limit={arguments.general_steps * BATCH_SIZE}",
        ]
        if init == "random":
            overrides.append("student={config: " + json.dumps(RANDOM_STUDENT) + "}")
        else:
            overrides += [
                f"student.init.extract.strategy={'random' if init == 'etd-rand' else 'importance'}",
                f"student.init.extract.seed={seed}",
            ]
        start = time.monotonic()
        run_dir = run_once(PIPELINE, f"pipeline-{key}", overrides)
        general_summary, task_summary = summary(run_dir / "stage-1"), summary(run_dir / "stage-2")
        results["a"][key] = {
            "init": init,
            "seed": seed,
            "general_dev_loss": general_summary["student"]["metric"],
            "general_steps": general_summary["steps"],
            "general_wall_time_s": general_summary["wall_time_s"],
            "task_curve": dev_curve(run_dir / "stage-2"),
            "task_final": task_summary["student"]["metric"],
            "teacher": task_summary["teacher"]["metric"],
            "task_steps": task_summary["steps"],
            "task_wall_time_s": task_summary["wall_time_s"],
            "parameters": task_summary["student"]["parameters"],
            "command_wall_time_s": round(time.monotonic() - start, 1),
        }
        save(results)


def part_b(arguments: argparse.Namespace, results: dict, seed: int) -> None:
    """The budget's choice, then the uniform shape of the same budget that the same extraction
    reports beside it (every part cut by one factor), both ETD-Impt from the fine-tuned teacher."""
    sizes = ("layers", "hidden", "heads", "head_dim", "intermediate")
    uniform = None
    for variant in ("budget", "uniform"):
        key = f"{variant}-s{seed}"
        if variant == "budget":
            extract = f"target: {{parameters: {arguments.budget}}}"
        else:
            extract = ", ".join(f"{name}: {uniform[name]}" for name in sizes)
        student = f"student={{init: {{extract: {{from: teacher, strategy: importance, seed: {seed}, {extract}}}}}}}"
        # The pipeline's task stage alone: the recipe without `stages`, with its last stage's KD.
        task_only = ["stages=null", "distillation={kind: basic, temperature: 4, kd_loss: ce, hard_label_weight: 0.5}"]
        run_dir = run_once(PIPELINE, f"budget-{key}", [*task_only, *task_overrides(arguments, seed, ""), student])
        task_summary = summary(run_dir)
        kept = (task_summary["student"].get("extraction") or {}).get("kept", {})
        if variant == "budget":
            uniform = kept["budget"]["uniform"]
        results["b"][key] = {
            "variant": variant,
            "seed": seed,
            "task_curve": dev_curve(run_dir),
            "task_final": task_summary["student"]["metric"],
            "teacher": task_summary["teacher"]["metric"],
            "parameters": task_summary["student"]["parameters"],
            "flops_fewer_by": task_summary["size"].get("flops_fewer_by"),
            "shape": {name: (kept["budget"]["chosen"] if variant == "budget" else uniform)[name] for name in sizes},
            "importance_kept": (kept["budget"]["chosen"] if variant == "budget" else uniform).get("importance_kept"),
        }
        save(results)


def save(results: dict) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "results.json").write_text(json.dumps(results, indent=2))


def mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((step for step, value in curve if value >= level), None)


def report(arguments: argparse.Namespace, results: dict) -> str:
    lines = [
        f"Command: `python benchmarks/etd_agnostic.py --general-steps {arguments.general_steps} --task-steps "
        f"{arguments.task_steps} --seeds {' '.join(map(str, arguments.seeds))}{' --record' if arguments.record else ''}`; "
        "one job at a time on the machine.",
        f"Data: general stage on the first {arguments.general_steps * BATCH_SIZE:,} SST-2 training sentences as "
        f"unlabeled text; task stage on the first {arguments.task_examples:,} labeled sentences; dev: all 872. "
        f"Teacher of the task stage: MiniLM-L6-H384 fine-tuned by the task recipe's `teacher.train`.",
        "",
        "(a) task-agnostic pipeline, 3×192 student (mean ± standard deviation over seeds):",
        "",
        "| init | general dev loss | task dev accuracy (final) | of teacher | task steps to reach random's final |",
        "|---|---:|---:|---:|---:|",
    ]
    random_final = {
        seed: entry["task_final"] for entry in results["a"].values() if entry["init"] == "random" for seed in [entry["seed"]]
    }
    for init in INITS:
        rows = [entry for entry in results["a"].values() if entry["init"] == init]
        reach = [
            steps_to_reach(entry["task_curve"], random_final[entry["seed"]]) for entry in rows if entry["seed"] in random_final
        ]
        reached = [step / entry["task_steps"] for step, entry in zip(reach, rows) if step is not None]
        teacher = [entry["task_final"] / entry["teacher"] for entry in rows if entry["teacher"]]
        lines.append(
            f"| {init} | {mean_spread([entry['general_dev_loss'] for entry in rows])} | "
            f"{mean_spread([entry['task_final'] for entry in rows])} | {mean_spread(teacher)} | "
            f"{'reference' if init == 'random' else mean_spread(reached) + f' of the steps ({len(reached)}/{len(rows)} seeds reached it)'} |"
        )
    if results["b"]:
        lines += [
            "",
            f"(b) extraction to a budget (`target: {{parameters: {arguments.budget}}}`) against the uniform "
            "shape of the same budget (the teacher's heads; layers, head size and FFN cut by one factor), both "
            "ETD-Impt from the fine-tuned teacher, then the same task stage:",
            "",
            "| shape | layers × hidden (heads × head size), FFN | parameters | task dev accuracy (final) |",
            "|---|---|---:|---:|",
        ]
        for variant in ("budget", "uniform"):
            rows = [entry for entry in results["b"].values() if entry["variant"] == variant]
            if not rows:
                continue
            shape = rows[0]["shape"]
            lines.append(
                f"| {variant} | {shape['layers']} × {shape['hidden']} ({shape['heads']} × {shape['head_dim']}), "
                f"{shape['intermediate']} | {rows[0]['parameters']:,} | "
                f"{mean_spread([entry['task_final'] for entry in rows])} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--general-steps", type=int, default=100)
    parser.add_argument("--task-steps", type=int, default=100)
    parser.add_argument("--task-examples", type=int, default=3200)
    parser.add_argument("--teacher-examples", type=int, default=8000)
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", default="8M")
    parser.add_argument("--parts", default="ab", help="a, b or ab")
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing one of the same title)"
    )
    arguments = parser.parse_args()
    results_path = OUTPUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"a": {}, "b": {}}
    if not (TEACHER.parent / "summary.json").exists():
        sets = [
            f"teacher.checkpoint={TEACHER}",
            f"teacher.train.training.epochs={arguments.teacher_epochs}",
            f"data.train.limit={arguments.teacher_examples}",
        ]
        brewer("train-teacher", PIPELINE, *[item for override in sets for item in ("--set", override)])
    # Seed by seed, both parts: a run stopped early still has complete seeds of each part.
    for seed in arguments.seeds:
        if "a" in arguments.parts:
            part_a(arguments, results, seed)
        if "b" in arguments.parts:
            part_b(arguments, results, seed)
    text = report(arguments, results)
    print(text)
    write_section(
        "ETD, task-agnostic: random init vs ETD-Rand vs ETD-Impt, and extraction to a budget (SST-2, MiniLM)",
        text,
        arguments.record,
    )


if __name__ == "__main__":
    main()
