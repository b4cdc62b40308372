"""Where the parts of a derived recipe were written: a message about the teacher's training run
must name `teacher.train.model.checkpoint` — the field in the user's file — not the
`model.checkpoint` of the recipe brewer derived from it; one about `brewer eval --data FILE` must
name `--data`, not `data.eval`.

A derived recipe's `path` is a `RecipeFile`: the user's file, which messages print as before, plus
its origins, dotted paths of the derived recipe mapped to where the user wrote them (`model` →
`teacher.train.model`, `training.epochs` → `stages.1.training.epochs`, `data.eval` → `--data`).
`derive` composes them, so a teacher trained inside a stage names `stages.0.teacher.train.model`.
Messages are produced everywhere with the derived recipe's own paths (`f"{recipe.path}: model…"`);
`speaking_of(recipe)` rewrites those of an error raised while that recipe is used, once.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from brewer_cli.errors import BrewerError, RecipeError

Function = TypeVar("Function", bound=Callable[..., Any])


class RecipeFile(type(Path())):  # type: ignore[misc]
    """A derived recipe's file, with where its parts were written (see the module docstring)."""

    # Paths made from this one (`.parent`, `/ "x"`) are plain places on disk: no origins.
    origins: Mapping[str, str] = {}

    @classmethod
    def of(cls, path: Path, origins: Mapping[str, str]) -> RecipeFile:
        located = cls(path)
        located.origins = dict(origins)
        return located


def origins_of(recipe: Any) -> Mapping[str, str]:
    return getattr(getattr(recipe, "path", None), "origins", {})


def written_at(origins: Mapping[str, str], dotted: str) -> str:
    """Where the user wrote the field at `dotted` of a recipe with these origins: the longest origin
    that is `dotted` or holds it, with the rest of the path kept (an option stands for all of it)."""
    for prefix in sorted(origins, key=len, reverse=True):
        if dotted == prefix or dotted.startswith(prefix + "."):
            origin = origins[prefix]
            return origin if _is_option(origin) else origin + dotted[len(prefix) :]
    return dotted


def derived_origins(recipe: Any, declared: Mapping[str, str | None]) -> dict[str, str]:
    """The origins of a recipe derived from `recipe`: its own, with `declared` added (each given
    as a path of `recipe`, composed with `recipe`'s origins) and those declared None removed (a part
    brewer wrote, such as a teacher run's `distillation: {kind: trainer}`)."""
    inherited = origins_of(recipe)
    result = dict(inherited)
    for prefix, origin in declared.items():
        if origin is None:
            for key in [key for key in result if key == prefix or key.startswith(prefix + ".")]:
                del result[key]
            result[prefix] = prefix  # written by brewer: no shorter inherited origin may claim it
        else:
            result[prefix] = written_at(inherited, origin)
    return result


def located(recipe_path: Path | None, origins: Mapping[str, str]) -> Path | None:
    """The path a recipe derived from the file at `recipe_path` carries."""
    if recipe_path is None:
        return None
    return RecipeFile.of(recipe_path, origins) if origins else Path(recipe_path)


def in_user_terms(lines: list[str], recipe: Any) -> list[str]:
    """Message lines about `recipe` with its paths rewritten to where the user wrote them."""
    origins = origins_of(recipe)
    if not origins or recipe.path is None:
        return list(lines)
    file = re.escape(f"{recipe.path}: ")
    keys = "|".join(re.escape(key) for key in sorted(origins, key=len, reverse=True))
    pattern = re.compile(f"{file}(?P<key>{keys})(?P<rest>(?:\\.[^\\s:,;()]+)?)(?=[\\s:,;()]|$)")

    def replace(match: re.Match[str]) -> str:
        origin = origins[match["key"]]
        return origin if _is_option(origin) else f"{recipe.path}: {origin}{match['rest']}"

    return [pattern.sub(replace, line) for line in lines]


@contextlib.contextmanager
def speaking_of(recipe: Any) -> Iterator[None]:
    """Rewrite the paths of a `BrewerError` raised inside to where the user wrote them (once: an
    error raised in a recipe derived from this one was rewritten there, by its own origins)."""
    try:
        yield
    except BrewerError as error:
        if not getattr(error, "in_user_terms", False):
            _rewrite(error, recipe)
        raise


def about_recipe(function: Function) -> Function:
    """`speaking_of` the recipe a function takes first."""

    @functools.wraps(function)
    def wrapper(recipe: Any, *args: Any, **kwargs: Any) -> Any:
        with speaking_of(recipe):
            return function(recipe, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _rewrite(error: BrewerError, recipe: Any) -> None:
    if isinstance(error, RecipeError):
        error.problems = in_user_terms(error.problems, recipe)
        count = len(error.problems)
        header = "recipe problem" if count == 1 else f"{count} recipe problems"
        error.message = header + ":\n" + "\n".join(f"  {line}" for line in error.problems)
    else:
        error.message = "\n".join(in_user_terms(error.message.split("\n"), recipe))
    error.args = (error.message,)
    error.in_user_terms = True


def _is_option(origin: str) -> bool:
    return origin.startswith("--")
