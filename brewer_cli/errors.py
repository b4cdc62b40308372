"""Errors a user can act on.

Every problem the user can fix (a recipe field, a data file, a checkpoint) is raised as a
`BrewerError`; the CLI prints its message as one paragraph and exits with its `exit_code` (2; a
run stopped by a signal 130 or 143). Anything else
is a bug in brewer and keeps its traceback.
"""

from __future__ import annotations


class BrewerError(Exception):
    """A problem in the user's input, reported without a traceback (exit code 2)."""

    kind = "error"
    exit_code = 2  # what the CLI exits with

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RecipeError(BrewerError):
    """One or more problems in a recipe; `problems` holds one line each, all reported at once."""

    kind = "recipe"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        count = len(self.problems)
        header = "recipe problem" if count == 1 else f"{count} recipe problems"
        super().__init__(header + ":\n" + "\n".join(f"  {line}" for line in self.problems))


class DataError(BrewerError):
    kind = "data"


class ModelError(BrewerError):
    kind = "model"


class CheckpointError(BrewerError):
    kind = "checkpoint"


class DivergenceError(BrewerError):
    """Training went non-finite (a loss, the gradient norm or the weights); nothing non-finite was
    written and the newest checkpoint is the last good one."""

    kind = "divergence"


class InterruptedRun(BrewerError):
    """SIGINT or SIGTERM during training: the loop stopped after a step and wrote a checkpoint. The
    exit code is 128 + the signal's number (130, 143), what a shell reports for a process it stopped."""

    kind = "interrupted"

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class RunDirectoryError(BrewerError):
    """The run directory cannot take this run: another process writes it, it holds a run already,
    or a --resume would change what the run computes."""

    kind = "run directory"


class ResourceError(BrewerError):
    """The machine cannot hold the run's output: a directory it may not write, a file where a
    directory should be, a full disk."""

    kind = "resource"
