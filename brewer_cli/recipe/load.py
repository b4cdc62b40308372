"""Reading a recipe: YAML or JSON, `--set` overrides, validation, and the messages that list
every problem at once as `file: dotted.path: what is wrong (did you mean …?) — valid: …`.

A recipe is read with a `yaml.SafeLoader` (no tags, no code) that also refuses a key given twice.
The schema is strict and frozen: after `load_recipe` returns, nothing in the run mutates it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from brewer_cli.errors import BrewerError, RecipeError
from brewer_cli.recipe.base import CrossFieldProblems, did_you_mean
from brewer_cli.recipe.distillation import (
    DISTILLATION_KINDS,
    MATCH_ENTRY_TAGS,
)
from brewer_cli.recipe.hints import (
    NULL_WORDS,
    empty_optional_values,
    field_names,
    null_message,
    required,
    schema_at,
    unknown_key_hint,
    written_as_null,
    yaml_text,
)
from brewer_cli.recipe.inputs import input_problems
from brewer_cli.recipe.schema import REQUIRED, Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_inputs: bool = True) -> Recipe:
    """Read, override and validate a recipe, and check the files it reads (data files and their
    columns, model configs); raise `RecipeError` listing every problem. Imports no torch: every
    problem found here is reported in about a second. `check_inputs` false: the schema only (a
    command that reads one split of its own, as `brewer eval --data`, checks that one itself)."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(child.name for child in path.iterdir() if child.suffix.lower() in (".yaml", ".yml", ".json"))
        found = f" (recipes in it: {', '.join(inside[:5])}{', …' if len(inside) > 5 else ''})" if inside else ""
        raise RecipeError(f"{path}: is a directory, not a recipe file — give the path of a .yaml or .json recipe{found}")
    if not path.is_file():
        raise RecipeError(
            f"{path}: recipe file not found — give the path of a .yaml or .json recipe (the shipped ones are under recipes/)"
        )
    raw = read_mapping(path)
    set_by = {apply_override(raw, override, path): override for override in overrides}
    return validate_recipe(raw, path, set_by, check_inputs=check_inputs, user_written=True)


def read_utf8(path: Path, error: type[BrewerError], where: str = "") -> str:
    """The text of a file the user gave (a recipe, a data file). Bytes that are not UTF-8 raise
    `error` naming the line and byte, so the user knows what to re-encode; `where` starts the
    message (the recipe field that names the file). A UTF-8 byte-order mark is dropped."""
    try:
        data = path.read_bytes()
    except OSError as problem:
        raise error(
            f"{where}{path}: cannot be read ({problem.strerror or problem}) — check the path and its permissions"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        line = data.count(b"\n", 0, problem.start) + 1
        column = problem.start - data.rfind(b"\n", 0, problem.start)
        raise error(
            f"{where}{path}:{line}: not valid UTF-8 — byte {problem.start} (line {line}, column {column}) is "
            f"0x{data[problem.start]:02x} ({problem.reason}); brewer reads UTF-8 text only: re-encode the file, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`, or save it as UTF-8"
        ) from None


def utf8_lines(path: Path, error: type[BrewerError], where: str = "") -> Iterator[str]:
    """The lines of a UTF-8 file, read as a text file reads them (universal newlines, a byte-order
    mark dropped) without holding the file in memory: corpora run to gigabytes. A byte that is not
    UTF-8 raises `error` with the same message as `read_utf8` (the file is read whole only then,
    to name the line and the byte)."""
    try:
        handle = open(path, encoding="utf-8-sig", newline=None)  # noqa: SIM115 (closed below, also on error)
    except OSError as problem:
        raise error(
            f"{where}{path}: cannot be read ({problem.strerror or problem}) — check the path and its permissions"
        ) from None
    with handle:
        try:
            yield from handle
        except UnicodeDecodeError:
            read_utf8(path, error, where)
            raise


class _DuplicateKey(Exception):
    def __init__(self, key: Any, lines: list[int]):
        super().__init__(key)
        self.key = key
        self.lines = lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader (no tags, no code) that refuses a key given twice in one mapping:
    PyYAML keeps the last one silently, so a recipe would run with a value its author did not see.
    Keys merged in with `<<` may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise _DuplicateKey(key, [first_line[key], line])
                    first_line[key] = line
                except TypeError:
                    continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep)


def _unique_json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key, [])
    return dict(pairs)


def read_mapping(path: Path) -> dict[str, Any]:
    text = read_utf8(path, RecipeError)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_unique_json_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as duplicate:
        lines = duplicate.lines or _json_key_lines(text, duplicate.key)
        where = f"{path}:{lines[-1]}" if lines else str(path)
        distinct = [str(line) for line in dict.fromkeys(lines)]
        on = f" ({'line' if len(distinct) == 1 else 'lines'} {' and '.join(distinct)})" if lines else ""
        dotted = _dotted_path_at(text, lines[-1], duplicate.key) if duplicate.lines else None
        raise RecipeError(
            f"{where}: {dotted + ': ' if dotted else ''}key {duplicate.key!r} is given twice in one mapping{on} — "
            f"only one value can count; remove the one you do not mean"
        ) from None
    except json.JSONDecodeError as error:
        raise RecipeError(f"{path}:{error.lineno}:{error.colno}: malformed JSON: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"{where}: malformed YAML: {problem} — fix the syntax at that line and column") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields (name, task, data, …), got {type(data).__name__}")
    return data


def _dotted_path_at(text: str, line: int, wanted: Any) -> str | None:
    """The dotted path of key `wanted` written on `line` of a YAML text (for the duplicate-key message)."""

    def search(node: yaml.Node, trail: list[str]) -> str | None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = [*trail, str(key_node.value)]
                if key_node.start_mark.line + 1 == line and key_node.value == str(wanted):
                    return ".".join(key)
                found = search(value_node, key)
                if found:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found = search(item, [*trail, str(index)])
                if found:
                    return found
        return None

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    return search(root, []) if root is not None else None


def _json_key_lines(text: str, key: str) -> list[int]:
    """The lines a JSON file writes `"key":` on (json reports no position for a repeated key)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    return [text.count("\n", 0, match.start()) + 1 for match in pattern.finditer(text)]


def apply_override(raw: dict[str, Any], override: str, path: Path) -> str:
    """Apply `a.b.c=value`; the value is parsed as YAML so numbers, booleans and lists keep their
    type (a value that is not valid YAML is kept as text). Returns the dotted path it set."""
    if "=" not in override:
        raise RecipeError(f"{path}: --set {override!r}: expected DOTTED.PATH=VALUE, e.g. --set training.epochs=3")
    dotted, _, text = override.partition("=")
    keys = [key for key in dotted.strip().split(".") if key]
    if not keys:
        raise RecipeError(f"{path}: --set {override!r}: the path before '=' is empty")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if value is None and text.strip() not in NULL_WORDS:
        # `--set data.text_pair=#2 String`: YAML reads a value starting with `#` as a comment.
        value = text
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            index = _list_index(node, key, keys[: depth + 1], path)
            node = node[index]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        if not isinstance(node[key], (dict, list)):
            raise RecipeError(f"{path}: --set {dotted}: `{'.'.join(keys[: depth + 1])}` is a value, not a section")
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys, path)] = value
    else:
        node[last] = value
    return ".".join(keys)


def _list_index(node: list, key: str, keys: list[str], path: Path) -> int:
    if not re.fullmatch(r"\d+", key) or int(key) >= len(node):
        raise RecipeError(f"{path}: --set {'.'.join(keys)}: `{key}` is not an index of a list of {len(node)} entries")
    return int(key)


def validate_recipe(
    raw: dict[str, Any], path: Path, set_by: dict[str, str] | None = None, check_inputs: bool = False, user_written: bool = False
) -> Recipe:
    """`set_by`: dotted path → the `--set` that wrote it, so that a bad value is blamed on that
    option rather than on the file. `check_inputs`: also check the data files and model configs
    the recipe names (`brewer_cli.recipe.inputs`), in the same pass, so that one error lists
    every problem."""
    problems: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        problems.extend(describe_validation_error(error, raw, path, set_by))
    if user_written:
        # A key left empty by a YAML comment (`text_pair: #2 …`) is the user's file only: a recipe brewer
        # derives may hold a null on purpose (a stage clearing `training.max_steps` for itself).
        problems.extend(line for line in empty_optional_values(raw, path, set_by or {}) if line not in problems)
    if check_inputs:
        for line in input_problems(raw, path):
            dotted = line.removeprefix(f"{path}: ").split(": ", 1)[0]
            override = _override_of(dotted, set_by or {})
            if override is not None:
                line += f" — the value comes from `--set {override}`, not from the file"
            if line not in problems:
                problems.append(line)
    if problems:
        raise RecipeError(problems)
    recipe._path = path
    return recipe


# Pydantic puts union member names and discriminator tags into error locations; a user's dotted
# path must not contain them.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|dict\[.*\]|tuple\[.*\]|list\[.*\]|[A-Z][A-Za-z]+|function-.*)$")


def describe_validation_error(
    error: ValidationError, raw: dict[str, Any], path: Path, set_by: dict[str, str] | None = None
) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for item in error.errors(include_url=False):
        for dotted, message in _explain(item, raw, path):
            override = _override_of(dotted, set_by or {})
            line = f"{path}: {dotted}: {message}" if dotted else f"{path}: {message}"
            if override is not None:
                line += f" — the value comes from `--set {override}`, not from the file{_as_text_note(override)}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
    return lines


def _override_of(dotted: str, set_by: dict[str, str]) -> str | None:
    """The `--set` that wrote the field at `dotted` (or the section holding it), if any."""
    for written, override in set_by.items():
        if dotted == written or dotted.startswith(written + "."):
            return override
    return None


def _as_text_note(override: str) -> str:
    try:
        yaml.safe_load(override.partition("=")[2])
    except yaml.YAMLError:
        return " (the value after '=' is not valid YAML, so it was read as text): fix the option"
    return ""


def _explain(item: dict[str, Any], raw: dict[str, Any], path: Path | None = None) -> list[tuple[str, str]]:
    kind = item["type"]
    location = _clean_location(item["loc"], raw)
    dotted = ".".join(str(part) for part in location)
    context = item.get("ctx") or {}
    if kind == "value_error" and isinstance(context.get("error"), CrossFieldProblems):
        return [(field, message) for field, message in context["error"].problems]
    if kind == "extra_forbidden":
        parent = schema_at(location[:-1], raw)
        valid = sorted(field_names(parent)) if parent else []
        hint = unknown_key_hint(str(location[-1]), location[:-1], parent) or did_you_mean(str(location[-1]), valid)
        return [(dotted, f"unknown key{hint}" + (f" — valid: {', '.join(valid)}" if valid else ""))]
    if item.get("input") is None and written_as_null(location, raw):
        # A required key, or one whose null is refused, written with an empty value.
        return [(dotted, null_message(location, yaml_text(path), optional=not required(location, raw)))]
    if kind == "finite_number":
        return [
            (
                dotted,
                f"{item.get('input')!r} is not a finite number — give a finite value (YAML reads .inf and .nan as infinity and not-a-number)",
            )
        ]
    if kind == "missing" or item.get("input") is REQUIRED:
        return [(dotted, "required field is missing")]
    if kind == "union_tag_invalid":
        tag = context.get("tag")
        valid = list(DISTILLATION_KINDS) if location[-1:] == ["distillation"] or dotted == "distillation" else []
        suffix = did_you_mean(str(tag), valid) + (
            f" — valid: {', '.join(valid)}" if valid else f" — valid: {context.get('expected_tags')}"
        )
        return [(f"{dotted}.kind" if dotted else "kind", f"unknown distiller kind {tag!r}{suffix}")]
    if kind == "union_tag_not_found":
        return [(f"{dotted}.kind", f"required field is missing — valid: {', '.join(DISTILLATION_KINDS)}")]
    if kind == "literal_error":
        expected = str(context.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        given = item.get("input")
        return [
            (dotted, f"{given!r} is not allowed{did_you_mean(str(given), choices)} — valid: {', '.join(choices) or expected}")
        ]
    message = item["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return [(dotted, message)]


def _clean_location(location: tuple, raw: dict[str, Any]) -> list[Any]:
    cleaned: list[Any] = []
    node: Any = raw
    for part in location:
        # Keep a part when it exists in the user's data; drop pydantic's union/tag annotations.
        if isinstance(node, dict) and part in node:
            cleaned.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            cleaned.append(part)
            node = node[part]
        elif isinstance(part, str) and (
            _UNION_MEMBER.match(part) or part in DISTILLATION_KINDS or part in MATCH_ENTRY_TAGS or part == "[key]"
        ):
            # "[key]": pydantic's mark for a problem with a mapping's key rather than its value.
            continue
        else:
            cleaned.append(part)
            node = None
    return cleaned


def resolved_mapping(recipe: Recipe) -> dict[str, Any]:
    """The recipe with every default filled in, as written to the run directory."""
    # A staged recipe's `distillation` is its last stage's, never written by the user.
    exclude = {"distillation"} if recipe.stages is not None else None
    return section_mapping(recipe, exclude)


def section_mapping(spec: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """A recipe or one of its sections as a recipe file writes it: by alias, without the fields
    left at None, but with a None chosen over another default (`max_grad_norm: null`), which
    reading the mapping back would otherwise turn into that default."""
    return _with_chosen_nones(spec, spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude))


def _with_chosen_nones(spec: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, field in type(spec).model_fields.items():
        key = field.alias or name
        value = getattr(spec, name)
        if key in dumped:
            result[key] = _nested_with_chosen_nones(value, dumped[key])
        elif value is None and not field.is_required() and field.get_default(call_default_factory=True) is not None:
            result[key] = None
    return result


def _nested_with_chosen_nones(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _with_chosen_nones(value, dumped)
    if isinstance(value, (tuple, list)):
        return [_nested_with_chosen_nones(item, item_dumped) for item, item_dumped in zip(value, dumped)]
    if isinstance(value, dict):
        return {
            key: _nested_with_chosen_nones(item, item_dumped) for item, (key, item_dumped) in zip(value.values(), dumped.items())
        }
    return dumped
