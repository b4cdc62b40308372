"""Shared parts of the speed benchmarks (vs_textbrewer.py, vs_finetuning.py).

Each measured run is a child process, so that its peak memory is its own (`os.wait4` returns the
child's rusage; ru_maxrss is KiB on Linux) and so that TextBrewer runs from its own virtual
environment. The parent runs the sides one after the other, alternating their order round by
round, so that the load of a shared machine falls on every side alike; ratios are taken within
each round and their median reported.

A child is `python benchmarks/speed_common.py SIDE ARGUMENTS.json RESULT.json`. Its module level
imports the standard library only: the TextBrewer side runs in a venv without brewer.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
# MiniLM-L6-H384 fine-tuned on SST-2: sst2_minilm.py's teacher, else the results table's (trained
# on the full training set by results_table.py); either serves, as long as every side reads the same.
TEACHER = next(
    (
        path
        for path in (
            WORK / "sst2" / "sst2-minilm-teacher" / "final",
            WORK / "results" / "runs" / "sst2-minilm-teacher-full" / "final",
        )
        if (path / "config.json").is_file()
    ),
    WORK / "sst2" / "sst2-minilm-teacher" / "final",
)
TEXTBREWER_PYTHON = WORK / "tb-venv" / "bin" / "python"
MAX_LENGTH = 128
# The student: 3 layers × 192 (3 heads of 64, FFN 768) on the teacher's vocabulary, random init,
# saved once so that every side starts from the same weights.
STUDENT = {"num_hidden_layers": 3, "hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768}
# hidden_mse through a linear projection (192 → 384) on the embeddings and every student layer,
# and TextBrewer's nst (token-relation MSE) on each student layer with itself.
HIDDEN_PAIRS = [(0, 0), (2, 1), (4, 2), (6, 3)]  # (teacher, student)
NST_PAIRS = [(2, 1), (4, 2), (6, 3)]
TEMPERATURE = 8.0


# ============================================================================= inputs


def read_tsv(path: Path) -> list[tuple[str, int]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    text, label = header.index("sentence"), header.index("label")
    return [(row[text], int(row[label])) for row in rows[1:]]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        handle.write("sentence\tlabel\n")
        for text, label in rows:
            handle.write(f"{text}\t{label}\n")


def prepare_inputs(directory: Path, examples: int) -> dict[str, Path]:
    """The SST-2 subset (real lengths), a fixed-length variant (every example 128 tokens: its
    sentence repeated, then cut) and the student's initial weights. Needs the main venv."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if not (TEACHER / "config.json").is_file():
        raise SystemExit(
            f"{TEACHER}: the fine-tuned MiniLM teacher is missing — run `python benchmarks/sst2_minilm.py` first (it trains it)"
        )
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    rows = read_tsv(SST2 / "train.tsv")[:examples]
    write_tsv(directory / "sst2.tsv", rows)
    fixed = []
    for text, label in rows:
        repeated = text.strip()
        while len(tokenizer(repeated)["input_ids"]) < MAX_LENGTH:
            repeated = f"{repeated} {text.strip()}"
        fixed.append((repeated, label))
    write_tsv(directory / "fixed128.tsv", fixed)
    student_dir = directory / "student-init"
    if not (student_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(TEACHER)
        for name, value in STUDENT.items():
            setattr(config, name, value)
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
    return {"sst2": directory / "sst2.tsv", "fixed128": directory / "fixed128.tsv", "student": student_dir}


def dev_accuracy(model: Any, tokenizer: Any) -> float:
    """The same evaluation for every side: SST-2 dev (872 sentences), arg-max of the logits."""
    import torch

    rows = read_tsv(SST2 / "dev.tsv")
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            encoded = tokenizer(
                [text for text, _ in chunk], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            predicted = model(**encoded).logits.argmax(-1)
            correct += int((predicted == torch.tensor([label for _, label in chunk])).sum())
    return correct / len(rows)


def speed_arguments(description: str) -> Any:
    """The options both speed benchmarks take (the same job on every side); a script adds its own."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the report into benchmarks/RESULTS.md (default: benchmarks/work/reports/ only)",
    )
    parser.add_argument("--compile", action="store_true", help="brewer sides with training.compile: true (inductor)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where every side trains: auto = a GPU when there is one (brewer's own choice), cpu = hide the GPUs",
    )
    parser.add_argument(
        "--precision", choices=("no", "bf16", "fp16"), default="no", help="brewer's training.precision (TextBrewer stays fp32)"
    )
    return parser


def device_description(device: str) -> str:
    """The device the sides run on, in words; stops the script when `--device cuda` has none."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    if device == "cuda":
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    return "CPU only"


def majority_rate() -> float:
    """SST-2 dev accuracy of always answering the more frequent label: a student at this figure
    has not learnt the task yet."""
    labels = [label for _, label in read_tsv(SST2 / "dev.tsv")]
    return max(labels.count(0), labels.count(1)) / len(labels)


# ============================================================================= children


def step_times_from_ends(ends: list[float], steps_per_epoch: int) -> dict[str, float]:
    """Seconds per step from the times at which steps ended (step 1, which warms up, is left out):
    over all steps, and over epochs 2+ (where a teacher cache is warm)."""
    result = {"per_step_s": (ends[-1] - ends[0]) / (len(ends) - 1)}
    if len(ends) > steps_per_epoch:
        result["later_epochs_per_step_s"] = (ends[-1] - ends[steps_per_epoch - 1]) / (len(ends) - steps_per_epoch)
    return result


def brewer_recipe(arguments: dict[str, Any]) -> dict[str, Any]:
    """The recipe of one brewer side, as a dict: `kind` trainer, basic or general, `cache` the
    teacher-output cache mode."""
    kind = arguments["kind"]
    total = steps_per_epoch(arguments) * arguments["epochs"]
    raw: dict[str, Any] = {
        "name": arguments["name"],
        "task": {"kind": "sequence_classification", "num_labels": 2},
        "data": {"train": {"path": arguments["data"]}, "max_length": MAX_LENGTH, "text": "sentence", "label": "label"},
        "training": {
            "epochs": arguments["epochs"],
            "batch_size": arguments["batch_size"],
            "learning_rate": arguments["learning_rate"],
            "warmup": 0.1,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "seed": arguments["seed"],
            "log_every": 1,
            "progress": False,
            "save_every": total,
            "precision": arguments.get("precision", "no"),
            "compile": bool(arguments.get("compile")),
        },
    }
    student = {"checkpoint": arguments["student"]}
    if kind == "trainer":
        raw.update(model=student, distillation={"kind": "trainer"})
        return raw
    raw.update(teacher={"checkpoint": str(TEACHER)}, student=student)
    distillation: dict[str, Any] = {
        "kind": kind,
        "temperature": TEMPERATURE,
        "kd_loss": "ce",
        "hard_label_weight": 0.0,
        "teacher_cache": arguments["cache"],
    }
    if kind == "general":
        distillation["matches"] = [
            {"teacher_layer": t, "student_layer": s, "loss": "hidden_mse", "projection": "linear"} for t, s in HIDDEN_PAIRS
        ] + [{"teacher_layer": [t, t], "student_layer": [s, s], "loss": "nst"} for t, s in NST_PAIRS]
    raw["distillation"] = distillation
    return raw


def sst2_job(name: str, kind: str, cache: str, inputs: dict[str, Path], epochs: int) -> dict[str, Any]:
    """One side of vs_finetuning.py's job as other scripts re-run it in-process (cache_forms.py,
    profile_step.py): the SST-2 subset, batch 16, lr 1e-4, seed 42."""
    return {
        "name": name,
        "kind": kind,
        "cache": cache,
        "data": str(inputs["sst2"]),
        "student": str(inputs["student"]),
        "epochs": epochs,
        "batch_size": 16,
        "learning_rate": 1e-4,
        "seed": 42,
    }


def steps_per_epoch(arguments: dict[str, Any]) -> int:
    import math

    return math.ceil(len(read_tsv(Path(arguments["data"]))) / arguments["batch_size"])


def brewer_child(arguments: dict[str, Any]) -> dict[str, Any]:
    """One brewer run through the library entry point `brewer distill` uses (no evaluation split:
    the timed loop is training only); step end times from metrics.jsonl (log_every 1). Each run
    writes into a folder of its own, so a prefilled teacher-output store is never shared between
    runs: every run that prefills pays for its pass, which counts in its time."""
    from brewer_cli.commands import distill
    from brewer_cli.recipe import validate_recipe

    output = Path(arguments["output"]) / arguments["name"]
    recipe = validate_recipe(brewer_recipe(arguments), output / f"{arguments['name']}.yaml")
    from rich.console import Console

    summary = distill(recipe, output, console=Console(file=open(os.devnull, "w")))
    run_dir = output / arguments["name"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    ends = [record["time"] for record in steps]
    cache = summary.get("teacher_cache") or {}
    prefill_s = float((cache.get("prefill") or {}).get("seconds", 0.0))
    per_epoch = steps_per_epoch(arguments)
    times = step_times_from_ends(ends, per_epoch)
    # Non-padding tokens per second in epochs 2+ (the cache warm): each log line's rate since the
    # line before, weighted by the time between them (log_every 1: one step each).
    later = list(zip(steps, [None, *ends[:-1]]))[per_epoch:]
    seconds = [record["time"] - before for record, before in later]
    tokens = [record["tokens_per_s"] * (record["time"] - before) for record, before in later]
    result = {
        "steps": summary["steps"],
        **times,
        "tokens_per_s": summary["throughput"]["tokens_per_s"],
        "later_epochs_tokens_per_s": sum(tokens) / sum(seconds) if seconds else None,
        "cuda_peak_bytes": summary["peak_memory_bytes"].get("cuda_allocated"),
        "precision": summary["precision"],
        # The teacher pass before training, spread over the steps: the time per step a user waits.
        "prefill_s": prefill_s,
        "per_step_with_prefill_s": times["per_step_s"] + prefill_s / (len(ends) - 1),
        "summary_peak_rss": summary["peak_memory_bytes"]["host_rss"],
        "teacher_cache": cache or None,
    }
    if arguments.get("evaluate"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        final = run_dir / "final"
        result["dev_accuracy"] = dev_accuracy(
            AutoModelForSequenceClassification.from_pretrained(final), AutoTokenizer.from_pretrained(final)
        )
    return result


def textbrewer_child(arguments: dict[str, Any]) -> dict[str, Any]:
    """TextBrewer driven as its README does: a TensorDataset padded to max length, GeneralDistiller
    with intermediate_matches, an adaptor reading the outputs' attributes, torch.optim.AdamW and a
    linear schedule with warmup. Step start times come from `batch_postprocessor`, called on every
    batch before its step."""
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(arguments["seed"])
    device = "cuda" if arguments.get("device") != "cpu" and torch.cuda.is_available() else "cpu"
    # TextBrewer moves the batches to `device`; the models are the caller's to place.
    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER).to(device)
    student = AutoModelForSequenceClassification.from_pretrained(arguments["student"]).to(device)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    rows = read_tsv(Path(arguments["data"]))
    encoded = tokenizer(
        [text for text, _ in rows], padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    dataset = TensorDataset(
        encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"], torch.tensor([label for _, label in rows])
    )

    def as_dict(items):
        input_ids, attention_mask, token_type_ids, labels = (torch.stack(column) for column in zip(*items))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids, "labels": labels}

    loader = DataLoader(dataset, batch_size=arguments["batch_size"], shuffle=True, collate_fn=as_dict)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * arguments["epochs"]
    output = Path(arguments["output"]) / arguments["name"]
    # Checkpoints (torch.save of the student) only after the last epoch, like brewer's save_every.
    train_config = TrainingConfig(device=device, output_dir=str(output), ckpt_epoch_frequency=arguments["epochs"] + 1)
    matches = [
        {
            "layer_T": t,
            "layer_S": s,
            "feature": "hidden",
            "loss": "hidden_mse",
            "weight": 1,
            "proj": ["linear", STUDENT["hidden_size"], teacher.config.hidden_size],
        }
        for t, s in HIDDEN_PAIRS
    ] + [{"layer_T": [t, t], "layer_S": [s, s], "feature": "hidden", "loss": "nst", "weight": 1} for t, s in NST_PAIRS]
    distill_config = DistillationConfig(
        temperature=TEMPERATURE, hard_label_weight=0, kd_loss_type="ce", intermediate_matches=matches
    )

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"]}

    distiller = GeneralDistiller(
        train_config=train_config,
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptor,
        adaptor_S=adaptor,
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=arguments["learning_rate"], weight_decay=0.01)
    starts: list[float] = []

    def mark(batch):
        starts.append(time.time())
        return batch

    with distiller:
        distiller.train(
            optimizer,
            loader,
            num_epochs=arguments["epochs"],
            scheduler_class=get_linear_schedule_with_warmup,
            scheduler_args={"num_warmup_steps": int(0.1 * total), "num_training_steps": total},
            max_grad_norm=1.0,
            batch_postprocessor=mark,
            output_hidden_states=True,
        )
    # A step ends when the next begins; the last one (followed by the checkpoint) is left out.
    result = {"steps": total, **step_times_from_ends(starts[1:], steps_per_epoch)}
    result["per_step_with_prefill_s"] = result["per_step_s"]  # no pass before training
    if arguments.get("evaluate"):
        result["dev_accuracy"] = dev_accuracy(student.to("cpu"), tokenizer)
    return result


CHILDREN = {"brewer": brewer_child, "textbrewer": textbrewer_child}


def run_child(side: str, arguments: dict[str, Any], label: str) -> dict[str, Any]:
    """Run one side in its own process; its result plus its peak RSS (bytes) and wall time."""
    python = str(TEXTBREWER_PYTHON) if side == "textbrewer" else sys.executable
    directory = Path(arguments["output"])
    directory.mkdir(parents=True, exist_ok=True)
    argument_file = directory / f"{arguments['name']}.arguments.json"
    result_file = directory / f"{arguments['name']}.result.json"
    argument_file.write_text(json.dumps(arguments))
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if arguments.get("device") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # brewer trains on a GPU whenever it sees one
    print(f"  {label} …", end="", flush=True)
    start = time.time()
    child = subprocess.Popen(
        [python, __file__, side, str(argument_file), str(result_file)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(directory / f"{arguments['name']}.log", "w"),
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - start
    if status != 0 or not result_file.exists():
        raise SystemExit(f"{label} failed (status {status}); see {directory / (arguments['name'] + '.log')}")
    result = json.loads(result_file.read_text())
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    result["process_wall_s"] = wall
    print(f" {1000 * result['per_step_s']:.0f} ms/step, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


if __name__ == "__main__":
    side, argument_path, result_path = sys.argv[1:4]
    outcome = CHILDREN[side](json.loads(Path(argument_path).read_text()))
    Path(result_path).write_text(json.dumps(outcome))
