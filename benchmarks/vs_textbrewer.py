"""brewer's `general` distiller against TextBrewer's GeneralDistiller, on the same teacher, student
initialization, data, batch size, steps, KD loss and matches.

    teacher   MiniLM-L6-H384 fine-tuned on SST-2 (benchmarks/work/sst2/sst2-minilm-teacher/final)
    student   3 layers × 192 from a config, one saved initialization for both
    losses    KD ce at temperature 8 (no hard label); hidden_mse (student 0-3 ↔ teacher 0, 2, 4, 6,
              linear projection 192 → 384) and nst (student 1-3 ↔ teacher 2, 4, 6)
    data      the first N SST-2 training sentences (real lengths), and a fixed-length variant
              in which every example is 128 tokens (so padding plays no part)

TextBrewer runs as its README drives it (padding to max length 128, an adaptor reading the
outputs' attributes, torch.optim.AdamW) from its own venv, benchmarks/work/tb-venv:

    python3 -m venv benchmarks/work/tb-venv
    benchmarks/work/tb-venv/bin/pip install torch==2.13.0
    benchmarks/work/tb-venv/bin/pip install --no-deps textbrewer
    benchmarks/work/tb-venv/bin/pip install transformers==5.23.0 tqdm tensorboard

brewer runs with the teacher cache off and with its default (`auto`: for 3 epochs a prefill, one
teacher pass before training, whose time counts in "with the prefill").

The report goes to benchmarks/work/reports/; `--record` also writes it into benchmarks/RESULTS.md
(replacing the section of the same title, --title).

    python benchmarks/vs_textbrewer.py [--examples 256 --epochs 3 --batch-size 16 --rounds 2] [--record]
"""

from __future__ import annotations

import shlex
import shutil
from typing import Any

from common import write_section
from speed_common import (
    TEXTBREWER_PYTHON,
    WORK,
    device_description,
    majority_rate,
    median,
    mib,
    prepare_inputs,
    run_child,
    speed_arguments,
)

SIDES = [
    ("textbrewer", "TextBrewer GeneralDistiller", {}),
    ("brewer", "brewer general, teacher cache off", {"kind": "general", "cache": "off"}),
    ("brewer", "brewer general, teacher cache auto (prefill)", {"kind": "general", "cache": "auto"}),
]


def main() -> None:
    parser = speed_arguments(__doc__)
    parser.add_argument("--title", default="brewer vs TextBrewer: general distillation, time per step and peak memory")
    parser.add_argument("--variants", default="sst2,fixed128")
    arguments = parser.parse_args()
    device = device_description(arguments.device)
    if not TEXTBREWER_PYTHON.exists():
        raise SystemExit(f"{TEXTBREWER_PYTHON}: TextBrewer's venv is missing — see this script's docstring")
    directory = WORK / "vs_textbrewer"
    if directory.exists():
        shutil.rmtree(directory)
    inputs = prepare_inputs(directory, arguments.examples)
    sections = []
    for variant in arguments.variants.split(","):
        results: dict[str, list[dict[str, Any]]] = {label: [] for _, label, _ in SIDES}
        for round_number in range(arguments.rounds):
            print(f"{variant}, round {round_number + 1}", flush=True)
            # The order rotates each round, so that no side always runs first (or last) on a busy machine.
            shift = round_number % len(SIDES)
            for side, label, extra in SIDES[shift:] + SIDES[:shift]:
                child_arguments = {
                    "name": f"{variant}-{round_number}-{SIDES.index((side, label, extra))}",
                    "data": str(inputs[variant]),
                    "student": str(inputs["student"]),
                    "output": str(directory / "runs"),
                    "epochs": arguments.epochs,
                    "batch_size": arguments.batch_size,
                    "learning_rate": arguments.learning_rate,
                    "seed": 42,
                    "device": arguments.device,
                    "precision": arguments.precision,
                    # Dev accuracy once per side, on real text only.
                    "evaluate": variant == "sst2" and round_number == 0,
                    **extra,
                }
                results[label].append(run_child(side, child_arguments, label))
        sections.append(describe(variant, results, arguments))
    body = "\n".join(sections)
    # --title names the section: a section of another title is only reproduced with its --title.
    title = "" if arguments.title == parser.get_default("title") else f" --title {shlex.quote(arguments.title)}"
    record = " --record" if arguments.record else ""
    header = f"""
Command: `python benchmarks/vs_textbrewer.py --examples {arguments.examples} --epochs {arguments.epochs} \
--batch-size {arguments.batch_size} --learning-rate {arguments.learning_rate:g} --rounds {arguments.rounds} \
--variants {arguments.variants} --device {arguments.device} --precision {arguments.precision}{title}{record}` — TextBrewer 0.2.1.post1 from
its own venv, both on torch 2.13, transformers 5.23; {device}; TextBrewer in fp32, brewer with training.precision
{arguments.precision}. Teacher MiniLM-L6-H384 fine-tuned on SST-2, student 3 × 192 (one saved initialization),
KD ce at T = 8, hidden_mse (linear 192 → 384) on student layers 0-3 ↔ teacher 0, 2, 4, 6 and nst on 1-3 ↔ 2, 4, 6;
batch {arguments.batch_size}, {arguments.epochs} epochs over the first {arguments.examples} SST-2 training sentences,
AdamW lr {arguments.learning_rate:g}, linear warmup 10%, clipping 1.0. Each side is a separate process (peak RSS =
its ru_maxrss, which includes Python, torch and the models); sides alternate within each round and ratios are
taken per round, median over {arguments.rounds} rounds. Time per step leaves out step 1 (warm-up); "with the
prefill" adds brewer's teacher pass before training (each run fills its own store; none is reused), spread over the
steps. Absolute times vary with the machine's load; the ratios are the figures to read. Dev accuracy: SST-2 dev (872 sentences) after the run, the same
evaluation code for every side; always answering the majority label scores {majority_rate():.3f}.
"""
    print(header + body)
    write_section(arguments.title, header + body, arguments.record)


def describe(variant: str, results: dict[str, list[dict[str, Any]]], arguments: Any) -> str:
    textbrewer, off, on = (results[label] for _, label, _ in SIDES)
    rows = []
    majority = majority_rate()
    for _, label, _ in SIDES:
        runs = results[label]
        accuracy = next((run["dev_accuracy"] for run in runs if "dev_accuracy" in run), None)
        later = [run["later_epochs_per_step_s"] for run in runs if "later_epochs_per_step_s" in run]
        rows.append(
            f"| {label} | {1000 * median([run['per_step_with_prefill_s'] for run in runs]):.0f} | "
            f"{1000 * median([run['per_step_s'] for run in runs]):.0f} | "
            f"{1000 * median(later):.0f} | {mib(median([run['peak_rss_bytes'] for run in runs]))} | "
            f"{'' if accuracy is None else f'{accuracy:.3f}'}"
            f"{' (majority label)' if accuracy is not None and abs(accuracy - majority) < 1e-9 else ''} |"
        )

    def ratio(first: list[dict[str, Any]], second: list[dict[str, Any]], key: str) -> float:
        return median([a[key] / b[key] for a, b in zip(first, second)])

    cache = on[0].get("teacher_cache") or {}
    title = (
        "SST-2 subset, real lengths (TextBrewer pads to 128, brewer to each batch's longest)"
        if variant == "sst2"
        else "fixed length: every example 128 tokens (no padding on either side)"
    )
    return f"""
### {title}

| side | ms / step, with the prefill | ms / step, training only | ms / step, epochs 2+ | peak RSS | dev accuracy |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

TextBrewer / brewer (cache off), time per step: **{ratio(textbrewer, off, "per_step_s"):.2f}×**; TextBrewer / brewer (cache
auto): **{ratio(textbrewer, on, "per_step_with_prefill_s"):.2f}×** over all steps with the prefill's time counted
({median([run["prefill_s"] for run in on]):.1f} s), **{ratio(textbrewer, on, "later_epochs_per_step_s"):.2f}×** in epochs 2+.
Peak RSS TextBrewer / brewer (cache off): {ratio(textbrewer, off, "peak_rss_bytes"):.2f}×, (cache auto):
{ratio(textbrewer, on, "peak_rss_bytes"):.2f}×. Teacher cache (brewer, round 1): {cache.get("mode")}, filled by
{cache.get("fill")}, {cache.get("bytes_per_example")} bytes per example, hit rate {cache.get("hit_rate")},
{cache.get("teacher_forwards")} teacher forwards during training.
"""


if __name__ == "__main__":
    main()
