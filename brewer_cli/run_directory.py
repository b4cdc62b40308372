"""One writer per run directory, and the checks made before a run writes anything in it.

A run holds an exclusive lock on <run>/.lock (`fcntl.flock`) from before its first write to its
end: a second run on the same directory is refused, naming the process that holds it. The kernel
releases the lock when that process dies, so a lock file left by a killed run blocks nothing.

Then, before any write: a directory that holds a run is continued only with --resume, and only
with a recipe that computes the same thing (settings that only say how often to evaluate, save
or log may change, and are recorded); a directory holding nothing but a partial first checkpoint
counts as not started; there must be room on the disk for a checkpoint and the exports.

A finished run's model reused by a later command (a teacher trained by `teacher.train`) is checked
the same way: the settings that change what it learned must be those the run recorded
(`result_changes`); `move_aside` keeps an earlier run under a new name instead of deleting it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import broadcast_object_list
from pydantic import ValidationError

from brewer_cli.checkpoints import (
    append_line,
    complete_checkpoints,
    free_bytes,
    partial_checkpoints,
    size_text,
    write_text,
)
from brewer_cli.errors import BrewerError, ResourceError, RunDirectoryError
from brewer_cli.recipe import Recipe, resolved_mapping, stage_directory

LOCK_FILE = ".lock"
# Settings a resumed run may change: they decide how often the run evaluates, saves and logs, how
# it shows progress and how large its evaluation batches are — never what the student learns.
# on_nan and nan_patience change nothing until a batch goes non-finite, and skip_batch is one of the
# fixes the divergence message offers for resuming a run that diverged.
SAFE_ON_RESUME = (
    "eval_every",
    "save_every",
    "log_every",
    "keep_checkpoints",
    "progress",
    "eval_batch_size",
    "on_nan",
    "nan_patience",
    "report_to",  # where the records also go, not what they are
)
# What a run that stopped before its first complete checkpoint may have left (all of it redone).
LEFTOVERS = ("checkpoints", "best", "best.tmp", "best.old", "final.tmp", "final.old", "metrics.jsonl", "summary.json.tmp")
_MISSING = object()


# ============================================================================= the lock


@contextmanager
def run_directory_lock(run_dir: Path, state: Any) -> Iterator[None]:
    """Hold <run_dir>/.lock for the body. Under a multi-process launch only the main process
    locks (one lock per launch); its verdict is shared, so a refused launch stops on every process
    instead of leaving the others waiting at a barrier."""
    held: list[tuple[int, bool]] = []
    decided_by_main(state, lambda: held.append(_take_lock(run_dir)))
    try:
        yield
    finally:
        if held:
            _release_lock(run_dir, *held[0])


def decided_by_main(state: Any, action: Callable[[], None]) -> None:
    """Run `action` on the main process and raise its BrewerError on every process."""
    problem: BrewerError | None = None
    if state.is_main_process:
        try:
            action()
        except BrewerError as error:
            problem = error
    if state.num_processes > 1:
        shared = [problem]
        broadcast_object_list(shared)
        problem = shared[0]
    if problem is not None:
        raise problem


def _take_lock(run_dir: Path) -> tuple[int, bool]:
    """The locked file's descriptor, and whether the run directory was made for this run."""
    created = _make_directory(run_dir)
    path = run_dir / LOCK_FILE
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ResourceError(
                f"{run_dir}: the run directory is not writable ({error.strerror}) — make it writable, or give "
                f"--output-dir a directory you may write"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise RunDirectoryError(
                f"{run_dir}: another brewer process is writing this run directory — {holder}. Two runs in one "
                f"directory would mix their checkpoints, metrics and exports. Wait for it to finish (or stop "
                f"it), or give this run another name (--set name=…) or another --output-dir"
            ) from None
        # The holder before us removes the file when it ends: if it did so after we opened it, we
        # locked a file no one else will find, so lock the one that is there now.
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    # A lock file left by a killed run is reused: its old content is replaced.
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    return descriptor, created


def _release_lock(run_dir: Path, descriptor: int, created: bool) -> None:
    # Removed before it is unlocked, so that no one locks a file that is about to vanish.
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    os.close(descriptor)
    if created:
        try:
            run_dir.rmdir()  # only when the run wrote nothing (a refusal), so no empty directory stays
        except OSError:
            pass


def _holder(descriptor: int) -> str:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0).decode())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["since"]))
        return f"pid {record['pid']} on {record['host']}, since {since} ({record['command']})"
    except (ValueError, KeyError, TypeError, OSError):
        # Locked a moment ago, before it wrote who it is.
        return "a process that has just started (its pid is not written yet)"


def _make_directory(run_dir: Path) -> bool:
    if run_dir.is_dir():
        return False
    for ancestor in [run_dir, *run_dir.parents]:
        if ancestor.exists() and not ancestor.is_dir():
            raise ResourceError(
                f"{ancestor}: is a file, not a directory, so the run directory {run_dir} cannot be made there — "
                f"give --output-dir a directory (or a path that does not exist yet), or move the file"
            )
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as error:
        raise ResourceError(
            f"{run_dir}: the run directory cannot be made ({error.strerror}) — give --output-dir a directory you may write"
        ) from error
    return True


# ============================================================================= before the first write


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, state: Any, console: Any = None, needed_bytes: int = 0) -> None:
    """Every process checks (they all read the same directory, so they agree): a refusal raised on
    the main process alone would leave the others waiting for it at the next barrier. Only the
    main process writes, and only once every check passed."""
    if not resume:
        refuse_started(run_dir)
    if resume and not run_started(run_dir):
        partial = partial_checkpoints(run_dir / "checkpoints")
        if partial:
            raise RunDirectoryError(
                f"{run_dir}: --resume: nothing to resume yet — the run stopped while writing its first checkpoint "
                f"({partial[-1].name}, incomplete) — run without --resume to start it afresh (the partial files "
                f"are removed)"
            )
        raise RunDirectoryError(f"{run_dir}: --resume: nothing to resume (no checkpoints/) — run without --resume")
    changes = resume_changes(run_dir, recipe) if resume else {}
    decided_by_main(state, lambda: _check_free_space(run_dir, needed_bytes))
    if not state.is_main_process:
        return
    if resume:
        for partial in partial_checkpoints(run_dir / "checkpoints"):
            _remove(partial)
    else:
        _remove_leftovers(run_dir, console)
    # A finished run is recognized by summary.json, written last; a resumed run removes it first.
    (run_dir / "summary.json").unlink(missing_ok=True)
    record_recipe(run_dir, recipe, changes, console)


def refuse_started(run_dir: Path) -> None:
    """A run without --resume starts in a directory that holds no started run."""
    if run_started(run_dir):
        complete = (run_dir / "summary.json").exists()
        raise RunDirectoryError(
            f"{run_dir}: the run directory already exists{' and holds a finished run' if complete else ''} — "
            f"continue it with --resume, choose another name with --set name=…, or another --output-dir; "
            f"brewer never overwrites checkpoints"
        )


def run_started(run_dir: Path) -> bool:
    """A run has started once it completed a checkpoint (or finished); a directory with nothing
    but a partial first checkpoint has not."""
    return (run_dir / "summary.json").exists() or bool(complete_checkpoints(run_dir / "checkpoints"))


def resume_changes(run_dir: Path, recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """The settings this recipe changes against the one the run started with (<run>/recipe.yaml),
    by dotted path. Refused unless each is one of SAFE_ON_RESUME: the resumed run would compute
    something neither recipe describes."""
    stored_path = run_dir / "recipe.yaml"
    if not stored_path.is_file():
        return {}
    changes = _changes(stored_path, recipe, "--resume cannot check that this recipe computes the same run")
    refused = {path: pair for path, pair in changes.items() if not _safe_on_resume(path)}
    if refused:
        lines = change_lines(refused)
        raise RunDirectoryError(
            f"{recipe.path or 'the recipe'}: --resume would continue {run_dir} with settings that change what it "
            f"computes (stored in {stored_path} → this recipe):\n{lines}\n"
            f"Resume with the recipe the run started with, or start a new run under another name (--set name=…) "
            f"or --output-dir. Only training.{', training.'.join(SAFE_ON_RESUME)} and hub may change on resume."
        )
    return changes


def result_changes(run_dir: Path, recipe: Recipe) -> dict[str, tuple[Any, Any]] | None:
    """Before reusing the model a finished run left (a teacher a recipe would otherwise train):
    the settings in which `recipe` differs from the one the run recorded (<run>/recipe.yaml), by
    dotted path as (recorded, now), leaving out those that do not change the trained model (the
    ones SAFE_ON_RESUME names). None when the directory records no recipe: not a brewer run."""
    stored_path = run_dir / "recipe.yaml"
    if not stored_path.is_file():
        return None
    changes = _changes(stored_path, recipe, "brewer cannot check that the model there was trained with this recipe's settings")
    return {path: pair for path, pair in changes.items() if not _safe_on_resume(path)}


def change_lines(changes: dict[str, tuple[Any, Any]], field_of: Callable[[str], str] = str) -> str:
    """`  dotted.path: stored → new`, one line each; `field_of` names a path as the user's file does."""
    return "\n".join(f"  {field_of(path)}: {_shown(old)} → {_shown(new)}" for path, (old, new) in changes.items())


def _changes(stored_path: Path, recipe: Recipe, purpose: str) -> dict[str, tuple[Any, Any]]:
    """Every setting, by dotted path, in which `recipe` differs from the recipe stored at `stored_path`."""
    try:
        stored = yaml.safe_load(stored_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RunDirectoryError(
            f"{stored_path}: the recipe this run started with cannot be read ({error.__class__.__name__}), so {purpose} "
            f"— restore the file, or start a new run"
        ) from None
    # The stored recipe with today's defaults filled in, so that a field added to brewer after the
    # run started counts as unchanged when the recipe leaves it at its default. A stored recipe the
    # schema no longer reads is compared as it is.
    if isinstance(stored, dict):
        try:
            stored = resolved_mapping(Recipe.model_validate(stored))
        except ValidationError:
            pass
    # Both through YAML, so that they hold the same types (lists, not tuples).
    old_values = _flattened(yaml.safe_load(yaml.safe_dump(stored, sort_keys=False)))
    new_values = _flattened(yaml.safe_load(yaml.safe_dump(resolved_mapping(recipe), sort_keys=False)))
    return {
        path: (old_values.get(path, _MISSING), new_values.get(path, _MISSING))
        for path in list(old_values) + [path for path in new_values if path not in old_values]
        if old_values.get(path, _MISSING) != new_values.get(path, _MISSING)
    }


def move_aside(run_dir: Path, state: Any) -> Path:
    """Rename a run directory to <name>.replaced-<date-time> beside it (never deleted), once no
    other process writes it; returns the new path. Only the main process moves it."""
    moved = [run_dir]

    def move() -> None:
        descriptor, _ = _take_lock(run_dir)
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
            number = 1
            while target.exists():
                number += 1
                target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{number}")
            try:
                run_dir.rename(target)
            except OSError as error:
                raise ResourceError(
                    f"{run_dir}: cannot be moved aside to {target.name} ({error.strerror}) — move or delete it yourself"
                ) from None
            moved[0] = target
        finally:
            (moved[0] / LOCK_FILE).unlink(missing_ok=True)
            os.close(descriptor)

    decided_by_main(state, move)
    return moved[0]


def record_recipe(run_dir: Path, recipe: Recipe, changes: dict[str, tuple[Any, Any]], console: Any = None) -> None:
    """Write <run>/recipe.yaml; on a resume with changed (safe) settings, record them first in
    metrics.jsonl and say so."""
    if changes:
        shown = "; ".join(f"{path}: {_shown(old)} → {_shown(new)}" for path, (old, new) in changes.items())
        if console is not None:
            console.print(f"resuming with changed settings: {shown}", markup=False)
        record = {path: {"stored": _plain(old), "new": _plain(new)} for path, (old, new) in changes.items()}
        append_line(run_dir / "metrics.jsonl", json.dumps({"time": round(time.time(), 3), "resume_changes": record}), run_dir)
    write_text(run_dir / "recipe.yaml", yaml.safe_dump(resolved_mapping(recipe), sort_keys=False), run_dir)


def _check_free_space(run_dir: Path, needed: int) -> None:
    free = free_bytes(run_dir)
    if needed and free < needed:
        raise ResourceError(
            f"{run_dir}: not enough free disk space for this run — a checkpoint and the best/ and final/ exports "
            f"need about {size_text(needed)}, {size_text(free)} free — free space there, or give --output-dir a "
            f"disk with room"
        )


def _remove_leftovers(run_dir: Path, console: Any) -> None:
    """A start that failed before its first complete checkpoint left nothing worth keeping."""
    partial = partial_checkpoints(run_dir / "checkpoints")
    if partial and console is not None:
        console.print(
            f"note: {run_dir} held only an incomplete first checkpoint ({', '.join(path.name for path in partial)}) "
            f"from a run stopped while writing it: removed, starting afresh",
            markup=False,
        )
    for name in LEFTOVERS:
        _remove(run_dir / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _safe_on_resume(path: str) -> bool:
    parts = path.split(".")
    # Where the finished run is pushed (`hub`) changes nothing it computes.
    return (len(parts) >= 2 and parts[-2] == "training" and parts[-1] in SAFE_ON_RESUME) or parts[0] == "hub"


def _flattened(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted path: `training.learning_rate`, `stages.0.distillation.kind`."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flattened(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _plain(value: Any) -> Any:
    return None if value is _MISSING else value


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def link_final(parent: Path, last: Path) -> None:
    """A staged run's `final`: a relative link to its last stage's final/ (replaced on --resume)."""
    link = parent / "final"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise BrewerError(f"{link}: a directory is in the way of the link to {last / 'final'} — remove it")
    os.symlink(os.path.relpath(last / "final", parent), link)


def refuse_started_stages(parent: Path, count: int) -> None:
    """A staged run without --resume starts in a directory that holds no started stage."""
    if (parent / "summary.json").exists():
        raise BrewerError(
            f"{parent}: the run directory already holds a finished staged run — choose another name "
            f"with --set name=…, or another --output-dir; brewer never overwrites checkpoints"
        )
    started = [stage_directory(parent, index) for index in range(1, count + 1)]
    started = [directory for directory in started if run_started(directory)]
    if started:
        raise BrewerError(
            f"{parent}: the run directory holds a started staged run ({started[0].name} has checkpoints) — continue "
            f"it with --resume, choose another name with --set name=…, or another --output-dir; brewer never "
            f"overwrites checkpoints"
        )
