"""Where relative paths in a recipe point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


def resolve_path(value: str | Path, recipe: Any = None) -> Path:
    """A recipe path, relative to the current directory first (recipes name `runs/…` and
    `../shared/data/…` as seen from the project root), then to the recipe's folder, then — for
    `configs/…` — to the presets installed with the package. The first that exists wins; when none
    does, the current-directory reading is returned so that messages show what was looked for."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path.cwd() / path]
    recipe_path = getattr(recipe, "path", None)
    if recipe_path is not None:
        candidates.append(Path(recipe_path).resolve().parent / path)
    if path.parts and path.parts[0] == "configs":
        candidates.append(PACKAGE_CONFIGS.joinpath(*path.parts[1:]))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def looks_like_hub_id(value: str) -> bool:
    """`org/name` or `name`: at most one slash, no leading dot or slash, no backslash."""
    if not value or value.startswith((".", "/", "~")) or "\\" in value:
        return False
    parts = value.split("/")
    return len(parts) <= 2 and all(part and part not in (".", "..") for part in parts) and parts[0] != "runs"


def cache_directory() -> Path:
    """Where brewer keeps what it can make again (tokenized data, augmented files, generated
    completions): $BREWER_CACHE, else $XDG_CACHE_HOME/brewer, else ~/.cache/brewer."""
    if os.environ.get("BREWER_CACHE"):
        return Path(os.environ["BREWER_CACHE"]).expanduser()
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "brewer"
