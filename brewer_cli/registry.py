"""The one registry class: families, tasks, losses, schedules, distillers and presets each own an
instance, so that unknown names are reported the same way everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from brewer_cli.errors import BrewerError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    description: str


class Registry(Generic[T]):
    def __init__(self, what: str):
        # `what` names the kind of thing in error messages: "loss", "distiller", ...
        self.what = what
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, description: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def decorator(value: T) -> T:
            self.add(name, value, description, aliases)
            return value

        return decorator

    def add(self, name: str, value: T, description: str, aliases: tuple[str, ...] = ()) -> None:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = Entry(name, value, description)
        for alias in aliases:
            self._aliases[alias] = name

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def get(self, name: str) -> T:
        name = self.canonical(name)
        if name not in self._entries:
            raise BrewerError(self.unknown_message(name))
        return self._entries[name].value

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[self.canonical(name)]

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.what} {name!r}{self.suggestion(name)} — valid: {', '.join(self.names())}"

    def suggestion(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries) + list(self._aliases), n=3, cutoff=0.6)
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""

    def names(self) -> list[str]:
        return sorted(self._entries)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(alias for alias, target in self._aliases.items() if target == name)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda entry: entry.name))
