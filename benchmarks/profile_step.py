"""Where a distillation step's time goes beyond the fine-tuning step (issue 18, point 2).

Runs vs_finetuning.py's `trainer` and `general` jobs (MiniLM SST-2 teacher → 3 × 192 student, the
first N SST-2 sentences, batch 16, seed 42; `general`: KD ce + hidden_mse with a linear projection
on 4 layers + nst on 3, teacher cache `auto`, so prefilled) in this process under cProfile, and
prints, per step, the time inside each of the step's parts — the student's forward, the teacher
features (read from the cache), the KD and match losses, backward, the optimizer — for both jobs.
On a CPU torch runs each operation synchronously, so a Python function's cumulative time includes
the kernels it launched. cProfile's own overhead inflates Python-heavy parts: read the parts
against each other and against the trainer's, not as absolute times.

    python benchmarks/profile_step.py [--examples 256 --epochs 3] [--compile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
from pathlib import Path
from typing import Any

from speed_common import WORK, brewer_recipe, prepare_inputs, sst2_job, steps_per_epoch

# (label, file name ending, function name): the parts of a step, as cProfile names them.
PARTS = [
    ("training loop in all", "loop.py", "_train"),
    ("distiller forward (losses)", "base.py", "forward"),
    ("student forward", "base.py", "student_features"),
    ("teacher features (cache)", "base.py", "teacher_features"),
    ("cache read", "store.py", "get"),
    ("logit losses", "basic.py", "logit_losses"),
    ("match losses", "general.py", "add_match_losses"),
    ("  projections", "projections.py", "forward"),
    ("  hidden_mse", "hidden.py", "hidden_mse"),
    ("  nst", "hidden.py", "nst_loss"),
    ("backward", "accelerator.py", "backward"),
    ("gradient clipping", "accelerator.py", "clip_grad_norm_"),
    ("optimizer step", "optimizer.py", "step"),
    ("batch collation", "base.py", "pad_batch"),
    ("divergence guard: losses", "guards.py", "losses"),
    ("divergence guard: gradients", "guards.py", "gradients"),
    ("metrics line", "loop.py", "_log"),
    ("window averages", "loop.py", "_window_averages"),
]


def profile(kind: str, inputs: dict[str, Path], directory: Path, arguments: Any) -> tuple[pstats.Stats, int]:
    from rich.console import Console

    from brewer_cli.commands import distill
    from brewer_cli.recipe import validate_recipe

    child = sst2_job(f"{kind}{'-compiled' if arguments.compile else ''}", kind, "auto", inputs, arguments.epochs)
    raw = brewer_recipe(child)
    if arguments.compile:
        raw["training"]["compile"] = True
    recipe = validate_recipe(raw, directory / f"{child['name']}.yaml")
    profiler = cProfile.Profile()
    profiler.enable()
    distill(recipe, directory / child["name"], console=Console(file=open(os.devnull, "w")))
    profiler.disable()
    return pstats.Stats(profiler), steps_per_epoch(child) * arguments.epochs


def per_step(stats: pstats.Stats, steps: int) -> dict[str, float]:
    """Milliseconds per step inside each part (the sum over its calls, cumulative)."""
    found: dict[str, float] = {}
    for (file, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for label, ending, name in PARTS:
            if function == name and file.endswith(ending):
                found[label] = found.get(label, 0.0) + 1000 * cumulative / steps
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="training.compile: true for both jobs")
    parser.add_argument("--top", type=int, default=25, help="also print the top functions of `general` by own time")
    arguments = parser.parse_args()
    directory = WORK / "profile_step"
    if directory.exists():
        shutil.rmtree(directory)
    inputs = prepare_inputs(directory, arguments.examples)
    results = {}
    for kind in ("trainer", "general"):
        stats, steps = profile(kind, inputs, directory, arguments)
        results[kind] = per_step(stats, steps)
        if kind == "general":
            stats.sort_stats("tottime").print_stats(arguments.top)
    print("| part | trainer, ms / step | general, ms / step |\n|---|---:|---:|")
    for label, _, _ in PARTS:
        trainer, general = results["trainer"].get(label), results["general"].get(label)
        if trainer is None and general is None:
            continue
        shown = [f"{value:.2f}" if value is not None else "" for value in (trainer, general)]
        print(f"| {label} | {shown[0]} | {shown[1]} |")


if __name__ == "__main__":
    main()
