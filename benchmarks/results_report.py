"""The results table's records (results.json), figures (mean ± spread over seeds, steps to reach
the random-init student's final metric, the issue's targets) and Markdown (the table, the per-run
table of `brewer compare`, notes; written between markers into RESULTS.md and README.md)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from results_rows import DATASETS, END_MARKER, OTHERS_THRESHOLD, ROWS, START_MARKER, PlannedRun

from brewer_cli import compare
from brewer_cli.size_report import recorded_threads

# ============================================================================= records


def _train_size(run: PlannedRun) -> int:
    """Training examples: the dataset's, or the augmented file's records once it exists."""
    dataset = DATASETS[run.row.dataset]
    try:
        recipe = yaml.safe_load((run.run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}
        path = Path(str(((recipe.get("data") or {}).get("train") or {}).get("path") or ""))
    except (OSError, ValueError):
        return dataset.train
    if dataset.augmented and path.is_file():
        lines = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        return lines - (1 if path.suffix == ".tsv" else 0)
    return dataset.train


def _shape(architecture: dict[str, Any] | None) -> str | None:
    if not architecture:
        return None
    return f"{architecture.get('layers')} × {architecture.get('hidden')}, {architecture.get('heads')} heads, FFN {architecture.get('ffn')}"


def record_for(run: PlannedRun, machine_info: dict[str, Any] | None, load: dict[str, Any] | None, command: str) -> dict:
    """One results.json record, its figures read by `brewer compare` from the finished run (latency:
    results_table.measure_speedups, over several runs at once)."""

    row = compare.run_row(run.run_dir)
    summary = compare.read_summary(run.run_dir)
    model = summary.get("student") or summary.get("model") or {}
    teacher = summary.get("teacher") or {}
    dataset = DATASETS[run.row.dataset]
    compared = row.as_dict()
    return {
        "row": run.row.id,
        "run": run.name,
        "run_dir": str(run.run_dir),
        "dataset": dataset.name,
        "split_sizes": {"train": _train_size(run), "eval": dataset.eval, "unit": dataset.unit},
        "recipe": run.row.recipe,
        "method": run.row.method,
        "reference_row": run.row.reference_row,
        "kind": row.kind,
        "seed": run.training_seed,
        "teacher": None
        if not teacher
        else {
            "row": run.row.teacher_row,
            "checkpoint": teacher.get("checkpoint"),
            "parameters": teacher.get("parameters"),
            "value": row.teacher_value,
            "metrics": teacher.get("metrics"),
        },
        "model": {"shape": _shape(row.architecture), "parameters": row.parameters, "architecture": row.architecture},
        "metric": row.metric,
        "value": row.value,
        "metrics": model.get("metrics"),
        "best": {"value": row.best, "step": row.best_step},
        "final": row.final,
        "teacher_value": row.teacher_value,
        "ratio": row.of_teacher,
        "flops": row.flops,
        "teacher_flops": row.teacher_flops,
        "seq_len": row.seq_len,
        "latency": compared["latency"],
        "steps": row.steps,
        "epochs": list(row.epochs),
        "examples_per_second": row.examples_per_second,
        "train_time_s": row.train_time_s,
        "total_time_s": row.total_time_s,
        "threads": summary.get("threads"),
        "precision": summary.get("precision"),
        "machine": machine_info,
        "load": load,
        "command": command,
        # What the tables need once the run directory is gone (a later sitting on a fresh machine):
        # brewer compare's row and the evaluations the steps-to-reach figure reads.
        "compare": compared,
        "evaluations": [[step, metrics.get(row.metric)] for step, metrics in compare.eval_history(run.run_dir)],
        "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {record["run"]: record for record in json.loads(path.read_text(encoding="utf-8")).get("records", [])}


def save_results(path: Path, records: dict[str, dict], planned: Sequence[PlannedRun]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    order = {run.name: index for index, run in enumerate(planned)}
    ordered = sorted(records.values(), key=lambda record: (order.get(record["run"], len(order)), record["run"]))
    payload = {"records": ordered, "figures": figures(ordered)}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    temporary.replace(path)


# ============================================================================= figures


def mean_spread(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (n ≥ 2), range and count."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _reaching_step(candidate: dict, reference: dict) -> int | None:
    """The first evaluated step at which `candidate` reaches the reference run's final metric (None:
    never reached, or the reference has no final metric or steps)."""
    target = reference.get("final")
    if target is None or not reference.get("steps"):
        return None
    history = [(step, {candidate["metric"]: value}) for step, value in candidate.get("evaluations") or []]
    return compare.first_step_reaching(history, candidate["metric"], target)


def figures(records: Sequence[dict]) -> dict[str, Any]:
    """Per row: mean ± spread over seeds of the metric, the ratio, best and final; per student row
    with a random-init reference: how soon it reaches the reference's final metric (seed by seed)."""
    by_row: dict[str, list[dict]] = {}
    for record in records:
        by_row.setdefault(record["row"], []).append(record)
    result: dict[str, Any] = {}
    for row_id, members in by_row.items():
        entry: dict[str, Any] = {
            name: mean_spread([record.get(name) for record in members]) for name in ("value", "ratio", "final")
        }
        entry["best"] = mean_spread([(record.get("best") or {}).get("value") for record in members])
        # Every metric of the headline evaluation (SQuAD: exact match beside F1).
        names = sorted({name for record in members for name in (record.get("metrics") or {})})
        entry["metrics"] = {name: mean_spread([(record.get("metrics") or {}).get(name) for record in members]) for name in names}
        reference_id = members[0].get("reference_row")
        if reference_id and reference_id in by_row:
            references = {record["seed"]: record for record in by_row[reference_id]}
            paired = [record for record in members if record["seed"] in references]
            steps = {record["seed"]: _reaching_step(record, references[record["seed"]]) for record in paired}
            fractions = {seed: None if step is None else step / references[seed]["steps"] for seed, step in steps.items()}
            reached = [value for value in fractions.values() if value is not None]
            entry["steps_to_reach_reference_final"] = {
                "reference": reference_id,
                "by_seed": fractions,
                "mean": statistics.mean(reached) if reached and len(reached) == len(fractions) else None,
                "not_reached": sorted(seed for seed, value in fractions.items() if value is None),
                # Reached at the first evaluation: the figure is the evaluation interval's, an upper bound.
                "at_first_evaluation": sorted(
                    record["seed"]
                    for record in paired
                    if record.get("evaluations") and steps[record["seed"]] == record["evaluations"][0][0]
                ),
            }
        result[row_id] = entry
    return result


def targets(found: dict[str, Any]) -> list[str]:
    """Issue 13's targets, each met / missed / not run yet (the CPU rows)."""
    lines = []
    students = {row_id: found[row_id] for row_id in ("sst2-b", "sst2-c", "sst2-d", "sst2-e") if row_id in found}
    if students and "sst2-a" in found:
        best_id = max(students, key=lambda row_id: students[row_id]["value"]["mean"])
        best = students[best_id]
        ratio = (best.get("ratio") or {}).get("mean")
        baseline = found["sst2-a"]["value"]["mean"]
        keeps = ratio is not None and ratio >= 0.97
        beats = best["value"]["mean"] > baseline
        lines.append(
            f"SST-2: the best 3-layer student ({best_id}, mean {best['value']['mean']:.4f}) keeps "
            f"{'—' if ratio is None else f'{ratio:.1%}'} of the teacher (target ≥ 97%: {'met' if keeps else 'missed'}) and "
            f"{'beats' if beats else 'does not beat'} the no-teacher baseline (a) {baseline:.4f} "
            f"(target: beat it — {'met' if beats else 'missed'})."
        )
    else:
        lines.append("SST-2 ≥ 97% of the teacher and above the no-teacher baseline: not run yet (rows sst2-a to sst2-e).")
    reach = (found.get("sst2-d") or {}).get("steps_to_reach_reference_final")
    if reach and reach["mean"] is not None:
        lines.append(
            f"ETD-Impt (d) reaches the random-init student's (b) final accuracy in {reach['mean']:.1%} of (b)'s steps, "
            f"mean over seeds {', '.join(str(seed) for seed in reach['by_seed'])} (target ≤ 30%: "
            f"{'met' if reach['mean'] <= 0.30 else 'missed'})."
        )
    elif reach:
        lines.append(
            f"ETD-Impt (d) did not reach (b)'s final accuracy with seed(s) {reach['not_reached']} (target ≤ 30%: missed)."
        )
    else:
        lines.append("ETD-Impt (d) in ≤ 30% of the random-init student's steps: not run yet (rows sst2-b, sst2-d).")
    squad = found.get("squad-student")
    if squad and (squad.get("ratio") or {}).get("mean") is not None:
        ratio = squad["ratio"]["mean"]
        scores = "; ".join(
            f"{label} EM {_mean_text(metrics.get('exact_match'), digits=2)} / F1 {_mean_text(metrics.get('f1'), digits=2)}"
            for label, metrics in (
                ("teacher", (found.get("squad-teacher") or {}).get("metrics") or {}),
                ("student", squad.get("metrics") or {}),
            )
            if metrics
        )
        lines.append(
            f"SQuAD: the student keeps {ratio:.1%} of the teacher's F1 (target ≥ 90%: {'met' if ratio >= 0.90 else 'missed'})"
            + (f" — {scores}." if scores else ".")
        )
    else:
        lines.append("SQuAD student ≥ 90% of the teacher's F1: not run yet (row squad-student).")
    return lines


# ============================================================================= the Markdown


def _mean_text(spread: dict[str, Any] | None, percent: bool = False, digits: int = 4) -> str:
    if not spread:
        return "—"

    def show(value: float) -> str:
        return f"{value:.1%}" if percent else f"{value:.{digits}f}"

    if spread["n"] == 1:
        return show(spread["mean"])
    return f"{show(spread['mean'])} ± {show(spread['sd'])}"


def _others_text(members: Sequence[dict]) -> str:
    flags = [(record.get("load") or {}).get("others_beside") for record in members]
    if any(flag is None for flag in flags):
        return "unknown"
    busy = sum(bool(flag) for flag in flags)
    return "none" if busy == 0 else f"yes ({busy} of {len(flags)})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


TABLE_HEADER = (
    "| row | data (train / eval) | method | model (parameters) | seeds | metric | value | of teacher | best / final "
    "| steps (epochs) | ex/s | train time | speed-up b1 | other jobs |"
)


def aggregated_table(records: Sequence[dict], found: dict[str, Any]) -> str:
    """One line per row: mean ± standard deviation over its seeds where it has several."""

    lines = [TABLE_HEADER, "|" + "|".join([":---"] * 4 + ["---:"] + [":---"] + ["---:"] * 8) + "|"]
    by_row: dict[str, list[dict]] = {}
    for record in records:
        by_row.setdefault(record["row"], []).append(record)
    for row_id, members in by_row.items():
        first = members[0]
        entry = found.get(row_id, {})
        sizes = first["split_sizes"]
        speedups = [((record.get("latency") or {}).get("1") or {}).get("speedup") for record in members]
        speedup = mean_spread([value for value in speedups if value is not None])
        parameters = (first.get("model") or {}).get("parameters")
        model = f"{(first.get('model') or {}).get('shape') or '—'} ({parameters / 1e6:.1f}M)" if parameters else "—"
        best_final = f"{_mean_text(entry.get('best'))} / {_mean_text(entry.get('final'))}"
        cells = [
            row_id,
            f"{first['dataset']} ({sizes['train']:,} / {sizes['eval']:,} {sizes['unit']})",
            first["method"],
            model,
            ", ".join(str(record["seed"]) for record in members),
            first["metric"],
            _mean_text(entry.get("value")),
            _mean_text(entry.get("ratio"), percent=True),
            best_final,
            f"{first['steps']} ({compare.format_epochs(first['epochs'])})",
            _mean_text(mean_spread([record.get("examples_per_second") for record in members]), digits=1),
            _duration((mean_spread([record.get("train_time_s") for record in members]) or {}).get("mean")),
            "—" if speedup is None else f"{speedup['mean']:.2f}×",
            _others_text(members),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def _reach_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    for row_id, entry in found.items():
        reach = entry.get("steps_to_reach_reference_final")
        if not reach:
            continue
        seeds = ", ".join(
            f"seed {seed}: {'not reached' if value is None else f'{value:.1%}'}" for seed, value in reach["by_seed"].items()
        )
        mean = "—" if reach["mean"] is None else f"{reach['mean']:.1%}"
        first = reach.get("at_first_evaluation") or []
        bound = (
            f" Seed(s) {', '.join(map(str, first))} reached it at the first evaluation, so there the figure is the "
            "evaluation interval's: an upper bound."
            if first
            else ""
        )
        lines.append(
            f"{row_id} reaches the final {reach['reference']} run's metric (same seed) in {mean} of that run's steps ({seeds}).{bound}"
        )
    return lines


def comparison_lines(records: Sequence[dict], found: dict[str, Any]) -> list[str]:
    """Rows a single setting apart (Row.compared_with), best and final side by side, with what one
    evaluation example weighs: on a small evaluation set (RTE: 277 pairs) a gap of one or two
    examples is no finding."""
    lines = []
    for row in ROWS:
        if row.compared_with is None or row.id not in found or row.compared_with not in found:
            continue
        members = [record for record in records if record["row"] in (row.id, row.compared_with)]
        seeds = sorted({record["seed"] for record in members})
        sizes = {record["split_sizes"]["eval"] for record in members}
        units = {record["split_sizes"]["unit"] for record in members}
        metrics = {record["metric"] for record in members}
        weight = ""
        if len(sizes) == 1 and len(units) == 1 and metrics == {"accuracy"}:
            (size,), (unit,) = sizes, units
            weight = f"; on {size:,} evaluation {unit}, one of them moves the accuracy by {1 / size:.4f}"
        ours, theirs = found[row.id], found[row.compared_with]
        lines.append(
            f"{row.id} against {row.compared_with}: best {_mean_text(ours['best'])} vs {_mean_text(theirs['best'])}, "
            f"final {_mean_text(ours['final'])} vs {_mean_text(theirs['final'])} "
            f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}{weight})."
        )
    return lines


def _retrained_lines(records: Sequence[dict]) -> list[str]:
    """Runs trained again in a later sitting (a teacher missing on a fresh machine): whether they
    came out the same, since students recorded before distilled from the earlier one."""
    lines = []
    for record in records:
        earlier = record.get("earlier") or []
        if not earlier:
            continue
        values = [entry.get("value") for entry in earlier]
        same = all(value == record.get("value") for value in values)
        history = ", ".join(f"{entry.get('value')} ({entry.get('recorded')})" for entry in earlier)
        lines.append(
            f"{record['run']} was trained again on {record.get('recorded')} from the same recipe and seed: "
            f"{record.get('value')} now, {history} before — "
            + ("the same." if same else "different: students recorded before it distilled from the earlier teacher.")
        )
    return lines


def _latency_lines(records: Sequence[dict]) -> list[str]:
    """How the speed-up column was measured: per measuring job, when, with how many threads and
    passes, which runs."""
    jobs: dict[str, tuple[dict, list[dict]]] = {}
    for record in records:
        measured = record.get("latency_measured")
        if measured:
            jobs.setdefault(measured["at"], (measured, []))[1].append(record)
    unmeasured = [record["run"] for record in records if record.get("latency") and not record.get("latency_measured")]
    lines = []
    for at, (measured, members) in jobs.items():
        company = {True: "other jobs beside it", False: "the machine alone", None: "company unknown"}[
            measured.get("others_beside")
        ]
        recorded = recorded_threads(entry for record in members for entry in (record.get("latency") or {}).values())
        cpu = f"on CPU with {recorded} threads" if recorded else "on CPU"
        lines.append(
            f"speed-up b1: the teacher's median latency over the model's, batch size 1, at the run's max_length, {cpu}; "
            f"measured {at} ({company}), {measured['runs']} passes per model and batch size in {measured['rounds']} rounds "
            f"that interleave the models, one figure per architecture, for {', '.join(record['run'] for record in members)}."
        )
    if unmeasured:
        lines.append(f"speed-up b1 of {', '.join(unmeasured)}: 10 passes per model, measured right after each run.")
    return lines


def _machines(records: Sequence[dict]) -> list[str]:
    seen = []
    for record in records:
        info = record.get("machine")
        if info:
            text = (
                f"{info['cpu']}, {info['cores']} cores, {info['gpu'] or 'no GPU'}, torch {info['torch']}, Python {info['python']}"
            )
            if text not in seen:
                seen.append(text)
    return seen


def results_markdown(records: Sequence[dict], brief: bool = False) -> str:
    """The table, the targets and (unless `brief`) the steps-to-reach figures, the per-run table of
    `brewer compare`, the commands, the machine and the seeds."""

    found = figures(records)
    parts = [
        aggregated_table(records, found),
        "",
        *[f"- {line}" for line in targets(found)],
        *[f"- {line}" for line in comparison_lines(records, found)],
    ]
    if brief:
        parts += [
            "",
            "Commands, seeds, the machine and every run's figures: benchmarks/RESULTS.md (`python benchmarks/results_table.py`).",
        ]
        return "\n".join(parts) + "\n"
    parts += [f"- {line}" for line in _reach_lines(found)]
    # A record without brewer compare's row (made by hand) is left out of the per-run table only.
    rows = [compare.RunRow.from_dict(record["compare"]) for record in records if "compare" in record]
    parts += ["", "Every run (`brewer compare`):", "", compare.to_markdown(rows).rstrip()]
    commands = {}
    for record in records:
        # The working folder the record's run was in (OUTPUT/runs/NAME), which may be another machine's.
        output = str(Path(record["run_dir"]).parents[1])
        commands.setdefault(record["row"], record["command"].replace(output, "OUTPUT"))
    unknown = [record["run"] for record in records if not record.get("machine")]
    parts += [
        "",
        "Notes:",
        "",
        "- value: the run's headline metric (the best checkpoint's with training.load_best_at_end, which final/ holds); "
        "best / final: the best and the last evaluation; several seeds: mean ± sample standard deviation.",
        # From the records, not the driver's --seeds: the table may hold rows of several sittings.
        "- seeds: training.seed, and for ETD-Rand the extraction seed too.",
        "- other jobs: CPU time other processes took during the run (/proc/stat minus the run's own) over "
        f"{OTHERS_THRESHOLD:.0%} of the machine's — 'none' means the run had the machine alone.",
        f"- Machine: {'; '.join(_machines(records)) or 'not recorded'}.",
    ]
    if unknown:
        parts.append(f"- Not run by this driver (machine and company unknown): {', '.join(unknown)}.")
    parts += [f"- {line}" for line in _retrained_lines(records)]
    parts += [f"- {line}" for line in _latency_lines(records)]
    parts += ["", "Commands (from the project root; OUTPUT = the driver's --output-dir):", ""]
    parts += [f"- {row_id}: `{command}`" for row_id, command in commands.items()]
    return "\n".join(parts) + "\n"


def replace_between_markers(
    text: str, block: str, heading: str, start_marker: str = START_MARKER, end_marker: str = END_MARKER
) -> str:
    """`text` with everything between the markers (the results table's by default) replaced by
    `block`; without the markers, a new section `heading` holding them is appended."""
    inner = f"{start_marker}\n{block.strip()}\n{end_marker}"
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end > start:
        return text[:start] + inner + text[end + len(end_marker) :]
    if start == -1 and end == -1:
        return text.rstrip("\n") + f"\n\n{heading}\n\n{inner}\n"
    raise SystemExit(f"only one of {start_marker} and {end_marker} (or the end before the start) — fix the markers by hand")


def record_tables(records: Sequence[dict], results_md: Path, readme: Path) -> None:
    """--record: the table into RESULTS.md (all of it) and README.md (the table and the targets)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    full = f"_{stamp}, `python benchmarks/results_table.py`_\n\n" + results_markdown(records)
    results_md.write_text(
        replace_between_markers(results_md.read_text(encoding="utf-8") if results_md.exists() else "", full, "## Results table"),
        encoding="utf-8",
    )
    brief = results_markdown(records, brief=True)
    readme.write_text(replace_between_markers(readme.read_text(encoding="utf-8"), brief, "## Results"), encoding="utf-8")
    print(f"recorded the table in {results_md} and {readme}")
