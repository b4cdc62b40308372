"""The package's layers (docs/architecture.md): each module imports only from its own layer or the
layers below it, there is no import cycle, losses read no model or recipe code, and only
`__main__` imports the command line. Imports are read with `ast`, at module level and inside
functions alike, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "brewer_cli"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Top to bottom; a module may import its own group or any group below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("commands", "catalog", "compare", "evaluate_command", "capture_command", "cache_command"),
    ("build",),
    (
        "run",
        "loop",
        "guards",
        "checkpoints",
        "run_directory",
        "summary",
        "training_setup",
        "sharding",
        "reporting",
        "best_checkpoint",
        "model_card",
        "hub",
    ),
    ("distillers",),
    (
        "evaluation",
        "losses",
        "matches",
        "schedulers",
        "projections",
        "teacher_cache",
        "logit_store",
        "extract",
        "augment",
        "size_report",
    ),
    ("tasks",),
    ("families",),
    ("models", "tokenizers", "synthetic", "conversion"),
    ("recipe",),
    ("registry", "errors", "paths", "features", "memory"),
)
# Losses are tensor math: they may read features (typed tensors), but no model, task or recipe code.
LOSSES_MAY_IMPORT = {"losses", "features", "registry", "errors"}
# Only the command line imports lazily (so that `brewer --help` stays fast).
LAZY_IMPORTS_ALLOWED = {"cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _top(module: str) -> str:
    """The layer name of a module: `brewer_cli.build.loading` → `build`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported brewer_cli module, line, inside a function) for every import in `module`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child)
                # `from brewer_cli.pkg import sub` imports the submodule when there is one.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in child.names]
            else:
                visit(child, nested)
                continue
            found.extend((name, child.lineno, in_function) for name in names if name == PACKAGE or name.startswith(PACKAGE + "."))

    visit(tree, False)
    return found


def _layer(module: str) -> int:
    top = _top(module)
    for index, group in enumerate(LAYERS):
        if top in group:
            return index
    raise AssertionError(f"{module}: not placed in any layer — add `{top}` to LAYERS and to docs/architecture.md")


GRAPH = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != PACKAGE:
            _layer(module)


def test_no_import_runs_upward():
    upward = [
        f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} ({LAYERS[_layer(module)][0]}…) imports {name}"
        for module, imports in GRAPH.items()
        if module != PACKAGE
        for name, line, _ in imports
        if name in MODULES and name != PACKAGE and _layer(name) < _layer(module)
    ]
    assert upward == []


def test_no_import_cycle():
    edges = {
        module: sorted({name for name, _, _ in imports if name in MODULES and name != module})
        for module, imports in GRAPH.items()
    }
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            connect(module)
    assert cycles == []


def test_losses_read_no_model_or_recipe_code():
    wrong = [
        f"{module} imports {name}"
        for module, imports in GRAPH.items()
        if _top(module) == "losses"
        for name, _, _ in imports
        if _top(name) not in LOSSES_MAY_IMPORT
    ]
    assert wrong == []


def test_only_main_imports_the_command_line():
    importers = [
        module for module, imports in GRAPH.items() for name, _, _ in imports if _top(name) == "cli" and _top(module) != "cli"
    ]
    assert importers == [f"{PACKAGE}.__main__"]


def test_package_imports_sit_at_module_level():
    lazy = [
        f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {name}"
        for module, imports in GRAPH.items()
        if _top(module) not in LAZY_IMPORTS_ALLOWED
        for name, line, in_function in imports
        if in_function
    ]
    assert lazy == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= 500, f"{MODULES[module]}: {lines} lines — split it by concern"


def test_every_distillation_kind_has_a_spec_a_distiller_and_a_builder():
    """A kind is added in three places that must agree: its recipe section, its distiller, its builder."""
    from brewer_cli.build import BUILDERS
    from brewer_cli.distillers import DISTILLERS
    from brewer_cli.recipe import DISTILLATION_KINDS

    assert sorted(DISTILLATION_KINDS) == sorted(DISTILLERS.names()) == sorted(BUILDERS.names())


def test_a_training_run_does_not_load_the_libraries_only_some_paths_need():
    """`datasets` (pyarrow, pandas), scikit-learn and seqeval add about 130 MiB to every process;
    they are imported where data is read, an evaluation or a tagging task needs them, so importing
    brewer's modules does not load them and commands that read no data (size-report, extract,
    catalog, compare) never carry them."""
    import subprocess
    import sys

    code = (
        "import sys, brewer_cli.commands, brewer_cli.loop, brewer_cli.tasks;"
        "print(' '.join(sorted(name for name in ('datasets', 'sklearn', 'seqeval', 'pandas') if name in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == ""
