"""Errors a user can act on.

Every problem the user can fix (a recipe field, a data file, a checkpoint) is raised as a
`BrewerError`; the CLI prints its message as one paragraph and exits with code 2. Anything else
is a bug in brewer and keeps its traceback.
"""

from __future__ import annotations


class BrewerError(Exception):
    """A problem in the user's input, reported without a traceback (exit code 2)."""

    kind = "error"

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
