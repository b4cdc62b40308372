"""The decoder KD benchmark's records (results.json), figures and Markdown (benchmarks/decoder_kd.py).

A record per run: its method, seed, steps, final and best eval perplexity, token accuracy, the
perplexity curve (step, wall seconds, value) from metrics.jsonl, examples/s, wall time, the store's
bytes per token where it read one, the machine and whether other jobs shared it. The table gives,
per row, the mean ± sample standard deviation over seeds, the share of the perplexity gap between
the CE-only student and the teacher that the method closes, and the steps the method needs to
reach the CE-only student's final perplexity (same seed). Figures are computed from the records
alone, so a hand-made results.json gives the same table (tests/test_decoder_kd.py)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from results_report import mean_spread, replace_between_markers

from brewer_cli import compare

START_MARKER = "<!-- decoder-kd:start -->"
END_MARKER = "<!-- decoder-kd:end -->"
HEADING = "## Decoder KD, offline (issue 19)"
METRIC = "perplexity"

# ============================================================================= records


def curve(run_dir: Path) -> list[list[float]]:
    """[step, wall seconds, perplexity] per evaluation. Wall seconds add up the time between
    consecutive metrics.jsonl lines while the step grows (a resume's pause and repeated steps count
    nothing), starting from the first logged step extrapolated back to step 0."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [line for line in lines if isinstance(line.get("step"), int) and isinstance(line.get("time"), (int, float))]
    points: dict[int, list[float]] = {}
    wall, previous = 0.0, None
    for line in lines:
        if previous is None:
            later = next((other for other in lines if other["step"] > line["step"]), None)
            if later is not None and line["step"] > 0:
                wall = line["step"] * (later["time"] - line["time"]) / (later["step"] - line["step"])
        elif line["step"] >= previous["step"]:
            wall += max(0.0, line["time"] - previous["time"])
        previous = line
        value = (line.get("eval") or {}).get(METRIC)
        if isinstance(value, (int, float)):
            points[line["step"]] = [line["step"], round(wall, 1), value]
    return [points[step] for step in sorted(points)]


def record_for(run: Any, settings: Any, machine_info: dict | None, load: dict | None, command: str) -> dict:
    """One results.json record (a capture's: the store's size and its wall time)."""
    base = {
        "row": run.row.id,
        "kind": run.row.kind,
        "method": run.row.method,
        "run": run.name,
        "run_dir": str(run.run_dir),
        "seed": run.seed,
        "recipe": run.row.recipe,
        "machine": machine_info,
        "load": load,
        "wall_time_s": (load or {}).get("wall_s"),
        "others_beside": (load or {}).get("others_beside"),
        "command": command,
        "recorded": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if run.row.kind == "capture":
        manifest = json.loads((run.run_dir / "manifest.json").read_text(encoding="utf-8"))
        return {
            **base,
            "k": manifest["k"],
            "store_bytes": manifest["bytes"],
            "store_bytes_per_token": manifest["bytes_per_token"],
        }
    row = compare.run_row(run.run_dir)
    history = compare.eval_history(run.run_dir)
    last = history[-1][1] if history else {}
    store = None
    if run.row.teacher == "store":
        manifest = json.loads((settings.store(run.row.k) / "manifest.json").read_text(encoding="utf-8"))
        store = manifest["bytes_per_token"]
    return {
        **base,
        "k": run.row.k,
        "steps": row.steps,
        "parameters": row.parameters,
        "final": last.get(METRIC),
        "best": row.best,
        "best_step": row.best_step,
        "value": row.value,
        "token_accuracy": last.get("token_accuracy"),
        "curve": curve(run.run_dir),
        "examples_per_second": row.examples_per_second,
        "train_time_s": row.train_time_s,
        "total_time_s": row.total_time_s,
        "store_bytes_per_token": store,
    }


def load_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {record["run"]: record for record in json.loads(path.read_text(encoding="utf-8")).get("records", [])}


def save_results(path: Path, records: dict[str, dict], planned: Sequence[Any], settings: Any, corpus: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    order = {run.name: index for index, run in enumerate(planned)}
    ordered = sorted(records.values(), key=lambda record: (order.get(record["run"], len(order)), record["run"]))
    payload = {
        "scale": settings.scale.name,
        "seeds": list(settings.seeds),
        "corpus": corpus,
        "records": ordered,
        "figures": figures(ordered),
    }
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    temporary.replace(path)


# ============================================================================= figures


def reach(record: dict, target: float | None) -> tuple[int | None, float | None]:
    """(step, wall seconds) of the first evaluation at or below `target` perplexity."""
    if target is None:
        return None, None
    for step, wall, value in record.get("curve") or []:
        if value <= target:
            return step, wall
    return None, None


def figures(records: Sequence[dict]) -> dict[str, Any]:
    """Per row: mean ± spread of final and best perplexity and token accuracy; per student row the
    share of the CE-only → teacher gap closed (best perplexity, the model final/ holds) and the steps
    and seconds to reach the CE-only run's final perplexity, seed by seed."""
    by_row: dict[str, list[dict]] = {}
    for record in records:
        if record["kind"] != "capture":
            by_row.setdefault(record["row"], []).append(record)
    teacher = (by_row.get("teacher") or [{}])[0].get("best")
    baseline = {record["seed"]: record for record in by_row.get("ce-only", [])}
    baseline_best = mean_spread([record.get("best") for record in baseline.values()])
    result: dict[str, Any] = {}
    for row_id, members in by_row.items():
        entry: dict[str, Any] = {
            name: mean_spread([record.get(name) for record in members]) for name in ("final", "best", "token_accuracy")
        }
        entry["examples_per_second"] = mean_spread([record.get("examples_per_second") for record in members])
        entry["train_time_s"] = mean_spread([record.get("train_time_s") for record in members])
        if members[0]["kind"] == "student" and teacher is not None and baseline_best is not None:
            gap = baseline_best["mean"] - teacher
            entry["gap_closed"] = mean_spread(
                [
                    (baseline_best["mean"] - record["best"]) / gap
                    for record in members
                    if record.get("best") is not None and gap > 0
                ]
            )
        if members[0]["kind"] == "student" and row_id != "ce-only" and baseline:
            by_seed = {}
            for record in members:
                reference = baseline.get(record["seed"])
                if reference is not None:
                    step, wall = reach(record, reference.get("final"))
                    by_seed[str(record["seed"])] = {
                        "step": step,
                        "wall_s": wall,
                        "of_ce_only_steps": None if step is None else step / reference["steps"],
                    }
            reached = [value["step"] for value in by_seed.values() if value["step"] is not None]
            entry["steps_to_ce_only_final"] = {
                "by_seed": by_seed,
                "mean": statistics.mean(reached) if reached and len(reached) == len(by_seed) else None,
                "not_reached": sorted(seed for seed, value in by_seed.items() if value["step"] is None),
            }
        result[row_id] = entry
    return result


# ============================================================================= the Markdown


def _text(spread: dict | None, digits: int = 2, percent: bool = False) -> str:
    if not spread:
        return "—"

    def show(value: float) -> str:
        return f"{value:.1%}" if percent else f"{value:,.{digits}f}"

    return show(spread["mean"]) if spread["n"] == 1 or spread["sd"] is None else f"{show(spread['mean'])} ± {show(spread['sd'])}"


def _others(members: Sequence[dict]) -> str:
    flags = [record.get("others_beside") for record in members]
    if any(flag is None for flag in flags):
        return "unknown"
    busy = sum(bool(flag) for flag in flags)
    return "none" if busy == 0 else f"yes ({busy} of {len(flags)})"


def _reach_text(entry: dict) -> str:
    found = entry.get("steps_to_ce_only_final")
    if not found:
        return "—"
    if found["mean"] is None:
        return f"not reached (seeds {', '.join(found['not_reached'])})"
    fractions = [value["of_ce_only_steps"] for value in found["by_seed"].values()]
    return f"{found['mean']:.0f} ({statistics.mean(fractions):.0%})"


TABLE_HEADER = (
    "| row | method | seeds | final ppl | best ppl | token acc | gap closed | steps to CE-only final | ex/s | train time "
    "| store B/token | other jobs |"
)


def table(records: Sequence[dict], found: dict[str, Any]) -> str:
    lines = [TABLE_HEADER, "|" + "|".join([":---"] * 3 + ["---:"] * 8 + [":---"]) + "|"]
    by_row: dict[str, list[dict]] = {}
    for record in records:
        if record["kind"] != "capture":
            by_row.setdefault(record["row"], []).append(record)
    for row_id, members in by_row.items():
        entry = found.get(row_id, {})
        store = members[0].get("store_bytes_per_token")
        time = (entry.get("train_time_s") or {}).get("mean")
        cells = [
            row_id,
            members[0]["method"],
            ", ".join(str(record["seed"]) for record in members if record["seed"] is not None) or "—",
            _text(entry.get("final")),
            _text(entry.get("best")),
            _text(entry.get("token_accuracy"), percent=True),
            _text(entry.get("gap_closed"), percent=True),
            _reach_text(entry),
            _text(entry.get("examples_per_second"), digits=1),
            "—" if time is None else (f"{time / 3600:.1f} h" if time >= 3600 else f"{time / 60:.1f} min"),
            "—" if store is None else f"{store:,.0f}",
            _others(members),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def results_markdown(records: Sequence[dict], settings: Any, corpus: dict, record: bool = False) -> str:
    found = figures(records)
    parts = [table(records, found), ""]
    captures = [record for record in records if record["kind"] == "capture"]
    if captures:
        stores = "; ".join(
            f"k = {record['k']}: {record['store_bytes'] / 1e6:,.1f} MB, {record['store_bytes_per_token']:,.0f} bytes per token, "
            f"{(record.get('wall_time_s') or 0) / 60:.1f} min"
            for record in captures
        )
        parts += [f"- Stores (`brewer capture`): {stores}."]
    machines = sorted(
        {
            f"{info['cpu']}, {info['cores']} cores, {info['gpu'] or 'no GPU'}, torch {info['torch']}"
            for info in (record.get("machine") for record in records)
            if info
        }
    )
    sizes = ", ".join(
        f"{name} {corpus[name]['lines']:,} lines / {corpus[name]['words']:,} words"
        for name in ("train", "eval")
        if name in corpus
    )
    parts += [
        "- ppl: eval perplexity, exp(Σ NLL / Σ tokens) over the eval split's packed blocks; final: the last evaluation, "
        "best: the lowest (the model final/ holds); several seeds: mean ± sample standard deviation.",
        "- gap closed: (CE-only best ppl − the row's best ppl) / (CE-only best ppl − the teacher's ppl), mean over seeds.",
        "- steps to CE-only final: the first evaluated step at which the row's perplexity is at or below the CE-only run's "
        "final perplexity (same seed), mean over seeds (share of the CE-only run's steps). Curves (step, wall seconds, "
        "perplexity) of every run: results.json.",
        f"- Corpus: SQuAD v1.1 dev contexts (articles 0-39 train, 40-47 eval) + SST-2 sentences (train / dev): {sizes or 'not recorded'}.",
        f"- Seeds of the student rows: {', '.join(str(seed) for seed in settings.seeds)} (training.seed).",
        f"- Machine: {'; '.join(machines) or 'not recorded'}. other jobs: CPU time other processes took during the run over 5% "
        "of the machine's — 'none' means the run had the machine alone.",
        f"- Command: `python benchmarks/decoder_kd.py{'' if settings.scale.name == 'full' else ' --scale ' + settings.scale.name}"
        f"{' --record' if record else ''}` "
        "(resumable; `--list` for the runs and their estimated hours).",
    ]
    return "\n".join(parts) + "\n"


def record_section(markdown: str, results_md: Path) -> None:
    """--record: the table between the decoder-kd markers of RESULTS.md (a new section when missing)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"_{stamp}, `python benchmarks/decoder_kd.py --record`_\n\n{markdown}"
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else ""
    results_md.write_text(replace_between_markers(text, block, HEADING, START_MARKER, END_MARKER), encoding="utf-8")
    print(f"recorded the table in {results_md}")
