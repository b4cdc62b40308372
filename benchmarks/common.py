"""Helpers shared by the benchmark scripts: the machine's description and RESULTS.md appends."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
WORK = ROOT / "benchmarks" / "work"


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


def append(title: str, body: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the script it names, on the machine it states.\n")
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(f"\n## {title}\n\n_{stamp} — {machine()}_\n\n{body.strip()}\n")
