"""The results table (issue 13): how much of its teacher a smaller, faster student keeps on real
tasks, and what it cost — run from the recipes in recipes/, one job at a time.

Rows (`--list` prints them with their estimated cost):

- SST-2 (../shared/data/sst2: 67,349 train / 872 dev): the MiniLM-L6-H384 teacher fine-tuned on the
  whole training set, and 3-layer students of one shape (3 × 384, FFN 768): (a) labels only, no
  teacher; (b) random init + basic KD; (c) ETD-Rand + basic; (d) ETD-Impt + basic; (e) ETD-Impt +
  general (hidden and attention matches); (f) a 4 × 312 TinyBERT-shaped ETD-Impt student. (b)-(e)
  run once per seed (`--seeds`, default 42,43,44).
- RTE (2,490 / 277): teacher, the SST-2 method (e), and (e) on TinyBERT-augmented data.
- SQuAD v1.1 split by article (38 train / 10 eval articles): teacher, ETD-Impt 3-layer student.
- `--scale full`: BERT-base teachers from the hub → T6 and T4-tiny students on GLUE SST-2, MRPC and
  SQuAD v1.1, for a machine with a GPU and the hub (`--device cuda --precision bf16`).

Each run is `brewer distill RECIPE --output-dir OUTPUT/runs --set …` in a subprocess, never two at
once. A run whose directory holds summary.json is skipped; one with checkpoints is continued with
`--resume`; a row's teacher row runs first when it has not finished. After each run the driver
writes OUTPUT/results.json (one record per run) and OUTPUT/results.md; `--record` also writes the
records into benchmarks/results.json and the table into benchmarks/RESULTS.md and README.md between
`<!-- results-table:start -->` and `<!-- results-table:end -->`, after every run. The table's
per-run figures come from `brewer compare` (brewer_cli.compare). Latency is measured after each run
for the runs not measured yet, alone on the machine; `--report-only --measure-latency` measures
every run on disk again in one job, so that the whole speed-up column comes from one sitting.

Across sittings: a sitting may get a fresh machine, with OUTPUT gone. A run recorded in
benchmarks/results.json is then not run again — its record holds everything the tables need. A
teacher run recorded there but missing on disk is trained again (same recipe, same seed) when a
row still to run distils from it; its record keeps the earlier values beside the new one
(`earlier`), which shows whether the teacher came out the same.

Whether other jobs shared the machine is measured, not assumed: the CPU time the whole machine
spent during the run (/proc/stat) minus the run's own (its process) and the driver's, as a share of
all cores over the run's wall time; over 5% counts as "other jobs beside it".

Estimated hours assume the machine alone and the step costs below (seconds per optimizer step),
from the FLOPs of each step (forward + backward of the student, the teacher's forward until its
outputs are cached) at about 45 GFLOP/s, the rate brewer's 3 × 192 fine-tuning steps showed on this
2-core machine (benchmarks/RESULTS.md, "Distillation step vs fine-tuning step": 80-91 ms for about
4 GFLOP), plus the evaluations. Full-scale estimates are for one recent data-centre GPU in bf16.

    python benchmarks/results_table.py --list
    python benchmarks/results_table.py                      # every CPU row
    python benchmarks/results_table.py --rows sst2-teacher,sst2-d --seeds 42
    python benchmarks/results_table.py --dry-run            # validate every row's recipe (brewer distill --dry-run)
    python benchmarks/results_table.py --record             # also write benchmarks/results.json, RESULTS.md, README.md
    python benchmarks/results_table.py --report-only --record   # the same from what is finished, running nothing
    python benchmarks/results_table.py --scale full --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from results_report import load_results, record_for, record_tables, results_markdown, save_results
from results_rows import (
    DEFAULT_OUTPUT,
    DEFAULT_SEEDS,
    OTHERS_THRESHOLD,
    README,
    RECORDS,
    RESULTS_MD,
    ROOT,
    ROWS,
    PlannedRun,
    Row,
    Settings,
    catalogue,
    decide,
    estimated_hours,
    plan_runs,
    select,
)

from brewer_cli.compare.rows import LatencyMeter, RunRow
from brewer_cli.models import PACKAGE_PREFIX

# Timed passes per model and batch size behind the speed-up column, spread over rounds that
# interleave the models: ten passes per model, each model timed on its own, left a 60% spread
# between students of one shape.
LATENCY_RUNS, LATENCY_ROUNDS = 50, 10

# ============================================================================= running


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = models[0] if models else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class LoadWatch:
    """What else ran during a run: the machine's busy CPU time minus the driver's and its children's."""

    cores: int
    started: float = field(default_factory=time.monotonic)
    busy_before: float | None = field(default_factory=_machine_busy_seconds)
    own_before: float = field(default_factory=_own_cpu_seconds)
    load_before: tuple[float, ...] = field(default_factory=os.getloadavg)

    def report(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        busy_after = _machine_busy_seconds()
        own = _own_cpu_seconds() - self.own_before
        report: dict[str, Any] = {
            "wall_s": round(wall, 1),
            "own_cpu_s": round(own, 1),
            "load_average_before": [round(value, 2) for value in self.load_before],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
        }
        if self.busy_before is None or busy_after is None or wall <= 0:
            report.update(others_cpu_share=None, others_beside=None)
            return report
        others = max(0.0, busy_after - self.busy_before - own)
        share = others / (wall * self.cores)
        report.update(others_cpu_s=round(others, 1), others_cpu_share=round(share, 4), others_beside=share > OTHERS_THRESHOLD)
        return report


def run_one(run: PlannedRun, settings: Settings, log_dir: Path, dry_run: bool = False) -> tuple[int, dict[str, Any], str]:
    """`brewer distill` for one run in a subprocess (output to the console and a log file);
    returns its exit code, the load report and the command line as a user would type it."""
    extra = ["--dry-run"] if dry_run else (["--resume"] if decide(run.run_dir) == "resume" else [])
    log = log_dir / f"{run.name}{'.dry-run' if dry_run else ''}.log"
    return run_brewer(run.command(*extra), log, settings.device)


def run_brewer(command: Sequence[str], log: Path, device: str | None = None) -> tuple[int, dict[str, Any], str]:
    """`brewer …` (any subcommand; `command` as a user types it, starting with "brewer") in a
    subprocess, its output to the console and appended to `log`, the machine's load watched;
    returns its exit code, the load report and the command line. Shared with the other drivers
    (benchmarks/decoder_kd.py)."""
    shown = shlex.join(command)
    print(f"\n$ {shown}", flush=True)
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # One job at a time on a machine kept free for it: OpenMP may spin as torch does by default
    # (brewer's shorter spin serves machines shared by several jobs; benchmarks/threads.py).
    environment.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    if device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""
    log.parent.mkdir(parents=True, exist_ok=True)
    watch = LoadWatch(cores=machine_cores())
    with (
        log.open("a", encoding="utf-8") as handle,
        subprocess.Popen(
            [sys.executable, "-m", "brewer_cli", *command[1:]],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process,
    ):
        handle.write(f"$ {shown}\n")
        # A reader thread: the driver waits on the process, so Ctrl-C reaches both and brewer checkpoints.
        reader = threading.Thread(target=_copy_lines, args=(process.stdout, handle), daemon=True)
        reader.start()
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            returncode = process.wait()
        reader.join()
    return returncode, combined_load(log, watch.report(), resumed="--resume" in command), shown


def combined_load(log: Path, report: dict[str, Any], resumed: bool) -> dict[str, Any]:
    """The load over every segment of a run: this one's `report` is appended to `LOG.load.jsonl`
    and the segments recorded there are summed. A run interrupted and resumed across sittings ran
    partly beside other jobs or not, segment by segment; judging it by its last segment alone would
    call a run "alone" whose first hours had company. When the first recorded segment is a resume,
    the earlier ones were never measured, and whether other jobs ran beside the run is unknown (None)."""
    segments_file = log.with_name(log.name + ".load.jsonl")
    segments = []
    if segments_file.is_file():
        segments = [json.loads(line) for line in segments_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    segments.append({**report, "resumed": resumed})
    with segments_file.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(segments[-1]) + "\n")
    wall = sum(segment["wall_s"] for segment in segments)
    combined: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "own_cpu_s": round(sum(segment["own_cpu_s"] for segment in segments), 1),
        "load_average_before": segments[0]["load_average_before"],
        "load_average_after": segments[-1]["load_average_after"],
        "segments": len(segments),
    }
    unmeasured = segments[0]["resumed"]
    shares = [segment.get("others_cpu_share") for segment in segments]
    if unmeasured or None in shares or wall <= 0:
        combined.update(others_cpu_share=None, others_beside=None, unmeasured_segments=unmeasured)
        return combined
    others = sum(segment["others_cpu_s"] for segment in segments)
    share = others / (wall * machine_cores())
    combined.update(
        others_cpu_s=round(others, 1),
        others_cpu_share=round(share, 4),
        others_beside=share > OTHERS_THRESHOLD or any(segment["others_beside"] for segment in segments),
    )
    return combined


def _copy_lines(stream: Any, handle: Any) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        handle.write(line)
        handle.flush()


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ============================================================================= the command line


def print_list(planned: Sequence[PlannedRun], recorded: set[str]) -> None:
    print(f"{'row':<24} {'run':<52} {'steps':>7} {'s/step':>7} {'hours':>6}  {'status':<12} recipe")
    total = 0.0
    for run in planned:
        hours = estimated_hours(run)
        total += hours
        status = {"skip": "finished", "resume": "started", "fresh": "not started"}[decide(run.run_dir)]
        if status != "finished" and run.name in recorded:
            status = "recorded"
        hub = (
            " (hub)"
            if "Needs the Hugging Face Hub" in (ROOT / run.row.recipe).read_text(encoding="utf-8").splitlines()[0]
            else ""
        )
        print(
            f"{run.row.id:<24} {run.name:<52} {run.steps:>7} {run.row.seconds_per_step:>7.2f} {hours:>6.1f}  {status:<12} {run.row.recipe}{hub}"
        )
    scale = "one recent GPU" if any(run.row.scale == "full" for run in planned) else "2 CPU cores, the machine alone"
    print(f"\n{len(planned)} runs, about {total:.1f} hours in all ({scale}; estimates, see the module docstring).")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", help="comma-separated row ids (default: every row of --scale); see --list")
    parser.add_argument("--list", action="store_true", help="list the rows, their runs, estimated hours and status")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="seeds of the seeded rows (default 42,43,44)")
    parser.add_argument(
        "--output-dir", default=str(DEFAULT_OUTPUT), help="working folder: runs/, logs/, results.json, results.md"
    )
    parser.add_argument(
        "--scale", choices=("cpu", "full"), default="cpu", help="cpu: the offline rows; full: BERT-base from the hub"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="cuda: require a GPU; cpu: hide any GPU from the runs")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), help="passed as --set training.precision=…")
    parser.add_argument(
        "--dry-run", action="store_true", help="brewer distill --dry-run per run: every recipe valid, nothing trained"
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write benchmarks/results.json, and the table into benchmarks/RESULTS.md and README.md",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write results.json and results.md (with --record, the repository's files too) from the runs "
        "finished on disk and the records kept",
    )
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the speed-ups of runs not measured yet (default on)",
    )
    parser.add_argument(
        "--measure-latency",
        action="store_true",
        help="measure the speed-ups of every run with its models on disk again, all in one job (with --report-only: "
        "alone on the machine, after the rows are done)",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    rows: Sequence[Row] = ROWS,
    results_md: Path = RESULTS_MD,
    readme: Path = README,
    records_file: Path = RECORDS,
) -> int:
    args = parse(argv)
    try:
        seeds = tuple(int(part) for part in args.seeds.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: expected comma-separated whole numbers, e.g. 42,43,44") from None
    settings = Settings(output=Path(args.output_dir).resolve(), seeds=seeds, device=args.device, precision=args.precision)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device cuda: torch {torch.__version__} sees no GPU on this machine — run without --device cuda")
    catalog = catalogue(args.scale, rows)
    planned = plan_runs(select(catalog, args.rows), settings, catalog)
    if args.list:
        print_list(planned, set(load_results(records_file)) | set(load_results(settings.output / "results.json")))
        return 0
    logs = settings.output / "logs"
    if args.dry_run:
        failed = [run.name for run in planned if run_one(run, settings, logs, dry_run=True)[0] != 0]
        print(
            f"\ndry run: {len(planned) - len(failed)} of {len(planned)} runs valid"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
        return 1 if failed else 0
    results_path = settings.output / "results.json"
    records = load_results(results_path)
    # Rows recorded in an earlier sitting, perhaps on a machine since wiped: kept, and not run again.
    for name, record in load_results(records_file).items():
        records.setdefault(name, record)
    rerun = teachers_to_rebuild(planned, records)
    machine_info = machine()
    for run in planned:
        if decide(run.run_dir) == "skip":
            print(f"{run.name}: finished already ({run.run_dir / 'summary.json'}) — skipped")
            if run.name not in records:
                records[run.name] = record_for(run, None, None, shlex.join(run.command()))
            continue
        earlier = records.get(run.name)
        if args.report_only:
            continue
        if earlier is not None and run.name not in rerun:
            print(f"{run.name}: recorded on {earlier.get('recorded')} ({records_file}) — skipped")
            continue
        if earlier is not None:
            print(
                f"{run.name}: recorded earlier, but its run directory is gone and a row to run needs it as a teacher — training it again"
            )
        returncode, load, command = run_one(run, settings, logs)
        if returncode != 0:
            save_results(results_path, records, planned)
            again = "run the driver again to resume it" if returncode in (130, 143) else "fix it and run the driver again"
            raise SystemExit(
                f"{run.name}: brewer exited with {returncode} — log: {logs / (run.name + '.log')}; {again} "
                f"(finished runs are skipped, a started one resumes from its checkpoints)"
            )
        records[run.name] = record_for(run, machine_info, load, command)
        if earlier is not None:
            records[run.name]["earlier"] = earlier_values(earlier)
            print(
                f"{run.name}: {records[run.name]['value']} now, {earlier.get('value')} when recorded on {earlier.get('recorded')}"
            )
        if args.latency:
            measure_speedups(records)
        # After every run, not once at the end: a sitting may end before the last row does.
        write_outputs(records, planned, settings, args.record, records_file, results_md, readme)
    if args.latency:
        measure_speedups(records, everything=args.measure_latency)
    write_outputs(records, planned, settings, args.record, records_file, results_md, readme)
    print(f"\nwritten: {settings.output / 'results.json'} and {settings.output / 'results.md'}")
    return 0


def teachers_to_rebuild(planned: Sequence[PlannedRun], records: dict[str, dict]) -> set[str]:
    """The teacher runs that are recorded but whose directories are gone while a run still to do
    distils from them: those are trained again (from the same recipe and seed) before it."""
    to_do = [run for run in planned if run.name not in records and decide(run.run_dir) != "skip"]
    needed = {run.teacher_dir.name for run in to_do if run.teacher_dir is not None}
    return {run.name for run in planned if run.name in needed and run.name in records and decide(run.run_dir) != "skip"}


def measure_speedups(
    records: dict[str, dict], everything: bool = False, runs: int = LATENCY_RUNS, rounds: int = LATENCY_ROUNDS
) -> None:
    """The speed-up column: the latency of the recorded runs whose final models and teachers are on
    disk and not measured yet (all of them with `everything`, --measure-latency), measured in one
    job with the models interleaved (brewer_cli.compare.rows.LatencyMeter). A run whose models are
    gone keeps the figure it has, and its `latency_measured` says from which job."""
    chosen = [
        record
        for record in records.values()
        if "compare" in record and _models_on_disk(record["compare"]) and (everything or not record.get("latency_measured"))
    ]
    if not chosen:
        return
    print(f"\nmeasuring latency: {', '.join(record['run'] for record in chosen)} ({runs} passes per model and batch size)")
    watch = LoadWatch(cores=machine_cores())
    rows = LatencyMeter(runs=runs, rounds=rounds).measure_rows([RunRow.from_dict(record["compare"]) for record in chosen])
    load = watch.report()
    measured = {
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": runs,
        "rounds": rounds,
        "together": [record["run"] for record in chosen],
        "others_beside": load.get("others_beside"),
    }
    for record, row in zip(chosen, rows):
        record["latency"] = record["compare"]["latency"] = row.as_dict()["latency"]
        record["latency_measured"] = measured


def _models_on_disk(compared: dict) -> bool:
    teacher = compared.get("teacher_checkpoint")
    local = teacher is None or teacher.startswith(PACKAGE_PREFIX) or Path(teacher).exists()
    return (Path(compared["run_dir"]) / "summary.json").is_file() and local


def earlier_values(record: dict) -> list[dict]:
    """A retrained run's earlier results (its value and when), oldest first, kept in its record."""
    return [*record.get("earlier", []), {"value": record.get("value"), "recorded": record.get("recorded")}]


def write_outputs(
    records: dict[str, dict],
    planned: Sequence[PlannedRun],
    settings: Settings,
    record: bool,
    records_file: Path,
    results_md: Path,
    readme: Path,
) -> None:
    """OUTPUT/results.json and results.md; with --record also the repository's results.json, and
    the table in RESULTS.md and README.md."""
    results_path = settings.output / "results.json"
    save_results(results_path, records, planned)
    ordered = json.loads(results_path.read_text(encoding="utf-8"))["records"]
    (settings.output / "results.md").write_text(results_markdown(ordered), encoding="utf-8")
    if record:
        records_file.parent.mkdir(parents=True, exist_ok=True)
        records_file.write_text(results_path.read_text(encoding="utf-8"), encoding="utf-8")
        record_tables(ordered, results_md, readme)


if __name__ == "__main__":
    sys.exit(main())
