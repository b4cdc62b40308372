"""The run directory and its checkpoints: refusing to overwrite a run, atomic step-N checkpoints
(student, extra modules such as projections, optimizer, scheduler, RNG, loop state), finding the
newest complete one and restoring it so that a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from brewer_cli.errors import BrewerError, CheckpointError
from brewer_cli.recipe import Recipe, resolved_mapping


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, main: bool) -> None:
    """Every process checks (they all read the same directory, so they agree): a refusal raised on
    the main process alone would leave the others waiting for it at the next barrier. Only the
    main process writes."""
    started = (run_dir / "checkpoints").exists() or (run_dir / "summary.json").exists()
    if started and not resume:
        complete = (run_dir / "summary.json").exists()
        raise BrewerError(
            f"{run_dir}: the run directory already exists{' and holds a finished run' if complete else ''} — "
            f"continue it with --resume, choose another name with --set name=…, or another --output-dir; "
            f"brewer never overwrites checkpoints"
        )
    if resume and not (run_dir / "checkpoints").exists():
        raise BrewerError(f"{run_dir}: --resume: nothing to resume (no checkpoints/) — run without --resume")
    if not main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        # A start that failed before its first checkpoint left nothing worth keeping but its log.
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    # A finished run is recognized by summary.json, written last; a resumed run removes it first.
    if (run_dir / "summary.json").exists():
        (run_dir / "summary.json").unlink()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved_mapping(recipe), sort_keys=False))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def save_checkpoint(root: Path, distiller: nn.Module, optimizer: Any, scheduler: Any, state: LoopState, keep: int) -> None:
    """checkpoints/step-N/: student (safetensors), extra modules (projections), optimizer,
    scheduler, RNG and loop state, written to a temporary directory and renamed, so a crash never
    leaves a checkpoint that looks complete. Keeps the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    temporary = root / f".step-{state.step}.tmp"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    distiller.student.save_pretrained(temporary / "student", safe_serialization=True)
    extra = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in distiller.state_dict().items()
        if not name.startswith("student.")
    }
    if extra:
        save_file(extra, str(temporary / "extra_modules.safetensors"))
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
    torch.save(_rng_state(), temporary / "rng.pt")
    (temporary / "state.json").write_text(
        json.dumps(
            {
                "step": state.step,
                "epoch": state.epoch,
                "batch_in_epoch": state.batch_in_epoch,
                "best_metric": state.best_metric,
                "best_step": state.best_step,
                "history": state.history,
            },
            indent=2,
        )
    )
    if final.exists():
        shutil.rmtree(final)
    temporary.rename(final)
    # The one `best/` came from is also a plain directory, so older checkpoints can go.
    for old in _sorted_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def load_latest_checkpoint(
    root: Path, distiller: nn.Module, optimizer: Any, scheduler: Any, device: Any
) -> tuple[LoopState, Path]:
    """Restore the newest complete checkpoint into the distiller, optimizer, scheduler and the RNGs."""
    checkpoints = _sorted_checkpoints(root) if root.exists() else []
    if not checkpoints:
        raise CheckpointError(f"--resume: no complete checkpoint in {root} — run without --resume to start fresh")
    latest = checkpoints[-1]
    student_weights = _student_weights(latest / "student")
    missing, unexpected = distiller.student.load_state_dict(student_weights, strict=False)
    if unexpected or [name for name in missing if not _is_tied(distiller.student, name)]:
        raise CheckpointError(
            f"--resume: {latest} does not match this recipe's student (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    extra_path = latest / "extra_modules.safetensors"
    if extra_path.exists():
        distiller.load_state_dict(load_file(str(extra_path)), strict=False)
    optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True, map_location=device))
    scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(latest / "rng.pt", weights_only=True))
    state = json.loads((latest / "state.json").read_text())
    return LoopState(
        step=state["step"],
        epoch=state["epoch"],
        batch_in_epoch=state["batch_in_epoch"],
        best_metric=state["best_metric"],
        best_step=state["best_step"],
        history=state["history"],
    ), latest


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories whose rename finished (temporary ones start with a dot)."""
    return [path for path in root.glob("step-*") if path.is_dir() and (path / "state.json").is_file()]


def _sorted_checkpoints(root: Path) -> list[Path]:
    return sorted(complete_checkpoints(root), key=lambda path: int(path.name.split("-")[1]))


def _student_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def _is_tied(model: nn.Module, name: str) -> bool:
    # Tied weights (e.g. an MLM decoder sharing the word embeddings) are saved once.
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return name in tied


def _rng_state() -> dict[str, Any]:
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python_version": python_state[0],
        "python": torch.tensor(python_state[1], dtype=torch.int64),
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": numpy_state[2],
        "numpy_gauss": [numpy_state[3], numpy_state[4]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_position"]),
            int(state["numpy_gauss"][0]),
            float(state["numpy_gauss"][1]),
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
