"""What distillation costs over fine-tuning: a `basic` and a `general` distillation step (teacher
cache `auto`, which for 3 epochs prefills) against a plain fine-tuning step (`trainer`) of the same
student on the same batches, and the whole run with the teacher pass before training counted.

The three runs share the student's initialization, the data (the first N SST-2 training
sentences, real lengths, dynamic padding), the seed — hence the batches — and the optimizer
settings; `basic` adds KD (ce, T = 8) against the MiniLM SST-2 teacher, `general` adds hidden_mse
and nst matches (as in vs_textbrewer.py). The teacher runs once per example, in the prefill before
training; no training step runs it.

The report goes to benchmarks/work/reports/; `--record` also writes it into benchmarks/RESULTS.md
(replacing the section of the same title).

    python benchmarks/vs_finetuning.py [--examples 256 --epochs 3 --batch-size 16 --rounds 2] [--record]
"""

from __future__ import annotations

import shutil
from typing import Any

from common import write_section
from speed_common import WORK, device_description, median, mib, prepare_inputs, run_child, speed_arguments

SIDES = [
    ("fine-tuning (`trainer`)", {"kind": "trainer"}),
    ("`basic` distillation, teacher cache auto (prefill)", {"kind": "basic", "cache": "auto"}),
    ("`general` distillation, teacher cache auto (prefill)", {"kind": "general", "cache": "auto"}),
]


def main() -> None:
    arguments = speed_arguments(__doc__).parse_args()
    device = device_description(arguments.device)
    directory = WORK / "vs_finetuning"
    if directory.exists():
        shutil.rmtree(directory)
    inputs = prepare_inputs(directory, arguments.examples)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in SIDES}
    for round_number in range(arguments.rounds):
        print(f"round {round_number + 1}", flush=True)
        shift = round_number % len(SIDES)
        for label, extra in SIDES[shift:] + SIDES[:shift]:
            child_arguments = {
                "name": f"{extra['kind']}-{round_number}",
                "data": str(inputs["sst2"]),
                "student": str(inputs["student"]),
                "output": str(directory / "runs"),
                "epochs": arguments.epochs,
                "batch_size": arguments.batch_size,
                "learning_rate": arguments.learning_rate,
                "seed": 42,
                "compile": arguments.compile,
                "device": arguments.device,
                "precision": arguments.precision,
                **extra,
            }
            results[label].append(run_child("brewer", child_arguments, label))
    trainer = results[SIDES[0][0]]
    rows = []
    for label, _ in SIDES:
        runs = results[label]

        def ratio(key: str) -> float:
            return median([run[key] / base[key] for run, base in zip(runs, trainer)])

        cuda = [run["cuda_peak_bytes"] for run in runs if run.get("cuda_peak_bytes") is not None]
        rows.append(
            f"| {label} | {1000 * median([run['per_step_s'] for run in runs]):.0f} | {ratio('per_step_s'):.2f}× | "
            f"{1000 * median([run['later_epochs_per_step_s'] for run in runs]):.0f} | "
            f"{ratio('later_epochs_per_step_s'):.2f}× | {median([run['prefill_s'] for run in runs]):.1f} s | "
            f"{ratio('per_step_with_prefill_s'):.2f}× | {median([run['later_epochs_tokens_per_s'] for run in runs]):,.0f} | "
            f"{100 * ratio('later_epochs_tokens_per_s'):.0f}% | {mib(median([run['peak_rss_bytes'] for run in runs]))} | "
            f"{mib(median(cuda)) if cuda else '—'} |"
        )
    body = f"""
Command: `python benchmarks/vs_finetuning.py --examples {arguments.examples} --epochs {arguments.epochs} \
--batch-size {arguments.batch_size} --rounds {arguments.rounds}{" --compile" if arguments.compile else ""} --device {arguments.device} \
--precision {arguments.precision}{" --record" if arguments.record else ""}`. {device}, training.precision {arguments.precision} (fused AdamW on CPU and GPU alike). Student 3 × 192 from one saved initialization; the first {arguments.examples} SST-2
training sentences, batch {arguments.batch_size}, {arguments.epochs} epochs, the same seed (so the same batches) for all
three; teacher MiniLM-L6-H384 fine-tuned on SST-2. `general` matches: hidden_mse (linear 192 → 384) student 0-3 ↔
teacher 0, 2, 4, 6 and nst 1-3 ↔ 2, 4, 6. Each run is its own process (peak RSS = its ru_maxrss); runs alternate
within each round, ratios are per round, median over {arguments.rounds} rounds; step 1 (warm-up) is left out. The
distillation runs prefill their teacher-output store before training (each run its own: none is reused); "whole
run" is the training steps plus that pass, against the fine-tuning run's steps. Tokens/s: non-padding tokens per
second in epochs 2+ (brewer's metrics.jsonl), and that as a share of the fine-tuning run's, the ceiling a distiller
with a warm cache can reach. Peak CUDA memory: torch.cuda.max_memory_allocated on a GPU.

| run | ms / step | × fine-tuning | ms / step, epochs 2+ | × fine-tuning | prefill | whole run × fine-tuning | tokens / s, epochs 2+ | of fine-tuning's | peak RSS | peak CUDA memory |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
"""
    print(body)
    title = "Distillation step vs fine-tuning step (teacher cache auto, prefilled)"
    write_section(title + (", training.compile" if arguments.compile else ""), body, arguments.record)


if __name__ == "__main__":
    main()
