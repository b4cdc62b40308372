"""The run directory's writes and its checkpoints: atomic step-N checkpoints (student, extra
modules such as projections, optimizer, scheduler, RNG, loop state), finding the newest complete
one and restoring it so that a resumed run equals an uninterrupted one; and every write of a run
guarded, so that a full disk or a directory the system refuses to write ends in a clear error, the
partial write removed and the newest complete checkpoint untouched."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from brewer_cli.errors import CheckpointError, ResourceError
from brewer_cli.models import save_tokenizer
from brewer_cli.sharding import is_sharded, load_full_optimizer_state, load_full_state, optimizer_state_by_name


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_batches: int = 0  # training.on_nan: skip_batch — kept across a resume
    # A streamed training split: each process's position in its stream (tasks/streams.py), by rank.
    data_state: list[Any] | None = None


# ============================================================================= guarded writes

# What the system answers when the disk is full or the directory may not be written: the user's
# to fix, so a clear error. Anything else (a missing file brewer expected) stays a bug's traceback.
FULL_DISK = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for its file system",
}
REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}
# The files beside the weights (configs, RNG state) in the checkpoint, best/ and final/; each
# also holds the tokenizer, counted from its own files (a BERT tokenizer.json is about 0.7 MiB).
FILES_MARGIN = 1 << 20


@contextmanager
def guarded_write(
    path: Path, needed: int | None = None, cleanup: Callable[[], None] | None = None, run_dir: Path | None = None
) -> Iterator[None]:
    """Around a write of `path`: on any failure `cleanup` removes the partial write (a temporary
    file or directory), and a full disk or a refused write becomes a ResourceError naming the path,
    the bytes needed and free, and — for a run directory — the newest complete checkpoint, untouched."""
    try:
        yield
    except BaseException as error:
        # Measured before the cleanup frees the partial write: a full disk has (almost) nothing left.
        free_when_failed = free_bytes(path)
        if cleanup is not None:
            cleanup()
        code = _error_code(error)
        if code is None and needed is not None and _is_write_failure(error) and free_when_failed < needed:
            # torch's own writer reports a full disk as a bare RuntimeError, without errno.
            code = errno.ENOSPC
        if code not in FULL_DISK and code not in REFUSED:
            raise
        raise ResourceError(_resource_message(path, code, needed, free_when_failed, run_dir)) from error


def write_text(path: Path, text: str, run_dir: Path | None = None) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with guarded_write(path, len(text.encode()), lambda: temporary.unlink(missing_ok=True), run_dir):
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)


def write_json(path: Path, data: dict[str, Any], run_dir: Path | None = None) -> None:
    write_text(path, json.dumps(data, indent=2), run_dir)


def append_line(path: Path, line: str, run_dir: Path | None = None) -> None:
    """One line appended (metrics.jsonl); a write cut short is truncated away, so the file stays
    whole lines."""
    size = path.stat().st_size if path.exists() else 0

    def truncate() -> None:
        if path.exists():
            os.truncate(path, size)

    with guarded_write(path, len(line.encode()) + 1, truncate, run_dir):
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing folder)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return 0


def checkpoint_bytes(distiller: nn.Module) -> int:
    """About what one checkpoint takes: the student and the extra modules, and AdamW's two moments
    per trained parameter."""
    student = _tensor_bytes(distiller.student.state_dict().values())
    extra = _tensor_bytes(tensor for name, tensor in distiller.state_dict().items() if not name.startswith("student."))
    trained = _tensor_bytes(parameter for parameter in distiller.parameters() if parameter.requires_grad)
    return student + extra + 2 * trained


def expected_output_bytes(distiller: nn.Module) -> int:
    """What a run needs free to make progress: one new checkpoint (written before older ones go),
    the student twice more for best/ and final/, and a margin for the files beside the weights
    (RNG state, configs, the tokenizer in each export)."""
    tokenizer = getattr(getattr(distiller, "loaded_student", None), "tokenizer", None)
    return (
        checkpoint_bytes(distiller)
        + 2 * _tensor_bytes(distiller.student.state_dict().values())
        + FILES_MARGIN
        + 3 * _tokenizer_bytes(tokenizer)
    )


def _tokenizer_bytes(tokenizer: Any) -> int:
    """The size of a tokenizer's files as saved: those it was loaded from (vocabulary, tokenizer.json),
    else a conservative 1 MiB for one built in memory."""
    if tokenizer is None:
        return 0
    source = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if source.is_dir():
        names = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model")
        return sum((source / name).stat().st_size for name in names if (source / name).is_file())
    return 1 << 20


def size_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            shown = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            break
        value /= 1024
    return shown if unit == "B" else f"{shown} ({count} bytes)"


def _tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _error_code(error: BaseException) -> int | None:
    """The errno behind an error, looking through what wrapped it: torch's writer raises a
    RuntimeError with the OSError as its context, safetensors a SafetensorError naming `os error N`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        found = re.search(r"os error (\d+)", str(current)) if _is_write_failure(current) else None
        if found:
            return int(found.group(1))
        current = current.__cause__ or current.__context__
    return None


def _is_write_failure(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) or type(error).__name__ == "SafetensorError"


def _resource_message(path: Path, code: int, needed: int | None, free: int, run_dir: Path | None) -> str:
    if code in FULL_DISK:
        amount = f"{size_text(free)} free when it failed"
        amount = f"about {size_text(needed)} needed, {amount}" if needed is not None else amount
        problem = f"could not be written: {FULL_DISK[code]}; {amount}"
        fix = "free space there, or give --output-dir a disk with room"
    else:
        problem = f"could not be written: {os.strerror(code)}"
        fix = "make it writable, or give --output-dir a directory you may write"
    message = f"{path}: {problem} — {fix}. The partial write was removed"
    if run_dir is None:
        return message
    latest = newest_checkpoint(run_dir)
    if latest is not None:
        return f"{message}; the newest complete checkpoint ({latest}) is untouched: continue with --resume"
    return f"{message}; no checkpoint was complete yet: run again without --resume"


# ============================================================================= checkpoints


def save_checkpoint(
    root: Path,
    distiller: nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """checkpoints/step-N/: student (safetensors), extra modules (projections), optimizer,
    scheduler, RNG and loop state, written to a temporary directory and renamed, so a crash never
    leaves a checkpoint that looks complete; a failed write removes it (guarded_write). Keeps the
    newest `keep`. A sharded (FSDP) distiller's whole state comes gathered (brewer_cli.sharding):
    `weights` (the distiller's state dict) and `optimizer_state` (by parameter name)."""
    final = root / f"step-{state.step}"
    temporary = root / f".step-{state.step}.tmp"
    with guarded_write(final, checkpoint_bytes(distiller), lambda: _remove(temporary), root.parent):
        root.mkdir(parents=True, exist_ok=True)
        _remove(temporary)
        temporary.mkdir()
        _write_checkpoint(temporary, distiller, optimizer, scheduler, state, weights, optimizer_state)
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
    # The one `best/` came from is also a plain directory, so older checkpoints can go.
    for old in _sorted_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def export_guarded(directory: Path, export: Callable[[Path], None], student: nn.Module, run_dir: Path) -> None:
    """best/ or final/ through `export` (save_model_dir writes <directory>.tmp and renames it); a
    failed write removes the temporary directory."""

    def cleanup() -> None:
        # A multi-task export writes one model directory per task inside `directory`.
        for temporary in [directory.with_name(directory.name + ".tmp"), *directory.glob("*.tmp")]:
            _remove(temporary)

    with guarded_write(directory, _tensor_bytes(student.state_dict().values()), cleanup, run_dir):
        export(directory)


def _write_checkpoint(
    directory: Path,
    distiller: nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    student = directory / "student"
    # Gathered weights (FSDP) are given; otherwise the modules' own are read.
    if weights is None:
        distiller.student.save_pretrained(student, safe_serialization=True)
        weights = distiller.state_dict()
    else:
        distiller.student.save_pretrained(student, safe_serialization=True, state_dict=student_weights_of(weights))
    tokenizer = distiller.loaded_student.tokenizer
    if tokenizer is not None:
        # With its tokenizer, a checkpoint's student/ loads on its own (AutoTokenizer, pipeline(),
        # `brewer eval`) like final/; --resume reads only its safetensors.
        save_tokenizer(tokenizer, getattr(distiller.student, "config", None), student)
    extra = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items() if not name.startswith(STUDENT)}
    if extra:
        save_file(extra, str(directory / "extra_modules.safetensors"))
    if optimizer_state is None:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    else:
        # Keyed by parameter name (torch.distributed.checkpoint's form), not by position.
        torch.save(optimizer_state, directory / OPTIMIZER_BY_NAME)
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save(_rng_state(), directory / "rng.pt")
    (directory / "state.json").write_text(
        json.dumps(
            {
                "step": state.step,
                "epoch": state.epoch,
                "batch_in_epoch": state.batch_in_epoch,
                "best_metric": state.best_metric,
                "best_step": state.best_step,
                "history": state.history,
                "skipped_batches": state.skipped_batches,
                "data_state": state.data_state,
            },
            indent=2,
        )
    )


# The student's entries in the distiller's state dict; the rest are the extra modules (projections).
STUDENT = "student."
# A sharded (FSDP) run's optimizer state, keyed by parameter name (brewer_cli.sharding).
OPTIMIZER_BY_NAME = "optimizer-by-name.pt"


def student_weights_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own state dict out of the distiller's."""
    return {name.removeprefix(STUDENT): tensor for name, tensor in weights.items() if name.startswith(STUDENT)}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def load_latest_checkpoint(
    root: Path, distiller: nn.Module, optimizer: Any, scheduler: Any, device: Any
) -> tuple[LoopState, Path]:
    """Restore the newest complete checkpoint into the distiller, optimizer, scheduler and the RNGs."""
    checkpoints = _sorted_checkpoints(root) if root.exists() else []
    if not checkpoints:
        raise CheckpointError(f"--resume: no complete checkpoint in {root} — run without --resume to start fresh")
    latest = checkpoints[-1]
    student_weights = _student_weights(latest / "student")
    extra_path = latest / "extra_modules.safetensors"
    extra = load_file(str(extra_path)) if extra_path.exists() else {}
    sharded = is_sharded(distiller)
    if sharded:
        # Every process reads the whole checkpoint and keeps its own shard of it.
        expected = set(distiller.student.state_dict())
        missing = [name for name in expected if name not in student_weights]
        unexpected = [name for name in student_weights if name not in expected]
    else:
        missing, unexpected = distiller.student.load_state_dict(student_weights, strict=False)
    if unexpected or [name for name in missing if not _is_tied(distiller.student, name)]:
        raise CheckpointError(
            f"--resume: {latest} does not match this recipe's student (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if sharded:
        load_full_state(distiller, {**{STUDENT + name: tensor for name, tensor in student_weights.items()}, **extra})
    elif extra:
        distiller.load_state_dict(extra, strict=False)
    if (latest / OPTIMIZER_BY_NAME).is_file():
        # Written by a sharded run; loads into a sharded or a whole distiller alike.
        load_full_optimizer_state(distiller, optimizer, torch.load(latest / OPTIMIZER_BY_NAME, weights_only=True))
    elif sharded:
        # Written by an unsharded run (one process, DDP): whole moments by position, which
        # optimizer.load_state_dict would put in place of the DTensor shards. By name, each process
        # keeps its shard, as from a sharded run's checkpoint.
        whole = torch.load(latest / "optimizer.pt", weights_only=True, map_location="cpu")
        load_full_optimizer_state(distiller, optimizer, optimizer_state_by_name(distiller, optimizer, whole, str(latest)))
    else:
        # Several CPU processes run on device "cpu:0", which torch.load cannot map storages to.
        location = "cpu" if torch.device(device).type == "cpu" else device
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True, map_location=location))
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
        skipped_batches=state.get("skipped_batches", 0),
        data_state=state.get("data_state"),
    ), latest


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories whose rename finished (temporary ones start with a dot)."""
    return [path for path in root.glob("step-*") if path.is_dir() and (path / "state.json").is_file()]


def partial_checkpoints(root: Path) -> list[Path]:
    """Temporary checkpoint directories a stopped write left behind (.step-N.tmp)."""
    return sorted(root.glob(".step-*.tmp")) if root.is_dir() else []


def newest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = _sorted_checkpoints(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else []
    return checkpoints[-1] if checkpoints else None


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
