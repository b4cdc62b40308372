"""Helpers shared by the benchmark scripts: the machine's description and their reports.

A script writes its report into its working folder (benchmarks/work/reports/, untracked) and into the
tracked benchmarks/RESULTS.md only when asked (`--record`), where it replaces the section of the same
title: RESULTS.md holds the current evidence only (issue 13, point 6).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
WORK = ROOT / "benchmarks" / "work"
# The markers of blocks that their own scripts write (results_table.py, decoder_kd.py).
MARKER = re.compile(r"<!-- [\w-]+:(start|end) -->")
RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the script it names, run with `--record`, on the machine it states; a script run again\n"
    "with `--record` replaces its section. Without `--record` the scripts write their reports to benchmarks/work/reports/.\n"
)


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def brewer(*arguments: str) -> None:
    """Run the CLI exactly as a user would, failing loudly."""
    command = [sys.executable, "-m", "brewer_cli", *arguments]
    print("$ brewer " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def write_section(title: str, body: str, record: bool) -> Path:
    """Write the section `## title` (time stamp, machine, body) to WORK/reports/<slug of title>.md,
    replacing that file, and print where; with `record` also into RESULTS.md, replacing a section of the
    same heading in place (from its `## ` line up to the next line starting with `## `, or the end)
    or, when there is none, appending it. Returns the working-folder file."""
    if "\n" in title or not title.strip():
        raise ValueError(f"a section title is one non-empty line: {title!r}")
    # A section ends at the next `## ` line, so a body may use `###` headings at most.
    heading_inside = next((line for line in body.splitlines() if line.startswith("## ")), None)
    if heading_inside is not None:
        raise ValueError(f"{title}: the body holds the heading {heading_inside!r} — use ### or deeper")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    heading = f"## {title.strip()}"
    text = f"{heading}\n\n_{stamp} — {machine()}_\n\n{body.strip()}\n"
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80].rstrip("-") or "section"
    path = WORK / "reports" / f"{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"report written to {path}", flush=True)
    if record:
        current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else RESULTS_HEADER
        RESULTS.write_text(replace_section(current, heading, text), encoding="utf-8")
        print(f"recorded in {RESULTS} (section {heading!r})", flush=True)
    return path


def replace_section(current: str, heading: str, text: str) -> str:
    """`current` with the section under `heading` (its line up to the next `## ` line or the end)
    replaced by `text`, or with `text` appended when no line is `heading`."""
    lines = current.splitlines(keepends=True)
    start = next((index for index, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        return current.rstrip("\n") + "\n\n" + text
    end = next((index for index in range(start + 1, len(lines)) if lines[index].startswith("## ")), len(lines))
    marker = next((line.strip() for line in lines[start:end] if MARKER.match(line.strip())), None)
    if marker is not None:
        # e.g. the results table's, which results_table.py writes between its markers
        raise ValueError(f"{heading}: the section holds {marker}; the script that owns the markers writes it")
    after = "".join(lines[end:])
    return "".join(lines[:start]) + text + ("\n" + after if after else "")
