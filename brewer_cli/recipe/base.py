"""What every part of the recipe schema shares: the strict, frozen base model, the "did you mean"
hint, and the carrier of cross-field problems."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # YAML reads `.inf` and `.nan` as floats: no recipe number is meant to be either (an infinite
    # epoch count never ends, NaN passes no comparison), so both are refused as not finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def did_you_mean(given: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(given, valid, n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class CrossFieldProblems(ValueError):
    """Raised by a validator that found several problems, each against its own field, so that
    `describe_validation_error` reports every one under its own dotted path."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems
